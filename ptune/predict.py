"""``ptune predict``: a saved run's predictions for rows of a file or of a task's (unlabelled) split.

    ptune predict run=outputs/<run> input=reviews.jsonl            -> outputs/<run>/predictions/sst2-reviews.jsonl
    ptune predict run=outputs/<run> data.eval_split=test out=sst2-test.csv

Every input row comes back, in input order, with ``prediction`` (the label name; the value for STS-B;
the entity for ReCoRD) and its scores: ``score_<label>`` per class (probabilities: a softmax over the
encoder's logits, or over T5's verbalizer log-likelihoods), a ``scores`` list where the candidates
vary per row (ReCoRD). Rows run through the model length-sorted in batches (``loop.predict``). All
checks (run folder, task, input file, columns) come before the model loads. ``ptune.api`` is the same
code for notebooks.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ptune import files, run_folder
from ptune.config import Config
from ptune.errors import ConfigError, DataError
from ptune.tasks.base import Example, Task

if TYPE_CHECKING:
    from ptune.training.parts import Parts

FORMATS = ("jsonl", "csv", "parquet")


# --- the run --------------------------------------------------------------------------------------
def run_config(run_dir: Path, overrides: Sequence[str] = (), command: str = "ptune predict") -> Config:
    """The saved config of a run folder that holds a prompt, with ``key=value`` overrides (``data.root=...``)."""
    return run_folder.open(run_dir, need_prompt=True).configured(overrides, command)


def task_id(cfg: Config, name: str | None, run_dir: Path) -> int:
    """Which of the run's tasks to predict: ``name``, or the only one."""
    names = cfg.task_names
    if name is None and len(names) == 1:
        return 0
    if name not in names:
        what = "needs task=<one of its tasks>" if name is None else f"has no task {name!r}"
        raise ConfigError(f"run {run_dir} {what}; choose one of: {', '.join(names)}")
    return names.index(name)


@dataclass
class Loaded:
    """A run's parts with its saved prompt loaded, ready to predict."""

    run_dir: Path
    parts: Parts
    step: int

    def predict(self, tid: int, rows: list[dict], source: str, progress=None,
                names: Callable[[int], str] | None = None) -> list[dict]:
        """``rows`` (dicts holding the task's input columns; ``names``: row i as the user counts it) -> the same
        rows, with predictions and scores. Rows that fail the task's schema are refused before any is predicted."""
        from ptune.tasks.collate import featurize
        from ptune.tasks.data import prediction_examples
        from ptune.training.loop import predict

        task = self.parts.tasks[tid]
        examples = prediction_examples(task, rows, source, *([names] if names else []))
        m = self.parts.cfg.model
        split = featurize(task, tid, examples, self.parts.backbone.tokenizer, m.family, m.max_length,
                          m.max_target_length, cloze=m.head == "mlm")
        preds, raw = predict(self.parts, split, self.parts.cfg.trainer.eval_batch_size, with_scores=True,
                             progress=progress)
        return [{**row, **outputs(task, ex, p, r)} for row, ex, p, r in zip(rows, examples, preds, raw, strict=True)]


def load(run_dir: Path, cfg: Config) -> Loaded:
    """Build the run's parts without reading any data, then load its saved prompt."""
    from ptune import run

    parts = run.build(cfg, train=False, examples={"eval": []})
    return Loaded(Path(run_dir), parts, parts.load_prompt(Path(run_dir) / run_folder.PROMPT))


def outputs(task: Task, example: Example, prediction: Any, raw: Any) -> dict[str, Any]:
    """A row's ``prediction`` and scores (see the module docstring)."""
    if task.head == "regression":  # STS-B: the value (T5's bucket, or the encoder's regression output)
        return {"prediction": prediction}
    if task.head == "multiple_choice":  # one score per choice: COPA's two, ReCoRD's entities
        probs = softmax(list(raw)[: len(example.texts)])
        if not task.label_names:
            return {"prediction": prediction, "scores": probs}
        return {"prediction": task.label_names[int(prediction)],
                **{f"score_{n}": p for n, p in zip(task.label_names, probs, strict=True)}}
    probs = softmax(list(raw))
    return {"prediction": task.label_names[int(prediction)],
            **{f"score_{n}": p for n, p in zip(task.label_names, probs, strict=True)}}


def softmax(xs: list[float]) -> list[float]:
    finite = [x for x in xs if math.isfinite(x)]
    top = max(finite) if finite else 0.0
    exps = [math.exp(x - top) if math.isfinite(x) else 0.0 for x in xs]
    total = sum(exps) or 1.0
    return [e / total for e in exps]


# --- files ----------------------------------------------------------------------------------------
def file_format(path: Path, what: str) -> str:
    ext = Path(path).suffix.lower().lstrip(".")
    if ext not in FORMATS:
        raise ConfigError(f"{what}{path} has extension {Path(path).suffix or '(none)'!r}; choose one of: "
                          + ", ".join(f".{f}" for f in FORMATS))
    return ext


def read_rows(path: Path) -> list[dict]:
    """The rows of a .jsonl / .csv / .parquet file (:func:`read_input` without the row names)."""
    return read_input(path)[0]


def read_input(path: Path) -> tuple[list[dict], list[str]]:
    """The rows of a .jsonl / .csv / .parquet file, and each row's name as the user counts it ("line 4" of a JSONL or
    CSV file, "row 3" of a parquet file). A missing, unreadable, non-UTF-8 or empty file, a bad JSONL line, a ragged
    CSV row and a column named twice (which one is meant?) are one-line errors."""
    path = Path(path)
    kind = file_format(path, "input file ")
    if not path.exists():
        raise DataError(f"input file {path} does not exist")
    if not path.is_file():
        what = "a folder" if path.is_dir() else "not a regular file (a pipe or device)"
        raise DataError(f"input={path} is {what}; give a .jsonl, .csv or .parquet file")
    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            _named_once(path, table.column_names, "its columns")
            rows, names = table.to_pylist(), [f"row {i + 1}" for i in range(table.num_rows)]
        else:
            rows, names = (_jsonl if kind == "jsonl" else _csv)(path, _utf8(path))
    except (ValueError, OSError, csv.Error) as err:  # ArrowInvalid, a NUL in a CSV line
        raise DataError(f"input file {path} cannot be read as {kind} ({' '.join(str(err).split())[:120]})") from None
    if not rows:
        raise DataError(f"input file {path} holds no rows")
    return rows, names


def _utf8(path: Path) -> str:
    """The file's text: UTF-8, with or without a byte-order mark (a BOM is not part of the first column)."""
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError(f"input file {path} is UTF-16 (it starts with a UTF-16 byte-order mark); save it as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(f"input file {path} line {line} is not UTF-8 (byte 0x{data[err.start]:02x}); save the file as "
                        "UTF-8") from None


class _Twice(Exception):
    pass


def _object(pairs: list[tuple[str, object]]) -> dict:
    keys = [k for k, _ in pairs]
    if len(set(keys)) < len(keys):
        raise _Twice(next(k for k in keys if keys.count(k) > 1))
    return dict(pairs)


def _jsonl(path: Path, text: str) -> tuple[list[dict], list[str]]:
    rows, names = [], []
    for n, line in enumerate(text.split("\n"), 1):  # not splitlines(): U+2028 and friends are text inside a line
        if line.strip():
            try:
                row = json.loads(line, object_pairs_hook=_object)
            except ValueError as err:
                raise DataError(f"input file {path} line {n} is not valid JSON ({err.args[0].split(':')[0]})") from None
            except _Twice as twice:
                raise DataError(f"input file {path} line {n} names {twice.args[0]!r} twice; which one is meant is "
                                "ambiguous") from None
            if not isinstance(row, dict):
                raise DataError(f"{path} line {n} is not a JSON object")
            rows.append(row)
            names.append(f"line {n}")
    return rows, names


def _csv(path: Path, text: str) -> tuple[list[dict], list[str]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    _named_once(path, reader.fieldnames or [], "line 1")
    rows, names = [], []
    for row in reader:
        if None in row:  # csv puts a ragged row's extra fields under the key None
            raise DataError(f"input file {path} line {reader.line_num} has {len(reader.fieldnames or []) + len(row[None])} "
                            f"fields, the header {len(reader.fieldnames or [])}")
        rows.append(dict(row))
        names.append(f"line {reader.line_num}")
    return rows, names


def _named_once(path: Path, columns: Sequence[str], where: str) -> None:
    twice = [c for c in dict.fromkeys(columns) if list(columns).count(c) > 1]
    if twice:
        raise DataError(f"input file {path} {where} names column {twice[0]!r} twice; which one is meant is ambiguous")


def output_path(run_dir: Path, task: str, stem: str, out: str | None, source: Path | None = None) -> Path:
    """``out``, else ``<run_dir>/predictions/<task>-<stem>.jsonl``; never one of the run's own files or the input."""
    path = Path(out) if out else Path(run_dir) / run_folder.PREDICTIONS / f"{task}-{stem}.jsonl"
    if path.is_dir():  # refused now, not after the whole prediction
        raise ConfigError(f"out={path} is a folder; name a file in it, e.g. out={path / f'{task}-{stem}.jsonl'}")
    file_format(path, "out=")
    resolved, run = path.resolve(), Path(run_dir).resolve()
    if any(resolved == run / name or (run / name) in resolved.parents for name in run_folder.OWN):
        raise ConfigError(f"out={path} would overwrite the run's own files; choose another out= "
                          f"(default: {Path(run_dir) / run_folder.PREDICTIONS}/...)")
    if source is not None and resolved == Path(source).resolve():
        raise ConfigError(f"out={path} is the input file; choose another out=")
    return path


def write_rows(rows: list[dict], path: Path) -> None:
    """Write atomically: a temp file beside ``path``, flushed, then renamed over it."""
    kind = file_format(path, "out=")
    if kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows), buffer)
        data = buffer.getvalue()
    elif kind == "csv":
        text = io.StringIO()
        columns = list(dict.fromkeys(k for row in rows for k in row))
        writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in row.items()})
        data = text.getvalue().encode()
    else:
        data = "".join(json.dumps(row, default=str) + "\n" for row in rows).encode()
    files.atomic_write_bytes(path, data)


# --- the command ----------------------------------------------------------------------------------
def command(run_dir: Path, source: str | None, out: str | None, task: str | None, overrides: list[str],
            console) -> dict:
    """``ptune predict``: every check first, then the model, then the predictions file."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ptune import tasks
    from ptune.tasks.data import prediction_examples

    cfg = run_config(run_dir, overrides)
    tid = task_id(cfg, task, run_dir)
    name = cfg.task_names[tid]
    if source is not None:
        rows, numbers = read_input(Path(source))
        stem, where, names = Path(source).stem, f"input file {source}", numbers.__getitem__
    else:
        spec, role = tasks.get(name), cfg.data.eval_split
        if role not in spec.splits:
            raise ConfigError(f"task {name!r} has no split {role!r}; choose one of: {', '.join(spec.splits)}")
        # the whole split unless this command limits it: a run trained with data.eval_limit saved that limit
        limit = cfg.data.eval_limit if any(o.startswith("data.eval_limit=") for o in overrides) else None
        rows = tasks.split_rows(spec, role, root=cfg.data.root, limit=limit)  # each file checked, labels ignored
        stem, where, names = role, f"task {name!r} split {role!r}", None
    path = output_path(run_dir, name, stem, out, Path(source) if source else None)
    prediction_examples(tasks.get(name), rows, where, *([names] if names else []))  # checked before the model loads
    loaded = load(run_dir, cfg)
    with Progress(TextColumn("predict {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, disable=console.quiet or not cfg.trainer.progress) as bar:
        job = bar.add_task(name, total=len(rows))
        results = loaded.predict(tid, rows, where, progress=lambda n: bar.advance(job, n), names=names)
    write_rows(results, path)
    console.print(f"{len(results)} predictions for {name} (step {loaded.step}) -> {path}")
    return {"run_dir": str(run_dir), "task": name, "rows": len(results), "step": loaded.step, "out": str(path)}
