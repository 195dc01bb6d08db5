"""ptune.train / ptune.load / Run.predict / Run.export, and docs/api.md's example executed as written."""

from __future__ import annotations

import re
import sys
import types

import pandas as pd
import pytest

import ptune
from ptune import tasks
from ptune.errors import CheckpointError, ConfigError
from tests.conftest import REPO
from tests.tasks.conftest import root_for

TINY = {"trainer.max_steps": 2, "trainer.eval_every": 2, "data.train_limit": 16, "data.eval_limit": 8,
        "trainer.progress": False, "model": "tiny-bert", "method": "prompt_tuning"}


def python_blocks(path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_the_docs_example_runs_as_written(tmp_path, monkeypatch):
    """The first python block of docs/api.md, with only the model, the step count and the paths swapped for
    a tiny run."""
    code = python_blocks(REPO / "docs" / "api.md")[0]
    swaps = {'"model": "minilm"': '"model": "tiny-bert"',
             '"trainer.max_steps": 300': '"trainer.max_steps": 2, "trainer.eval_every": 2, "data.train_limit": 16, '
                                         '"data.eval_limit": 8, "trainer.progress": False',
             '"../shared/data/hub"': repr(str(root_for(tasks.get("sst2"), "train")))}
    for old, new in swaps.items():
        assert old in code, old
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/api.md", "exec"), {})
    assert (tmp_path / "outputs" / "api-pt-sst2-minilm" / "prompt.safetensors").is_file()


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory):
    base = tmp_path_factory.mktemp("api")
    root = str(root_for(tasks.get("sst2"), "train"))
    one = ptune.train(dict(TINY, task="sst2", run_dir=str(base / "sst2"), **{"data.root": root}))
    two = ptune.train([f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in TINY.items()]
                      + ["task=[sst2,mrpc]", f"run_dir={base / 'mix'}", f"data.root={root}"])
    return {"sst2": one["run_dir"], "mix": two["run_dir"], "results": one}


def test_train_returns_the_results_the_cli_writes(run_dirs):
    import json
    from pathlib import Path

    stored = json.loads((Path(run_dirs["sst2"]) / "results.json").read_text())
    assert run_dirs["results"]["best"] == stored["best"] and run_dirs["results"]["steps"] == 2


def test_predict_takes_strings_dicts_and_dataframes(run_dirs):
    run = ptune.load(run_dirs["sst2"])
    texts = ["ok", "a long , winding and thoroughly tedious sentence " * 8, "fine"]
    from_strings = run.predict(texts)
    assert isinstance(from_strings, pd.DataFrame) and list(from_strings["sentence"]) == texts
    assert {"prediction", "score_negative", "score_positive"} <= set(from_strings.columns)
    from_dicts = run.predict([{"sentence": t} for t in texts])
    from_frame = run.predict(pd.DataFrame({"sentence": texts}))
    pd.testing.assert_frame_equal(from_strings, from_dicts)
    pd.testing.assert_frame_equal(from_strings, from_frame)


def test_a_pair_task_refuses_strings_naming_its_columns(run_dirs):
    run = ptune.load(run_dirs["mix"])
    assert run.tasks == ["sst2", "mrpc"]
    with pytest.raises(ConfigError, match="choose one of: sst2, mrpc"):
        run.predict(["a"])
    with pytest.raises(ConfigError, match="task 'mrpc' reads sentence1, sentence2: pass dicts or a DataFrame"):
        run.predict(["a", "b"], task="mrpc")
    out = run.predict([{"sentence1": "it rains", "sentence2": "it pours"}], task="mrpc")
    assert out["prediction"][0] in ("not_equivalent", "equivalent")


def test_load_refuses_a_folder_without_a_prompt(tmp_path):
    with pytest.raises(CheckpointError, match="not a ptune run folder"):
        ptune.load(tmp_path)


def test_export_calls_the_peft_exporter_lazily(run_dirs, monkeypatch, tmp_path):
    run = ptune.load(run_dirs["sst2"])
    with pytest.raises(ConfigError, match="choose one of: peft"):
        run.export(format="onnx")
    calls = []
    fake = types.ModuleType("ptune.export.peft")
    fake.export = lambda run_dir, out, task: calls.append((run_dir, out, task)) or "done"
    package = types.ModuleType("ptune.export")
    package.peft = fake
    monkeypatch.setitem(sys.modules, "ptune.export", package)
    monkeypatch.setitem(sys.modules, "ptune.export.peft", fake)
    assert run.export(out=tmp_path / "adapter") == "done"
    assert [(str(a), b, c) for a, b, c in calls] == [(run_dirs["sst2"], tmp_path / "adapter", None)]


@pytest.mark.parametrize("bad,words", [
    ("model=tiny-bert", ["got the string 'model=tiny-bert'", "['model=tiny-bert']"]),
    ([1, 2], ["list of 'key=value' strings", "int"]),
    (42, ["got int"]),
    ({1: "x"}, ["dotted strings", "1"]),
])
def test_train_names_the_argument_type_it_expected(bad, words):
    with pytest.raises(ConfigError) as err:
        ptune.train(bad)
    for w in words:
        assert w in str(err.value), str(err.value)


def test_predict_takes_one_text_or_one_row_whole(run_dirs):
    run = ptune.load(run_dirs["sst2"])
    one = run.predict("a charming and often affecting journey")  # one row, not one per character
    assert len(one) == 1 and one["sentence"][0] == "a charming and often affecting journey"
    assert len(run.predict({"sentence": "dull"})) == 1
    with pytest.raises(ConfigError, match="got int"):
        run.predict(5)


def test_predict_names_a_bad_row_as_the_caller_counts_it(run_dirs):
    """A list's position, a DataFrame's index label: nothing is predicted when one row fails the task's schema."""
    import pandas as pd

    from ptune.errors import DataError

    run = ptune.load(run_dirs["sst2"])
    with pytest.raises(DataError, match=r"run.predict input, data\[2\]: column 'sentence' holds 7, not text"):
        run.predict([{"sentence": "fine"}, {"sentence": "ok"}, {"sentence": 7}])
    frame = pd.DataFrame({"sentence": ["fine", None]}, index=["a", "b"])
    with pytest.raises(DataError, match="the row at index 'b': column 'sentence' is empty"):
        run.predict(frame)
