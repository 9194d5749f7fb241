"""Data-parallel training: 2 CPU processes (gloo) under torchrun follow the same loss curve as one
process with the same global batch (2 x 2 = 4 pairs per step)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from selfguide.store import read_records

WORKER = Path(__file__).parent / "ddp" / "train_worker.py"


def _run(cmd: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_two_process_ddp_matches_one_process(lively_model, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    _run([sys.executable, str(WORKER), str(lively_model), str(one), "4"])
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
          str(WORKER), str(lively_model), str(two), "2"])
    curves = [read_records(d / "default" / "scitail" / "train" / "metrics.jsonl") for d in (one, two)]
    assert all(curves), "no loss records where the train stage writes them"
    a, b = ([r["loss"] for r in c] for c in curves)
    assert len(a) == len(b) == 10  # (16 pairs + 4 replayed examples) / global batch 4 x 2 epochs, each step logged once
    assert a[-1] < a[0] - 0.5  # it learns (lr 0.01 on the lively model)
    for x, y in zip(a, b):
        assert abs(x - y) <= 2e-3 * max(1.0, abs(x)), (a, b)
    # rank 0 alone wrote the stage: one manifest, one merged model
    assert len(list(two.rglob("train/MANIFEST.json"))) == 1 and len(list(two.rglob("train/model/*.safetensors"))) >= 1
