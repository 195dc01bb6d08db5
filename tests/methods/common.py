"""Helpers for the method tests: small dims, parameter counts, tiny-backbone parts and their outputs."""

from __future__ import annotations

import torch

from ptune import run
from ptune.methods.base import BackboneDims, Prompt
from ptune.tasks.collate import iterate
from ptune.training.loop import train_step
from ptune.training.optim import build_optimizer, build_scheduler
from tests.conftest import sst2_examples, tiny_config


def small_dims(decoder_layers: int = 0, hidden: int = 16, layers: int = 3, heads: int = 4,
               head_dim: int = 5) -> BackboneDims:
    """heads * head_dim (20) differs from hidden (16) on purpose, as T5's d_kv allows."""
    vocab = torch.randn(100, hidden)
    return BackboneDims(
        hidden_size=hidden, num_layers=layers, num_heads=heads, head_dim=head_dim, decoder_layers=decoder_layers,
        word_embeddings=vocab, tokenize=lambda text: [len(w) % 100 for w in text.split()],
        common_token_ids=torch.arange(10, 60),
    )


def count(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


def parts_for(family: str, method: str, tmp_path, *extra: str, seed: int = 42):
    cfg = tiny_config(family, method, "model.dropout=0.0", f"seed={seed}", *extra, tmp_path=tmp_path)
    ex = sst2_examples()
    return run.build(cfg, examples={"train": ex, "eval": ex})


def batch16(parts) -> dict:
    return next(iterate(parts.train, [list(range(16))], parts.backbone.family, parts.pad_id))


def outputs(parts, prompt: Prompt, batch: dict | None = None) -> torch.Tensor:
    """The backbone's logits for the 16 examples: T5's decoder logits on the gold targets, BERT's head logits."""
    parts.backbone.eval()
    batch = batch16(parts) if batch is None else batch
    with torch.no_grad():
        bb = parts.backbone
        if bb.family == "t5":
            enc, mask = bb.encode(batch, prompt)
            return bb.decode(enc, mask, batch["labels"], prompt, len(enc))
        return bb(batch, prompt).scores


def method_outputs(parts, task_ids: torch.Tensor | None = None) -> torch.Tensor:
    parts.method.eval()
    batch = batch16(parts)
    with torch.no_grad():
        prompt = parts.method(batch["task_ids"] if task_ids is None else task_ids)
    return outputs(parts, prompt, batch)


def full_batch_loss(parts) -> float:
    parts.method.eval(), parts.backbone.eval()
    batch = batch16(parts)
    with torch.no_grad():
        return parts.backbone(batch, parts.method(batch["task_ids"]), score=False).loss.item()


def train_until_halved(parts, max_steps: int, check_every: int = 5) -> tuple[float, float, int]:
    """Full-batch steps on the 16 examples until the loss is below half its start, at most ``max_steps``."""
    before = full_batch_loss(parts)
    params = parts.trainable_parameters()
    opt = build_optimizer(parts.cfg.optimizer, params, parts.cfg.lr, parts.device)
    sched = build_scheduler(parts.cfg.optimizer, opt, max_steps)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    after, step = before, 0
    while step < max_steps:
        train_step(parts, opt, sched, scaler, [list(range(16))], params)
        step += 1
        if step % check_every == 0 or step == max_steps:
            after = full_batch_loss(parts)
            if after < before / 2:
                break
    return before, after, step
