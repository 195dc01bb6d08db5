"""Method registry: name -> (config dataclass, module). Each method module registers itself."""

from __future__ import annotations

from collections.abc import Callable

from ptune.config import METHOD_CONFIGS, MethodConfig
from ptune.errors import unknown
from ptune.methods.base import BackboneDims, PerTask, Prompt, PromptMethod, TaskInfo

METHODS: dict[str, type[PromptMethod]] = {}


def register(name: str, config_cls: type[MethodConfig]) -> Callable[[type[PromptMethod]], type[PromptMethod]]:
    def wrap(cls: type[PromptMethod]) -> type[PromptMethod]:
        METHODS[name] = cls
        METHOD_CONFIGS[name] = config_cls
        return cls

    return wrap


def build(cfg: MethodConfig, dims: BackboneDims, label_words: list[list[str]],
          tasks: list[TaskInfo] | None = None) -> PromptMethod:
    """Build the method named by ``cfg.name``; ``label_words`` holds each task's verbalizers (task id i
    is entry i). A method that is not task-aware shares one prompt across the tasks, or keeps one per
    task with ``method.per_task=true``."""
    if cfg.name not in METHODS:
        raise unknown("method", cfg.name, METHODS)
    cls = METHODS[cfg.name]
    if getattr(cfg, "per_task", False) and not cls.task_aware and len(label_words) > 1:
        return PerTask(cls, cfg, dims, label_words, tasks)
    return cls(cfg, dims, label_words, tasks)


def variants() -> list[tuple[str, tuple[str, ...]]]:
    """Every registered method's variants as (label, overrides): ``("p_tuning encoder=mlp", ("method=p_tuning",
    "method.encoder=mlp"))``; a method without variants appears once, with its defaults."""
    out = []
    for name, cls in METHODS.items():
        for extra in cls.variants:
            label = " ".join([name, *(o.removeprefix("method.") for o in extra)])
            out.append((label, (f"method={name}", *extra)))
    return out


# import for registration (order = listing order)
from ptune.methods import (  # noqa: E402,F401
    hyperprompt,
    model_tuning,
    p_tuning,
    p_tuning_v2,
    prefix_tuning,
    prompt_tuning,
    structured,
)

__all__ = ["METHODS", "BackboneDims", "Prompt", "PromptMethod", "TaskInfo", "build", "register", "variants"]
