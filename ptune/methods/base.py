"""The method seam: everything trainable that is not the backbone.

A method sees the backbone only through :class:`BackboneDims` (layer/head sizes, the frozen word
embeddings for initialisation, a tokenizer callback) and returns a :class:`Prompt` for a batch of task
ids. Where the prompt goes (input embeddings, per-layer keys/values, T5 encoder and decoder) is the
backbone's business.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

KeysValues = list[tuple[Tensor, Tensor]]  # per layer: (B, heads, P, head_dim) keys and values


@dataclass
class Prompt:
    embeds: Tensor | None = None  # (B, P, hidden): soft tokens placed among the input tokens
    keys_values: KeysValues | None = None  # encoder (or only) stack self-attention prefixes
    decoder_keys_values: KeysValues | None = None  # encoder-decoder models: decoder self-attention

    @property
    def num_tokens(self) -> int:
        return 0 if self.embeds is None else self.embeds.shape[1]

    @property
    def prefix_length(self) -> int:
        return 0 if self.keys_values is None else self.keys_values[0][0].shape[2]


@dataclass
class BackboneDims:
    hidden_size: int
    num_layers: int  # encoder (or only) stack
    num_heads: int
    head_dim: int  # T5's d_kv need not be hidden_size / heads
    decoder_layers: int  # 0 for encoder-only models
    word_embeddings: Tensor  # (vocab, hidden), frozen; read for initialisation only
    tokenize: Callable[[str], list[int]]  # text -> token ids, without special tokens
    common_token_ids: Tensor  # ids of the most frequent ordinary tokens, most frequent first


class PromptMethod(nn.Module):
    """Base class: ``forward(task_ids) -> Prompt``; parameters are exactly what gets trained and saved."""

    def __init__(self, cfg, dims: BackboneDims, label_words: list[list[str]]):
        super().__init__()
        self.cfg = cfg
        self.dims = dims

    def forward(self, task_ids: Tensor) -> Prompt:
        raise NotImplementedError

    def export(self, task_ids: Tensor) -> dict[str, Tensor]:
        """Plain prompt tensors for inference (reparameterizations folded away)."""
        with torch.no_grad():
            prompt = self(task_ids)
        out: dict[str, Tensor] = {}
        if prompt.embeds is not None:
            out["embeds"] = prompt.embeds
        for name, kv in (("encoder", prompt.keys_values), ("decoder", prompt.decoder_keys_values)):
            for i, (k, v) in enumerate(kv or []):
                out[f"{name}.{i}.key"], out[f"{name}.{i}.value"] = k, v
        return out


def kv_from_flat(flat: Tensor, num_layers: int, num_heads: int, head_dim: int) -> KeysValues:
    """(B, P, layers*2*heads*head_dim) -> per layer (key, value), each (B, heads, P, head_dim).

    The layout is PEFT's (and P-Tuning v2's): layer l's key is slot 2l, its value slot 2l+1.
    """
    b, p, _ = flat.shape
    x = flat.view(b, p, num_layers * 2, num_heads, head_dim).permute(2, 0, 3, 1, 4)
    return [(x[2 * i], x[2 * i + 1]) for i in range(num_layers)]
