"""``ptune table``: run folders -> a paper table. Rows are methods (with their trainable parameters and
their share of the backbone), columns are tasks and their average, a cell is the mean ± sample standard
deviation of the best main metric over seeds, with n. Failed and unfinished runs are listed below the
table, never averaged in. When a run's config names paper numbers (``paper.scores``), they are printed
beside ours with the difference (ours - paper).

    ptune table multirun/grid                 # prints the table, writes multirun/grid/table.md and .csv
"""

from __future__ import annotations

import csv
import io
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ptune.analysis.runs import Run, find
from ptune.files import atomic_write_text


@dataclass
class Cell:
    scores: list[float]
    paper: float | None = None

    @property
    def mean(self) -> float:
        return statistics.fmean(self.scores)

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.scores) if len(self.scores) > 1 else None

    def text(self, sep: str = "  ", n: bool = True) -> str:
        ours = f"{self.mean:.1f}" + (f" ± {self.std:.1f}" if self.std is not None else "")
        ours += f" (n={len(self.scores)})" if n else ""
        if self.paper is None:
            return ours
        return f"{ours}{sep}paper {self.paper:.1f} (Δ {self.mean - self.paper:+.1f})"


@dataclass
class Row:
    label: str
    model: str
    cells: dict[str, Cell] = field(default_factory=dict)
    trainable: set[int] = field(default_factory=set)
    share: set[float] = field(default_factory=set)  # trainable / frozen backbone, in percent

    def average(self, tasks: list[str]) -> Cell | None:
        """Mean over tasks of the per-task means; only when the row has every task (else it misleads)."""
        if not tasks or any(t not in self.cells for t in tasks):
            return None
        means = [self.cells[t].mean for t in tasks]
        papers = [self.cells[t].paper for t in tasks]
        paper = statistics.fmean(papers) if all(p is not None for p in papers) else None  # type: ignore[arg-type]
        return Cell([statistics.fmean(means)], paper)

    def params(self) -> str:
        return "–".join(f"{n:,}" for n in sorted({min(self.trainable), max(self.trainable)})) if self.trainable else "?"

    def share_text(self) -> str:
        return "–".join(f"{s:.3g}%" for s in sorted({min(self.share), max(self.share)})) if self.share else "?"


def build(runs: list[Run], per_task: bool = False) -> tuple[list[Row], list[str], dict[str, str]]:
    """Rows (methods x variants x models), the task columns, and each task's main metric. ``per_task``: a
    mixture run's tasks fill the task columns, in a row of their own ("<method> (mixture <tasks>)"), instead
    of one column for the mixture's average."""
    rows: dict[tuple[str, str], Row] = {}
    metrics: dict[str, str] = {}
    finished = [r for r in runs if r.status == "finished" and r.score is not None]
    labels = setting_labels(finished)
    for run in finished:
        split = per_task and bool(run.task_scores)
        label = f"{labels[id(run)]} (mixture {run.task})" if split else labels[id(run)]
        row = rows.setdefault((label, run.model), Row(label, run.model))
        scores = run.task_scores if split else {run.task: float(run.score)}
        for task, score in scores.items():
            cell = row.cells.setdefault(task, Cell([]))
            cell.scores.append(score)
            if not split:
                cell.paper = run.paper if run.paper is not None else cell.paper
            metrics[task] = run.task_metrics[task] if split else (run.main_metric or "?")
        if run.trainable is not None and run.total is not None:
            row.trainable.add(run.trainable)
            frozen = run.total - run.trainable  # the frozen backbone; a trained body (model tuning): the whole model
            row.share.add(100.0 * run.trainable / (frozen if frozen >= run.trainable else max(1, run.total)))
    return sorted(rows.values(), key=lambda r: (r.model, r.label)), sorted(metrics), metrics


def setting_labels(runs: list[Run]) -> dict[int, str]:
    """Each run's row label: its method and folder variant, then every setting (``Run.settings``) whose value
    differs between runs of one task with its method and model, so two runs are averaged only when all they
    differ in is the seed (and run-only keys such as paths and logging). A setting that differs only between
    tasks (a preset's per-task steps) does not split rows: tasks are columns already."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.method, run.model), []).append(run)
    out = {}
    for group in groups.values():
        keys = sorted({k for r in group for k in r.settings})
        by_task: dict[str, list[Run]] = {}
        for run in group:
            by_task.setdefault(run.task, []).append(run)
        differ = [k for k in keys if any(len({repr(r.settings.get(k)) for r in same}) > 1 for same in by_task.values())]
        for run in group:
            extra = [f"{k.removeprefix('method.')}={short(run.settings.get(k))}" for k in differ
                     if k.rsplit(".", 1)[-1] + "=" not in run.variant]
            out[id(run)] = " ".join([run.label, *extra])
    return out


def short(value) -> str:
    """A setting's value in a row label, shortened as in run folder names (``sweep.short``)."""
    from ptune.sweep import short as folder_short

    return folder_short(",".join(map(str, value)) if isinstance(value, tuple) else str(value))


def header(rows: list[Row], tasks: list[str], metrics: dict[str, str]) -> list[str]:
    models = ["model"] if len({r.model for r in rows}) > 1 else []
    return ["method", *models, "trainable params", "of backbone", *(f"{t} ({metrics[t]})" for t in tasks), "avg"]


def cells(row: Row, rows: list[Row], tasks: list[str], sep: str) -> list[str]:
    models = [row.model] if len({r.model for r in rows}) > 1 else []
    avg = row.average(tasks)
    return [row.label, *models, row.params(), row.share_text(),
            *(row.cells[t].text(sep) if t in row.cells else "–" for t in tasks), avg.text(sep, n=False) if avg else "–"]


def not_averaged(runs: list[Run]) -> list[str]:
    out = []
    for r in runs:
        if r.status == "failed":
            out.append(f"failed: {r.folder.name} ({r.label}, {r.task}): {r.error or 'see its sweep.json'}")
        elif r.status == "unfinished":
            out.append(f"unfinished: {r.folder.name} (step {r.step or 0} of {r.max_steps or '?'})")
    return out


def markdown(rows: list[Row], tasks: list[str], metrics: dict[str, str], notes: list[str]) -> str:
    head = header(rows, tasks, metrics)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    lines += ["| " + " | ".join(cells(r, rows, tasks, sep="<br>")) + " |" for r in rows]
    lines.append("")
    lines.append("Cells: best validation main metric, mean ± sample std over seeds (n runs); avg: the mean of "
                 "the task means, for methods with every task.")
    lines += ["", *(f"- {n}" for n in notes)] if notes else []
    return "\n".join(lines) + "\n"


def to_csv(rows: list[Row], tasks: list[str]) -> str:
    buf = io.StringIO()
    out = csv.writer(buf)
    cols = ["mean", "std", "n", "paper", "delta"]
    out.writerow(["method", "model", "trainable_params", "backbone_share_pct",
                  *(f"{t}_{c}" for t in tasks for c in cols), "avg_mean", "avg_paper"])
    for r in rows:
        values: list = [r.label, r.model, max(r.trainable) if r.trainable else "",
                        f"{max(r.share):.4g}" if r.share else ""]
        for t in tasks:
            c = r.cells.get(t)
            values += ["", "", 0, "", ""] if c is None else [
                f"{c.mean:.4f}", "" if c.std is None else f"{c.std:.4f}", len(c.scores),
                "" if c.paper is None else c.paper, "" if c.paper is None else f"{c.mean - c.paper:.4f}"]
        avg = r.average(tasks)
        values += ["", ""] if avg is None else [f"{avg.mean:.4f}", "" if avg.paper is None else f"{avg.paper:.4f}"]
        out.writerow(values)
    return buf.getvalue()


def main(folders: list[Path], out: Path | None, console: Console, per_task: bool = False) -> int:
    runs = find(folders)
    rows, tasks, metrics = build(runs, per_task)
    notes = not_averaged(runs)
    table = Table(title=f"{sum(len(c.scores) for r in rows for c in r.cells.values())} finished runs: best validation "
                        "main metric, mean ± std over seeds (n)")
    for i, name in enumerate(header(rows, tasks, metrics)):
        table.add_column(name, justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*cells(r, rows, tasks, sep="\n"))
    console.print(table)
    for note in notes:
        console.print(f"  {note}", highlight=False)
    out = out if out is not None else (Path(folders[0]) / "table" if len(folders) == 1 else Path("table"))
    out = out.with_suffix("") if out.suffix in (".md", ".csv") else out
    md, csv_path = out.with_name(out.name + ".md"), out.with_name(out.name + ".csv")
    atomic_write_text(md, markdown(rows, tasks, metrics, notes))
    atomic_write_text(csv_path, to_csv(rows, tasks))
    console.print(f"wrote {md} and {csv_path}")
    return 0
