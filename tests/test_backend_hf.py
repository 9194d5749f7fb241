"""hf backend on a tiny real Llama: batching equals unbatched greedy, seeded sampling, stops, EOS."""

from __future__ import annotations

import pytest

from selfguide.backends import get_backend
from selfguide.errors import BackendUnavailable


@pytest.fixture(scope="module")
def backend(tiny_model):
    return get_backend("hf", model=str(tiny_model), dtype="float32", batch_size=4, prefix_cache=False)


PROMPTS = ["Premise: the cat", "Hypothesis: a much longer prompt about the liver and petals", "x", "Lyme disease is caused by"]


def assert_diverse(outs):
    """Greedy texts that differ between prompts and are not one repeated token: a comparison of
    two code paths on such texts can fail (the std-0.02 tiny model repeats one token everywhere)."""
    texts = [o[0].text for o in outs]
    assert len(set(texts)) >= max(2, len(texts) // 2), texts
    assert all(len(set(t)) > 3 for t in texts if t), texts


def test_batched_equals_unbatched_greedy(lively_model):
    wide = get_backend("hf", model=str(lively_model), dtype="float32", batch_size=4, prefix_cache=False)
    rendered = [wide.render([{"role": "user", "content": p}]) for p in PROMPTS]
    batched = wide.generate(rendered, max_new_tokens=12)
    assert_diverse(batched)
    one = get_backend("hf", model=str(lively_model), dtype="float32", batch_size=1, prefix_cache=False)
    single = one.generate(rendered, max_new_tokens=12)
    assert batched == single
    assert all(len(x) == 1 for x in batched)


def test_seeded_sampling_is_reproducible(backend):
    rendered = [backend.render([{"role": "user", "content": p}]) for p in PROMPTS[:2]]
    a = backend.generate(rendered, n=3, temperature=1.0, top_k=50, max_new_tokens=10, seed=5)
    b = backend.generate(rendered, n=3, temperature=1.0, top_k=50, max_new_tokens=10, seed=5)
    c = backend.generate(rendered, n=3, temperature=1.0, top_k=50, max_new_tokens=10, seed=6)
    assert a == b and a != c
    assert [len(x) for x in a] == [3, 3]
    assert len({c.text for c in a[0]}) > 1  # samples differ from each other


def test_greedy_n_copies(backend):
    out = backend.generate([backend.render([{"role": "user", "content": "hi"}])], n=4, max_new_tokens=5)
    assert len(out[0]) == 4 and len(set(out[0])) == 1


def test_stop_strings_and_no_end_token_leak(backend):
    rendered = [backend.render([{"role": "user", "content": p}]) for p in PROMPTS]
    free = backend.generate(rendered, max_new_tokens=20)
    for text in [t[0].text for t in free]:
        assert "<|im_end|>" not in text and "<|endoftext|>" not in text
    stops = [t[0].text[2:4] for t in free if len(t[0].text) > 5]
    if stops:
        cut = backend.generate(rendered, max_new_tokens=20, stop=tuple(stops))
        for text in [t[0].text for t in cut]:
            assert not any(s in text for s in stops)


def test_render_uses_chat_template(backend):
    text = backend.render([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}], prefill="P")
    assert text == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\nP"
    assert backend.identity()["sha256"] and backend.identity()["engine"] == "transformers"


def test_unknown_backend():
    with pytest.raises(BackendUnavailable, match="did you mean 'hf'"):
        get_backend("hff")


def test_prefix_cache_gives_the_same_greedy_text(lively_model):
    """Prompts sharing a long prefix (instruction + examples): one prefix pass, reused KV cache."""
    from conftest import EXAMPLE
    from selfguide import prompts
    from selfguide.backends.hf import shared_prefix_len
    from selfguide.task import load_task

    task = load_task(EXAMPLE)
    plain = get_backend("hf", model=str(lively_model), dtype="float32", batch_size=3, prefix_cache=False)
    cached = get_backend("hf", model=str(lively_model), dtype="float32", batch_size=3, prefix_cache=True)
    rendered = [plain.render(prompts.task_messages(task, it.input)) for it in task.instances[:7]]
    ids = [plain.tokenizer(p, add_special_tokens=False)["input_ids"] for p in rendered]
    assert shared_prefix_len(ids) > 100
    expected = plain.generate(rendered, max_new_tokens=10)
    assert_diverse(expected)
    assert cached.generate(rendered, max_new_tokens=10) == expected
    free = plain.generate(rendered, max_new_tokens=12)
    stops = tuple({t[0].text[1:3] for t in free if len(t[0].text) > 4})
    assert cached.generate(rendered, max_new_tokens=12, stop=stops) == plain.generate(rendered, max_new_tokens=12, stop=stops)
    a = cached.generate(rendered[:2], n=3, temperature=1.0, top_k=20, max_new_tokens=6, seed=3)
    assert [len(x) for x in a] == [3, 3] and a == cached.generate(rendered[:2], n=3, temperature=1.0, top_k=20, max_new_tokens=6, seed=3)


def test_shared_prefix_len():
    from selfguide.backends.hf import shared_prefix_len

    assert shared_prefix_len([list(range(50)) + [1], list(range(50)) + [2]]) == 50
    assert shared_prefix_len([list(range(50)), list(range(50))]) == 49  # each keeps one own token
    assert shared_prefix_len([[1, 2, 3], [1, 2, 4]]) == 0  # too short to bother
