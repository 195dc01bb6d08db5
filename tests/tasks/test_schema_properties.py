"""Property-based tests (Hypothesis) of the data validation layer, for every task's schema.

Hypothesis writes tables and rows in each task's hub schema, then breaks them one way at a time: wrong types,
nulls (inside structs and lists too), out-of-range and non-integral labels, missing, extra and ambiguous
columns, empty splits, shards with different schemas, unreadable files, odd encodings. Every case knows whether
it is still valid (an extra column, a whole float label, shards whose schemas differ but each fit are) and
what a refusal must name. The property: a valid split or input reads as the task's examples, which tokenize
for both families (nothing after the check can fail on the data); anything else stops with one line naming
the column and the row as the user counts it. Never a traceback, never a silent result.

The end-to-end cases at the bottom run the real CLI (``ptune train``, ``eval``, ``predict``) on the tiny
backbones and show that bad data stops it before any model loads.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from ptune import backbones, predict, tasks
from ptune.cli import main
from ptune.errors import DataError
from ptune.tasks.collate import featurize
from ptune.tasks.data import load_split, prediction_examples

NAMES = sorted(tasks.TASKS)
# derandomize: the same examples on every run, so CI fails for a reason, never by chance. A wider search
# (derandomize=False, max_examples=80: about 4,000 cases) passed before this landed; rerun it after changes.
PROPERTY = settings(max_examples=12, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TEXT = st.text(max_size=12)  # any Unicode but lone surrogates: NUL, U+2028, BOMs and right-to-left marks included


@functools.cache
def tokenizers() -> dict:
    """The tiny backbones' tokenizers (configs/model/tiny-*.yaml): what the checked examples must get through."""
    return {"bert": AutoTokenizer.from_pretrained("sentence-transformers/all-MiniLM-L6-v2"),
            "t5": AutoTokenizer.from_pretrained("google-t5/t5-small")}


def tokenizes(task, examples) -> None:
    for family, tok in tokenizers().items():
        assert len(featurize(task, 0, examples, tok, family, 64, 8).features) == len(examples)


# --- valid rows of a task's schema ----------------------------------------------------------------
def values(t: pa.DataType) -> st.SearchStrategy:
    if pa.types.is_string(t):
        return TEXT
    if pa.types.is_integer(t):
        return st.integers(-3, 40)
    if pa.types.is_list(t):
        return st.lists(values(t.value_type), min_size=1, max_size=3)
    return st.fixed_dictionaries({f.name: values(f.type) for f in t})  # a struct


@st.composite
def row(draw, task) -> dict:
    out = {c: draw(values(t)) for c, t in task.features.items() if c not in (task.LABEL, "entity_spans")}
    out.update({c: draw(st.sampled_from(choices)) for c, choices in task.choices.items()})
    if task.name == "record":  # answers come from the entities (the candidates); entity_spans may order them
        entities = draw(st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=3, unique=True))
        out["entities"], out["answers"] = entities, draw(st.lists(st.sampled_from(entities), min_size=1, unique=True))
        if draw(st.booleans()):
            out["entity_spans"] = {"text": entities[::-1], "start": [0] * len(entities), "end": [1] * len(entities)}
    elif task.label_names:
        out["label"] = draw(st.integers(0, len(task.label_names) - 1))
    else:
        out["label"] = draw(st.floats(0, 5, width=32))
    return out


def hub_table(task, rows: list[dict]) -> pa.Table:
    schema = pa.schema([(c, t) for c, t in task.features.items() if any(c in r for r in rows) or c != "entity_spans"])
    return pa.Table.from_pylist(rows, schema=schema)


def read_columns(task, labelled: bool) -> list[str]:
    return [*task.input_columns, *([task.LABEL] if labelled else [])]


def unlabelled(task, r: dict) -> dict:
    return {**r, **task.UNLABELLED}


# --- a split, broken one way ------------------------------------------------------------------------
@st.composite
def split_case(draw, task, role: str):
    """(shards: tables or raw bytes, words a refusal must hold; None: the split is valid)."""
    rows = draw(st.lists(row(task), min_size=1, max_size=5))
    table, n = hub_table(task, rows), len(rows)
    k = draw(st.integers(0, n - 1))
    read = read_columns(task, True)
    unread = [c for c in table.column_names if c not in read and c not in task.OPTIONAL_INPUTS]
    c = draw(st.sampled_from(read))
    kinds = ["keep", "extra column", "null", "wrong type", "missing column", "ambiguous column", "empty",
             "shards", "bad shard", "unlabelled row"]
    kinds += ["unread column"] * bool(unread) + ["label value"] * bool(task.label_names or task.label_range)
    kinds += ["null inside"] * any(not pa.types.is_string(table.schema.field(x).type) for x in read)
    kinds += ["choice"] * bool(task.choices) + ["no entities", "unknown answer"] * (task.name == "record")
    kind = draw(st.sampled_from(kinds))
    at = [f"row {k + 1}"]

    def column(name: str, values: list, t: pa.DataType | None = None) -> pa.Table:
        return table.set_column(table.column_names.index(name), name, pa.array(values, t))

    def one(name: str, value, t: pa.DataType | None = None) -> pa.Table:
        old = table[name].to_pylist()
        return column(name, [value if i == k else v for i, v in enumerate(old)], t or table.schema.field(name).type)

    if kind == "keep":
        return [table], None
    if kind == "extra column":
        notes = draw(st.one_of(st.lists(TEXT, min_size=n, max_size=n), st.lists(st.integers(-9, 9), min_size=n,
                                                                                max_size=n)))
        return [table.append_column("notes", pa.array(notes))], None
    if kind == "unread column":  # idx, WiC's offsets: dropped or retyped, still fine
        u = draw(st.sampled_from(unread))
        return [table.drop_columns([u]) if draw(st.booleans()) else column(u, ["?"] * n)], None
    if kind == "null":
        return [one(c, None)], [*at, f"column {c!r}", "empty"]
    if kind == "null inside":
        c = draw(st.sampled_from([x for x in read if not pa.types.is_string(table.schema.field(x).type)
                                  and not pa.types.is_integer(table.schema.field(x).type)] or [c]))
        v = table[c][k].as_py()
        if isinstance(v, list):
            return [one(c, [*v, None])], [*at, f"column {c!r}", "empty (null) field or item"]
        if isinstance(v, dict):
            return [one(c, {**v, next(iter(v)): None})], [*at, f"column {c!r}", "empty (null) field or item"]
        return [one(c, None)], [*at, f"column {c!r}", "empty"]
    if kind == "wrong type":  # a whole column of another type: parquet has one type a column
        t = table.schema.field(c).type
        wrong = draw(st.sampled_from(
            [pa.array([draw(st.integers(0, 9)) for _ in range(n)]), pa.array([[draw(TEXT)] for _ in range(n)]),
             pa.array([True] * n)] if pa.types.is_string(t) else
            [pa.array([draw(TEXT).join("x!") for _ in range(n)]), pa.array([draw(st.booleans()) for _ in range(n)])]))
        return [table.set_column(table.column_names.index(c), c, wrong)], ["row 1", f"column {c!r}", "not"]
    if kind == "missing column":
        return [table.drop_columns([c])], ["lacks column(s)", c]
    if kind == "ambiguous column":
        return [table.append_column(f" {c.upper()}", table[c])], ["ambiguous", repr(c)]
    if kind == "empty":
        return [table.slice(0, 0)], ["holds no rows"]
    if kind == "shards":  # two files; the second's label (or index) stored in another type that fits
        cut = draw(st.integers(1, n))
        first, second = table.slice(0, cut), table.slice(cut)
        if task.label_names and second.num_rows:
            second = second.set_column(second.column_names.index("label"), "label",
                                       second["label"].cast(draw(st.sampled_from([pa.int32(), pa.float64()]))))
        return [first, second], None
    if kind == "bad shard":
        return [table, draw(st.sampled_from([b"", b"PAR1", b"PAR1 not a parquet file PAR1"]))], [
            "-00001-of-00002.parquet is not a readable parquet file"]
    if kind == "unlabelled row":
        table = one(task.LABEL, task.UNLABELLED[task.LABEL])
        if role == "train":
            return [table], [*at, f"column {task.LABEL!r}", "no label"]
        return [table], None if n > 1 else ["without a label"]
    if kind == "label value":
        if task.label_names:
            bad = draw(st.sampled_from([len(task.label_names), -2, k + 0.5, float("nan"), 1e30]))
            values = [float(v) for v in table["label"].to_pylist()]
        else:
            bad = draw(st.sampled_from([5.5, 42.0, -3.0, float("nan"), float("inf")]))
            values = table["label"].to_pylist()
        values[k] = bad
        return [column("label", values, pa.float64())], [*at, "column 'label'", "not a "]
    if kind == "choice":
        c = next(iter(task.choices))
        return [one(c, draw(TEXT.filter(lambda s: s not in task.choices[c])))], [*at, f"column {c!r}", "one of"]
    if kind == "no entities":
        return [one("entities", [])], [*at, "column 'entities' is an empty list"]
    # an answer that is none of the row's candidates: only a training split needs one
    table = one("answers", ["\x00 not an entity"])
    return [table], [*at, "none of which is among"] if role == "train" else None


def write_split(root: Path, task, role: str, shards) -> None:
    folder = root / task.hub_id / task.hub_config
    folder.mkdir(parents=True)
    for i, shard in enumerate(shards):
        path = folder / f"{task.splits[role]}-{i:05d}-of-{len(shards):05d}.parquet"
        if isinstance(shard, bytes):
            path.write_bytes(shard)
        else:
            pq.write_table(shard, path)


def one_line(err: pytest.ExceptionInfo, words: list[str]) -> None:
    message = str(err.value)
    assert "\n" not in message, message
    for w in words:
        assert w in message, (w, message)


@pytest.mark.parametrize("name", NAMES)
@PROPERTY
@given(data=st.data())
def test_a_split_reads_as_its_examples_or_fails_in_one_line(name, data):
    task, role = tasks.get(name), data.draw(st.sampled_from(["train", "validation"]))
    shards, words = data.draw(split_case(task, role))
    with tempfile.TemporaryDirectory() as root:
        write_split(Path(root), task, role, shards)
        if words is not None:
            with pytest.raises(DataError) as err:
                load_split(task, role, root=root)
            one_line(err, words)
            return
        examples = load_split(task, role, root=root)
    assert len(examples) == sum(s.num_rows for s in shards)
    assert role != "train" or all(e.target >= 0 for e in examples)
    tokenizes(task, examples)


# --- rows to predict on, broken one way, through a file -------------------------------------------
@st.composite
def rows_case(draw, task):
    """(rows as Python dicts, the bad row's index or None, words a refusal must hold; None: valid)."""
    rows = [unlabelled(task, r) for r in draw(st.lists(row(task), min_size=1, max_size=5))]
    n, k = len(rows), draw(st.integers(0, len(rows) - 1))
    c = draw(st.sampled_from(task.input_columns))
    t = task.features[c]
    kind = draw(st.sampled_from(["keep", "extra key", "any label", "null", "missing key", "wrong type",
                                 "number as text", "lone surrogate"]))
    rows = [dict(r) for r in rows]
    if kind == "keep":
        return rows, None
    if kind == "extra key":
        rows[k]["notes"] = draw(st.one_of(TEXT, st.integers(), st.lists(st.integers())))
        return rows, None
    if kind == "any label":  # labels are not read to predict
        rows[k][task.LABEL] = draw(st.one_of(st.none(), TEXT, st.floats(), st.lists(TEXT)))
        return rows, None
    if kind == "null":
        rows[k][c] = None
        return rows, [f"line {k + 1}", f"column {c!r}", "empty"]
    if kind == "missing key":
        if n == 1:  # no row has it: the column is missing
            del rows[k][c]
            return rows, ["lacks column(s)", c]
        del rows[k][c]
        return rows, [f"line {k + 1}", f"column {c!r}", "empty (null or missing)"]
    if kind == "wrong type":
        rows[k][c] = (draw(st.sampled_from([7, 2.5, True, ["x"], {"a": 1}])) if pa.types.is_string(t)
                      else draw(st.sampled_from(["seven", 2.5, True])) if pa.types.is_integer(t)
                      else draw(st.sampled_from([7, "x", True])))
        return rows, [f"line {k + 1}", f"column {c!r}", "not"]
    if kind == "number as text":  # as CSV hands integers over: read
        ints = [x for x in task.input_columns if pa.types.is_integer(task.features[x])]
        if ints:
            rows[k][ints[0]] = f" {rows[k][ints[0]]} "
        return rows, None
    text = [x for x in task.input_columns if pa.types.is_string(task.features[x])]
    rows[k][text[0]] = "\ud800" + rows[k][text[0]]
    return rows, [f"line {k + 1}", f"column {text[0]!r}", "not valid Unicode"]


def jsonl(rows: list[dict], ascii_only: bool) -> str:
    return "".join(json.dumps(r, ensure_ascii=ascii_only) + "\n" for r in rows)


@pytest.mark.parametrize("name", NAMES)
@PROPERTY
@given(data=st.data())
def test_rows_to_predict_read_as_their_examples_or_fail_in_one_line(name, data):
    """A JSONL file of rows (UTF-8, with or without a BOM; Latin-1 and UTF-16 are refused naming the file)."""
    task = tasks.get(name)
    rows, words = data.draw(rows_case(task))
    surrogate = words is not None and "not valid Unicode" in words
    text = jsonl(rows, ascii_only=surrogate or data.draw(st.booleans()))
    encoding = data.draw(st.sampled_from(["utf-8", "utf-8-sig", "latin-1", "utf-16"]))
    try:
        raw = text.encode(encoding)
    except UnicodeEncodeError:  # Latin-1 cannot hold this text: written as UTF-8
        raw = text.encode("utf-8")
    if encoding == "utf-16":
        words = ["is UTF-16", "save it as UTF-8"]
    elif raw not in (text.encode("utf-8"), text.encode("utf-8-sig")):  # Latin-1 bytes of non-ASCII text
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            words = ["is not UTF-8", "line"]
        else:
            assume(False)  # Latin-1 bytes that are UTF-8 of another text (mojibake): no reader can tell
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "rows.jsonl"
        path.write_bytes(raw)
        if words is not None:
            with pytest.raises(DataError) as err:
                read, names = predict.read_input(path)
                prediction_examples(task, read, "input file rows.jsonl", names.__getitem__)
            one_line(err, words)
            return
        read, names = predict.read_input(path)
        examples = prediction_examples(task, read, "input file rows.jsonl", names.__getitem__)
    numbers = [c for c in task.input_columns if pa.types.is_integer(task.features[c])]  # " 3 " reads as 3
    expected = [task.example(unlabelled(task, {**r, **{c: int(r[c]) for c in numbers}})) for r in rows]
    assert [(e.source, e.texts, e.spans) for e in examples] == [(e.source, e.texts, e.spans) for e in expected]
    assert all(e.target == -1 for e in examples)
    tokenizes(task, examples)


@pytest.mark.parametrize("name", NAMES)
@PROPERTY
@given(data=st.data())
def test_a_csv_reads_as_the_rows_it_was_written_from(name, data):
    """CSV has no types: text stays text, integers are read from their digits and lists or structs from the JSON
    ptune predict writes; a BOM is not part of the first column. A ragged row or a column named twice is refused,
    naming the line."""
    task = tasks.get(name)
    rows = [unlabelled(task, r) for r in data.draw(st.lists(row(task), min_size=1, max_size=4))]
    columns = list(dict.fromkeys(c for r in rows for c in r))
    out = io.StringIO()
    writer = csv.writer(out)
    header = [*columns, columns[0]] if (twice := data.draw(st.booleans()) and data.draw(st.booleans())) else columns
    writer.writerow(header)
    cells = [[json.dumps(r.get(c)) if isinstance(r.get(c), (list, dict)) else r.get(c) for c in columns] for r in rows]
    ragged = data.draw(st.integers(0, len(rows))) if not twice and data.draw(st.booleans()) else None
    for i, line in enumerate(cells):
        writer.writerow([*line, "extra"] if i == ragged else line + [line[0]] * twice)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "rows.csv"
        path.write_bytes(out.getvalue().encode(data.draw(st.sampled_from(["utf-8", "utf-8-sig"]))))
        if twice or ragged is not None and ragged < len(rows):
            with pytest.raises(DataError) as err:
                predict.read_input(path)
            one_line(err, ["line 1", "twice"] if twice else ["line", "fields, the header"])
            return
        read, names = predict.read_input(path)
        examples = prediction_examples(task, read, "input file rows.csv", names.__getitem__)
    assert [(e.source, e.texts, e.spans) for e in examples] == [
        (e.source, e.texts, e.spans) for e in (task.example(r) for r in rows)]


# --- end to end: the real CLI, on the tiny backbones ----------------------------------------------
class ModelLoads(AssertionError):
    pass


@pytest.fixture
def no_model(monkeypatch):
    """Any model load fails the test: bad data must stop every command before it."""
    def refuse(*args, **kwargs):
        raise ModelLoads("a model was loaded before the bad data was reported")

    monkeypatch.setattr(backbones, "load", refuse)


SST2_ROWS = [{"sentence": s, "label": y, "idx": i} for i, (s, y) in enumerate(
    [("a charming film", 1), ("a dull mess", 0), ("warm and witty", 1), ("tedious", 0)] * 2)]


def hub(root: Path, train: list[dict] | bytes, validation: list[dict] | bytes = SST2_ROWS) -> Path:
    """An SST-2 folder in the hub layout; rows are written with the types Python gives them (1.6 stays a float)."""
    folder = root / "nyu-mll" / "glue" / "sst2"
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", train), ("validation", validation)):
        path = folder / f"{split}-00000-of-00001.parquet"
        if isinstance(rows, bytes):
            path.write_bytes(rows)
        else:
            pq.write_table(pa.Table.from_pylist(rows), path)
    return root


TINY = ["model=tiny-bert", "method=prompt_tuning", "task=sst2", "trainer.progress=false", "trainer.max_steps=2",
        "trainer.eval_every=2", "trainer.batch_size=4"]


def fails(capsys, argv: list[str], *words: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ptune: error: ") and "\n" not in err, err
    for w in words:
        assert w in err, (w, err)


@pytest.mark.parametrize("train, validation, words", [
    ([{**r, "label": r["label"] + 0.6 * (r["idx"] == 2)} for r in SST2_ROWS], SST2_ROWS,
     ["train-00000-of-00001.parquet, row 3", "column 'label' holds 1.6", "1 of 8 rows is"]),
    ([{**r, "sentence": None if r["idx"] == 5 else r["sentence"]} for r in SST2_ROWS], SST2_ROWS,
     ["row 6", "column 'sentence' is empty"]),
    (SST2_ROWS, [], ["split 'validation' holds no rows"]),
    ([], SST2_ROWS, ["split 'train' holds no rows"]),
    (b"", SST2_ROWS, ["train-00000-of-00001.parquet is not a readable parquet file"]),
])
def test_train_stops_before_the_model_loads(tmp_path, capsys, no_model, train, validation, words):
    root = hub(tmp_path / "hub", train, validation)
    fails(capsys, ["train", *TINY, f"data.root={root}", f"run_dir={tmp_path / 'run'}"], *words)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A run trained on valid data (the model does load then), for eval and predict."""
    base = tmp_path_factory.mktemp("trained")
    root = hub(base / "hub", SST2_ROWS)
    assert main(["train", *TINY, f"data.root={root}", f"run_dir={base / 'run'}"]) == 0
    return base / "run"


def test_eval_stops_before_the_model_loads(trained, tmp_path, capsys, no_model):
    bad = [{**r, "label": 7 if r["idx"] == 3 else r["label"]} for r in SST2_ROWS]
    root = hub(tmp_path / "hub", SST2_ROWS, bad)
    fails(capsys, ["eval", f"run={trained}", f"data.root={root}"],
          "validation-00000-of-00001.parquet, row 4", "column 'label' holds 7", "negative, positive")


@pytest.mark.parametrize("content, words", [
    ('{"sentence": "fine"}\n{"sentence": 42}\n{"sentence": ["a"]}\n', ["line 2", "holds 42, not text", "2 of 3 rows"]),
    ('{"sentence": "fine"}\n\n{"sentence": null}\n', ["line 3", "column 'sentence' is empty"]),
    ('{"sentence": "fine", "sentence": "two"}\n', ["line 1", "names 'sentence' twice"]),
    ('{"sentence": "caf\xe9"}\n'.encode("latin-1"), ["line 1 is not UTF-8 (byte 0xe9)"]),
])
def test_predict_stops_before_the_model_loads(trained, tmp_path, capsys, monkeypatch, content, words):
    monkeypatch.setattr(predict, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    path = tmp_path / "in.jsonl"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    fails(capsys, ["predict", f"run={trained}", f"input={path}"], *words)


def test_valid_data_still_trains_evaluates_and_predicts(trained, tmp_path, capsys):
    """The other side of the property, end to end: the same commands on valid data (extra columns, a BOM, CSV
    text for numbers) succeed."""
    root = hub(tmp_path / "hub", SST2_ROWS)
    assert main(["eval", f"run={trained}", f"data.root={root}"]) == 0
    path = tmp_path / "in.csv"
    path.write_bytes("\ufeffsentence,notes\na charming film,1\n\"tedious, \"\"dull\"\"\",\n".encode())
    assert main(["predict", f"run={trained}", f"input={path}", f"out={tmp_path / 'out.jsonl'}"]) == 0
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["sentence"] for r in out] == ["a charming film", 'tedious, "dull"']
    assert all(r["prediction"] in ("negative", "positive") for r in out)
