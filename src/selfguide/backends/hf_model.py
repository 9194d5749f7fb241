"""Loading transformers models: GGUF -> cached safetensors, dtype choice, tokenizer setup.

A GGUF load dequantizes every tensor (~15 s for the embedded model) while a safetensors copy
loads in ~0.3 s, so the first use converts once into the user cache, keyed by the GGUF's sha256.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from selfguide.models import ModelRef, cache_dir, model_hash

log = logging.getLogger(__name__)
# selfguide never reaches a model hub: models are local files. Set before transformers is imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def materialize(ref: ModelRef) -> Path:
    """A local HF folder for the model: itself, or the cached conversion of its GGUF file."""
    if ref.kind == "hf_dir":
        return ref.path
    target = cache_dir() / "models" / model_hash(ref)[:16]
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors once (cache: %s)", ref.path.name, target)
    tok = AutoTokenizer.from_pretrained(str(ref.path.parent), gguf_file=ref.path.name)
    # transformers draws a plain tqdm bar ("Converting and de-quantizing GGUF tensors") that no
    # logging switch reaches; the line above already says what happens
    with contextlib.redirect_stderr(io.StringIO()):
        model = AutoModelForCausalLM.from_pretrained(str(ref.path.parent), gguf_file=ref.path.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained while it carries its quantization config,
    # even though the weights are already dense fp32 (feasibility.md §6).
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # its "Writing model shards" bar, likewise
            model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        if target.exists():  # another process finished first
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def cpu_has_native_bf16() -> bool:
    """AMX or AVX512-BF16: bf16 matmuls run at full speed (measured ~2x fp32 for batched decode)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def pick_dtype(dtype: str, device: str) -> Any:
    import torch

    if dtype == "float32":
        return torch.float32
    if dtype == "bfloat16":
        return torch.bfloat16
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def end_token_ids(tok: Any, model: Any = None) -> list[int]:
    """Every id that ends an assistant turn: EOS, the chat template's end token, generation config's."""
    ids: list[int] = []
    candidates: list[Any] = [tok.eos_token_id]
    for token in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "</s>", "<|endoftext|>"):
        if token in tok.get_vocab():
            candidates.append(tok.convert_tokens_to_ids(token))
    if model is not None:
        gen_eos = getattr(model.generation_config, "eos_token_id", None)
        candidates.extend(gen_eos if isinstance(gen_eos, list) else [gen_eos])
    for c in candidates:
        if isinstance(c, int) and c not in ids:
            ids.append(c)
    return ids


def end_of_turn_text(tok: Any) -> str:
    """The string that closes an assistant turn in the chat template (what training appends)."""
    if getattr(tok, "chat_template", None):
        probe = tok.apply_chat_template(
            [{"role": "user", "content": "x"}, {"role": "assistant", "content": "\x00"}], tokenize=False
        )
        after = probe.split("\x00", 1)[1] if "\x00" in probe else ""
        for token in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "</s>"):
            if after.lstrip().startswith(token):
                return token
    return tok.eos_token


def load_config(path: Path) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(path))


def load_model(path: Path, dtype: Any, device: str) -> Any:
    from transformers import AutoModelForCausalLM

    # safetensors only: a pickled .bin checkpoint can run code when loaded
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, use_safetensors=True)
    model.to(device)
    model.eval()
    return model


def render_prompt(tok: Any, messages: Any, prefill: str = "") -> str:
    """Chat-template messages and open the assistant turn; the one renderer for train and inference."""
    from selfguide.backends.base import render_plain

    if getattr(tok, "chat_template", None):
        return tok.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True) + prefill
    return render_plain(messages, prefill)


class TokenizerFrontEnd:
    """What every engine driven through the model's transformers tokenizer shares (hf, vllm,
    openvino): the chat template, token counts, its identity, and the ids `score` needs."""

    tokenizer: Any
    end_text: str
    _identity: dict[str, Any]

    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    def render(self, messages: Any, prefill: str = "") -> str:
        return render_prompt(self.tokenizer, messages, prefill)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def score_ids(self, prompts: Any, continuations: Any) -> tuple[list[list[int]], list[list[int]]]:
        """Token ids of the prompts, and of each continuation as a complete answer (its text, then
        the end of the turn)."""
        ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        conts = [self.tokenizer(c + self.end_text, add_special_tokens=False)["input_ids"] for c in continuations]
        return ids, conts
