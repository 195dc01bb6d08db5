"""Shared blocks of the generated-prompt methods: task and layer embeddings, generators, bottlenecks,
P-Tuning's prompt encoder, and the per-task bookkeeping every task-conditioned method needs.

Used by p_tuning.py (``PromptEncoder``), structured.py (``TaskEmbeddings``, ``Generator``,
``text_embedding``) and hyperprompt.py (``TaskEmbeddings``, ``LayerEmbeddings``, ``LayerAwareTaskEmbedding``,
``BottleneckGenerator``, ``bottleneck``). Nothing here knows a backbone; shapes are plain integers.

Conventions:
* Task-conditioned methods generate once per *distinct* task id in a batch (:func:`unique_tasks`), then
  give each row its task's prompt (:func:`per_row`): a batch of one task costs one generation.
* Generation runs in fp32 even inside a bf16/fp16 autocast region (:func:`fp32`): parameters stay fp32
  and the backbone casts the prompt to its own dtype where it enters the body
  (``Backbone.place_embeds``, the attention function in ptune/backbones/attention.py).
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager

import torch
from torch import Tensor, nn

GENERATORS = ("linear", "low_rank", "mlp")
ENCODERS = ("lstm", "mlp")


# --- per-task bookkeeping ----------------------------------------------------------------------
def unique_tasks(task_ids: Tensor) -> tuple[Tensor, Tensor]:
    """(distinct task ids, sorted; each row's position among them)."""
    uniq, inverse = torch.unique(task_ids, sorted=True, return_inverse=True)
    return uniq, inverse


def per_row(per_task: Tensor, inverse: Tensor) -> Tensor:
    """Row i gets ``per_task[inverse[i]]``; one distinct task is a broadcast view, not a copy."""
    if per_task.shape[0] == 1:
        return per_task.expand(len(inverse), *per_task.shape[1:])
    return per_task[inverse]


def fp32(device: torch.device) -> AbstractContextManager:
    """Switch autocast off, so hypernetworks compute (and return) fp32 under bf16/fp16 training."""
    return torch.autocast(device.type, enabled=False)


# --- embeddings -----------------------------------------------------------------------------------
class TaskEmbeddings(nn.Module):
    """One learned vector per task (row i = task id i), initialised N(0, 1) or from given vectors."""

    def __init__(self, num_tasks: int, dim: int, init: Tensor | None = None):
        super().__init__()
        weight = torch.randn(num_tasks, dim) if init is None else init.detach().float().clone()
        if weight.shape != (num_tasks, dim):
            raise ValueError(f"task embedding init has shape {tuple(weight.shape)}, expected {(num_tasks, dim)}")
        self.weight = nn.Parameter(weight)

    def forward(self, task_ids: Tensor) -> Tensor:
        return self.weight[task_ids]


class LayerEmbeddings(TaskEmbeddings):
    """One learned vector per prompted layer (hyperformer's ``layer_id_embeddings``), N(0, 1)."""

    def __init__(self, num_layers: int, dim: int):
        super().__init__(num_layers, dim)


def text_embedding(text: str, word_embeddings: Tensor, tokenize) -> Tensor:
    """Mean of the frozen word embeddings of ``text``'s tokens (a natural-language task description)."""
    ids = tokenize(text)
    if not ids:
        raise ValueError(f"task description {text!r} has no tokens")
    return word_embeddings.detach().float()[ids].mean(0)


# --- generators ------------------------------------------------------------------------------------
class Generator(nn.Module):
    """A vector of ``in_dim`` -> a vector of ``out_dim``, one of three forms (rows are independent):

    * ``linear``:   W z + c                      params ``out*in + out``
    * ``low_rank``: A (B z) + c, rank r          params ``r*in + out*r + out``
    * ``mlp``:      W2 ReLU(W1 z + b1) + b2      params ``in*h + h + h*out + out``

    PyTorch's default ``nn.Linear`` initialisation throughout.
    """

    def __init__(self, in_dim: int, out_dim: int, kind: str = "linear", rank: int = 8, hidden: int = 64):
        super().__init__()
        if kind not in GENERATORS:
            raise ValueError(f"generator {kind!r} is not one of {GENERATORS}")
        self.kind = kind
        self.net: nn.Module
        if kind == "linear":
            self.net = nn.Linear(in_dim, out_dim)
        elif kind == "low_rank":
            self.net = nn.Sequential(nn.Linear(in_dim, rank, bias=False), nn.Linear(rank, out_dim))
        else:
            self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)

    @torch.no_grad()
    def start_at(self, output: Tensor) -> None:
        """Make f(z) = ``output`` for every z at the start: the last layer's bias holds it and its weight is zero
        (as LoRA zeroes B), so the generator starts where a plain prompt would and grows its structure from
        there. Its weight still gets gradients (they are the bias gradient times the hidden activations)."""
        last = self.net if isinstance(self.net, nn.Linear) else self.net[-1]
        last.weight.zero_()
        last.bias.copy_(output.reshape(-1))


def hyperfan_in_(linear: nn.Linear, generated_fan_in: int) -> None:
    """Initialise a linear layer that *generates* weights so they start at ``nn.Linear``'s scale.

    For a unit-variance input of size t, entries of W z have variance t * var(W); asking for the
    variance of a default ``nn.Linear(fan_in, .)`` weight, 1 / (3 fan_in), gives var(W) = 1 / (3 fan_in t)
    (the "hyperfan-in" rule of Chang, Flokas, Lipson 2020, "Principled Weight Initialization for
    Hypernetworks").
    """
    std = 1.0 / math.sqrt(3 * generated_fan_in * linear.in_features)
    nn.init.normal_(linear.weight, std=std)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


def bottleneck(x: Tensor, down: Tensor, up: Tensor) -> Tensor:
    """U ReLU(D x) for many (D, U) pairs at once: HyperPrompt's local hypernetwork h(P) (no biases).

    x: (N, l, d_in); down: (N, G, d_in, b); up: (N, G, b, d_out) -> (N, G, l, d_out), where G indexes
    the groups (layers x key/value) that share the input x.
    """
    hidden = torch.relu(torch.einsum("nld,ngdb->nglb", x, down))
    return torch.einsum("nglb,ngbe->ngle", hidden, up)


class LayerAwareTaskEmbedding(nn.Module):
    """I = h(k_t, z_m): a task embedding and a layer embedding, concatenated, through an MLP.

    HyperPrompt's "layer-aware task embedding" (Section 3.3; hyperformer's ``get_embedding``): h is
    Linear(t' + t'', e) -> ReLU -> Linear(e, t). The output is RMS-normalised without learned parameters
    (ptune's choice, in the spirit of hyperformer's ``unique_hyper_net_layer_norm``), so the generated
    weights start at the scale :func:`hyperfan_in_` aims for. Parameters ``(t' + t'')*e + e + e*t + t``.
    """

    def __init__(self, task_dim: int, layer_dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.out_dim = out_dim
        self.h = Generator(task_dim + layer_dim, out_dim, "mlp", hidden=hidden)

    def forward(self, tasks: Tensor, layers: Tensor) -> Tensor:
        """tasks (N, t'), layers (M, t'') -> (N, M, t): every task with every layer."""
        n, m = len(tasks), len(layers)
        pairs = torch.cat([tasks[:, None].expand(n, m, -1), layers[None].expand(n, m, -1)], dim=-1)
        return nn.functional.rms_norm(self.h(pairs), (self.out_dim,))


class BottleneckGenerator(nn.Module):
    """A global hypernetwork H: an embedding I (t) -> the weights (D, U) of one local bottleneck.

    HyperPrompt's (U, D) = H(I) = (W^U I, W^D I), W^D in R^{(d_in*b) x t}, W^U in R^{(b*d_out) x t}, no
    biases; hyperfan-in initialised. Parameters ``t*b*(d_in + d_out)``.
    """

    def __init__(self, embed_dim: int, d_in: int, b: int, d_out: int):
        super().__init__()
        self.shape = (d_in, b, d_out)
        self.down = nn.Linear(embed_dim, d_in * b, bias=False)
        self.up = nn.Linear(embed_dim, b * d_out, bias=False)
        hyperfan_in_(self.down, d_in)
        hyperfan_in_(self.up, b)

    def forward(self, embedding: Tensor) -> tuple[Tensor, Tensor]:
        """(..., t) -> D (..., d_in, b), U (..., b, d_out)."""
        d_in, b, d_out = self.shape
        lead = embedding.shape[:-1]
        return self.down(embedding).view(*lead, d_in, b), self.up(embedding).view(*lead, b, d_out)


# --- P-Tuning's prompt encoder --------------------------------------------------------------------
class PromptEncoder(nn.Module):
    """Virtual-token embeddings through an LSTM+MLP or an MLP (Liu et al. 2021; PEFT's ``PromptEncoder``).

    Attribute names (``embedding``, ``lstm_head``, ``mlp_head``) and shapes are PEFT's, so a state dict
    moves between the two unchanged:
    * ``lstm``: Embedding(P, d) -> bidirectional LSTM(d, h, layers) -> Linear(2h, 2h) -> ReLU -> Linear(2h, d).
      With h = d/2 this is the official code's encoder (THUDM/P-tuning, LAMA/p_tuning/prompt_encoder.py).
    * ``mlp``: Embedding(P, d) -> Linear(d, h) -> ReLU -> Linear(h, h) -> ReLU -> Linear(h, d).
    """

    def __init__(self, num_tokens: int, dim: int, kind: str, hidden: int, num_layers: int = 2,
                 dropout: float = 0.0):
        super().__init__()
        if kind not in ENCODERS:
            raise ValueError(f"prompt encoder {kind!r} is not one of {ENCODERS}")
        self.kind = kind
        self.embedding = nn.Embedding(num_tokens, dim)
        if kind == "lstm":
            self.lstm_head = nn.LSTM(dim, hidden, num_layers=num_layers, dropout=dropout if num_layers > 1 else 0.0,
                                     bidirectional=True, batch_first=True)
            self.mlp_head = nn.Sequential(nn.Linear(2 * hidden, 2 * hidden), nn.ReLU(), nn.Linear(2 * hidden, dim))
        else:
            self.mlp_head = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                          nn.Linear(hidden, dim))

    def forward(self) -> Tensor:
        """(1, P, d): the virtual tokens as one sequence (the LSTM reads them in order)."""
        x = self.embedding.weight.unsqueeze(0)
        if self.kind == "lstm":
            x = self.lstm_head(x)[0]
        return self.mlp_head(x)
