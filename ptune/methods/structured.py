"""Structured Prompt Tuning — Liu, Lee, Yih (2022), "Structured Prompt Tuning" (arXiv 2205.12309).

Instead of training the soft prompt P (P x d) directly, a hypernetwork f generates it from a learned
task embedding z_t: ``vec(P_t) = f(z_t)``, and P_t is placed before the input embeddings of the frozen
model, as in prompt tuning. Single-task training has one task embedding; multi-task training has one
per task (task id t = row t) and one shared hypernetwork, so tasks share f's structure.

``hypernetwork`` chooses f (``ptune.methods.hypernets.Generator``), with e = ``task_embedding_dim``,
T tasks, and the output size n = P*d:

* ``linear``:   f(z) = W z + c                 parameters ``T*e + n*e + n``
* ``low_rank``: f(z) = A (B z) + c, rank r     parameters ``T*e + r*e + n*r + n``
* ``mlp``:      f(z) = W2 ReLU(W1 z + b1) + b2 parameters ``T*e + e*h + h + h*n + n``, h = ``hidden_size``

Standard prompt tuning is the special case the paper points out: a linear f with W = 0 and c = vec(P)
(or W = vec(P) z^T / |z|^2) outputs the prompt P whatever the task embedding;
tests/methods/test_structured.py builds it and checks the logits equal a prompt_tuning module's.

Choices where the paper leaves them open (ptune's, checkable against the paper):
* Task embedding size: ``task_embedding_dim`` null means the backbone's hidden size d, which is what
  ``init=description`` needs; any size works with ``init=random``.
* Task embedding initialisation, ``init``:
  - ``random``: N(0, 1), as hyperformer initialises its task embeddings.
  - ``description``: the mean of the frozen word embeddings of a natural-language description of each
    task: ``method.task_descriptions`` (one string per task, in task-id order) if given, else the
    task's own description from ptune's task catalogue (``ptune.tasks.DESCRIPTIONS``, e.g. SST-2: "Is the
    sentiment of this movie review sentence positive or negative?"), else, for a method built outside a
    run, one derived from the label words, ``"negative or positive"``.
* The generator's layers use PyTorch's default ``nn.Linear`` initialisation; the MLP's activation is
  ReLU (HyperPrompt's hypernetworks use it too; the paper does not fix one here).
* Generation: once per distinct task id in the batch, in fp32 even under bf16 autocast; rows index into
  the per-task prompts.
* At export the hypernetwork is folded away: ``export(task_ids)`` gives each row's plain P x d prompt,
  a prompt_tuning prompt per task (tests show identical logits).
* Starting point (``prompt_init``, ptune's): the generator's last layer starts at weight 0 and bias = a
  prompt_tuning init (random_uniform), so every task's prompt starts as a plain prompt and the special case
  the paper argues from is where training begins; ``prompt_init=generator`` keeps PyTorch's init.
* Learning rate 0.1 with ``method.lr_scaling=fan_in`` (each generator weight at lr / fan-in, so the prompt
  moves as fast as a plain prompt at that lr): chosen by the search on the real MiniLM in docs/results.md
  ("Choosing the defaults"); with one lr for every weight, 1e-2 grew the prompt 20-fold in 30 steps and it
  stopped learning (docs/methods.md, "Why methods stalled on a real model").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ptune.config import MethodConfig
from ptune.errors import ConfigError
from ptune.methods import register
from ptune.methods.base import BackboneDims, Prompt, PromptMethod, TaskInfo
from ptune.methods.hypernets import (
    GENERATORS,
    Generator,
    TaskEmbeddings,
    fp32,
    per_row,
    text_embedding,
    unique_tasks,
)
from ptune.methods.prompt_tuning import PromptTuningConfig, initial_prompt

INITS = ("random", "description")
PROMPT_INITS = ("random_uniform", "vocab_sample", "class_labels", "random_normal", "generator")


@dataclass
class StructuredConfig(MethodConfig):
    name: str = "structured"
    num_virtual_tokens: int = 20
    hypernetwork: str = "low_rank"  # linear | low_rank | mlp
    rank: int = 16  # low_rank
    hidden_size: int = 256  # mlp
    task_embedding_dim: int | None = None  # null: the backbone's hidden size (needed by init=description)
    init: str = "random"  # random (N(0, 1)) | description (mean word embedding of each task's description)
    # the generated prompt at step 0: a prompt_tuning init (random_uniform | vocab_sample | class_labels |
    # random_normal) held in the generator's last bias, its last weight zero; generator: PyTorch's default init
    prompt_init: str = "random_uniform"
    task_descriptions: list[str] | None = None  # init=description: one per task; null: from label words
    lr: float = 0.1  # with lr_scaling=fan_in: the search on MiniLM in docs/results.md
    # per_task is ignored: this method conditions on the task id itself

    def check(self) -> None:
        if self.hypernetwork not in GENERATORS:
            raise ConfigError(f"method.hypernetwork={self.hypernetwork!r} is not valid; choose one of: "
                              f"{', '.join(GENERATORS)}")
        if self.init not in INITS:
            raise ConfigError(f"method.init={self.init!r} is not valid; choose one of: {', '.join(INITS)}")
        if self.prompt_init not in PROMPT_INITS:
            raise ConfigError(f"method.prompt_init={self.prompt_init!r} is not valid; choose one of: "
                              f"{', '.join(PROMPT_INITS)}")
        for key in ("rank", "hidden_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"method.{key}={getattr(self, key)} must be >= 1")
        if self.task_embedding_dim is not None and self.task_embedding_dim < 1:
            raise ConfigError(f"method.task_embedding_dim={self.task_embedding_dim} must be >= 1 (or null)")


def descriptions(cfg: StructuredConfig, tasks: list[TaskInfo]) -> list[str]:
    """One description per task: the configured ones, else each task's own, else its label words."""
    if cfg.task_descriptions is not None:
        if len(cfg.task_descriptions) != len(tasks):
            raise ConfigError(f"method.task_descriptions has {len(cfg.task_descriptions)} entries; this run has "
                              f"{len(tasks)} task(s), one description each")
        return list(cfg.task_descriptions)
    out = []
    for task in tasks:
        if not task.description and not task.label_words:
            raise ConfigError(f"method.init=description: task {task.name!r} has no description or label words; "
                              "set method.task_descriptions=['...']")
        out.append(task.description or " or ".join(task.label_words))
    return out


def initial_task_embeddings(cfg: StructuredConfig, dims: BackboneDims, tasks: list[TaskInfo],
                            dim: int) -> Tensor | None:
    if cfg.init == "random":
        return None
    if dim != dims.hidden_size:
        raise ConfigError(f"method.init=description makes task embeddings of the backbone's hidden size "
                          f"{dims.hidden_size}; method.task_embedding_dim={dim} differs (set it to null)")
    rows = []
    for text in descriptions(cfg, tasks):
        try:
            rows.append(text_embedding(text, dims.word_embeddings, dims.tokenize))
        except ValueError as err:
            raise ConfigError(f"method.task_descriptions: {err}") from None
    return torch.stack(rows)


@register("structured", StructuredConfig)
class StructuredPromptTuning(PromptMethod):
    task_aware = True
    variants = tuple((f"method.hypernetwork={k}",) for k in GENERATORS)
    peft_type = "PROMPT_TUNING"  # folded, each task's prompt is a plain one: one PEFT adapter per task

    def __init__(self, cfg: StructuredConfig, dims: BackboneDims, label_words: list[list[str]],
                 tasks: list[TaskInfo] | None = None):
        super().__init__(cfg, dims, label_words, tasks)
        dim = cfg.task_embedding_dim or dims.hidden_size
        init = initial_task_embeddings(cfg, dims, self.tasks, dim)
        self.task_embeddings = TaskEmbeddings(max(1, len(label_words)), dim, init)
        self.generator = Generator(dim, cfg.num_virtual_tokens * dims.hidden_size, cfg.hypernetwork, cfg.rank,
                                   cfg.hidden_size)
        if cfg.prompt_init != "generator":
            start = PromptTuningConfig(num_virtual_tokens=cfg.num_virtual_tokens, init=cfg.prompt_init)
            self.generator.start_at(initial_prompt(start, dims, label_words))

    def prompts(self, tasks: Tensor) -> Tensor:
        """(len(tasks), P, d): the generated prompt of each given task id."""
        with fp32(self.task_embeddings.weight.device):
            flat = self.generator(self.task_embeddings(tasks))
        return flat.view(len(tasks), self.cfg.num_virtual_tokens, self.dims.hidden_size)

    def forward(self, task_ids: Tensor) -> Prompt:
        tasks, rows = unique_tasks(task_ids)
        return Prompt(embeds=per_row(self.prompts(tasks), rows))
