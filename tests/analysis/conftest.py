"""Hand-made run folders: config.yaml, results.json and metrics.jsonl as ptune writes them, with known numbers."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import OmegaConf


def make_run(root: Path, method: str, task: str, seed: int, score: float | None, *, metric: str = "accuracy",
             trainable: int = 100, total: int = 10_100, paper: dict | None = None, variant: str = "",
             curve: list[tuple[int, float, float]] | None = None, model: str = "tiny-bert",
             max_steps: int = 10, step: int | None = None) -> Path:
    """A run folder; ``score=None`` leaves it unfinished (no results.json) at training ``step``."""
    name = f"{method}-{task}-{model}-s{seed}" + (f"-{variant}" if variant else "")
    folder = root / name
    folder.mkdir(parents=True)
    cfg = {"method": {"name": method}, "task": {"name": task}, "model": {"name": model}, "seed": seed,
           "trainer": {"max_steps": max_steps}, "paper": {"source": "a paper" if paper else None,
                                                          "scores": paper or {}}}
    OmegaConf.save(OmegaConf.create(cfg), folder / "config.yaml")
    curve = curve or []
    (folder / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "train_loss": loss, metric: value, "best": False}) + "\n" for s, value, loss in curve))
    if score is None:
        (folder / "state").mkdir()
        (folder / "state" / "state.json").write_text(json.dumps({"progress": {"step": step or 0}}))
        return folder
    results = {"task": task, "method": method, "model": model, "seed": seed, "main_metric": metric,
               "best": {"step": max_steps, metric: score}, "steps": max_steps, "trainable_params": trainable,
               "total_params": total}
    (folder / "results.json").write_text(json.dumps(results))
    return folder
