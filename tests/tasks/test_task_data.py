"""The split loader: local hub-layout folders, the env root, limits, shards, and its one-line errors."""

from __future__ import annotations

import shutil

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ptune.errors import DataError
from ptune.tasks import load_rows
from ptune.tasks.data import ENV_ROOT, resolve_root


def test_missing_folder_names_the_path_and_the_settings(tmp_path):
    with pytest.raises(DataError) as err:
        load_rows("aps/super_glue", "boolq", "validation", root=tmp_path)
    message = str(err.value)
    assert "\n" not in message
    assert str(tmp_path / "aps" / "super_glue" / "boolq") in message
    assert "data.root=" in message and ENV_ROOT in message


def test_missing_split_lists_the_splits_that_exist(tmp_path, fixture_hub):
    folder = tmp_path / "nyu-mll" / "glue" / "qnli"
    folder.mkdir(parents=True)
    shutil.copy(fixture_hub / "nyu-mll/glue/qnli/train-00000-of-00001.parquet", folder)
    with pytest.raises(DataError) as err:
        load_rows("nyu-mll/glue", "qnli", "validation", root=tmp_path)
    message = str(err.value)
    assert "\n" not in message
    assert "'validation'" in message and str(folder) in message and "splits there: train" in message
    assert ENV_ROOT in message


def test_env_root_is_used_when_no_root_is_given(monkeypatch, fixture_hub):
    monkeypatch.setenv(ENV_ROOT, str(fixture_hub))
    assert resolve_root(None) == fixture_hub
    rows = load_rows("aps/super_glue", "cb", "validation")
    assert len(rows) == 6 and set(rows[0]) == {"premise", "hypothesis", "idx", "label"}
    assert resolve_root("elsewhere").name == "elsewhere"  # the argument wins


def test_limit_takes_the_first_rows(fixture_hub):
    rows = load_rows("nyu-mll/glue", "mnli", "validation_matched", root=fixture_hub, limit=2)
    assert [r["idx"] for r in rows] == [0, 1]
    assert load_rows("nyu-mll/glue", "mnli", "validation_matched", root=fixture_hub, limit=0) == []


def test_rows_equal_what_datasets_reads(fixture_hub):
    path = fixture_hub / "aps/super_glue/record/validation-00000-of-00001.parquet"
    expected = datasets.load_dataset(
        "parquet", data_files={"validation": str(path)}, split="validation"
    ).to_list()
    assert load_rows("aps/super_glue", "record", "validation", root=fixture_hub) == expected
    assert isinstance(expected[0]["entity_spans"]["text"], list)


def _write(path, values):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"idx": pa.array(values, pa.int32())}), path)


def test_shards_are_read_in_order_and_limit_spans_them(tmp_path):
    folder = tmp_path / "org" / "name" / "cfg"
    _write(folder / "train-00001-of-00002.parquet", [3, 4])
    _write(folder / "train-00000-of-00002.parquet", [0, 1, 2])
    assert [r["idx"] for r in load_rows("org/name", "cfg", "train", root=tmp_path)] == [0, 1, 2, 3, 4]
    assert [r["idx"] for r in load_rows("org/name", "cfg", "train", root=tmp_path, limit=4)] == [0, 1, 2, 3]


def test_parquet_converter_layout_is_read_too(tmp_path):
    _write(tmp_path / "org" / "name" / "cfg" / "validation" / "0000.parquet", [7])
    assert load_rows("org/name", "cfg", "validation", root=tmp_path) == [{"idx": 7}]


def test_hub_failure_is_a_one_line_data_error(monkeypatch):
    monkeypatch.delenv(ENV_ROOT, raising=False)

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'aps/super_glue' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError) as err:
        load_rows("aps/super_glue", "boolq", "train")
    message = str(err.value)
    assert "\n" not in message and "aps/super_glue/boolq" in message and ENV_ROOT in message


def test_reading_from_the_hub_is_announced_in_one_line(monkeypatch, capsys):
    """Nothing waits silently: a split read over the network says so first, and how to read local files instead."""
    monkeypatch.delenv(ENV_ROOT, raising=False)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: datasets.Dataset.from_list([{"idx": 0}]))
    load_rows("nyu-mll/glue", "rte", "train")
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1 and "nyu-mll/glue/rte" in said[0] and "data.root=" in said[0]


def test_hub_is_asked_for_the_limited_split(monkeypatch):
    monkeypatch.delenv(ENV_ROOT, raising=False)
    calls = []

    def fake(hub_id, config, split):
        calls.append((hub_id, config, split))
        return datasets.Dataset.from_list([{"idx": 0}])

    monkeypatch.setattr(datasets, "load_dataset", fake)
    assert load_rows("nyu-mll/glue", "rte", "train", limit=5) == [{"idx": 0}]
    assert calls == [("nyu-mll/glue", "rte", "train[:5]")]


def test_negative_limit_is_refused(fixture_hub):
    with pytest.raises(DataError, match="limit"):
        load_rows("aps/super_glue", "cb", "train", root=fixture_hub, limit=-1)
