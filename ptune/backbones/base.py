"""The backbone seam: a frozen Hugging Face model plus the code that places a :class:`Prompt` and scores.

Backbones own: loading (hub id or local cache, random-init configs for tests), freezing, precision,
prompt placement (input embeddings, attention-mask extension, per-layer keys/values through
transformers' ``Cache`` objects, T5's encoder hook) and scoring (T5 rank classification, encoder heads).
A backbone never knows which method made the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

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

    def dims(self) -> BackboneDims:
        raise NotImplementedError

    def forward(self, batch: dict, prompt: Prompt, *, score: bool = True) -> Output:
        """Loss (when the batch has targets) and, if ``score``, per-example scores."""
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

