"""Many runs over one frozen backbone: rows of different tasks, each with its own run's prompt, in one batch.

    pool = Pool.load(["outputs/sst2-run", "multirun/glue-sweep"])     # one backbone, every run's prompts and heads
    pool.predict([{"task": "sst2", "sentence": "a charming film"},
                  {"task": "rte", "sentence1": "...", "sentence2": "..."}])

Prompt tuning's promise (Lester et al. 2021, Section 1: "mixed-task inference") is that the frozen model is
shared: only the prompt differs between tasks, so one forward pass serves a batch that mixes them. Each run
contributes one entry per task: its folded prompt (``folded.safetensors``: soft tokens, or per-layer keys and
values, with encoders and hypernetworks evaluated away) and, on a BERT-family body, its task's trained head.
Entries whose prompts have the same shapes are stacked into one :class:`~ptune.methods.base.Folded`, so a
batch's rows each take their own entry's prompt by id, and the backbone scores the batch in one pass
(``Backbone.forward_many``: its rows padded together, each row scored by its own task's head or candidates).
Entries whose prompts differ in shape (20 against 100 soft tokens; soft tokens against deep prompts) run as
separate passes: a padded soft token would shift the positions of the input behind it.

A row names its entry in its ``task`` column: the task's name, or ``RUN:TASK`` (RUN the run folder's name),
which is required when two loaded runs share a task. Runs must share the backbone (model, its settings and
``trainer.precision``); a run that trains the body (``model_tuning``) carries its own and is refused.
``ptune serve`` (ptune/serve.py), ``ptune predict run=[...]`` (:func:`command`) and ``ptune.load_many`` use it.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ptune import files, run_folder
from ptune.config import Config
from ptune.errors import CheckpointError, ConfigError, DataError
from ptune.predict import outputs
from ptune.tasks.base import Example, Task

if TYPE_CHECKING:
    from ptune.backbones.base import Backbone

TASK = "task"  # the column of a row that names its entry
# the settings of the body that runs served together must share (the rest, max_length included, is per run)
BODY = ("hf_id", "family", "random_init", "config_overrides", "tokenizer_id", "attn_implementation",
        "prompt_position", "head", "trust_remote_code")


@dataclass
class Entry:
    """One (run, task) a row can name."""

    name: str  # what a row's ``task`` says: the task, or RUN:TASK when two loaded runs share the task
    run_dir: Path
    task: Task
    cfg: Config
    step: int
    results: dict | None
    key: str = ""  # the backbone's name for it (its head)
    group: int = 0  # the prompt group (prompts of one shape): one forward pass
    row: int = 0  # its row in that group's folded prompt

    @property
    def run(self) -> str:
        return self.run_dir.name

    def describe(self) -> dict[str, Any]:
        """What ``GET /runs`` lists: run, task, method, labels, best metrics."""
        best = (self.results or {}).get("best") or {}
        metrics = best.get("tasks", {}).get(self.task.name, {}) if "tasks" in best else best
        return {"name": self.name, "run": self.run, "run_dir": str(self.run_dir), "task": self.task.name,
                "method": self.cfg.method.name, "model": self.cfg.model.name, "step": self.step,
                "labels": list(self.task.label_names), "inputs": list(self.task.input_columns),
                "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k != "epoch"}}


def run_dirs(paths: Sequence[str | Path]) -> list[Path]:
    """Run folders from ``paths``: a run folder is itself, any other folder every run under it (a sweep)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise CheckpointError(f"run folder {p} does not exist")
        found = [p] if run_folder.is_run(p) else list(run_folder.find(p)) if p.is_dir() else []
        if not found:
            raise CheckpointError(f"{p} is neither a run folder nor a folder holding runs (no config.yaml under it)")
        for d in found:
            if any(d.resolve() == o.resolve() for o in out):
                raise ConfigError(f"run {d} is given twice; name each run once")
            out.append(d)
    return out


def body(cfg: Config) -> dict[str, Any]:
    m = cfg.model
    return {**{f"model.{k}": getattr(m, k) for k in BODY}, "model.name": m.name if not m.hf_id else None,
            "trainer.precision": cfg.trainer.precision}


def check_shared(cfgs: list[Config], dirs: list[Path]) -> None:
    """Every run fits the one frozen backbone: none trains its body, all share the body's settings."""
    for cfg, d in zip(cfgs, dirs, strict=True):
        if cfg.model.trainable:
            raise ConfigError(f"run {d} trains the model's body (method={cfg.method.name}, model.trainable=true): it "
                              f"carries its own body and cannot share the frozen one; predict it alone "
                              f"(ptune predict run={d})")
    first = body(cfgs[0])
    for cfg, d in zip(cfgs[1:], dirs[1:], strict=True):
        odd = [(k, v) for k, v in body(cfg).items() if v != first[k]]
        if odd:
            k, v = odd[0]
            raise ConfigError(f"run {d} has {k}={v!r}, but {dirs[0]} has {k}={first[k]!r}: runs served together "
                              "share one frozen backbone; serve them separately")


def names(entries: list[Entry]) -> None:
    """A task's name where one loaded run has it, ``RUN:TASK`` where several do."""
    for e in entries:
        same = [o for o in entries if o.task.name == e.task.name]
        e.name = e.task.name if len(same) == 1 else f"{e.run}:{e.task.name}"
        clash = [o for o in same if o is not e and o.run == e.run]
        if clash:
            raise ConfigError(f"runs {e.run_dir} and {clash[0].run_dir} share the folder name {e.run!r} and the task "
                              f"{e.task.name!r}, so {e.name!r} cannot tell them apart; serve one of them separately")


class Pool:
    """One frozen backbone, and the prompts (and heads) of every loaded (run, task) entry. :meth:`open` reads the
    runs' configs (every check that needs no weights: rows can be checked then); :meth:`load` loads the model."""

    def __init__(self, entries: list[Entry], folders: list, batch_size: int):
        self.entries, self.folders, self.batch_size = entries, folders, batch_size
        self.by_name = {e.name: e for e in entries} | {f"{e.run}:{e.task.name}": e for e in entries}
        self.backbone: Backbone | None = None
        self.prompts: list = []
        self.cfg = entries[0].cfg
        self.device = torch.device("cpu")

    @classmethod
    def open(cls, paths: Sequence[str | Path], overrides: Sequence[str] = (), command: str = "ptune serve",
             batch_size: int | None = None) -> Pool:
        """Every run under ``paths`` (run or sweep folders), its config and entries checked; no weights read."""
        from ptune import tasks

        dirs = run_dirs(paths)
        folders = [run_folder.open(d, need_prompt=True) for d in dirs]
        cfgs = [f.configured(overrides, command) for f in folders]
        check_shared(cfgs, dirs)
        entries = [Entry(t, d, tasks.get(t), cfg, -1, f.results)
                   for d, f, cfg in zip(dirs, folders, cfgs, strict=True) for t in cfg.task_names]
        for i, e in enumerate(entries):
            e.key = f"entry{i}"  # a head's name in the backbone (run folder names may hold dots)
        names(entries)
        return cls(entries, folders, batch_size or cfgs[0].trainer.eval_batch_size)

    def load(self) -> Pool:
        """The backbone, once, then each run's folded prompts and heads."""
        from ptune import backbones
        from ptune.run import check_precision, pick_device

        first = self.cfg
        self.device = pick_device(first.trainer.device)
        check_precision(first.trainer.precision, self.device)
        if first.trainer.num_threads:
            torch.set_num_threads(first.trainer.num_threads)
        renamed = [dataclasses.replace(e.task, name=e.key) for e in self.entries]  # one head per entry, by its key
        self.backbone = backbones.load(first.model, renamed, first.trainer.precision, self.device).eval()
        folded = {}
        for f in self.folders:
            mine = [e for e in self.entries if e.run_dir == f.path]
            tensors, split, step = read_run(f, mine[0].cfg, self.backbone, mine, self.device)
            folded[f.path] = (tensors, split)
            for e in mine:
                e.step = step
        self.prompts = group(self.entries, folded, self.device)
        return self

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    # --- rows -------------------------------------------------------------------------------------
    def check(self, rows: list[dict], source: str, label: Callable[[int], str] | None = None,
              extra: bool = True) -> list[tuple[Entry, list[int], list[Example]]]:
        """Rows -> (entry, the rows' indices, their examples) per entry named; every row checked against its
        task's schema first (one line naming the first bad row). ``extra=False``: a column the task does not
        read is refused too (the HTTP API's rows; files may carry ids and labels along)."""
        from ptune.tasks.data import prediction_examples

        label = label or row_label
        if not rows:
            raise DataError(f"{source} holds no rows")
        chosen: dict[str, list[int]] = {}
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise DataError(f"{source}, {label(i)} is {type(row).__name__}, not an object of columns")
            name = row.get(TASK)
            if name not in self.by_name:
                runs = [e.name for e in self.entries if e.task.name == name]
                what = ("names no task (a 'task' column)" if name is None else
                        f"names task {name!r}, which several loaded runs have" if runs else
                        f"names task {name!r}, which is not loaded")
                raise DataError(f"{source}, {label(i)} {what}; choose one of: {', '.join(runs or self.names)}")
            e = self.by_name[name]
            if not extra:
                unread = [c for c in row if c not in (TASK, *e.task.input_columns, *e.task.OPTIONAL_INPUTS)]
                if unread:
                    raise DataError(f"{source}, {label(i)}: task {e.name!r} reads no column {unread[0]!r}; its "
                                    f"columns: {', '.join((TASK, *e.task.input_columns))}")
            chosen.setdefault(e.key, []).append(i)
        out = []
        for e in self.entries:
            if e.key in chosen:
                idx = chosen[e.key]
                bare = [{k: v for k, v in rows[i].items() if k != TASK} for i in idx]
                out.append((e, idx, prediction_examples(e.task, bare, source, functools.partial(nth, label, idx))))
        return out

    def predict(self, rows: list[dict], source: str = "rows", label: Callable[[int], str] | None = None,
                extra: bool = True) -> list[tuple[Entry, dict[str, Any], Example]]:
        """Each row's entry, its ``prediction`` and scores (as ``ptune predict`` writes them) and its example (what
        the model read: its candidates), in row order."""
        return self.run(self.check(rows, source, label, extra), len(rows))

    @torch.inference_mode()
    def run(self, checked: list[tuple[Entry, list[int], list[Example]]], n: int) -> list[tuple[Entry, dict, Example]]:
        """Checked rows through the model: per prompt group, length-sorted batches of ``batch_size`` rows that mix
        the group's entries, one forward pass each."""
        from ptune.tasks.collate import collate, featurize, to_device
        from ptune.training.loop import autocast, read_score

        backbone = self.backbone or self.load().backbone
        assert backbone is not None
        out: list = [None] * n
        family, pad = backbone.family, backbone.tokenizer.pad_token_id
        for g, prompts in enumerate(self.prompts):
            splits = []
            for e, idx, examples in checked:
                if e.group == g:
                    m = e.cfg.model
                    splits.append((e, idx, featurize(e.task, e.row, examples, backbone.tokenizer, family,
                                                     m.max_length, m.max_target_length, cloze=m.head == "mlm")))
            items = sorted(((s, j) for s in range(len(splits)) for j in range(len(splits[s][1]))),
                           key=lambda sj: -splits[sj[0]][2].features[sj[1]]["length"])
            for start in range(0, len(items), self.batch_size):
                chunk = items[start : start + self.batch_size]
                batches, where = [], []
                for s, (e, idx, split) in enumerate(splits):
                    mine = [j for t, j in chunk if t == s]
                    if mine:
                        batch = collate(split, mine, family, pad)
                        batch["task"] = e.key
                        batches.append(to_device(batch, self.device))
                        where.append((e, idx, split, mine))
                with autocast(self.cfg.trainer.precision, self.device):
                    prompt = prompts(torch.cat([b["task_ids"] for b in batches]))
                    scores = backbone.forward_many(batches, prompt)
                for (e, idx, split, mine), batch_scores in zip(where, scores, strict=True):
                    got = batch_scores.float().cpu()
                    for r, j in enumerate(mine):
                        value, raw = read_score(got, r)
                        ex = split.examples[j]
                        out[idx[j]] = (e, outputs(e.task, ex, e.task.decode(ex, value), raw), ex)
        return out


def row_label(i: int) -> str:
    return f"row {i + 1}"


def nth(label: Callable[[int], str], idx: list[int], j: int) -> str:
    """Row j of an entry's rows, named as the caller counts the rows of the whole input."""
    return label(idx[j])


def read_run(folder, cfg: Config, backbone, entries: list[Entry], device) -> tuple[dict[str, Tensor], int | None, int]:
    """A run's folded prompts (row t: task t's) and its step; its tasks' heads go into the backbone's heads
    under their entries' keys. Without ``folded.safetensors`` at the prompt's step (older runs), the method
    is rebuilt from the checkpoint and folded here."""
    from ptune.training import checkpoint as ckpt
    from ptune.training.parts import run_metadata

    tensors, meta = files.read_tensors(folder.prompt)
    if meta.get("format") != ckpt.FORMAT:
        raise CheckpointError(f"{folder.prompt} is not a ptune prompt checkpoint (format={meta.get('format')!r})")
    ckpt.check_metadata(meta, run_metadata(cfg), folder.prompt)
    heads = getattr(backbone, "heads", {})
    for e in entries:
        if e.key in heads:
            prefix = f"head.{e.task.name}."
            state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            try:
                heads[e.key].load_state_dict(state)
            except RuntimeError as err:
                raise CheckpointError(f"{folder.prompt}: the head of task {e.task.name!r} does not fit "
                                      f"({str(err).splitlines()[0]})") from None
    step = int(meta.get("step", -1))
    if folder.folded.is_file():
        folded, fmeta = files.read_tensors(folder.folded)
        if fmeta.get("step") == meta.get("step"):
            return folded, None if fmeta.get("split") is None else int(fmeta["split"]), step
    return fold(cfg, backbone, tensors, folder.prompt, device), getattr(cfg.method, "split", None), step


def fold(cfg: Config, backbone, tensors: dict[str, Tensor], path: Path, device) -> dict[str, Tensor]:
    """The run's method rebuilt, its checkpoint loaded, then folded (``PromptMethod.export``)."""
    from ptune import methods, tasks
    from ptune.training import checkpoint as ckpt

    run_tasks = [tasks.get(n) for n in cfg.task_names]
    torch.manual_seed(cfg.seed)
    method = methods.build_for(cfg.method, backbone.dims(), run_tasks).to(device).eval()
    ckpt.load_trainable({"method": method}, {k: v for k, v in tensors.items() if k.startswith("method.")}, path)
    return method.export(torch.arange(len(run_tasks), device=device))


def group(entries: list[Entry], folded: dict[Path, tuple[dict[str, Tensor], int | None]], device) -> list:
    """Entries whose prompts have the same shapes share one stacked ``Folded`` (one forward pass per group)."""
    from ptune.methods.base import Folded

    shapes: dict[tuple[int | None, tuple], list[Entry]] = {}
    for e in entries:
        t, split = folded[e.run_dir]
        shapes.setdefault((split, tuple(sorted((k, tuple(v.shape[1:])) for k, v in t.items()))), []).append(e)
    out = []
    for g, ((split, _), members) in enumerate(shapes.items()):
        rows = {}
        for e in members:
            t = folded[e.run_dir][0]
            rows[e.key] = {k: v[e.cfg.task_names.index(e.task.name)] for k, v in t.items()}
        for r, e in enumerate(members):
            e.group, e.row = g, r
        stacked = {k: torch.stack([rows[e.key][k] for e in members]).to(device) for k in rows[members[0].key]}
        out.append(Folded(stacked, split))
    return out


# --- ptune predict run=[A,B,...] -------------------------------------------------------------------
def command(paths: Sequence[str], source: str | None, out: str | None, overrides: list[str], console) -> dict:
    """``ptune predict run=[A,B] input=rows.jsonl``: each row names its entry in a ``task`` column. Every check
    (runs, their backbone, the file, its rows) comes before the model loads; the predictions go, in input
    order, to ``out`` (default: ``<input>-predictions.jsonl`` beside the input)."""
    from ptune.predict import output_path, read_input, write_rows

    if source is None:
        raise ConfigError("ptune predict with several runs needs input=<file> whose rows name their task in a "
                          f"{TASK!r} column (a split of one task: predict each run alone)")
    pool = Pool.open(paths, overrides, "ptune predict")
    rows, numbers = read_input(Path(source))
    path = Path(out) if out else Path(source).with_name(f"{Path(source).stem}-predictions.jsonl")
    for f in pool.folders:
        output_path(f.path, "", "", str(path), Path(source))
    checked = pool.check(rows, f"input file {source}", numbers.__getitem__)
    results = pool.load().run(checked, len(rows))
    write_rows([{**row, **o} for row, (_, o, _) in zip(rows, results, strict=True)], path)
    console.print(f"{len(rows)} predictions for {len(pool.entries)} task(s) of {len(pool.folders)} run(s) -> {path}")
    return {"runs": [str(f.path) for f in pool.folders], "tasks": pool.names, "rows": len(rows), "out": str(path)}
