"""``ptune eval run=DIR [task=NAME] [key=value ...]``: re-score a run's saved prompt on every task of the run.

    ptune eval run=outputs/<run>                       # each task's metrics, beside the ones the run stored
    ptune eval run=outputs/<run> task=rte data.root=../shared/data/hub

The run is rebuilt from its folder (``run_folder.open``: its saved config, with the overrides merged as
``ptune predict`` merges them), its prompt loaded, and each task scored on its evaluation splits. Each line
on stderr gives the fresh metrics and, in brackets, the best ones the run stored (none when its
results.json is damaged: a warning says so); stdout gets one JSON object for scripts.
"""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console

from ptune import run, run_folder
from ptune.errors import ConfigError
from ptune.training.loop import evaluate_all, split_key


def command(run_dir: Path, task: str | None, overrides: list[str], console: Console) -> dict:
    """Score the run's saved prompt (``task``: only that one of its tasks); returns what ``ptune eval`` prints."""
    folder = run_folder.open(run_dir)
    if task is not None and task not in folder.config.task:
        raise ConfigError(f"task={task!r} is not a task of {run_dir}; choose one of: {', '.join(folder.config.task)}")
    parts = run.build(folder.configured(overrides, "ptune eval"), train=False)
    step = parts.load_prompt(folder.prompt)
    evals = [s for s in parts.evals if task is None or s.task.name == task]
    metrics = evaluate_all(parts, evals)
    stored = stored_best(folder)
    per_task = metrics.get("tasks") or {split_key(evals[0], True): metrics}
    stored_tasks = stored.get("tasks") or {parts.task.name: stored}
    for key, m in per_task.items():
        ref = stored_tasks.get(key, {})
        console.print(f"{key} @ step {step}: " + ", ".join(f"{k} {v:.2f}" for k, v in m.items()) +
                      "".join(f"  (stored {k} {ref[k]:.2f})" for k in m if k in ref))
    if "avg" in metrics and task is None:
        console.print(f"avg {metrics['avg']:.2f}" + (f"  (stored {stored['avg']:.2f})" if "avg" in stored else ""))
    if len(parts.tasks) == 1:
        out_stored = {k: stored[k] for k in metrics if k in stored}
    else:
        out_stored = {"tasks": {k: stored_tasks[k] for k in per_task if k in stored_tasks}}
        if "avg" in stored and task is None:
            out_stored["avg"] = stored["avg"]
    return {"run_dir": str(run_dir), "step": step, "metrics": metrics, "stored": out_stored}


def stored_best(folder: run_folder.RunFolder) -> dict:
    """The best evaluation the run stored in its results; empty while it has none (a warning when they are
    damaged: the fresh metrics still come, without the comparison)."""
    if folder.results_damaged:
        print(f"ptune: warning: {folder.path / run_folder.RESULTS} is damaged (not JSON); the stored metrics are "
              "not compared", file=sys.stderr)
    return (folder.results or {}).get("best") or {}
