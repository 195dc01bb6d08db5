"""P-Tuning v2 — Liu et al. (2022), "P-Tuning v2: Prompt Tuning Can Be Comparable to Fine-tuning Universally
Across Scales and Tasks"; the same deep prompts as Prefix-Tuning (Li & Liang 2021, see prefix_tuning.py).

Trainable keys and values are prepended in every self-attention layer (Section 3.2, "deep prompt
tuning"); for encoder-decoder backbones ptune prompts both the encoder's and the decoder's
self-attention. As in the official code (THUDM/P-tuning-v2, ``model/prefix_encoder.py``):
* ``reparameterize=false`` (default): an embedding table of shape (P, layers * 2 * hidden).
  Parameters: ``P * L * 2 * heads * head_dim``.
* ``reparameterize=true``: Embedding(P, hidden) -> Linear(hidden, prefix_hidden_size) -> Tanh ->
  Linear(prefix_hidden_size, L * 2 * heads * head_dim), Prefix-Tuning's MLP. Parameters:
  ``P*h + h*m + m + m*(2*L*heads*head_dim) + 2*L*heads*head_dim`` for m = prefix_hidden_size.
* dropout on the generated keys/values (``prefix_dropout``; the official code uses the model's
  hidden dropout, 0.1).
The flat layout (key of layer l at slot 2l, value at 2l+1) is PEFT's, so weights transfer both ways.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ptune.config import MethodConfig
from ptune.errors import ConfigError
from ptune.methods import register
from ptune.methods.base import BackboneDims, Prompt, PromptMethod, TaskInfo, kv_from_flat


@dataclass
class PTuningV2Config(MethodConfig):
    name: str = "p_tuning_v2"
    num_virtual_tokens: int = 20
    reparameterize: bool = False
    prefix_hidden_size: int = 512
    prefix_dropout: float = 0.1
    lr: float = 1e-2

    def check(self) -> None:
        if self.prefix_hidden_size < 1:
            raise ConfigError(f"method.prefix_hidden_size={self.prefix_hidden_size} must be >= 1")
        if not 0 <= self.prefix_dropout < 1:
            raise ConfigError(f"method.prefix_dropout={self.prefix_dropout} must be in [0, 1)")


class PrefixEncoder(nn.Module):
    """Prefix token index -> flat keys/values for all layers (the official ``PrefixEncoder``)."""

    def __init__(self, num_tokens: int, hidden: int, out_dim: int, reparameterize: bool, mlp_hidden: int):
        super().__init__()
        self.reparameterize = reparameterize
        if reparameterize:
            self.embedding = nn.Embedding(num_tokens, hidden)
            self.transform = nn.Sequential(
                nn.Linear(hidden, mlp_hidden), nn.Tanh(), nn.Linear(mlp_hidden, out_dim)
            )
        else:
            self.embedding = nn.Embedding(num_tokens, out_dim)

    def forward(self) -> Tensor:
        x = self.embedding.weight
        return self.transform(x) if self.reparameterize else x


@register("p_tuning_v2", PTuningV2Config)
class PTuningV2(PromptMethod):
    places = "prefix"
    peft_type = "PREFIX_TUNING"
    peft_imports = ("PREFIX_TUNING",)

    def __init__(self, cfg: PTuningV2Config, dims: BackboneDims, label_words: list[list[str]],
                 tasks: list[TaskInfo] | None = None):
        super().__init__(cfg, dims, label_words, tasks)
        self.layers = dims.num_layers + dims.decoder_layers
        out_dim = self.layers * 2 * dims.num_heads * dims.head_dim
        self.encoder = PrefixEncoder(
            cfg.num_virtual_tokens, dims.hidden_size, out_dim, cfg.reparameterize, cfg.prefix_hidden_size
        )
        self.dropout = nn.Dropout(cfg.prefix_dropout)

    def forward(self, task_ids: Tensor) -> Prompt:
        # one prefix for the whole batch, computed once, then broadcast (no per-example MLP work)
        flat = self.dropout(self.encoder()).unsqueeze(0).expand(len(task_ids), -1, -1)
        d = self.dims
        kv = kv_from_flat(flat, self.layers, d.num_heads, d.head_dim)
        return Prompt(keys_values=kv[: d.num_layers], decoder_keys_values=kv[d.num_layers :] or None)

    @torch.no_grad()
    def flat_prefix(self) -> Tensor:
        return self.encoder()

    @classmethod
    def peft_fields(cls, cfg: PTuningV2Config, hidden_size: int) -> dict:
        return {"prefix_projection": cfg.reparameterize, "encoder_hidden_size": cfg.prefix_hidden_size}

    @classmethod
    def from_peft(cls, cfg: PTuningV2Config, peft_type: str, prompt_embeddings: Tensor) -> dict[str, Tensor]:
        if cfg.reparameterize:  # PEFT saves the MLP's output, and an MLP cannot be inverted to its input
            raise ConfigError(f"method={cfg.name} with reparameterize=true cannot start from a PEFT prefix adapter: it "
                              "holds the prefix itself, not the MLP's input; use method=p_tuning_v2 "
                              "(method.reparameterize=false)")
        return {"encoder.embedding.weight": prompt_embeddings}
