"""Do two engines sample the same distribution? Round-0 input-generation prompts, drawn many times each.

Run:  .venv/bin/python bench/engine_draws.py ../shared/niv2/task1562.paper_prompt.json [--engines openvino,hf] [--n 10] [--seeds 2]

A task's first-round prompts (empty pool, the stage's own settings and prompt seed) are sampled
`n` times per prompt per seed by every engine. Printed per engine: how many inputs have a bracketed
slot like "[n]" (the artifact that feeds on itself in the pool, docs/benchmarks/analysis.md §6),
how many are empty after parsing, and a few draws. Engines that sample alike give rates within
binomial noise of each other. Nothing else may run meanwhile (2 cores).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from selfguide import prompts
from selfguide.backends import model_backend
from selfguide.config import load_config
from selfguide.filters import has_placeholder
from selfguide.stages.context import Context, derive_seed
from selfguide.stages.generate import resolve_settings
from selfguide.task import load_task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("task", type=Path)
    ap.add_argument("--engines", default="openvino,hf")
    ap.add_argument("--n", type=int, default=10, help="samples per prompt per seed")
    ap.add_argument("--seeds", type=int, default=2)
    args = ap.parse_args()
    cfg = load_config(None, [], None)
    spec = load_task(args.task)
    s = resolve_settings(Context(cfg, spec))
    rng = random.Random(derive_seed(cfg.seed, spec.id, "generate", 0))
    drafts = [prompts.sample_generation_prompt(spec, [], rng, s.max_pool_examples, s.label_conditioned)
              for _ in range(s.prompts_per_round)]
    print(f"{spec.id}: {len(drafts)} round-0 prompts x {args.n} samples x {args.seeds} seeds; "
          f"T={s.temperature} top_k={s.top_k} top_p={s.top_p} max_new_tokens={s.max_new_tokens}")
    for engine in args.engines.split(","):
        backend = model_backend(cfg.model, cfg.model.name, engine)
        rendered = [backend.render(messages, prompts.INPUT_PREFILL) for messages, _ in drafts]
        started = time.time()
        texts: list[str] = []
        for seed in range(args.seeds):
            outs = backend.generate(rendered, n=args.n, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                                    max_new_tokens=s.max_new_tokens, stop=prompts.INPUT_STOP, seed=1000 + seed)
            texts += [prompts.parse_generated_input(x.text) for samples in outs for x in samples]
        backend.close()
        slots = sum(has_placeholder(t) for t in texts)
        empty = sum(not t.strip() for t in texts)
        print(f"{engine}: {slots}/{len(texts)} with a bracketed slot, {empty} empty, {time.time() - started:.0f} s; "
              f"draws: {json.dumps(texts[:: max(1, len(texts) // 5)][:5], ensure_ascii=False)[:500]}")


if __name__ == "__main__":
    main()
