"""BERT-family backbones (BERT, RoBERTa, MiniLM, ...): a frozen encoder plus trainable task heads.

Prompt placement:
* soft tokens (``Prompt.embeds``) go before [CLS] by default (``model.prompt_position=start``), as
  Hugging Face PEFT and P-Tuning v2's prompt-tuning baseline place them, so the pooled first token is
  the first soft token. ``after_cls`` keeps [CLS] first and puts them right after it. On MiniLM / SST-2
  (300 steps, lr 0.3) ``start`` reached 76.1 and ``after_cls`` 72.5 (docs/results.md), hence the
  default. tests/backbones/test_peft_equivalence.py pins both. Soft tokens take token type 0.
* deep prompts (``Prompt.keys_values``) enter every self-attention layer through ptune's registered
  attention function (ptune/backbones/attention.py), which prepends the layer's prefix keys/values and
  extends the attention mask by attended columns. PEFT and P-Tuning v2 hand the prefix to the model as
  a past (``past_key_values``), and a past shifts BERT's absolute position ids by its length; ptune
  passes those shifted ``position_ids`` explicitly, so logits equal PEFT's. Models whose embeddings do
  not count a past when given ``inputs_embeds`` (RoBERTa's) keep their own positions, as under PEFT
  (``PAST_SHIFTS_POSITIONS``).

Heads (P-Tuning v2's official code): dropout + linear on the pooled first token (the model's pooler
when it has one) for classification / regression / multiple choice; span classification (WSC) pools
the tokens of each span and classifies the pair.

The cloze form (``model.head=mlm``, P-Tuning's, Liu et al. 2021 Section 3): every row holds a [MASK] right
before its final [SEP] (ptune/tasks/collate.py), and the frozen masked-LM head's logits at that position,
restricted to the task's label words, are the class scores (cross-entropy over them, as PET and P-Tuning
train). A label word is scored by its first word piece; two labels sharing one are refused. There are no
trained heads; the MLM head stays frozen (with ``model.trainable`` too: only the encoder body trains).

Split prompts (``Prompt.split``, P-Tuning's ``[P_0..P_i] x [P_i+1..P_m] y`` templates): the first ``split``
soft tokens go where ``model.prompt_position`` says, the rest after the input, right before the [MASK]
(cloze) or the final [SEP] (classifier), per row, whatever its padding.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ptune.backbones import attention
from ptune.backbones.base import Backbone, Output, pad_cat
from ptune.methods.base import BackboneDims, Prompt

# model types whose embeddings shift absolute position ids by the length of a past (BertEmbeddings'
# ``cache_length``); RobertaEmbeddings ignores the past when given inputs_embeds
PAST_SHIFTS_POSITIONS = {"bert"}


class Head(nn.Module):
    def __init__(self, kind: str, hidden: int, num_labels: int, dropout: float):
        super().__init__()
        self.kind = kind
        self.dropout = nn.Dropout(dropout)
        in_dim = 2 * hidden if kind == "span" else hidden
        self.classifier = nn.Linear(in_dim, 1 if kind in ("regression", "multiple_choice") else num_labels)

    def forward(self, pooled: Tensor) -> Tensor:
        return self.classifier(self.dropout(pooled.float()))


class BertBackbone(Backbone):
    family = "bert"

    def __init__(self, model: nn.Module, tokenizer, heads: dict[str, tuple[str, int]], prompt_position: str,
                 label_words: dict[str, list[str]] | None = None):
        """``label_words`` (task -> words): the cloze form; ``model`` is then a masked-LM model, whose
        encoder becomes ``self.model`` and whose MLM head ``self.mlm`` (frozen) scores the words."""
        super().__init__()
        self.cloze = label_words is not None
        if self.cloze:
            self.mlm = next(m for n, m in model.named_children() if n != model.base_model_prefix)
            self.mlm.requires_grad_(False)
            model = model.base_model
            self.word_ids = {t: first_pieces(tokenizer, t, words) for t, words in label_words.items()}
            heads = {}
        self.model = model
        self.tokenizer = tokenizer
        self.prompt_position = prompt_position
        self.freeze()
        hidden = model.config.hidden_size
        dropout = getattr(model.config, "classifier_dropout", None)
        dropout = model.config.hidden_dropout_prob if dropout is None else dropout
        self.heads = nn.ModuleDict({t: Head(k, hidden, n, dropout) for t, (k, n) in heads.items()})
        self.self_attention = [layer.attention.self for layer in model.encoder.layer]

    def dims(self) -> BackboneDims:
        c = self.model.config
        return BackboneDims(
            hidden_size=c.hidden_size,
            num_layers=c.num_hidden_layers,
            num_heads=c.num_attention_heads,
            head_dim=c.hidden_size // c.num_attention_heads,
            decoder_layers=0,
            word_embeddings=self.model.get_input_embeddings().weight,
            tokenize=lambda text: self.tokenizer(text, add_special_tokens=False)["input_ids"],
            common_token_ids=common_word_ids(self.tokenizer),
        )

    def encode(self, input_ids: Tensor, mask: Tensor, token_types: Tensor | None, prompt: Prompt) -> Tensor:
        """Last hidden states for the input positions (soft-token positions removed) and the pooled output."""
        emb = self.model.get_input_embeddings()(input_ids)
        at = 1 if self.prompt_position == "after_cls" else 0
        n = len(input_ids)
        prompt = expand(prompt, n)
        late = None
        if prompt.embeds is not None and prompt.split is not None:
            late = prompt.embeds[:, prompt.split:]
            prompt = Prompt(prompt.embeds[:, :prompt.split], prompt.keys_values, prompt.decoder_keys_values)
        early = prompt.num_tokens
        emb, full_mask = self.place_embeds(emb, mask, prompt, at)
        if token_types is not None and prompt.embeds is not None:
            zeros = token_types.new_zeros(n, early)
            token_types = torch.cat([token_types[:, :at], zeros, token_types[:, at:]], dim=1)
        if late is not None and late.shape[1]:
            where = self.late_position(input_ids, mask) + early  # the early tokens come before it
            emb = insert_rows(emb, late.to(emb.dtype), where)
            full_mask = insert_rows(full_mask[..., None], full_mask.new_ones(n, late.shape[1], 1), where)[..., 0]
            if token_types is not None:
                before = token_types.gather(1, where[:, None]).expand(-1, late.shape[1])
                token_types = insert_rows(token_types[..., None], before[..., None], where)[..., 0]
        layers, positions = {}, None
        if prompt.keys_values is not None:
            layers = {m: attention.LayerPrefix(k, v) for m, (k, v) in zip(self.self_attention, prompt.keys_values,
                                                                         strict=True)}
            if self.model.config.model_type in PAST_SHIFTS_POSITIONS:
                p = prompt.prefix_length
                positions = torch.arange(p, p + emb.shape[1], device=emb.device).unsqueeze(0)
        with attention.prefixes(layers):
            out = self.model(
                inputs_embeds=emb, attention_mask=full_mask, token_type_ids=token_types, position_ids=positions
            )
        pooled = out.pooler_output if out.pooler_output is not None else out.last_hidden_state[:, 0]
        return out.last_hidden_state, pooled

    def late_position(self, input_ids: Tensor, mask: Tensor) -> Tensor:
        """Per row, the input position the late soft tokens go before: the [MASK] (cloze), else the final
        separator (rows are right-padded)."""
        if self.cloze:
            return (input_ids == self.tokenizer.mask_token_id).int().argmax(1)
        return mask.sum(1) - 1

    def forward(self, batch: dict, prompt: Prompt, *, score: bool = True) -> Output:
        hidden, pooled = self.encode(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"), prompt)
        return self.score(batch, prompt, hidden, pooled)

    def forward_many(self, batches: list[dict], prompt: Prompt) -> list[Tensor]:
        """One encoder pass over several one-task batches (padded to the longest row), then each batch's rows
        scored by its own task's head (``batch["task"]`` names it in ``self.heads``). A multiple-choice batch
        reads one encoder row per choice, so each example's prompt row is repeated over its choices."""
        examples = [len(b["targets"]) for b in batches]
        rows = [len(b["input_ids"]) for b in batches]
        if any(r != e for r, e in zip(rows, examples, strict=True)):
            per = [r // e for r, e in zip(rows, examples, strict=True) for _ in range(e)]
            prompt = repeat_rows(prompt, torch.tensor(per, device=batches[0]["input_ids"].device))
        pad = self.tokenizer.pad_token_id
        ids = pad_cat([b["input_ids"] for b in batches], pad)
        mask = pad_cat([b["attention_mask"] for b in batches], 0)
        types = pad_cat([b["token_type_ids"] for b in batches], 0) if "token_type_ids" in batches[0] else None
        hidden, pooled = self.encode(ids, mask, types, prompt)
        out, at = [], 0
        for b, n in zip(batches, rows, strict=True):
            view = {k: v for k, v in b.items() if k != "labels"}
            view.update(input_ids=ids[at : at + n], attention_mask=mask[at : at + n])
            if "span_mask" in b:  # over this batch's input positions: widened to the merged batch's
                view["span_mask"] = F.pad(b["span_mask"], (0, ids.shape[1] - b["span_mask"].shape[-1]))
            out.append(self.score(view, prompt, hidden[at : at + n], pooled[at : at + n]).scores)
            at += n
        return out

    def score(self, batch: dict, prompt: Prompt, hidden: Tensor, pooled: Tensor) -> Output:
        """The loss and scores of one task's rows from their encoded states (``batch["task"]``'s head)."""
        if self.cloze:
            return self.cloze_scores(batch, prompt, hidden)
        head = self.heads[batch["task"]]
        if head.kind == "span":
            hidden = hidden[:, : batch["input_ids"].shape[1] + prompt.num_tokens - late_tokens(prompt)]
            pooled = span_pool(hidden, batch["span_mask"], self.soft_offset(prompt))
        logits = head(pooled)
        labels = batch.get("labels")
        if head.kind == "regression":
            scores = logits.squeeze(-1)
            loss = F.mse_loss(scores, labels.float()) if labels is not None else None
            return Output(loss, scores)
        if head.kind == "multiple_choice":
            logits = logits.view(batch["choice_mask"].shape).masked_fill(~batch["choice_mask"], -1e4)
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return Output(loss, logits)

    def cloze_scores(self, batch: dict, prompt: Prompt, hidden: Tensor) -> Output:
        """The MLM head's logits of the task's label words at each row's [MASK]."""
        pos = self.late_position(batch["input_ids"], batch["attention_mask"]) + prompt.num_tokens  # every soft token precedes it
        at_mask = hidden[torch.arange(len(hidden), device=hidden.device), pos]
        words = self.word_ids[batch["task"]].to(hidden.device)
        scores = self.mlm(at_mask).float()[:, words]
        labels = batch.get("labels")
        return Output(F.cross_entropy(scores, labels) if labels is not None else None, scores)

    def soft_offset(self, prompt: Prompt) -> tuple[int, int]:
        """(where the early soft tokens start, how many), to map input positions onto hidden-state positions."""
        return (1 if self.prompt_position == "after_cls" else 0), prompt.num_tokens - late_tokens(prompt)


def late_tokens(prompt: Prompt) -> int:
    """How many soft tokens go after the input (``Prompt.split``)."""
    return 0 if prompt.embeds is None or prompt.split is None else prompt.num_tokens - prompt.split


def insert_rows(x: Tensor, new: Tensor, where: Tensor) -> Tensor:
    """(B, L, D) with (B, k, D) inserted in row b before position where[b]: (B, L + k, D)."""
    b, length, d = x.shape
    k = new.shape[1]
    j = torch.arange(length, device=x.device)[None]
    old_to = j + k * (j >= where[:, None])  # (B, L): where each old position goes
    new_to = where[:, None] + torch.arange(k, device=x.device)[None]  # (B, k)
    out = x.new_zeros(b, length + k, d)
    out = out.scatter(1, old_to[..., None].expand(-1, -1, d), x)
    return out.scatter(1, new_to[..., None].expand(-1, -1, d), new)


def first_pieces(tokenizer, task: str, words: list[str]) -> Tensor:
    """Each label word's first word piece (the cloze head scores one token per label)."""
    ids = [tokenizer(w, add_special_tokens=False)["input_ids"][:1] for w in words]
    if any(not i for i in ids) or len({i[0] for i in ids}) < len(ids):
        from ptune.errors import ConfigError

        pieces = [tokenizer.convert_ids_to_tokens(i) for i in ids]
        raise ConfigError(f"task {task}: label words {words} do not start with distinct word pieces ({pieces}), "
                          "which model.head=mlm needs; use model.head=classifier")
    return torch.tensor([i[0] for i in ids])


def expand(prompt: Prompt, n: int) -> Prompt:
    """Repeat a per-example prompt for multiple-choice rows (n = B * choices)."""
    b = len(prompt.embeds) if prompt.embeds is not None else (
        len(prompt.keys_values[0][0]) if prompt.keys_values else n
    )
    if b == n:
        return prompt
    rep = n // b
    return Prompt(
        embeds=None if prompt.embeds is None else prompt.embeds.repeat_interleave(rep, 0),
        keys_values=None
        if prompt.keys_values is None
        else [(k.repeat_interleave(rep, 0), v.repeat_interleave(rep, 0)) for k, v in prompt.keys_values],
        split=prompt.split,
    )


def repeat_rows(prompt: Prompt, repeats: Tensor) -> Prompt:
    """Example i's prompt row ``repeats[i]`` times (a mixed batch's multiple-choice rows, one per choice)."""

    def rep(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.repeat_interleave(repeats, 0)

    kv = None if prompt.keys_values is None else [(rep(k), rep(v)) for k, v in prompt.keys_values]
    return Prompt(rep(prompt.embeds), kv, split=prompt.split)  # type: ignore[arg-type]


def span_pool(hidden: Tensor, span_mask: Tensor, soft: tuple[int, int]) -> Tensor:
    """Mean of the hidden states of each span; span_mask is (B, 2, L) over the input positions."""
    at, num = soft
    if num:
        hidden = torch.cat([hidden[:, :at], hidden[:, at + num :]], dim=1)
    m = span_mask.to(hidden.dtype)
    pooled = torch.einsum("bsl,bld->bsd", m, hidden) / m.sum(-1, keepdim=True).clamp(min=1)
    return pooled.flatten(1)


def common_word_ids(tokenizer, n: int = 5000) -> Tensor:
    """The first n whole-word, non-special tokens in vocabulary order (frequency order for BERT's vocab)."""
    vocab = tokenizer.get_vocab()
    special = set(tokenizer.all_special_tokens)
    word = re.compile(r"^[\u0120\u2581]?[A-Za-z]{2,}$")
    ids = sorted(i for t, i in vocab.items() if t not in special and word.match(t))
    return torch.tensor(ids[:n])
