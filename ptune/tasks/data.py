"""Load a task's split as rows (plain dicts in the Hugging Face hub schema) or as Examples.

Two sources, same rows:

* a local folder in the hub's parquet layout, ``<root>/<org>/<name>/<config>/<split>-*.parquet``
  (the layout of ``nyu-mll/glue`` and ``aps/super_glue``; the parquet-converter layout
  ``<config>/<split>/*.parquet`` is read too). The root is the ``root`` argument, else the
  ``PTUNE_DATA_DIR`` environment variable; ``../shared/data/hub`` is such a root.
* the Hugging Face hub, ``datasets.load_dataset(hub_id, config, split=...)``, when no root is set.

Nothing is cached here; ``datasets`` keeps its own cache for hub downloads.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ptune.errors import DataError, unknown
from ptune.tasks.base import Example, Task

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
    """Rows of one hub split (the first ``limit`` rows if given), from the local root or the hub."""
    if limit is not None and limit < 0:
        raise DataError(f"data limit must be >= 0, got {limit}")
    base = resolve_root(root)
    if base is None:
        return _hub_rows(hub_id, config, split, limit)
    return _local_rows(base / hub_id / config, split, limit)


def _local_rows(folder: Path, split: str, limit: int | None) -> list[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not folder.is_dir():
        raise DataError(f"no data folder {folder} (split {split!r}); {_HINT}")
    files = split_files(folder, split)
    if not files:
        found = ", ".join(available_splits(folder)) or "none"
        raise DataError(f"no split {split!r} in {folder} (splits there: {found}); {_HINT}")
    if limit == 0:
        return []
    tables, rows = [], 0
    for path in files:  # read only the shards the limit needs
        if limit is not None and rows >= limit:
            break
        table = pq.read_table(path)
        tables.append(table)
        rows += table.num_rows
    table = pa.concat_tables(tables)
    if limit is not None:
        table = table.slice(0, limit)
    return table.to_pylist()


def _hub_rows(hub_id: str, config: str, split: str, limit: int | None) -> list[dict[str, Any]]:
    import datasets

    spec = split if limit is None else f"{split}[:{limit}]"
    try:
        dataset = datasets.load_dataset(hub_id, config, split=spec)
    except (OSError, ValueError) as err:  # ConnectionError, DatasetNotFoundError, unknown split
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(
            f"could not load {hub_id}/{config} split {split!r} from the hub ({first}); {_HINT}"
        ) from err
    return dataset.to_list()


def load_split(
    task: Task,
    role: str,
    root: str | os.PathLike[str] | None = None,
    limit: int | None = None,
) -> list[Example]:
    """A task's split by role ("train", "validation", "test", ...) as Examples."""
    if role not in task.splits:
        raise unknown("split role", role, task.splits)
    rows = load_rows(task.hub_id, task.hub_config, task.splits[role], root=root, limit=limit)
    return [task.example(row) for row in rows]


def prediction_examples(task: Task, rows: list[dict[str, Any]], source: str) -> list[Example]:
    """Rows to predict on, as unlabelled Examples: any gold column is ignored (replaced by the task's
    ``UNLABELLED`` values), so a test split (label -1) or a file without labels reads the same way. Rows
    missing one of the task's input columns fail once, naming them, before any model is loaded."""
    present = set().union(*(row.keys() for row in rows)) if rows else set()
    missing = [c for c in task.input_columns if c not in present or any(c not in row for row in rows)]
    if missing:
        raise DataError(f"{source} lacks column(s) {', '.join(missing)}; task {task.name!r} needs: "
                        f"{', '.join(task.input_columns)}")
    return [task.example({**row, **task.UNLABELLED}) for row in rows]


def check_labels(task: Task, examples: list[Example], split: str, *, need_all: bool) -> None:
    """Labels must index the task's head (its candidates, or its choices for multiple choice).

    A training split needs every row labelled; an evaluation split needs at least one (the hub's
    GLUE/SuperGLUE test splits carry label -1 everywhere). Checked before any model is loaded.
    """
    unlabeled = 0
    for i, e in enumerate(examples):
        if e.target < 0:
            unlabeled += 1
            continue
        options = len(e.texts) if task.head == "multiple_choice" else len(e.candidates)
        if e.target >= options:
            names = ", ".join(task.label_names) or f"0..{options - 1}"
            raise DataError(
                f"task {task.name!r} split {split!r} row {i} has label {e.target}, outside the head's "
                f"{options} labels ({names}); the data does not match the task"
            )
    if unlabeled and (need_all or unlabeled == len(examples)):
        raise DataError(
            f"task {task.name!r} split {split!r} has {unlabeled} of {len(examples)} rows without a label "
            f"(label -1, as in hub test splits); train and evaluate on labelled splits (data.eval_split=validation)"
        )
