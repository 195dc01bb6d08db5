"""The data validation layer (ptune/tasks/schema.py): each task declares the hub's schema, and every class of bad
data found in issue 29 is one line naming the file, the row as the user counts it, the column and how many rows
are bad, raised while the split is read (before any model could load)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ptune import tasks
from ptune.errors import DataError
from ptune.tasks.data import load_split, prediction_examples, split_files, split_rows
from tests.tasks.conftest import FIXTURE_HUB, SHARED_HUB


@pytest.mark.parametrize("name", sorted(tasks.TASKS))
def test_every_task_declares_the_hubs_schema(name):
    """The declared features are the hub files' own (names and Arrow types), and the label set is the hub's
    ClassLabel names, for every split file of the task in the offline mirror and the fixtures."""
    task = tasks.get(name)
    files = [p for root in (SHARED_HUB, FIXTURE_HUB) for split in task.splits.values()
             for p in split_files(root / task.hub_id / task.hub_config, split)]
    assert files
    for path in files:
        stored = pq.read_schema(path)
        assert dict(zip(stored.names, stored.types, strict=True)) == task.features, path
        label = json.loads(stored.metadata[b"huggingface"])["info"]["features"].get("label", {})
        assert label.get("names", []) == list(task.label_names), path
    assert {*task.input_columns, task.LABEL, *task.OPTIONAL_INPUTS} <= set(task.features)


def S(**kw) -> dict:  # noqa: N802  (an SST-2 row)
    return {"sentence": "a fine film", "label": 1, "idx": 0, **kw}


def P(label: float) -> dict:  # noqa: N802  (an STS-B row)
    return {"sentence1": "a man plays", "sentence2": "a man sings", "label": label, "idx": 0}


R = {"passage": "Ann met Bob.", "query": "@placeholder smiled.", "entities": ["Ann", "Bob"], "answers": ["Bob"],
     "idx": {"passage": 0, "query": 0}}
COPA = {"premise": "It rained.", "choice1": "The grass got wet.", "choice2": "The sun shone.", "question": "effect",
        "label": 0, "idx": 0}
MULTIRC = {"paragraph": "Sent 1: Hi.", "question": "Q?", "answer": "A", "label": 1,
           "idx": {"paragraph": 0, "question": 0, "answer": 0}}
SST2_EMPTY = pa.schema([("sentence", pa.string()), ("label", pa.int64()), ("idx", pa.int32())])


def write_split(root, name: str, role: str, *shards) -> None:
    """Each shard (rows, a pyarrow table, or raw bytes) as one parquet file of the task's split, in order."""
    task = tasks.get(name)
    folder = root / task.hub_id / task.hub_config
    folder.mkdir(parents=True, exist_ok=True)
    for k, shard in enumerate(shards):
        path = folder / f"{task.splits[role]}-{k:05d}-of-{len(shards):05d}.parquet"
        if isinstance(shard, bytes):
            path.write_bytes(shard)
        else:
            pq.write_table(shard if isinstance(shard, pa.Table) else pa.Table.from_pylist(shard), path)


def refused(tmp_path, name: str, role: str, *shards) -> str:
    write_split(tmp_path, name, role, *shards)
    with pytest.raises(DataError) as err:
        load_split(tasks.get(name), role, root=tmp_path)
    message = str(err.value)
    assert "\n" not in message
    return message


CLASSES = [  # (class of bad data, task, role, shards, words the one line must hold)
    ("a null text", "sst2", "train", [[S(), S(sentence=None)]],
     ["train-00000-of-00001.parquet, row 2", "column 'sentence' is empty", "1 of 2 rows is"]),
    ("an integer text", "sst2", "train", [[S(sentence=5), S(sentence=6)]],
     ["row 1", "column 'sentence' holds 5, not text", "2 of 2 rows are"]),
    ("a list text", "sst2", "validation", [[S(sentence=["a", "b"]), S(sentence=[])]],
     ["row 1", "holds ['a', 'b'], not text", "2 of 2"]),
    ("string labels", "sst2", "train", [[S(label="positive"), S(label="negative")]],
     ["row 1", "column 'label' holds 'positive', not a label of sst2 (0..1: negative, positive"]),
    ("a missing column", "sst2", "train", [[{"text": "a fine film", "label": 1}]],
     ["lacks column(s) sentence", "needs: sentence, label", "train-00000-of-00001.parquet"]),
    ("a column under another case", "sst2", "train", [[{"Sentence": "a fine film", "label": 1}]],
     ["lacks column(s) sentence", "it has 'Sentence'"]),
    ("two columns that could both be it", "sst2", "train", [[{**S(), "Sentence ": "x"}]],
     ["'sentence', 'Sentence '", "ambiguous"]),
    ("fractional labels", "sst2", "train", [[S(label=1.0), S(label=0.6), S(label=1.7)]],
     ["row 2", "holds 0.6", "2 of 3 rows are"]),
    ("a label outside the head", "cb", "validation", [[{"premise": "p", "hypothesis": "h", "label": 3, "idx": 0}]],
     ["holds 3", "0..2: entailment, contradiction, neutral"]),
    ("an STS-B score of 42", "stsb", "train", [[P(1.0), P(42.0)]], ["row 2", "holds 42.0", "0 to 5"]),
    ("an STS-B score of -3", "stsb", "train", [[P(-3.0)]], ["row 1", "holds -3.0", "-1 for an unlabelled row"]),
    ("an STS-B NaN", "stsb", "validation", [[P(2.0), P(float("nan"))]], ["row 2", "holds nan", "0 to 5"]),
    ("an empty validation split", "sst2", "validation", [SST2_EMPTY.empty_table()],
     ["split 'validation' holds no rows", "validation-00000-of-00001.parquet"]),
    ("an empty training split", "sst2", "train", [[]], ["split 'train' holds no rows"]),
    ("a 0-byte parquet file", "sst2", "train", [[S()], b""],
     ["train-00001-of-00002.parquet is not a readable parquet file", "size is 0"]),
    ("a corrupt parquet file", "sst2", "train", [b"PAR1 this is not parquet PAR1"], ["not a readable parquet file"]),
    ("shards with different schemas", "sst2", "train", [[S()], [S(label="1"), S(label="x")]],
     ["train-00001-of-00002.parquet, row 2", "holds 'x'", "1 of 2 rows"]),
    ("a training row without a label", "sst2", "train", [[S(), S(label=-1)]],
     ["row 2", "no label", "training needs every row labelled"]),
    ("an unlabelled evaluation split", "sst2", "validation", [[S(label=-1)] * 3], ["3 of 3 rows without a label"]),
    ("a COPA question that is neither cause nor effect", "copa", "train", [[COPA, {**COPA, "question": "why"}]],
     ["row 2", "column 'question' holds 'why', not one of: cause, effect"]),
    ("a MultiRC idx with an empty field", "multirc", "train",
     [[{**MULTIRC, "idx": {"paragraph": 0, "question": None, "answer": 0}}]],
     ["column 'idx'", "empty (null) field or item"]),
    ("a MultiRC idx that is not a struct", "multirc", "train", [[{**MULTIRC, "idx": 3}]],
     ["column 'idx' holds 3, not a value of type struct<paragraph"]),
    ("a ReCoRD row without entities", "record", "validation", [[R, {**R, "entities": []}]],
     ["row 2", "column 'entities' is an empty list"]),
    ("a ReCoRD entity that is null", "record", "train", [[{**R, "entities": ["Ann", None]}]],
     ["column 'entities'", "empty (null) field or item"]),
    ("a ReCoRD answer that is none of the entities", "record", "train", [[R, {**R, "answers": ["Carl"]}]],
     ["row 2", "column 'answers' has ['Carl'], none of which is among the row's entities"]),
]


@pytest.mark.parametrize("what, name, role, shards, words", CLASSES, ids=[c[0] for c in CLASSES])
def test_each_class_of_bad_data_is_one_line_naming_file_row_and_column(tmp_path, what, name, role, shards, words):
    message = refused(tmp_path, name, role, *shards)
    assert f"task {name!r}" in message or "is not a readable parquet file" in message  # that names just the file
    for w in words:
        assert w in message, (w, message)


def test_types_that_convert_exactly_are_read(tmp_path):
    """Whole floats and the text of integers are labels; shards with different schemas that each fit are one split;
    extra columns and a missing unread column (idx) are ignored."""
    write_split(tmp_path, "sst2", "train", [S(label=1.0), S(label=0.0)], [{"sentence": "ok", "label": "1", "note": 3}])
    examples = load_split(tasks.get("sst2"), "train", root=tmp_path)
    assert [e.target for e in examples] == [1, 0, 1]


def test_stsb_test_rows_stay_unlabelled_and_scores_at_the_ends_are_kept(tmp_path):
    write_split(tmp_path, "stsb", "validation", [P(0.0), P(5.0), P(-1.0)])
    examples = load_split(tasks.get("stsb"), "validation", root=tmp_path)
    assert [e.label for e in examples] == [0.0, 5.0, None]


def test_record_reads_entity_spans_as_a_list_of_mentions_too(tmp_path):
    spans = [{"text": "Bob", "start": 8, "end": 11}, {"text": "Ann", "start": 0, "end": 3}]
    write_split(tmp_path, "record", "train", [{**R, "entity_spans": spans}])
    (example,) = load_split(tasks.get("record"), "train", root=tmp_path)
    assert example.candidates == ("Bob", "Ann") and example.target == 0


def test_a_split_to_predict_on_ignores_labels_but_not_its_inputs(tmp_path):
    write_split(tmp_path, "sst2", "test", [S(label=-1), S(label=7)])
    assert [r["label"] for r in split_rows(tasks.get("sst2"), "test", root=tmp_path)] == [-1, 7]
    write_split(tmp_path, "sst2", "test", [S(label=-1), S(sentence=None)])
    with pytest.raises(DataError, match="row 2: column 'sentence' is empty"):
        split_rows(tasks.get("sst2"), "test", root=tmp_path)


def test_only_the_rows_a_limit_takes_are_read(tmp_path):
    write_split(tmp_path, "sst2", "train", [S(), S()], [S(label=0.5)])
    assert len(load_split(tasks.get("sst2"), "train", root=tmp_path, limit=2)) == 2
    with pytest.raises(DataError, match="train-00001-of-00002.parquet, row 1"):
        load_split(tasks.get("sst2"), "train", root=tmp_path, limit=3)


ROWS = [  # rows to predict on (a JSONL file, a list given to the API): (rows, words)
    ([{"sentence": "ok"}, {"sentence": None}], ["line 2", "column 'sentence' is empty"]),
    ([{"sentence": "ok"}, {"text": "no sentence key"}], ["line 2", "column 'sentence' is empty (null or missing)"]),
    ([{"sentence": "ok"}, {"sentence": 42}, {"sentence": ["a"]}], ["line 2", "holds 42, not text", "2 of 3 rows"]),
    ([{"sentence": "\ud800 half a character"}], ["line 1", "not valid Unicode"]),
]


@pytest.mark.parametrize("rows, words", ROWS)
def test_rows_to_predict_on_are_named_by_their_line(rows, words):
    with pytest.raises(DataError) as err:
        prediction_examples(tasks.get("sst2"), rows, "input file in.jsonl", lambda i: f"line {i + 1}")
    message = str(err.value)
    assert "\n" not in message and message.startswith("input file in.jsonl, line")
    for w in words:
        assert w in message, (w, message)


def test_rows_to_predict_on_take_text_for_numbers_and_json_for_structs():
    """CSV has no types: WSC's span indices and MultiRC's idx (as ptune predict writes it to CSV) still read."""
    wsc = {"text": "Ann saw Bob.", "span1_index": "2", "span2_index": " 0 ", "span1_text": "Bob.", "span2_text": "Ann"}
    (example,) = prediction_examples(tasks.get("wsc"), [wsc], "rows")
    assert example.spans == ((8, 12), (0, 3))
    idx = json.dumps(MULTIRC["idx"])
    (example,) = prediction_examples(tasks.get("multirc"), [{**MULTIRC, "idx": idx, "label": "?"}], "rows")
    assert example.group == 0 and example.target == -1
