"""A corpus of malformed and adversarial task files and configs (the reliability suite's inputs)."""

from __future__ import annotations

import json
from typing import Callable, Union

Content = Union[bytes, str, Callable[[str], None]]  # a callable writes the file itself (huge files)

GOOD = {
    "instruction": "Decide if the review is positive or negative.",
    "labels": ["positive", "negative"],
    "examples": [{"input": "Great film.", "output": "positive"}, {"input": "Dull and long.", "output": "negative"},
                 {"input": "Loved it.", "output": "positive"}],
}


def _j(**changes) -> str:
    data = {**GOOD, **changes}
    return json.dumps({k: v for k, v in data.items() if v is not ...})


def _sparse(size: int) -> Callable[[str], None]:
    def write(path: str) -> None:
        with open(path, "wb") as fh:
            fh.write(b'{"instruction": "')
            fh.truncate(size)
    return write


def task_files() -> dict[str, Content]:
    g = GOOD
    ex = g["examples"]
    return {
        # structure
        "missing_instruction.yaml": "examples:\n- {input: a, output: b}\n- {input: c, output: d}\n",
        "empty_file.yaml": "",
        "only_comment.yaml": "# nothing here\n",
        "top_level_list.json": json.dumps([g]),
        "top_level_string.yaml": "just a string\n",
        "top_level_number.json": "42",
        "null.json": "null",
        "truncated.json": json.dumps(g)[:40],
        "truncated_yaml.yaml": "instruction: x\nexamples:\n  - input: 'a\n",
        "bad_yaml.yaml": "instruction: [unclosed\n",
        "tabs_yaml.yaml": "instruction: x\n\texamples: []\n",
        "unknown_key.yaml": "instruction: x\nexampels: []\n",
        "unknown_key_typo.json": _j(lables=["a", "b"]),
        "deeply_nested.json": "[" * 100000 + "]" * 100000,
        # instruction
        "empty_instruction.json": _j(instruction="  "),
        "instruction_list.json": _j(instruction=["x"]),
        "instruction_number.json": _j(instruction=True),
        "instruction_null.json": _j(instruction=None),
        "huge_field.json": _j(instruction="x" * 30000),
        # examples
        "no_examples.json": _j(examples=...),
        "empty_examples.json": _j(examples=[]),
        "one_example.json": _j(examples=ex[:1]),
        "examples_not_list.json": _j(examples="Great film."),
        "examples_dict.json": _j(examples={"input": "a", "output": "positive"}),
        "example_not_mapping.json": _j(examples=["a", "b"]),
        "example_missing_output.json": _j(examples=[{"input": "a"}, {"input": "b", "output": "positive"}]),
        "example_missing_input.json": _j(examples=[{"output": "positive"}, *ex]),
        "example_unknown_key.json": _j(examples=[{"input": "a", "output": "positive", "label": 1}, *ex]),
        "example_empty_input.json": _j(examples=[{"input": "", "output": "positive"}, *ex]),
        "example_input_list.json": _j(examples=[{"input": ["a"], "output": "positive"}, *ex]),
        "example_huge_input.json": _j(examples=[{"input": "y" * 50000, "output": "positive"}, *ex]),
        "duplicate_examples.json": _j(examples=ex + ex[:1]),
        # labels
        "one_label.json": _j(labels=["positive"]),
        "zero_labels.json": _j(labels=[]),
        "duplicate_labels.json": _j(labels=["positive", "negative", "positive"]),
        "label_not_covering_example.json": _j(labels=["positive", "neutral"]),
        "labels_not_list.json": _j(labels="positive,negative"),
        "label_empty_string.json": _j(labels=["positive", "negative", ""]),
        "label_dict.json": _j(labels=[{"name": "positive"}, "negative"]),
        "too_many_labels.json": _j(labels=["positive", "negative", *[f"l{i}" for i in range(60)]]),
        # kind
        "kind_invalid.json": _j(kind="regression"),
        "kind_conflict.json": _j(kind="generation"),
        "classification_without_labels.json": _j(labels=..., kind="classification"),
        # eval items
        "eval_bad_label.json": _j(eval=[{"input": "ok", "output": "maybe"}]),
        "eval_not_list.json": _j(eval="ok"),
        "eval_missing_output.json": _j(eval=[{"input": "ok"}]),
        "eval_empty_output_list.json": _j(eval=[{"input": "ok", "output": []}]),
        # encodings, bytes, sizes
        "not_utf8.yaml": b"instruction: caf\xe9\nexamples: []\n",
        "utf16.json": json.dumps(g).encode("utf-16"),
        "nul_bytes.json": b'{"instruction": "a\x00b"}',
        "binary_garbage.json": bytes(range(256)) * 4,
        "huge_100mb.json": _sparse(100 * 1024 * 1024),
        # YAML dangers
        "yaml_python_tag.yaml": "instruction: !!python/object/apply:os.system ['echo hacked > hacked']\nexamples: []\n",
        "yaml_python_name.yaml": "instruction: !!python/name:os.system\nexamples: []\n",
        "yaml_alias_bomb.yaml": "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                                "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\ninstruction: *c\n",
        "yaml_merge_key.yaml": "base: &base {instruction: x}\n<<: *base\n",
        # paths
        "path_like_id.json": _j(id="../../etc/passwd"),
        "absolute_path_id.json": _j(id="/tmp/evil"),
        "dot_id.json": _j(id=".."),
        "id_with_slash.json": _j(id="a/b"),
        "wrong_suffix.txt": "instruction: x\n",
        # NIv2 / paper-prompt shaped but broken
        "niv2_empty_definition.json": json.dumps({"Definition": [], "Positive Examples": ex}),
        "niv2_no_examples.json": json.dumps({"Definition": ["Do it."], "Positive Examples": []}),
        "niv2_bad_instances.json": json.dumps({"Definition": ["Do it."], "Positive Examples": ex, "Instances": [{"input": 1}]}),
        "paper_prompt_bad_labels.json": json.dumps({"task_instruction": "Do it.", "examples": ex, "labels": ["only"]}),
    }


def config_files() -> dict[str, str]:
    return {
        "unknown_section.yaml": "generat:\n  temperature: 0.5\n",
        "unknown_key.yaml": "generate:\n  temprature: 0.5\n",
        "wrong_type.yaml": "generate:\n  temperature: hot\n",
        "out_of_range.yaml": "annotate:\n  min_agreement: 3\n",
        "negative_epochs.yaml": "train:\n  epochs: -1\n",
        "bad_choice.yaml": "train:\n  method: qlora\n",
        "section_not_mapping.yaml": "train: 3\n",
        "top_level_list.yaml": "- seed: 1\n",
        "bool_for_int.yaml": "model:\n  batch_size: true\n",
        "float_for_int.yaml": "train:\n  epochs: 2.5\n",
        "bad_baselines.yaml": "evaluate:\n  baselines: [oneshot]\n",
        "baselines_string.yaml": "evaluate:\n  baselines: fewshot\n",
        "alias.yaml": "a: &x 1\nseed: *x\n",
        "python_tag.yaml": "seed: !!python/object/apply:os.system ['echo hacked > hacked']\n",
        "invalid_yaml.yaml": "seed: [1\n",
        "not_utf8.yaml": "seed: 1 # caf\udce9\n",
        "many_errors.yaml": "seed: -5\ntrain:\n  epochs: 0\n  lora_r: 0\n",
        "conflicting_top_p.yaml": "generate:\n  top_p: 0\n",
    }
