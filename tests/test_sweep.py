"""`ptune train` as a Hydra app: single runs keep their folders, sweeps (-m) run the CLI as a subprocess.

One sweep is run per module fixture and shared by several assertions: every job start costs seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ptune.cli import main
from tests.conftest import REPO, SHARED_DATA

TINY = ["model=tiny-bert", "task=rte", f"data.root={SHARED_DATA}", "data.train_limit=16", "data.eval_limit=16",
        "trainer.max_steps=4", "trainer.eval_every=2", "trainer.batch_size=8", "trainer.progress=false",
        "trainer.num_threads=1"]


JOBLIB = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"] if importlib.util.find_spec(
    "hydra_plugins.hydra_joblib_launcher") else []


def tiny(*changes: str) -> list[str]:
    """TINY with some values changed (each key once on the command line)."""
    keys = {c.split("=", 1)[0] for c in changes}
    return [o for o in TINY if o.split("=", 1)[0] not in keys] + list(changes)


def ptune(*args: str, cwd: Path = REPO, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ptune.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=dict(os.environ, PYTHONPATH=str(REPO)))


def test_a_single_run_s_folder_names_what_differs_so_a_second_value_never_collides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for extra in (["optimizer.lr=0.05"], ["optimizer.lr=0.3"], ["method.lr=0.05"],  # 0.3: prompt tuning's own lr
                  ["method.init=text", "method.init_text=" + "a" * 40, "optimizer=adafactor"]):
        base = [o for o in TINY if not o.startswith(("trainer.max_steps=", "trainer.eval_every="))]
        assert main(["train", *base, "trainer.max_steps=1", "trainer.eval_every=1", *extra]) == 0
    common = ["data.eval_limit=16", "data.train_limit=16", "trainer.batch_size=8", "trainer.eval_every=1",
              "trainer.max_steps=1"]
    text = "method.init_text=aaaaaaaaaaaa~" + hashlib.sha1(b"a" * 40).hexdigest()[:8]  # a long value: cut, hashed
    expected = [["optimizer.lr=0.05"], [], ["method.lr=0.05"],  # optimizer.lr=0.3 is prompt tuning's own lr
                ["method.init=text", text, "optimizer=adafactor"]]
    names = sorted(p.name for p in (tmp_path / "outputs").iterdir())
    assert names == sorted("prompt_tuning-rte-tiny-bert-s42-" + ",".join(sorted(common + e)) for e in expected)
    assert main(["train", *TINY, "optimizer.lr=0.05", f"run_dir={tmp_path / 'mine'}"]) == 0  # run_dir= still wins
    assert (tmp_path / "mine" / "results.json").is_file()


def jobs(sweep_dir: Path) -> list[dict]:
    return json.loads((sweep_dir / "sweep.json").read_text())["jobs"]


# --- single runs ------------------------------------------------------------------------------------
def test_a_single_run_writes_its_run_folder_and_nothing_else(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", *TINY, "seed=3"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outputs"]  # no outputs/<date>/, .hydra/, *.log
    # the name carries what the command changed from the defaults (data.root and the thread count do not count)
    run = tmp_path / "outputs" / ("prompt_tuning-rte-tiny-bert-s3-data.eval_limit=16,data.train_limit=16,"
                                  "trainer.batch_size=8,trainer.eval_every=2,trainer.max_steps=4")
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == [run.name]
    assert {"config.yaml", "results.json", "metrics.jsonl", "prompt.safetensors", "folded.safetensors",
            "state", ".ptune.lock"} == {
        p.name for p in run.iterdir()}
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["run_dir"] == "outputs/" + run.name


def test_cfg_job_prints_the_composed_config(capsys):
    assert main(["train", "--cfg", "job", "method=p_tuning_v2", "task=rte", "trainer.max_steps=77"]) == 0
    printed = OmegaConf.create(capsys.readouterr().out)
    assert printed.method.name == "p_tuning_v2" and list(printed.task) == ["rte"] and printed.trainer.max_steps == 77


def test_train_help_is_ptunes(capsys):
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "ptune train -m method=prompt_tuning,p_tuning_v2" in out and "task: boolq" in out


# --- a 2x2 sweep with the basic launcher ------------------------------------------------------------
@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    sweep_dir = tmp_path_factory.mktemp("grid") / "sweep"
    done = ptune("train", "-m", *TINY, "method=prompt_tuning,p_tuning_v2", "seed=1,2", f"hydra.sweep.dir={sweep_dir}")
    assert done.returncode == 0, done.stderr[-3000:]
    return sweep_dir, done


def test_a_sweep_writes_one_run_folder_per_job(grid):
    sweep_dir, _ = grid
    names = {f"{m}-rte-tiny-bert-s{s}" for m in ("prompt_tuning", "p_tuning_v2") for s in (1, 2)}
    assert {p.name for p in sweep_dir.iterdir() if p.is_dir()} == names
    for name in names:
        results = json.loads((sweep_dir / name / "results.json").read_text())
        assert results["steps"] == 4 and results["best"]["accuracy"] >= 0
    recorded = jobs(sweep_dir)
    assert [j["status"] for j in recorded] == ["finished"] * 4
    assert {Path(j["run_dir"]).name for j in recorded} == names
    assert all(f"method={j['run_dir'].split('/')[-1].split('-')[0]}" in j["overrides"] for j in recorded)
    assert json.loads((sweep_dir / "sweep.json").read_text())["sweep_keys"] == ["method", "seed"]


def test_the_sweep_makes_a_table_of_mean_and_std_over_seeds(grid):
    sweep_dir, done = grid
    assert f"ptune table {sweep_dir}" in " ".join(done.stderr.split())  # the summary says what to run next
    table = ptune("table", str(sweep_dir))
    assert table.returncode == 0, table.stderr
    md = (sweep_dir / "table.md").read_text()
    for method in ("prompt_tuning", "p_tuning_v2"):
        scores = [json.loads((sweep_dir / f"{method}-rte-tiny-bert-s{s}" / "results.json").read_text())["best"]["accuracy"]
                  for s in (1, 2)]
        row = next(line for line in md.splitlines() if line.startswith(f"| {method} |"))
        mean, std = sum(scores) / 2, abs(scores[0] - scores[1]) / 2 ** 0.5
        assert f"| {mean:.1f} ± {std:.1f} (n=2) |" in row, row
    assert (sweep_dir / "table.csv").read_text().count("\n") == 3  # header + two methods


def test_the_sweep_plots_its_learning_curves(grid):
    pytest.importorskip("matplotlib")
    from rich.console import Console

    from ptune.analysis import plot

    assert plot.main([grid[0]], None, Console(file=io.StringIO())) == 0
    assert (grid[0] / "curves.png").stat().st_size > 10_000


def test_rerunning_a_sweep_skips_the_finished_jobs(grid):
    sweep_dir, _ = grid
    stamps = {p: p.stat().st_mtime_ns for p in sweep_dir.glob("*/results.json")}
    again = ptune("train", "-m", *TINY, "method=prompt_tuning,p_tuning_v2", "seed=1,2", f"hydra.sweep.dir={sweep_dir}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("already finished; skipped") == 4
    assert {p: p.stat().st_mtime_ns for p in sweep_dir.glob("*/results.json")} == stamps
    assert all(j["skipped"] and j["status"] == "finished" for j in jobs(sweep_dir))


def test_swept_values_beyond_the_name_make_their_own_folders(tmp_path):
    """An lr grid must not resume one lr's run as another's: the swept value goes into the folder name."""
    done = ptune("train", "-m", *tiny("trainer.max_steps=1", "trainer.eval_every=1"), "optimizer.lr=0.1,0.3",
                 f"hydra.sweep.dir={tmp_path}")
    assert done.returncode == 0, done.stderr[-3000:]
    names = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert names == ["prompt_tuning-rte-tiny-bert-s42-optimizer.lr=0.1", "prompt_tuning-rte-tiny-bert-s42-optimizer.lr=0.3"]
    lrs = [OmegaConf.load(tmp_path / n / "config.yaml").optimizer.lr for n in names]
    assert lrs == [0.1, 0.3]


def test_a_failing_job_is_recorded_and_the_others_finish(tmp_path):
    """Run in parallel processes with joblib (when the `sweep` extra is installed), rerun with the basic launcher."""
    cmd = ["train", "-m", *TINY, "trainer.device=cpu", "trainer.precision=fp16,fp32", f"hydra.sweep.dir={tmp_path}"]
    done = ptune(*cmd, *JOBLIB)
    assert done.returncode == 1  # the sweep ran to its end, but not every job succeeded
    failed, finished = jobs(tmp_path)
    assert failed["status"] == "failed" and "fp16 needs CUDA" in failed["error"] and "\n" not in failed["error"]
    assert finished["status"] == "finished" and (Path(finished["run_dir"]) / "results.json").is_file()
    assert "1 failed" in done.stderr and "fp16 needs CUDA" in done.stderr
    again = ptune(*cmd)  # the finished job is skipped, the failed one is tried again
    assert again.returncode == 1 and again.stderr.count("already finished; skipped") == 1
    assert [j["attempts"] for j in jobs(tmp_path)] == [2, 1]


def test_an_interrupted_sweep_resumes_where_it_stopped(tmp_path):
    cmd = [sys.executable, "-m", "ptune.cli", "train", "-m", *tiny("data.train_limit=256", "trainer.eval_every=50",
           "trainer.save_every=5", "trainer.max_steps=100,3"), f"hydra.sweep.dir={tmp_path}"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    long = tmp_path / "prompt_tuning-rte-tiny-bert-s42-trainer.max_steps=100"
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        try:
            if json.loads((long / "state" / "state.json").read_text())["progress"]["step"] >= 10:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    assert proc.poll() is None, "the job finished before it could be interrupted"
    proc.send_signal(signal.SIGTERM)  # what SLURM sends a job it preempts
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert [j["status"] for j in jobs(tmp_path)] == ["interrupted"]  # the sweep stopped there; job 2 never started
    stopped_at = json.loads((long / "state" / "state.json").read_text())["progress"]["step"]
    again = ptune(*cmd[3:])
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"from step {stopped_at}" in " ".join(again.stderr.split())
    assert [j["status"] for j in jobs(tmp_path)] == ["finished", "finished"]
    assert json.loads((long / "results.json").read_text())["steps"] == 100
