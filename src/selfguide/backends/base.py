"""The backend contract every generation engine implements.

`generate(prompts, n, temperature, top_k, top_p, max_new_tokens, stop, seed) -> list[list[Completion]]`
returns n completions per prompt, in prompt order, with stop strings and end-of-turn tokens cut
off, each saying why it ended: "stop" (end-of-turn token or stop string) or "length" (cut by
max_new_tokens, so the text may be unfinished). temperature 0 means greedy. The same call with
the same seed returns the same texts.
`score(prompts, continuations) -> list[list[TokenScore]]` gives, for every prompt and every
continuation, the log-probability of the continuation as a complete answer (its tokens, then
the end-of-turn token) after the prompt: what the scored labeller ranks labels by.
Chat templating happens through `render`, so every backend sees identical prompt strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

STOP, LENGTH = "stop", "length"


@dataclass(frozen=True)
class Completion:
    """One sampled completion and why it ended: STOP (end of turn or a stop string) or LENGTH."""

    text: str
    finish: str

    @property
    def cut(self) -> bool:
        return self.finish == LENGTH


@dataclass(frozen=True)
class TokenScore:
    """log p(continuation + end of turn | prompt): the sum over its tokens and how many there were."""

    logprob: float
    tokens: int

    @property
    def mean(self) -> float:
        """Length-normalised: labels of different token counts compare fairly."""
        return self.logprob / self.tokens


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
    ) -> list[list[Completion]]: ...

    def score(self, prompts: Sequence[str], continuations: Sequence[str]) -> list[list[TokenScore]]: ...

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


def finish_text(text: str, stop: Sequence[str], ended: bool) -> Completion:
    """A decoded completion with stop strings cut off; `ended`: an end-of-turn token ended it.
    Neither an end token nor a stop string means the token limit cut it."""
    kept = cut_at_stop(text, stop)
    return Completion(kept, STOP if ended or len(kept) < len(text) else LENGTH)


def render_plain(messages: Sequence[dict[str, str]], prefill: str = "") -> str:
    """A readable template for models without a chat template (and for the fake backend)."""
    parts = [f"<|{m['role']}|>\n{m['content']}\n" for m in messages]
    return "".join(parts) + "<|assistant|>\n" + prefill
