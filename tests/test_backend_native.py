"""native backend: its decoder reproduces transformers' logits; its scheduler (shared prefix,
continuous batching, n samples from one encoded prompt) gives the hf backend's greedy text."""

from __future__ import annotations

import pytest

from selfguide.backends import get_backend
from selfguide.errors import BackendUnavailable


def _task_prompts(backend, count=9):
    from conftest import EXAMPLE
    from selfguide import prompts
    from selfguide.task import load_task

    task = load_task(EXAMPLE)
    return [backend.render(prompts.task_messages(task, it.input)) for it in task.instances[:count]]


def test_decoder_matches_transformers_logits(lively_model):
    import torch

    nat = get_backend("native", model=str(lively_model), dtype="float32")
    dec, model = nat.decoder, nat.model
    dec.rope_table(64)
    ids = torch.randint(5, 390, (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = model(ids).logits[0].float()
        for prefix_len in (0, 20):
            prefix = [(k[0], v[0]) for k, v in dec.prefill([ids[0, :prefix_len].tolist()], None, 0)[0]] if prefix_len else None
            # three sequences of different lengths encoded in one padded batch
            ends = (30, 25, 33)
            kv, last = dec.prefill([ids[0, prefix_len:e].tolist() for e in ends], prefix, prefix_len)
            for row, e in enumerate(ends):
                assert torch.allclose(last[row], ref[e - 1], atol=1e-4)
            cache = [(torch.zeros(2, dec.n_kv, 40, dec.head_dim), torch.zeros(2, dec.n_kv, 40, dec.head_dim)) for _ in dec.layers]
            own = 30 - prefix_len
            for (K, V), (k, v) in zip(cache, kv):
                K[:, :, :own], V[:, :, :own] = k[0, :, :own], v[0, :, :own]  # two slots holding the same sequence
            lens = torch.tensor([own, own])
            for t in range(30, 39):
                logits = dec.decode(ids[0, t].repeat(2), lens, prefix, prefix_len, cache)
                lens += 1
                assert torch.allclose(logits[0], ref[t], atol=1e-4) and torch.equal(logits[0], logits[1])


def test_blocked_weights_give_plain_linear_bits_in_bf16(lively_model):
    """Where oneDNN's blocked bf16 weights are used (CPUs with native bf16), a prefill and decode
    steps give exactly the logits of the same decoder with plain F.linear."""
    import torch

    from selfguide.backends.native_llama import LlamaDecoder

    nat = get_backend("native", model=str(lively_model), dtype="bfloat16")
    packed = nat.decoder
    if not packed.packed:
        pytest.skip("no bit-identical blocked bf16 linear on this CPU/torch (checked at load on the model's matrices)")
    plain = LlamaDecoder(nat.model, pack=False)
    ids = torch.randint(5, 390, (3, 30), generator=torch.Generator().manual_seed(0)).tolist()
    with torch.inference_mode():
        results = []
        for dec in (packed, plain):
            dec.rope_table(64)
            kv, last = dec.prefill(ids, None, 0)
            cache = [(k.clone(), v.clone()) for k, v in kv]
            steps = [last]
            for t in range(4):
                cache = [(torch.cat([K, torch.zeros_like(K[:, :, :1])], 2), torch.cat([V, torch.zeros_like(V[:, :, :1])], 2))
                         for K, V in cache]
                steps.append(dec.decode(steps[-1].argmax(-1), torch.full((3,), 30 + t), None, 0, cache))
            results.append(steps)
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("batch_size", [1, 3, 32])
def test_greedy_text_equals_hf_for_any_batch_size(lively_model, batch_size):
    hf = get_backend("hf", model=str(lively_model), dtype="float32", batch_size=4, prefix_cache=False)
    nat = get_backend("native", model=str(lively_model), dtype="float32", batch_size=batch_size)
    rendered = _task_prompts(hf)
    expected = hf.generate(rendered, max_new_tokens=14)
    assert len({t[0].text for t in expected}) > 3  # the model really says different things
    assert nat.generate(rendered, max_new_tokens=14) == expected
    # different lengths finish at different steps: slots are refilled mid-batch
    stops = tuple({t[0].text[3:5] for t in expected if len(t[0].text) > 6})
    assert nat.generate(rendered, max_new_tokens=14, stop=stops) == hf.generate(rendered, max_new_tokens=14, stop=stops)


def test_without_shared_prefix_too(lively_model):
    hf = get_backend("hf", model=str(lively_model), dtype="float32", prefix_cache=False)
    nat = get_backend("native", model=str(lively_model), dtype="float32", batch_size=2, prefix_cache=False)
    rendered = [hf.render([{"role": "user", "content": p}]) for p in ("the cat", "a longer prompt about petals", "x")]
    assert nat.generate(rendered, max_new_tokens=10) == hf.generate(rendered, max_new_tokens=10)


def test_sampling_is_seeded_and_n_samples_differ(lively_model):
    nat = get_backend("native", model=str(lively_model), dtype="float32", batch_size=4)
    rendered = _task_prompts(nat, 3)
    a = nat.generate(rendered, n=5, temperature=1.0, top_k=40, top_p=0.9, max_new_tokens=8, seed=5)
    assert a == nat.generate(rendered, n=5, temperature=1.0, top_k=40, top_p=0.9, max_new_tokens=8, seed=5)
    assert a != nat.generate(rendered, n=5, temperature=1.0, top_k=40, top_p=0.9, max_new_tokens=8, seed=6)
    assert [len(x) for x in a] == [5, 5, 5] and all(len(set(x)) > 1 for x in a)
    greedy = nat.generate(rendered, n=3, max_new_tokens=6)
    assert all(len(x) == 3 and len(set(x)) == 1 for x in greedy)


def test_sampler_filters():
    import torch

    from selfguide.backends.native import _sample

    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]]).repeat(400, 1)
    gen = torch.Generator().manual_seed(0)
    assert set(_sample(logits, False, 1.0, 2, 1.0, gen).tolist()) == {2, 3}  # top-k 2
    assert set(_sample(logits, False, 1.0, 0, 0.5, gen).tolist()) == {3}  # top-p: 3 alone holds 64%
    assert set(_sample(logits, False, 1.0, 0, 1.0, gen).tolist()) == {0, 1, 2, 3}
    assert _sample(logits, True, 0.0, 0, 1.0, gen).tolist() == [3] * 400


@pytest.mark.parametrize("tied", [10, 150])  # fewer ties than TIE_MARGIN, and more (full sort)
def test_top_k_keeps_tokens_tied_with_the_kth(tied):
    """Top-k keeps every token whose logit equals the k-th largest, as masking `logits < kth` over
    the whole vocabulary does, and nothing below it."""
    import torch

    from selfguide.backends.native import TIE_MARGIN, _sample

    logits = torch.zeros(1, 300)
    logits[0, 7] = 4.0
    logits[0, 100 : 100 + tied] = 1.0
    logits[0, 290] = 0.5  # just below the tie: never drawn
    draws = set(_sample(logits.repeat(3000, 1), False, 1.0, 2, 1.0, torch.Generator().manual_seed(1)).tolist())
    allowed = {7, *range(100, 100 + tied)}
    assert draws <= allowed and 7 in draws
    assert len(draws) > (tied * 0.9 if tied < TIE_MARGIN else TIE_MARGIN + 2)


def test_end_of_turn_never_leaks(lively_model):
    nat = get_backend("native", model=str(lively_model), dtype="float32")
    for text in [t[0].text for t in nat.generate(_task_prompts(nat), max_new_tokens=30)]:
        assert "<|im_end|>" not in text and "<|endoftext|>" not in text
    assert nat.identity()["engine"] == "selfguide-native"


def test_unsupported_architecture_is_refused(tmp_path, tiny_model):
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=400)).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(str(tiny_model)).save_pretrained(tmp_path)
    with pytest.raises(BackendUnavailable, match="model.backend: hf"):
        get_backend("native", model=str(tmp_path))


def test_prefill_after_a_cached_middle_matches_transformers(lively_model):
    """Rows that follow the shared prefix plus their own stored KV (of different lengths) get the
    logits a full forward pass gives."""
    import torch

    from selfguide.backends.native import _per_layer, _stack_rows

    nat = get_backend("native", model=str(lively_model), dtype="float32")
    dec, model = nat.decoder, nat.model
    ids = torch.randint(5, 390, (1, 48), generator=torch.Generator().manual_seed(3))[0].tolist()
    with torch.inference_mode():
        ref = model(torch.tensor([ids])).logits[0].float()
        kv, _ = dec.prefill([ids[:40]], None, 0)
        whole = _stack_rows(kv, 0, 40)  # [layers, 2, n_kv, 40, d]
        prefix = _per_layer(whole[:, :, :, :10])
        middles = [whole[:, :, :, 10:26], None, whole[:, :, :, 10:18]]
        seqs = [ids[26:44], ids[10:33], ids[18:30]]
        _, last = dec.prefill(seqs, prefix, 10, middles)
    for row, end in enumerate((44, 33, 30)):
        assert torch.allclose(last[row], ref[end - 1], atol=1e-4)


def _story_prompts(count: int, words: int, seed: int) -> list[str]:
    import random

    rng = random.Random(seed)
    vocab = "petal stone river cloud lamp quiet north ember salt violet ring tide moss".split()
    return [" ".join(rng.choice(vocab) for _ in range(words)) for _ in range(count)]


@pytest.mark.parametrize("budget_mb", [1024, 1])
def test_prompt_kv_reused_across_calls_gives_the_same_text(lively_model, budget_mb):
    """A later call whose prompts start with an earlier call's prompts encodes only the rest
    (store hits beyond the call's own shared prefix) and says what a backend without the store says;
    a store far too small for the prompts evicts down to its budget and still says the same."""
    base = " ".join(_story_prompts(1, 60, 0))
    first = [base + " " + x for x in _story_prompts(4, 50, 1)]
    second = [p + " " + x for p, x in zip(first, _story_prompts(4, 12, 2))]
    reusing = get_backend("native", model=str(lively_model), dtype="float32", batch_size=3, prefix_cache_mb=budget_mb)
    fresh = get_backend("native", model=str(lively_model), dtype="float32", batch_size=3, prefix_cache_mb=0)
    assert fresh.store is None
    settings = dict(max_new_tokens=12, stop=("ring",))
    assert reusing.generate(first, **settings) == fresh.generate(first, **settings)
    reused_before = reusing.store.hit_tokens
    assert reusing.generate(second, **settings) == fresh.generate(second, **settings)
    sampled = dict(n=3, temperature=1.0, top_k=40, max_new_tokens=10, seed=4)
    assert reusing.generate(second, **sampled) == fresh.generate(second, **sampled)
    store = reusing.store
    if budget_mb == 1024:
        # the second call shares only `base` among its prompts: the rest of each first prompt came from the store
        assert store.hit_tokens - reused_before > 4 * 40
    else:
        assert 0 < store.used_bytes <= 2**20


def test_a_calls_shared_prefix_has_the_same_bits_from_memory_as_afresh(lively_model):
    """A resumed process encodes the shared prefix afresh; an uninterrupted one takes it from the
    store. Both must be the same bits, or text after a resume could differ."""
    import torch

    prefix_ids = list(range(7, 7 + 2 * 16 + 5))
    warm = get_backend("native", model=str(lively_model), dtype="float32")
    cold = get_backend("native", model=str(lively_model), dtype="float32")
    with torch.inference_mode():
        first = warm._encode_prefix(prefix_ids)
        assert warm._encode_prefix(prefix_ids) is first  # served from the store
        assert torch.equal(cold._encode_prefix(prefix_ids), first)
