"""Shared fixtures: a tiny random-weight Llama built locally (never downloaded), task files, a
hermetic model cache, and a network guard (selfguide must never reach the network at run time)."""

from __future__ import annotations

import importlib.util
import os
import socket
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
NIV2 = DATA / "niv2"
EXAMPLE = ROOT / "examples" / "scitail.yaml"
SHARED_NIV2 = ROOT.parent / "shared" / "niv2"
NETGUARD_DIR = ROOT / "tests" / "netguard"


def _user_llama_cpp():
    """The llama.cpp converter `selfguide export --fetch-converter` kept in the user's cache (read
    before the tests point the cache elsewhere), or $SELFGUIDE_LLAMA_CPP; None if neither."""
    import os as _os

    if _os.environ.get("SELFGUIDE_LLAMA_CPP"):
        return Path(_os.environ["SELFGUIDE_LLAMA_CPP"])
    from selfguide.model_export import CONVERTER, fetched_converter_dir

    folder = fetched_converter_dir()
    return folder if (folder / CONVERTER).is_file() else None


USER_LLAMA_CPP = _user_llama_cpp()


def _user_openvino_exporter():
    """optimum-cli of `selfguide engines setup-openvino`, found before the tests point the cache
    elsewhere (a tool environment, not model data); None if it was not built."""
    from selfguide.backends.openvino import find_exporter

    return find_exporter()


USER_OPENVINO_EXPORTER = _user_openvino_exporter()
_spec = importlib.util.spec_from_file_location("selfguide_netguard", NETGUARD_DIR / "sitecustomize.py")
netguard = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(netguard)

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch, tmp_path_factory):
    """No hub access, no network (in this process and in every Python child), and a model cache
    that is not the user's."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("SELFGUIDE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "model-cache"))
    monkeypatch.setenv("SELFGUIDE_NO_NETWORK", "1")
    if USER_OPENVINO_EXPORTER is not None:
        monkeypatch.setenv("SELFGUIDE_OPENVINO_EXPORTER", str(USER_OPENVINO_EXPORTER))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(NETGUARD_DIR), os.environ.get("PYTHONPATH")])))
    monkeypatch.setattr(socket.socket, "connect", netguard.guard(socket.socket.connect))


def build_tiny_model(path: Path, seed: int = 0) -> Path:
    """A 2-layer Llama with a 400-token BPE tokenizer trained here on task text, with ChatML."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    corpus = []
    for f in sorted(NIV2.glob("*.json")):
        corpus.append(f.read_text(encoding="utf-8")[:20000])
    corpus.append(EXAMPLE.read_text(encoding="utf-8")[:20000])
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.chat_template = CHATML
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id, tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
        out = model(torch.tensor([[1, 2, 3]]))
        assert torch.isfinite(out.logits).all()
    model.save_pretrained(path, safe_serialization=True)
    fast.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def run_dir(tmp_path) -> Path:
    return tmp_path / "runs"


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "1"
    return env


def build_lively_model(tiny: Path, out: Path) -> Path:
    """The tiny model with larger weights: varied greedy text (std 0.02 repeats one token), so
    comparisons between engines can fail."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tiny))
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.35)
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(str(tiny)).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def lively_model(tiny_model, tmp_path_factory) -> Path:
    return build_lively_model(tiny_model, tmp_path_factory.mktemp("lively"))
