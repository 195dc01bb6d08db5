"""`make quality` (scripts/quality.py) on the real MiniLM: a method left at the majority class fails the check,
named in one line; the table lists it with its best score."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO, SHARED, SHARED_DATA

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (SHARED / "models" / "hub").is_dir() or not SHARED_DATA.is_dir(),
                       reason="needs ../shared (models and data)"),
]


def test_a_method_at_the_majority_class_fails_by_name(tmp_path):
    # two steps cannot leave the majority class: the check must say so rather than pass
    done = subprocess.run([sys.executable, "scripts/quality.py", "--only", "p_tuning_v2", "--steps", "2",
                           "--threads", "2", "--out", str(tmp_path)], capture_output=True, text=True, cwd=REPO,
                          timeout=900)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "majority class 50.92" in done.stdout and "FAIL  p_tuning_v2" in done.stdout
    assert done.stderr.strip().splitlines()[-1] == "quality: 1 of 1 at the majority class (or failed): p_tuning_v2"
    assert (tmp_path / "p_tuning_v2" / "results.json").is_file()
