"""The task catalogue: GLUE and SuperGLUE tasks by registry key, and their data loaders.

``TASKS`` maps the key used in configs (``task=rte``, ``configs/task/rte.yaml``) to a :class:`Task`.
GLUE's RTE is ``rte``; SuperGLUE's copy (other column names, slightly different text) is
``superglue_rte``.
"""

from __future__ import annotations

from ptune.errors import unknown
from ptune.tasks import glue, superglue
from ptune.tasks.base import Example, Head, Task
from ptune.tasks.data import load_rows, load_split

TASKS: dict[str, Task] = {task.name: task for task in (*glue.TASKS, *superglue.TASKS)}

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


__all__ = ["MIXTURES", "TASKS", "mixture_name", "Example", "Head", "Task", "get", "load_rows", "load_split"]
