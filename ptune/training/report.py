"""What a person watching a run sees: a rich progress bar (a terminal) or a plain line every
``trainer.log_seconds`` (a log file: nohup, SLURM, ``> log``), and a table per evaluation."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from ptune.training.parts import Parts


class Reporter:
    def __init__(self, console: Console | None, tcfg, start_step: int = 0):
        self.console = console or Console(stderr=True, quiet=True)
        self.enabled = tcfg.progress and not self.console.quiet
        # a bar redraws in place, which a log file keeps only as its last frame: print lines there instead
        self.plain = self.enabled and not self.console.is_terminal
        self.tcfg = tcfg
        self.started = time.monotonic()
        self.start_step = start_step
        self.last_line = self.started
        self.last_info = ""
        self.printed: int | None = None  # the step of the last plain line
        self.progress = Progress(
            TextColumn("[bold]train[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=self.console,
            disable=not self.enabled or self.plain, transient=False,
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
        if self.plain:
            self.last_info = f"loss {loss:.4f} lr {lr:.2e}"
            now = time.monotonic()
            if now - self.last_line >= self.tcfg.log_seconds or step == self.tcfg.max_steps:
                self.line(step, now)
            return
        if info is None:
            self.progress.update(self.bar, completed=step)
        else:
            self.progress.update(self.bar, completed=step, info=info)

    def line(self, step: int, now: float | None = None) -> None:
        """``train step 120/300 (40%) loss 0.6123 lr 2.10e-02 elapsed 2m03s eta 3m05s``."""
        now = time.monotonic() if now is None else now
        self.last_line, self.printed = now, step
        elapsed = now - self.started
        done = step - self.start_step
        eta = elapsed / done * (self.tcfg.max_steps - step) if done > 0 else None
        total = self.tcfg.max_steps
        self.console.print(f"train step {step}/{total} ({100 * step // max(1, total)}%) {self.last_info} "
                           f"elapsed {clock(elapsed)}" + (f" eta {clock(eta)}" if eta is not None else ""),
                           highlight=False, soft_wrap=True)

    def evaluation(self, row: dict, parts: Parts, stopper) -> None:
        """One table per evaluation: a row per task (and split) with its metrics; mixtures add ``avg``."""
        if self.plain and self.printed != row["step"]:
            self.line(row["step"])
        best = "new best" if row["best"] else f"{stopper.best:.2f} @ {stopper.best_step}"
        per_task = row.get("tasks") or {parts.task.name: row}
        names = list(dict.fromkeys(m for s in parts.evals for m in s.task.metric_names))
        # the title on a line of its own: a table's title wraps to the table's (narrow) width
        self.console.print(f"validation @ step {row['step']} (train loss {row['train_loss']:.4f}, {best})",
                           highlight=False, soft_wrap=True)
        table = Table(show_edge=False)
        for col in ("task", *names):
            table.add_column(col, justify="right")
        for key, metrics in per_task.items():
            table.add_row(key, *(f"{metrics[m]:.2f}" if m in metrics else "" for m in names))
        if "avg" in row:
            table.add_row("avg", f"{row['avg']:.2f}", *[""] * (len(names) - 1))
        self.console.print(table)


def clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
