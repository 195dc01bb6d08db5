"""``ptune similarity``: SPoT's retrieval of source prompts for a target task (Vu et al. 2022, "SPoT: Better
Frozen Model Adaptation through Soft Prompt Transfer", ACL 2022: its task similarity and retrieval).

A task's prompt is its embedding: each run's folded prompt (``folded.safetensors``, row t for task t) at a chosen
point, the best checkpoint or ``--step N`` (``snapshots/step-N/``, the paper's early prompts). For prompts of L
tokens e1 and e2, the paper's two metrics are

* cosine of the average tokens:  cos(mean_i e1_i, mean_j e2_j)
* per-token average cosine:      1/L^2 sum_i sum_j cos(e1_i, e2_j)

A deep prompt (per-layer keys and values) is compared place by place: each layer's keys and its values (a token
is one row of all heads, heads x head_dim wide) with the same metric, a layer's score the mean of the two, and the
prompt's score the mean over its layers (the input embeddings count as one place when a method has both).

The retrieval rules: best of top-k (transfer from each of the k nearest sources, keep the best on the
target's validation set: the ``method.init_from=`` overrides), the top-k weighted average (weights proportional
to similarity; written as a file ``method.init_from`` reads: for each of the target's parameters the weighted
sum of what ``method.init_from=<source>`` would give it) and the top-k multi-task mixture (a source prompt trained
on the k source tasks and the target task: a ``task=[...]`` override). Source folders are only ever read.
"""

from __future__ import annotations

import glob
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from torch import Tensor

from ptune import files, run_folder
from ptune.analysis import retrieval
from ptune.errors import CheckpointError, ConfigError, PtuneError

METRICS = {"avg_tokens": "cosine of the average tokens, cos(mean_i e1_i, mean_j e2_j)",
           "per_token": "per-token average cosine, mean over all L x L pairs of cos(e1_i, e2_j)"}


def avg_tokens(a: Tensor, b: Tensor) -> float:
    return float(F.cosine_similarity(a.mean(0), b.mean(0), dim=0))


def per_token(a: Tensor, b: Tensor) -> float:
    return float((F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T).mean())


MEASURES = {"avg_tokens": avg_tokens, "per_token": per_token}


@dataclass
class Entry:
    """One task's prompt in one run: ``label`` is the run (``run:task`` in a run of several tasks)."""

    label: str
    folder: Path
    task: str  # its task; a prompt shared by a mixture's tasks: the mixture's label
    tasks: list[str]  # the tasks behind it
    index: int | None  # its row in the run's per-task tensors; None: one prompt shared by the run's tasks
    meta: dict[str, str]
    places: dict[str, list[Tensor]] = field(repr=False)  # place -> its (L, width) token matrices
    shape: dict[str, tuple[int, ...]] = field(repr=False)  # folded tensor -> shape without the task dimension

    @property
    def deep(self) -> bool:
        return any(p != "input" for p in self.places)


def scores(a: Entry, b: Entry) -> dict[str, tuple[float, dict[str, float]]]:
    """metric -> (the score, each place's score)."""
    out = {}
    for name, measure in MEASURES.items():
        each = {p: sum(measure(x, y) for x, y in zip(a.places[p], b.places[p], strict=True)) / len(a.places[p])
                for p in a.places}
        out[name] = (sum(each.values()) / len(each), each)
    return out


# --- reading runs ---------------------------------------------------------------------------------
def run_folders(paths: list[str]) -> list[Path]:
    """Run folders named or found under ``paths``; a quoted glob is expanded here."""
    found: dict[Path, Path] = {}
    for given in paths:
        matches = sorted(glob.glob(given)) if glob.has_magic(given) and not Path(given).exists() else [given]
        if not matches or not all(Path(m).is_dir() for m in matches):
            raise ConfigError(f"no such folder: {given}")
        for top in map(Path, matches):
            for folder in [top] if run_folder.is_run(top) else run_folder.find(top):
                found.setdefault(folder.resolve(), folder)
    return list(found.values())


def point(folder: Path, step: int | None) -> Path:
    """The run's folded prompt (each task's plain prompt: ``Parts.save_folded``) at its best checkpoint or ``step``."""
    return (folder if step is None else run_folder.snapshot(folder, step)) / run_folder.FOLDED


def missing(folder: Path, step: int | None) -> str:
    if step is None:
        return f"{folder} has no {run_folder.FOLDED} (not evaluated yet, or a method without a prompt)"
    have = run_folder.snapshot_steps(folder)
    return (f"{folder} has no snapshot at step {step} (it has: {', '.join(map(str, have)) or 'none'}; "
            "trainer.snapshot_steps keeps them)")


def tokens(name: str, t: Tensor) -> tuple[str, Tensor]:
    """A folded tensor's place and its tokens as rows: embeds (L, hidden); keys/values (heads, L, head_dim)."""
    if name == "embeds":
        return "input", t
    if t.dim() == 3 and name.endswith((".key", ".value")):
        return name.rsplit(".", 1)[0], t.permute(1, 0, 2).reshape(t.shape[1], -1)
    raise CheckpointError(f"unexpected tensor {name} {tuple(t.shape)} in a folded prompt")


def order(name: str) -> tuple:
    """The input first, then the encoder's layers, then the decoder's, each in layer order (not 1, 10, 11, 2)."""
    stack, _, rest = name.partition(".")
    layer = rest.split(".")[0]
    return ({"embeds": 0, "encoder": 1, "decoder": 2}.get(stack, 3), int(layer) if layer.isdigit() else 0, name)


def entries(folder: Path, step: int | None, label: str) -> list[Entry]:
    tensors, meta = files.read_tensors(point(folder, step))
    names = sorted(tensors, key=order)
    n = tensors[names[0]].shape[0]
    tasks = meta["tasks"].split(",") if meta.get("tasks") else [meta.get("task", "?")]
    if len(tasks) != n:
        raise CheckpointError(f"{point(folder, step)} holds {n} task rows for the tasks {', '.join(tasks)}")
    shared = n > 1 and all(torch.equal(t[0], t[i]) for t in tensors.values() for i in range(1, n))
    rows = [None] if shared or n == 1 else range(n)
    out = []
    for i in rows:
        places: dict[str, list[Tensor]] = {}
        for name in names:
            place, mat = tokens(name, tensors[name][0 if i is None else i].double())
            places.setdefault(place, []).append(mat)
        task = tasks[i] if i is not None else meta.get("task") or "+".join(tasks)
        out.append(Entry(f"{label}:{task}" if i is not None and n > 1 else label, folder, task,
                         [task] if i is not None else tasks, i, meta, places,
                         {k: tuple(v.shape[1:]) for k, v in tensors.items()}))
    return out


def labels(folders: list[Path]) -> dict[Path, str]:
    """Folder names, with their parent's name where two runs share one."""
    names = [f.resolve().name for f in folders]
    return {f: (f"{f.resolve().parent.name}/{f.resolve().name}" if names.count(f.resolve().name) > 1
                else f.resolve().name) for f in folders}


def describe(shape: dict[str, tuple[int, ...]]) -> str:
    """``embeds (20, 768)`` or ``encoder keys/values (12, 10, 64) x 6 layers``: one prompt shape in words."""
    parts = [f"embeds {shape['embeds']}"] if "embeds" in shape else []
    for stack in ("encoder", "decoder"):
        kv = sorted({v for k, v in shape.items() if k.startswith(f"{stack}.")})
        layers = sum(1 for k in shape if k.startswith(f"{stack}.") and k.endswith(".key"))
        if layers:
            parts.append(f"{stack} keys/values {' / '.join(map(str, kv))} x {layers} layers")
    return ", ".join(parts)


def check_same(target: Entry, source: Entry) -> None:
    for key in ("model", "family"):
        if source.meta.get(key) != target.meta.get(key):
            raise ConfigError(f"source {source.label} is {key}={source.meta.get(key)!r}, target {target.label} is "
                              f"{key}={target.meta.get(key)!r}; similarity compares prompts on one backbone")
    if source.shape != target.shape:
        raise ConfigError(f"source {source.label}'s prompt is {describe(source.shape)}, target {target.label}'s is "
                          f"{describe(target.shape)}; similarity compares prompts of one shape")


def load(target: Path, sources: list[str], step: int | None, task: str | None) -> tuple[list[Entry], list[Entry], list[str]]:
    """The target's entries (``task`` picks one), every source run's entries, and the source runs skipped (why)."""
    if not run_folder.is_run(target):
        raise ConfigError(f"target {target} is not a run folder (a run folder holds {run_folder.CONFIG})")
    folders = [f for f in run_folders(sources) if f.resolve() != target.resolve()]
    if not folders:
        raise ConfigError(f"no source runs under {', '.join(sources)} (a run folder holds {run_folder.CONFIG})")
    names = labels([target, *folders])
    if not point(target, step).is_file():
        raise ConfigError(f"target {missing(target, step)}")
    targets = entries(target, step, names[target])
    if task is not None:
        chosen = [e for e in targets if task in e.tasks]
        if not chosen:
            raise ConfigError(f"--task {task!r} is not a task of the target {target}; choose one of: "
                              f"{', '.join(t for e in targets for t in e.tasks)}")
        targets = chosen[:1]
    library, skipped = [], []
    for folder in folders:
        if point(folder, step).is_file():
            library += entries(folder, step, names[folder])
        else:
            skipped.append(missing(folder, step))
    if not library:
        raise ConfigError(f"no source run has a prompt to compare: {skipped[0]}")
    for source in library:
        check_same(targets[0], source)
    return targets, library, skipped


# --- the command ----------------------------------------------------------------------------------
def ranking(target: Entry, library: list[Entry], metric: str) -> list[dict]:
    """Every source's scores for ``target``, best first by ``metric``, with its rank under each metric."""
    rows: list[dict[str, Any]] = []
    for source in library:
        got = scores(target, source)
        rows.append({"source": source.label, "folder": str(source.folder), "task": source.task,
                     "method": source.meta.get("method"), **{m: got[m][0] for m in METRICS},
                     **({"places": {m: got[m][1] for m in METRICS}} if target.deep else {}), "entry": source})
    for m in METRICS:
        for r, row in enumerate(sorted(rows, key=lambda row: -row[m]), 1):
            row[f"rank_{m}"] = r
    return sorted(rows, key=lambda row: -row[metric])


def rules(target: Entry, ranked: list[dict], metric: str, k: int, init_path: Path) -> dict:
    top = [row["entry"] for row in ranked[:k]]
    sims = [row[metric] for row in ranked[:k]]
    out: dict = {"k": len(top), "metric": metric, "best_of_top_k": retrieval.best_of_top_k(top),
                 "mixture": retrieval.mixture(top, target)}
    if min(sims) <= 0:
        out["weighted_average"] = {"error": f"a top-{len(top)} similarity is {min(sims):.3f}; weights proportional "
                                            "to similarity need positive scores"}
        return out
    weights = [s / sum(sims) for s in sims]
    try:
        path = retrieval.weighted_average(top, weights, target, init_path)
        out["weighted_average"] = {"file": str(path), "override": f"method.init_from={retrieval.hydra_value(str(path))}",
                                   "weights": {e.label: w for e, w in zip(top, weights, strict=True)}}
    except PtuneError as err:
        out["weighted_average"] = {"error": str(err)}
    return out


def report(console: Console, target: Entry, ranked: list[dict], chosen: dict, where: str) -> None:
    table = Table(title=escape(f"sources for {target.label} ({where}), ranked by {chosen['metric']}"),
                  title_justify="left")
    for name in ("#", "source", "task", "method"):
        table.add_column(name, justify="right" if name == "#" else "left")
    for m, name in (("avg_tokens", "cos of avg tokens"), ("per_token", "per-token avg cos")):
        table.add_column(name + (" ▼" if m == chosen["metric"] else ""), justify="right")
    for r, row in enumerate(ranked, 1):
        table.add_row(str(r), escape(row["source"]), escape(row["task"]), escape(row["method"] or "?"),
                      f"{row['avg_tokens']:.3f}", f"{row['per_token']:.3f}", style="bold" if r <= chosen["k"] else None)
    stacks = {st: sum(1 for p in target.places if p.startswith(f"{st}.")) for st in ("encoder", "decoder")}
    if any(stacks.values()):
        layers = " and ".join(f"{n} {st}" for st, n in stacks.items() if n)
        table.caption = (f"deep prompt: both metrics are taken layer by layer (the mean of a layer's keys and its "
                         f"values) and averaged over the {layers} layers" + (" and the input" if "input" in
                                                                             target.places else ""))
    console.print(table)
    k, best, mix, avg = chosen["k"], chosen["best_of_top_k"], chosen["mixture"], chosen["weighted_average"]
    say = lambda head, text: console.print(f"[bold]{head}[/]" + escape(text), highlight=False, soft_wrap=True)  # noqa: E731
    say(f"best of top-{k}", ": one target run from each source, keep the best on the target's validation set:")
    for words in [["-m", best["sweep"]]] if best["sweep"] else best["overrides"]:
        say("", "  ptune train ... " + " ".join(shlex.quote(w) for w in words))
    if "error" in avg:
        say(f"top-{k} weighted average", f": not written: {avg['error']}")
    else:
        weights = ", ".join(f"{s} {w:.3f}" for s, w in avg["weights"].items())
        say(f"top-{k} weighted average", f" (weights {weights}): wrote {avg['file']}; start from it with "
                                         f"{shlex.quote(avg['override'])}")
    say(f"top-{k} multi-task mixture", f" (with the target): train a source on {shlex.quote(mix)}, then start the "
                                       "target from it with method.init_from=<that run>")


def heatmap_labels(every: list[Entry]) -> list[str]:
    """Task names; where runs share a task, with what tells their labels apart: ``mnli (s2)``."""
    out = []
    for e in every:
        same = [o.label.replace(":", "-").split("-") for o in every if o.task == e.task]
        if len(same) == 1:
            out.append(e.task)
            continue
        own = [w for w in e.label.replace(":", "-").split("-") if not all(w in words for words in same)]
        out.append(f"{e.task} ({'-'.join(own) or e.label})")
    return out


def main(target: Path, sources: list[str], step: int | None, task: str | None, metric: str, k: int,
         out: Path | None, console: Console) -> int:
    targets, library, skipped = load(target, sources, step, task)
    for why in skipped:
        console.print(f"[yellow]skipped[/] {escape(why)}", highlight=False)
    stem = out if out is not None else Path(f"similarity-{targets[0].label.split(':')[0]}")
    stem = stem.with_suffix("") if stem.suffix in (".json", ".png") else stem
    for folder in {e.folder.resolve() for e in [*targets, *library]}:
        if stem.resolve().is_relative_to(folder):
            raise ConfigError(f"--out {stem} is inside the run folder {folder}; ptune similarity never writes run folders")
    where = "best checkpoint" if step is None else f"step {step}"
    first = {id(e): scores(targets[0], e)[metric][0] for e in library}
    every = [*targets, *sorted(library, key=lambda e: -first[id(e)])]  # the heatmap reads nearest first
    matrix = {m: [[0.0] * len(every) for _ in every] for m in METRICS}
    for i, a in enumerate(every):
        for j in range(i, len(every)):
            got = scores(a, every[j])
            for m in METRICS:
                matrix[m][i][j] = matrix[m][j][i] = got[m][0]
    record: dict = {"point": where, "step": step, "metric": metric, "metrics": METRICS, "deep": targets[0].deep,
                    "places": list(targets[0].places), "skipped": skipped, "targets": [],
                    "entries": [{"label": e.label, "folder": str(e.folder), "task": e.task, "tasks": e.tasks,
                                 "method": e.meta.get("method"), "model": e.meta.get("model")} for e in every],
                    "matrix": matrix}
    for t in targets:
        ranked = ranking(t, library, metric)
        init = stem.with_name(stem.name + (f".{t.task}" if len(targets) > 1 else "") + ".init.safetensors")
        chosen = rules(t, ranked, metric, max(1, min(k, len(ranked))), init)
        report(console, t, ranked, chosen, where)
        record["targets"].append({"label": t.label, "folder": str(t.folder), "task": t.task, "rules": chosen,
                                  "ranking": [{k_: v for k_, v in r.items() if k_ != "entry"} for r in ranked]})
    files.atomic_write_json(stem.with_name(stem.name + ".json"), record)
    from ptune.analysis.plot import draw_heatmap

    names = heatmap_labels(every)
    title = f"prompt similarity, {where}" + (": deep prompts, the mean over layers" if targets[0].deep else "")
    png = draw_heatmap(names, matrix, METRICS, len(targets), stem.with_name(stem.name + ".png"), title)
    console.print(f"wrote {stem.with_name(stem.name + '.json')} and {png}", highlight=False)
    return 0
