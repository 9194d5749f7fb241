"""Task loading: the three file kinds, inference of kind/labels, and one-line errors for bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import EXAMPLE, NIV2, SHARED_NIV2
from selfguide.cli import cli
from selfguide.errors import TaskError
from selfguide.task import load_task

GOOD = {
    "instruction": "Decide if the review is positive or negative.",
    "labels": ["positive", "negative"],
    "examples": [{"input": "Great film.", "output": "positive"}, {"input": "Dull and long.", "output": "negative"},
                 {"input": "Loved it.", "output": "positive"}],
}


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


def _bad_corpus() -> dict[str, bytes | str]:
    g = GOOD
    return {
        "missing_instruction.yaml": "examples:\n- {input: a, output: b}\n- {input: c, output: d}\n",
        "empty_instruction.json": json.dumps({**g, "instruction": "  "}),
        "instruction_list.json": json.dumps({**g, "instruction": ["x"]}),
        "no_examples.json": json.dumps({k: v for k, v in g.items() if k != "examples"}),
        "empty_examples.json": json.dumps({**g, "examples": []}),
        "one_example.json": json.dumps({**g, "examples": g["examples"][:1]}),
        "examples_not_list.json": json.dumps({**g, "examples": "Great film."}),
        "example_not_mapping.json": json.dumps({**g, "examples": ["a", "b"]}),
        "example_missing_output.json": json.dumps({**g, "examples": [{"input": "a"}, {"input": "b", "output": "positive"}]}),
        "example_unknown_key.json": json.dumps({**g, "examples": [{"input": "a", "output": "positive", "label": 1}] + g["examples"]}),
        "duplicate_examples.json": json.dumps({**g, "examples": g["examples"] + g["examples"][:1]}),
        "one_label.json": json.dumps({**g, "labels": ["positive"]}),
        "duplicate_labels.json": json.dumps({**g, "labels": ["positive", "negative", "positive"]}),
        "label_not_covering_example.json": json.dumps({**g, "labels": ["positive", "neutral"]}),
        "labels_not_list.json": json.dumps({**g, "labels": "positive,negative"}),
        "unknown_key.yaml": "instruction: x\nexampels: []\n",
        "kind_invalid.json": json.dumps({**g, "kind": "regression"}),
        "kind_conflict.json": json.dumps({**g, "kind": "generation"}),
        "classification_without_labels.json": json.dumps({k: v for k, v in g.items() if k != "labels"} | {"kind": "classification"}),
        "not_utf8.yaml": b"instruction: caf\xe9\nexamples: []\n",
        "truncated.json": json.dumps(g)[:40],
        "top_level_list.json": json.dumps([g]),
        "bad_yaml.yaml": "instruction: [unclosed\n",
        "yaml_python_tag.yaml": "instruction: !!python/object/apply:os.system ['echo hacked']\nexamples: []\n",
        "yaml_alias_bomb.yaml": "a: &a [x, x, x, x]\nb: &b [*a, *a, *a, *a]\ninstruction: *b\n",
        "path_like_id.json": json.dumps({**g, "id": "../../etc/passwd"}),
        "huge_field.json": json.dumps({**g, "instruction": "x" * 30000}),
        "nul_bytes.json": b'{"instruction": "a\x00b"}',
        "wrong_suffix.txt": "instruction: x\n",
        "eval_bad_label.json": json.dumps({**g, "eval": [{"input": "ok", "output": "maybe"}]}),
    }


def test_bad_task_files_exit_2_with_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    corpus = _bad_corpus()
    assert len(corpus) >= 20
    runner = CliRunner()
    for name, content in corpus.items():
        p = tmp_path / "bad" / name
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
        for args in (["task", "check", str(p)], ["generate", str(p), "--backend", "fake"]):
            result = runner.invoke(cli, args)
            assert result.exit_code == 2, (name, result.output)
            lines = [ln for ln in result.output.strip().splitlines() if ln]
            assert len(lines) == 1 and lines[0].startswith("error: ") and name in lines[0], (name, result.output)
            assert "Traceback" not in result.output
    assert not (tmp_path / "runs").exists(), "a rejected task file must write nothing"
    assert not Path("hacked").exists()


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(TaskError, match="cannot read"):
        load_task(tmp_path / "nope.yaml")
    with pytest.raises(TaskError, match="directory"):
        load_task(tmp_path)
