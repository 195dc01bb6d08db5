"""Prefix-Tuning — Li & Liang (2021), "Prefix-Tuning: Optimizing Continuous Prompts for Generation".

The same per-layer key/value prefixes as P-Tuning v2 (p_tuning_v2.py), with the paper's MLP
reparameterization on (Section 4.3: P_theta = MLP(P'_theta), which they found stabilises training);
``prefix_hidden_size`` is the MLP's width (the paper's 512 for table-to-text and 800 for summarization).
At export the MLP is folded away: only the resulting keys/values are needed for inference.
"""

from __future__ import annotations

from dataclasses import dataclass

from ptune.methods import register
from ptune.methods.p_tuning_v2 import PTuningV2, PTuningV2Config


@dataclass
class PrefixTuningConfig(PTuningV2Config):
    name: str = "prefix_tuning"
    reparameterize: bool = True
    prefix_dropout: float = 0.0
    lr: float = 1e-2


@register("prefix_tuning", PrefixTuningConfig)
class PrefixTuning(PTuningV2):
    # PEFT saves a prefix adapter as the MLP's output, which cannot be inverted to its input: such an adapter
    # starts method=p_tuning_v2 (the same prefix, no MLP) instead
    peft_imports = ()
