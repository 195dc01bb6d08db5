"""HyperPrompt — He, Zheng, Tay, Gupta, Du, Aribandi, Zhao, Li, Chen, Metzler, Cheng, Chi (2022),
"HyperPrompt: Prompt-based Task-Conditioning of Transformers" (ICML 2022, arXiv 2203.00759).

Task-conditioned key/value "hyper-prompts" are prepended to the keys and values of every self-attention
layer (Section 3.1, Figure 2a): in layer m, queries attend to [P^m_{t,k}; K] and [P^m_{t,v}; V], each
hyper-prompt l x (heads*head_dim), split into heads like K and V. They are generated (Section 3.2):

* a **global prompt** P_t in R^{l x d} per task t (d = hidden size), shared by all layers;
* at each prompted layer m, **local hypernetworks** h^m_k, h^m_v map it to that layer's hyper-prompts:
  ``P^m_{t,k} = h^m_k(P_t) = U^m_k ReLU(D^m_k P_t)`` (rows of P_t are tokens), D: d -> b, U: b -> heads*head_dim,
  b = ``bottleneck``; likewise for values.

``variant`` is the paper's Figure 2b/2c (Sections 3.2-3.3):

* ``share``: one set of local hypernetworks (per layer, for keys and values) for all tasks.
* ``sep``: each task has its own local hypernetworks.
* ``global`` (the paper's HyperPrompt-Global): the local hypernetworks' weights are generated, per task
  and layer, by global hypernetworks H_k, H_v from a layer-aware task embedding
  ``I^m_t = h(k_t, z_m)``: ``(U^m_{t,k}, D^m_{t,k}) = H_k(I^m_t) = (W^{U_k} I^m_t, W^{D_k} I^m_t)``, with a task
  embedding k_t (t' = ``task_embedding_dim``), a layer embedding z_m (t'' = ``layer_embedding_dim``) and
  h an MLP (e = ``embedding_hidden_size``, output t = ``layer_task_embedding_dim``).

Parameters, with T tasks, M prompted layers, d hidden size, a = heads*head_dim (a = d on T5-base and
BERT-base), l = ``num_virtual_tokens``:

* share:  ``T*l*d + 2*M*b*(d + a)``
* sep:    ``T*l*d + 2*T*M*b*(d + a)``
* global: ``T*l*d + T*t' + M*t'' + (t' + t'')*e + e + e*t + t + 2*t*b*(d + a)``
  (the last term is the paper's 4bdt when a = d: H_k and H_v each generate a d x b and a b x d matrix).

Choices where the paper leaves them open, or where ptune deviates (checkable against the paper):

* **Frozen backbone by default.** The paper trains the whole model with the hyper-prompts;
  ``model.trainable=true`` does that (the body in fp32, ``model.lr`` for its own rate). By default only
  the HyperPrompt parameters (and BERT's task heads) train.
* **Stacks** (``stacks``): ``both`` (default) prompts every self-attention layer the backbone has: T5's
  encoder and decoder self-attention (never cross-attention), BERT's self-attention; ``encoder`` or
  ``decoder`` limits it to one T5 stack (``decoder`` on an encoder-only model is an error). Prompted
  layers are numbered encoder first, then decoder (m indexes the layer embeddings and local networks).
* **No biases** in the local hypernetworks, as in the paper's equations (matrices D and U); h has biases.
* **Initialisation** (the paper gives none): global prompts, task and layer embeddings N(0, 1); share/sep
  local weights as a default ``nn.Linear`` (uniform, bound 1/sqrt(fan_in)); global hypernetworks
  hyperfan-in (Chang et al. 2020) so that generated D, U start at that same scale.
* **I is RMS-normalised** without learned parameters before H_k, H_v (not in the paper; it fixes the
  scale the hyperfan-in initialisation assumes; no parameters, so the formula above is unchanged).
* **Efficiency.** Hyper-prompts are generated once per distinct task id in the batch and shared by its
  rows; in fp32 even under bf16 autocast (the backbone casts them where they enter attention).
* **Export** folds every hypernetwork away: ``export(task_ids)`` gives each row's plain per-layer keys and
  values, which a p_tuning_v2 prefix loaded with them reproduces exactly (tests).
* Defaults (l 16, b 16, t' = t'' = t = 32, e 64) are ptune's: small; docs/methods.md gives the counts
  they imply on t5-base and bert-base. Learning rate 3e-2 with ``method.lr_scaling=fan_in`` (every
  hypernetwork weight at lr / fan-in; the global hypernetworks' at lr / (t*d) and lr / (t*b), see
  ``fan_in``), chosen by the search on the real MiniLM in docs/results.md ("Choosing the defaults"): one
  rate that serves all three variants. With one lr for every weight, 3e-3 grew the keys 50-fold in 30
  steps (docs/methods.md, "Why methods stalled").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ptune.config import MethodConfig
from ptune.errors import ConfigError
from ptune.methods import register
from ptune.methods.base import BackboneDims, KeysValues, Prompt, PromptMethod, TaskInfo
from ptune.methods.hypernets import (
    BottleneckGenerator,
    LayerAwareTaskEmbedding,
    LayerEmbeddings,
    TaskEmbeddings,
    bottleneck,
    fp32,
    per_row,
    unique_tasks,
)

VARIANTS = ("share", "sep", "global")
STACKS = ("both", "encoder", "decoder")


@dataclass
class HyperPromptConfig(MethodConfig):
    name: str = "hyperprompt"
    num_virtual_tokens: int = 16  # l: hyper-prompt length
    variant: str = "global"  # share | sep | global (the paper's Figure 2)
    bottleneck: int = 16  # b: local hypernetworks' down/up projection size
    task_embedding_dim: int = 32  # t' (global)
    layer_embedding_dim: int = 32  # t'' (global)
    embedding_hidden_size: int = 64  # e: h's hidden size (global)
    layer_task_embedding_dim: int = 32  # t: size of I = h(k_t, z_m) (global)
    stacks: str = "both"  # both | encoder | decoder (T5); BERT-family: both / encoder
    lr: float = 3e-2  # with lr_scaling=fan_in: the search on MiniLM in docs/results.md
    # per_task is ignored: this method conditions on the task id itself

    def check(self) -> None:
        for key, choices in (("variant", VARIANTS), ("stacks", STACKS)):
            if getattr(self, key) not in choices:
                raise ConfigError(f"method.{key}={getattr(self, key)!r} is not valid; choose one of: "
                                  f"{', '.join(choices)}")
        for key in ("bottleneck", "task_embedding_dim", "layer_embedding_dim", "embedding_hidden_size",
                    "layer_task_embedding_dim"):
            if getattr(self, key) < 1:
                raise ConfigError(f"method.{key}={getattr(self, key)} must be >= 1")


def prompted_layers(cfg: HyperPromptConfig, dims: BackboneDims) -> tuple[int, int]:
    """(encoder layers, decoder layers) that get hyper-prompts."""
    if cfg.stacks == "decoder" and dims.decoder_layers == 0:
        raise ConfigError("method.stacks=decoder but this backbone has no decoder; use method.stacks=encoder")
    enc = dims.num_layers if cfg.stacks in ("both", "encoder") else 0
    dec = dims.decoder_layers if cfg.stacks in ("both", "decoder") else 0
    return enc, dec


def uniform_(shape: tuple[int, ...], fan_in: int) -> nn.Parameter:
    bound = 1.0 / math.sqrt(fan_in)  # nn.Linear's default weight distribution
    return nn.Parameter(torch.empty(shape).uniform_(-bound, bound))


@register("hyperprompt", HyperPromptConfig)
class HyperPrompt(PromptMethod):
    task_aware = True
    places = "prefix"
    variants = tuple((f"method.variant={v}",) for v in VARIANTS)
    # folded, each task's hyper-prompts are a plain per-layer prefix: PEFT's prefix tuning holds one per task
    peft_type = "PREFIX_TUNING"

    def __init__(self, cfg: HyperPromptConfig, dims: BackboneDims, label_words: list[list[str]],
                 tasks: list[TaskInfo] | None = None):
        super().__init__(cfg, dims, label_words, tasks)
        self.num_tasks = max(1, len(label_words))
        self.encoder_layers, self.decoder_layers = prompted_layers(cfg, dims)
        m = self.encoder_layers + self.decoder_layers
        d, b, a = dims.hidden_size, cfg.bottleneck, dims.num_heads * dims.head_dim
        self.global_prompts = nn.Parameter(torch.randn(self.num_tasks, cfg.num_virtual_tokens, d))
        if cfg.variant == "global":
            self.task_embeddings = TaskEmbeddings(self.num_tasks, cfg.task_embedding_dim)
            self.layer_embeddings = LayerEmbeddings(m, cfg.layer_embedding_dim)
            self.layer_aware = LayerAwareTaskEmbedding(cfg.task_embedding_dim, cfg.layer_embedding_dim,
                                                       cfg.embedding_hidden_size, cfg.layer_task_embedding_dim)
            self.key_hypernet = BottleneckGenerator(cfg.layer_task_embedding_dim, d, b, a)
            self.value_hypernet = BottleneckGenerator(cfg.layer_task_embedding_dim, d, b, a)
        else:
            sets = 1 if cfg.variant == "share" else self.num_tasks
            # slot 2m: layer m's key network, 2m+1: its value network (kv_from_flat's layout)
            self.down = uniform_((sets, 2 * m, d, b), d)
            self.up = uniform_((sets, 2 * m, b, a), b)

    def fan_in(self) -> dict[str, int]:
        """The fan-in behind each weight (PromptMethod.param_groups trains it at lr / fan-in).

        share/sep: the local hypernetworks are raw tensors; D is applied to the d-wide global prompt, U to the
        b-wide bottleneck. global: H's weights generate D and U from the t-wide embedding I, so a step on them
        moves each generated entry as t direct weights would, and that entry then acts on d (or b) inputs: their
        fan-in is t*d (t*b), so that generated D and U move as slowly as share's directly trained ones (with t
        alone, global collapsed at 3e-2 on MiniLM and at 1e-2 on tiny BERT, where share learned)."""
        fans = super().fan_in()
        d, b = self.dims.hidden_size, self.cfg.bottleneck
        if self.cfg.variant != "global":
            fans.update(down=d, up=b)
            return fans
        t = self.cfg.layer_task_embedding_dim
        for net in ("key_hypernet", "value_hypernet"):
            fans.update({f"{net}.down.weight": t * d, f"{net}.up.weight": t * b})
        return fans

    def local_weights(self, tasks: Tensor) -> tuple[Tensor, Tensor]:
        """D (N, 2M, d, b) and U (N, 2M, b, a) of each given task's local hypernetworks."""
        if self.cfg.variant == "share":
            n = len(tasks)
            return self.down.expand(n, *self.down.shape[1:]), self.up.expand(n, *self.up.shape[1:])
        if self.cfg.variant == "sep":
            return self.down[tasks], self.up[tasks]
        emb = self.layer_aware(self.task_embeddings(tasks), self.layer_embeddings.weight)  # (N, M, t)
        (dk, uk), (dv, uv) = self.key_hypernet(emb), self.value_hypernet(emb)
        n, m = emb.shape[:2]
        down = torch.stack([dk, dv], dim=2).view(n, 2 * m, *dk.shape[2:])
        up = torch.stack([uk, uv], dim=2).view(n, 2 * m, *uk.shape[2:])
        return down, up

    def hyper_prompts(self, tasks: Tensor) -> Tensor:
        """(N, M, 2, heads, l, head_dim): each given task's key (index 0) and value (1) hyper-prompts."""
        d = self.dims
        with fp32(self.global_prompts.device):
            down, up = self.local_weights(tasks)
            out = bottleneck(self.global_prompts[tasks], down, up)  # (N, 2M, l, a)
        n, _, length, _ = out.shape
        return out.view(n, -1, 2, length, d.num_heads, d.head_dim).permute(0, 1, 2, 4, 3, 5)

    def forward(self, task_ids: Tensor) -> Prompt:
        tasks, rows = unique_tasks(task_ids)
        kv = per_row(self.hyper_prompts(tasks), rows)  # (B, M, 2, heads, l, head_dim)
        layers: KeysValues = [(kv[:, i, 0], kv[:, i, 1]) for i in range(kv.shape[1])]
        enc, dec = layers[: self.encoder_layers], layers[self.encoder_layers :]
        return Prompt(keys_values=enc or None, decoder_keys_values=dec or None)
