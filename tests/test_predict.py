"""ptune predict: predictions and scores in input order, the test split, mixtures, formats, one-line errors."""

from __future__ import annotations

import json
import math

import pyarrow.parquet as pq
import pytest

from ptune import predict, tasks
from ptune.cli import main
from ptune.tasks.data import prediction_examples
from tests.tasks.conftest import SHARED_HUB, root_for

LONG = " ".join(["a long , winding and thoroughly tedious sentence"] * 12)
VARIED = ["ok", LONG, "a fine film", "bad", "the acting is superb and the story moving , " * 3, "meh"]


def train(path, model, task, *extra, method="prompt_tuning"):
    names = task.split(",")
    root = root_for(tasks.get(names[0]), "train")
    task_arg = f"task=[{task}]" if len(names) > 1 else f"task={task}"
    assert main(["train", f"model={model}", f"method={method}", task_arg, f"data.root={root}",
                 "trainer.max_steps=2", "trainer.eval_every=2", "data.train_limit=16", "data.eval_limit=8",
                 "trainer.progress=false", "trainer.eval_batch_size=4", f"run_dir={path}", *extra]) == 0
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    return {"bert": train(base / "bert", "tiny-bert", "sst2"), "t5": train(base / "t5", "tiny-t5", "sst2")}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("family", ["bert", "t5"])
def test_predictions_come_back_in_input_order_with_scores(runs, family, tmp_path, capsys):
    """Rows of very different lengths run length-sorted in batches of 4, yet each comes back at its own
    place, with the scores it gets when predicted alone."""
    source = write_jsonl(tmp_path / "reviews.jsonl", [{"sentence": s, "id": i} for i, s in enumerate(VARIED)])
    assert main(["predict", f"run={runs[family]}", f"input={source}"]) == 0
    done = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    out = runs[family] / "predictions" / "sst2-reviews.jsonl"
    assert done["out"] == str(out) and done["rows"] == len(VARIED)
    rows = read_jsonl(out)
    assert [(r["id"], r["sentence"]) for r in rows] == list(enumerate(VARIED))
    cfg = predict.run_config(runs[family])
    loaded = predict.load(runs[family], cfg)
    for r in rows:
        alone = loaded.predict(0, [{"sentence": r["sentence"]}], "one row")[0]
        assert alone["prediction"] == r["prediction"] in ("negative", "positive")
        assert alone["score_positive"] == pytest.approx(r["score_positive"], abs=1e-4)
        assert r["score_negative"] + r["score_positive"] == pytest.approx(1.0)
        best = max(("negative", "positive"), key=lambda n: r[f"score_{n}"])
        assert best == r["prediction"]


def test_eval_is_unchanged_by_the_scores(runs):
    """loop.predict with scores gives the same predictions eval scores."""
    from ptune import run
    from ptune.training.loop import evaluate
    from ptune.training.loop import predict as loop_predict

    cfg = predict.run_config(runs["bert"], [f"data.root={root_for(tasks.get('sst2'))}"])
    parts = run.build(cfg, train=False)
    parts.load_prompt(runs["bert"] / "prompt.safetensors")
    plain = loop_predict(parts, parts.eval, 3)
    preds, raw = loop_predict(parts, parts.eval, 3, with_scores=True)
    assert preds == plain and len(raw) == len(plain)
    assert all(p == max(range(2), key=lambda c, s=s: s[c]) for p, s in zip(preds, raw, strict=True))
    assert evaluate(parts, parts.eval) == parts.task.compute_metrics(preds, parts.eval.examples)


@pytest.mark.parametrize("ext", ["csv", "parquet"])
def test_output_format_follows_the_extension(runs, tmp_path, ext):
    source = write_jsonl(tmp_path / "in.jsonl", [{"sentence": s} for s in VARIED])
    out = tmp_path / f"preds.{ext}"
    assert main(["predict", f"run={runs['bert']}", f"input={source}", f"out={out}"]) == 0
    if ext == "parquet":
        rows = pq.read_table(out).to_pylist()
    else:
        import csv

        rows = list(csv.DictReader(out.open()))
    assert [r["sentence"] for r in rows] == VARIED
    assert {"prediction", "score_negative", "score_positive"} <= set(rows[0])
    assert not list(tmp_path.glob(".*.tmp"))  # the temp file was renamed


def test_csv_and_parquet_inputs_read_the_same(runs, tmp_path):
    import pyarrow as pa

    rows = [{"sentence": s} for s in VARIED]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    (tmp_path / "in.csv").write_text("sentence\n" + "".join(f'"{s}"\n' for s in VARIED))
    outs = []
    for name in ("in.parquet", "in.csv"):
        out = tmp_path / f"{name}.jsonl"
        assert main(["predict", f"run={runs['bert']}", f"input={tmp_path / name}", f"out={out}"]) == 0
        outs.append(read_jsonl(out))
    assert outs[0] == outs[1]


@pytest.mark.skipif(not (SHARED_HUB / "nyu-mll/glue/sst2").is_dir(), reason="needs GLUE in ../shared")
def test_the_unlabelled_test_split_predicts(runs, capsys):
    """GLUE's test parquet carries label -1 everywhere: eval refuses it, predict reads it."""
    assert main(["predict", f"run={runs['bert']}", "data.eval_split=test", f"data.root={SHARED_HUB}",
                 "data.eval_limit=5"]) == 0
    rows = read_jsonl(runs["bert"] / "predictions" / "sst2-test.jsonl")
    assert len(rows) == 5 and all(r["label"] == -1 for r in rows)
    assert [r["idx"] for r in rows] == list(range(5))
    assert all(r["prediction"] in ("negative", "positive") for r in rows)


def test_a_split_is_read_whole_unless_this_command_limits_it(runs, monkeypatch, capsys):
    """The run was trained with data.eval_limit=8 (saved in its config.yaml); predict ignores that."""
    seen = []
    monkeypatch.setattr(tasks, "split_rows", lambda *a, **k: seen.append(k["limit"]) or [])
    assert main(["predict", f"run={runs['bert']}", "data.eval_split=test"]) == 2
    assert main(["predict", f"run={runs['bert']}", "data.eval_split=test", "data.eval_limit=3"]) == 2
    assert seen == [None, 3] and "split 'test' holds no rows" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(tasks.TASKS))
def test_every_task_reads_rows_of_its_input_columns_unlabelled(name):
    """The data layer accepts unlabelled rows: the task's input columns alone give the labelled example's
    input, with no target."""
    task = tasks.get(name)
    rows = tasks.load_rows(task.hub_id, task.hub_config, task.splits["validation"], root=root_for(task), limit=3)
    optional = ("entity_spans",)  # ReCoRD orders its candidates by them when given (else sorted entities)
    bare = [{c: r[c] for c in (*task.input_columns, *optional) if c in r} for r in rows]
    for row, ex in zip(rows, prediction_examples(task, bare, "rows"), strict=True):
        full = task.example(row)
        assert ex.target == -1 and (ex.source, ex.texts, ex.spans) == (full.source, full.texts, full.spans)


def test_stsb_predicts_a_value(tmp_path):
    run_dir = train(tmp_path / "stsb", "tiny-bert", "stsb")
    source = write_jsonl(tmp_path / "pairs.jsonl", [{"sentence1": "a man plays", "sentence2": s} for s in VARIED])
    assert main(["predict", f"run={run_dir}", f"input={source}"]) == 0
    rows = read_jsonl(run_dir / "predictions" / "stsb-pairs.jsonl")
    assert all(isinstance(r["prediction"], float) and math.isfinite(r["prediction"]) for r in rows)


def test_a_mixture_run_predicts_the_task_chosen(tmp_path, capsys):
    run_dir = train(tmp_path / "mix", "tiny-bert", "sst2,mrpc")
    source = write_jsonl(tmp_path / "pairs.jsonl", [{"sentence1": "it rains", "sentence2": "it pours"}])
    assert main(["predict", f"run={run_dir}", f"input={source}"]) == 2
    assert "needs task=<one of its tasks>; choose one of: sst2, mrpc" in capsys.readouterr().err
    assert main(["predict", f"run={run_dir}", f"input={source}", "task=rte"]) == 2
    assert "has no task 'rte'; choose one of: sst2, mrpc" in capsys.readouterr().err
    assert main(["predict", f"run={run_dir}", f"input={source}", "task=mrpc"]) == 0
    row = read_jsonl(run_dir / "predictions" / "mrpc-pairs.jsonl")[0]
    assert row["prediction"] in ("not_equivalent", "equivalent") and "score_equivalent" in row


def one_line(capsys, argv, monkeypatch) -> str:
    """Run ``argv``; it must fail with exit 2 and one line, before any model loads."""
    monkeypatch.setattr(predict, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ptune: error: ") and "\n" not in err, err
    return err


@pytest.mark.parametrize("case, expect", [
    ("missing", "does not exist"),
    ("unknown_ext", "choose one of: .jsonl, .csv, .parquet"),
    ("empty", "holds no rows"),
    ("bad_json", "line 1 is not valid JSON"),
    ("wrong_columns", "lacks column(s) sentence; task 'sst2' needs: sentence"),
    ("no_prompt", "has no prompt.safetensors"),
    ("no_config", "is not a ptune run folder (no config.yaml)"),
    ("own_files", "would overwrite the run's own files"),
    ("bad_out_ext", "out=preds.txt has extension '.txt'"),
    ("no_run", "ptune predict needs run="),
])
def test_bad_inputs_fail_in_one_line_before_the_model_loads(runs, tmp_path, capsys, monkeypatch, case, expect):
    import shutil

    run_dir = runs["bert"]
    source = write_jsonl(tmp_path / "in.jsonl", [{"sentence": "fine"}])
    argv = ["predict", f"run={run_dir}", f"input={source}"]
    if case == "missing":
        argv[2] = f"input={tmp_path / 'nope.jsonl'}"
    elif case == "unknown_ext":
        argv[2] = f"input={tmp_path / 'in.txt'}"
    elif case == "empty":
        (tmp_path / "empty.jsonl").write_text("\n")
        argv[2] = f"input={tmp_path / 'empty.jsonl'}"
    elif case == "bad_json":
        (tmp_path / "bad.jsonl").write_text("{not json\n")
        argv[2] = f"input={tmp_path / 'bad.jsonl'}"
    elif case == "wrong_columns":
        argv[2] = f"input={write_jsonl(tmp_path / 'w.jsonl', [{'text': 'fine'}])}"
    elif case in ("no_prompt", "no_config"):
        copy = tmp_path / "copy"
        shutil.copytree(run_dir, copy)
        (copy / ("prompt.safetensors" if case == "no_prompt" else "config.yaml")).unlink()
        argv[1] = f"run={copy}"
    elif case == "own_files":
        argv.append(f"out={run_dir / 'metrics.jsonl'}")
        before = (run_dir / "metrics.jsonl").read_bytes()
    elif case == "bad_out_ext":
        argv.append("out=preds.txt")
    elif case == "no_run":
        argv.pop(1)
    assert expect in one_line(capsys, argv, monkeypatch)
    if case == "own_files":
        assert (run_dir / "metrics.jsonl").read_bytes() == before


@pytest.mark.parametrize("family", ["bert", "t5"])
@pytest.mark.parametrize("name", sorted(tasks.TASKS))
def test_every_task_predicts_on_both_families(name, family):
    """Unlabelled rows of every task through both families: a prediction of the task's kind and scores
    that sum to one, per row."""
    from ptune import run
    from tests.conftest import tiny_config

    task = tasks.get(name)
    rows = tasks.load_rows(task.hub_id, task.hub_config, task.splits["validation"], root=root_for(task), limit=4)
    bare = [{c: r[c] for c in (*task.input_columns, "entity_spans") if c in r} for r in rows]
    cfg = tiny_config(family, "prompt_tuning", f"task={name}")
    loaded = predict.Loaded(cfg.resolved_run_dir(), run.build(cfg, train=False, examples={"eval": []}), 0)
    for out in loaded.predict(0, bare, "rows"):
        scores = [v for k, v in out.items() if k.startswith("score_")] or out.get("scores")
        if task.head == "regression":
            assert isinstance(out["prediction"], float) and scores is None
        else:
            assert sum(scores) == pytest.approx(1.0)
            assert out["prediction"] in (task.label_names or [out["prediction"]])


def test_csv_values_arrive_as_text_and_still_read(tmp_path):
    """CSV has no types: WSC's span indices come back as strings and still place the spans."""
    import csv

    task = tasks.get("wsc")
    rows = tasks.load_rows(task.hub_id, task.hub_config, task.splits["validation"], root=root_for(task), limit=3)
    path = tmp_path / "wsc.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(task.input_columns))
        writer.writeheader()
        writer.writerows({c: r[c] for c in task.input_columns} for r in rows)
    read = predict.read_rows(path)
    assert isinstance(read[0]["span1_index"], str)
    assert [e.source for e in prediction_examples(task, read, "csv")] == [task.example(r).source for r in rows]


@pytest.mark.parametrize("name,content,words", [
    ("bad.jsonl", '{"sentence": "fine"}\n{"sentence": "ok"}\n{"sentence": \n', ["line 3", "not valid JSON"]),
    ("ragged.csv", "sentence\nfine\n\"good\",extra\n", ["line 3", "2 fields", "header 1"]),
])
def test_a_bad_input_line_is_named_by_its_number(tmp_path, name, content, words):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(predict.DataError) as err:
        predict.read_rows(path)
    for w in words:
        assert w in str(err.value), str(err.value)


def test_a_csv_with_a_bom_keeps_its_first_column(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffsentence\nfine\n".encode())
    assert predict.read_rows(path) == [{"sentence": "fine"}]


def test_a_folder_or_a_pipe_as_input_is_named_as_such(tmp_path):
    import os

    (tmp_path / "d.jsonl").mkdir()
    with pytest.raises(predict.DataError, match="is a folder"):
        predict.read_rows(tmp_path / "d.jsonl")
    os.mkfifo(tmp_path / "p.jsonl")
    with pytest.raises(predict.DataError, match="not a regular file"):
        predict.read_rows(tmp_path / "p.jsonl")


def test_out_naming_a_folder_is_refused_before_predicting(tmp_path):
    (tmp_path / "preds.jsonl").mkdir()
    with pytest.raises(predict.ConfigError, match="is a folder; name a file in it"):
        predict.output_path(tmp_path / "run", "sst2", "reviews", str(tmp_path / "preds.jsonl"))


@pytest.mark.parametrize("name,content,words", [
    ("latin1.jsonl", '{"sentence": "ok"}\n{"sentence": "caf\xe9"}\n'.encode("latin-1"),
     ["line 2 is not UTF-8 (byte 0xe9)", "save the file as UTF-8"]),
    ("utf16.csv", "sentence\nfine\n".encode("utf-16"), ["is UTF-16", "save it as UTF-8"]),
    ("twice.jsonl", b'{"sentence": "ok"}\n{"sentence": "a", "sentence": "b"}\n', ["line 2 names 'sentence' twice"]),
    ("twice.csv", b"sentence,label,sentence\na,1,b\n", ["line 1 names column 'sentence' twice"]),
])
def test_odd_encodings_and_columns_named_twice_are_one_line(tmp_path, name, content, words):
    """Only UTF-8 (a BOM allowed) is read; a column named twice is ambiguous (CSV and JSON keep the last silently)."""
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(predict.DataError) as err:
        predict.read_rows(path)
    assert "\n" not in str(err.value)
    for w in words:
        assert w in str(err.value), str(err.value)


def test_rows_are_numbered_as_the_file_counts_them(tmp_path):
    """JSONL lines (blank lines counted, U+2028 inside a string is not a line break), CSV lines (a quoted newline
    spans two), parquet rows: what a bad row's message names."""
    import pyarrow as pa

    (tmp_path / "a.jsonl").write_text('{"sentence": "a\u2028b"}\n\n{"sentence": "c"}\n')
    (tmp_path / "a.csv").write_text('sentence\n"two\nlines"\nthree\n')
    pq.write_table(pa.table({"sentence": ["x", "y"]}), tmp_path / "a.parquet")
    assert predict.read_input(tmp_path / "a.jsonl") == ([{"sentence": "a\u2028b"}, {"sentence": "c"}],
                                                         ["line 1", "line 3"])
    assert predict.read_input(tmp_path / "a.csv")[1] == ["line 3", "line 4"]
    assert predict.read_input(tmp_path / "a.parquet")[1] == ["row 1", "row 2"]


def test_a_bad_row_given_to_predict_is_named_before_the_model_loads(runs, tmp_path, capsys, monkeypatch):
    source = write_jsonl(tmp_path / "in.jsonl", [{"sentence": "fine"}, {"sentence": "ok"}, {"sentence": 3.5}])
    err = one_line(capsys, ["predict", f"run={runs['bert']}", f"input={source}"], monkeypatch)
    assert "input file" in err and "line 3: column 'sentence' holds 3.5, not text; 1 of 3 rows is like this" in err
