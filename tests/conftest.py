"""Shared fixtures: tiny random-init backbones with real vocabularies from ../shared/models/hub."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_DATA = SHARED / "data" / "hub"
FIXTURE_DATA = REPO / "tests" / "fixtures" / "hub"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_CACHE", str(SHARED / "models" / "hub"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from ptune.config import load  # noqa: E402  (after the hub environment is set)
from ptune.tasks.base import Example  # noqa: E402

SST2_TEXTS = [
    ("a charming and often affecting journey", 1), ("unflinchingly bleak and desperate", 0),
    ("the acting is superb and the story moving", 1), ("a dull , lifeless mess", 0),
    ("funny , smart and full of heart", 1), ("boring from start to finish", 0),
    ("one of the best films of the year", 1), ("a waste of two hours", 0),
    ("beautifully shot and well acted", 1), ("the plot makes no sense at all", 0),
    ("a delight for the whole family", 1), ("painfully slow and pretentious", 0),
    ("warm , witty and wise", 1), ("the worst movie i have seen", 0),
    ("an instant classic", 1), ("tedious and forgettable", 0),
]


def sst2_examples() -> list[Example]:
    from ptune import tasks

    task = tasks.get("sst2")
    return [task.example({"sentence": s, "label": y, "idx": i}) for i, (s, y) in enumerate(SST2_TEXTS)]


def tiny_config(family: str, method: str = "prompt_tuning", *extra: str, tmp_path: Path | None = None):
    model = "tiny-t5" if family == "t5" else "tiny-bert"
    overrides = [f"method={method}", f"model={model}", "task=sst2", "trainer.progress=false", *extra]
    if tmp_path is not None:
        overrides.append(f"run_dir={tmp_path / 'run'}")
    return load(overrides)


@pytest.fixture(params=["bert", "t5"])
def family(request) -> str:
    return request.param


def shared_data_root() -> Path:
    return SHARED_DATA
