"""The backend contract every generation engine implements.

`generate(prompts, n, temperature, top_k, top_p, max_new_tokens, stop, seed) -> list[list[str]]`
returns n completions per prompt, in prompt order, with stop strings and end-of-turn tokens cut
off. temperature 0 means greedy. The same call with the same seed returns the same texts.
Chat templating happens through `render`, so every backend sees identical prompt strings.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence


class Backend(Protocol):
    name: str

    def render(self, messages: Sequence[dict[str, str]], prefill: str = "") -> str:
        """Chat-template the messages and open the assistant turn (plus an optional prefill)."""

    def generate(
        self,
        prompts: Sequence[str],
        n: int = 1,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        max_new_tokens: int = 64,
        stop: Sequence[str] = (),
        seed: int = 0,
    ) -> list[list[str]]: ...

    def count_tokens(self, text: str) -> int: ...

    def identity(self) -> dict[str, Any]:
        """What produced the text: model name, file hash, engine, dtype."""

    def close(self) -> None: ...


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """Cut text at the first occurrence of any stop string (the stop string itself is removed)."""
    cut = len(text)
    for s in stop:
        if s:
            pos = text.find(s)
            if pos != -1:
                cut = min(cut, pos)
    return text[:cut]


def render_plain(messages: Sequence[dict[str, str]], prefill: str = "") -> str:
    """A readable template for models without a chat template (and for the fake backend)."""
    parts = [f"<|{m['role']}|>\n{m['content']}\n" for m in messages]
    return "".join(parts) + "<|assistant|>\n" + prefill
