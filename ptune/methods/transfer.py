"""SPoT's prompt transfer (Vu et al. 2022, Section 3): start a run from a source run's method parameters.

``method.init_from`` names a source run folder (its best ``prompt.safetensors``, or with
``method.init_from_step=N`` its snapshot ``snapshots/step-N/``) or a file in that format (``ptune similarity``
writes the top-k weighted average of source prompts as one, ``<out>.init.safetensors``). Only ``method.*`` tensors are
read: task heads never transfer. The source must be the same method on the same backbone; then each of
the target method's parameters takes, in this order,

1. the source tensor of the same name and shape;
2. from a ``method.per_task`` source (one copy per task), copy ``init_from_task``'s;
3. for a per-task table (first dimension = the source's task count: structured's task embeddings,
   HyperPrompt's global prompts and ``sep`` networks), ``init_from_task``'s row, for each target task;

and anything else is a mismatch, refused in one line naming the parameter and both shapes. The metadata
check (method, model, family) runs before the target's model loads (:func:`check`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ptune.errors import CheckpointError, ConfigError
from ptune.training import checkpoint as ckpt


def source_file(init_from: str, step: int | None) -> Path:
    path = Path(init_from)
    if path.is_file():
        if step is not None:
            raise ConfigError(f"method.init_from_step={step} needs a run folder; method.init_from={init_from} is a file")
        return path
    if not path.is_dir():
        raise ConfigError(f"method.init_from={init_from}: no run folder or prompt file there")
    if step is None:
        return path / "prompt.safetensors"
    snap = path / "snapshots" / f"step-{step}" / "prompt.safetensors"
    if not snap.is_file():
        have = sorted(int(p.name.split("-", 1)[1]) for p in (path / "snapshots").glob("step-*")) if (
            path / "snapshots").is_dir() else []
        raise ConfigError(f"method.init_from_step={step}: {path} has no snapshot at that step (it has: "
                          f"{', '.join(map(str, have)) or 'none'}; trainer.snapshot_steps keeps them)")
    return snap


def source_tasks(path: Path, meta: dict[str, str]) -> list[str]:
    if meta.get("tasks"):
        return meta["tasks"].split(",")
    return [t for t in meta.get("task", "").split("+") if t]


def check(cfg, expected: dict[str, str]) -> tuple[dict[str, Tensor], dict[str, str], Path]:
    """Read the source and check it is this method on this backbone, before anything loads."""
    m = cfg.method
    path = source_file(m.init_from, m.init_from_step)
    tensors, meta = ckpt.read_tensors(path)
    for key in ("method", "model", "family"):
        if meta.get(key) is not None and meta[key] != expected[key]:
            raise ConfigError(f"method.init_from={m.init_from} holds {key}={meta[key]!r}, this run has "
                              f"{key}={expected[key]!r}; transfer needs the same method and backbone")
    tasks = source_tasks(path, meta)
    if m.init_from_task is not None and m.init_from_task not in tasks:
        raise ConfigError(f"method.init_from_task={m.init_from_task!r} is not a task of {m.init_from}; "
                          f"choose one of: {', '.join(tasks) or '(the source names no tasks)'}")
    return {k[len("method."):]: v for k, v in tensors.items() if k.startswith("method.")}, meta, path


def apply(method: torch.nn.Module, cfg, source: dict[str, Tensor], meta: dict[str, str], path: Path) -> int:
    """Copy the source into ``method``'s parameters (rules in the module docstring); returns how many."""
    tasks = source_tasks(path, meta)
    index = tasks.index(cfg.method.init_from_task) if cfg.method.init_from_task is not None else None
    plan: dict[str, Tensor] = {}
    for name, p in method.named_parameters():
        plan[name] = pick(name, tuple(p.shape), source, index, len(tasks), cfg.method.init_from)
    if not plan:
        raise ConfigError(f"method={cfg.method.name} has no parameters to initialise from {cfg.method.init_from}")
    with torch.no_grad():
        for name, p in method.named_parameters():
            p.copy_(plan[name].to(p.dtype))
    return len(plan)


def pick(name: str, shape: tuple, source: dict[str, Tensor], index: int | None, n_tasks: int, where: str) -> Tensor:
    rest = name.split(".", 2)[2] if name.startswith("copies.") else None  # a per_task target's copy
    for key in (name, rest):
        if key is not None and key in source and tuple(source[key].shape) == shape:
            return source[key]
    copies = [k for k in source if k.startswith("copies.") and k.split(".", 2)[2] == (rest or name)]
    if copies:
        if index is None:
            raise ConfigError(f"method.init_from={where} keeps one prompt per task; choose one with "
                              "method.init_from_task=<task>")
        t = source.get(f"copies.{index}.{rest or name}")
        if t is not None and tuple(t.shape) == shape:
            return t
    t = source.get(rest or name)
    if t is not None and t.dim() == len(shape) and tuple(t.shape[1:]) == shape[1:] and t.shape[0] == n_tasks > 1:
        if index is None:
            raise ConfigError(f"method.init_from={where} is a {n_tasks}-task run; choose the task with "
                              "method.init_from_task=<task>")
        return t[index : index + 1].expand(shape).clone()
    have = next((tuple(v.shape) for k, v in source.items() if k.endswith(rest or name)), None)
    if have is None:
        raise CheckpointError(f"method.init_from={where} has no {name} (a different method or configuration)")
    raise ConfigError(f"method.init_from={where}: {name} has shape {have} there, {shape} here "
                      "(a different prompt length or configuration)")
