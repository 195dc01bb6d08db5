"""``ptune runs``: every run under some folders, one line each: status, step of max steps, best main metric,
age, and the settings that differ from the defaults of its method, model and task.

    ptune runs                       # runs under ./outputs and ./multirun
    ptune runs multirun/grid --json  # one JSON object per run, for scripts

Status: ``running`` (a process holds the run's lock), ``finished`` (max steps), ``stopped early`` (early
stopping), ``interrupted`` (a saved state to resume from, no process), ``failed`` (its sweep recorded an
error, or it ended with neither results nor a state to resume).
"""

from __future__ import annotations

import json
import time
from functools import lru_cache
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ptune import run_folder
from ptune.analysis.runs import Run, find, settings


def status(run: Run) -> str:
    if run_folder.held(run.folder):
        return "running"
    results = run_folder.read_results(run.folder)
    if results is not None and run.status == "finished":
        return "stopped early" if results.get("stopped") == "early_stopping" else "finished"
    if run.status == "failed":
        return "failed"
    return "interrupted" if run_folder.has_state(run.folder) else "failed"


@lru_cache(maxsize=64)
def defaults(method: str, model: str, task: str) -> dict:
    """The settings of a run with nothing set but its method, model and task (empty if they no longer compose)."""
    import dataclasses

    from ptune.config import load
    from ptune.errors import PtuneError

    tasks = task.split("+")
    choice = tasks[0] if len(tasks) == 1 else "[" + ",".join(tasks) + "]"
    try:
        cfg = load([f"method={method}", f"model={model}", f"task={choice}"])
    except PtuneError:
        return {}
    return settings(dataclasses.asdict(cfg))


def changed(run: Run) -> dict:
    base = defaults(run.method, run.model, run.task)
    if not base:
        return {}
    return {k: v for k, v in run.settings.items()
            if not k.startswith(("method.name", "model.name")) and repr(base.get(k)) != repr(v)}


def best_so_far(run: Run) -> float | None:
    if run.score is not None:
        return float(run.score)
    metric = run.main_metric
    values = [float(r[metric]) for r in run.history if metric and metric in r]
    return max(values) if values else None


def age(folder: Path) -> float:
    """Seconds since the run last wrote anything it keeps (results, metrics, state, config)."""
    last = run_folder.last_write(folder)
    return time.time() - last if last is not None else float("nan")


def ago(seconds: float) -> str:
    if seconds != seconds:  # nan
        return "?"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


def records(folders: list[Path]) -> list[dict]:
    out = []
    for run in find(folders):
        if not run_folder.is_run(run.folder):  # a sweep job that failed before it had a folder
            out.append({"run": str(run.folder), "status": "failed", "method": run.method, "task": run.task,
                        "model": run.model, "seed": run.seed, "error": run.error})
            continue
        if not run.main_metric:
            from ptune.analysis.plot import main_metric

            run.main_metric = main_metric(run)
        step = run.step  # read_run took it from results.json, or from the saved state
        out.append({"run": str(run.folder), "status": status(run), "method": run.method, "task": run.task,
                    "model": run.model, "seed": run.seed, "step": step, "max_steps": run.max_steps,
                    "metric": run.main_metric, "best": best_so_far(run), "age_s": round(age(run.folder), 1),
                    "changed": changed(run), "error": run.error})
    return out


def shown(path: Path) -> str:
    """A run's folder as the user would type it: relative to the working directory when under it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def main(folders: list[Path], as_json: bool, console: Console) -> int:
    rows = records(folders)
    if as_json:
        for row in rows:
            print(json.dumps(row, default=str))  # one object per line, colour-free, for scripts
        return 0
    table = Table(title=f"{len(rows)} runs", show_edge=False)
    for col in ("run", "status", "step", "best", "age", "settings that differ from the defaults"):
        table.add_column(col, justify="right" if col in ("step", "best") else "left")
    for row in rows:
        step = f"{row.get('step') or 0}/{row.get('max_steps') or '?'}"
        best = f"{row['best']:.2f} {row['metric']}" if row.get("best") is not None else "–"
        diff = " ".join(f"{k.removeprefix('method.')}={v}" for k, v in (row.get("changed") or {}).items())
        if row["status"] == "failed" and row.get("error"):
            diff = f"{diff} error: {row['error']}".strip()
        table.add_row(shown(Path(row["run"])), row["status"], step, best, ago(row.get("age_s", float("nan"))), diff)
    console.print(table)
    return 0
