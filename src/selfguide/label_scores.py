"""The scored labeller: each label's likelihood under the exact task prompt, over demonstration orders.

Instead of sampling answers and voting, every label is scored as a complete answer
(`Backend.score`: its tokens, then the end of the turn), length-normalised so multi-token labels
compare fairly, turned into a distribution over the labels, and averaged over orders of the
demonstrations (order alone moves a small model's answer, Lu et al., ACL 2022): all orders for up
to 3 examples (6), a seeded sample beyond. One scoring call per order; the instruction and the
demonstrations are the prefix every prompt of the call shares.
"""

from __future__ import annotations

import itertools
import math
import random
from typing import Sequence

from selfguide import prompts
from selfguide.backends.base import Backend
from selfguide.calibration import CONTENT_FREE_INPUTS, mean_distribution, softmax
from selfguide.task import Example, TaskSpec


def demo_orders(examples: Sequence[Example], max_orders: int, seed: int) -> list[tuple[Example, ...]]:
    """The task's own order first, then other permutations: all of them if they fit `max_orders`,
    else a seeded sample (without enumerating n! orders)."""
    n = len(examples)
    original = tuple(examples)
    if math.factorial(n) <= max_orders:
        return [original] + [tuple(examples[i] for i in p) for p in itertools.permutations(range(n)) if list(p) != list(range(n))]
    rng = random.Random(seed)
    seen = {tuple(range(n))}
    out = [original]
    while len(out) < max_orders:
        perm = list(range(n))
        rng.shuffle(perm)
        if tuple(perm) not in seen:
            seen.add(tuple(perm))
            out.append(tuple(examples[i] for i in perm))
    return out


def order_distributions(backend: Backend, task: TaskSpec, inputs: Sequence[str],
                        orders: Sequence[Sequence[Example]]) -> list[list[list[float]]]:
    """For each input, one label distribution per demonstration order."""
    per_input: list[list[list[float]]] = [[] for _ in inputs]
    for order in orders:
        rendered = [backend.render(prompts.task_messages(task, x, order)) for x in inputs]
        for i, row in enumerate(backend.score(rendered, task.labels)):
            per_input[i].append(softmax([s.mean for s in row]))
    return per_input


def label_distributions(backend: Backend, task: TaskSpec, inputs: Sequence[str],
                        orders: Sequence[Sequence[Example]]) -> list[list[float]]:
    """Each input's label distribution, averaged over the demonstration orders."""
    return [mean_distribution(rows) for rows in order_distributions(backend, task, inputs, orders)]


def content_free_prior(backend: Backend, task: TaskSpec, orders: Sequence[Sequence[Example]]) -> list[float]:
    """The label distribution for inputs with no content: the prior contextual calibration divides out."""
    return mean_distribution(label_distributions(backend, task, CONTENT_FREE_INPUTS, orders))
