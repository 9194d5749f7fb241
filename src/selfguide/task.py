"""Task specs: what the user wants the model to become good at.

Three file kinds load into one `TaskSpec`:
  * a hand-written YAML/JSON task file (instruction, examples, optional labels/kind/eval items);
  * an original Super-NaturalInstructions task JSON (Definition + Positive Examples + Instances);
  * a `<task>.paper_prompt.json` (the exact instruction/examples/labels the Self-Guide paper used).
Every problem raises TaskError with one line naming the file, the field and the fix. No torch here.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml

from selfguide.config import StrictSafeLoader
from selfguide.errors import TaskError

MAX_TASK_FILE_BYTES = 64 * 1024 * 1024  # NIv2 task files are under 3 MB; refuse before reading huge files
MAX_FIELD_CHARS = 20_000  # an instruction or example longer than this cannot fit a small model's prompt
MAX_LABELS = 50
# An NIv2 task counts as classification when its instances use at most this many distinct answers...
MAX_INFERRED_LABELS = 10
# ...and every one of them is short (labels are words, not sentences).
MAX_INFERRED_LABEL_CHARS = 40

USER_KEYS = ("id", "instruction", "examples", "kind", "labels", "eval", "validation", "noise_terms")
KINDS = ("classification", "generation")
SPLITS = ("test", "validation", "test_small", "all")


@dataclass(frozen=True)
class Example:
    input: str
    output: str


@dataclass(frozen=True)
class Instance:
    """A labelled evaluation item; `outputs` holds every reference answer."""

    id: str
    input: str
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class TaskSpec:
    id: str
    instruction: str
    examples: tuple[Example, ...]
    kind: str  # classification | generation
    labels: Optional[tuple[str, ...]]
    metric: str  # exact_match | rougeL (the primary metric)
    instances: tuple[Instance, ...] = ()
    splits: dict[str, tuple[str, ...]] = field(default_factory=dict)
    noise_terms: tuple[str, ...] = ()  # per-task noise terms on top of the defaults
    source: str = ""
    format: str = ""  # user | niv2 | paper_prompt
    demo_overlap_ids: tuple[str, ...] = ()  # items the split file marks as repeating a demonstration

    def split_items(self, split: str) -> list[Instance]:
        """The labelled items of a split, in split order ('all' = every instance), without the
        items that repeat a demonstration (excluded_items): the prompt would hold their answer."""
        excluded = {i for i, _ in self.excluded_items(split)}
        return [inst for inst in self._split(split) if inst.id not in excluded]

    def excluded_items(self, split: str) -> list[tuple[str, str]]:
        """(id, reason) of the split's items left out of evaluation."""
        example_inputs = {e.input.strip() for e in self.examples}
        marked = set(self.demo_overlap_ids)
        out = []
        for inst in self._split(split):
            if inst.id in marked:
                out.append((inst.id, "marked in the split file as a demonstration's input"))
            elif inst.input.strip() in example_inputs:
                out.append((inst.id, "same input as an example"))
        return out

    def _split(self, split: str) -> list[Instance]:
        if split == "all" or (not self.splits and split in ("test", "test_small")):
            return list(self.instances)
        ids = self.splits.get(split)
        if ids is None:
            have = ", ".join(sorted(self.splits)) or "none"
            raise TaskError(f"{self.source}: task {self.id} has no '{split}' split (has: {have}); choose another evaluate.split")
        by_id = {inst.id: inst for inst in self.instances}
        return [by_id[i] for i in ids if i in by_id]

    def fingerprint(self) -> str:
        """Hash of everything that changes synthesis (not the evaluation pool)."""
        blob = json.dumps(
            [self.id, self.instruction, [[e.input, e.output] for e in self.examples], self.kind,
             list(self.labels or []), list(self.noise_terms)],
            ensure_ascii=False,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "format": self.format,
            "kind": self.kind,
            "metric": self.metric,
            "labels": list(self.labels) if self.labels else None,
            "examples": len(self.examples),
            "instances": len(self.instances),
            "splits": {k: len(v) for k, v in self.splits.items()},
        }


# ---------------------------------------------------------------- reading files


def _read_text(path: Path) -> str:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise TaskError(f"{path}: cannot read task file ({exc.strerror}); check the path") from None
    if path.is_dir():
        raise TaskError(f"{path}: is a directory; give a task file (.yaml, .yml or .json)")
    if size > MAX_TASK_FILE_BYTES:
        raise TaskError(f"{path}: file is {size / 1e6:.0f} MB, over the {MAX_TASK_FILE_BYTES // 2**20} MB limit for a task file; trim it")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TaskError(f"{path}: cannot read task file ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TaskError(f"{path}: not valid UTF-8 (byte {exc.start}); save the file as UTF-8") from None
    if "\x00" in text:
        raise TaskError(f"{path}: contains NUL bytes; this is not a text task file")
    return text


def _parse(path: Path, text: str) -> Any:
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise TaskError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno} ({exc.msg}); fix the syntax") from None
        except RecursionError:
            raise TaskError(f"{path}: JSON nested too deeply; a task file is a flat mapping") from None
    if suffix in (".yaml", ".yml"):
        try:
            return yaml.load(text, Loader=StrictSafeLoader)  # noqa: S506 (safe loader without aliases)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise TaskError(f"{path}:{where}: invalid YAML ({problem}); fix the syntax") from None
        except RecursionError:
            raise TaskError(f"{path}: YAML nested too deeply; a task file is a flat mapping") from None
    raise TaskError(f"{path}: unknown file type '{suffix}'; use .yaml, .yml or .json")


def load_task(path: str | Path, *, kind: Optional[str] = None, labels: Optional[Iterable[str]] = None) -> TaskSpec:
    """Load any supported task file; `kind`/`labels` override what was inferred."""
    p = Path(path)
    data = _parse(p, _read_text(p))
    if not isinstance(data, dict):
        raise TaskError(f"{p}: a task file must be a mapping (instruction:, examples:, ...), got {type(data).__name__}")
    if "Definition" in data:
        spec = _from_niv2(p, data)
    elif "task_instruction" in data:
        spec = _from_paper_prompt(p, data)
    else:
        spec = _from_user(p, data)
    if kind is not None or labels is not None:
        spec = _override(p, spec, kind, labels)
    return spec


# ---------------------------------------------------------------- validation helpers


def _text(path: Path, fieldname: str, value: Any, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)  # YAML reads `output: 1` as a number; a label "1" is meant
        else:
            raise TaskError(f"{path}: field '{fieldname}' must be text, got {type(value).__name__}; quote it")
    if not allow_empty and not value.strip():
        raise TaskError(f"{path}: field '{fieldname}' is empty; write the text")
    if len(value) > MAX_FIELD_CHARS:
        raise TaskError(f"{path}: field '{fieldname}' is {len(value)} characters (limit {MAX_FIELD_CHARS}); shorten it")
    return value


def _examples(path: Path, fieldname: str, value: Any) -> tuple[Example, ...]:
    if value is None:
        raise TaskError(f"{path}: missing field '{fieldname}'; add at least 2 input/output examples")
    if not isinstance(value, list):
        raise TaskError(f"{path}: field '{fieldname}' must be a list of {{input, output}} items, got {type(value).__name__}")
    if len(value) < 2:
        raise TaskError(f"{path}: field '{fieldname}' has {len(value)} example(s); Self-Guide needs at least 2 input/output examples")
    out: list[Example] = []
    seen: set[tuple[str, str]] = set()
    for i, item in enumerate(value):
        where = f"{fieldname}[{i}]"
        if not isinstance(item, dict):
            raise TaskError(f"{path}: field '{where}' must be a mapping with 'input' and 'output', got {type(item).__name__}")
        extra = sorted(set(item) - {"input", "output", "explanation"})
        if extra:
            raise TaskError(f"{path}: field '{where}' has unknown key '{extra[0]}'; an example has only 'input' and 'output'")
        for key in ("input", "output"):
            if key not in item:
                raise TaskError(f"{path}: field '{where}' is missing '{key}'; every example needs input and output")
        ex = Example(_text(path, f"{where}.input", item["input"]).strip(), _text(path, f"{where}.output", item["output"]).strip())
        if (ex.input, ex.output) in seen:
            raise TaskError(f"{path}: field '{where}' repeats an earlier example; remove the duplicate")
        seen.add((ex.input, ex.output))
        out.append(ex)
    return tuple(out)


def _labels(path: Path, value: Any, examples: tuple[Example, ...]) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise TaskError(f"{path}: field 'labels' must be a list of label strings, got {type(value).__name__}")
    labels = tuple(_text(path, f"labels[{i}]", v).strip() for i, v in enumerate(value))
    if len(labels) < 2:
        raise TaskError(f"{path}: field 'labels' has {len(labels)} label(s); a classification task needs at least 2 (or drop 'labels' for generation)")
    if len(labels) > MAX_LABELS:
        raise TaskError(f"{path}: field 'labels' has {len(labels)} labels (limit {MAX_LABELS}); use kind: generation for open answers")
    if len(set(labels)) != len(labels):
        dup = next(lab for lab in labels if labels.count(lab) > 1)
        raise TaskError(f"{path}: field 'labels' lists '{dup}' twice; remove the duplicate")
    for i, ex in enumerate(examples):
        if ex.output not in labels:
            raise TaskError(f"{path}: field 'examples[{i}].output' is '{ex.output[:40]}', which is not in 'labels'; add it to labels or fix the example")
    return labels


def _kind(path: Path, value: Any) -> str:
    if value not in KINDS:
        raise TaskError(f"{path}: field 'kind' must be 'classification' or 'generation', got {value!r}")
    return value


def _task_id(path: Path, value: Any = None) -> str:
    if value is not None:
        tid = _text(path, "id", value).strip()
    else:
        stem = path.name.split(".")[0]
        m = re.match(r"(task\d+)", stem)
        tid = m.group(1) if m else stem
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,79}", tid) or ".." in tid:
        raise TaskError(f"{path}: field 'id' is {tid[:40]!r}; use 1-80 letters, digits, '_', '-' or '.' (it names a folder)")
    return tid


def _metric_for(kind: str) -> str:
    return "exact_match" if kind == "classification" else "rougeL"


def _override(path: Path, spec: TaskSpec, kind: Optional[str], labels: Optional[Iterable[str]]) -> TaskSpec:
    from dataclasses import replace

    new_kind = _kind(path, kind) if kind is not None else spec.kind
    new_labels = spec.labels
    if labels is not None:
        new_labels = _labels(path, list(labels), spec.examples)
        if kind is None:
            new_kind = "classification"
    if new_kind == "classification" and not new_labels:
        found = sorted({e.output for e in spec.examples})
        if len(found) < 2:
            raise TaskError(f"{path}: kind classification needs labels; give --labels A,B")
        new_labels = tuple(found)
    if new_kind == "generation":
        new_labels = None
    return replace(spec, kind=new_kind, labels=new_labels, metric=_metric_for(new_kind))


# ---------------------------------------------------------------- the three formats


def _from_user(path: Path, data: dict[str, Any]) -> TaskSpec:
    for key in data:
        if key not in USER_KEYS:
            close = difflib.get_close_matches(str(key), USER_KEYS, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"allowed keys: {', '.join(USER_KEYS)}"
            raise TaskError(f"{path}: unknown field '{key}'; {hint}")
    if "instruction" not in data:
        raise TaskError(f"{path}: missing field 'instruction'; describe the task in one or two sentences")
    instruction = _text(path, "instruction", data["instruction"]).strip()
    examples = _examples(path, "examples", data.get("examples"))
    kind = _kind(path, data["kind"]) if "kind" in data else None
    labels = _labels(path, data["labels"], examples) if data.get("labels") is not None else None
    if kind is None:
        kind = "classification" if labels else "generation"
    if kind == "classification" and labels is None:
        raise TaskError(f"{path}: field 'labels' is missing; kind classification needs the list of labels")
    if kind == "generation" and labels is not None:
        raise TaskError(f"{path}: fields 'kind' and 'labels' conflict: a generation task has no labels; drop one")
    noise = data.get("noise_terms") or []
    if not isinstance(noise, list):
        raise TaskError(f"{path}: field 'noise_terms' must be a list of strings")
    noise_terms = tuple(_text(path, f"noise_terms[{i}]", v) for i, v in enumerate(noise))
    tid = _task_id(path, data.get("id"))
    instances = _eval_items(path, data.get("eval"), tid, labels)
    ids = tuple(i.id for i in instances)
    # The eval list is the user's test set; test_small is its first 200 items, as for NIv2 tasks.
    # An optional validation list is what the do-no-harm gate chooses on (never reported by default).
    held = _eval_items(path, data.get("validation"), tid, labels, "validation")
    clash = sorted({i.id for i in held} & set(ids))
    if clash:
        raise TaskError(f"{path}: id '{clash[0]}' is in both 'eval' and 'validation'; an item belongs to one of them")
    splits = {"test": ids, "test_small": ids[:200]} if instances or held else {}
    if held:
        splits["validation"] = tuple(i.id for i in held)
    return TaskSpec(tid, instruction, examples, kind, labels, _metric_for(kind), instances + held, splits,
                    noise_terms, str(path), "user")


def _eval_items(path: Path, value: Any, tid: str, labels: Optional[tuple[str, ...]], name: str = "eval") -> tuple[Instance, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise TaskError(f"{path}: field '{name}' must be a list of {{input, output}} items")
    out = []
    for i, item in enumerate(value):
        where = f"{name}[{i}]"
        if not isinstance(item, dict) or "input" not in item or "output" not in item:
            raise TaskError(f"{path}: field '{where}' must be a mapping with 'input' and 'output'")
        extra = sorted(set(item) - {"id", "input", "output"})
        if extra:
            raise TaskError(f"{path}: field '{where}' has unknown key '{extra[0]}'; an {name} item has id, input, output")
        outputs = item["output"] if isinstance(item["output"], list) else [item["output"]]
        if not outputs:
            raise TaskError(f"{path}: field '{where}.output' is an empty list; give at least one reference")
        refs = tuple(_text(path, f"{where}.output", o).strip() for o in outputs)
        if labels and refs[0] not in labels:
            raise TaskError(f"{path}: field '{where}.output' is '{refs[0][:40]}', not one of the labels; fix it or the labels")
        iid = str(item.get("id") or f"{tid}-{'eval' if name == 'eval' else 'val'}-{i:05d}")
        out.append(Instance(iid, _text(path, f"{where}.input", item["input"]).strip(), refs))
    return tuple(out)


def _niv2_instances(path: Path, data: dict[str, Any]) -> tuple[Instance, ...]:
    raw = data.get("Instances") or []
    if not isinstance(raw, list):
        raise TaskError(f"{path}: field 'Instances' must be a list")
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("input"), str) or not isinstance(item.get("output"), list):
            raise TaskError(f"{path}: field 'Instances[{i}]' must have 'id', 'input' (text) and 'output' (list of text)")
        refs = tuple(str(o).strip() for o in item["output"] if isinstance(o, (str, int, float)))
        if not refs:
            continue  # an instance without a reference cannot be scored
        out.append(Instance(str(item.get("id", f"{i}")), item["input"].strip(), refs))
    return tuple(out)


def _infer_labels(instances: tuple[Instance, ...], examples: tuple[Example, ...]) -> Optional[tuple[str, ...]]:
    """Labels of a closed, small answer set; None means open-ended generation.

    The examples' outputs join the set: task190's Definition asks for E/C/N though no instance is E.
    """
    if len(instances) < 20:
        return None
    answers = {inst.outputs[0] for inst in instances} | {e.output for e in examples}
    if not 2 <= len(answers) <= MAX_INFERRED_LABELS:
        return None
    if any(len(a) > MAX_INFERRED_LABEL_CHARS for a in answers):
        return None
    ordered = [e.output for e in examples] + sorted(answers)
    return tuple(dict.fromkeys(ordered))


def _sibling_splits(path: Path, tid: str) -> tuple[dict[str, tuple[str, ...]], tuple[str, ...]]:
    """The split id lists of `<tid>.split.json` and its `paper_demo_overlap_ids`."""
    split_file = path.parent / f"{tid}.split.json"
    if not split_file.exists():
        return {}, ()
    data = _parse(split_file, _read_text(split_file))
    if not isinstance(data, dict):
        raise TaskError(f"{split_file}: must be a mapping with test/validation/test_small id lists")
    out = {}
    for name in ("test", "validation", "test_small"):
        ids = data.get(name)
        if ids is None:
            continue
        if not isinstance(ids, list) or not all(isinstance(x, str) for x in ids):
            raise TaskError(f"{split_file}: field '{name}' must be a list of instance ids")
        out[name] = tuple(ids)
    overlap = data.get("paper_demo_overlap_ids") or []
    if not isinstance(overlap, list) or not all(isinstance(x, str) for x in overlap):
        raise TaskError(f"{split_file}: field 'paper_demo_overlap_ids' must be a list of instance ids")
    return out, tuple(overlap)


def _from_niv2(path: Path, data: dict[str, Any]) -> TaskSpec:
    definition = data.get("Definition")
    if isinstance(definition, list):
        if not definition:
            raise TaskError(f"{path}: field 'Definition' is an empty list; it must hold the task instruction")
        definition = definition[0]
    instruction = _text(path, "Definition", definition).strip()
    examples = _examples(path, "Positive Examples", data.get("Positive Examples"))
    tid = _task_id(path)
    instances = _niv2_instances(path, data)
    labels = _infer_labels(instances, examples)
    kind = "classification" if labels else "generation"
    splits, overlap = _sibling_splits(path, tid)
    return TaskSpec(tid, instruction, examples, kind, labels, _metric_for(kind), instances,
                    splits, (), str(path), "niv2", overlap)


def _from_paper_prompt(path: Path, data: dict[str, Any]) -> TaskSpec:
    instruction = _text(path, "task_instruction", data.get("task_instruction")).strip()
    examples = _examples(path, "examples", data.get("examples"))
    tid = _task_id(path, data.get("task_id"))
    labels = _labels(path, data["labels"], examples) if data.get("labels") else None
    kind = "classification" if labels else "generation"
    # The labelled pool lives in the sibling NIv2 file (<task>_<name>.json), the splits beside it.
    instances: tuple[Instance, ...] = ()
    for sibling in sorted(path.parent.glob(f"{tid}_*.json")):
        sib = _parse(sibling, _read_text(sibling))
        if isinstance(sib, dict) and "Definition" in sib:
            instances = _niv2_instances(sibling, sib)
            break
    splits, overlap = _sibling_splits(path, tid)
    return TaskSpec(tid, instruction, examples, kind, labels, _metric_for(kind), instances,
                    splits, (), str(path), "paper_prompt", overlap)
