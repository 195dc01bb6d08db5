"""The backbone seam: a frozen Hugging Face model plus the code that places a :class:`Prompt` and scores.

Backbones own: loading (hub id or local cache, random-init configs for tests), freezing, precision,
prompt placement (input embeddings, attention-mask extension, per-layer keys/values through
transformers' ``Cache`` objects, T5's encoder hook) and scoring (T5 rank classification, encoder heads).
A backbone never knows which method made the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ptune.methods.base import BackboneDims, Prompt


@dataclass
class Output:
    loss: Tensor | None  # fp32 scalar, only when the batch has labels
    scores: Tensor  # (B, C) choice scores (higher = better), or (B,) regression values


class Backbone(nn.Module):
    family: str
    model: nn.Module  # frozen
    tokenizer: Any  # the model's Hugging Face tokenizer

    def dims(self) -> BackboneDims:
        raise NotImplementedError

    def forward(self, batch: dict, prompt: Prompt, *, score: bool = True) -> Output:
        """Loss (when the batch has targets) and, if ``score``, per-example scores."""
        raise NotImplementedError

    def forward_many(self, batches: list[dict], prompt: Prompt) -> list[Tensor]:
        """Scores of several one-task batches (each as ``tasks.collate`` builds it, possibly of different tasks,
        lengths and candidate counts) from one pass through the body: ``prompt`` holds one row per example, the
        batches' examples in order. Returns each batch's scores as :meth:`forward` would give them alone (its own
        choices' width; its own head on a BERT-family body). ptune serve's mixed-task batches (ptune/pool.py)."""
        raise NotImplementedError

    def head_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters the backbone owns (task heads); empty for text-to-text models."""
        return [p for p in self.parameters() if p.requires_grad]

    def freeze(self) -> None:
        self.model.requires_grad_(False)

    def place_embeds(self, embeds: Tensor, mask: Tensor, prompt: Prompt, at: int) -> tuple[Tensor, Tensor]:
        """Insert the prompt's soft tokens at position ``at``; the attention mask covers them."""
        if prompt.embeds is None:
            return embeds, mask
        soft = prompt.embeds.to(embeds.dtype)
        ones = mask.new_ones(mask.shape[0], soft.shape[1])
        embeds = torch.cat([embeds[:, :at], soft, embeds[:, at:]], dim=1)
        mask = torch.cat([mask[:, :at], ones, mask[:, at:]], dim=1)
        return embeds, mask



def pad_cat(tensors: list[Tensor], value: float | bool) -> Tensor:
    """Concatenate along dim 0, padding every later dim to the widest with ``value`` (right padding)."""
    shape = [max(t.shape[d] for t in tensors) for d in range(1, tensors[0].dim())]
    out = tensors[0].new_full((sum(len(t) for t in tensors), *shape), value)
    row = 0
    for t in tensors:
        out[(slice(row, row + len(t)), *(slice(0, n) for n in t.shape[1:]))] = t
        row += len(t)
    return out
