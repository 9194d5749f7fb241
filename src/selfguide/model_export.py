"""`selfguide export`: the finetuned model as a folder others can run, in the formats small models
are deployed in: the merged Hugging Face folder (transformers, vLLM) and GGUF (llama.cpp, Ollama,
LM Studio), with a model card and a check that the GGUF answers like the HF model.

GGUF is written by llama.cpp's own converter (`convert_hf_to_gguf.py`, MIT), not by selfguide: it
ships inside the llama-cpp-python source package on PyPI. `selfguide export --fetch-converter`
downloads that package once (pip, ~77 MB) and keeps only the converter, its `conversion/`
package and its `gguf-py/` in the cache; `--converter` or `SELFGUIDE_LLAMA_CPP` name a llama.cpp
checkout instead. The converter needs `sentencepiece` (`pip install 'selfguide[gguf]'`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from selfguide.errors import SelfGuideError, UserInputError
from selfguide.models import cache_dir

log = logging.getLogger(__name__)
LLAMA_CPP_PYTHON = "0.3.36"  # the source package whose vendored llama.cpp converter was tested
CONVERTER = "convert_hf_to_gguf.py"
OUTTYPES = ("f16", "q8_0", "bf16")
CHECK_PROMPTS = 50


class ExportError(SelfGuideError):
    exit_code = 2


def converter_dir(explicit: Optional[str] = None) -> Path:
    """The llama.cpp folder holding convert_hf_to_gguf.py: --converter, $SELFGUIDE_LLAMA_CPP, or the fetched copy."""
    for source, value in (("--converter", explicit), ("SELFGUIDE_LLAMA_CPP", os.environ.get("SELFGUIDE_LLAMA_CPP"))):
        if value:
            path = Path(value)
            folder = path.parent if path.name == CONVERTER else path
            if not (folder / CONVERTER).is_file():
                raise ExportError(f"{source} {value}: no {CONVERTER} there; name a llama.cpp checkout or the script itself")
            return folder
    fetched = fetched_converter_dir()
    if (fetched / CONVERTER).is_file():
        return fetched
    raise ExportError(f"GGUF export needs llama.cpp's {CONVERTER}; run `selfguide export --fetch-converter` once (downloads "
                      f"llama-cpp-python {LLAMA_CPP_PYTHON}'s source package from PyPI and keeps the converter), or pass "
                      "--converter PATH/TO/llama.cpp")


def fetched_converter_dir() -> Path:
    return cache_dir() / "llama.cpp" / f"llama-cpp-python-{LLAMA_CPP_PYTHON}"


def fetch_converter() -> Path:
    """Download the llama-cpp-python sdist with pip and keep the converter parts (atomically)."""
    target = fetched_converter_dir()
    if (target / CONVERTER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q", "-d", tmp,
               f"llama-cpp-python=={LLAMA_CPP_PYTHON}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        archives = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if proc.returncode != 0 or not archives:
            raise ExportError(f"could not download llama-cpp-python {LLAMA_CPP_PYTHON}'s source package with pip "
                              f"({(proc.stderr or proc.stdout).strip().splitlines()[-1:] or 'no output'}); check that PyPI is "
                              "reachable, or pass --converter PATH/TO/llama.cpp")
        staging = Path(tmp) / "converter"
        wanted = ("vendor/llama.cpp/convert_hf_to_gguf.py", "vendor/llama.cpp/conversion/", "vendor/llama.cpp/gguf-py/",
                  "vendor/llama.cpp/LICENSE")
        with tarfile.open(archives[0]) as tar:
            for member in tar.getmembers():
                inner = member.name.split("/", 1)[-1]
                if member.isfile() and inner.startswith(wanted):
                    dest = staging / inner.removeprefix("vendor/llama.cpp/")
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with tar.extractfile(member) as src, open(dest, "wb") as out:  # type: ignore[union-attr]
                        shutil.copyfileobj(src, out)
        if not (staging / CONVERTER).is_file():
            raise ExportError(f"{archives[0].name} has no {CONVERTER}; pass --converter PATH/TO/llama.cpp")
        os.replace(staging, target)
    return target


def write_gguf(model_dir: Path, out: Path, outtype: str, converter: Optional[str] = None) -> dict[str, Any]:
    """Convert a merged HF folder to one GGUF file with llama.cpp's converter (written atomically)."""
    import importlib.util

    if outtype not in OUTTYPES:
        raise UserInputError(f"--outtype {outtype}: choose one of {', '.join(OUTTYPES)}")
    if importlib.util.find_spec("sentencepiece") is None:
        raise ExportError("llama.cpp's converter needs sentencepiece: pip install 'selfguide[gguf]' (or pip install sentencepiece)")
    folder = converter_dir(converter)
    tmp = out.with_name(f".{out.name}.tmp")
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}  # the converter's own gguf-py, matched to it
    t0 = time.time()
    proc = subprocess.run([sys.executable, str(folder / CONVERTER), str(model_dir), "--outfile", str(tmp), "--outtype", outtype],
                          capture_output=True, text=True, env=env)
    log.debug("%s output:\n%s", CONVERTER, proc.stdout + proc.stderr)
    if proc.returncode != 0 or not tmp.exists():
        tmp.unlink(missing_ok=True)
        last = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()][-1:] or ["no output"]
        raise ExportError(f"{CONVERTER} could not convert {model_dir} ({last[0][:300]}); the full output is in the run's selfguide.log")
    os.replace(tmp, out)
    return {"file": str(out), "outtype": outtype, "bytes": out.stat().st_size, "seconds": round(time.time() - t0, 1),
            "converter": f"llama.cpp {CONVERTER} from {folder}"}


def check_prompts(ctx: Any, tok: Any, k: Optional[int] = None) -> dict[str, list[str]]:
    """k prompts of the task as the finetuned model sees them, in two kinds: half task prompts
    (eval items first, then synthetic and example inputs) and half input-generation prompts (the
    model writes a new input: long free text, where a conversion error shows even when every task
    answer is the same label)."""
    import random

    from selfguide import prompts
    from selfguide.backends.hf_model import render_prompt
    from selfguide.stages.evaluate import eval_items
    from selfguide.store import read_records

    total = k or CHECK_PROMPTS
    inputs = [it.input for it in eval_items(ctx)]
    inputs += [p["input"] for p in read_records(ctx.stage_dir("annotate") / "pairs.jsonl")]
    inputs += [e.input for e in ctx.task.examples]
    answers = [render_prompt(tok, prompts.task_messages(ctx.task, x)) for x in list(dict.fromkeys(inputs))[: total - total // 2]]
    rng = random.Random(ctx.cfg.seed)
    pool = [p["input"] for p in read_records(ctx.stage_dir("generate") / "inputs.jsonl")]
    writing = []
    for _ in range(total // 2):
        messages, _label = prompts.sample_generation_prompt(ctx.task, pool, rng, ctx.cfg.generate.max_pool_examples, True)
        writing.append(render_prompt(tok, messages, prompts.INPUT_PREFILL))
    return {"task answers": answers, "new inputs": writing}


def _answers(folder: Path, prompt_texts: list[str], max_new_tokens: int) -> list[Any]:
    """Greedy completions of the transformers model itself (hf backend, float32; the shared
    instruction + examples encoded once): the reference the GGUF file is checked against."""
    from selfguide.backends import get_backend

    backend = get_backend("hf", model=str(folder), dtype="float32", batch_size=16, prefix_cache=True, device="cpu")
    try:
        return [o[0] for o in backend.generate(prompt_texts, max_new_tokens=max_new_tokens)]
    finally:
        backend.close()


INPUT_TOKENS = 32  # greedy tokens of a written input: long enough for differences to show


def check_gguf(gguf: Path, model_dir: Path, groups: dict[str, list[str]], answer_tokens: int, outtype: str) -> dict[str, Any]:
    """Greedy completions of the GGUF against the HF model on the same prompts (check_prompts).

    transformers reads the GGUF back (its tensors dequantized, its tokenizer rebuilt from the GGUF's
    metadata); the reference is the HF model with its weights rounded to the GGUF's float type; both
    then answer through the same float32 code, so a correct conversion gives identical completions.
    (q8_0 has no such rounding to compare with: its share of identical completions is reported.)
    Where llama-cpp-python is installed, llama.cpp itself decodes the GGUF too, against the
    unrounded float32 model (a different kernel library: near, not necessarily exact, agreement).
    """
    import importlib.util

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from selfguide.backends import hf_model

    hf_logging.disable_progress_bar()  # "Converting and de-quantizing GGUF tensors" bars: the export prints its own result
    budgets = {name: INPUT_TOKENS if name == "new inputs" else answer_tokens for name in groups}
    texts = [t for g in groups.values() for t in g]
    tok = hf_model.load_tokenizer(model_dir)
    g_tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    ids_by_group = {name: [tok(p, add_special_tokens=False)["input_ids"] for p in g] for name, g in groups.items() if g}
    ids = [x for g in ids_by_group.values() for x in g]
    g_ids = [g_tok(p, add_special_tokens=False)["input_ids"] for p in texts]
    rounding = {"f16": torch.float16, "bf16": torch.bfloat16}.get(outtype)
    with_llama_cpp = importlib.util.find_spec("llama_cpp") is not None

    def answers(folder: Path) -> dict[str, list[Any]]:
        return {name: _answers(folder, g, budgets[name]) for name, g in groups.items() if g}

    with tempfile.TemporaryDirectory(prefix="selfguide-gguf-check-") as tmp:
        ref_dir, gguf_dir = Path(tmp) / "reference", Path(tmp) / "gguf"
        plain = answers(model_dir) if with_llama_cpp or rounding is None else None
        if rounding is not None:
            reference = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, use_safetensors=True)
            with torch.no_grad():
                for p in reference.parameters():
                    p.copy_(p.to(rounding).to(torch.float32))
            reference.save_pretrained(ref_dir, safe_serialization=True)
            tok.save_pretrained(ref_dir)
            del reference
            expected = answers(ref_dir)
        else:
            expected = plain
        g_model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        if getattr(g_model, "hf_quantizer", None) is not None:  # dense already; lets save_pretrained work (feasibility §6)
            g_model.hf_quantizer.remove_quantization_config(g_model)
        g_model.save_pretrained(gguf_dir, safe_serialization=True)
        g_tok.save_pretrained(gguf_dir)
        del g_model
        got = answers(gguf_dir)
    per_group = {}
    for name in expected:
        e, g = expected[name], got[name]
        per_group[name] = {"prompts": len(e), "max_new_tokens": budgets[name], "identical": sum(a == b for a, b in zip(e, g)),
                           "distinct_completions": len({c.text for c in e}),
                           "differing": [{"prompt": i, "hf": e[i].text, "gguf": g[i].text} for i in range(len(g)) if e[i] != g[i]][:3]}
    result: dict[str, Any] = {
        "prompts": len(texts), "tokenizer_identical": sum(a == b for a, b in zip(ids, g_ids)),
        "transformers_reads_gguf": {
            "reference": f"HF model with weights rounded to {outtype}, float32 compute" if rounding is not None else "HF model, float32",
            "identical": sum(v["identical"] for v in per_group.values()), "by_kind": per_group,
        },
    }
    if with_llama_cpp and plain is not None:
        result["llama_cpp"] = _check_with_llama_cpp(gguf, tok, ids_by_group, {n: [c.text for c in v] for n, v in plain.items()}, budgets)
    else:
        result["llama_cpp"] = {"ran": False, "why": "llama-cpp-python is not installed (pip install llama-cpp-python, a source build)"}
    result["passed"] = (result["tokenizer_identical"] == len(ids)
                        and (rounding is None or result["transformers_reads_gguf"]["identical"] == len(ids)))
    return result


def _check_with_llama_cpp(gguf: Path, tok: Any, ids: dict[str, list[list[int]]], reference: dict[str, list[str]],
                          budgets: dict[str, int]) -> dict[str, Any]:
    from llama_cpp import Llama

    from selfguide.backends import hf_model

    end_ids = hf_model.end_token_ids(tok)
    longest = max(len(x) for g in ids.values() for x in g)
    llm = Llama(model_path=str(gguf), n_ctx=longest + max(budgets.values()) + 8, verbose=False, seed=0)
    by_kind = {}
    for name, group in ids.items():
        got = []
        for prompt in group:
            out: list[int] = []
            for t in llm.generate(prompt, top_k=1, top_p=1.0, temp=0.0, reset=True):
                if t in end_ids or len(out) >= budgets[name]:
                    break
                out.append(t)
            got.append(tok.decode(out, skip_special_tokens=True))
        ref = reference[name]
        by_kind[name] = {"prompts": len(got), "identical": sum(a == b for a, b in zip(ref, got)),
                         "differing": [{"prompt": i, "hf": ref[i], "llama_cpp": got[i]} for i in range(len(got)) if ref[i] != got[i]][:3]}
    return {"ran": True, "reference": "HF model, float32", "identical": sum(v["identical"] for v in by_kind.values()),
            "by_kind": by_kind}


def export_model(ctx: Any, out: Path, gguf: bool, outtype: str = "f16", converter: Optional[str] = None,
                 check: bool = True) -> dict[str, Any]:
    """Write out/hf (merged safetensors + tokenizer + card), optionally out/<task>-<outtype>.gguf with its
    check, and out/README.md saying what each file is and how to run it."""
    from selfguide.stages.evaluate import eval_budget
    from selfguide.store import atomic_write_json, atomic_write_text

    manifest_path = ctx.stage_dir("train") / "MANIFEST.json"
    if not manifest_path.exists():
        raise ExportError(f"{ctx.stage_dir('train')}: no finetuned model yet; run `selfguide run` (or `selfguide train`) "
                          "on this task first")
    from selfguide.stages.train import resolved_model_dir

    train = resolved_model_dir(json.loads(manifest_path.read_text(encoding="utf-8")), manifest_path.parent)
    model_dir = Path(train["model_dir"])
    from selfguide.stages.gate import read_gate

    gate = read_gate(ctx, train)
    if gate and (gate["scale"] != 1.0 or gate.get("epoch")):  # the gate kept less of the finetuning: export what it kept
        from selfguide.backends import hf_model
        from selfguide.models import resolve_model

        model_dir = Path(gate["model_dir"]) if gate["scale"] else hf_model.materialize(resolve_model(ctx.cfg.model.name))
        log.warning("export: %s; exporting that model", gate["sentence"])
    out.mkdir(parents=True, exist_ok=True)
    hf_out = out / "hf"
    staging = out / ".hf.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(model_dir, staging)
    shutil.rmtree(hf_out, ignore_errors=True)
    os.replace(staging, hf_out)
    info: dict[str, Any] = {"task": ctx.task.id, "hf": str(hf_out), "trained": train["counts"], "gate": gate}
    if gguf:
        target = out / f"{ctx.task.id}-{outtype}.gguf"
        info["gguf"] = write_gguf(model_dir, target, outtype, converter)
        if check:
            from selfguide.backends.hf_model import load_tokenizer

            groups = check_prompts(ctx, load_tokenizer(model_dir))
            info["gguf_check"] = check_gguf(target, model_dir, groups, eval_budget(ctx), outtype)
            atomic_write_json(out / "gguf-check.json", info["gguf_check"])
    verdict_path = ctx.task_dir / "verdict.json"
    verdict = json.loads(verdict_path.read_text(encoding="utf-8")) if verdict_path.exists() else None
    atomic_write_text(out / "README.md", model_card(ctx, info, train, verdict))
    return info


def model_card(ctx: Any, info: dict[str, Any], train: dict[str, Any], verdict: Optional[dict[str, Any]]) -> str:
    base = ctx.base_model_identity(None)
    t, c = ctx.cfg.train, train["counts"]
    lines = [
        "---", "library_name: transformers", "tags: [selfguide, self-guide, synthetic-data, gguf]", f"base_model: {base['name']}", "---", "",
        f"# {base['name']} specialised for {ctx.task.id} by selfguide", "",
        "The model finetuned itself on inputs it wrote and labelled from the task instruction and "
        f"{len(ctx.task.examples)} examples (Self-Guide, Zhao et al., COLM 2024, arXiv 2407.12874).", "",
        f"- task: {ctx.task.id} ({ctx.task.kind}); instruction: {ctx.task.instruction[:300]}",
        f"- base model: {base['name']} (sha256 {base['sha256'][:16]})",
        f"- training: {t.method}, {t.epochs} epochs, lr {train['config']['learning_rate']:g}, seed {ctx.cfg.seed}, "
        f"{c['trained_on']} synthetic pairs ({c['pairs']} made, {c['dropped_too_long']} too long)",
        f"- made by selfguide (numerics version {train['config']['numerics']}) on {train['finished_at']}",
        f"- verdict: {verdict['sentence'] if verdict else 'none recorded (run `selfguide run` for one)'}", "",
        "## Files", "",
        "- `hf/`: merged safetensors + tokenizer (transformers, vLLM): "
        "`AutoModelForCausalLM.from_pretrained('hf')`",
    ]
    if "gguf" in info:
        g = info["gguf"]
        name = Path(g["file"]).name
        lines += [f"- `{name}`: GGUF {g['outtype']} ({g['bytes'] / 1e6:.0f} MB), written by {g['converter']}; the chat "
                  "template is inside", "", "## Run it elsewhere", "",
                  f"- llama.cpp: `llama-cli -m {name} -cnv` (or `llama-server -m {name}`)",
                  f"- Ollama: a `Modelfile` with `FROM ./{name}`, then `ollama create {ctx.task.id} -f Modelfile`",
                  f"- LM Studio: import `{name}` (My Models > import)"]
        chk = info.get("gguf_check")
        if chk:
            tr = chk["transformers_reads_gguf"]
            kinds = "; ".join(f"{n}: {v['identical']}/{v['prompts']} ({v['distinct_completions']} distinct, up to "
                              f"{v['max_new_tokens']} tokens)" for n, v in tr["by_kind"].items())
            lines += ["", "## GGUF check", "",
                      f"Greedy completions on {chk['prompts']} prompts of the task: the GGUF read back by transformers gave "
                      f"the same tokens as the {tr['reference']} on {tr['identical']} of {chk['prompts']} ({kinds}); its "
                      f"tokenizer encoded {chk['tokenizer_identical']} of {chk['prompts']} prompts identically. "
                      + (f"llama.cpp itself: {chk['llama_cpp']['identical']} of {chk['prompts']} identical to the "
                         "unrounded float32 model." if chk["llama_cpp"].get("ran") else
                         f"llama.cpp itself was not run here ({chk['llama_cpp']['why']}).")]
    lines += ["", "Prompt it as in training: the chat template with the task instruction as the system message, the "
              "examples as user/assistant turns, then the new input as the last user turn."]
    return "\n".join(lines) + "\n"
