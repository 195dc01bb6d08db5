"""Bad input: one line naming the problem and the fix, exit code 2, and no model loaded when avoidable."""

from __future__ import annotations

import shutil

import pyarrow.parquet as pq
import pytest

from ptune import backbones
from ptune.cli import main
from tests.conftest import SHARED_DATA

TINY = ["model=tiny-bert", "trainer.progress=false", "trainer.max_steps=1"]


def fail(capsys, argv: list[str]) -> str:
    """Run the CLI, expect exit 2 and exactly one line on stderr; return that line."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("ptune: error: ")
    return err


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if anything tries to load a backbone."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was reported")

    monkeypatch.setattr(backbones, "load", refuse)


@pytest.mark.parametrize("arg,words", [
    ("method=foo", ["unknown method 'foo'", "prompt_tuning", "p_tuning_v2"]),
    ("task=nope", ["unknown task 'nope'", "sst2", "rte", "boolq"]),
    ("model=gpt9", ["unknown model 'gpt9'", "minilm", "t5-base"]),
    ("optimizer=sgd", ["unknown optimizer 'sgd'", "adamw", "adafactor"]),
    ("trainer.max_steps=abc", ["trainer.max_steps", "'abc'"]),
    ("method.num_virtual_tokens=-3", ["method.num_virtual_tokens=-3", ">= 1"]),
    ("optimizer.lr=0", ["optimizer.lr=0", "> 0"]),
    ("optimizer.lr=-0.1", ["optimizer.lr=-0.1", "> 0"]),
    ("trainer.patience=-1", ["trainer.patience=-1", ">= 0"]),
    ("trainer.precision=fp8", ["trainer.precision='fp8'", "fp32, bf16, fp16"]),
    ("trainer.nonsense=1", ["unknown key", "trainer.nonsense"]),
    ("task", ["'task'", "key=value"]),
    ("task=[rte,nope]", ["unknown task 'nope'", "sst2", "rte", "boolq", "glue"]),
    ("method=[prompt_tuning,p_tuning_v2]", ["one method per run", "-m method=prompt_tuning,p_tuning_v2"]),
    ("trainer.monitor=cola", ["trainer.monitor='cola'", "avg, sst2"]),
    ("data.sampling=sorted", ["data.sampling='sorted'", "proportional, temperature, equal"]),
])
def test_config_mistakes_fail_in_one_line_before_any_model_loads(capsys, no_model, tmp_path, arg, words):
    key = arg.split("=", 1)[0]
    base = [o for o in TINY if o.split("=", 1)[0] != key]  # the key once: a key given twice is its own error
    err = fail(capsys, ["train", *base, f"run_dir={tmp_path / 'r'}", arg])
    for w in words:
        assert w in err, (w, err)
    assert not (tmp_path / "r").exists()  # nothing written


@pytest.mark.parametrize("args,words", [
    (["task=rte,stsb"], ["task=rte,stsb sweeps several values", "add -m"]),
    (["-m", "task=rte,nope"], ["unknown task 'nope'", "rte", "stsb"]),
    (["-m", "hydra/launcher=nope"], ["unknown hydra/launcher 'nope'", "basic"]),
    (["-m", "trainer.max_steps=1,abc"], ["trainer.max_steps='abc'", "wrong type"]),
    (["-m", "seed=1,2", "trainer.nonsense=1"], ["unknown key", "trainer.nonsense"]),
    (["-m", "seed=1,2", "run_dir=x"], ["run_dir=", "hydra.sweep.dir="]),
    (["--bogus"], ["'--bogus'", "ptune train --help"]),
])
def test_sweep_mistakes_fail_in_one_line_before_any_job_starts(capsys, no_model, tmp_path, args, words):
    keys = {a.split("=", 1)[0] for a in args}
    base = [o for o in TINY if o.split("=", 1)[0] not in keys]  # each key once
    err = fail(capsys, ["train", *base, f"hydra.sweep.dir={tmp_path / 'sweep'}", *args])
    for w in words:
        assert w in err, (w, err)
    assert not (tmp_path / "sweep").exists()


def test_missing_data_folder_names_the_path_and_data_root(capsys, no_model, tmp_path):
    err = fail(capsys, ["train", *TINY, f"data.root={tmp_path / 'nowhere'}", f"run_dir={tmp_path / 'r'}"])
    assert str(tmp_path / "nowhere" / "nyu-mll" / "glue" / "sst2") in err and "data.root" in err


def test_missing_split_names_the_folder_and_the_splits_there(capsys, no_model, tmp_path):
    root = tmp_path / "hub"
    shutil.copytree(SHARED_DATA / "nyu-mll" / "glue" / "sst2", root / "nyu-mll" / "glue" / "sst2",
                    ignore=shutil.ignore_patterns("train-*"))
    err = fail(capsys, ["train", *TINY, f"data.root={root}", f"run_dir={tmp_path / 'r'}"])
    assert "no split 'train'" in err and str(root / "nyu-mll" / "glue" / "sst2") in err
    assert "test, validation" in err and "data.root" in err


def test_labels_outside_the_head_are_refused(capsys, no_model, tmp_path):
    root = tmp_path / "hub"
    folder = root / "nyu-mll" / "glue" / "sst2"
    shutil.copytree(SHARED_DATA / "nyu-mll" / "glue" / "sst2", folder)
    table = pq.read_table(folder / "validation-00000-of-00001.parquet").slice(0, 20).to_pylist()
    table[3]["label"] = 7
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist(table), folder / "validation-00000-of-00001.parquet")
    err = fail(capsys, ["train", *TINY, f"data.root={root}", "data.train_limit=8", f"run_dir={tmp_path / 'r'}"])
    assert "row 4: column 'label' holds 7" in err and "negative, positive" in err and "'validation'" in err


def test_unlabelled_eval_split_is_refused(capsys, no_model, tmp_path):
    err = fail(capsys, ["train", *TINY, f"data.root={SHARED_DATA}", "data.train_limit=8", "data.eval_split=test",
                        f"run_dir={tmp_path / 'r'}"])
    assert "without a label" in err and "data.eval_split=validation" in err


def test_model_missing_offline_names_hf_hub_cache(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    err = fail(capsys, ["train", "model=minilm", "model.hf_id=nobody/no-such-model", f"data.root={SHARED_DATA}",
                        "data.train_limit=8", "data.eval_limit=8", "trainer.progress=false",
                        f"run_dir={tmp_path / 'r'}"])
    assert "'nobody/no-such-model'" in err and "HF_HUB_CACHE=" in err and "model=" in err


def test_fp16_on_cpu_is_refused(capsys, no_model, tmp_path):
    err = fail(capsys, ["train", *TINY, "trainer.device=cpu", "trainer.precision=fp16", f"run_dir={tmp_path / 'r'}"])
    assert "fp16 needs CUDA" in err and "bf16" in err


def test_a_folder_of_another_run_is_never_overwritten(capsys, tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.yaml").write_text("method: {name: p_tuning_v2}\nmodel: {name: tiny-bert}\n"
                                     "task: {name: sst2}\nseed: 42\n")
    err = fail(capsys, ["train", *TINY, f"run_dir={run}"])
    assert "method.name=p_tuning_v2" in err and "run_dir=" in err


def test_eval_without_a_run_folder(capsys, tmp_path):
    assert "ptune eval needs run=" in fail(capsys, ["eval"])
    assert "not a ptune run folder" in fail(capsys, ["eval", f"run={tmp_path}"])


@pytest.mark.parametrize("argv,words", [
    (["train", "trainer.max_steps=3", "trainer.max_steps=5"], ["trainer.max_steps is given twice", "=3", "=5"]),
    (["train", "task=[rte,mrpc,rte]"], ["names rte more than once"]),
    (["describe", "seed=1", "seed=2"], ["seed is given twice"]),
    (["eval", "run=outputs/a", "run=outputs/b"], ["run is given twice", "outputs/a", "outputs/b"]),
    (["predict", "run=outputs/a", "input=x.jsonl", "input=y.jsonl"], ["input is given twice"]),
])
def test_a_key_given_twice_is_refused_not_silently_the_last(capsys, no_model, argv, words):
    err = fail(capsys, argv + (TINY if argv[0] == "train" else []))
    for w in words:
        assert w in err, err


def test_ctrl_c_before_training_is_one_line(capsys, monkeypatch):
    from ptune import cli

    def interrupted(_args):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "describe", interrupted)
    assert main(["describe", "method=prompt_tuning"]) == 130
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ptune: interrupted")
