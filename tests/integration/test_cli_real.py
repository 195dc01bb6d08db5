"""The real CLI, end to end and offline: real GLUE data from ../shared/data, real MiniLM from ../shared/models."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ptune import files
from tests.conftest import REPO, SHARED, SHARED_DATA

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (SHARED / "models" / "hub").is_dir() or not SHARED_DATA.is_dir(),
                       reason="needs ../shared (models and data)"),
]


def ptune(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("ptune", path=str(Path(sys.executable).parent)) or shutil.which("ptune")
    cmd = [exe] if exe else [sys.executable, "-m", "ptune.cli"]
    # every warning shown once: a normal train / eval prints no deprecation or future warning
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(SHARED / "models" / "hub"), PYTHONWARNINGS="default")
    done = subprocess.run([*cmd, *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "DeprecationWarning" not in done.stderr and "FutureWarning" not in done.stderr, done.stderr[-3000:]
    return done


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("method,task", [("prompt_tuning", "sst2"), ("p_tuning_v2", "rte")])
def test_train_then_eval_reproduces_the_stored_metric(tmp_path, method, task):
    run_dir = tmp_path / "run"
    common = [f"data.root={SHARED_DATA}", "data.eval_limit=160"]
    trained = last_json(ptune("train", f"method={method}", "model=minilm", f"task={task}", *common,
                              "data.train_limit=640", "trainer.max_steps=20", "trainer.eval_every=10",
                              "trainer.batch_size=16", "trainer.progress=false", f"run_dir={run_dir}").stdout)
    assert {p.name for p in run_dir.iterdir()} >= {"config.yaml", "prompt.safetensors", "metrics.jsonl",
                                                   "results.json"}
    results = json.loads((run_dir / "results.json").read_text())
    assert results["steps"] == 20 and results["best"] == trained["best"]
    assert results["trainable_params"] < results["total_params"] / 50  # a prompt, not the model
    tensors, meta = files.read_tensors(run_dir / "prompt.safetensors")
    assert meta["model"] == "sentence-transformers/all-MiniLM-L6-v2" and meta["method"] == method
    assert sum(t.numel() for t in tensors.values()) == results["trainable_params"]
    assert all(k.startswith(("method.", "head.")) for k in tensors)
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2

    scored = last_json(ptune("eval", f"run={run_dir}").stdout)
    assert scored["step"] == trained["best"]["step"]
    assert scored["metrics"]["accuracy"] == trained["best"]["accuracy"]  # exactly, not approximately

