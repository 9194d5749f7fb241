"""Regression tests for what a verdict rests on: one stage identity with the code's numerics
version, evaluation that cannot reuse stale scores or leak test information, config errors
instead of silent fallbacks, and bench tables that cannot mix code versions."""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import re
from pathlib import Path

import pytest
import yaml

from conftest import EXAMPLE, NIV2, ROOT
from selfguide import bench, identity, prompts
from selfguide.backends.fake import FakeBackend
from selfguide.config import ModelConfig, load_config
from selfguide.errors import ConfigError, StageStateError, UserInputError
from selfguide.pipeline import make_context, synthesize
from selfguide.stages.evaluate import eval_budget, eval_items, run_evaluate
from selfguide.stages.generate import run_generate
from selfguide.store import read_records
from selfguide.task import Instance, load_task


def fake_ctx(run_dir, task=EXAMPLE, overrides=(), backend=None):
    fb = backend or FakeBackend()
    return make_context(task, overrides=[f"run_dir={run_dir}", "generate.target_inputs=20", "annotate.n=3", *overrides],
                        backend_factory=lambda: fb)


# ------------------------------------------------------------------ one identity


def test_only_the_identity_module_builds_stage_identities():
    """Stages are opened through Context.open_stage (identity.stage_identity); nothing else builds one."""
    builders = []
    for path in (ROOT / "src" / "selfguide").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        if re.search(r"\bStage\(", text) and path.name not in ("store.py", "context.py"):
            builders.append(path.name)
        if "stage_identity(" in text and path.name not in ("identity.py", "context.py"):
            builders.append(f"{path.name} (stage_identity)")
    assert not builders


def test_every_stage_records_the_numerics_version_and_engine_options(tmp_path):
    ctx = fake_ctx(tmp_path)
    m = synthesize(ctx)
    for stage in ("generate", "annotate"):
        assert m[stage]["config"]["numerics"] == identity.NUMERICS_VERSION
        assert m[stage]["inputs"]["model"]["engine"] == "fake"
    ident = identity.model_identity(ModelConfig(batch_size=8, dtype="float32"), "openvino", "m", "abc")
    assert ident["batch_size"] == 8 and ident["dtype"] == "float32" and ident["engine"] == "openvino"


def test_stages_made_by_other_numerics_are_not_reused(tmp_path, monkeypatch):
    ctx = fake_ctx(tmp_path)
    run_generate(ctx)
    monkeypatch.setattr(identity, "NUMERICS_VERSION", identity.NUMERICS_VERSION + 1)
    with pytest.raises(StageStateError, match="numerics"):
        run_generate(fake_ctx(tmp_path))


def test_engine_options_that_an_engine_ignores_are_errors():
    with pytest.raises(ConfigError, match=r"vllm backend does not use model\.threads"):
        identity.check_engine_options(ModelConfig(threads=2), "vllm")
    with pytest.raises(ConfigError, match=r"hf backend does not use model\.tensor_parallel_size"):
        identity.check_engine_options(ModelConfig(tensor_parallel_size=2), "hf")
    with pytest.raises(ConfigError, match=r"openvino backend does not use model\.gpu_memory_utilization \(used by vllm\)"):
        identity.check_engine_options(ModelConfig(gpu_memory_utilization=0.5), "openvino")
    with pytest.raises(ConfigError, match=r"hf backend does not use model\.weights \(used by openvino\)"):
        identity.check_engine_options(ModelConfig(weights="int8"), "hf")
    identity.check_engine_options(ModelConfig(threads=2, dtype="float32", weights="int8"), "openvino")


def test_openvino_only_options_do_not_reach_the_hf_evaluation(tmp_path):
    """model.weights shapes openvino synthesis only: evaluation (hf) neither refuses nor records it."""
    ctx = make_context(EXAMPLE, overrides=[f"run_dir={tmp_path}", "model.backend=openvino", "model.weights=int8"])
    assert ctx.engine() == "openvino" and ctx.eval_engine() == "hf"
    assert ctx.eval_model_config().weights == "fp16" and ctx.cfg.model.weights == "int8"
    assert "weights" not in ctx.base_model_identity(ctx.eval_engine())
    hf_run = make_context(EXAMPLE, overrides=[f"run_dir={tmp_path}", "model.backend=hf", "model.weights=int8"])
    with pytest.raises(ConfigError, match=r"hf backend does not use model\.weights"):
        hf_run.eval_engine()


def test_engine_option_error_through_the_cli(tmp_path):
    from click.testing import CliRunner

    from selfguide.cli import cli

    result = CliRunner().invoke(cli, ["generate", str(EXAMPLE), "--backend", "hf", "--run-dir", str(tmp_path),
                                      "--set", "model.tensor_parallel_size=2"])
    assert result.exit_code == 2 and "does not use model.tensor_parallel_size" in result.output
    assert not (tmp_path / "default").exists() or not any((tmp_path / "default").rglob("*.jsonl"))


# ------------------------------------------------------------------ evaluation integrity


def test_edited_eval_items_are_scored_again(tmp_path):
    ctx = fake_ctx(tmp_path, overrides=["evaluate.max_items=8"])
    run_evaluate(ctx, "probe", {"name": "fake"}, ctx.backend)
    calls = len(ctx.backend().calls)
    run_evaluate(ctx, "probe", {"name": "fake"}, ctx.backend)
    assert len(ctx.backend().calls) == calls  # unchanged items: reused
    items = list(ctx.task.instances)
    target = eval_items(ctx)[3]
    items[items.index(target)] = Instance(target.id, target.input + " (edited)", target.outputs)
    edited = make_context(dataclasses.replace(ctx.task, instances=tuple(items)), cfg=ctx.cfg, backend_factory=lambda: FakeBackend())
    with pytest.raises(StageStateError, match="items"):
        run_evaluate(edited, "probe", {"name": "fake"}, edited.backend)
    edited.force = True
    run_evaluate(edited, "probe", {"name": "fake"}, edited.backend)
    preds = read_records(edited.stage_dir("evaluate") / "probe" / "predictions.jsonl")
    assert edited.backend().calls and any("(edited)" in p["prompt"] for p in preds)


def test_generation_decode_budget_ignores_the_references(tmp_path):
    task = load_task(NIV2 / "task1562.paper_prompt.json")
    ctx = make_context(task, overrides=[f"run_dir={tmp_path}"])
    budget = eval_budget(ctx)
    assert budget == prompts.answer_budget(task)
    long_refs = tuple(Instance(i.id, i.input, ("word " * 2000,)) for i in task.instances)
    assert eval_budget(make_context(dataclasses.replace(task, instances=long_refs), cfg=ctx.cfg)) == budget


def test_items_that_repeat_a_demonstration_are_left_out(tmp_path):
    for name in ("task1529_scitail1.1_classification.json", "task1529.split.json"):
        (tmp_path / name).write_bytes((NIV2 / name).read_bytes())
    plain = load_task(tmp_path / "task1529_scitail1.1_classification.json")
    split = json.loads((tmp_path / "task1529.split.json").read_text())
    marked = split["test"][:2]
    split["paper_demo_overlap_ids"] = marked
    (tmp_path / "task1529.split.json").write_text(json.dumps(split))
    task = load_task(tmp_path / "task1529_scitail1.1_classification.json")
    assert [i.id for i in task.split_items("test")] == [i.id for i in plain.split_items("test") if i.id not in marked]
    assert [i for i, _ in task.excluded_items("test")] == marked
    # an item whose input equals an example's input is left out too, marked or not
    data = yaml.safe_load(EXAMPLE.read_text())
    data["eval"] = [{"input": data["examples"][0]["input"], "output": data["examples"][0]["output"]},
                    {"input": "A new item.", "output": data["examples"][1]["output"]}]
    (tmp_path / "user.yaml").write_text(yaml.safe_dump(data))
    user = load_task(tmp_path / "user.yaml")
    assert [i.input for i in user.split_items("test")] == ["A new item."]
    assert user.excluded_items("test")[0][1] == "same input as an example"


@pytest.mark.skipif(not (ROOT.parent / "shared" / "niv2" / "task121.split.json").exists(), reason="needs ../shared/niv2")
def test_task121_demonstration_overlaps_are_excluded():
    task = load_task(ROOT.parent / "shared" / "niv2" / "task121.paper_prompt.json")
    overlap = set(json.loads((ROOT.parent / "shared" / "niv2" / "task121.split.json").read_text())["paper_demo_overlap_ids"])
    assert overlap and not overlap & {i.id for i in task.split_items("test")}


def test_annotation_samples_cut_by_the_token_limit_are_rejected(tmp_path):
    def script(prompt, i, seed):
        if "InputGenerator" in prompt:
            return FakeBackend()._default(prompt, seed)
        return "entails" if i % 2 else "entails " + "and so on " * 50  # a run-on answer the budget cuts

    ctx = fake_ctx(tmp_path, backend=FakeBackend(script=script), overrides=["annotate.labeller=vote", "annotate.n=4"])
    m = synthesize(ctx)["annotate"]
    assert m["counts"]["samples_rejected"]["cut_at_max_tokens"] == m["counts"]["samples"] // 2
    rec = read_records(ctx.stage_dir("annotate") / "annotations.jsonl")[0]
    assert rec["sample_reasons"] == ["cut_at_max_tokens", None, "cut_at_max_tokens", None] and rec["surviving"] == 2


# ------------------------------------------------------------------ config errors and hints


def test_bootstrap_too_small_for_a_ci_is_refused():
    for n in (0, 1, 39):
        with pytest.raises(ConfigError, match=r"evaluate.bootstrap must be in \[40"):
            load_config(None, [f"evaluate.bootstrap={n}"])
    assert load_config(None, ["evaluate.bootstrap=40"]).evaluate.bootstrap == 40


@pytest.mark.parametrize("source", ["conditioned", "agree"])
def test_label_source_without_target_labels_is_a_config_error(source):
    with pytest.raises(ConfigError, match="generate.label_conditioned=false"):
        load_config(None, [f"annotate.label_source={source}", "generate.label_conditioned=false"])
    load_config(None, ["annotate.label_source=annotate", "generate.label_conditioned=false"])


def test_the_skip_hint_says_how_to_redo_and_that_works(tmp_path, caplog):
    ctx = fake_ctx(tmp_path)
    first = run_generate(ctx)
    caplog.set_level(logging.INFO)
    assert run_generate(ctx)["finished_at"] == first["finished_at"]
    hint = next(r.getMessage() for r in caplog.records if "up to date" in r.getMessage())
    assert "--force" not in hint
    folder = Path(re.search(r"delete (\S+) to redo it", hint).group(1))
    assert folder == ctx.stage_dir("generate")
    import shutil

    shutil.rmtree(folder)
    redone = run_generate(fake_ctx(tmp_path))
    assert redone["counts"] == first["counts"] and redone["finished_at"] >= first["finished_at"]


# ------------------------------------------------------------------ bench tables


def _row(task, kind, methods, version=identity.NUMERICS_VERSION, delta=True):
    metric = "exact_match" if kind == "classification" else "rougeL"
    row = {"task": task, "kind": kind, "primary_metric": metric, "numerics": [version], "wall_seconds": 1.0,
           "scores": {m: {metric: 50.0 + i, f"paper_{metric}": 40.0} for i, m in enumerate(methods)}}
    if delta and "selfguide" in methods:
        row["delta"] = {"value": 1.0, "ci_low": -1.0, "ci_high": 3.0}
        row.update(pairs=5, inputs={"raw": 10, "kept": 5, "rejected": {"too_short": 5}})
    return row


@pytest.mark.parametrize("size", range(1, len(bench.METHODS) + 1))
def test_every_method_subset_writes_a_table(tmp_path, size):
    cfg = load_config(None, [])
    model = {"name": "m", "sha256": "0" * 64}
    for methods in itertools.combinations(bench.METHODS, size):
        rows = [_row("a", "classification", methods), _row("b", "generation", methods)]
        out = tmp_path / "-".join(methods)
        data = bench.write_results(out, rows, [], cfg, model, list(methods))
        assert set(data["averages"]) == {"classification", "generation"}
        assert (data["averages"]["classification"]["delta"] is None) == ("selfguide" not in methods)
        assert out.with_suffix(".md").exists() and out.with_suffix(".png").exists()


def test_bench_with_methods_lacking_selfguide_on_a_real_model(tmp_path, tiny_model):
    cfg = load_config(None, [f"run_dir={tmp_path / 'runs'}", f"model.name={tiny_model}", "evaluate.max_items=4",
                             "train.epochs=1", "model.dtype=float32", "evaluate.max_new_tokens=4"])
    data = bench.run_bench([str(EXAMPLE)], cfg, ["prompt-fewshot", "finetune-fewshot"], tmp_path / "out",
                           backend_factory=lambda: FakeBackend())
    row = data["tasks"][0]
    assert set(row["scores"]) == {"prompt-fewshot", "finetune-fewshot"} and data["averages"]["classification"]["delta"] is None
    assert row["numerics"] == [identity.NUMERICS_VERSION]


def test_a_table_refuses_rows_of_different_numerics_versions(tmp_path):
    methods = ["prompt-fewshot", "selfguide"]
    rows = [_row("a", "classification", methods), _row("b", "classification", methods, version=0)]
    with pytest.raises(UserInputError, match="different numerics versions"):
        bench.write_results(tmp_path / "t", rows, [], load_config(None, []), {"name": "m", "sha256": "0"}, methods)
    old = {k: v for k, v in rows[1].items() if k != "numerics"}  # rows written before the field count as version 0
    assert bench.numerics_versions([old]) == [0]
    bench.check_one_version(rows, "t", allow_mixed=True)
