"""Generation engines on the embedded model: transformers generate, selfguide's hf backend, the
openvino backend (the CPU default), llama.cpp; real stage prompts; tokens/s, prefill, stage calls,
peak RSS, matmul roof.

Run:  .venv/bin/python bench/generation.py [--engines hf-plain,hf,openvino,llama.cpp] [--batches 1,8,32]
Writes docs/benchmarks/generation.{md,json,png}. Each engine runs in its own process (its own peak
RSS, no shared warm state). Prompts: task1529 (NIv2, from ../shared/niv2 when present, else the
copy in tests/data): input-generation prompts as the generate stage renders them, and task prompts
as annotate/evaluate render them. Throughput rows force exactly N new tokens per sequence
(ignore_eos, no stop strings) so every engine does the same work; the "stage call" rows use the
stages' real settings (end-of-turn and stop strings on). Nothing else may run meanwhile (2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENGINES = ("hf-plain", "hf", "openvino", "openvino-int8", "llama.cpp")
REFERENCE = ("openvino", "hf")  # the engine the ratios are about: the CPU default, else the fallback
LABELS = {
    "hf-plain": "transformers `generate` (baseline)",
    "hf": "selfguide `hf` backend (generate + shared-prefix KV)",
    "native": "selfguide's former `native` engine (removed in numerics version 3)",
    "openvino": "selfguide `openvino` backend (OpenVINO GenAI, fp16 weights)",
    "openvino-int8": "selfguide `openvino` backend, int8 weights (`model.weights=int8`)",
    "llama.cpp": "llama.cpp (llama-cpp-python, Q4_1 GGUF)",
}


def task_file() -> Path:
    shared = ROOT.parent / "shared" / "niv2" / "task1529_scitail1.1_classification.paper_prompt.json"
    return shared if shared.exists() else ROOT / "tests" / "data" / "niv2" / "task1529.paper_prompt.json"


def build(engine: str, batch: int, dtype: str = "auto"):
    from selfguide.backends import get_backend

    if engine == "llama.cpp":
        sys.path.insert(0, str(Path(__file__).parent))
        from llamacpp_engine import LlamaCppEngine

        from selfguide.backends import hf_model
        from selfguide.models import resolve_model

        ref = resolve_model("embedded")
        tok = hf_model.load_tokenizer(hf_model.materialize(ref))
        eng = LlamaCppEngine(str(ref.path), tok, hf_model.end_token_ids(tok), batch_size=batch)
        return eng
    if engine.startswith("openvino"):  # batch = max_num_seqs, fixed when the pipeline is built
        return get_backend("openvino", model="embedded", batch_size=batch, dtype=dtype, weights=engine.partition("-")[2] or "fp16")
    # dtype auto: what a run picks on this CPU (bf16 only with AVX512-BF16/AMX; emulated bf16 is several times slower)
    return get_backend("hf", model="embedded", dtype=dtype, batch_size=batch, prefix_cache=engine != "hf-plain")


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def stage_prompts():
    """The benchmark's prompts (deterministic): 32 input-generation prompts, 48 task prompts."""
    from selfguide import prompts
    from selfguide.backends import hf_model
    from selfguide.models import resolve_model
    from selfguide.task import load_task

    task = load_task(task_file())
    tok = hf_model.load_tokenizer(hf_model.materialize(resolve_model("embedded")))
    rng = random.Random(0)
    pool = [e.input for e in task.examples]
    gen_msgs = [prompts.sample_generation_prompt(task, pool, rng, 10, True)[0] for _ in range(32)]
    gen_prompts = [hf_model.render_prompt(tok, m, prompts.INPUT_PREFILL) for m in gen_msgs]
    task_prompts = [hf_model.render_prompt(tok, prompts.task_messages(task, it.input)) for it in task.split_items("test")[:48]]
    return tok, gen_prompts, task_prompts


def distinct_tokens(tok, batch: list[str]) -> int:
    """Prompt tokens an engine must encode at least: the shared prefix once, each prompt's rest once."""
    from selfguide.backends.hf import shared_prefix_len

    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in batch]
    shared = shared_prefix_len(ids)
    return shared + sum(len(x) - shared for x in ids)


def worker(engine: str, batches: list[int], new_tokens: int, dtype: str) -> dict:
    """Every measurement for one engine, in this process."""
    from selfguide import prompts

    tok, gen_prompts, task_prompts = stage_prompts()
    count = lambda ps: sum(len(tok(p, add_special_tokens=False)["input_ids"]) for p in ps)  # noqa: E731

    eng = build(engine, max(batches + [32]), dtype)
    eng.ignore_eos = True
    eng.generate(gen_prompts[:2], temperature=1.0, top_k=40, max_new_tokens=4)  # warm-up (oneDNN's first call is slow)
    res: dict = {"engine": engine, "throughput": [], "prompt_tokens_mean": round(count(gen_prompts) / 32)}

    def fresh(bs: int):
        """OpenVINO keeps prompt KV across calls, and these calls repeat prompts: a new pipeline per
        measurement (not timed), so no call is served from an earlier one's memory."""
        nonlocal eng
        if engine.startswith("openvino"):
            eng.close()
            eng = build(engine, bs, dtype)
            eng.ignore_eos = ignore
        else:
            eng.batch_size = bs
        return eng

    ignore = True
    for bs in batches:
        eng = fresh(bs)
        batch = gen_prompts[: max(bs, 4)]
        secs, _ = timed(lambda: eng.generate(batch, temperature=1.0, top_k=40, max_new_tokens=new_tokens, seed=1))
        res["throughput"].append({"batch": bs, "sequences": len(batch), "seconds": round(secs, 2),
                                  "gen_tok_s": round(len(batch) * new_tokens / secs, 1)})
        print(engine, res["throughput"][-1], flush=True)
    eng = fresh(32)
    secs, _ = timed(lambda: eng.generate(gen_prompts, temperature=1.0, top_k=40, max_new_tokens=1, seed=1))
    res["prefill"] = {"prompt_tokens": count(gen_prompts), "seconds": round(secs, 2), "prompt_tok_s": round(count(gen_prompts) / secs, 1)}
    print(engine, "prefill", res["prefill"], flush=True)
    eng = fresh(32)
    secs, _ = timed(lambda: eng.generate(task_prompts[:16], n=10, temperature=0.2, top_k=10, max_new_tokens=8, seed=1))
    res["annotate_forced"] = {"seconds": round(secs, 2), "gen_tok_s": round(160 * 8 / secs, 1), "prompt_tokens": count(task_prompts[:16])}
    print(engine, "annotate", res["annotate_forced"], flush=True)
    # The stages' real calls: end-of-turn and stop strings end sequences early.
    ignore = False
    eng = fresh(32)
    eng.ignore_eos = False
    stage = {}
    stage["generate"], outs = timed(lambda: eng.generate(gen_prompts, temperature=1.0, top_k=40, max_new_tokens=new_tokens,
                                                         stop=prompts.INPUT_STOP, seed=2))
    stage["generate_tokens"] = sum(len(tok(o[0].text, add_special_tokens=False)["input_ids"]) for o in outs)
    eng = fresh(32)
    stage["annotate"], _ = timed(lambda: eng.generate(task_prompts[:16], n=10, temperature=0.2, top_k=10, max_new_tokens=8, seed=2))
    eng = fresh(32)
    stage["evaluate"], greedy = timed(lambda: eng.generate(task_prompts[16:48], max_new_tokens=8))
    res["stage_calls"] = {k: round(v, 2) if isinstance(v, float) else v for k, v in stage.items()}
    res["greedy_eval_texts"] = [g[0].text for g in greedy]
    res["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)
    print(engine, "stage calls", res["stage_calls"], "rss", res["peak_rss_gb"], flush=True)
    return res


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def matmul_roof() -> dict:
    """Best GFLOP/s of a large square matmul with torch, bf16 and fp32, all cores."""
    import torch

    from selfguide.backends.hf_model import cpu_has_native_bf16

    out = {"bfloat16": None}  # emulated bf16 (no AVX512-BF16/AMX) runs ~1 GFLOP/s: minutes, and no engine uses it
    for name, dtype in (("bfloat16", torch.bfloat16), ("float32", torch.float32)):
        if dtype == torch.bfloat16 and not cpu_has_native_bf16():
            continue
        a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
        a @ b
        best = min(timed(lambda: a @ b)[0] for _ in range(5))
        out[name] = round(2 * 2048**3 / best / 1e9, 1)
    return out


def model_flops() -> tuple[float, float]:
    """FLOPs per token: (transformer layers, output head), from the embedded model's config."""
    from transformers import AutoConfig

    from selfguide.backends import hf_model
    from selfguide.models import resolve_model

    c = AutoConfig.from_pretrained(str(hf_model.materialize(resolve_model("embedded"))))
    d, inter, kv = c.hidden_size, c.intermediate_size, c.num_key_value_heads * (c.hidden_size // c.num_attention_heads)
    per_layer = d * d * 2 + 2 * d * kv + 3 * d * inter
    return 2.0 * per_layer * c.num_hidden_layers, 2.0 * d * c.vocab_size


def times(ratio: object) -> str:
    """A speed ratio as "1.71x", or "-" when the engine it compares with was not run."""
    return "-" if ratio is None else f"{ratio}x"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--dtype", default="auto", help="model.dtype for every engine (float32: the fp32 path of CPUs without bf16)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "generation"))
    ap.add_argument("--merge", action="store_true", help="keep the saved results of engines not measured now (same machine)")
    ap.add_argument("--render", action="store_true", help="re-write the .md/.png from the saved .json (no measuring)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    if args.worker:
        Path(args.json).write_text(json.dumps(worker(args.worker, batches, args.new_tokens, args.dtype)))
        return
    import torch
    import transformers

    from selfguide.backends.hf_model import cpu_has_native_bf16
    from selfguide.store import cpu_vector_flags

    torch.set_num_threads(os.cpu_count() or 1)
    out = Path(args.out)
    if args.render:
        saved = json.loads(out.with_suffix(".json").read_text())
        meta, results = saved["meta"], saved["engines"]
        layer_flops, head_flops = model_flops()
        tok, gen_prompts, task_prompts = stage_prompts()
        distinct = {"generate": distinct_tokens(tok, gen_prompts), "annotate": distinct_tokens(tok, task_prompts[:16])}
        analysis = summarise(results, meta["matmul_roof_gflops"][meta["roof_dtype"]], layer_flops, head_flops,
                             args.new_tokens, distinct)
        out.with_suffix(".json").write_text(json.dumps({"meta": meta, "engines": results, "ratios": analysis}, indent=1))
        plot(results, out.with_suffix(".png"))
        out.with_suffix(".md").write_text(render(meta, results, analysis, out.with_suffix(".png").name))
        return
    roof = matmul_roof()
    print("matmul roof GFLOP/s", roof, flush=True)
    results = {}
    if args.merge and out.with_suffix(".json").exists():
        results = json.loads(out.with_suffix(".json").read_text())["engines"]
        print("kept from the saved run:", ", ".join(e for e in results if e not in args.engines.split(",")))
    for engine in args.engines.split(","):
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            cmd = [sys.executable, __file__, "--worker", engine, "--json", f.name, "--batches", args.batches, "--new-tokens", str(args.new_tokens), "--dtype", args.dtype]
            if subprocess.run(cmd).returncode != 0:
                print(f"{engine}: failed or not installed, left out", flush=True)
                continue
            results[engine] = json.loads(Path(f.name).read_text())
    layer_flops, head_flops = model_flops()
    tok, gen_prompts, task_prompts = stage_prompts()
    distinct = {"generate": distinct_tokens(tok, gen_prompts), "annotate": distinct_tokens(tok, task_prompts[:16])}
    try:
        import llama_cpp

        llama_version = llama_cpp.__version__
    except ImportError:
        llama_version = "not installed"
    meta = {
        "command": "python bench/generation.py " + " ".join(sys.argv[1:]) + (" (other engines: the saved run)" if args.merge else ""),
        "machine": f"{os.cpu_count()} CPU cores ({cpu_model()}), vector flags: {' '.join(cpu_vector_flags()) or 'none'}; "
                   f"native bf16 (AVX512-BF16/AMX): {'yes' if cpu_has_native_bf16() else 'no'}, so dtype auto = "
                   f"{'bfloat16' if cpu_has_native_bf16() else 'float32'}; no GPU",
        "versions": f"Python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
                    f"llama-cpp-python {llama_version}",
        "task": task_file().name,
        "matmul_roof_gflops": roof,
        "roof_dtype": "bfloat16" if cpu_has_native_bf16() and args.dtype != "float32" else "float32",  # the dtype measured
    }
    analysis = summarise(results, roof[meta["roof_dtype"]], layer_flops, head_flops, args.new_tokens, distinct)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "engines": results, "ratios": analysis}, indent=1))
    plot(results, out.with_suffix(".png"))
    out.with_suffix(".md").write_text(render(meta, results, analysis, out.with_suffix(".png").name))
    print(f"wrote {out}.md/.json/.png")


def summarise(results: dict, roof: float, layer_flops: float, head_flops: float, new_tokens: int, distinct: dict) -> dict:
    """Per stage: the reference engine vs the transformers baseline, vs the best other engine, vs the
    matmul roof."""
    out = {}
    stages = {
        "generate (32 prompts, 64 tokens, T=1.0)": lambda r: r["throughput"][-1]["seconds"] if r["throughput"][-1]["batch"] == 32 else None,
        "annotate (16 inputs x n=10, 8 tokens, T=0.2)": lambda r: r["annotate_forced"]["seconds"],
        "generate stage call (stops on)": lambda r: r["stage_calls"]["generate"],
        "annotate stage call (stops on)": lambda r: r["stage_calls"]["annotate"],
        "evaluate stage call (greedy)": lambda r: r["stage_calls"]["evaluate"],
    }
    work = {  # FLOPs every engine must do at least: each distinct prompt token once, each generated token
        "generate (32 prompts, 64 tokens, T=1.0)": lambda r: distinct["generate"] * layer_flops + 32 * new_tokens * (layer_flops + head_flops),
        "annotate (16 inputs x n=10, 8 tokens, T=0.2)": lambda r: distinct["annotate"] * layer_flops + 160 * 8 * (layer_flops + head_flops),
    }
    ref = reference(results)
    if ref is None:
        return out
    for stage, secs in stages.items():
        t = {e: secs(r) for e, r in results.items() if secs(r)}
        if ref not in t:
            continue
        others = {e: v for e, v in t.items() if e != ref}
        best_other = min(others, key=others.get) if others else None
        row = {"reference": ref, "seconds": t, "vs_baseline": round(t["hf-plain"] / t[ref], 2) if "hf-plain" in t else None,
               "best_other": best_other, "vs_best_other": round(others[best_other] / t[ref], 2) if best_other else None}
        if stage in work:
            row["roof_fraction"] = round(work[stage](results[ref]) / t[ref] / 1e9 / roof, 3)
        out[stage] = row
    return out


def reference(results: dict):
    return next((e for e in REFERENCE if e in results), None)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for engine, r in results.items():
        xs = [row["batch"] for row in r["throughput"]]
        ax.plot(xs, [row["gen_tok_s"] for row in r["throughput"]], marker="o", label=LABELS[engine])
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size (sequences decoded together)")
    ax.set_ylabel("generated tokens/s (prefill included)")
    ax.set_title("Input-generation prompts (~600 tokens), 64 new tokens, 2 CPU cores")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def render(meta: dict, results: dict, analysis: dict, plot_name: str) -> str:
    ref = reference(results)
    lines = ["# Generation engines on the embedded SmolLM2-135M-Instruct (CPU)", "",
             f"Command: `{meta['command']}`", "",
             f"- machine: {meta['machine']}", f"- versions: {meta['versions']}",
             f"- matmul roof (torch, 2048x2048x2048, all cores): bf16 {meta['matmul_roof_gflops']['bfloat16'] or 'not measured (emulated here)'} GFLOP/s, "
             f"fp32 {meta['matmul_roof_gflops']['float32']} GFLOP/s",
             f"- prompts: {meta['task']}; input-generation prompts as the generate stage renders them "
             f"(mean {next(iter(results.values()))['prompt_tokens_mean'] if results else '?'} tokens), task prompts as annotate/evaluate render them",
             "- transformers runs the dtype a run picks here (see machine); openvino its exported fp16 weights, computing in "
             "OpenVINO's default precision here; llama.cpp the embedded model's own Q4_1 GGUF (its fastest format here)",
             "- no engine serves a call from an earlier call's memory here (these calls repeat the same prompts)",
             "", "## Throughput (exactly 64 new tokens per sequence, T=1.0, top-k 40)", "",
             "| engine | " + " | ".join(f"batch {r['batch']} gen tok/s" for r in next(iter(results.values()))["throughput"]) +
             " | prefill tok/s (batch 32) | annotate 16x10 tok/s | peak RSS GB |",
             "|---|" + "---:|" * (len(next(iter(results.values()))["throughput"]) + 3)]
    for engine, r in results.items():
        lines.append(f"| {LABELS[engine]} | " + " | ".join(str(x["gen_tok_s"]) for x in r["throughput"]) +
                     f" | {r['prefill']['prompt_tok_s']} | {r['annotate_forced']['gen_tok_s']} | {r['peak_rss_gb']} |")
    lines += ["", f"![throughput vs batch size]({plot_name})", "",
              f"## Per stage: the {ref} engine against the baseline, the best other engine and the roof", "",
              f"Seconds per call (batch 32). *vs baseline* = transformers `generate` seconds / {ref} seconds; *vs best other* = "
              f"the fastest other engine's seconds / {ref} seconds (above 1: {ref} is faster); *roof* = the FLOPs any engine must do "
              "(each distinct prompt token once, each generated token with the output head) per second, as a fraction of the "
              "matmul roof of the dtype auto picks here.", "",
              "| stage | " + " | ".join(f"{e} s" for e in results) + " | vs baseline | best other | vs best other | roof |",
              "|---|" + "---:|" * len(results) + "---:|---|---:|---:|"]
    for stage, row in analysis.items():
        lines.append(f"| {stage} | " + " | ".join(str(row["seconds"].get(e, "-")) for e in results) +
                     f" | {times(row['vs_baseline'])} | {row['best_other']} | {times(row['vs_best_other'])} | {row.get('roof_fraction', '-')} |")
    if "hf-plain" in results:
        agree = [f"{e} {sum(x == y for x, y in zip(r['greedy_eval_texts'], results['hf-plain']['greedy_eval_texts']))}/"
                 f"{len(r['greedy_eval_texts'])}" for e, r in results.items() if e != "hf-plain" and r.get("greedy_eval_texts")]
        if agree:
            lines += ["", "Greedy evaluation texts (32 items) equal to transformers' own: " + ", ".join(agree) + "."]
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
