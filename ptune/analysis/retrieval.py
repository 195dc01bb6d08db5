"""SPoT's retrieval rules (Vu et al. 2022) over a ranking of source prompts (ptune.analysis.similarity):
best of top-k (``method.init_from=`` overrides, one target run each), the top-k weighted average (a prompt file
``method.init_from`` reads) and the top-k multi-task mixture (a ``task=[...]`` override)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ptune import files, run_folder
from ptune.errors import ConfigError

if TYPE_CHECKING:
    from ptune.analysis.similarity import Entry

def hydra_value(value: str) -> str:
    """``value`` as Hydra reads it back unchanged: plain when it can, else single-quoted."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_override(f"k={value}")
        if not parsed.is_sweep_override() and parsed.value() == value:
            return value
    except Exception:  # noqa: BLE001  (the grammar's own errors: quote it)
        pass
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def init_overrides(source: Entry) -> list[str]:
    out = [f"method.init_from={hydra_value(str(source.folder))}"]
    if source.index is not None and len(source.meta.get("tasks", "").split(",")) > 1:
        out.append(f"method.init_from_task={source.task}")
    return out


def best_of_top_k(top: list[Entry]) -> dict:
    """Each source's overrides (a list of words); and, when none needs ``init_from_task``, one sweep override
    for ``ptune train -m`` over all of them."""
    each = [init_overrides(s) for s in top]
    sweep = None
    if all(len(o) == 1 for o in each):
        sweep = "method.init_from=" + ",".join(hydra_value(str(s.folder)) for s in top)
    return {"overrides": each, "sweep": sweep}


def mixture(top: list[Entry], target: Entry) -> str:
    tasks = list(dict.fromkeys([t for s in top for t in s.tasks] + target.tasks))
    return f"task=[{','.join(tasks)}]"


def method_tensors(folder: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    tensors, meta = files.read_tensors(folder / run_folder.PROMPT)  # the best method parameters: what init_from reads
    return {k[len("method."):]: v for k, v in tensors.items() if k.startswith("method.")}, meta


def weighted_average(top: list[Entry], weights: list[float], target: Entry, out: Path) -> Path:
    """For each of the target run's method parameters, the weighted sum over the sources of what
    ``method.init_from=<source>`` (with its task) would give it; saved as a prompt file init_from reads."""
    from ptune.methods.transfer import pick

    shapes, meta = method_tensors(target.folder)
    total = {name: torch.zeros(t.shape, dtype=torch.float64) for name, t in shapes.items()}
    for source, w in zip(top, weights, strict=True):
        params, smeta = method_tensors(source.folder)
        if smeta.get("method") != meta.get("method"):
            raise ConfigError(f"the weighted average needs one method: source {source.label} is method="
                              f"{smeta.get('method')!r}, target {target.label} is method={meta.get('method')!r}")
        n = len(smeta["tasks"].split(",")) if smeta.get("tasks") else 1
        for name, t in shapes.items():
            total[name] += w * pick(name, tuple(t.shape), params, source.index if source.index is not None else 0,
                                    n, str(source.folder)).double()
    provenance = [{"run": str(s.folder), "task": s.task, "weight": w} for s, w in zip(top, weights, strict=True)]
    header: dict[str, str] = {k: meta[k] for k in ("format", "method", "model", "family") if k in meta}
    header.update(task=target.task, tasks=",".join(target.tasks), step="0", similarity=json.dumps(provenance))
    files.atomic_save_tensors(out, {f"method.{k}": v.to(shapes[k].dtype) for k, v in total.items()}, header)
    return out
