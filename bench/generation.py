"""Generated tokens/s of the hf backend on the embedded model, at batch 1/8/32, float32 and bf16.

Run:  .venv/bin/python bench/generation.py [--new-tokens 64] [--repeat 2] [--out docs/benchmarks/generation.md]
Prompts are real input-generation prompts of NIv2 task1529 (the stage that dominates wall time).
Each cell is the best of --repeat timed calls after one warm-up call (oneDNN's first bf16 call is
slow); "gen tok/s" = sequences x new tokens / wall time of the whole generate call, prefill included.
Nothing else should run on the machine meanwhile; compare cells as ratios within one run.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "generation.md"))
    ap.add_argument("--stages", action="store_true", help="also time real stage calls with and without model.prefix_cache")
    args = ap.parse_args()

    import torch
    import transformers

    from selfguide import prompts
    from selfguide.backends import get_backend
    from selfguide.backends.hf_model import cpu_has_native_bf16
    from selfguide.task import load_task

    task = load_task(ROOT / "tests" / "data" / "niv2" / "task1529.paper_prompt.json")
    rng = random.Random(0)
    rows = []
    for dtype in args.dtypes.split(","):
        backend = get_backend("hf", model="embedded", dtype=dtype, batch_size=max(int(b) for b in args.batches.split(",")))
        pool: list[str] = [e.input for e in task.examples]
        for bs in [int(b) for b in args.batches.split(",")]:
            backend.batch_size = bs
            batch = [backend.render(prompts.sample_generation_prompt(task, pool, rng, 10, True)[0], prompts.INPUT_PREFILL) for _ in range(bs)]
            prompt_tokens = sum(backend.count_tokens(p) for p in batch) / bs
            # Force exactly new_tokens per sequence: no stop strings, EOS suppressed via min_new_tokens.
            model, tok = backend.model, backend.tokenizer
            enc = tok(batch, return_tensors="pt", padding=True, add_special_tokens=False)
            kw = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=True, temperature=1.0, top_k=40,
                      pad_token_id=tok.pad_token_id)
            with torch.inference_mode():
                model.generate(**enc, **kw)  # warm-up
                best = float("inf")
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    model.generate(**enc, **kw)
                    best = min(best, time.perf_counter() - t0)
            tps = bs * args.new_tokens / best
            rows.append((dtype, bs, round(prompt_tokens), round(best, 2), round(tps, 1)))
            print(f"{dtype:9} batch {bs:3}: {tps:7.1f} gen tok/s ({best:.2f} s for {bs}x{args.new_tokens} tokens, ~{prompt_tokens:.0f}-token prompts)", flush=True)
        backend.close()
    stage_rows = stage_workloads(task, args.repeat) if args.stages else []
    peak_rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    lines = [
        "# Generation throughput: hf backend, embedded SmolLM2-135M-Instruct",
        "",
        "Command: `.venv/bin/python bench/generation.py " + " ".join(sys.argv[1:]) + "`",
        "",
        f"- machine: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), native bf16 (AMX/AVX512-BF16): "
        f"{'yes' if cpu_has_native_bf16() else 'no'}, no GPU",
        f"- versions: Python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}",
        f"- workload: input-generation prompts of task1529 (chat template + `[input]=\"` prefill), sampling T=1.0 top_k=40, "
        f"exactly {args.new_tokens} new tokens per sequence (EOS suppressed), best of {args.repeat} after a warm-up",
        f"- peak RSS of the benchmark process: {peak_rss_gb:.2f} GB",
        "",
        "| dtype | batch | prompt tokens (mean) | seconds per call | generated tok/s |",
        "|---|---:|---:|---:|---:|",
        *[f"| {d} | {b} | {p} | {s} | {t} |" for d, b, p, s, t in rows],
        "",
    ]
    by = {(d, b): t for d, b, _, _, t in rows}
    ratios = [f"batch {b}: bf16/fp32 = {by[('bfloat16', b)] / by[('float32', b)]:.2f}x" for b in sorted({b for _, b, *_ in rows})
              if ("bfloat16", b) in by and ("float32", b) in by]
    if ratios:
        lines += ["Ratios within this run: " + "; ".join(ratios) + ".", ""]
    if stage_rows:
        lines += ["## Stage calls: shared-prefix KV cache", "",
                  "Real backend calls as the stages make them (bf16, batch 32, best of the repeats after a warm-up): annotation = 16 inputs "
                  "x n=10 samples at T=0.2, top_k 10, up to 8 new tokens; evaluation = 32 items, greedy, up to 8 new tokens. "
                  "`model.prefix_cache` encodes the prefix every prompt shares (system + examples) once and reuses its KV cache.", "",
                  "| workload | prompt tokens (shared prefix) | plain s | prefix cache s | speed-up | same greedy text |",
                  "|---|---:|---:|---:|---:|---|"]
        lines += [f"| {w} | {t} ({p}) | {a} | {b} | {a / b:.2f}x | {same} |" for w, t, p, a, b, same in stage_rows]
        lines.append("")
    lines += ["`model.dtype: auto` picks bf16 on CPUs with native bf16 and float32 elsewhere; `model.batch_size` defaults to 32.", ""]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out}")


def stage_workloads(task, repeat: int) -> list[tuple]:
    """Annotation- and evaluation-shaped calls through backend.generate, plain vs prefix cache."""
    from selfguide import prompts
    from selfguide.backends import get_backend
    from selfguide.backends.hf import shared_prefix_len

    items = task.split_items("test")
    plain = get_backend("hf", model="embedded", dtype="bfloat16", batch_size=32)
    cached = get_backend("hf", model="embedded", dtype="bfloat16", batch_size=32, prefix_cache=True)
    rows = []
    workloads = {
        "annotate (16 x n=10, T=0.2)": ([plain.render(prompts.task_messages(task, it.input)) for it in items[:16]],
                                        dict(n=10, temperature=0.2, top_k=10, max_new_tokens=8, seed=1)),
        "evaluate (32 items, greedy)": ([plain.render(prompts.task_messages(task, it.input)) for it in items[16:48]],
                                        dict(max_new_tokens=8)),
    }
    for name, (batch, kw) in workloads.items():
        ids = [plain.tokenizer(p, add_special_tokens=False)["input_ids"] for p in batch]
        times = {}
        outs = {}
        for label, backend in (("plain", plain), ("cached", cached)):
            backend.generate(batch, **kw)  # warm-up
            best = float("inf")
            for _ in range(repeat):
                t0 = time.perf_counter()
                outs[label] = backend.generate(batch, **kw)
                best = min(best, time.perf_counter() - t0)
            times[label] = round(best, 2)
        same = "yes" if outs["plain"] == outs["cached"] else ("n/a (sampled)" if kw.get("temperature") else "no")
        mean_len = round(sum(len(x) for x in ids) / len(ids))
        rows.append((name, mean_len, shared_prefix_len(ids), times["plain"], times["cached"], same))
        print(rows[-1], flush=True)
    return rows


if __name__ == "__main__":
    sys.exit(main())
