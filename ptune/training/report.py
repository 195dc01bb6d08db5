"""What a person watching a run sees: a rich progress bar and a table row per evaluation."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table


class Reporter:
    def __init__(self, console: Console | None, tcfg, start_step: int = 0):
        self.console = console or Console(stderr=True, quiet=True)
        self.enabled = tcfg.progress and not self.console.quiet
        self.tcfg = tcfg
        self.progress = Progress(
            TextColumn("[bold]train[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, disable=not self.enabled,
            transient=False,
        )
        self.bar = self.progress.add_task("train", total=tcfg.max_steps, completed=start_step, info="")
        self.table_cols: list[str] | None = None

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def step(self, step: int, loss: float, lr: float) -> None:
        info = f"loss {loss:.4f} lr {lr:.2e}" if step % self.tcfg.log_every == 0 else None
        if info is None:
            self.progress.update(self.bar, completed=step)
        else:
            self.progress.update(self.bar, completed=step, info=info)

    def evaluation(self, row: dict, parts, stopper) -> None:
        """One table per evaluation: a row per task (and split) with its metrics; mixtures add ``avg``."""
        best = "new best" if row["best"] else f"{stopper.best:.2f} @ {stopper.best_step}"
        per_task = row.get("tasks") or {parts.task.name: row}
        names = list(dict.fromkeys(m for s in parts.evals for m in s.task.metric_names))
        table = Table(title=f"validation @ step {row['step']} (train loss {row['train_loss']:.4f}, {best})",
                      show_edge=False)
        for col in ("task", *names):
            table.add_column(col, justify="right")
        for key, metrics in per_task.items():
            table.add_row(key, *(f"{metrics[m]:.2f}" if m in metrics else "" for m in names))
        if "avg" in row:
            table.add_row("avg", f"{row['avg']:.2f}", *[""] * (len(names) - 1))
        self.console.print(table)
