"""Prompt Tuning — Lester, Al-Rfou, Constant (2021), "The Power of Scale for Parameter-Efficient Prompt Tuning".

P soft tokens (a P x hidden matrix, Section 2) are placed before the input embeddings of a frozen
model; only they are trained. Parameters: ``P * hidden``.

Initialisation (Section 3.2):
* ``random_uniform``: uniform in [-0.5, 0.5].
* ``vocab_sample``: embeddings drawn from the 5,000 most common tokens (T5's SentencePiece ids are in
  frequency order; for WordPiece vocabularies the backbone lists ordinary whole words in vocab order,
  which is frequency order for BERT's vocab).
* ``class_labels``: each class label's embedding (multi-token labels averaged) fills one prompt token,
  in label order; remaining tokens fall back to ``vocab_sample``.
* ``text``: the embeddings of ``init_text``, repeated to fill P tokens (as PEFT's TEXT init does).
* ``random_normal`` (not in the paper): N(0, 1), Hugging Face PEFT's ``PromptTuningInit.RANDOM``, for
  comparisons with PEFT. Under a BERT embedding LayerNorm only the prompt's direction matters, so a
  larger init scale means a smaller relative step at the same Adam learning rate.

For BERT-family backbones the soft tokens go before [CLS] by default, as in PEFT
(``model.prompt_position=after_cls`` keeps [CLS] first; see ptune/backbones/bert.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ptune.config import MethodConfig
from ptune.errors import ConfigError
from ptune.methods import register
from ptune.methods.base import BackboneDims, Prompt, PromptMethod, TaskInfo

INITS = ("random_uniform", "vocab_sample", "class_labels", "text", "random_normal")


@dataclass
class PromptTuningConfig(MethodConfig):
    name: str = "prompt_tuning"
    num_virtual_tokens: int = 20
    init: str = "random_uniform"  # random_uniform | vocab_sample | class_labels | text
    init_text: str | None = None
    lr: float = 0.3

    def check(self) -> None:
        if self.init not in INITS:
            raise ConfigError(f"method.init={self.init!r} is not valid; choose one of: {', '.join(INITS)}")
        if self.init == "text" and not self.init_text:
            raise ConfigError("method.init=text needs method.init_text='some words'")


def initial_prompt(cfg: PromptTuningConfig, dims: BackboneDims, label_words: list[list[str]]) -> Tensor:
    p, emb = cfg.num_virtual_tokens, dims.word_embeddings.detach().float()
    if cfg.init == "random_uniform":
        return torch.empty(p, dims.hidden_size).uniform_(-0.5, 0.5)
    if cfg.init == "random_normal":  # PEFT's PromptTuningInit.RANDOM: nn.Embedding's default N(0, 1)
        return torch.randn(p, dims.hidden_size)
    sampled = emb[dims.common_token_ids[torch.randint(len(dims.common_token_ids), (p,))]].clone()
    if cfg.init == "vocab_sample":
        return sampled
    if cfg.init == "class_labels":
        words = [w for task_words in label_words for w in task_words][:p]
        if not words:
            raise ConfigError("method.init=class_labels: this run's tasks have no class labels (a regression task); "
                              f"choose one of: {', '.join(i for i in INITS if i != 'class_labels')}")
        for i, word in enumerate(words):
            ids = dims.tokenize(word)
            if ids:
                sampled[i] = emb[ids].mean(0)
        return sampled
    ids = dims.tokenize(cfg.init_text or "")
    if not ids:
        raise ConfigError(f"method.init_text={cfg.init_text!r} gives no tokens with this model's tokenizer; "
                          "give some words, or another method.init")
    ids = (ids * math.ceil(p / len(ids)))[:p]
    return emb[ids].clone()


PEFT_INITS = {"text": "TEXT", "vocab_sample": "SAMPLE_VOCAB"}  # PEFT's PromptTuningInit; the others: RANDOM


@register("prompt_tuning", PromptTuningConfig)
class PromptTuning(PromptMethod):
    peft_type = "PROMPT_TUNING"
    # a PEFT P-Tuning adapter keeps only its encoder's output (the P x d tokens): a plain prompt
    peft_imports = ("PROMPT_TUNING", "P_TUNING")

    def __init__(self, cfg: PromptTuningConfig, dims: BackboneDims, label_words: list[list[str]],
                 tasks: list[TaskInfo] | None = None):
        super().__init__(cfg, dims, label_words, tasks)
        self.prompt = nn.Parameter(initial_prompt(cfg, dims, label_words))

    def forward(self, task_ids: Tensor) -> Prompt:
        return Prompt(embeds=self.prompt.unsqueeze(0).expand(len(task_ids), -1, -1))

    @classmethod
    def peft_fields(cls, cfg: PromptTuningConfig, hidden_size: int) -> dict:
        init = PEFT_INITS.get(cfg.init, "RANDOM")  # a record only: PEFT loads the trained prompt over it
        return {"prompt_tuning_init": init, **({"prompt_tuning_init_text": cfg.init_text} if init == "TEXT" else {})}

    @classmethod
    def from_peft(cls, cfg: PromptTuningConfig, peft_type: str, prompt_embeddings: Tensor) -> dict[str, Tensor]:
        # seq2seq adapters hold num_transformer_submodules copies; PEFT's encoder reads the first P rows
        return {"prompt": prompt_embeddings[: cfg.num_virtual_tokens]}
