"""Optimizers and schedules over the trainable parameters only (the frozen body gets no state)."""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LambdaLR
from transformers.optimization import Adafactor

from ptune.config import OptimizerConfig
from ptune.errors import unknown


def build_optimizer(cfg: OptimizerConfig, params: list[torch.nn.Parameter] | list[dict], lr: float,
                    device: torch.device) -> torch.optim.Optimizer:
    """``params``: parameters, or groups (``{"params": [...], "lr": ...}``) whose own lr overrides ``lr``."""
    if cfg.name == "adamw":
        return torch.optim.AdamW(
            params, lr=lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay,
            fused=device.type == "cuda",
        )
    if cfg.name == "adafactor":
        # Lester et al. (2021): Adafactor, constant lr 0.3, no parameter scaling, weight decay 1e-5
        return Adafactor(
            params, lr=lr, weight_decay=cfg.weight_decay, scale_parameter=False, relative_step=False,
            warmup_init=False,
        )
    raise unknown("optimizer", cfg.name, ("adamw", "adafactor"))


def build_scheduler(cfg: OptimizerConfig, optimizer: torch.optim.Optimizer, total_steps: int) -> LambdaLR:
    warmup = cfg.warmup_steps or int(cfg.warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if cfg.scheduler == "constant":
            return 1.0
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return LambdaLR(optimizer, factor)
