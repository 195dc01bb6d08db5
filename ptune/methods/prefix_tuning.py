"""Prefix-Tuning — Li & Liang (2021), "Prefix-Tuning: Optimizing Continuous Prompts for Generation".

The same per-layer key/value prefixes as P-Tuning v2 (p_tuning_v2.py), with the paper's MLP
reparameterization on (Section 4.3: P_theta = MLP(P'_theta), which they found stabilises training);
``prefix_hidden_size`` is the MLP's width (the paper's 512 for table-to-text and 800 for summarization).
At export the MLP is folded away: only the resulting keys/values are needed for inference.

Learning rate 3e-2 with ``method.lr_scaling=fan_in`` (the MLP's weights at lr / fan-in): chosen on the real
MiniLM, SST-2, 300 steps (docs/results.md, "Choosing the defaults"): 73.28 at 3e-3, 77.83 at 1e-2 and 80.20
at 3e-2 (the last two over seeds 1-3, every seed higher at 3e-2). The paper's 5e-5 is for GPT-2 / BART with
one lr for every weight; with fan-in scaling it would barely move the prefix.
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
    # with lr_scaling=fan_in (the MLP at lr / fan-in): the search on MiniLM in docs/results.md (80.2 over 3 seeds;
    # 1e-2: 77.8)
    lr: float = 3e-2


@register("prefix_tuning", PrefixTuningConfig)
class PrefixTuning(PTuningV2):
    # PEFT saves a prefix adapter as the MLP's output, which cannot be inverted to its input: such an adapter
    # starts method=p_tuning_v2 (the same prefix, no MLP) instead
    peft_imports = ()
