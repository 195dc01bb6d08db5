"""The method seam: everything trainable that is not the backbone.

A method sees the backbone only through :class:`BackboneDims` (layer/head sizes, the frozen word
embeddings for initialisation, a tokenizer callback) and returns a :class:`Prompt` for a batch of task
ids. Where the prompt goes (input embeddings, per-layer keys/values, T5 encoder and decoder) is the
backbone's business.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

KeysValues = list[tuple[Tensor, Tensor]]  # per layer: (B, heads, P, head_dim) keys and values


@dataclass
class Prompt:
    embeds: Tensor | None = None  # (B, P, hidden): soft tokens placed among the input tokens
    keys_values: KeysValues | None = None  # encoder (or only) stack self-attention prefixes
    decoder_keys_values: KeysValues | None = None  # encoder-decoder models: decoder self-attention
    split: int | None = None  # BERT family: the first ``split`` soft tokens go before the input, the rest after it

    @property
    def num_tokens(self) -> int:
        return 0 if self.embeds is None else self.embeds.shape[1]

    @property
    def prefix_length(self) -> int:
        return 0 if self.keys_values is None else self.keys_values[0][0].shape[2]


    def rows(self, index: Tensor, n: int) -> Prompt:
        """A prompt of ``n`` rows whose rows ``index`` are this prompt's rows (the rest zero)."""

        def place(t: Tensor | None) -> Tensor | None:
            if t is None:
                return None
            out = t.new_zeros(n, *t.shape[1:])
            return out.index_copy(0, index, t)

        def place_kv(kv: KeysValues | None) -> KeysValues | None:
            return None if kv is None else [(place(k), place(v)) for k, v in kv]  # type: ignore[misc]

        return Prompt(place(self.embeds), place_kv(self.keys_values), place_kv(self.decoder_keys_values), self.split)


def merge(parts: list[tuple[Tensor, Prompt]], n: int) -> Prompt:
    """One prompt for a batch from per-group prompts: (row indices, that group's prompt) pairs."""
    if len(parts) == 1 and len(parts[0][0]) == n:
        return parts[0][1]

    def add(a, b):
        if a is None:
            return b
        if isinstance(a, list):
            return [(ka + kb, va + vb) for (ka, va), (kb, vb) in zip(a, b, strict=True)]
        return a + b

    total = parts[0][1].rows(parts[0][0], n)
    for index, prompt in parts[1:]:
        placed = prompt.rows(index, n)
        total = Prompt(add(total.embeds, placed.embeds), add(total.keys_values, placed.keys_values),
                       add(total.decoder_keys_values, placed.decoder_keys_values), total.split)
    return total


@dataclass
class BackboneDims:
    hidden_size: int
    num_layers: int  # encoder (or only) stack
    num_heads: int
    head_dim: int  # T5's d_kv need not be hidden_size / heads
    decoder_layers: int  # 0 for encoder-only models
    word_embeddings: Tensor  # (vocab, hidden), frozen; read for initialisation only
    tokenize: Callable[[str], list[int]]  # text -> token ids, without special tokens
    common_token_ids: Tensor  # ids of the most frequent ordinary tokens, most frequent first


@dataclass
class TaskInfo:
    """What a method knows of a task of its run (task id = position in the run's list)."""

    name: str
    label_words: list[str]
    description: str = ""  # a natural-language description (ptune.tasks.DESCRIPTIONS)


class PromptMethod(nn.Module):
    """Base class: ``forward(task_ids) -> Prompt``; parameters are exactly what gets trained and saved.

    ``task_aware`` methods condition on the task id themselves (hypernetworks); the others share one
    prompt across tasks unless ``method.per_task=true`` wraps them in :class:`PerTask`.
    """

    task_aware = False
    # where the prompt goes, for length checks before the model loads: "input" (num_virtual_tokens soft
    # tokens among the input's), "prefix" (per-layer keys/values of that length), "none"
    places = "input"
    # the method's variants worth comparing (each a list of overrides; ``()`` is the defaults): what the
    # real-model learning test, ``make quality`` and the lr search iterate (methods.variants())
    variants: tuple[tuple[str, ...], ...] = ((),)
    # its PEFT twin (ptune/export/peft.py): the PEFT tuner whose adapter holds this method's folded prompt,
    # "PROMPT_TUNING", "P_TUNING" or "PREFIX_TUNING"; None: PEFT has no equivalent
    peft_type: str | None = None
    # the PEFT adapter types ``method.init_from`` can start this method from (ptune/methods/transfer.py)
    peft_imports: tuple[str, ...] = ()

    def __init__(self, cfg, dims: BackboneDims, label_words: list[list[str]], tasks: list[TaskInfo] | None = None):
        super().__init__()
        self.cfg = cfg
        self.dims = dims
        # the run's tasks in task-id order; without names (direct construction), task<i> and its label words
        self.tasks = list(tasks) if tasks else [TaskInfo(f"task{i}", list(w)) for i, w in enumerate(label_words)]

    def forward(self, task_ids: Tensor) -> Prompt:
        raise NotImplementedError

    @classmethod
    def peft_fields(cls, cfg, hidden_size: int) -> dict:
        """The fields of its PEFT twin's config beyond the shared ones (PEFT's defaults fill the rest)."""
        return {}

    @classmethod
    def from_peft(cls, cfg, peft_type: str, prompt_embeddings: Tensor) -> dict[str, Tensor]:
        """Parameter name -> initial value from a PEFT adapter's ``prompt_embeddings`` (one of ``peft_imports``,
        shapes already checked against this run's config)."""
        raise NotImplementedError

    def fan_in(self) -> dict[str, int]:
        """Parameter name -> the fan-in of each trainable weight that *generates* the prompt (a matrix applied to
        an input of that width); parameters not listed are the prompt itself, biases or embeddings (fan-in 1).
        nn.Linear and nn.LSTM weights are found here; a method with raw weight tensors adds its own."""
        out: dict[str, int] = {}
        for prefix, module in self.named_modules():
            dot = f"{prefix}." if prefix else ""
            if isinstance(module, nn.Linear):
                out[f"{dot}weight"] = module.in_features
            elif isinstance(module, nn.LSTM):
                for name, param in module.named_parameters(recurse=False):
                    if name.startswith("weight_"):
                        out[f"{dot}{name}"] = param.shape[1]
        return out

    def param_groups(self, lr: float) -> list[dict]:
        """Optimizer groups over this method's parameters at the run's ``lr``.

        ``method.lr_scaling=fan_in`` (default): a generator weight of fan-in n trains at ``lr / n``. Adam moves
        every weight by about lr per step whatever its gradient's size, so a matrix applied to an n-wide input
        moves each output by up to ~lr * n per step: n times faster than a plain prompt. Dividing by the fan-in
        (muP's rule for Adam; Yang et al. 2021, "Tuning Large Neural Networks via Zero-Shot Hyperparameter
        Transfer") makes ``lr`` mean the same thing for every method: how fast the prompt itself moves. On
        MiniLM, prefix tuning's MLP at lr 1e-2 grew its keys from RMS 0.27 to 6.4 in 30 steps without it, and
        attention collapsed onto the prefix (docs/methods.md, "Why methods stalled on a real model").
        ``none``: one group at ``lr`` (what the papers' code does).
        """
        params = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        if getattr(self.cfg, "lr_scaling", "none") != "fan_in":
            return [{"params": [p for _, p in params], "lr": lr}] if params else []
        fans = self.fan_in()
        by_fan: dict[int, list] = {}
        for name, param in params:
            by_fan.setdefault(fans.get(name, 1), []).append(param)
        return [{"params": ps, "lr": lr / fan} for fan, ps in sorted(by_fan.items())]

    def export(self, task_ids: Tensor) -> dict[str, Tensor]:
        """Plain prompt tensors for inference (reparameterizations folded away)."""
        with torch.no_grad():
            prompt = self(task_ids)
        out: dict[str, Tensor] = {}
        if prompt.embeds is not None:
            out["embeds"] = prompt.embeds
        for name, kv in (("encoder", prompt.keys_values), ("decoder", prompt.decoder_keys_values)):
            for i, (k, v) in enumerate(kv or []):
                out[f"{name}.{i}.key"], out[f"{name}.{i}.value"] = k, v
        return out


class Folded(PromptMethod):
    """A method's folded form (``export`` over task ids 0..T-1, as every run writes it to
    ``folded.safetensors``) served as a method: row i gets task ``task_ids[i]``'s plain prompt. No
    parameters; encoders and hypernetworks are gone, so it gives the trained method's logits exactly."""

    task_aware = True

    def __init__(self, tensors: dict[str, Tensor], split: int | None = None):
        super().__init__(None, None, [[]])
        self.tensors = dict(tensors)
        self.split = split  # the method's Prompt.split (folded.safetensors' metadata "split")

    def forward(self, task_ids: Tensor) -> Prompt:
        t = self.tensors

        def stack(name: str) -> KeysValues | None:
            n = sum(1 for k in t if k.startswith(f"{name}.") and k.endswith(".key"))
            return [(t[f"{name}.{i}.key"][task_ids], t[f"{name}.{i}.value"][task_ids]) for i in range(n)] or None

        embeds = t["embeds"][task_ids] if "embeds" in t else None
        return Prompt(embeds, stack("encoder"), stack("decoder"), self.split)


class PerTask(PromptMethod):
    """``method.per_task=true`` for a method that is not task-aware: one copy of it per task.

    Each copy is built with its own task's label words; a batch runs each copy once, on the rows of
    its task, so a one-task batch (ptune's mixtures draw those) costs one copy's forward.
    """

    def __init__(self, cls: type[PromptMethod], cfg, dims: BackboneDims, label_words: list[list[str]],
                 tasks: list[TaskInfo] | None = None):
        super().__init__(cfg, dims, label_words, tasks)
        self.copies = nn.ModuleList([cls(cfg, dims, [t.label_words], [t]) for t in self.tasks])

    def forward(self, task_ids: Tensor) -> Prompt:
        groups = []
        for t in torch.unique(task_ids).tolist():
            index = (task_ids == t).nonzero().squeeze(-1)
            groups.append((index, self.copies[t](task_ids[index])))
        return merge(groups, len(task_ids))


def kv_from_flat(flat: Tensor, num_layers: int, num_heads: int, head_dim: int) -> KeysValues:
    """(B, P, layers*2*heads*head_dim) -> per layer (key, value), each (B, heads, P, head_dim).

    The layout is PEFT's (and P-Tuning v2's): layer l's key is slot 2l, its value slot 2l+1.
    """
    b, p, _ = flat.shape
    x = flat.view(b, p, num_layers * 2, num_heads, head_dim).permute(2, 0, 3, 1, 4)
    return [(x[2 * i], x[2 * i + 1]) for i in range(num_layers)]


def flat_from_kv(keys_values: KeysValues) -> Tensor:
    """The inverse of :func:`kv_from_flat` for one row: per layer (heads, P, head_dim) keys and values ->
    (P, layers*2*heads*head_dim), PEFT's ``prompt_embeddings`` layout for prefix tuning."""
    slots = torch.stack([t for kv in keys_values for t in kv])  # (2L, heads, P, head_dim): key 2l, value 2l+1
    return slots.permute(2, 0, 1, 3).reshape(slots.shape[2], -1)
