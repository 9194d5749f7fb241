"""Child process of the kill-anywhere harness: one real selfguide run (fake synthesis backend with
a small delay per prompt, real tiny model for training and evaluation).

Usage: python child.py TASK_FILE RUN_DIR TINY_MODEL_DIR
"""

from __future__ import annotations

import sys

from selfguide.backends.fake import FakeBackend
from selfguide.pipeline import run

OVERRIDES = ["generate.target_inputs=40", "generate.prompts_per_round=5", "annotate.n=3", "annotate.chunk_size=4",
             "train.epochs=3", "train.batch_size=4", "model.dtype=float32", "train.bf16=false",
             "evaluate.max_items=40", "evaluate.bootstrap=50"]


def main() -> None:
    task, run_dir, tiny = sys.argv[1:4]
    run(task, overrides=[f"run_dir={run_dir}", f"model.name={tiny}", *OVERRIDES],
        backend_factory=lambda: FakeBackend(delay=0.08))
    print("CHILD-DONE", flush=True)


if __name__ == "__main__":
    main()
