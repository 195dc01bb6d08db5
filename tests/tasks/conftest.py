"""Where task tests find data: the offline mirror in ../shared when it has the split, else the fixtures."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from ptune.tasks import Task
from ptune.tasks.data import split_files

SHARED_HUB = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "hub"
FIXTURE_HUB = Path(__file__).resolve().parents[1] / "fixtures" / "hub"


def root_for(task: Task, role: str = "validation") -> Path:
    """The shared mirror if it holds this split, else the committed fixtures."""
    split = task.splits[role]
    if split_files(SHARED_HUB / task.hub_id / task.hub_config, split):
        return SHARED_HUB
    return FIXTURE_HUB


@pytest.fixture
def data_root() -> Callable[..., Path]:
    return root_for


@pytest.fixture
def fixture_hub() -> Path:
    return FIXTURE_HUB
