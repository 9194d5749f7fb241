"""Typed run configuration: dataclass defaults < YAML file < `--set key=value` overrides.

Loading is strict: an unknown key is an error with a suggestion, values are type-checked and
range-checked, and every problem is reported at once. No torch here.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from selfguide.errors import ConfigError


@dataclass(frozen=True)
class ModelConfig:
    name: str = "embedded"  # "embedded", a local HF directory, or a local .gguf file
    backend: str = "auto"  # auto (openvino on CPU when set up, else hf) | hf | vllm | openvino | fake
    dtype: str = "auto"  # auto | float32 | bfloat16 (auto: bf16 on CPUs with native bf16, else fp32)
    batch_size: int = 32  # sequences decoded together (openvino, vllm: max_num_seqs)
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch CPU threads; 0 = all cores
    prefix_cache: bool = True  # encode the prefix all prompts of a call share once (6x faster annotation, same text)
    weights: str = "fp16"  # openvino: the exported weights, fp16 | int8 (8-bit weight-only compression)
    tensor_parallel_size: int = 1  # vllm: GPUs one model replica is split across
    gpu_memory_utilization: float = 0.85  # vllm: share of GPU memory for weights + KV cache


@dataclass(frozen=True)
class GenerateConfig:
    target_inputs: Optional[int] = None  # raw inputs to generate; None = 400 (classification) / 200 (generation)
    prompts_per_round: int = 10  # paper: 10; survivors of a round condition the next one
    temperature: Optional[float] = None  # None = 0.6 (classification) / 1.0 (generation), method.md §8.3
    top_k: int = 40
    top_p: float = 1.0
    max_new_tokens: Optional[int] = None  # None = derived from the examples' input lengths
    max_pool_examples: int = 10  # k earlier inputs shown as lower-quality examples, k ~ U{1..min(this, pool)}
    label_conditioned: bool = True  # classification: ask for an input whose answer is a random label
    length_filter: bool = True  # keep inputs within mu +/- 2 sigma chars of the example inputs (widened, filters.length_window)
    near_duplicate_threshold: Optional[float] = 0.85  # char 5-gram Jaccard; null disables
    rouge_threshold: Optional[float] = None  # Self-Instruct: reject when word ROUGE-L F vs an example or kept input >= this (0.7); null = off
    noise_terms: tuple[str, ...] = ()  # extra per-task noise terms (added to the defaults)
    placeholder_filter: bool = False  # reject inputs with bracketed slots like "[n]" (turned off, with a warning, for tasks whose examples have them)
    form_filter: bool = False  # reject inputs that are (not) questions when every example input is (not) one (filters.InputForm)
    system_prompt: str = "none"  # none: no system turn (the paper; a chat template may add its default persona) | writer: prompts.INPUT_WRITER_SYSTEM
    topic_seeds: bool = False  # ask each prompt for an input about a random broad topic (prompts.TOPIC_SEEDS)
    direction: str = "input"  # input: write inputs, then label them (the paper) | output: generation tasks write outputs, then the input each was made from (instruction backtranslation; stages/generate.py)
    min_kept: Optional[int] = None  # after target_inputs raw, go on with rounds until this many are kept (at most 2x the raw); None = 60 on generation tasks, off on classification (stages/generate.py); 0 = off (the paper)


@dataclass(frozen=True)
class AnnotateConfig:
    labeller: str = "auto"  # auto: score for classification, vote for generation | vote: n samples + majority (the paper) | score: each label's likelihood (classification) | mbr: the sample closest to the others (generation)
    orders: int = 6  # score: demonstration orders averaged over (all 6 for 3 examples; a seeded sample beyond)
    calibration: str = "content-free"  # score: none | batch | generative | content-free label prior divided out (calibration.py)
    min_margin: float = 0.0  # score: drop inputs whose calibrated top-1 minus runner-up probability is below this
    n: int = 10  # vote: samples per input (self-consistency)
    temperature: float = 0.2
    top_k: int = 10
    top_p: float = 1.0
    max_new_tokens: Optional[int] = None  # None = derived from the examples' output lengths
    min_agreement: float = 0.3  # vote: the majority answer needs this share of the surviving samples; mbr: this mean ROUGE-L to the others
    output_length_filter: Optional[bool] = None  # None = on for generation, off for classification
    form_filter: bool = False  # free text: reject samples that break a form rule every example keeps (filters.OutputForm)
    drop_input_copies: bool = False  # free text: reject a sample that repeats its whole input when no example's output repeats its input
    label_source: str = "annotate"  # annotate | conditioned | agree (classification only)
    agree_margin: float = 0.5  # agree: drop when another label holds at least this share of votes
    balance: str = "downsample"  # downsample | cap | off (classification only)
    balance_cap: float = 2.0  # with balance=cap: max ratio of the largest to the rarest class
    balance_by: str = "confidence"  # which inputs of a class balancing keeps: random | confidence (highest margin/agreement)
    chunk_size: int = 16  # inputs per backend call; the unit of resume


@dataclass(frozen=True)
class TrainConfig:
    method: str = "lora"  # lora | full
    epochs: int = 3
    learning_rate: Optional[float] = None  # None = 5e-5 (full, the paper) / lora_learning_rate (lora)
    lora_learning_rate: Optional[float] = None  # LoRA's step when learning_rate is unset; None = 1e-3 on generation tasks, 2e-4 on classification (stages/train.py); the paper preset: 2e-4
    batch_size: int = 8
    grad_accum: int = 1
    max_seq_len: int = 1024  # longer examples are dropped (counted), as in the paper
    replay_share: float = 0.2  # the task's real examples, repeated to make up this share of the training set (0 = the paper: synthetic only)
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    bf16: str = "auto"  # auto | true | false  (bf16 autocast, fp32 master weights)
    shared_prefix: bool = True  # one process: encode the prompt prefix all pairs share (instruction + examples) once per batch, not once per row
    neftune_alpha: Optional[float] = None  # uniform noise on the input embeddings while training (NEFTune, Jain et al. 2023; transformers' neftune_noise_alpha), e.g. 5; None = off


@dataclass(frozen=True)
class EvaluateConfig:
    split: str = "test_small"  # test | validation | test_small | all
    max_items: Optional[int] = None  # evaluate N evenly spaced items of the split (split files are often grouped by label)
    max_new_tokens: Optional[int] = None  # None = derived from the labels or example outputs (never the references)
    metrics: str = "official"  # official (NIv2) | paper (paper-compatible); both are always stored
    bootstrap: int = 1000  # paired bootstrap resamples for the verdict's CI (at least MIN_BOOTSTRAP)
    baselines: tuple[str, ...] = ("fewshot", "zeroshot")
    calibration: str = "content-free"  # prompt-calibrated (classification): none | batch | generative | content-free (best mean EM on the dev tasks, docs/benchmarks/dev/labeller.md)
    # the do-no-harm gate (stages/gate.py): keep the finetuning's scale (0, 0.5, 1) that scores best on validation.
    # auto: on when the task has enough validation items for it, else off with one line saying why | validation: always
    # (an error when it cannot) | off: the paper (no gate). auto is the default: on the dev tasks it removed every
    # per-seed loss (+7.1 vs +6.9 EM, docs/benchmarks/dev/classification-screen.md)
    gate: str = "auto"
    gate_epochs: bool = False  # the gate also weighs every earlier epoch's LoRA adapter at each scale (checkpoint choice)


@dataclass(frozen=True)
class RunConfig:
    preset: str = "selfguide"  # selfguide: the defaults the dev evidence chose | paper: Zhao et al.'s settings (PRESETS)
    seed: int = 42
    run_dir: str = "runs"
    name: str = "default"
    model: ModelConfig = field(default_factory=ModelConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    annotate: AnnotateConfig = field(default_factory=AnnotateConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)


CHOICES: dict[str, tuple[Any, ...]] = {
    "model.backend": ("auto", "hf", "vllm", "openvino", "fake"),
    "model.dtype": ("auto", "float32", "bfloat16"),
    "model.weights": ("fp16", "int8"),
    "model.device": ("auto", "cpu", "cuda"),
    "annotate.label_source": ("annotate", "conditioned", "agree"),
    "annotate.balance": ("downsample", "cap", "off"),
    "annotate.labeller": ("auto", "vote", "score", "mbr"),
    "generate.system_prompt": ("none", "writer"),
    "generate.direction": ("input", "output"),
    "annotate.calibration": ("none", "batch", "generative", "content-free"),
    "annotate.balance_by": ("random", "confidence"),
    "evaluate.calibration": ("none", "batch", "generative", "content-free"),
    "evaluate.gate": ("auto", "off", "validation"),
    "train.method": ("lora", "full"),
    "train.bf16": ("auto", "true", "false"),
    "evaluate.split": ("test", "validation", "test_small", "all"),
    "evaluate.metrics": ("official", "paper"),
}

# A 95% percentile interval needs resamples in each 2.5% tail: fewer than 40 gives none there, so
# the "interval" would be the extremes of a handful of draws (0 gave a zero-width one).
MIN_BOOTSTRAP = 40

# (min, max, inclusive-min) for numbers; None means unbounded on that side.
RANGES: dict[str, tuple[Optional[float], Optional[float], bool]] = {
    "seed": (0, 2**32 - 1, True),
    "model.batch_size": (1, 4096, True),
    "model.threads": (0, 1024, True),
    "model.tensor_parallel_size": (1, 1024, True),
    "model.gpu_memory_utilization": (0, 1, False),
    "generate.target_inputs": (1, 1_000_000, True),
    "generate.prompts_per_round": (1, 10_000, True),
    "generate.temperature": (0, 5, False),
    "generate.top_k": (0, 100_000, True),
    "generate.top_p": (0, 1, False),
    "generate.max_new_tokens": (1, 8192, True),
    "generate.max_pool_examples": (0, 100, True),
    "generate.near_duplicate_threshold": (0, 1, False),
    "generate.rouge_threshold": (0, 1, False),
    "generate.min_kept": (0, 1_000_000, True),
    "annotate.orders": (1, 720, True),
    "annotate.min_margin": (0, 1, True),
    "annotate.n": (1, 1000, True),
    "annotate.temperature": (0, 5, True),
    "annotate.top_k": (0, 100_000, True),
    "annotate.top_p": (0, 1, False),
    "annotate.max_new_tokens": (1, 8192, True),
    "annotate.min_agreement": (0, 1, True),
    "annotate.agree_margin": (0, 1, False),
    "annotate.balance_cap": (1, 1000, True),
    "annotate.chunk_size": (1, 100_000, True),
    "train.epochs": (1, 1000, True),
    "train.learning_rate": (0, 1, False),
    "train.lora_learning_rate": (0, 1, False),
    "train.batch_size": (1, 4096, True),
    "train.grad_accum": (1, 4096, True),
    "train.max_seq_len": (16, 1_000_000, True),
    "train.replay_share": (0, 0.9, True),
    "train.lora_r": (1, 4096, True),
    "train.lora_alpha": (1, 100_000, True),
    "train.lora_dropout": (0, 1, True),
    "train.weight_decay": (0, 10, True),
    "train.warmup_ratio": (0, 0.99, True),
    "train.neftune_alpha": (0, 1000, False),
    "evaluate.max_items": (1, 10_000_000, True),
    "evaluate.max_new_tokens": (1, 8192, True),
    "evaluate.bootstrap": (MIN_BOOTSTRAP, 1_000_000, True),
}

BASELINES = ("fewshot", "zeroshot")

# Method presets: each maps keys to the values that preset gives them, over the dataclass defaults
# (defaults < preset < YAML < --set). The defaults are the `selfguide` preset, what the development
# evidence chose (docs/benchmarks/dev/); `paper` undoes every one of those choices, so it reproduces
# the authors' method as method.md describes it. Every key here must differ from its default
# (tests/test_config.py), so a choice that became the default again cannot linger as a dead entry.
PRESETS: dict[str, dict[str, Any]] = {
    "selfguide": {},
    "paper": {
        "evaluate.gate": "off",  # the paper hands over the finetuned model, whatever it scores
        "generate.min_kept": 0,  # stop after target_inputs raw inputs, however few are kept
        "annotate.labeller": "vote",  # 10 sampled answers and a majority
        "annotate.calibration": "none",
        "annotate.balance_by": "random",
        "train.replay_share": 0.0,  # synthetic pairs only
        "train.lora_learning_rate": 2e-4,  # the common LoRA step (peft/QLoRA recipes), what selfguide used before
    },
}

# Settings that shrink the work so `selfguide run --quick` finishes within 5 minutes on 2 cores of
# an AVX2-only CPU in fp32 (docs/first-run.md: the demo task about 4 min, scitail about 4).
QUICK_PRESET: dict[str, Any] = {
    "generate.target_inputs": 160,
    "annotate.n": 5,
    "train.epochs": 2,
    "evaluate.max_items": 60,
    "evaluate.baselines": ("fewshot",),  # the verdict's baseline; zero-shot prompting only without --quick
}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _check_value(key: str, tp: Any, value: Any, errors: list[str]) -> Any:
    """Check `value` against the annotation `tp`; return the normalised value."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _check_value(key, args[0], value, errors)
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            errors.append(f"{key} must be a list of strings, got {type(value).__name__} {value!r}")
            return value
        bad = [v for v in value if not isinstance(v, str)]
        if bad:
            errors.append(f"{key} must be a list of strings, got item {bad[0]!r}")
        return tuple(value)
    if tp is bool:
        if not isinstance(value, bool):
            errors.append(f"{key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            errors.append(f"{key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            errors.append(f"{key} must be a number, got {value!r}")
            return value
        return float(value)
    if tp is str:
        if isinstance(value, bool) and key in CHOICES:
            # YAML 1.1 reads `bf16: true` and `balance: off` as booleans; map them back to the choice.
            spelled = ("true", "on", "yes") if value else ("false", "off", "no")
            for word in spelled:
                if word in CHOICES[key]:
                    return word
        if not isinstance(value, str):
            errors.append(f"{key} must be a string, got {value!r}")
        return value
    return value


def _build(cls: type, data: Any, prefix: str, errors: list[str]) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        where = prefix.rstrip(".") or "the config"
        errors.append(f"{where} must be a mapping of keys to values, got {type(data).__name__}")
        return cls()
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; known keys: {', '.join(names)}"
            errors.append(f"unknown key '{dotted}'{hint}")
            continue
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, f"{dotted}.", errors)
        else:
            kwargs[key] = _check_value(dotted, tp, value, errors)
    return cls(**kwargs)


def _validate(cfg: RunConfig, errors: list[str]) -> None:
    flat = flatten(cfg)
    for key, allowed in CHOICES.items():
        value = flat.get(key)
        if value is not None and value not in allowed:
            errors.append(f"{key} must be one of {', '.join(map(str, allowed))}; got {value!r}")
    for key, (lo, hi, lo_inclusive) in RANGES.items():
        value = flat.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        too_low = lo is not None and (value < lo if lo_inclusive else value <= lo)
        too_high = hi is not None and value > hi
        if too_low or too_high:
            bracket = "[" if lo_inclusive else "("
            errors.append(f"{key} must be in {bracket}{lo}, {hi}], got {value}")
    for name in cfg.evaluate.baselines:
        if name not in BASELINES:
            errors.append(f"evaluate.baselines: unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
    if "fewshot" not in cfg.evaluate.baselines:
        errors.append("evaluate.baselines must include fewshot: the verdict compares the finetuned model with it")
    if cfg.annotate.label_source in ("conditioned", "agree") and not cfg.generate.label_conditioned:
        errors.append(f"annotate.label_source={cfg.annotate.label_source} uses the label each input was generated for, but "
                      "generate.label_conditioned=false generates inputs without one; set generate.label_conditioned=true "
                      "or annotate.label_source=annotate")
    a = cfg.annotate
    # the preset's own calibration is simply unused by a labeller that samples; one asked for is an error
    asked_calibration = a.calibration not in ("none", preset_defaults(cfg.preset)["annotate.calibration"])
    if a.labeller in ("vote", "mbr") and (asked_calibration or a.min_margin):
        errors.append(f"annotate.calibration and annotate.min_margin act on label scores, which annotate.labeller="
                      f"{a.labeller} does not use; set annotate.labeller=score (or auto) or leave them at their defaults")
    if cfg.train.epochs and cfg.train.batch_size * cfg.train.grad_accum > 100_000:
        errors.append("train.batch_size * train.grad_accum is over 100000; lower one of them")


def preset_defaults(preset: str) -> dict[str, Any]:
    """Every flat key's value under `preset`, before any file or override."""
    return {**flatten(RunConfig()), **PRESETS[preset]}


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """{"generate.temperature": 0.6, ...} for a config dataclass."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out.update(flatten(value, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = value
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    data = dataclasses.asdict(cfg)

    def fix(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, tuple):
            return list(v)
        return v

    return fix(data)


def parse_override(text: str) -> tuple[str, Any]:
    """'generate.temperature=0.7' -> ("generate.temperature", 0.7); values are typed by YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. --set generate.temperature=0.7")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {text!r}: the key is empty; expected key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: '{part}' is not a section")
        node[parts[-1]] = value
    return out


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def read_config_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config file ({exc.strerror}); check the path") from None
    if len(raw) > 1_000_000:
        raise ConfigError(f"{p}: config file is {len(raw)} bytes; a config is a few hundred bytes, check the file")
    try:
        data = yaml.load(raw.decode("utf-8"), Loader=StrictSafeLoader)  # noqa: S506 (safe subclass)
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not UTF-8 text; save the config as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{p}:{where}: invalid YAML ({problem}); fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the config must be a mapping of sections (model:, generate:, ...), got {type(data).__name__}")
    return data


class StrictSafeLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases, so a small file cannot expand into gigabytes."""

    def compose_node(self, parent, index):  # type: ignore[override]
        if self.check_event(yaml.events.AliasEvent):
            event = self.peek_event()
            raise yaml.constructor.ConstructorError(
                None, None, "YAML aliases (*name) are not allowed", event.start_mark
            )
        return super().compose_node(parent, index)


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    extra: dict[str, Any] | None = None,
) -> RunConfig:
    """Build a RunConfig from defaults, the method preset, an optional YAML file, preset values and overrides."""
    data: dict[str, Any] = read_config_file(path) if path else {}
    if extra:
        data = _merge(data, _nest(extra))
    flat_overrides: dict[str, Any] = {}
    for text in overrides:
        key, value = parse_override(text)
        flat_overrides[key] = value
    data = _merge(data, _nest(flat_overrides))
    preset = data.get("preset", RunConfig.preset)
    if not isinstance(preset, str) or preset not in PRESETS:
        source = f"{path}: " if path else ""
        raise ConfigError(f"{source}preset must be one of {', '.join(PRESETS)}; got {preset!r}")
    data = _merge(_nest(PRESETS[preset]), data)
    errors: list[str] = []
    cfg = _build(RunConfig, data, "", errors)
    if not errors:
        _validate(cfg, errors)
    if errors:
        source = f"{path}: " if path else ""
        if len(errors) == 1:
            raise ConfigError(f"{source}{errors[0]}")
        raise ConfigError(f"{source}{len(errors)} config problems: " + "; ".join(errors))
    return cfg


def diff_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Short 'key: old -> new' lines for the keys that changed."""
    out: list[str] = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(diff_keys(a, b, f"{prefix}{key}."))
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out
