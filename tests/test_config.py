"""Config: defaults, YAML, --set overrides, strict validation with suggestions."""

from __future__ import annotations

import pytest

from selfguide.config import RunConfig, load_config
from selfguide.errors import ConfigError


def test_defaults_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("seed: 7\ngenerate:\n  temperature: 0.8\ntrain:\n  bf16: false\n")
    cfg = load_config(p, ["generate.top_k=20", "evaluate.baselines=[fewshot]", "model.name=foo"])
    assert cfg.seed == 7 and cfg.generate.temperature == 0.8 and cfg.generate.top_k == 20
    assert cfg.train.bf16 == "false" and cfg.evaluate.baselines == ("fewshot",) and cfg.model.name == "foo"
    assert load_config() == RunConfig()


@pytest.mark.parametrize("override, message", [
    ("generate.temprature=0.5", "did you mean 'generate.temperature'"),
    ("generate.temperature=hot", "must be a number"),
    ("generate.temperature=-1", "must be in"),
    ("annotate.min_agreement=1.5", "must be in"),
    ("train.method=qlora", "must be one of"),
    ("annotate.label_source=oracle", "must be one of"),
    ("train.epochs=2.5", "must be an integer"),
    ("model.batch_size=0", "must be in"),
    ("evaluate.baselines=[oneshot]", "unknown baseline"),
    ("evaluate.baselines=[zeroshot]", "must include fewshot"),
    ("nosuchsection.x=1", "unknown key 'nosuchsection'"),
    ("generate=3", "must be a mapping"),
    ("seed", "expected key=value"),
])
def test_bad_overrides(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_all_errors_reported_at_once():
    with pytest.raises(ConfigError, match="2 config problems"):
        load_config(None, ["generate.top_k=-1", "train.epochs=0"])


def test_bad_files(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("a: &x [1]\nb: *x\n")
    with pytest.raises(ConfigError, match="aliases"):
        load_config(p)
    p.write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(p)
    p.write_bytes(b"seed: \xff\n")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(p)


def test_shipped_configs_validate():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    files = sorted(root.glob("*.yaml"))
    assert files
    for f in files:
        load_config(f)


def test_presets_layer_under_the_file_and_the_overrides(tmp_path):
    from selfguide.config import PRESETS, flatten

    assert load_config().preset == "selfguide" and load_config().evaluate.gate == "auto"
    default = load_config().annotate
    assert (default.labeller, default.calibration, default.balance_by) == ("auto", "content-free", "confidence")
    paper = load_config(overrides=["preset=paper"])
    assert paper.evaluate.gate == "off"
    assert (paper.annotate.labeller, paper.annotate.calibration, paper.annotate.balance_by) == ("vote", "none", "random")
    assert (load_config().train.replay_share, paper.train.replay_share) == (0.2, 0.0)
    assert (load_config().train.lora_learning_rate, paper.train.lora_learning_rate) == (None, 2e-4)
    # every entry of a preset changes a default: one that became the default again is dead
    defaults = flatten(RunConfig())
    for name, values in PRESETS.items():
        assert all(defaults[k] != v for k, v in values.items()), name
    # a file or --set still wins over the preset it names
    cfg = tmp_path / "c.yaml"
    cfg.write_text("preset: paper\nevaluate:\n  gate: validation\n")
    assert load_config(cfg).evaluate.gate == "validation"
    assert load_config(cfg, ["evaluate.gate=auto"]).evaluate.gate == "auto"
    assert load_config(extra={"preset": "paper"}, overrides=["evaluate.gate=validation"]).evaluate.gate == "validation"
    with pytest.raises(ConfigError, match="preset must be one of selfguide, paper; got 'papers'"):
        load_config(overrides=["preset=papers"])
    with pytest.raises(ConfigError, match="preset must be one of"):
        load_config(overrides=["preset=[1]"])


def test_lora_step_follows_the_task_kind_and_the_preset_and_an_explicit_rate_wins():
    """LoRA trains at 1e-3 on generation and 2e-4 on classification under the selfguide preset, at 2e-4 on both under
    the paper's; full finetuning at 5e-5 in both; train.learning_rate overrides either. The train stage's identity
    holds the resolved rate only, so stages made before train.lora_learning_rate existed (2e-4) keep theirs."""
    from conftest import EXAMPLE, NIV2
    from selfguide.stages.context import Context
    from selfguide.stages.train import learning_rate
    from selfguide.task import load_task

    generation, classification = load_task(NIV2 / "task1562.paper_prompt.json"), load_task(EXAMPLE)
    assert (generation.kind, classification.kind) == ("generation", "classification")

    def rate(task, *overrides):
        return learning_rate(Context(load_config(overrides=list(overrides)), task))

    assert rate(generation) == 1e-3 and rate(classification) == 2e-4
    assert rate(generation, "preset=paper") == rate(classification, "preset=paper") == 2e-4
    assert rate(generation, "train.method=full") == rate(classification, "preset=paper", "train.method=full") == 5e-5
    assert rate(generation, "train.learning_rate=0.003") == rate(classification, "preset=paper", "train.learning_rate=0.003") == 0.003
    assert rate(classification, "train.lora_learning_rate=0.0005") == rate(generation, "train.lora_learning_rate=0.0005") == 5e-4
    with pytest.raises(ConfigError, match="train.lora_learning_rate"):
        load_config(overrides=["train.lora_learning_rate=0"])
