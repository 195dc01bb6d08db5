"""The task catalogue: GLUE and SuperGLUE tasks by registry key, and their data loaders.

``TASKS`` maps the key used in configs (``task=rte``, ``configs/task/rte.yaml``) to a :class:`Task`.
GLUE's RTE is ``rte``; SuperGLUE's copy (other column names, slightly different text) is
``superglue_rte``.
"""

from __future__ import annotations

from ptune.errors import unknown
from ptune.tasks import glue, superglue
from ptune.tasks.base import Example, Head, Task
from ptune.tasks.data import load_rows, load_split, split_rows

TASKS: dict[str, Task] = {task.name: task for task in (*glue.TASKS, *superglue.TASKS)}

# a natural-language description of each task, for methods that initialise from one (method=structured)
DESCRIPTIONS: dict[str, str] = {
    "cola": "Is this sentence grammatically acceptable?",
    "sst2": "Is the sentiment of this movie review sentence positive or negative?",
    "mrpc": "Are these two sentences paraphrases of each other?",
    "qqp": "Are these two questions asking the same thing?",
    "stsb": "How similar in meaning are these two sentences, on a scale from 0 to 5?",
    "mnli": "Does the premise entail the hypothesis, contradict it, or neither?",
    "qnli": "Does the sentence contain the answer to the question?",
    "rte": "Does the first sentence entail the second?",
    "wnli": "Does the sentence with the pronoun replaced follow from the original sentence?",
    "boolq": "Is the answer to the question about the passage yes or no?",
    "cb": "Does the premise entail the hypothesis, contradict it, or neither?",
    "copa": "Which alternative is the more plausible cause or effect of the premise?",
    "multirc": "Is this answer to the question about the paragraph correct?",
    "record": "Which entity from the passage fills the blank in the query?",
    "superglue_rte": "Does the premise entail the hypothesis?",
    "wic": "Is the word used with the same meaning in both sentences?",
    "wsc": "Does the pronoun refer to the given noun phrase?",
}

# named mixtures: ``task=glue`` / ``task=superglue`` (configs/task/<name>.yaml lists the same tasks)
MIXTURES: dict[str, tuple[str, ...]] = {
    "glue": ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte"),
    "superglue": ("boolq", "cb", "copa", "multirc", "record", "superglue_rte", "wic", "wsc"),
}


def mixture_name(names: list[str]) -> str:
    """``rte`` for one task, the mixture's name for a named mixture's tasks, else ``rte+mrpc``."""
    for name, members in MIXTURES.items():
        if sorted(members) == sorted(names):
            return name
    return "+".join(names)


def get(name: str) -> Task:
    """The task registered under ``name``; an unknown name raises one error listing the choices."""
    try:
        return TASKS[name]
    except KeyError:
        raise unknown("task", name, TASKS) from None


__all__ = ["DESCRIPTIONS", "MIXTURES", "TASKS", "mixture_name", "Example", "Head", "Task", "get", "load_rows", "load_split",
           "split_rows"]
