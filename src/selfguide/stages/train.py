"""Stage 3: the model finetunes itself on its synthetic pairs (method.md §6).

Training text = the evaluation prompt (instruction + examples + input through the chat template,
assistant turn opened) + the answer + the template's end-of-turn token. Loss on the answer and
end token only, so the finetuned model learns to stop. transformers' Trainer runs the loop
(checkpoint per epoch, resume from the last one); LoRA via peft, or full finetuning.
Output: adapter/ (LoRA), model/ (merged safetensors + tokenizer + model card), metrics.jsonl.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from selfguide import prompts
from selfguide.config import to_dict
from selfguide.errors import SelfGuideError
from selfguide.identity import without_neutral_additions
from selfguide.models import resolve_model
from selfguide.stages.context import Context
from selfguide.store import Stage, append_records, atomic_write_text, file_hash, read_records, write_records

log = logging.getLogger(__name__)
STAGE = "train"
# Full finetuning at the paper's step. LoRA updates far fewer weights and needs a larger one. When
# train.lora_learning_rate is unset: 2e-4 (the common LoRA default, the paper preset's) on classification, 1e-3 on
# generation, where 2e-4 left even gold labels unable to move the model while 1e-3 raised ROUGE-L on 2 of 3 seeds;
# on classification 1e-3 lowered exact match on both seeds measured (docs/benchmarks/dev/training-screen.md).
FULL_LR = 5e-5
LORA_LR = {"classification": 2e-4, "generation": 1e-3}
METRICS = "metrics.jsonl"


def learning_rate(ctx: Context) -> float:
    t = ctx.cfg.train
    if t.learning_rate is not None:
        return t.learning_rate
    if t.method == "full":
        return FULL_LR
    return t.lora_learning_rate if t.lora_learning_rate is not None else LORA_LR[ctx.task.kind]


def uses_shared_prefix(ctx: Context, world: int) -> bool:
    """One process only: under data parallelism the model is wrapped for one forward per backward."""
    return ctx.cfg.train.shared_prefix and world == 1


def make_stage(ctx: Context, pairs_path: Path, name: str, device: str, world: int) -> Stage:
    train = without_neutral_additions(to_dict(ctx.cfg.train), "train")
    del train["lora_learning_rate"]  # the resolved learning_rate is the identity (stages made before the key keep theirs)
    settings = {"train": train, "learning_rate": learning_rate(ctx),
                "resolved": {"bf16": _use_bf16(ctx, device), "device": device.split(":")[0], "world_size": world,
                             "shared_prefix": uses_shared_prefix(ctx, world)}}
    return ctx.open_stage(name, settings, ctx.base_model_identity(None), {"pairs": file_hash(pairs_path)})


def build_examples(ctx: Context, tok: Any, pairs: list[dict[str, Any]]) -> tuple[list[dict[str, list[int]]], int]:
    """Tokenised (input_ids, labels) with the prompt masked; returns (examples, dropped_too_long)."""
    from selfguide.backends.hf_model import end_of_turn_text, render_prompt

    end = end_of_turn_text(tok)
    out, too_long = [], 0
    for p in pairs:
        prompt = render_prompt(tok, prompts.task_messages(ctx.task, p["input"]))
        prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tok(p["output"] + end, add_special_tokens=False)["input_ids"]
        ids = prompt_ids + answer_ids
        if len(ids) > ctx.cfg.train.max_seq_len:
            too_long += 1  # dropped, not truncated: a cut answer would teach the wrong ending
            continue
        out.append({"input_ids": ids, "labels": [-100] * len(prompt_ids) + answer_ids})
    return out, too_long


def training_data_words(counts: dict[str, Any]) -> str:
    """'40 synthetic pairs + 12 rows of the real examples (1 dropped as too long)' for cards and reports;
    '3 pairs of the real examples' for a model trained on the examples alone (the bench's finetune-fewshot)."""
    replayed = counts.get("replayed_examples", 0)
    pairs = f"{counts['pairs']} pairs of the real examples" if counts.get("source") == "examples" else f"{counts['pairs']} synthetic pairs"
    words = pairs + (f" + {replayed} rows of the real examples" if replayed else "")
    return words + (f" ({counts['dropped_too_long']} dropped as too long)" if counts.get("dropped_too_long") else "")


def with_replay(ctx: Context, pairs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """The synthetic pairs plus the task's real examples repeated to make up `train.replay_share`
    of the set (each at least once when the share is above 0): the model keeps seeing real data
    (Shumailov et al. 2024; FewGen). Returns (pairs, replayed rows)."""
    import math

    share, examples = ctx.cfg.train.replay_share, ctx.task.examples
    if share <= 0 or not examples:
        return pairs, 0
    copies = max(1, math.ceil(share * len(pairs) / ((1 - share) * len(examples))))
    replay = [{"id": f"{ctx.task.id}:x:{i:03d}:{c}", "input": e.input, "output": e.output, "label_source": "example"}
              for c in range(copies) for i, e in enumerate(examples)]
    return pairs + replay, len(replay)


class PadCollator:
    """Right-pads a batch; padded positions get label -100 (never the EOS id, which must be learned).

    The output head runs only where some row has a target: the loss is on the answer tokens, a few
    per ~500-token prompt, and the head (vocab x hidden) with its float32 logits was ~40% of a
    training step on the embedded model. The model gets those positions as `logits_to_keep` and
    their next tokens as `shift_labels` (transformers' causal-LM loss then skips its own shift);
    the loss is the same mean over the same answer tokens as with full logits.

    With `prefix_len` > 0 every row starts with the same `prefix_len` prompt tokens (the
    instruction and the examples): the batch then carries them once as `prefix_ids` and the rows
    hold only what follows (`SharedPrefixTrainer` encodes the prefix once and repeats its keys and
    values for the rows)."""

    def __init__(self, pad_id: int, prefix_len: int = 0):
        self.pad_id, self.prefix_len = pad_id, prefix_len

    def __call__(self, batch: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        cut = self.prefix_len
        rows = [{"input_ids": b["input_ids"][cut:], "labels": b["labels"][cut:]} for b in batch]
        width = max(len(b["input_ids"]) for b in rows)
        ids, labels, mask = [], [], []
        for b in rows:
            pad = width - len(b["input_ids"])
            ids.append(b["input_ids"] + [self.pad_id] * pad)
            labels.append(b["labels"] + [-100] * pad)
            mask.append([1] * len(b["input_ids"]) + [0] * pad)
        targets = torch.tensor(labels)[:, 1:]  # position i predicts token i + 1
        keep = (targets != -100).any(0).nonzero()[:, 0]
        shifted = targets[:, keep]
        out = {
            "input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask),
            "logits_to_keep": keep, "shift_labels": shifted, "labels": shifted,
        }
        if cut:
            out["prefix_ids"] = torch.tensor([batch[0]["input_ids"][:cut]])
        return out


def shared_prefix_length(examples: list[dict[str, list[int]]]) -> int:
    """Tokens every example starts with, ending before the first prompt's end (so the token after
    the prefix is still a prompt token: the prefix's last position predicts nothing)."""
    first = examples[0]["input_ids"]
    n = min(next(i for i, t in enumerate(ex["labels"]) if t != -100) for ex in examples) - 1
    for ex in examples[1:]:
        ids = ex["input_ids"]
        n = next((i for i in range(n) if ids[i] != first[i]), n)
    return max(n, 0)


def shared_prefix_loss(model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
    """The causal-LM loss of a batch whose rows share `prefix_ids`: one forward over the prefix
    (batch 1), its key/value cache repeated for every row, then the rows' own tokens attend to it.
    Same positions, same masks, same targets as the full rows; the gradient flows through the
    repeated cache into the prefix (LoRA changes the prefix's keys and values too). Only the prefix's
    dropout masks differ: one for all rows instead of one per row."""
    import torch

    prefix = inputs["prefix_ids"]
    ids = inputs["input_ids"]
    cache = model(input_ids=prefix, use_cache=True, logits_to_keep=1).cache
    cache.batch_repeat_interleave(ids.shape[0])
    mask = torch.cat([torch.ones(ids.shape[0], prefix.shape[1], dtype=inputs["attention_mask"].dtype,
                                 device=ids.device), inputs["attention_mask"]], dim=1)
    logits = model(input_ids=ids, attention_mask=mask, cache=cache, use_cache=True,
                   logits_to_keep=inputs["logits_to_keep"]).logits
    targets = inputs["shift_labels"]
    total = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                              ignore_index=-100, reduction="sum")
    count = num_items_in_batch if num_items_in_batch is not None else (targets != -100).sum()
    return total / count


def _use_bf16(ctx: Context, device: str) -> bool:
    from selfguide.backends.hf_model import cpu_has_native_bf16

    flag = ctx.cfg.train.bf16
    if flag in ("true", "false"):
        return flag == "true"
    if device.startswith("cuda"):
        import torch

        return torch.cuda.is_bf16_supported()
    return cpu_has_native_bf16()


def distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank) under `accelerate launch` / torchrun; (0, 1, 0) in a plain process."""
    import os

    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0"))


def _train_device(ctx: Context, world: int, local_rank: int) -> str:
    """This process's device; under data parallelism on GPUs each rank binds its own GPU before
    the process group starts (NCCL needs it), instead of all ranks landing on cuda:0."""
    from selfguide.backends import hf_model

    device = hf_model.pick_device(ctx.cfg.model.device)
    if device == "cuda" and world > 1:
        import torch

        torch.cuda.set_device(local_rank)
        return f"cuda:{local_rank}"
    return device


def _agree(value: Any) -> Any:
    """Every process takes rank 0's value (rank 0 alone touches the stage folder)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        import torch

        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _leave_group() -> None:
    """Wait for rank 0 to finish writing, then close the process group: a rank that exits while
    gloo's threads still run aborts ("terminate called without an active exception")."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def run_train(ctx: Context, pairs_path: Path | None = None, name: str = STAGE) -> dict[str, Any]:
    """Finetune on `pairs_path` (default: the annotate stage's pairs; another file holds the task's real examples,
    which is how the bench's finetune-fewshot trains) into the stage folder `name`.

    Under `accelerate launch` (data parallel, N processes) every process trains on its share of
    each global batch and takes part in saving (ZeRO-3/FSDP gather the weights); rank 0 alone
    writes the stage folder (checkpoints, metrics, model, manifest).
    """
    pairs_path = pairs_path or ctx.stage_dir("annotate") / "pairs.jsonl"
    rank, world, local_rank = distributed()
    device = _train_device(ctx, world, local_rank)
    stage = make_stage(ctx, pairs_path, name, device, world)
    state = stage.begin(ctx.force) if rank == 0 else None
    if world > 1:
        state = _agree(state)
    if state == "done":
        if world > 1:
            _leave_group()
        return resolved_model_dir(stage.skip(ctx.task.id), stage.dir)
    started = time.time()

    from selfguide.backends import hf_model

    base_dir = hf_model.materialize(resolve_model(ctx.cfg.model.name))
    tok = hf_model.load_tokenizer(base_dir)
    pairs, replayed = with_replay(ctx, read_records(pairs_path))
    examples, too_long = build_examples(ctx, tok, pairs)
    if not examples:
        raise SelfGuideError(
            f"train[{ctx.task.id}]: no training pairs ({len(pairs)} synthesised, {too_long} over train.max_seq_len); "
            "see the annotate funnel, and raise generate.target_inputs or try annotate.label_source=conditioned"
        )
    args = training_arguments(ctx, stage, device)  # before the model is built, so DeepSpeed ZeRO-3 init applies
    prefix_len = shared_prefix_length(examples) if uses_shared_prefix(ctx, world) else 0
    trainer = make_trainer(ctx, stage, args, build_model(ctx, base_dir), examples, tok, prefix_len)
    checkpoint = resume_point(stage, rank, world)
    t = ctx.cfg.train
    data = {"pairs": len(pairs) - replayed, "replayed_examples": replayed, "trained_on": len(examples), "dropped_too_long": too_long,
            "source": "annotate" if pairs_path == ctx.stage_dir("annotate") / "pairs.jsonl" else "examples"}
    log.info("train[%s]: %s finetuning on %s for %d epochs (lr %g, bf16 %s)", ctx.task.id, t.method,
             training_data_words(data), t.epochs, learning_rate(ctx), args.bf16)
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    counts = data | {"steps": trainer.state.global_step, "train_loss": result.training_loss, "shared_prefix_tokens": prefix_len}
    manifest = save_outputs(ctx, stage, trainer, tok, base_dir, counts, started, rank)
    if world > 1:
        _leave_group()
    if rank == 0:
        log.info("train[%s]: done in %.0fs, loss %s -> %s", ctx.task.id, manifest["seconds"],
                 manifest["counts"]["first_loss"], manifest["counts"]["final_loss"])
    return manifest


def build_model(ctx: Context, base_dir: Path) -> Any:
    """The base model in float32 (bf16 is autocast), with LoRA adapters when train.method=lora.
    Loaded on the CPU: the Trainer places it on its device (each rank's own under data parallelism)."""
    import torch

    from selfguide.backends import hf_model

    t = ctx.cfg.train
    torch.manual_seed(ctx.cfg.seed)
    model = hf_model.load_model(base_dir, torch.float32, "cpu")
    model.train()
    if t.method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(
            r=t.lora_r, lora_alpha=t.lora_alpha, lora_dropout=t.lora_dropout, target_modules="all-linear",
            task_type="CAUSAL_LM",
        ))
    return model


def training_arguments(ctx: Context, stage: Stage, device: str) -> Any:
    from transformers import TrainingArguments

    t = ctx.cfg.train
    return TrainingArguments(
        output_dir=str(stage.dir / "checkpoints"),
        num_train_epochs=t.epochs,
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=learning_rate(ctx),
        lr_scheduler_type="linear",
        warmup_steps=float(t.warmup_ratio) if t.warmup_ratio < 1 else 0,
        weight_decay=t.weight_decay,
        logging_steps=1,
        save_strategy="epoch",
        seed=ctx.cfg.seed,
        data_seed=ctx.cfg.seed,
        bf16=_use_bf16(ctx, device),
        use_cpu=device == "cpu",
        report_to=[],
        remove_unused_columns=False,
        disable_tqdm=not ctx.progress.enabled,
        optim="adamw_torch",
        dataloader_num_workers=0,
        neftune_noise_alpha=t.neftune_alpha,
    )


def make_trainer(ctx: Context, stage: Stage, args: Any, model: Any, examples: list[dict[str, list[int]]], tok: Any,
                 prefix_len: int = 0) -> Any:
    """transformers' Trainer over the tokenised pairs; losses go to metrics.jsonl, time to the stage."""
    import torch
    from transformers import Trainer, TrainerCallback

    class Dataset(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(examples)

        def __getitem__(self, i: int) -> dict[str, list[int]]:
            return examples[i]

    metrics_path = stage.dir / METRICS

    class LogToJsonl(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if logs and "loss" in logs and state.is_world_process_zero:
                append_records(metrics_path, [{"step": state.global_step, "epoch": state.epoch, **logs}])

        def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.is_world_process_zero:
                stage.landed()  # the epoch's time survives a crash with its checkpoint

    class SharedPrefixTrainer(Trainer):
        """Batches that carry `prefix_ids` take `shared_prefix_loss`; others the model's own loss."""

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            if "prefix_ids" not in inputs:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            loss = shared_prefix_loss(model, inputs, num_items_in_batch if self.model_accepts_loss_kwargs else None)
            return (loss, None) if return_outputs else loss

    trainer = SharedPrefixTrainer(model=model, args=args, train_dataset=Dataset(),
                                  data_collator=PadCollator(tok.pad_token_id, prefix_len),
                                  callbacks=[LogToJsonl(), *ctx.train_callbacks])
    if not ctx.progress.enabled:
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        trainer.remove_callback(PrinterCallback)  # losses go to metrics.jsonl and the log, not raw dicts on stdout
        trainer.remove_callback(ProgressCallback)
    return trainer


def resume_point(stage: Stage, rank: int, world: int) -> Path | None:
    """The last complete checkpoint (rank 0 decides; losses logged after it are dropped), or None."""
    metrics_path = stage.dir / METRICS
    checkpoints = complete_checkpoints(stage.dir / "checkpoints") if rank == 0 else []
    if world > 1:
        checkpoints = [Path(p) for p in _agree([str(c) for c in checkpoints])]
    if rank == 0 and checkpoints:
        log.info("train[%s]: resuming from %s", stage.dir.parent.name, checkpoints[-1].name)
        _trim_metrics(metrics_path, int(checkpoints[-1].name.split("-")[1]))
    elif rank == 0 and metrics_path.exists():
        metrics_path.unlink()
    return checkpoints[-1] if checkpoints else None


def save_outputs(ctx: Context, stage: Stage, trainer: Any, tok: Any, base_dir: Path, counts: dict[str, Any],
                 started: float, rank: int) -> dict[str, Any]:
    """adapter/ (LoRA) and model/ (merged safetensors + tokenizer + card), then the manifest.

    Every rank calls the Trainer's save (under ZeRO-3 or FSDP the weights are gathered from all
    ranks; only the main process writes); rank 0 then merges from the saved files alone."""
    t = ctx.cfg.train
    tmp_dir = stage.dir / ".model.tmp"
    if rank == 0:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    _barrier()
    saved = stage.dir / "adapter" if t.method == "lora" else tmp_dir
    trainer.save_model(str(saved))
    _barrier()
    if rank != 0:
        return {"rank": rank, "steps": counts["steps"]}
    (saved / "training_args.bin").unlink(missing_ok=True)  # a pickle: model folders hold safetensors only
    if t.method == "lora":
        merge_lora(base_dir, stage.dir / "adapter", tmp_dir)
    tok.save_pretrained(str(tmp_dir))
    model_dir = stage.dir / "model"
    shutil.rmtree(model_dir, ignore_errors=True)
    tmp_dir.rename(model_dir)
    losses = [r["loss"] for r in read_records(stage.dir / METRICS)]
    counts = {**counts, "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
              "earlier_epochs": keep_epoch_adapters(stage.dir) if t.method == "lora" else 0}
    write_model_card(ctx, model_dir, counts, verdict=None)
    # relative to the stage folder, so that a copy of the stage (--reuse-from) names its own model
    manifest = stage.finish(counts, started, model_dir=model_dir.name)
    # Checkpoints hold the optimizer state an unfinished stage resumes from; a finished stage is never resumed, and
    # they would keep ~170 MB per 135M-parameter run (a 21-task bench filled a disk with them). Removed after the
    # manifest, so a crash in between only leaves them behind.
    shutil.rmtree(stage.dir / "checkpoints", ignore_errors=True)
    return resolved_model_dir(manifest, stage.dir)


def merge_lora(base_dir: Path, adapter_dir: Path, out_dir: Path) -> None:
    """The base weights with a LoRA adapter merged in, saved as safetensors in `out_dir` (no tokenizer)."""
    import torch
    from peft import PeftModel

    from selfguide.backends import hf_model

    base = hf_model.load_model(base_dir, torch.float32, "cpu")
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(str(out_dir), safe_serialization=True)


EPOCHS_DIR = "epochs"
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")


def keep_epoch_adapters(stage_dir: Path) -> int:
    """Copy the LoRA adapter of every epoch before the last out of its checkpoint into epochs/epoch-N/
    (~19 MB each on the embedded model, a third of a checkpoint), so that the gate can choose an earlier
    epoch (evaluate.gate_epochs) after the checkpoints are gone. Returns how many were kept."""
    checkpoints = complete_checkpoints(stage_dir / "checkpoints")[:-1]  # the last one is adapter/
    for epoch, ckpt in enumerate(checkpoints, start=1):
        dest = stage_dir / EPOCHS_DIR / f"epoch-{epoch}"
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name in ADAPTER_FILES:
            shutil.copy2(ckpt / name, tmp / name)
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
    return len(checkpoints)


def epoch_adapter(train_manifest: dict[str, Any], epoch: int) -> Path:
    """The folder of an earlier epoch's LoRA adapter kept by a finished train stage."""
    return Path(train_manifest["model_dir"]).parent / EPOCHS_DIR / f"epoch-{epoch}"


def resolved_model_dir(manifest: dict[str, Any], stage_dir: Path) -> dict[str, Any]:
    """The train manifest with `model_dir` as a path (manifests store it relative to the stage folder;
    an absolute one, from a run before that, stays as it is)."""
    return {**manifest, "model_dir": str(stage_dir / manifest["model_dir"])}


def complete_checkpoints(folder: Path) -> list[Path]:
    """Checkpoints in step order, keeping only complete ones: the Trainer writes trainer_state.json
    last, so a checkpoint cut short by a crash lacks it (or has it truncated) and is deleted."""
    out = []
    for ckpt in sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])):
        try:
            json.loads((ckpt / "trainer_state.json").read_text())
            out.append(ckpt)
        except (OSError, ValueError):
            log.warning("train: removing incomplete checkpoint %s", ckpt)
            shutil.rmtree(ckpt, ignore_errors=True)
    return out


def _trim_metrics(path: Path, step: int) -> None:
    """Drop loss records logged after the checkpoint we resume from (they will be logged again)."""
    write_records(path, [r for r in read_records(path, repair=True) if r["step"] <= step])


def write_model_card(ctx: Context, model_dir: Path, counts: dict[str, Any], verdict: dict[str, Any] | None) -> None:
    t, task = ctx.cfg.train, ctx.task
    base = ctx.base_model_identity(None)
    lines = [
        "---", "library_name: transformers", "tags: [selfguide, self-guide, synthetic-data]", "---", "",
        f"# {base['name']} specialised for {task.id} by selfguide", "",
        "This model finetuned itself on data it synthesised from the task instruction and a few examples "
        "(Self-Guide, Zhao et al., COLM 2024, arXiv 2407.12874).", "",
        f"- task: {task.id} ({task.kind}), {len(task.examples)} examples given",
        f"- base model: {base['name']} (sha256 {base['sha256'][:16]})",
        f"- method: {t.method}" + (f" (r={t.lora_r}, alpha={t.lora_alpha}, all linear layers, merged)" if t.method == "lora" else ""),
        f"- data: {training_data_words(counts)}, "
        f"{t.epochs} epochs, lr {learning_rate(ctx):g}, seed {ctx.cfg.seed}",
        "",
        "Use the same prompt as in training: the chat template with the task instruction as system message, "
        "the examples as user/assistant turns, then the new input.",
    ]
    if verdict:
        lines += ["", "## Verdict", "", verdict["sentence"]]
    atomic_write_text(model_dir / "README.md", "\n".join(lines) + "\n")
    (model_dir / "selfguide.json").write_text(json.dumps({"task": task.id, "counts": counts, "verdict": portable(verdict)}, indent=2))


def portable(verdict: dict[str, Any] | None) -> dict[str, Any] | None:
    """The verdict without this machine's paths (which model was handed over, where the gate's blend
    lies): the card travels with the model (export, --reuse-from), and the paths would name the old place."""
    if not verdict:
        return verdict
    kept = {k: v for k, v in verdict.items() if k != "handed_over"}
    if isinstance(kept.get("gate"), dict):
        kept["gate"] = {k: v for k, v in kept["gate"].items() if k != "model_dir"}
    return kept
