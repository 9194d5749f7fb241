"""Tests that can fail: break the code on purpose, run the test that guards it, expect it red.

Each mutation replaces one exact snippet of a file, runs one test, then restores the file with
`git checkout` (so the mutated files must have no uncommitted changes). Writes docs/mutations.md.

    python bench/mutation_check.py            # all (about 5 minutes on 2 cores)
    python bench/mutation_check.py 0 3 7      # some, by index
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# (what breaks, file, exact snippet, replacement, the test that must go red)
MUTATIONS = [
  ("hf shared-prefix path: suffix positions restart at 0 (prefix KV misused)", "src/selfguide/backends/hf.py",
   "            rows.append(x[:prefix_len] + [pad] * gap + suffix)\n            masks.append([1] * prefix_len + [0] * gap + [1] * len(suffix))",
   "            rows.append(x[:prefix_len] + [pad] * gap + suffix)\n            masks.append([0] * prefix_len + [0] * gap + [1] * len(suffix))",
   "tests/test_backend_hf.py::test_prefix_cache_gives_the_same_greedy_text"),
  ("hf batching: no attention mask for left padding", "src/selfguide/backends/hf.py",
   '"attention_mask": torch.tensor(masks, device=self.device)}',
   '"attention_mask": torch.ones(len(rows), len(rows[0]), dtype=torch.long, device=self.device)}',
   "tests/test_backend_hf.py::test_batched_equals_unbatched_greedy"),
  ("real-hf synthesis tests: engine left to auto (openvino where set up)", "tests/test_synthesis.py",
   '"model.dtype=float32", "model.backend=hf",', '"model.dtype=float32",',
   "tests/test_synthesis.py::test_real_hf_backend_on_tiny_model"),
  ("evaluation: cut predictions never flagged", "src/selfguide/stages/evaluate.py",
   '"cut_at_max_tokens": out[0].cut,', '"cut_at_max_tokens": False,',
   "tests/test_resources_safety.py::test_garbage_predictions_are_scored"),
  ("evaluation: garbage scored only for the first item's answer (seed-chosen)", "tests/test_resources_safety.py",
   "GARBAGE[order.setdefault(prompt, len(order)) % len(GARBAGE)]", "GARBAGE[seed % len(GARBAGE)]",
   "tests/test_resources_safety.py::test_garbage_predictions_are_scored"),
  ("train: losses written to another file", "src/selfguide/stages/train.py",
   'METRICS = "metrics.jsonl"', 'METRICS = "losses.jsonl"', "tests/test_train_ddp.py"),
  ("generate: a resumed run forgets the pool of earlier rounds", "src/selfguide/stages/generate.py",
   '    for r in records:\n        if r["status"] == "kept":\n            pool.append(r["input"])',
   '    for r in records[:0]:\n        if r["status"] == "kept":\n            pool.append(r["input"])',
   "tests/test_kill_anywhere.py::test_kill_anywhere_real_synthesis"),
  ("network guard not passed to child processes", "tests/conftest.py",
   '    monkeypatch.setenv("SELFGUIDE_NO_NETWORK", "1")\n', '',
   "tests/test_netguard.py::test_child_processes_are_guarded"),
  ("bench: _mean guard inside a comment again", "src/selfguide/bench.py",
   "    return round(sum(values) / len(values), 3) if values else None",
   "    return round(sum(values) / len(values), 3)  # if values else None",
   "tests/test_integrity.py::test_every_method_subset_writes_a_table"),
  ("evaluation identity: item ids only", "src/selfguide/stages/evaluate.py",
   'digest([[it.id, it.input, list(it.outputs)] for it in items])', 'digest([it.id for it in items])',
   "tests/test_integrity.py::test_edited_eval_items_are_scored_again"),
  ("evaluation budget from the references again", "src/selfguide/stages/evaluate.py",
   "    return ctx.cfg.evaluate.max_new_tokens or prompts.answer_budget(ctx.task)",
   "    return ctx.cfg.evaluate.max_new_tokens or prompts.decode_budget(max(len(r) for it in ctx.task.instances for r in it.outputs))",
   "tests/test_integrity.py::test_generation_decode_budget_ignores_the_references"),
  ("annotation: cut samples voted", "src/selfguide/stages/annotate.py",
   "        if sample.cut:", "        if False:", "tests/test_integrity.py::test_annotation_samples_cut_by_the_token_limit_are_rejected"),
  ("demonstration overlaps kept", "src/selfguide/task.py",
   "        return [inst for inst in self._split(split) if inst.id not in excluded]",
   "        return self._split(split)", "tests/test_integrity.py::test_items_that_repeat_a_demonstration_are_left_out"),
  ("bootstrap 0 accepted", "src/selfguide/config.py", "MIN_BOOTSTRAP = 40", "MIN_BOOTSTRAP = 0",
   "tests/test_integrity.py::test_bootstrap_too_small_for_a_ci_is_refused"),
  ("label_source conditioned without target labels accepted", "src/selfguide/config.py",
   'if cfg.annotate.label_source in ("conditioned", "agree") and not cfg.generate.label_conditioned:',
   'if False:', "tests/test_integrity.py::test_label_source_without_target_labels_is_a_config_error"),
  ("numerics version left out of identities", "src/selfguide/identity.py",
   'config = {"numerics": NUMERICS_VERSION, "seed": seed, **settings}', 'config = {"numerics": 1, "seed": seed, **settings}',
   "tests/test_integrity.py::test_stages_made_by_other_numerics_are_not_reused"),
  ("engine options swallowed", "src/selfguide/identity.py",
   "    if ignored:\n        users", "    if ignored and False:\n        users",
   "tests/test_integrity.py::test_engine_options_that_an_engine_ignores_are_errors"),
  ("skip hint promises --force again", "src/selfguide/store.py",
   'up to date, skipping (delete %s to redo it)', 'up to date, skipping (--force to redo; %s)',
   "tests/test_integrity.py::test_the_skip_hint_says_how_to_redo_and_that_works"),
  ("placeholder filter off silently", "src/selfguide/stages/generate.py",
   '        settings["resolved"]["placeholder_filter_off"] = "an example input has a bracketed slot"', '        pass',
   "tests/test_synthesis.py::test_placeholder_filter"),
  ("bench mixes numerics versions", "src/selfguide/bench.py",
   "    if len(found) > 1 and not allow_mixed:", "    if False:",
   "tests/test_integrity.py::test_a_table_refuses_rows_of_different_numerics_versions"),
]


def run(index: int) -> dict:
    what, path, old, new, test = MUTATIONS[index]
    full = ROOT / path
    if subprocess.run(["git", "diff", "--quiet", "--", path], cwd=ROOT).returncode != 0:
        sys.exit(f"{path} has uncommitted changes; commit them first (the check restores files with git checkout)")
    src = full.read_text(encoding="utf-8")
    if src.count(old) != 1:
        sys.exit(f"mutation {index} ({what}): the snippet occurs {src.count(old)} times in {path}; update this script")
    full.write_text(src.replace(old, new), encoding="utf-8")
    t0 = time.time()
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", test],
                              cwd=ROOT, capture_output=True, text=True, timeout=900)
    finally:
        subprocess.run(["git", "checkout", "--", path], cwd=ROOT, check=True)
    failed = [ln for ln in proc.stdout.splitlines() if ln.startswith(("FAILED", "ERROR"))]
    return {"index": index, "mutation": what, "file": path, "test": test, "red": proc.returncode != 0,
            "first_failure": failed[0][:160] if failed else "", "seconds": round(time.time() - t0, 1)}


def main() -> None:
    chosen = [int(a) for a in sys.argv[1:]] or list(range(len(MUTATIONS)))
    results = []
    for i in chosen:
        results.append(run(i))
        print(json.dumps(results[-1]), flush=True)
    lines = ["# Tests that can fail", "", "`python bench/mutation_check.py`: each row breaks the code (or a test's setup) on purpose "
             "in one place, runs the test that guards it, and restores the file. Every row must be red.", "",
             "| # | what was broken | file | test | red | seconds |", "|---:|---|---|---|---|---:|"]
    lines += [f"| {r['index']} | {r['mutation']} | `{r['file']}` | `{r['test']}` | {'yes' if r['red'] else '**NO**'} | {r['seconds']} |"
              for r in results]
    if len(chosen) == len(MUTATIONS):
        (ROOT / "docs" / "mutations.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    green = [r for r in results if not r["red"]]
    print("all red" if not green else f"{len(green)} stayed green: " + ", ".join(r["mutation"] for r in green))
    sys.exit(1 if green else 0)


if __name__ == "__main__":
    main()
