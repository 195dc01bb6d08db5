"""Data parallel through torchrun: 2 CPU processes (gloo) reach one process's parameters, and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ptune import files, run_folder
from ptune.training import distributed
from tests.conftest import REPO, SHARED_DATA
from tests.training.test_reliability import state_step

pytestmark = pytest.mark.multiprocess  # torchrun jobs: `make test` runs them, `make test-latest` does not

# 70 rows in batches of 8: every epoch ends on a batch of 6, which 2 ranks split 3 + 3 (and a batch of 3
# on 2 ranks would be 2 + 1); dropout 0, so the one- and two-process runs see the same function
COMMON = [f"data.root={SHARED_DATA}", "data.train_limit=70", "data.eval_limit=24", "trainer.batch_size=8",
          "trainer.progress=false", "trainer.num_threads=1", "model.dropout=0.0", "optimizer.lr=0.01"]
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def common(args) -> list[str]:
    keys = {a.split("=", 1)[0] for a in args}  # each key once on the command line: the case's value wins
    return [o for o in COMMON if o.split("=", 1)[0] not in keys]


def one_process(run_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "ptune", "train", *common(args), *args, f"run_dir={run_dir}"]


def two_processes(run_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ptune",
            "train", *common(args), *args, f"run_dir={run_dir}"]


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=ENV, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def final_params(run_dir: Path) -> dict[str, torch.Tensor]:
    return files.read_tensors(run_dir / "state" / "params.safetensors")[0]


def evals(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("elapsed_s", "train_loss")} for r in rows]


def assert_same_run(a: Path, b: Path) -> None:
    pa, pb = final_params(a), final_params(b)
    assert set(pa) == set(pb) and pa
    for k in pa:
        torch.testing.assert_close(pb[k], pa[k], atol=1e-5, rtol=0, msg=lambda m, k=k: f"{k}: {m}")
    assert evals(b) == evals(a)
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (a, b))
    assert (ra["steps"], ra["stopped"]) == (rb["steps"], rb["stopped"])
    assert abs(ra["final"]["train_loss"] - rb["final"]["train_loss"]) < 1e-5  # the global loss, summed over ranks


CASES = {
    # the small trainable set: one bucketed all-reduce per optimizer step, after 2 accumulated batches
    "prompt_tuning-bert-accum": ["model=tiny-bert", "task=rte", "method=prompt_tuning", "trainer.grad_accum=2",
                                 "trainer.max_steps=12", "trainer.eval_every=6"],
    # T5: the loss averages target tokens, and rte's two label words differ in length, so uneven shards
    # (eps=1: a step linear in the gradient, so a wrong scale of the summed gradients would show)
    "p_tuning_v2-t5": ["model=tiny-t5", "task=rte", "method=p_tuning_v2", "trainer.max_steps=10",
                       "trainer.eval_every=5", "optimizer.lr=0.5", "optimizer.eps=1.0"],
    # a mixture: every rank draws the same (task, rows) batches; structured's per-task generator
    "structured-mixture": ["model=tiny-bert", "task=[sst2,rte]", "method=structured", "trainer.max_steps=8",
                           "trainer.eval_every=4", "optimizer.lr=0.5", "optimizer.eps=1.0"],
    # a trained body goes through DistributedDataParallel. AdamW divides by sqrt(v) + eps: with the default
    # eps, parameters whose true gradient is 0 (BERT's key biases: softmax ignores a shift) take lr-sized
    # steps on round-off noise, which differs with the batch split; eps=1 keeps the step linear in the
    # gradient, so the runs match and a wrong gradient scale (DDP's mean vs a sum) would show. A mixture:
    # the other task's head is unused in each batch, and keeps no gradient on every rank
    "model_tuning-mixture": ["model=tiny-bert", "task=[sst2,rte]", "method=model_tuning", "trainer.max_steps=10",
                          "trainer.eval_every=5", "optimizer.lr=0.05", "optimizer.eps=1.0"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_reach_one_process_parameters(tmp_path, case):
    one, two = tmp_path / "one", tmp_path / "two"
    run(one_process(one, *CASES[case]))
    done = run(two_processes(two, *CASES[case]))
    assert_same_run(one, two)
    # rank 0 alone writes and reports: one results line, one config, world_size recorded
    assert done.stdout.count('"run_dir"') == 1
    results = json.loads((two / "results.json").read_text())
    assert results["environment"]["world_size"] == "2"
    assert sorted(p.name for p in two.iterdir() if p.name.endswith(".tmp")) == []


# dropout on: each rank draws its own masks, so the resumed run must restore every rank's RNG
STEPS = ["model=tiny-bert", "task=rte", "method=p_tuning_v2", "trainer.max_steps=40", "trainer.eval_every=10",
         "trainer.save_every=2", "model.dropout=0.1"]


def descendants(pid: int) -> list[int]:
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [k for kid in map(int, kids) for k in (kid, *descendants(kid))]


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("whole") / "run"
    run(two_processes(run_dir, *STEPS))
    return run_dir


def running_at(run_dir: Path, steps: list[str], step: int) -> subprocess.Popen:
    """A two-process run started in the background, returned once its saved state has reached ``step``."""
    proc = subprocess.Popen(two_processes(run_dir, *steps), cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while state_step(run_dir) < step and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    return proc


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killed_two_process_run_resumes(whole, tmp_path, sig):
    """SIGTERM to torchrun (it forwards it: every rank stops at the same step and rank 0 saves), or
    SIGKILL to torchrun and its workers, as a lost node (the state of the last ``save_every`` step is kept); then the same
    command resumes to the parameters and evaluations of an uninterrupted run."""
    run_dir = tmp_path / "run"
    proc = running_at(run_dir, STEPS, 10)
    for pid in [proc.pid] if sig == signal.SIGTERM else [proc.pid, *descendants(proc.pid)]:
        os.kill(pid, sig)
    proc.communicate(timeout=120)
    killed_at = state_step(run_dir)
    assert 10 <= killed_at < 40
    assert proc.returncode != 0
    assert not (run_dir / "results.json").exists()
    run(two_processes(run_dir, *STEPS))
    assert_same_run(whole, run_dir)


def test_workers_stop_when_torchrun_is_killed_alone(tmp_path):
    """SIGKILL to torchrun only (its workers get no signal): each rank notices its launcher is gone, says so in
    one line and stops, so no orphan keeps training or holds the run folder's lock; the state it saved stays."""
    run_dir = tmp_path / "run"
    steps = [*STEPS[:3], "trainer.max_steps=100000", "trainer.eval_every=100000", "trainer.save_every=2"]
    proc = running_at(run_dir, steps, 4)
    workers = descendants(proc.pid)
    assert len(workers) >= 2
    proc.kill()  # torchrun alone
    _, err = proc.communicate(timeout=distributed.LAUNCHER_GRACE_S + 60)  # EOF once every worker has closed stderr
    time.sleep(1)
    alive = [pid for pid in workers if Path(f"/proc/{pid}").exists()
             and "zombie" not in Path(f"/proc/{pid}/status").read_text()]
    assert alive == [], f"orphaned ranks still running: {alive}"
    assert err.count("launcher (pid") >= 1, err[-2000:]
    assert not run_folder.held(run_dir)
    assert state_step(run_dir) >= 4


def test_one_process_world():
    world = distributed.World()
    assert world.main and not world.parallel
    assert world.shard([1, 2, 3]) == [1, 2, 3] and world.sum([1.5, 2.0]) == [1.5, 2.0]
    assert world.gather("x") == ["x"] and world.agree(lambda: 7) == 7
    ranks = [distributed.World(r, 3).shard(list(range(8))) for r in range(3)]
    assert ranks == [[0, 3, 6], [1, 4, 7], [2, 5]]


def test_loss_terms_count_target_tokens_or_rows():
    assert distributed.loss_terms({"labels": torch.tensor([1, 0, 1])}) == 3
    assert distributed.loss_terms({"labels": torch.tensor([0.5, 2.0])}) == 2
    assert distributed.loss_terms({"labels": torch.tensor([[5, 1, -100], [7, 8, 1]])}) == 5


def test_a_submitit_slurm_task_exports_its_rank(monkeypatch):
    """Under hydra/launcher=submitit_slurm with tasks_per_node=N, each task is a rank of the same run."""
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(os, "environ", dict(os.environ))  # export() writes os.environ: keep it to this test
    os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    os.environ.update(SUBMITIT_EXECUTOR="slurm", SLURM_JOB_ID="77", SLURM_NTASKS="4", SLURM_JOB_NUM_NODES="2",
                      SLURM_NODEID="1", SLURM_JOB_NODELIST="gpu[3-4]", SLURM_PROCID="3", SLURM_LOCALID="1")
    distributed.export_slurm()
    assert distributed.env_world() == distributed.World(rank=3, size=4, local_rank=1)
    assert os.environ["MASTER_ADDR"] == "gpu3"
    assert "CUDA_VISIBLE_DEVICES" not in os.environ  # every GPU stays visible; the rank takes cuda:LOCAL_RANK
    os.environ["SLURM_NTASKS"] = "1"
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        del os.environ[k]
    distributed.export_slurm()  # one task: nothing to join
    assert distributed.env_world() == distributed.World()
