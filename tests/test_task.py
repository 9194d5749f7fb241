"""Task loading: the three file kinds, inference of kind/labels, and one-line errors for bad files."""

from __future__ import annotations

import json
import pytest
from conftest import EXAMPLE, NIV2, SHARED_NIV2
from selfguide.errors import TaskError
from selfguide.task import load_task

def test_user_yaml_example():
    spec = load_task(EXAMPLE)
    assert spec.id == "scitail" and spec.kind == "classification" and spec.labels == ("entails", "neutral")
    assert len(spec.examples) == 4 and len(spec.instances) == 200
    assert len(spec.split_items("test_small")) == 200 and spec.metric == "exact_match"


def test_niv2_and_paper_prompt_files():
    niv2 = load_task(NIV2 / "task1529_scitail1.1_classification.json")
    assert niv2.format == "niv2" and niv2.kind == "classification" and set(niv2.labels) == {"entails", "neutral"}
    assert len(niv2.split_items("test")) == 60 and len(niv2.split_items("validation")) == 20
    paper = load_task(NIV2 / "task1529.paper_prompt.json")
    assert paper.format == "paper_prompt" and paper.labels == ("entails", "neutral") and len(paper.instances) == 80
    gen = load_task(NIV2 / "task1562.paper_prompt.json")
    assert gen.kind == "generation" and gen.labels is None and gen.metric == "rougeL"
    assert len(gen.split_items("test")) == 128


def test_user_json_generation_and_overrides(tmp_path):
    p = tmp_path / "t.json"
    p.write_text(json.dumps({"instruction": "Shorten.", "examples": [{"input": "a b c", "output": "a"}, {"input": "d e", "output": "d"}]}))
    spec = load_task(p)
    assert spec.kind == "generation" and spec.id == "t"
    forced = load_task(p, labels=["a", "d"])
    assert forced.kind == "classification" and forced.labels == ("a", "d")


@pytest.mark.skipif(not SHARED_NIV2.exists(), reason="../shared/niv2 is not beside this checkout")
def test_every_shared_niv2_task_loads():
    files = sorted(SHARED_NIV2.glob("task*.json"))
    files = [f for f in files if not f.name.endswith(".split.json")]
    assert len(files) == 44
    for f in files:
        spec = load_task(f)
        assert spec.examples
        if f.name.endswith(".paper_prompt.json"):
            expected = json.loads(f.read_text())
            assert spec.kind == ("classification" if expected.get("labels") else "generation"), f


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(TaskError, match="cannot read"):
        load_task(tmp_path / "nope.yaml")
    with pytest.raises(TaskError, match="directory"):
        load_task(tmp_path)


def test_a_user_task_can_hold_validation_items_for_the_gate(tmp_path, run_dir):
    import yaml

    from selfguide.pipeline import make_context
    from selfguide.stages.gate import gate_mode

    data = yaml.safe_load(EXAMPLE.read_text())
    data["validation"] = [{"input": f"held-out text {i}", "output": data["labels"][i % 2]} for i in range(20)]
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(data))
    spec = load_task(path)
    assert len(spec.split_items("validation")) == 20 and len(spec.split_items("test")) == len(data["eval"])
    assert not {i.id for i in spec.split_items("validation")} & {i.id for i in spec.split_items("test")}
    assert gate_mode(make_context(path, overrides=[f"run_dir={run_dir}"])) == (True, None)  # auto gates it
    data["validation"][0]["id"] = data["eval"][0]["id"] = "same"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(TaskError, match="'same' is in both 'eval' and 'validation'"):
        load_task(path)
    data["validation"] = [{"input": "x", "output": "not-a-label"}]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(TaskError, match=r"validation\[0\]\.output"):
        load_task(path)
