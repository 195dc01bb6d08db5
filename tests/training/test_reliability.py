"""Nothing is lost: killed runs resume to the same parameters, NaN stops cleanly, broken checkpoints say why."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from ptune import files, run, run_folder
from ptune.cli import main
from ptune.errors import TrainingError
from ptune.training import loop
from tests.conftest import REPO, SHARED_DATA, sst2_examples, tiny_config

DATA = [f"data.root={SHARED_DATA}", "data.train_limit=256", "data.eval_limit=32"]


def train_cmd(run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ptune.cli", "train", "model=tiny-bert", "method=p_tuning_v2", *DATA,
            "trainer.batch_size=8", "trainer.max_steps=160", "trainer.eval_every=40", "trainer.save_every=4",
            "trainer.progress=false", "trainer.num_threads=1", f"run_dir={run_dir}", *extra]


def state_step(run_dir: Path) -> int:
    try:
        return json.loads((run_dir / "state" / "state.json").read_text())["progress"]["step"]
    except (OSError, ValueError, KeyError):
        return 0


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("whole") / "run"
    subprocess.run(train_cmd(run_dir), check=True, capture_output=True, cwd=REPO, timeout=600)
    return run_dir


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_run_resumes_to_the_same_parameters(uninterrupted, tmp_path, sig):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(train_cmd(run_dir), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while state_step(run_dir) < 40 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    killed_at = state_step(run_dir)
    assert 40 <= killed_at < 160
    if sig == signal.SIGTERM:  # a clean stop: state saved, exit 128+15, a message saying how to resume
        assert proc.returncode == 128 + signal.SIGTERM and "rerun the same command to resume" in " ".join(err.split())
    else:
        assert proc.returncode == -signal.SIGKILL
    done = subprocess.run(train_cmd(run_dir), capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr
    a, _ = files.read_tensors(uninterrupted / "state" / "params.safetensors")
    b, _ = files.read_tensors(run_dir / "state" / "params.safetensors")
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=0)
    history = lambda d: [{k: v for k, v in r.items() if k != "elapsed_s"}  # noqa: E731
                         for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())]
    assert history(run_dir) == history(uninterrupted)
    assert json.loads((run_dir / "results.json").read_text())["steps"] == 160


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = tiny_config("bert", "prompt_tuning", "trainer.max_steps=10", "trainer.eval_every=2",
                      "trainer.batch_size=8", tmp_path=tmp_path)
    ex = sst2_examples()
    parts = run.build(cfg, examples={"train": ex, "eval": ex})
    real, calls = loop.train_step, {"n": 0}

    def poisoned(parts, *args):
        calls["n"] += 1
        if calls["n"] == 5:  # the prompt goes bad before step 5: its loss is NaN
            with torch.no_grad():
                parts.method.prompt.fill_(float("nan"))
        return real(parts, *args)

    monkeypatch.setattr(loop, "train_step", poisoned)
    with pytest.raises(TrainingError, match=r"loss is nan at step 5; stopped, the last good checkpoint is kept"):
        loop.fit(parts)
    tensors, meta = files.read_tensors(parts.run_dir / "prompt.safetensors")
    assert int(meta["step"]) in (2, 4) and all(torch.isfinite(t).all() for t in tensors.values())
    assert state_step(parts.run_dir) == 4
    saved, _ = files.read_tensors(parts.run_dir / "state" / "params.safetensors")
    assert all(torch.isfinite(t).all() for t in saved.values())


# --- broken checkpoints --------------------------------------------------------------------------------
def cli_train(run_dir: Path, *extra: str) -> None:
    base = ["train", "model=tiny-bert", *DATA[:1], "data.train_limit=16", "data.eval_limit=16",
            "trainer.max_steps=2", "trainer.eval_every=1", "trainer.progress=false", f"run_dir={run_dir}"]
    keys = {e.split("=", 1)[0] for e in extra}  # each key once on the command line: extra wins
    assert main([o for o in base if o.split("=", 1)[0] not in keys] + list(extra)) == 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("runs")
    out = {"pt": base / "pt", "v2": base / "v2", "t5": base / "t5"}
    cli_train(out["pt"])
    cli_train(out["v2"], "method=p_tuning_v2")
    cli_train(out["t5"], "model=tiny-t5")
    return out


def broken_eval(capsys, runs, tmp_path, damage) -> str:
    run_dir = tmp_path / "run"
    shutil.copytree(runs["pt"], run_dir)
    damage(run_dir)
    assert main(["eval", f"run={run_dir}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "checkpoint" in err, err
    return err


def test_eval_of_an_intact_run_works(capsys, runs):
    assert main(["eval", f"run={runs['pt']}"]) == 0


def test_corrupted_checkpoint(capsys, runs, tmp_path):
    def garble(d):
        (d / "prompt.safetensors").write_bytes(os.urandom(3000))
    assert "corrupted or truncated" in broken_eval(capsys, runs, tmp_path, garble)


def test_truncated_checkpoint(capsys, runs, tmp_path):
    def cut(d):
        data = (d / "prompt.safetensors").read_bytes()
        (d / "prompt.safetensors").write_bytes(data[: len(data) // 2])
    assert "corrupted or truncated" in broken_eval(capsys, runs, tmp_path, cut)


def test_checkpoint_of_another_method(capsys, runs, tmp_path):
    def swap(d):
        shutil.copy(runs["v2"] / "prompt.safetensors", d / "prompt.safetensors")
    err = broken_eval(capsys, runs, tmp_path, swap)
    assert "method='p_tuning_v2'" in err and "method='prompt_tuning'" in err


def test_checkpoint_of_another_backbone(capsys, runs, tmp_path):
    def swap(d):
        shutil.copy(runs["t5"] / "prompt.safetensors", d / "prompt.safetensors")
    err = broken_eval(capsys, runs, tmp_path, swap)
    assert "google-t5/t5-small" in err and "all-MiniLM-L6-v2" in err


def test_checkpoint_of_other_shapes(capsys, runs, tmp_path):
    def shrink(d):
        cfg = OmegaConf.load(d / "config.yaml")
        cfg.method.num_virtual_tokens = 5
        OmegaConf.save(cfg, d / "config.yaml")
    err = broken_eval(capsys, runs, tmp_path, shrink)
    assert "method.prompt" in err and "(20, 32)" in err and "(5, 32)" in err


def test_missing_checkpoint(capsys, runs, tmp_path):
    assert "no checkpoint at" in broken_eval(capsys, runs, tmp_path, lambda d: (d / "prompt.safetensors").unlink())


def test_unreadable_training_state_is_reported_on_resume(capsys, runs, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(runs["pt"], run_dir)
    (run_dir / "state" / "state.json").write_text("{ not json")
    assert main(["train", "model=tiny-bert", *DATA[:1], "data.train_limit=16", "data.eval_limit=16",
                 "trainer.max_steps=4", "trainer.progress=false", f"run_dir={run_dir}"]) == 2
    err = capsys.readouterr().err
    assert "training state" in err and "unreadable" in err and "delete it to start over" in err


def test_checkpoints_hold_no_pickle(runs):
    """Every weight file in a run folder is safetensors; nothing is readable only through pickle."""
    written = [p for p in runs["pt"].rglob("*") if p.is_file() and p.name != run_folder.LOCK]  # the lock holds a pid
    assert {p.suffix for p in written} <= {".yaml", ".safetensors", ".json", ".jsonl"}
    for p in written:
        if p.suffix == ".safetensors":
            files.read_tensors(p)  # parses without pickle
