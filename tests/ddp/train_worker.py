"""Train the tiny model on fixed pairs with the real train stage; run plain or under torchrun.

argv: MODEL_DIR RUN_DIR PER_DEVICE_BATCH
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import EXAMPLE  # noqa: E402

from selfguide import pipeline  # noqa: E402
from selfguide.stages.train import run_train  # noqa: E402
from selfguide.store import write_records  # noqa: E402

model, run_dir, batch = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
ctx = pipeline.make_context(EXAMPLE, overrides=[
    f"model.name={model}", "model.backend=hf", f"run_dir={run_dir}", f"train.batch_size={batch}", "train.epochs=2",
    "train.bf16=false", "train.lora_dropout=0", "train.learning_rate=0.01",
])
pairs = run_dir / "pairs.jsonl"
if not pairs.exists():
    pairs.parent.mkdir(parents=True, exist_ok=True)
    write_records(pairs, [{"input": it.input, "output": it.outputs[0]} for it in ctx.task.instances[:16]])
run_train(ctx, pairs, "train")
