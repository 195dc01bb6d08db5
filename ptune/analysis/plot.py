"""``ptune plot``: learning curves from ``metrics.jsonl``, one PNG.

One column of panels per task: the validation main metric (top) and the training loss (bottom) against
steps, one line per method (the mean over seeds) with a band of ± one standard deviation across seeds.
Unfinished runs are drawn as far as they got; failed runs that evaluated at least once are drawn too
(their curve shows where they went wrong).

    ptune plot multirun/grid                  # writes multirun/grid/curves.png
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

from rich.console import Console

from ptune.analysis.runs import Run, find
from ptune.errors import ConfigError

Curves = dict[str, dict[str, list[dict[int, float]]]]  # task -> line label -> one {step: value} per seed


def main_metric(run: Run) -> str | None:
    if run.main_metric:
        return run.main_metric
    try:
        from ptune import tasks

        return tasks.get(run.task).main_metric
    except Exception:  # an unknown task name in a hand-made folder: nothing to draw for it
        return None


def curves(runs: list[Run], key) -> Curves:
    out: Curves = defaultdict(lambda: defaultdict(list))
    for run in runs:
        name = key(run)
        points = {int(r["step"]): float(r[name]) for r in run.history if name and name in r and "step" in r}
        if points:
            out[run.task][run.label if len({r.model for r in runs}) == 1 else f"{run.label} ({run.model})"].append(points)
    return out


def band(seeds: list[dict[int, float]]) -> tuple[list[int], list[float], list[float]]:
    """Steps, mean over the seeds that reached each step, and their standard deviation (0 for one)."""
    steps = sorted({s for points in seeds for s in points})
    values = [[p[s] for p in seeds if s in p] for s in steps]
    return steps, [statistics.fmean(v) for v in values], [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]


def draw(runs: list[Run], out: Path) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise ConfigError("ptune plot needs matplotlib: pip install 'ptune[plot]'") from None
    metric = {r.task: main_metric(r) for r in runs}
    val, loss = curves(runs, lambda r: metric[r.task]), curves(runs, lambda r: "train_loss")
    panels = sorted(set(val) | set(loss))
    if not panels:
        raise ConfigError("no evaluations to plot: none of these run folders has a metrics.jsonl with a row yet")
    fig, axes = plt.subplots(2, len(panels), figsize=(4.8 * len(panels), 7.0), squeeze=False, sharex="col")
    labels = sorted({label for group in (val, loss) for task in group.values() for label in task})
    colors = {label: plt.get_cmap("tab10")(i % 10) for i, label in enumerate(labels)}
    for col, task in enumerate(panels):
        for row, (group, ylabel) in enumerate(((val, f"validation {metric[task]}"),
                                               (loss, "training loss (mean since the last evaluation)"))):
            ax = axes[row][col]
            for label, seeds in sorted(group.get(task, {}).items()):
                steps, mean, std = band(seeds)
                ax.plot(steps, mean, marker="o", markersize=3, color=colors[label], label=f"{label} (n={len(seeds)})")
                ax.fill_between(steps, [m - s for m, s in zip(mean, std, strict=True)], [m + s for m, s in zip(mean, std, strict=True)],
                                color=colors[label], alpha=0.2, linewidth=0)
            ax.set_ylabel(ylabel)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(task)
                ax.legend(fontsize=8)
            else:
                ax.set_xlabel("step")
    fig.suptitle("mean over seeds, band: ± 1 std")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)  # the PNG appears whole or not at all
    return out


def main(folders: list[Path], out: Path | None, console: Console) -> int:
    runs = find(folders)
    out = out if out is not None else (Path(folders[0]) / "curves.png" if len(folders) == 1 else Path("curves.png"))
    out = out if out.suffix == ".png" else out.with_suffix(".png")
    drawn = draw([r for r in runs if r.history], out)
    console.print(f"wrote {drawn}", highlight=False)
    return 0
