"""Launchers and sweepers from the `sweep` extra, and the sweep presets in configs/sweep/.

submitit_local runs the code path of submitit_slurm on this machine: pickled jobs in their own processes,
requeued when they receive the preemption signal (USR2, what submitit asks SLURM to send).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ptune import sweep
from ptune.config import compose_config
from ptune.errors import ConfigError
from tests.conftest import REPO
from tests.test_sweep import jobs, ptune, tiny


def test_the_presets_set_multirun_and_a_grid():
    cfg = compose_config(["+sweep=methods_x_glue_small", "model=tiny-bert"], hydra=True)
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    assert cfg.hydra.sweeper.params == {"method": "prompt_tuning,p_tuning_v2,prefix_tuning",
                                        "task": "rte,mrpc,stsb,cola", "seed": "1,2,3"}
    assert cfg.hydra.sweep.dir == "multirun/methods_x_glue_small/tiny-bert"
    assert sweep.check(["+sweep=methods_x_glue_small"], multirun=False)  # every value of the grid composes
    with pytest.raises(ConfigError, match=r"unknown sweep 'nope'; choose one of: methods_x_glue_small, optuna_lr"):
        compose_config(["+sweep=nope"])


def readme_command(marker: str) -> list[str]:
    text = (REPO / "README.md").read_text()
    block = next(b for b in text.split("```") if marker in b)
    line = next(cmd for cmd in block.replace("\\\n", " ").splitlines() if marker in cmd)
    return shlex.split(line)


def test_the_readme_slurm_example_composes_every_job():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    args = readme_command("hydra/launcher=submitit_slurm")
    assert args[:3] == ["ptune", "train", "-m"]
    assert sweep.check(args[3:], multirun=True)  # every key exists and every value of the grid composes
    fixed = [o.input_line for o in sweep.parse(args[3:]) if not o.is_sweep_override()]
    launcher = compose_config(fixed, hydra=True).hydra.launcher
    assert launcher.partition == "gpu" and launcher.max_num_timeout == 3 and len(launcher.setup) == 2


def test_optuna_searches_the_learning_rate_on_the_returned_metric(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    done = ptune("train", *tiny("trainer.max_steps=2"), "+sweep=optuna_lr", "hydra.sweeper.n_trials=2",
                 f"hydra.sweep.dir={tmp_path}")
    assert done.returncode == 0, done.stderr[-3000:]
    trials = jobs(tmp_path)
    assert [j["status"] for j in trials] == ["finished", "finished"]
    assert all("-optimizer.lr=" in j["run_dir"] for j in trials)  # one run folder per trial
    best = OmegaConf.load(tmp_path / "optimization_results.yaml")
    assert best.best_value == max(j["metric"] for j in trials)
    for j in trials:
        results = json.loads((Path(j["run_dir"]) / "results.json").read_text())
        assert results["best"]["accuracy"] == j["metric"]


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the job's process in /proc")
def test_submitit_requeues_a_preempted_job_and_it_resumes_from_its_state(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cmd = [sys.executable, "-m", "ptune.cli", "train", "-m",
           *tiny("data.train_limit=256", "trainer.max_steps=300", "trainer.eval_every=100", "trainer.save_every=5"),
           "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=60",
           f"hydra.sweep.dir={tmp_path}"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state = tmp_path / "prompt_tuning-rte-tiny-bert-s42" / "state" / "state.json"
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline and step(state) < 10:
        time.sleep(0.05)
    workers = submitit_jobs(tmp_path)
    assert proc.poll() is None and len(workers) == 1, "the job finished before it could be preempted"
    os.kill(workers[0], signal.SIGUSR2)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    log = " ".join(" ".join(p.read_text() for p in (tmp_path / ".submitit").rglob("*_log.err")).split())
    assert "this job is preempted" in log and "resuming" in log  # requeued by submitit, then resumed
    (record,) = jobs(tmp_path)
    assert record["status"] == "finished" and record["attempts"] == 2
    assert json.loads((state.parent.parent / "results.json").read_text())["steps"] == 300


def step(state: Path) -> int:
    try:
        return json.loads(state.read_text())["progress"]["step"]
    except (OSError, ValueError, KeyError):
        return 0


def submitit_jobs(sweep_dir: Path) -> list[int]:
    """The processes submitit_local started for this sweep's jobs (found by their command line)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"submitit.core._submit" in args and any(str(sweep_dir).encode() in a for a in args):
            found.append(int(cmdline.parent.name))
    return found
