"""One validation layer for data: every split and input file is checked against its task's schema, once and
before any model loads (docs/reliability.md, "Round three").

A task declares its schema where it is declared (``Task.features`` in glue.py / superglue.py: the hub's
columns and their Arrow types; ``label_names`` or ``label_range`` for the gold column; ``choices`` for text
with a closed set of values). :func:`check_table` reads one Arrow table (a parquet file of a split, a hub
download, the rows of a ``ptune predict`` input) vectorised, with ``pyarrow.compute``:

1. columns: the ones the task reads (``Task.input_columns``, and the gold column when labels count) are there,
   each under one name. Other columns are ignored, unless one could be taken for a column the task reads
   (``Sentence`` beside ``sentence``): that is ambiguous and refused.
2. types: each read column is, or converts exactly to, the hub's type. A whole float (``1.0``) or the text of
   an integer (``"3"``: CSV has no types) is an integer; ``0.6``, ``"three"``, ``true`` or NaN are not. Text
   is only text: a number or a list where the hub has text is refused, not stringified.
3. values: nothing empty (null) at any depth of a read column (struct fields, list items), lists the task
   needs non-empty (ReCoRD's entities), text among the task's choices (COPA's question), a label that is a
   class index (a score in its range for STS-B) or -1, which marks an unlabelled row as in the hub's test splits.

:func:`check_labelled` then asks the labels of the split's role: a training split needs every row labelled,
an evaluation split at least one; predictions ignore labels. A failure is one ``DataError`` line naming the
source (the file), the first bad row as the user counts it (parquet row, input line), the column, the value
and how many rows fail the same way.

Why pyarrow, not a dataframe validation library (pandera, great_expectations): pyarrow is already how ptune
reads the hub's parquet; the hub's own schema is an Arrow schema, nested columns included (MultiRC's
``idx`` struct, ReCoRD's lists), which a pandas-based validator flattens to ``object``; and the checks above are
a handful of vectorised compute calls, less code than a validator's schema plus a new dependency.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ptune.errors import DataError
from ptune.tasks.base import Example, Task

Labels = Literal["all", "some", "none"]  # train: every row labelled; evaluation: at least one; predict: ignored
UNLABELLED = -1  # the hub's test splits carry label -1
_ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError, UnicodeError)


def row_number(i: int) -> str:
    return f"row {i + 1}"


@dataclass(frozen=True)
class Place:
    """Where rows come from, for messages: ``source`` (a task's split, an input file), ``file`` (one file of a
    split, if the rows are one file's), ``names`` row i (0-based) as the user counts it ("row 3" of a parquet
    file, "line 4" of a JSONL file, "data[2]" of a Python list)."""

    source: str
    names: Callable[[int], str] = row_number
    file: str = ""

    @property
    def where(self) -> str:
        return f"{self.source}, {self.file}" if self.file else self.source


def needed_columns(task: Task, labelled: bool) -> tuple[str, ...]:
    return (*task.input_columns, task.LABEL) if labelled else task.input_columns


def _bad_rows(place: Place, column: str, mask: np.ndarray, value: Callable[[int], Any], problem: str) -> DataError:
    first, count = int(np.argmax(mask)), int(mask.sum())
    return DataError(f"{place.where}, {place.names(first)}: column {column!r} {problem.format(shown(value(first)))}; "
                     f"{count} of {len(mask)} row{'s' * (len(mask) != 1)} {'is' if count == 1 else 'are'} like this")


def shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- columns --------------------------------------------------------------------------------------
def check_columns(task: Task, names: list[str], place: Place, labelled: bool) -> None:
    """Every column the task reads is there under exactly one name; near-misses are named."""
    needed = needed_columns(task, labelled)
    for column in (*needed, *task.OPTIONAL_INPUTS):
        alike = [n for n in names if _plain(n) == _plain(column)]
        if len(alike) > 1:
            raise DataError(f"{place.where} has columns {', '.join(map(repr, alike))}: which one is {column!r} is "
                            "ambiguous; rename or drop all but one")
    missing = [c for c in needed if c not in names]
    if missing:
        near = [n for n in names if _plain(n) in {_plain(c) for c in missing}]
        hint = f" (it has {', '.join(map(repr, near))}: rename it)" if near else ""
        raise DataError(f"{place.where} lacks column(s) {', '.join(missing)}; task {task.name!r} needs: "
                        f"{', '.join(needed)}{hint}")


def _plain(name: str) -> str:
    return name.strip().lstrip("\ufeff").strip().lower()


# --- types ----------------------------------------------------------------------------------------
def coerce(arr: pa.Array, want: pa.DataType) -> tuple[pa.Array, np.ndarray | None]:
    """``arr`` in the type ``want``, and the mask of rows whose value does not convert exactly (None: all do).
    Rows that fail hold null in the returned array."""
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    have = arr.type
    if have == want or pa.types.is_null(have):
        return arr.cast(want), None
    if _is_text(want):
        return (arr.cast(want), None) if _is_text(have) else _all_bad(arr, want)
    if pa.types.is_integer(want) or pa.types.is_floating(want):
        return _number(arr, want)
    if _is_text(have):  # a list or struct as JSON text (a CSV cell, as ptune predict writes them; blank: null)
        try:
            arr = pa.array([json.loads(v) if v and v.strip() else None for v in arr.to_pylist()], from_pandas=True)
        except (ValueError, *_ARROW_ERRORS):
            return _all_bad(arr, want)
    try:
        return arr.cast(want), None
    except _ARROW_ERRORS:
        return _all_bad(arr, want)


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _all_bad(arr: pa.Array, want: pa.DataType) -> tuple[pa.Array, np.ndarray]:
    return pa.nulls(len(arr), want), _mask(arr.is_valid())


def _mask(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(pc.fill_null(values, False).to_numpy(zero_copy_only=False), dtype=bool)


def _number(arr: pa.Array, want: pa.DataType) -> tuple[pa.Array, np.ndarray | None]:
    """Integers and floats convert where exact (whole, finite, in range); text where it spells such a number."""
    valid = _mask(arr.is_valid())
    if _is_text(arr.type):
        text = pc.replace_substring_regex(pc.utf8_trim_whitespace(arr), r"^\+", "")
        pattern = r"^-?[0-9]{1,18}$" if pa.types.is_integer(want) else r"^-?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
        spelled = _mask(pc.match_substring_regex(text, pattern))
        arr = pc.cast(pc.if_else(pa.array(spelled), text, "0"), pa.int64() if pa.types.is_integer(want) else pa.float64())
        bad = valid & ~spelled
    elif pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type):
        bad = np.zeros(len(arr), dtype=bool)
    else:  # true/false, lists, structs, dates: not a number
        return _all_bad(arr, want)
    values = arr.cast(pa.float64()).to_numpy(zero_copy_only=False)  # a null is NaN here, and not valid
    with np.errstate(invalid="ignore"):
        if pa.types.is_integer(want):
            info = np.iinfo(want.to_pandas_dtype())
            exact = (np.floor(values) == values) & (values >= info.min) & (values <= info.max)
        else:
            exact = np.abs(values) <= np.finfo(want.to_pandas_dtype()).max
    bad |= valid & ~(np.isfinite(values) & exact)
    safe = pc.if_else(pa.array(bad), pa.scalar(None, arr.type), arr)
    return pc.cast(safe, want, safe=False), bad if bad.any() else None


def _noun(task: Task, column: str, want: pa.DataType) -> str:
    """What a value of ``column`` has to be, for a message: "holds 0.6, not <noun>"."""
    if column == task.LABEL and task.label_names:
        names = ", ".join(task.label_names)
        return f"a label of {task.name} (0..{len(task.label_names) - 1}: {names}; -1 for an unlabelled row)"
    if column == task.LABEL and task.label_range:
        low, high = task.label_range
        return f"a score of {task.name} ({low:g} to {high:g}; -1 for an unlabelled row)"
    if _is_text(want):
        return f"one of: {', '.join(task.choices[column])}" if column in task.choices else "text"
    if pa.types.is_integer(want):
        return f"a whole number ({want})"
    if pa.types.is_floating(want):
        return "a finite number"
    return f"a value of type {want}"


# --- the check ------------------------------------------------------------------------------------
def check_table(task: Task, table: pa.Table, place: Place, labelled: bool) -> pa.Table:
    """``table`` checked against the task's schema (the module docstring's steps 1-3): the columns the task
    reads (and those it reads when present), in the hub's types, in one table. Raises one ``DataError``."""
    check_columns(task, table.column_names, place, labelled)
    needed = needed_columns(task, labelled)
    columns = [*needed, *(c for c in task.OPTIONAL_INPUTS if c in table.column_names)]
    out = {}
    for column in columns:
        original = table[column].combine_chunks() if table.num_rows else pa.array([], table.schema.field(column).type)
        out[column] = check_column(task, column, original, place)
    return pa.table(out) if out else table.select([])


def check_column(task: Task, column: str, original: pa.Array, place: Place) -> pa.Array:
    """One column in the task's type, with its values checked; raises naming the first bad row."""
    want = task.features[column]
    arr, bad = coerce(original, want)
    for also in task.ALSO_READ.get(column, ()):  # another shape the task reads (ReCoRD's entity_spans)
        if bad is not None:
            arr, bad = coerce(original, also)
    def value(i: int) -> Any:
        return original[i].as_py()

    if bad is not None:
        raise _bad_rows(place, column, bad, value, f"holds {{}}, not {_noun(task, column, want)}")
    optional = column in task.OPTIONAL_INPUTS
    top = _mask(arr.is_null())
    if top.any() and not optional:
        raise _bad_rows(place, column, top, value, "is empty (null or missing)")
    inner = _nulls_inside(arr) & ~top
    if inner.any():
        raise _bad_rows(place, column, inner, value, "holds {}, which has an empty (null) field or item")
    for rule, problem in _value_rules(task, column, arr):
        if rule.any():
            raise _bad_rows(place, column, rule, value, problem)
    return arr


def _nulls_inside(arr: pa.Array) -> np.ndarray:
    """Rows with a null struct field or list item, at any depth (the row itself null: not counted here)."""
    rows = np.zeros(len(arr), dtype=bool)
    if pa.types.is_struct(arr.type):
        for i in range(arr.type.num_fields):
            field = arr.field(i)
            rows |= _mask(field.is_null()) | _nulls_inside(field)
        rows &= _mask(arr.is_valid())
    elif pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        items = arr.flatten()
        bad = _mask(items.is_null()) | _nulls_inside(items)
        parents = pc.list_parent_indices(arr).to_numpy(zero_copy_only=False)
        rows[parents[bad]] = True
    return rows


def _value_rules(task: Task, column: str, arr: pa.Array) -> list[tuple[np.ndarray, str]]:
    """(mask of bad rows, problem) for the values a column may hold beyond its type."""
    rules = []
    if column in task.choices:
        rules.append((~_mask(pc.is_in(arr, pa.array(task.choices[column]))) & _mask(arr.is_valid()),
                      f"holds {{}}, not {_noun(task, column, arr.type)}"))
    if column in task.NONEMPTY:
        rules.append((_mask(pc.equal(pc.list_value_length(arr), 0)), "is an empty list"))
    bounds = (0, len(task.label_names) - 1) if task.label_names else task.label_range
    if column == task.LABEL and bounds is not None:
        low, high = bounds
        inside = pc.and_(pc.greater_equal(arr, low), pc.less_equal(arr, high))
        ok = pc.or_(inside, pc.equal(arr, UNLABELLED))
        rules.append((~_mask(ok) & _mask(arr.is_valid()), f"holds {{}}, not {_noun(task, column, arr.type)}"))
    return rules


def check_rows(task: Task, rows: list[dict[str, Any]], place: Place, labelled: bool = False) -> pa.Table:
    """Python rows (a JSONL or CSV input, a list or DataFrame given to the API) as a checked table: each column
    is built by Arrow in one call; only a column that mixes Python types is walked row by row, to name them."""
    names = list(dict.fromkeys(k for row in rows for k in row))
    check_columns(task, names, place, labelled)
    columns = [*needed_columns(task, labelled), *(c for c in task.OPTIONAL_INPUTS if c in names)]
    table = pa.table({c: _python_column(task, c, [row.get(c) for row in rows], place) for c in columns})
    return check_table(task, table, place, labelled)


def _python_column(task: Task, column: str, values: list[Any], place: Place) -> pa.Array:
    try:
        return pa.array(values, from_pandas=True)  # one inferred type: coerced (and its rows named) by check_table
    except _ARROW_ERRORS:
        pass
    want, parts, bad = task.features[column], [], np.zeros(len(values), dtype=bool)
    for i, v in enumerate(values):
        try:
            arr, wrong = coerce(pa.array([v], from_pandas=True), want)
        except _ARROW_ERRORS:
            arr, wrong = pa.nulls(1, want), np.ones(1, dtype=bool)
        bad[i] = wrong is not None and bool(wrong[0])
        parts.append(arr)
    if bad.any():
        first = values[int(np.argmax(bad))]
        invalid = isinstance(first, str) and _unencodable(first)
        problem = ("holds {}, text that is not valid Unicode (a lone surrogate)" if invalid
                   else f"holds {{}}, not {_noun(task, column, want)}")
        raise _bad_rows(place, column, bad, lambda i: values[i], problem)
    return pa.concat_arrays(parts)


def _unencodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


# --- labels, on the examples ----------------------------------------------------------------------
def check_labelled(task: Task, examples: list[Example], place: Place, labels: Labels) -> None:
    """A training split has every row labelled (a gold candidate), an evaluation split at least one (the hub's
    test splits carry label -1 everywhere); labels of rows to predict are ignored."""
    if labels == "none" or not examples:
        return
    options = [len(e.texts) if task.head == "multiple_choice" else len(e.candidates) for e in examples]
    outside = np.array([e.target >= n for e, n in zip(examples, options, strict=True)])
    if outside.any():
        raise _bad_rows(place, task.LABEL, outside, lambda i: examples[i].target,
                        "holds {}, outside the head's labels; the data does not match the task")
    if labels == "all":
        missing = np.array([e.target < 0 for e in examples])
        if missing.any():
            first = examples[int(np.argmax(missing))]
            why = ("has {}, none of which is among the row's entities" if first.label
                   else "has {}: no label (as in the hub's test splits), but training needs every row labelled")
            raise _bad_rows(place, task.LABEL, missing, lambda i: examples[i].label or task.UNLABELLED[task.LABEL], why)
    unlabelled = sum(e.label is None for e in examples)
    if unlabelled == len(examples):
        raise DataError(f"{place.source} has {unlabelled} of {len(examples)} rows without a label (label -1, as in "
                        "hub test splits); train and evaluate on labelled splits (data.eval_split=validation)")
