"""Model tuning: full fine-tuning of the backbone, the baseline every prompt-tuning paper compares against
(Lester et al. 2021, Figure 1; Liu et al. 2022, Table 1: "FT").

No prompt: the method has no parameters and places nothing. What trains is the whole body
(``model.trainable`` is true for this method and may not be turned off) and, for BERT-family models, each
task's head. Parameters: the backbone's (all of them) plus the heads'.

The body keeps fp32 master weights whatever ``trainer.precision`` says (bf16 / fp16 run through autocast),
and the checkpoint (``prompt.safetensors``) then holds the whole trained model: keys ``body.<name>`` are
the Hugging Face model's own state-dict names, so ``model.load_state_dict({k[5:]: v ...})`` reads them.
``model.trainable=true`` gives the same body training to any prompt method (HyperPrompt's paper trains
T5 with its hyper-prompts).

The default learning rate, 5e-5, is the usual BERT fine-tuning rate (Devlin et al. 2019 searched 2e-5 to
5e-5) and the rate of the PEFT full-fine-tuning baseline in docs/results.md; T5 papers fine-tune at 1e-4
to 1e-3 with Adafactor (``optimizer=adafactor optimizer.lr=1e-3``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from ptune.config import MethodConfig
from ptune.errors import ConfigError
from ptune.methods import register
from ptune.methods.base import Prompt, PromptMethod


@dataclass
class ModelTuningConfig(MethodConfig):
    name: str = "model_tuning"
    num_virtual_tokens: int = 0  # no prompt
    lr: float = 5e-5
    # per_task must stay false: there is no prompt (BERT-family tasks keep their own heads)
    trains_body: ClassVar[bool] = True

    def check(self) -> None:
        if self.num_virtual_tokens:
            raise ConfigError(f"method.num_virtual_tokens={self.num_virtual_tokens}: model_tuning places no prompt; "
                              "drop it, or choose a prompt method with model.trainable=true")
        if self.init_from is not None:
            raise ConfigError("method.init_from: model_tuning has no prompt to transfer (it trains the whole body)")
        if self.per_task:
            raise ConfigError("method.per_task=true has no meaning for model_tuning (it has no prompt; "
                              "BERT-family tasks keep their own heads)")


@register("model_tuning", ModelTuningConfig)
class ModelTuning(PromptMethod):
    """Places nothing; the trained body and heads are the run's parameters."""

    places = "none"

    def forward(self, task_ids: Tensor) -> Prompt:
        return Prompt()
