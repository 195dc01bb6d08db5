"""The README's first command (`make train`) resolves offline from ../shared when it is there, and
from the hub (online) when it is not."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def make(*args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_HUB_CACHE", "MAKEFLAGS")}
    return subprocess.run(["make", "-s", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          check=True).stdout


def fake_shared(tmp_path: Path) -> Path:
    for sub in ("models/hub", "data/hub"):
        (tmp_path / "shared" / sub).mkdir(parents=True)
    return tmp_path / "shared"


def test_with_shared_make_train_runs_offline_from_it(tmp_path):
    shared = fake_shared(tmp_path)
    where = make("where", f"SHARED={shared}")
    assert f"data: data.root={shared}/data/hub" in where
    assert f"HF_HUB_OFFLINE=1 HF_HUB_CACHE={shared.resolve()}/models/hub" in where
    assert f"data.root={shared}/data/hub" in make("-n", "train", f"SHARED={shared}")


def test_without_shared_make_train_uses_the_hub(tmp_path):
    missing = tmp_path / "no-shared"
    where = make("where", f"SHARED={missing}")
    assert "data: the hub" in where
    assert "HF_HUB_OFFLINE=0" in where
    command = make("-n", "train", f"SHARED={missing}")
    assert "ptune train" in command and "data.root" not in command


def test_a_users_own_offline_setting_wins(tmp_path):
    shared = fake_shared(tmp_path)
    env = dict(os.environ, HF_HUB_OFFLINE="0")
    out = subprocess.run(["make", "-s", "where", f"SHARED={shared}"], cwd=REPO, env=env, capture_output=True,
                         text=True, check=True).stdout
    assert "HF_HUB_OFFLINE=0" in out
