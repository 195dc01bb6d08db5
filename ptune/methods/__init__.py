"""Method registry: name -> (config dataclass, module). Each method module registers itself with
:func:`register`; this package imports every module in it (no list to edit), and another package adds its
methods through the entry-point group ``ptune.methods`` (:func:`ptune.config.load_methods`)."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

from ptune.config import METHOD_CONFIGS, MethodConfig, load_methods
from ptune.errors import ConfigError, unknown
from ptune.methods.base import BackboneDims, PerTask, Prompt, PromptMethod, TaskInfo
from ptune.tasks import DESCRIPTIONS
from ptune.tasks.base import Task

METHODS: dict[str, type[PromptMethod]] = {}


def register(name: str, config_cls: type[MethodConfig]) -> Callable[[type[PromptMethod]], type[PromptMethod]]:
    def wrap(cls: type[PromptMethod]) -> type[PromptMethod]:
        known = METHODS.get(name)
        if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ConfigError(f"method {name!r} is registered twice: by {known.__module__}.{known.__qualname__} "
                              f"and by {cls.__module__}.{cls.__qualname__}")
        METHODS[name] = cls
        METHOD_CONFIGS[name] = config_cls
        return cls

    return wrap


def build(cfg: MethodConfig, dims: BackboneDims, label_words: list[list[str]],
          tasks: list[TaskInfo] | None = None) -> PromptMethod:
    """Build the method named by ``cfg.name``; ``label_words`` holds each task's verbalizers (task id i
    is entry i). A method that is not task-aware shares one prompt across the tasks, or keeps one per
    task with ``method.per_task=true``."""
    load_methods()
    if cfg.name not in METHODS:
        raise unknown("method", cfg.name, METHODS)
    cls = METHODS[cfg.name]
    if getattr(cfg, "per_task", False) and not cls.task_aware and len(label_words) > 1:
        return PerTask(cls, cfg, dims, label_words, tasks)
    return cls(cfg, dims, label_words, tasks)


def task_info(task: Task) -> TaskInfo:
    """What a method knows of a task (its name, label words and description): the one place a task becomes it."""
    return TaskInfo(task.name, task.label_words, DESCRIPTIONS.get(task.name, ""))


def build_for(cfg: MethodConfig, dims: BackboneDims, run_tasks: list[Task]) -> PromptMethod:
    """``build`` for a run's tasks (task id i = ``run_tasks[i]``): training, ``describe`` and predict use it."""
    infos = [task_info(t) for t in run_tasks]
    return build(cfg, dims, [i.label_words for i in infos], infos)


def variants() -> list[tuple[str, tuple[str, ...]]]:
    """Every registered method's variants as (label, overrides): ``("p_tuning encoder=mlp", ("method=p_tuning",
    "method.encoder=mlp"))``; a method without variants appears once, with its defaults."""
    load_methods()
    out = []
    for name, cls in METHODS.items():
        for extra in cls.variants:
            label = " ".join([name, *(o.removeprefix("method.") for o in extra)])
            out.append((label, (f"method={name}", *extra)))
    return out


# every module of this package, in name order (the listing order); a method module registers on import
for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")

__all__ = ["METHODS", "BackboneDims", "Prompt", "PromptMethod", "TaskInfo", "build", "register", "variants"]
