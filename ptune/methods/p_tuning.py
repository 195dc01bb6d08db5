"""P-Tuning — Liu, Zheng, Du, Ding, Qian, Yang, Tang (2021), "GPT Understands, Too" (arXiv 2103.10385).

P virtual tokens h_0..h_{P-1} are not trained directly: a prompt encoder maps trainable embeddings to
them (Section 3.2, "h_i = MLP([LSTM(h_{0:i}), LSTM(h_{i:m})])"), and the encoded tokens are placed
before the input embeddings of the frozen model. ``encoder`` chooses the encoder:

* ``lstm`` (the paper's): Embedding(P, d) -> 2-layer bidirectional LSTM with h units per direction ->
  Linear(2h, 2h) -> ReLU -> Linear(2h, d). Parameters, for d = hidden size, L = ``encoder_num_layers``:
  ``P*d + 2*[4h*(d + h) + 8h] + (L - 1)*2*[4h*(2h + h) + 8h] + 2h*2h + 2h + 2h*d + d``
  (each LSTM layer and direction: 4h x in and 4h x h weights, two 4h biases; in = d for the first
  layer, 2h above it).
* ``mlp`` (Hugging Face PEFT's variant, its recommended one): Embedding(P, d) -> Linear(d, h) -> ReLU ->
  Linear(h, h) -> ReLU -> Linear(h, d). Parameters: ``P*d + d*h + h + h*h + h + h*d + d``.

``encoder_hidden_size`` is h; null means the official code's choice for ``lstm``, h = d/2 per direction
(so the LSTM's output is d wide, THUDM/P-tuning LAMA/p_tuning/prompt_encoder.py), and PEFT's default
for ``mlp``, h = d. The module layout and names are PEFT's ``PromptEncoder`` (ptune/methods/hypernets.py),
so the weights load into PEFT unchanged; tests/methods/test_p_tuning.py compares logits with PEFT.

Deviations and choices:
* Placement: by default the virtual tokens go before the input (before [CLS] on BERT-family models, as
  PEFT). ``split=i`` gives the paper's ``[P_0..P_{i-1}] x [P_i..P_{P-1}] y`` template on BERT-family
  models: i tokens before the input x, the rest after it, right before the [MASK] y (or the final [SEP]).
  The paper's templates differ per task (some put tokens between the two sentences of a pair); ptune
  offers this one split, around the whole input.
* Scoring: ``model.head=mlm`` is the paper's cloze form (the frozen MLM head's logits of each label word
  at the [MASK], ptune/backbones/bert.py); ``model.head=classifier`` (default) trains a classification
  head on the pooled first token alongside, as P-Tuning v2's baselines do. The cloze form needs a
  checkpoint with an MLM head (``../shared``'s MiniLM has none; tests use a random-init tiny BERT).
* The paper's anchor tokens (task-related real tokens kept in the template) are not used.
* One prompt for all tasks: P-Tuning is not task-conditioned, so in a task mixture every task shares
  the encoder's output; it is computed once per batch, whatever the batch's task ids.
* Residual start (``residual``, ptune's option; default false): the tokens are ``e + encoder(e)``, with ``e``
  the trainable embeddings at prompt tuning's init (random_uniform) and the encoder's last layer at zero,
  so P-Tuning starts as a plain prompt and the encoder grows from there (the skip connection of
  Razdaibiedina et al. 2023, "Residual Prompt Tuning", without its LayerNorm so that the start is exact).
  Tried because the paper's encoder starts its P tokens nearly parallel on MiniLM (mean pairwise cosine
  0.59 MLP, 0.93 LSTM, against 0.06 for a plain prompt); on SST-2 it did not help (MLP 72.1 against 73.9
  over seeds 1-3, docs/methods.md "P-Tuning's nearly parallel start"), so the default is the paper's.
* At export the encoder is folded away: ``export`` returns the P x d tokens, a plain prompt_tuning
  prompt (tests show the logits are identical).
* Learning rate 3e-2 with ``method.lr_scaling=fan_in`` (each encoder weight at lr / fan-in): chosen by the
  search on the real MiniLM in docs/results.md ("Choosing the defaults"). The paper's 1e-5 is for tuning the
  whole model with the prompt; PEFT's examples' 1e-3 with one lr for every weight left the MiniLM runs at
  the majority class (the head shared it; docs/methods.md, "Why methods stalled on a real model").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ptune.config import MethodConfig
from ptune.errors import ConfigError
from ptune.methods import register
from ptune.methods.base import BackboneDims, Prompt, PromptMethod, TaskInfo
from ptune.methods.hypernets import ENCODERS, PromptEncoder, fp32
from ptune.methods.prompt_tuning import PromptTuningConfig, initial_prompt


@dataclass
class PTuningConfig(MethodConfig):
    name: str = "p_tuning"
    num_virtual_tokens: int = 20
    encoder: str = "lstm"  # lstm (the paper's bidirectional LSTM + MLP) | mlp (PEFT's)
    encoder_hidden_size: int | None = None  # null: lstm d/2 per direction (official code), mlp d (PEFT)
    encoder_num_layers: int = 2  # lstm only
    encoder_dropout: float = 0.0  # lstm only, between layers (PEFT's default)
    # BERT family: this many tokens before the input, the rest after it (before [MASK] / the final [SEP]); null: all
    # before
    split: int | None = None
    residual: bool = False  # true: tokens = e + encoder(e), starting as a plain prompt (no better: docs/methods.md)
    lr: float = 3e-2  # with lr_scaling=fan_in: the search on MiniLM in docs/results.md

    def check(self) -> None:
        if self.encoder not in ENCODERS:
            raise ConfigError(f"method.encoder={self.encoder!r} is not valid; choose one of: {', '.join(ENCODERS)}")
        if self.encoder_hidden_size is not None and self.encoder_hidden_size < 1:
            raise ConfigError(f"method.encoder_hidden_size={self.encoder_hidden_size} must be >= 1 (or null)")
        if self.encoder_num_layers < 1:
            raise ConfigError(f"method.encoder_num_layers={self.encoder_num_layers} must be >= 1")
        if not 0 <= self.encoder_dropout < 1:
            raise ConfigError(f"method.encoder_dropout={self.encoder_dropout} must be in [0, 1)")
        if self.split is not None and not 0 <= self.split <= self.num_virtual_tokens:
            raise ConfigError(f"method.split={self.split} must be in [0, method.num_virtual_tokens="
                              f"{self.num_virtual_tokens}] (tokens before the input; the rest go after it)")


def hidden_size(cfg: PTuningConfig, dims: BackboneDims) -> int:
    if cfg.encoder_hidden_size is not None:
        return cfg.encoder_hidden_size
    return max(1, dims.hidden_size // 2) if cfg.encoder == "lstm" else dims.hidden_size


@register("p_tuning", PTuningConfig)
class PTuning(PromptMethod):
    variants = (("method.encoder=lstm",), ("method.encoder=mlp",))
    peft_type = "P_TUNING"  # PEFT saves P-Tuning as its encoder's output, as ptune's folded form is
    def __init__(self, cfg: PTuningConfig, dims: BackboneDims, label_words: list[list[str]],
                 tasks: list[TaskInfo] | None = None):
        super().__init__(cfg, dims, label_words, tasks)
        self.encoder = PromptEncoder(cfg.num_virtual_tokens, dims.hidden_size, cfg.encoder, hidden_size(cfg, dims),
                                     cfg.encoder_num_layers, cfg.encoder_dropout)
        if cfg.residual:  # off by default: measured on MiniLM, it did not help (the module docstring)
            start = PromptTuningConfig(num_virtual_tokens=cfg.num_virtual_tokens, init="random_uniform")
            with torch.no_grad():
                self.encoder.embedding.weight.copy_(initial_prompt(start, dims, label_words))
                last = self.encoder.mlp_head[-1]
                last.weight.zero_()
                last.bias.zero_()

    def forward(self, task_ids: Tensor) -> Prompt:
        with fp32(self.encoder.embedding.weight.device):
            tokens = self.encoder()  # (1, P, d): once per batch
            if self.cfg.residual:
                tokens = tokens + self.encoder.embedding.weight
        return Prompt(embeds=tokens.expand(len(task_ids), -1, -1), split=self.cfg.split)

    @classmethod
    def peft_fields(cls, cfg: PTuningConfig, hidden_size: int) -> dict:
        h = cfg.encoder_hidden_size or (max(1, hidden_size // 2) if cfg.encoder == "lstm" else hidden_size)
        return {"encoder_reparameterization_type": cfg.encoder.upper(), "encoder_hidden_size": h,
                "encoder_num_layers": cfg.encoder_num_layers, "encoder_dropout": cfg.encoder_dropout}
