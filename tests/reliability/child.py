"""Child process of the kill-anywhere harness.

fake (default): one whole selfguide run, fake synthesis backend with a small delay per prompt,
real tiny model for training and evaluation (fp32).
hf | openvino: synthesis only (generate + annotate) with that real engine on a tiny real model
with varied output, fp32.

Usage: python child.py TASK_FILE RUN_DIR MODEL_DIR [fake|hf|openvino]
"""

from __future__ import annotations

import sys

from selfguide.backends.fake import FakeBackend
from selfguide.pipeline import make_context, run, synthesize

OVERRIDES = ["generate.target_inputs=40", "generate.prompts_per_round=5", "annotate.n=3", "annotate.chunk_size=4",
             "train.epochs=3", "train.batch_size=4", "model.dtype=float32", "train.bf16=false",
             "evaluate.max_items=40", "evaluate.bootstrap=50"]


REAL = ["generate.max_new_tokens=24", "generate.length_filter=false", "annotate.max_new_tokens=6"]


def main() -> None:
    task, run_dir, model = sys.argv[1:4]
    mode = sys.argv[4] if len(sys.argv) > 4 else "fake"
    overrides = [f"run_dir={run_dir}", f"model.name={model}", *OVERRIDES]
    if mode in ("hf", "openvino"):
        synthesize(make_context(task, overrides=[*overrides, f"model.backend={mode}", *REAL]))
    else:
        run(task, overrides=overrides, backend_factory=lambda: FakeBackend(delay=0.08))
    print("CHILD-DONE", flush=True)


if __name__ == "__main__":
    main()
