"""Child process of the kill-anywhere harness.

fake (default): one whole selfguide run, fake synthesis backend with a small delay per prompt,
real tiny model for training and evaluation (fp32).
native: synthesis only (generate + annotate) with the native engine on a tiny real model with
varied output, fp32, no cross-call KV store (model.prefix_cache_mb=0; with it, a resumed bf16 run
can round differently, see the README).

Usage: python child.py TASK_FILE RUN_DIR MODEL_DIR [fake|native]
"""

from __future__ import annotations

import sys

from selfguide.backends.fake import FakeBackend
from selfguide.pipeline import make_context, run, synthesize

OVERRIDES = ["generate.target_inputs=40", "generate.prompts_per_round=5", "annotate.n=3", "annotate.chunk_size=4",
             "train.epochs=3", "train.batch_size=4", "model.dtype=float32", "train.bf16=false",
             "evaluate.max_items=40", "evaluate.bootstrap=50"]


NATIVE = ["model.backend=native", "model.prefix_cache_mb=0", "generate.max_new_tokens=24", "generate.length_filter=false",
          "annotate.max_new_tokens=6"]


def main() -> None:
    task, run_dir, model = sys.argv[1:4]
    mode = sys.argv[4] if len(sys.argv) > 4 else "fake"
    overrides = [f"run_dir={run_dir}", f"model.name={model}", *OVERRIDES]
    if mode == "native":
        synthesize(make_context(task, overrides=[*overrides, *NATIVE]))
    else:
        run(task, overrides=overrides, backend_factory=lambda: FakeBackend(delay=0.08))
    print("CHILD-DONE", flush=True)


if __name__ == "__main__":
    main()
