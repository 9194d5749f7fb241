"""A scripted backend with no dependencies, for fast tests of control flow and for demos.

By default it behaves like a tiny but well-formed model: asked for a new input (or output) it
rewrites one of the example inputs (outputs) with a few new words; asked a task prompt it answers
with a label chosen by a hash of the input (or, for generation, the input's words reversed). Pass `script` to return
exactly what a test needs: `script(prompt, sample_index, seed) -> str`. A word counts as a token:
a text longer than max_new_tokens words is cut there and reported as cut ("length"). Scores
agree with the greedy answer: it gets log-probability -0.5 a token, anything else -3 a token,
plus a little noise from a hash of the prompt and continuation (so demonstration orders differ).
"""

from __future__ import annotations

import hashlib
import random
import re
import time
from typing import Any, Callable, Optional, Sequence

from selfguide.backends.base import Completion, TokenScore, finish_text, render_plain

_WORDS = (
    "river quiet market seven yellow garden teacher window ancient signal cotton morning bridge "
    "careful silver forest doctor planet harbor winter engine painter orange village museum"
).split()


def _h(*parts: Any) -> int:
    return int(hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:12], 16)


class FakeBackend:
    name = "fake"

    def __init__(self, model: str = "embedded", script: Optional[Callable[[str, int, int], str]] = None, delay: float = 0.0):
        self.model = model  # the model it stands in for (scripted text is the same for any)
        self.script = script
        self.delay = delay  # seconds per prompt: lets tests interrupt a stage part-way
        self.calls: list[dict[str, Any]] = []

    def render(self, messages: Sequence[dict[str, str]], prefill: str = "") -> str:
        return render_plain(messages, prefill)

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def identity(self) -> dict[str, Any]:
        return {"name": "fake", "kind": "fake", "sha256": "0" * 64, "engine": "fake"}

    def close(self) -> None:
        pass

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
    ) -> list[list[Completion]]:
        self.calls.append({"prompts": len(prompts), "n": n, "temperature": temperature, "seed": seed})
        if self.delay:
            time.sleep(self.delay * len(prompts))
        out = []
        for prompt in prompts:
            samples = []
            for i in range(n):
                sample_seed = seed if temperature == 0 else _h(seed, prompt, i)
                text = self.script(prompt, i, sample_seed) if self.script else self._default(prompt, sample_seed)
                words = text.split(" ")
                if len(words) > max_new_tokens:  # a word is a token here (count_tokens): the limit cuts
                    samples.append(finish_text(" ".join(words[:max_new_tokens]), stop, ended=False))
                else:
                    samples.append(finish_text(text, stop, ended=True))
            out.append(samples)
        return out

    def score(self, prompts: Sequence[str], continuations: Sequence[str]) -> list[list[TokenScore]]:
        self.calls.append({"prompts": len(prompts), "score": len(continuations)})
        out = []
        for prompt in prompts:
            greedy = (self.script(prompt, 0, 0) if self.script else self._default(prompt, 0)).strip()
            row = []
            for c in continuations:
                tokens = len(c.split()) + 1  # the words, then the end of the turn
                per_token = -0.5 if c.strip() == greedy else -3.0
                noise = (_h("score", prompt, c) % 1000) / 10_000
                row.append(TokenScore(per_token * tokens - noise, tokens))
            out.append(row)
        return out

    def _default(self, prompt: str, seed: int) -> str:
        rng = random.Random(seed)
        writer = re.search(r"You are an (Input|Output)Generator", prompt)
        if writer:
            tag = f"[{writer.group(1).lower()}]"
            high = prompt.split(f"high-quality {tag}s", 1)[-1].split("-" * 50, 1)[0]
            examples = re.findall(re.escape(tag) + r'="(.*?)"\n', high + "\n", flags=re.S)
            base = rng.choice(examples) if examples else f"an {writer.group(1).lower()}"
            words = base.split()
            for _ in range(max(1, len(words) // 4)):
                words[rng.randrange(len(words))] = rng.choice(_WORDS)
            return " ".join(words) + '"\n'
        last_user = prompt.rsplit("<|user|>\n", 1)[-1].split("\n<|assistant|>", 1)[0]
        m = re.search(r"Answer with exactly one of: (.*)\.\n", prompt)
        if m:
            labels = [x.strip() for x in m.group(1).split(",")]
            return labels[_h(last_user) % len(labels)]
        return " ".join(reversed(last_user.split()))
