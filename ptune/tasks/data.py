"""Load a task's split as rows (plain dicts in the Hugging Face hub schema) or as Examples.

Two sources, same rows:

* a local folder in the hub's parquet layout, ``<root>/<org>/<name>/<config>/<split>-*.parquet``
  (the layout of ``nyu-mll/glue`` and ``aps/super_glue``; the parquet-converter layout
  ``<config>/<split>/*.parquet`` is read too). The root is the ``root`` argument, else the
  ``PTUNE_DATA_DIR`` environment variable; ``../shared/data/hub`` is such a root.
* the Hugging Face hub, ``datasets.load_dataset(hub_id, config, split=...)``, when no root is set.

Nothing is cached here; ``datasets`` keeps its own cache for hub downloads. A task's split
(:func:`load_split`, :func:`split_rows`) and the rows given to predict (:func:`prediction_examples`) are
checked against the task's schema (``ptune/tasks/schema.py``) file by file, before any model loads.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ptune.errors import DataError, MissingDataError, unknown
from ptune.tasks import schema
from ptune.tasks.base import Example, Task
from ptune.tasks.schema import Labels, Place

ENV_ROOT = "PTUNE_DATA_DIR"
_HINT = f"set data.root= or {ENV_ROOT} to a folder in the hub layout <root>/<org>/<name>/<config>/<split>-*.parquet"


def resolve_root(root: str | os.PathLike[str] | None = None) -> Path | None:
    """The local data root: the argument, else $PTUNE_DATA_DIR, else None (use the hub)."""
    value = root if root not in (None, "") else os.environ.get(ENV_ROOT) or None
    return None if value is None else Path(value).expanduser()


def split_files(folder: Path, split: str) -> list[Path]:
    """Parquet shards of one split, in shard order."""
    return sorted(folder.glob(f"{split}-*.parquet")) or sorted((folder / split).glob("*.parquet"))


def available_splits(folder: Path) -> list[str]:
    """Split names present in a config folder (both hub and parquet-converter layouts)."""
    names = {p.name.split("-", 1)[0] for p in folder.glob("*-*.parquet")}
    names |= {p.parent.name for p in folder.glob("*/*.parquet")}
    return sorted(names)


def load_rows(
    hub_id: str,
    config: str,
    split: str,
    root: str | os.PathLike[str] | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Rows of one hub split (the first ``limit`` rows if given), from the local root or the hub, as stored:
    no task's schema is asked for (:func:`load_split` and :func:`split_rows` check it)."""
    return [row for _, table in _tables(hub_id, config, split, root, limit) for row in table.to_pylist()]


def _tables(hub_id: str, config: str, split: str, root: str | os.PathLike[str] | None,
            limit: int | None) -> list[tuple[str, Any]]:
    """(where, pyarrow table) per file of the split, the first ``limit`` rows in all; shards are not
    concatenated, so each is checked (and named) on its own."""
    if limit is not None and limit < 0:
        raise DataError(f"data limit must be >= 0, got {limit}")
    base = resolve_root(root)
    if base is None:
        return [(f"{hub_id}/{config} on the hub", _hub_table(hub_id, config, split, limit))]
    return _local_tables(base / hub_id / config, split, limit)


def _local_tables(folder: Path, split: str, limit: int | None) -> list[tuple[str, Any]]:
    if not folder.is_dir():
        raise MissingDataError(f"no data folder {folder} (split {split!r}); {_HINT}")
    files = split_files(folder, split)
    if not files:
        found = ", ".join(available_splits(folder)) or "none"
        raise MissingDataError(f"no split {split!r} in {folder} (splits there: {found}); {_HINT}")
    tables, rows = [], 0
    for path in files:  # read only the shards the limit needs
        if limit is not None and rows >= limit:
            break
        table = read_parquet(path)
        if limit is not None:
            table = table.slice(0, limit - rows)
        tables.append((f"file {path}", table))
        rows += table.num_rows
    return tables


def read_parquet(path: Path) -> Any:
    """A parquet file as a pyarrow table; a 0-byte, truncated or non-parquet file is one line naming it."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
        table.validate(full=True)  # e.g. text that is not UTF-8
    except (OSError, ValueError) as err:  # ArrowInvalid, ArrowIOError
        why = " ".join(str(err).replace(f"Could not open Parquet input source '{path}': ", "").split())
        raise DataError(f"{path} is not a readable parquet file ({why[:120]}); replace or remove it") from None
    return table


def _hub_table(hub_id: str, config: str, split: str, limit: int | None) -> Any:
    import datasets

    spec = split if limit is None else f"{split}[:{limit}]"
    print(f"ptune: reading {hub_id}/{config} split {split!r} through the Hugging Face hub (datasets' cache after the "
          f"first time; data.root= reads local parquet files instead)", file=sys.stderr)
    try:
        dataset = datasets.load_dataset(hub_id, config, split=spec)
    except (OSError, ValueError) as err:  # ConnectionError, DatasetNotFoundError, unknown split
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise MissingDataError(
            f"could not load {hub_id}/{config} split {split!r} from the hub ({first}); {_HINT}"
        ) from err
    return dataset.with_format("arrow")[:]


def _checked_split(task: Task, role: str, root: str | os.PathLike[str] | None, limit: int | None,
                   labelled: bool) -> tuple[list[tuple[Any, Any]], Place]:
    """(stored table, checked table) per file of a task's split, and the split's Place (it names a row by its file
    and its row there). Every file is checked against the task's schema; a split without rows is refused."""
    if role not in task.splits:
        raise unknown("split role", role, task.splits)
    split = task.splits[role]
    source = f"task {task.name!r} split {split!r}"
    files = _tables(task.hub_id, task.hub_config, split, root, limit)
    out = [(table, schema.check_table(task, table, Place(source, file=where), labelled))
           for where, table in files if table.num_rows]  # an empty shard adds nothing (and may have no columns)
    if not out:
        where = "limit 0" if not files else files[0][0] if len(files) == 1 else f"{len(files)} files, e.g. {files[0][0]}"
        raise DataError(f"{source} holds no rows ({where}); every split a run reads needs some")
    starts = np.cumsum([0] + [t.num_rows for _, t in files if t.num_rows])
    named = [where for where, t in files if t.num_rows]

    def names(i: int) -> str:
        k = int(np.searchsorted(starts, i, side="right")) - 1
        return f"{named[k]}, row {i - starts[k] + 1}"

    return out, Place(source, names)


def load_split(
    task: Task,
    role: str,
    root: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    labels: Labels | None = None,
) -> list[Example]:
    """A task's split by role ("train", "validation", ...) as Examples, checked against the task's schema.
    ``labels``: "all" (default for "train": every row labelled), "some" (default otherwise: at least one, as
    evaluation needs), "none" (ignored)."""
    labels = labels or ("all" if role == "train" else "some")
    tables, place = _checked_split(task, role, root, limit, labelled=labels != "none")
    examples = [task.example(row) for _, checked in tables for row in checked.to_pylist()]
    schema.check_labelled(task, examples, place, labels)
    return examples


def split_rows(task: Task, role: str, root: str | os.PathLike[str] | None = None,
               limit: int | None = None) -> list[dict[str, Any]]:
    """A task's split as stored (every column, for a predictions file), checked as rows to predict on: the input
    columns must hold what the task reads; labels are ignored."""
    tables, _ = _checked_split(task, role, root, limit, labelled=False)
    return [row for table, _ in tables for row in table.to_pylist()]


def prediction_examples(task: Task, rows: list[dict[str, Any]], source: str,
                        names: Callable[[int], str] = schema.row_number) -> list[Example]:
    """Rows to predict on, as unlabelled Examples: the task's input columns are checked against its schema
    (``names`` says row i as the user counts it: "line 4"); any gold column is ignored (replaced by the task's
    ``UNLABELLED`` values), so a test split (label -1) or a file without labels reads the same way. Fails in one
    line, before any model is loaded."""
    if not rows:
        raise DataError(f"{source} holds no rows")
    checked = schema.check_rows(task, rows, Place(source, names))
    return [task.example({**row, **task.UNLABELLED}) for row in checked.to_pylist()]
