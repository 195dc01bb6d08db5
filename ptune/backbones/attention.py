"""Deep prompts through transformers' attention-function registry (``AttentionInterface``).

transformers 5.x dispatches every BERT-family and T5 attention layer through
``ALL_ATTENTION_FUNCTIONS[config._attn_implementation]``, and documents ``AttentionInterface.register``
(with ``AttentionMaskInterface.register`` for its masks) as the way to add an attention function. ptune
registers ``ptune_sdpa`` and ``ptune_eager``: while :func:`prefixes` is active, each attention module that
the backbone mapped to a prefix gets that prefix's keys/values prepended to its own, the mask extended by
attended prefix columns and, for T5, the relative position bias extended by the prefix's columns; then
the stock kernel runs. Modules without a prefix (cross-attention, a run without deep prompts) go
straight to the stock kernel.

Why not a ``Cache`` (what PEFT and ptune did before)? It needs the attention modules' cache keyword,
which transformers 5.24 renamed (``past_key_values`` -> ``cache``) while T5's layers pass ``cache=None``
explicitly, and T5's encoder stack drops any cache. The registry is a documented extension point whose
call signature (module, query, key, value, mask, **kwargs) has held across transformers 5.x; it reaches
T5's encoder without a module hook. Measured against the Cache route on MiniLM (batch 32 x 128, 20
prefix tokens, transformers 5.23, scripts/bench_placement.py): a training step costs 1.006x, within
noise, and the outputs are bit-identical (docs/benchmarks.md, "Deep prompt placement").

The prefix sits to the left of the input: for T5's relative position bias the prefix keys take memory
positions 0..P-1 and the queries P.. (what a past of length P gives), and BERT's absolute positions are
shifted by the backbone (ptune/backbones/bert.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from transformers import AttentionInterface, AttentionMaskInterface

BASES = ("sdpa", "eager")
PREFIX = "ptune_"


@dataclass
class StackBias:
    """T5: the attention that owns a stack's relative position bias, and the bias extended once per call."""

    source: nn.Module
    extended: dict = field(default_factory=dict)  # (query length, id of the stack's bias) -> tensor


@dataclass
class LayerPrefix:
    key: Tensor  # (B or 1, heads, P, head_dim)
    value: Tensor
    bias: StackBias | None = None  # shared by the layers of one T5 stack; None for BERT


_ACTIVE: ContextVar[dict[nn.Module, LayerPrefix] | None] = ContextVar("ptune_prefixes", default=None)


@contextmanager
def prefixes(layers: dict[nn.Module, LayerPrefix]) -> Iterator[None]:
    """Within the block, each attention module in ``layers`` attends to its prefix as well."""
    token = _ACTIVE.set(layers or None)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def eager(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
          scaling: float | None = None, dropout: float = 0.0, position_bias: Tensor | None = None, **kwargs):
    """transformers' eager attention (BERT's and T5's are this formula; T5 adds ``position_bias``)."""
    scaling = query.size(-1) ** -0.5 if scaling is None else scaling
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if position_bias is not None:
        weights = weights + position_bias
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            attention_mask = torch.zeros_like(attention_mask, dtype=weights.dtype).masked_fill(
                ~attention_mask, torch.finfo(weights.dtype).min)
        weights = weights + attention_mask
    weights = nn.functional.softmax(weights, dim=-1)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def _kernel(base: str) -> Callable:
    return eager if base == "eager" else AttentionInterface()[base]


def _batch(t: Tensor, n: int) -> Tensor:
    if t.shape[0] == n:
        return t
    if t.shape[0] == 1:
        return t.expand(n, *t.shape[1:])
    return t.repeat_interleave(n // t.shape[0], 0)  # multiple-choice / candidate rows


def _extend_mask(mask: Tensor | None, module: nn.Module, query: Tensor, keys: int, p: int) -> Tensor | None:
    """The input's mask with ``p`` attended columns in front; None stays None when nothing is masked."""
    q = query.shape[2]
    if mask is None:
        if not (getattr(module, "is_causal", False) and q > 1):
            return None  # bidirectional, no padding: everything (prefix included) is attended
        # causal without a mask: the kernel would align is_causal top-left, so spell it out
        mask = torch.ones(q, keys, dtype=torch.bool, device=query.device).tril(keys - q)[None, None]
    front = (mask.new_ones if mask.dtype == torch.bool else mask.new_zeros)(*mask.shape[:-1], p)
    return torch.cat([front, mask], dim=-1)


def _extend_bias(stack: StackBias | None, bias: Tensor, q: int, p: int) -> Tensor:
    """T5: the bias of queries at P.. against prefix keys at 0..P-1, left of the input's own bias."""
    cache_key = (q, id(bias))
    extended = stack.extended if stack is not None else {}
    if cache_key not in extended:  # T5 passes layer 0's bias to every layer: extend it once per call
        src = stack.source if stack is not None else None
        if src is not None and getattr(src, "has_relative_attention_bias", False):
            front = src.compute_bias(q, p, device=bias.device, past_seen_tokens=p).to(bias.dtype)
        else:
            front = bias.new_zeros(*bias.shape[:-1], p)
        extended[cache_key] = torch.cat([front.expand(bias.shape[0], -1, -1, -1), bias], dim=-1)
    return extended[cache_key]


def _prefixed(base: str) -> Callable:
    kernel = _kernel(base)

    def attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor,
                  attention_mask: Tensor | None, **kwargs):
        active = _ACTIVE.get()
        prefix = active.get(module) if active else None
        if prefix is None:
            return kernel(module, query, key, value, attention_mask, **kwargs)
        n, p = query.shape[0], prefix.key.shape[2]
        attention_mask = _extend_mask(attention_mask, module, query, key.shape[2], p)
        key = torch.cat([_batch(prefix.key.to(key.dtype), n), key], dim=2)
        value = torch.cat([_batch(prefix.value.to(value.dtype), n), value], dim=2)
        bias = kwargs.get("position_bias")
        if bias is not None:
            kwargs["position_bias"] = _extend_bias(prefix.bias, bias, query.shape[2], p)
        return kernel(module, query, key, value, attention_mask, **kwargs)

    return attention


def implementation(base: str) -> str:
    """Register ptune's variant of ``base`` (sdpa | eager) once and return its registry name."""
    if base not in BASES:
        raise ValueError(f"attention implementation {base!r} is not one of {BASES}")
    name = PREFIX + base
    if name not in AttentionInterface():
        AttentionInterface.register(name, _prefixed(base))
        AttentionMaskInterface.register(name, AttentionMaskInterface()[base])  # the base's own masks
    return name
