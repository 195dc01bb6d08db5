"""``ptune plot``: learning curves from ``metrics.jsonl``, one PNG.

One column of panels per task: the validation main metric (top) and the training loss (bottom) against
steps, one line per method (the mean over seeds) with a band of ± one standard deviation across seeds.
Unfinished runs are drawn as far as they got; failed runs that evaluated at least once are drawn too
(their curve shows where they went wrong).

    ptune plot multirun/grid                  # writes multirun/grid/curves.png

``--against KEY`` draws a sensitivity plot instead: each run's best validation main metric against the value
of a config key (``lr``: the run's learning rate, ``optimizer.lr`` or else the method's), one line per method
and variant (the keys its class lists in ``variants``), the mean over seeds with a ± std error bar; a log
x axis for learning rates.

    ptune plot multirun/lr-* --against lr -o docs/lr_sensitivity.png
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
    from ptune.analysis.table import setting_labels

    out: Curves = defaultdict(lambda: defaultdict(list))
    labels = setting_labels(runs)  # runs differing in any setting but the seed are separate lines
    for run in runs:
        name = key(run)
        points = {int(r["step"]): float(r[name]) for r in run.history if name and name in r and "step" in r}
        label = labels[id(run)]
        if points:
            out[run.task][label if len({r.model for r in runs}) == 1 else f"{label} ({run.model})"].append(points)
    return out


def band(seeds: list[dict[int, float]]) -> tuple[list[int], list[float], list[float]]:
    """Steps, mean over the seeds that reached each step, and their standard deviation (0 for one)."""
    steps = sorted({s for points in seeds for s in points})
    values = [[p[s] for p in seeds if s in p] for s in steps]
    return steps, [statistics.fmean(v) for v in values], [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]


def draw(runs: list[Run], out: Path, title: str) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise ConfigError("ptune plot needs matplotlib: pip install -e '.[plot]' (in the ptune checkout)") from None
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
    fig.suptitle(f"{title}: mean over seeds, band: ± 1 std", fontsize=10, wrap=True)
    fig.tight_layout()
    return save(fig, plt, out)


def setting(run: Run, key: str):
    """A run's value of ``key`` (its settings, read once with the run; ``lr``: the learning rate it trained with,
    ``optimizer.lr`` and ``method.lr`` both mean that one)."""
    return run.settings.get("lr" if key in ("optimizer.lr", "method.lr") else key)


def variant_label(run: Run) -> str:
    """``structured hypernetwork=mlp``: the method and its values of the keys its class declares variants over."""
    from ptune import methods

    cls = methods.METHODS.get(run.method)
    keys = sorted({o.split("=", 1)[0] for extra in getattr(cls, "variants", ()) for o in extra})
    return " ".join([run.method, *(f"{k.removeprefix('method.')}={run.settings.get(k)}" for k in keys)])


def draw_against(runs: list[Run], key: str, out: Path, title: str) -> Path:
    """Best main metric against ``key``'s value: one panel per task, one line per method variant."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("ptune plot needs matplotlib: pip install -e '.[plot]' (in the ptune checkout)") from None
    points: dict[str, dict[str, dict[float, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for run in runs:
        x = setting(run, key) if run.score is not None else None
        if isinstance(x, (int, float)) and not isinstance(x, bool):
            points[run.task][variant_label(run)][float(x)].append(run.score)
    if not points:
        raise ConfigError(f"no finished run has a number for {key!r} in its config.yaml; try --against lr or another key")
    tasks_ = sorted(points)
    # the legend sits right of each panel, never over a point (a lone point at one end hid behind it)
    fig, axes = plt.subplots(1, len(tasks_), figsize=(9.6 * len(tasks_), 4.8), squeeze=False)
    labels = sorted({label for task in points.values() for label in task})
    colors = {label: plt.get_cmap("tab20")(i % 20) for i, label in enumerate(labels)}
    for ax, task in zip(axes[0], tasks_, strict=True):
        metric = main_metric(next(r for r in runs if r.task == task)) or "score"
        for label, by_x in sorted(points[task].items()):
            xs = sorted(by_x)
            mean = [statistics.fmean(by_x[x]) for x in xs]
            std = [statistics.stdev(by_x[x]) if len(by_x[x]) > 1 else 0.0 for x in xs]
            n = max(len(v) for v in by_x.values())
            ax.errorbar(xs, mean, yerr=std, marker="o", markersize=4, capsize=3, color=colors[label],
                        label=f"{label} (n<={n})")
        if key.endswith("lr") and all(x > 0 for v in points[task].values() for x in v):
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel(f"best validation {metric}")
        ax.set_title(task)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.suptitle(title, fontsize=10, wrap=True)
    fig.tight_layout()
    return save(fig, plt, out)


def save(fig, plt, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)  # the PNG appears whole or not at all
    return out


def main(folders: list[Path], out: Path | None, console: Console, against: str | None = None) -> int:
    runs = find(folders)
    stem = "curves.png" if against is None else f"against-{against.replace('.', '_')}.png"
    out = out if out is not None else (Path(folders[0]) / stem if len(folders) == 1 else Path(stem))
    out = out if out.suffix == ".png" else out.with_suffix(".png")
    models = sorted({r.model for r in runs})
    where = (", ".join(Path(f).name or str(f) for f in folders) if len(folders) <= 2 else
             f"{len(folders)} folders under {Path(folders[0]).resolve().parent.name}/")
    if against is not None:
        title = f"best validation score against {against}: {', '.join(models)}; {where}"
        drawn = draw_against(runs, against, out, title)
    else:
        drawn = draw([r for r in runs if r.history], out, f"{', '.join(models)}; {where}")
    console.print(f"wrote {drawn}", highlight=False)
    return 0


def draw_heatmap(labels: list[str], matrices: dict[str, list[list[float]]], titles: dict[str, str], marked: int,
                 out: Path, title: str) -> Path:
    """``ptune similarity``'s task-by-task heatmap: a panel per metric, the value in each cell, a colour bar; the
    first ``marked`` rows and columns (the target) in bold."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("ptune similarity needs matplotlib: pip install -e '.[plot]' (in the ptune checkout)") from None
    n = len(labels)
    side = max(4.5, 0.5 * n + 2.5)
    fig, axes = plt.subplots(1, len(matrices), figsize=(1.25 * side * len(matrices), side + 0.6), squeeze=False)
    font = max(5.0, min(9.0, 100 / n))
    for ax, (name, m) in zip(axes[0], matrices.items(), strict=True):
        off = [m[i][j] for i in range(n) for j in range(n) if i != j]  # the colours spread over the pairs, not
        low, high = min(off), max(off)  # over each prompt's similarity with itself
        digits = 2 if max(map(abs, off)) >= 0.1 else 3
        image = ax.imshow(m, cmap="viridis", vmin=low, vmax=high)
        for i in range(n):
            for j in range(n):
                dark = (min(m[i][j], high) - low) / ((high - low) or 1.0) < 0.55
                ax.text(j, i, f"{m[i][j]:.{digits}f}", ha="center", va="center", fontsize=font,
                        color="white" if dark else "black")
        ax.set_xticks(range(n), labels, rotation=45, ha="right", fontsize=font + 1)
        ax.set_yticks(range(n), labels, fontsize=font + 1)
        for tick in ax.get_xticklabels()[:marked] + ax.get_yticklabels()[:marked]:
            tick.set_fontweight("bold")
        ax.set_xlabel("task (bold: the target)")
        ax.set_ylabel("task")
        ax.set_title(titles[name].split(",")[0], fontsize=10)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04).set_label(titles[name].split(", ", 1)[-1], fontsize=8)
    fig.suptitle(title, fontsize=10, wrap=True)
    fig.tight_layout()
    return save(fig, plt, out)
