"""Prompt builders (pure): chat messages for input generation and for the task itself.

The task prompt is one function on purpose: annotation, training, evaluation and the prompting
baseline all use `task_messages`, so the finetuned model sees at test time exactly what it was
trained on (method.md §6). Backends render messages with the model's own chat template.
"""

from __future__ import annotations

import math
import random
from typing import Optional, Sequence

from selfguide.task import Example, TaskSpec

Message = dict[str, str]

SEPARATOR = "-" * 50
# The assistant turn of an input-generation prompt starts with this, as the authors' prompt ended
# with `[input]=`: small models then write the input itself instead of a preamble.
INPUT_PREFILL = '[input]="'
# Completions of input generation stop at the end of the quoted input or at a second field.
INPUT_STOP = ('"\n', "\n\n", "[output]", "\n[input]")
# generate.direction=output: the same for a new output written from the example outputs.
OUTPUT_PREFILL = '[output]="'
OUTPUT_STOP = ('"\n', "\n\n", "[input]", "\n[output]")
# generate.direction=output: the system turn's addition when the model writes the input for a given output.
REVERSE_NOTE = "Now the direction is reversed: you are given the output, and you reply with the input it was made from, only."
# generate.system_prompt=writer: a system turn for input generation, so a chat template's default
# persona ("You are a helpful AI assistant named ...") does not frame the request as a chat.
INPUT_WRITER_SYSTEM = "You write new inputs for a task. You reply with one new input only, never with an answer or a comment."
# generate.topic_seeds: broad subjects, one drawn per prompt, for more varied inputs (Self-Instruct-style
# attribute seeds); the task's format still comes from the examples.
TOPIC_SEEDS = (
    "animals", "art", "business", "childhood", "cities", "climate", "cooking", "crime", "economics", "education",
    "energy", "family", "farming", "fashion", "film", "friendship", "games", "geography", "health", "history",
    "holidays", "housing", "law", "literature", "medicine", "military", "money", "music", "nature", "oceans",
    "physics", "plants", "politics", "religion", "school", "science", "shopping", "space", "sports",
    "technology", "transport", "travel", "weather", "work",
)


def input_generation_messages(
    task: TaskSpec,
    example_inputs: Sequence[str],
    pool_inputs: Sequence[str],
    label: Optional[str] = None,
    system: Optional[str] = None,
    topic: Optional[str] = None,
    field: str = "input",
) -> list[Message]:
    """One prompt asking for one new input (method.md §4.1, authors' template adapted to chat).

    `system=None` sends no system turn (the paper's prompt; the chat template may add its default),
    `topic` asks for an input about that subject. `field="output"` asks for a new output the same
    way, from example outputs (generate.direction=output)."""
    tag = f"[{field}]"
    high = "\n\n".join(f'{tag}="{x}"' for x in example_inputs)
    low = "\n\n".join(f'{tag}="{x}"' for x in pool_inputs) if pool_inputs else "N/A"
    directive = (
        f"After seeing these examples, write one new {tag}. It must obey the [instruction] and copy the "
        f"format of the high-quality {tag}s."
    )
    if label is not None:
        directive += (
            f' The expected [output] for your new [input] is "{label}". '
            f'Write an [input] whose correct [output] is "{label}".'
        )
    if topic is not None:
        directive += f" Write it about {topic}."
    directive += f" Think twice, then reply with the new {tag} only."
    text = "\n".join(
        [
            f"You are an {field.capitalize()}Generator. Your job is to write a new {tag} for the task in [instruction], "
            f"based on the example {tag}s below.",
            f"The new {tag} must be different from the provided ones, yet diverse, detailed, precise and of "
            f"high quality. Do not repeat a provided {tag}.",
            SEPARATOR,
            "[instruction]",
            "",
            task.instruction,
            SEPARATOR,
            f"These are high-quality {tag}s. They fix a strict format: pay extreme attention to it.",
            "",
            high,
            SEPARATOR,
            f"These are extra {tag}s written earlier. They may be inaccurate in format or content, but you may "
            "consult them.",
            "",
            low,
            SEPARATOR,
            directive,
        ]
    )
    user: Message = {"role": "user", "content": text}
    return [{"role": "system", "content": system}, user] if system is not None else [user]


def sample_generation_prompt(
    task: TaskSpec,
    pool: Sequence[str],
    rng: random.Random,
    max_pool_examples: int,
    label_conditioned: bool,
    system: Optional[str] = None,
    topic_seeds: bool = False,
    field: str = "input",
) -> tuple[list[Message], Optional[str]]:
    """Draw the random parts of one generation prompt: example order, pool sample, target label
    and, with `topic_seeds`, a topic (drawn last, so the other draws match a run without it).
    `field="output"` writes an output from the example outputs (and `pool` holds outputs)."""
    example_inputs = [e.input if field == "input" else e.output for e in task.examples]
    rng.shuffle(example_inputs)
    k_max = min(max_pool_examples, len(pool))
    pool_sample = rng.sample(list(pool), rng.randint(1, k_max)) if k_max > 0 else []
    label = rng.choice(task.labels) if (label_conditioned and task.labels) else None
    topic = rng.choice(TOPIC_SEEDS) if topic_seeds else None
    return input_generation_messages(task, example_inputs, pool_sample, label, system, topic, field), label


def system_text(task: TaskSpec) -> str:
    text = task.instruction
    if task.labels:
        text += "\n\nAnswer with exactly one of: " + ", ".join(task.labels) + "."
    else:
        text += "\n\nAnswer with the output only."
    return text


def task_messages(
    task: TaskSpec,
    new_input: str,
    shots: Sequence[Example] | None = None,
) -> list[Message]:
    """The task prompt: instruction, demonstrations as chat turns, then the new input.

    `shots=None` uses the task's examples (few-shot); `shots=()` gives the zero-shot prompt.
    """
    demos = task.examples if shots is None else shots
    messages: list[Message] = [{"role": "system", "content": system_text(task)}]
    for ex in demos:
        messages.append({"role": "user", "content": ex.input})
        messages.append({"role": "assistant", "content": ex.output})
    messages.append({"role": "user", "content": new_input})
    return messages


def reverse_task_messages(task: TaskSpec, output: str, shots: Sequence[Example] | None = None,
                          note: str = REVERSE_NOTE) -> list[Message]:
    """The task prompt turned around (generate.direction=output): the demonstrations (`shots=None`: the
    task's examples) map each example's output to its input, and the model writes the input for `output`
    (instruction backtranslation). `note` is the system turn's line that says so."""
    messages: list[Message] = [{"role": "system", "content": system_text(task) + "\n\n" + note}]
    for ex in task.examples if shots is None else shots:
        messages.append({"role": "user", "content": ex.output})
        messages.append({"role": "assistant", "content": ex.input})
    messages.append({"role": "user", "content": output})
    return messages


def parse_generated_input(text: str, field: str = "input") -> str:
    """Turn a completion of an input-generation prompt into one clean input (or, with
    `field="output"`, an output-generation prompt into one clean output).

    Strips echoed markers and wrapping quotes, and cuts at a second input or an output field.
    Returns "" when nothing usable is left (the caller rejects it as empty).
    """
    s = text.replace("\r\n", "\n").strip()
    for marker in (f"[{field}]=", f"[{field}] =", f"[{field}]:", f"[{field}]", f"{field}:", f"{field.capitalize()}:"):
        if s.startswith(marker):
            s = s[len(marker):].lstrip()
    if s.startswith('"'):
        s = s[1:]
    cut = len(s)
    for marker in ("[input]", "[output]", "[instruction]", "\n\n", "<|im_end|>", "<|im_start|>"):
        pos = s.find(marker)
        if pos != -1:
            cut = min(cut, pos)
    s = s[:cut].strip()
    if s.endswith('"') and s.count('"') % 2 == 1:
        s = s[:-1]
    return s.strip()


def decode_budget(chars: int, label: bool = False) -> int:
    """Tokens to allow for a completion of up to `chars` characters: the one budget heuristic.

    Labels are short words (~2 characters a token, plus room for the end token); free text is
    English at ~3.5 characters a token with slack for a closing quote, between 32 and 512 tokens.
    """
    if label:
        return max(8, math.ceil(chars / 2) + 4)
    return min(512, max(32, math.ceil(chars / 3.5) + 16))


def answer_budget(task: TaskSpec) -> int:
    """Tokens for one answer of `task`, from its labels or example outputs only (never from test
    references): annotation cuts (and rejects) longer samples, so no training answer is longer,
    and evaluation gives every system this same budget."""
    longest = max(len(x) for x in (task.labels or [e.output for e in task.examples]))
    return decode_budget(longest, label=True) if task.kind == "classification" else decode_budget(2 * longest)
