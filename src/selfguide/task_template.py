"""`selfguide task new`: a commented task file to fill in, which `selfguide task check` accepts as written."""

from __future__ import annotations

import re
from pathlib import Path

from selfguide.errors import TaskError

CLASSIFICATION = '''\
# A selfguide task file. Replace the example content with your task; keep the keys.
#   id:           names the run folder (1-80 letters, digits, _ - .)
#   instruction:  what the task is, in plain words, as you would tell a person
#   labels:       the answer set of a classification task (delete it, and use free-text outputs, for generation)
#   examples:     2 or more input/output pairs; about 3 is typical (the model writes new inputs in their style)
#   eval:         optional labelled items used ONLY to measure prompting vs the finetuned model (never for training);
#                 without them `selfguide run` still synthesises, trains and exports the model, but gives no verdict
#   validation:   optional, 20 or more labelled items (not the eval ones) on which the do-no-harm gate checks the
#                 finetuning and keeps the base model when finetuning did not beat prompting
# Check it with: selfguide task check {file}      Run it with: selfguide run {file} --quick
id: {id}
instruction: Decide whether the movie review is positive or negative.
labels: [positive, negative]
examples:
  - input: "A warm, funny film with a great cast."
    output: positive
  - input: "Two hours I will never get back."
    output: negative
  - input: "The best thing I saw this year."
    output: positive
eval:
  - {{input: "Dull plot, wooden acting.", output: negative}}
  - {{input: "I laughed and cried; go and see it.", output: positive}}
'''

GENERATION = '''\
# A selfguide task file for free-text output (generation; scored with ROUGE-L). Replace the example
# content with your task; keep the keys.
#   id:           names the run folder (1-80 letters, digits, _ - .)
#   instruction:  what the task is, in plain words, as you would tell a person
#   examples:     2 or more input/output pairs; about 3 is typical (the model writes new inputs in their style)
#   eval:         optional labelled items used ONLY to measure prompting vs the finetuned model (never for training);
#                 an output may be a list of acceptable references; without eval items `selfguide run` still
#                 synthesises, trains and exports the model, but gives no verdict
#   validation:   optional, 20 or more labelled items (not the eval ones) on which the do-no-harm gate checks the
#                 finetuning and keeps the base model when finetuning did not beat prompting
# Check it with: selfguide task check {file}      Run it with: selfguide run {file} --quick
id: {id}
instruction: Rewrite the sentence so that it is polite.
examples:
  - input: "Give me the report now."
    output: "Could you please send me the report when you have a moment?"
  - input: "Move your car."
    output: "Would you mind moving your car, please?"
  - input: "Stop talking."
    output: "Could we have a moment of quiet, please?"
eval:
  - {{input: "Answer the phone.", output: ["Could you please answer the phone?", "Would you answer the phone, please?"]}}
'''


def write_task_template(name: str, generation: bool = False) -> Path:
    """Write NAME.yaml (or NAME, if it ends in .yaml/.yml) and return its path; never overwrites."""
    path = Path(name if name.endswith((".yaml", ".yml")) else f"{name}.yaml")
    tid = re.sub(r"[^A-Za-z0-9_.-]+", "-", path.name.split(".")[0]).strip("-.") or "my-task"
    if path.exists():
        raise TaskError(f"{path}: already exists; choose another name or delete it first (nothing was written)")
    if not path.parent.is_dir():
        raise TaskError(f"{path.parent}: no such folder; create it or choose another path (nothing was written)")
    text = (GENERATION if generation else CLASSIFICATION).format(id=tid[:80], file=path)
    with open(path, "x", encoding="utf-8") as fh:  # "x": a file created meanwhile is not overwritten either
        fh.write(text)
    return path
