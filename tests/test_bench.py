"""`selfguide bench`: every method on two tiny tasks, the JSON schema, and resume after a kill
without redoing finished tasks (fake synthesis backend, tiny real model for training/eval)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import EXAMPLE, NIV2, ROOT
from selfguide import bench
from selfguide.backends.fake import FakeBackend
from selfguide.config import load_config
from selfguide.store import read_records

TASKS = [str(EXAMPLE), str(NIV2 / "task1562.paper_prompt.json")]
METHODS = [m for m in bench.METHODS if m != "selfguide-gated"]  # scitail has no validation split to gate on (test_labeller)


def cfg_for(run_dir, tiny_model):
    return load_config(None, [f"run_dir={run_dir}", f"model.name={tiny_model}", "generate.target_inputs=12", "annotate.n=2",
                              "evaluate.max_items=6", "train.epochs=1", "model.dtype=float32", "evaluate.bootstrap=50",
                              "evaluate.max_new_tokens=8"])


def test_bench_all_methods_and_resume(tmp_path, tiny_model, monkeypatch):
    out = tmp_path / "docs" / "niv2-tiny"
    cfg = cfg_for(tmp_path / "runs", tiny_model)
    real_run_task = bench.run_task
    done = []

    def dies_on_second(ctx, methods):
        if done:
            raise KeyboardInterrupt  # killed while the second task runs
        row = real_run_task(ctx, methods)
        done.append(ctx.task.id)
        return row

    monkeypatch.setattr(bench, "run_task", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        bench.run_bench(TASKS, cfg, METHODS, out, backend_factory=lambda: FakeBackend())
    partial = json.loads(out.with_suffix(".json").read_text())
    assert [r["task"] for r in partial["tasks"]] == ["scitail"]
    finished_files = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("MANIFEST.json")}

    monkeypatch.setattr(bench, "run_task", real_run_task)
    data = bench.run_bench(TASKS, cfg, METHODS, out, backend_factory=lambda: FakeBackend())
    # the finished task's stages were reused, not redone
    assert all(p.stat().st_mtime_ns == t for p, t in finished_files.items())
    assert [r["task"] for r in data["tasks"]] == ["scitail", "task1562"]
    for row in data["tasks"]:
        assert row["kind"] in ("classification", "generation")
        # prompt-calibrated scores labels: classification tasks only
        expected = set(METHODS) - ({"prompt-calibrated"} if row["kind"] == "generation" else set())
        assert set(row["scores"]) == expected
        metric = row["primary_metric"]
        assert all(0 <= row["scores"][m][metric] <= 100 for m in expected)
        assert {"value", "ci_low", "ci_high"} <= set(row["delta"])
        assert row["inputs"]["raw"] == row["inputs"]["kept"] + sum(row["inputs"]["rejected"].values())
    assert set(data["averages"]) == {"classification", "generation"}
    for kind, a in data["averages"].items():  # significant = the 95% CI wholly on one side of 0
        deltas = [r["delta"] for r in data["tasks"] if r["kind"] == kind]
        assert a["significant_gains"] == sum(d["ci_low"] > 0 for d in deltas)
        assert a["significant_losses"] == sum(d["ci_high"] < 0 for d in deltas) and "delta_gated" not in a
    md = out.with_suffix(".md").read_text()
    assert "gated delta" not in md  # no gated column without the gated method
    assert "| scitail | classification |" in md and "Averages per kind" in md and out.with_suffix(".png").exists()
    cls = data["averages"]["classification"]
    assert set(cls["by_metric"]) == {"exact_match", "paper_exact_match", "rougeL"}
    assert cls["by_metric"][cls["metric"]] == cls["scores"] and "| classification | paper_exact_match |" in md
    assert data["tasks"][0]["icl_shots"] >= 4
    # classification beside the label prior, recomputed from the predictions the evaluation wrote
    scitail, generation = data["tasks"]
    assert "balanced" not in generation and set(scitail["balanced"]) == set(scitail["scores"])
    run = Path(cfg.run_dir) / cfg.name / "scitail" / "evaluate"
    for method, value in scitail["balanced"].items():
        records = [json.loads(line) for line in (run / method / "predictions.jsonl").read_text().splitlines()]
        gold = sorted({r["references"][0] for r in records})
        per_class = [[r["scores"]["exact_match"] for r in records if r["references"][0] == g] for g in gold]
        assert value == pytest.approx(100 * sum(sum(c) / len(c) for c in per_class) / len(gold), abs=0.02)
        assert scitail["gold_classes"] == len(gold)
        assert scitail["majority_share"] == pytest.approx(100 * max(map(len, per_class)) / len(records), abs=0.02)
    assert cls["label_prior"]["balanced"] == {m: scitail["balanced"].get(m) for m in METHODS}
    assert "## Classification beside the label prior" in md and f"| scitail | {scitail['gold_classes']} |" in md
    # and the base model's label-signal diagnosis on the same items, as `run` makes it
    diagnosed = json.loads((Path(cfg.run_dir) / cfg.name / "scitail" / "diagnose" / "MANIFEST.json").read_text())["counts"]
    assert scitail["diagnosis"]["class_auroc"] == diagnosed["class_auroc"] and scitail["diagnosis"]["items"] == 6
    assert "diagnosis" not in generation and "| signal (AUROC) |" in md
    # finetune-fewshot trains on the real examples, and its stage says so (not "synthetic pairs")
    from selfguide.stages.train import training_data_words

    task_dir = Path(cfg.run_dir) / cfg.name / "scitail"
    few = json.loads((task_dir / "train-fewshot" / "MANIFEST.json").read_text())["counts"]
    synthetic = json.loads((task_dir / "train" / "MANIFEST.json").read_text())["counts"]
    assert few["source"] == "examples" and few["pairs"] == len(read_records(task_dir / "fewshot-pairs.jsonl"))
    assert training_data_words(few) == f"{few['pairs']} pairs of the real examples"
    assert synthetic["source"] == "annotate" and training_data_words(synthetic).startswith(f"{synthetic['pairs']} synthetic pairs")
    # an arm of a comparison says what it changed
    assert data["changed_from_defaults"]["annotate.n"] == 2 and "run_dir" not in data["changed_from_defaults"]
    assert "- preset: selfguide; changed from it: " in md and "annotate.n=2" in md and data["preset"] == "selfguide"

    # the funnel report reads the same run: its counts are the stage manifests' counts
    funnel = subprocess.run([sys.executable, str(ROOT / "bench" / "funnel.py"), str(Path(cfg.run_dir) / cfg.name),
                             str(out.with_suffix(".json")), "--out", str(tmp_path / "funnel.md")],
                            capture_output=True, text=True, check=True).stdout
    cells = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
             for line in funnel.splitlines() if line.startswith("| scitail") or line.startswith("| task1562")}
    assert set(cells) == {"scitail", "task1562"} and (tmp_path / "funnel.md").read_text() + "\n" == funnel
    for row in data["tasks"]:
        kind, raw, kept = cells[row["task"]][:3]
        assert kind == row["kind"][:3] and int(raw) == row["inputs"]["raw"] and int(kept) == row["inputs"]["kept"]
        assert int(cells[row["task"]][7]) == row["pairs"] and cells[row["task"]][-1] == f"{row['delta']['value']:+.1f}"
    labels_before, missing = cells["scitail"][8], cells["scitail"][10]
    assert labels_before != "-" and all(f"{label} " not in labels_before for label in missing.split(", ") if label != "-")


def test_bench_pending_task_without_instances(tmp_path, tiny_model):
    task = tmp_path / "noeval.yaml"
    task.write_text("instruction: Copy.\nexamples:\n- {input: a, output: a}\n- {input: b, output: b}\n")
    data = bench.run_bench([str(task)], cfg_for(tmp_path / "runs", tiny_model), ["prompt-fewshot"], tmp_path / "out",
                           backend_factory=lambda: FakeBackend())
    assert data["tasks"] == [] and data["pending"][0]["task"] == "noeval"


def test_resume_table_keeps_rows_of_the_same_identity_only(tmp_path, tiny_model, monkeypatch):
    """--resume-table: a table finished after its run folder is gone keeps the rows made with the same settings
    (not running those tasks again), re-runs a task whose settings changed, and names the CPU of a row made elsewhere."""
    import shutil

    out = tmp_path / "table"
    cfg = cfg_for(tmp_path / "runs", tiny_model)
    first = bench.run_bench(TASKS, cfg, ["prompt-fewshot"], out, backend_factory=lambda: FakeBackend())
    assert all(r["identity"] and r["cpu_flags"] == first["cpu_flags"] for r in first["tasks"])
    shutil.rmtree(tmp_path / "runs")
    ran = []
    real_run_task = bench.run_task
    monkeypatch.setattr(bench, "run_task", lambda ctx, methods: ran.append(ctx.task.id) or real_run_task(ctx, methods))

    again = bench.run_bench(TASKS, cfg, ["prompt-fewshot"], out, backend_factory=lambda: FakeBackend(), resume_table=True)
    assert ran == [] and again["tasks"] == first["tasks"] and not (tmp_path / "runs").exists()

    # another machine made the first row: the table says so
    data = json.loads(out.with_suffix(".json").read_text())
    data["tasks"][0]["cpu_flags"] = ["avx2", "fma"]
    out.with_suffix(".json").write_text(json.dumps(data))
    bench.run_bench(TASKS, cfg, ["prompt-fewshot"], out, backend_factory=lambda: FakeBackend(), resume_table=True)
    assert ran == [] and "rows made on a CPU with other flags (avx2, fma): scitail;" in out.with_suffix(".md").read_text()

    # other settings (the decode budget changes what is evaluated): every task runs again
    changed = load_config(None, [*[f"{k}={v}" for k, v in (("run_dir", tmp_path / "runs"), ("model.name", tiny_model))],
                                 "generate.target_inputs=12", "annotate.n=2", "evaluate.max_items=6", "train.epochs=1",
                                 "model.dtype=float32", "evaluate.bootstrap=50", "evaluate.max_new_tokens=9"])
    bench.run_bench(TASKS, changed, ["prompt-fewshot"], out, backend_factory=lambda: FakeBackend(), resume_table=True)
    assert ran == ["scitail", "task1562"]
    # without the flag nothing is kept either
    ran.clear()
    shutil.rmtree(tmp_path / "runs")
    bench.run_bench(TASKS, cfg, ["prompt-fewshot"], out, backend_factory=lambda: FakeBackend())
    assert ran == ["scitail", "task1562"]


def test_settings_added_later_keep_earlier_rows_at_their_neutral_value(tmp_path, tiny_model, monkeypatch):
    """A setting added after a table was made (identity.NEUTRAL_ADDITIONS) leaves the row identity what it was before
    the setting existed while it is at its neutral value, so --resume-table keeps those rows; any other value makes
    them run again."""
    from selfguide import config as config_module
    from selfguide.config import RunConfig, flatten
    from selfguide.identity import NEUTRAL_ADDITIONS
    from selfguide.task import load_task

    defaults = flatten(RunConfig())
    assert all(key in defaults and defaults[key] == value for key, value in NEUTRAL_ADDITIONS.items())
    spec, model, methods = load_task(Path(TASKS[1])), {"sha256": "0" * 64}, ["prompt-fewshot"]
    cfg = cfg_for(tmp_path / "runs", tiny_model)
    today = bench.row_identity(cfg, spec, model, methods)
    real_flatten = config_module.flatten
    with monkeypatch.context() as m:  # the code before those settings existed: its configs had no such keys
        m.setattr(config_module, "flatten", lambda value, prefix="": {
            k: v for k, v in real_flatten(value, prefix).items() if k not in NEUTRAL_ADDITIONS})
        before = bench.row_identity(cfg, spec, model, methods)
    assert today == before
    for key, value in (("train.neftune_alpha", 5), ("annotate.drop_input_copies", "true"), ("generate.form_filter", "true"),
                       ("evaluate.gate_epochs", "true")):
        changed = load_config(None, [f"run_dir={tmp_path / 'runs'}", f"model.name={tiny_model}", "generate.target_inputs=12",
                                     "annotate.n=2", "evaluate.max_items=6", "train.epochs=1", "model.dtype=float32",
                                     "evaluate.bootstrap=50", "evaluate.max_new_tokens=8", f"{key}={value}"])
        assert bench.row_identity(changed, spec, model, methods) != today, key


def test_resume_table_runs_a_row_again_when_the_gate_would_decide_otherwise(tmp_path):
    """The gate's rules are code (its minimum of validation items): a kept row whose gate was skipped for a reason
    the current code no longer gives, or run where it would now be skipped, runs again; one that agrees is kept."""
    out = tmp_path / "table"
    rows = [{"task": "a", "identity": "1", "gate": {"skipped": "no do-no-harm gate: 14 items, it needs 20"}},
            {"task": "b", "identity": "2", "gate": {"scale": 1.0, "items": 50}},
            {"task": "c", "identity": "3", "gate": {"skipped": "no do-no-harm gate: no validation split"}},
            {"task": "d", "identity": "4", "gate": {"scale": 0.5, "items": 12}}]
    out.with_suffix(".json").write_text(json.dumps({"tasks": rows}))
    identities = {"a": "1", "b": "2", "c": "3", "d": "4"}
    assert set(bench.kept_rows(out, identities)) == {"a", "b", "c", "d"}  # a table without the gated method
    now = {"a": None, "b": None, "c": "no do-no-harm gate: no validation split", "d": "no do-no-harm gate: 12 items, it needs 20"}
    assert set(bench.kept_rows(out, identities, now)) == {"b", "c"}


def test_end_to_end_table_compares_backends_with_and_without_training(tmp_path, monkeypatch):
    """bench/end_to_end.py's table: ratios to the first run, the run without its train stage, and the
    pairs each run trained on (read from the run's train manifest)."""
    import argparse
    import importlib.util

    spec = importlib.util.spec_from_file_location("end_to_end", ROOT / "bench" / "end_to_end.py")
    e2e = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(e2e)
    manifest = tmp_path / "runs" / "e2e-hf" / "task937" / "train" / "MANIFEST.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"counts": {"trained_on": 8}}))
    assert e2e.trained_on(tmp_path / "runs" / "e2e-hf") == 8 and e2e.trained_on(tmp_path / "runs" / "e2e-x") is None
    rows = {
        "native": {"wall_s": 300.0, "stages": {"generate": 200.0, "train": 50.0}, "verdict": "v1", "train_pairs": 14,
                   "started": "2026-11-21 22:40 UTC", "command": "python bench/end_to_end.py t --label native"},
        "hf": {"wall_s": 450.0, "stages": {"generate": 300.0, "train": 50.0}, "verdict": "v2", "train_pairs": 8,
               "started": "2026-11-21 22:30 UTC", "command": "python bench/end_to_end.py t --backends hf",
               "overrides": ["model.prefix_cache=false"]},
    }
    args = argparse.Namespace(out=str(tmp_path / "e2e"), task="task937.json", quick=False, overrides=[])
    e2e.write(args, rows)
    table = (tmp_path / "e2e.md").read_text()
    assert "| generate | 200.0 | 300.0 (1.50x) |" in table
    assert "| **whole run (wall clock, incl. model loading)** | **300.0** | **450.0** **(1.50x)** |" in table
    assert "| whole run without the train stage | 250.0 | 400.0 (1.60x) |" in table
    assert "| pairs trained on (sets the train stage's length) | 14 | 8 |" in table
    # the runs are listed in the order they were made, each with its command
    assert table.index("- hf: started 2026-11-21 22:30 UTC") < table.index("- native: started 2026-11-21 22:40 UTC")
    assert "`selfguide run --backend hf --set model.prefix_cache=false`; v2" in table
    (tmp_path / "e2e.md").unlink()
    e2e.write(args, rows, json.loads((tmp_path / "e2e.json").read_text())["meta"])  # --render
    assert (tmp_path / "e2e.md").read_text() == table


def test_delta_counts_name_significant_gains_and_losses_of_both_models():
    """A 95% CI touching 0 is no significant change; the gated counts cover only rows where the gate ran."""
    def ci(value, low, high):
        return {"value": value, "ci_low": low, "ci_high": high}

    rows = [{"delta": ci(5.0, 1.0, 9.0), "delta_gated": ci(5.0, 1.0, 9.0)},
            {"delta": ci(-9.5, -15.0, -4.0), "delta_gated": ci(0.0, 0.0, 0.0)},
            {"delta": ci(-1.0, -3.0, 0.0)}]
    assert bench.delta_counts(rows) == {"significant_gains": 1, "significant_losses": 1, "delta_gated": 2.5,
                                        "significant_gains_gated": 1, "significant_losses_gated": 0}
    assert bench.delta_counts([{"delta": None}]) == {}
