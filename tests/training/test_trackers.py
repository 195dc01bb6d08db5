"""Trackers (docs/trackers.md): a tiny run with logger=tensorboard / logger=mlflow read back with each
library's own reader; a resumed run continues its tracker run; logger=none writes no tracker files, and
metrics.jsonl is written whatever the logger."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ptune import backbones
from ptune.cli import main
from ptune.training import trackers
from tests.conftest import REPO, SHARED_DATA

BASE = ["train", "model=tiny-bert", "method=prompt_tuning", "task=sst2", f"data.root={SHARED_DATA}",
        "data.train_limit=32", "data.eval_limit=16", "trainer.batch_size=8", "trainer.progress=false",
        "method.num_virtual_tokens=4", "trainer.eval_every=2", "optimizer.lr=0.05"]


def train(run_dir, *extra) -> int:
    keys = {e.split("=", 1)[0] for e in extra}  # each key once on the command line: extra wins
    return main([o for o in BASE if o.split("=", 1)[0] not in keys] + [f"run_dir={run_dir}", *extra])


def jsonl(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_none_writes_no_tracker_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    assert train(run_dir, "trainer.max_steps=2") == 0
    assert not (run_dir / "tensorboard").exists() and not (run_dir / "tracker.json").exists()
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()
    assert [r["step"] for r in jsonl(run_dir)] == [2]


def test_tensorboard_logs_loss_lr_per_step_and_eval_metrics(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    assert train(run_dir, "trainer.max_steps=4", "logger=tensorboard") == 0
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4]
    assert [e.step for e in acc.Scalars("train/lr")] == [1, 2, 3, 4]
    rows = jsonl(run_dir)
    accuracy = acc.Scalars("eval/accuracy")
    assert [e.step for e in accuracy] == [r["step"] for r in rows] == [2, 4]
    assert [e.value for e in accuracy] == pytest.approx([r["accuracy"] for r in rows])
    assert [e.value for e in acc.Scalars("eval/train_loss")] == pytest.approx([r["train_loss"] for r in rows])
    assert "best/accuracy" in tags["scalars"] and "final/accuracy" in tags["scalars"]
    assert {"config/text_summary", "results/text_summary"} <= set(tags["tensors"])
    config = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "prompt_tuning" in config and "lr: 0.05" in config


def test_tensorboard_resume_appends_to_the_same_log_dir(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    assert train(run_dir, "trainer.max_steps=2", "logger=tensorboard") == 0
    assert train(run_dir, "trainer.max_steps=4", "logger=tensorboard") == 0
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4]
    assert [e.step for e in acc.Scalars("eval/accuracy")] == [2, 4]


def test_a_stopped_run_is_marked_killed_in_mlflow(tmp_path, monkeypatch):
    from ptune.training import loop

    monkeypatch.chdir(tmp_path)

    def stop(*args, **kwargs):
        raise loop.Interrupted(15, 1)

    monkeypatch.setattr(loop, "record_eval", stop)
    assert train(tmp_path / "run", "trainer.max_steps=2", "logger=mlflow") != 0
    _, mrun = mlflow_run(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "run")
    assert mrun.info.status == "KILLED"


def mlflow_run(uri: str, run_dir):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run_id = json.loads((run_dir / "tracker.json").read_text())["mlflow_run_id"]
    return client, client.get_run(run_id)


def test_mlflow_logs_params_metrics_and_results(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default store is ./mlflow.db, artifacts in ./mlruns
    run_dir = tmp_path / "run"
    assert train(run_dir, "trainer.max_steps=4", "logger=mlflow", "logger.experiment=tiny") == 0
    client, mrun = mlflow_run(f"sqlite:///{tmp_path / 'mlflow.db'}", run_dir)
    params = mrun.data.params
    assert params["method.name"] == "prompt_tuning" and float(params["optimizer.lr"]) == 0.05
    assert params["trainer.max_steps"] == "4" and params["model.name"] == "tiny-bert"
    assert client.get_experiment(mrun.info.experiment_id).name == "tiny"
    assert mrun.info.status == "FINISHED" and mrun.info.run_name == "run"
    loss = client.get_metric_history(mrun.info.run_id, "train/loss")
    assert sorted(m.step for m in loss) == [1, 2, 3, 4]
    rows = jsonl(run_dir)
    accuracy = sorted(client.get_metric_history(mrun.info.run_id, "eval/accuracy"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in accuracy] == [(r["step"], pytest.approx(r["accuracy"])) for r in rows]
    results = json.loads((run_dir / "results.json").read_text())
    assert mrun.data.metrics["best/accuracy"] == pytest.approx(results["best"]["accuracy"])
    assert mrun.data.metrics["final/accuracy"] == pytest.approx(results["final"]["accuracy"])
    assert mrun.data.metrics["results/steps"] == 4
    assert "results.json" in [f.path for f in client.list_artifacts(mrun.info.run_id)]
    assert (tmp_path / "mlruns").is_dir()


def test_mlflow_resume_continues_the_same_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # artifacts go to ./mlruns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_dir = tmp_path / "run"
    assert train(run_dir, "trainer.max_steps=2", "logger=mlflow", f"logger.tracking_uri={uri}") == 0
    _, first = mlflow_run(uri, run_dir)
    assert train(run_dir, "trainer.max_steps=4", "logger=mlflow", f"logger.tracking_uri={uri}") == 0
    client, again = mlflow_run(uri, run_dir)
    assert again.info.run_id == first.info.run_id and again.info.status == "FINISHED"
    assert len(client.search_runs([first.info.experiment_id])) == 1
    assert sorted(m.step for m in client.get_metric_history(first.info.run_id, "train/loss")) == [1, 2, 3, 4]
    assert again.data.params["trainer.max_steps"] == "2"  # params are write-once; config.yaml records 4
    assert again.data.metrics["results/steps"] == 4


@pytest.mark.parametrize("name", ["tensorboard", "mlflow"])
def test_a_missing_library_names_the_extra_before_the_model_loads(tmp_path, monkeypatch, capsys, name):
    monkeypatch.setitem(sys.modules, name, None)  # `import name` fails, as if not installed
    monkeypatch.setattr(trackers.importlib_util, "find_spec", lambda mod: None if mod == name else object())
    monkeypatch.setattr(backbones, "load", lambda *a, **k: pytest.fail("the model must not load"))
    assert train(tmp_path / "run", "trainer.max_steps=2", f"logger={name}") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"pip install -e '.[{name}]'" in err[0]


def test_unknown_logger_lists_the_choices(tmp_path, capsys):
    assert train(tmp_path / "run", "logger=wandb") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown logger 'wandb'" in err[0]
    assert all(c in err[0] for c in ("mlflow", "none", "tensorboard"))


def test_only_rank_zero_logs(tmp_path, monkeypatch):
    from ptune.config import load

    monkeypatch.setenv("RANK", "1")
    cfg = load(["logger=tensorboard"])
    assert isinstance(trackers.build(cfg, tmp_path / "run"), trackers.NoneTracker)
    assert not (tmp_path / "run").exists()


def test_a_sweep_is_one_mlflow_experiment_named_after_its_folder(tmp_path):
    from mlflow.tracking import MlflowClient

    sweep_dir, uri = tmp_path / "grid", f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [a for a in BASE[1:] if not a.startswith("trainer.eval_every")]
    done = subprocess.run([sys.executable, "-m", "ptune.cli", "train", "-m", *args, "trainer.max_steps=1",
                           "trainer.eval_every=1", "seed=1,2", "logger=mlflow", f"logger.tracking_uri={uri}",
                           f"hydra.sweep.dir={sweep_dir}"], capture_output=True, text=True, cwd=tmp_path,
                          timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("grid")
    names = sorted(r.info.run_name for r in client.search_runs([experiment.experiment_id]))
    assert names == ["prompt_tuning-sst2-tiny-bert-s1", "prompt_tuning-sst2-tiny-bert-s2"]


def test_an_unreachable_tracking_server_stops_in_one_line_not_minutes():
    import socket

    from ptune.errors import ConfigError

    with socket.socket() as closed:  # a port nothing listens on: refused at once
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(ConfigError, match=rf"tracking_uri=http://127.0.0.1:{port} did not answer"):
        trackers.check_server(f"http://127.0.0.1:{port}")
    with socket.socket() as silent:  # takes the connection, never answers: the bounded wait ends it
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        with pytest.raises(ConfigError, match="did not answer within 1 s"):
            trackers.check_server(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=1.0)
    trackers.check_server("sqlite:///mlflow.db")  # a local store is not probed
