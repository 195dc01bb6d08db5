"""``Parts``: a run's pieces as the training loop receives them (run.build assembles them from a config).

Typed, and at the training layer, so that ``training/`` reads the run through this class and never calls back
up into run.py: the optimizer groups, the key early stopping follows, what is saved as the prompt and where.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from ptune import files, run_folder, tasks
from ptune.backbones.base import Backbone
from ptune.config import Config
from ptune.errors import CheckpointError
from ptune.methods.base import PromptMethod
from ptune.tasks.base import Task
from ptune.tasks.collate import Split
from ptune.training import checkpoint as ckpt
from ptune.training import trackers
from ptune.training.trackers import Tracker


@dataclass
class Parts:
    """A run's pieces. ``trains[i]`` / ``tasks[i]`` belong to task id i; ``evals`` holds every
    (task, evaluation split) pair. ``task``, ``train`` and ``eval`` name the first (in a one-task run, the
    only) task's, for code that handles one task."""

    cfg: Config
    tasks: list[Task]
    backbone: Backbone
    method: PromptMethod
    trains: list[Split]
    evals: list[Split]
    device: torch.device
    run_dir: Path
    probabilities: list[float] = dataclasses.field(default_factory=lambda: [1.0])
    tracker: Tracker = dataclasses.field(default_factory=trackers.NoneTracker)  # fit logs to it (logger=)

    @property
    def task(self) -> Task:
        return self.tasks[0]

    @property
    def train(self) -> Split | None:
        return self.trains[0] if self.trains else None

    @train.setter
    def train(self, split: Split) -> None:
        self.trains = [split]

    @property
    def eval(self) -> Split:
        return self.evals[0]

    @eval.setter
    def eval(self, split: Split) -> None:
        self.evals = [split]

    def monitor_key(self) -> str:
        """The key of an evaluation row that early stopping and the best checkpoint follow."""
        monitor = self.cfg.trainer.monitor
        if len(self.tasks) == 1 and monitor in (None, "avg", self.task.name):
            return self.task.main_metric
        return "avg" if monitor in (None, "avg") else f"{monitor}/{tasks.get(monitor).main_metric}"

    @property
    def pad_id(self) -> int:
        return self.backbone.tokenizer.pad_token_id

    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        """The parts that train and are saved: the method, the task heads and, with ``model.trainable``, the
        body (checkpoint keys ``method.*``, ``head.*``, ``body.*``)."""
        modules = {"method": self.method, "head": getattr(self.backbone, "heads", torch.nn.ModuleDict())}
        if self.cfg.model.trainable:
            modules["body"] = self.backbone.model
        return modules

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """What the optimizer sees: the method's and the heads' parameters; the body's only when it trains."""
        return [p for g in self.param_groups() for p in g["params"]]

    def param_groups(self) -> list[dict]:
        """Optimizer groups: the method's own (``PromptMethod.param_groups``: generator weights at lr / fan-in),
        the heads at ``model.head_lr`` (null: the run's lr), and a trainable body at ``model.lr`` (null: the
        run's lr)."""
        lr, m = self.cfg.lr, self.cfg.model
        groups = list(self.method.param_groups(lr))
        heads = [p for p in getattr(self.backbone, "heads", torch.nn.ModuleDict()).parameters() if p.requires_grad]
        if heads:
            groups.append({"params": heads, "lr": m.head_lr if m.head_lr is not None else lr})
        if m.trainable:
            body = [p for p in self.backbone.model.parameters() if p.requires_grad]
            groups.append({"params": body, "lr": m.lr if m.lr is not None else lr})
        return [g for g in groups if g["params"]]

    def metadata(self) -> dict[str, str]:
        return run_metadata(self.cfg)

    def save_prompt(self, path: Path, step: int) -> None:
        """The trainable parameters to ``path`` and, beside it, the folded form (``folded.safetensors``)."""
        meta = dict(self.metadata(), step=str(step), tasks=",".join(t.name for t in self.tasks))
        files.atomic_save_tensors(path, ckpt.trainable_state(self.trainable_modules()), meta)
        self.save_folded(path.with_name(run_folder.FOLDED), meta)

    def save_folded(self, path: Path, meta: dict[str, str]) -> None:
        """Each task's plain prompt (``export`` over task ids 0..T-1: row t is task t's soft tokens or
        per-layer keys/values), with encoders and hypernetworks evaluated away; ``methods.base.Folded``
        serves it. Nothing is written for a method without a prompt (model_tuning)."""
        was_training = self.method.training
        self.method.eval()
        try:
            tensors = self.method.export(torch.arange(len(self.tasks), device=self.device))
        finally:
            self.method.train(was_training)
        split = getattr(self.method.cfg, "split", None)  # Folded(tensors, split) places them the same way
        if tensors:
            files.atomic_save_tensors(path, tensors, dict(meta, **({"split": str(split)} if split is not None else {})))

    def load_prompt(self, path: Path) -> int:
        tensors, meta = files.read_tensors(path)
        if meta.get("format") != ckpt.FORMAT:
            raise CheckpointError(f"{path} is not a ptune prompt checkpoint (format={meta.get('format')!r})")
        ckpt.check_metadata(meta, self.metadata(), path)
        ckpt.load_trainable(self.trainable_modules(), tensors, path)
        return int(meta.get("step", -1))

    def parameter_counts(self) -> dict[str, int]:
        trainable = sum(p.numel() for p in ckpt.trainable_state(self.trainable_modules()).values())
        frozen = sum(p.numel() for p in self.backbone.parameters() if not p.requires_grad)  # body (+ MLM head)
        return {"trainable_params": trainable, "total_params": trainable + frozen}


def run_metadata(cfg: Config) -> dict[str, str]:
    """What a checkpoint's header says about the run that wrote it (checked when it is loaded)."""
    return {"format": ckpt.FORMAT, "method": cfg.method.name, "model": cfg.model.hf_id or cfg.model.name,
            "family": cfg.model.family, "task": cfg.task_label}
