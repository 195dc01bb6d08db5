"""Tokenize a split once, then pad per batch: dynamic padding, length-grouped training batches.

Speed (docs/benchmarks.md): SST-2 sentences average ~13 tokens, so padding every batch to 128 wastes
~90% of the compute. Features are tokenized once with the fast tokenizer's batched call; collate only
pads to the longest row of the batch; training batches are drawn from shuffled "mega-batches" sorted by
length (so batches hold rows of similar length but their order stays random), and evaluation walks the
split sorted by length.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from ptune.errors import ConfigError
from ptune.tasks.base import Example, Task

IGNORE = -100


@dataclass
class Split:
    """A task's examples with their token features, ready for batching."""

    task: Task
    task_id: int
    examples: list[Example]
    features: list[dict]
    split: str = ""  # the split's role ("train", "validation", ...), for reports

    def __len__(self) -> int:
        return len(self.examples)

    def lengths(self) -> list[int]:
        return [f["length"] for f in self.features]


def featurize(task: Task, task_id: int, examples: list[Example], tokenizer, family: str, max_length: int,
              max_target_length: int = 16, cloze: bool = False) -> Split:
    """``cloze`` (BERT family, ``model.head=mlm``): each row gets the tokenizer's mask token right before its
    final separator, within ``max_length`` (the text is truncated one token shorter to make room)."""
    if not examples:  # nothing to tokenize (tokenizers fail on an empty batch): a run built to predict
        return Split(task, task_id, [], [])
    if family == "t5":
        feats = _t5_features(task, examples, tokenizer, max_length, max_target_length)
    else:
        feats = _encoder_features(task, examples, tokenizer, max_length - 1 if cloze else max_length)
        if cloze:
            for f in feats:
                f["input_ids"] = [ids[:-1] + [tokenizer.mask_token_id] + ids[-1:] for ids in f["input_ids"]]
                if f["token_type_ids"] is not None:
                    f["token_type_ids"] = [tt[:-1] + tt[-1:] * 2 for tt in f["token_type_ids"]]
                f["length"] += 1
    return Split(task, task_id, examples, feats)


def _t5_features(task: Task, examples: list[Example], tok, max_length: int, max_target: int) -> list[dict]:
    sources = tok([e.source for e in examples], truncation=True, max_length=max_length)["input_ids"]
    cache: dict[tuple[str, ...], list[list[int]]] = {}
    feats = []
    for e, ids in zip(examples, sources, strict=True):
        if e.candidates not in cache:
            cache[e.candidates] = tok(list(e.candidates), truncation=True, max_length=max_target)["input_ids"]
            distinct = {tuple(c) for c in cache[e.candidates]}
            # a label's verbalizers (or STS-B's 26 score buckets) cut to the same tokens: rank scoring could never
            # tell them apart. Per-row candidates (multiple choice, ReCoRD's entities) are not checked here.
            if task.head in ("classification", "regression") and len(distinct) < len(set(e.candidates)):
                raise ConfigError(f"task {task.name}: with model.max_target_length={max_target} the answers "
                                  f"{list(e.candidates)[:4]} cut to the same tokens; raise model.max_target_length")
        feats.append({"input_ids": ids, "cands": cache[e.candidates], "target": e.target, "length": len(ids)})
    return feats


def _encoder_features(task: Task, examples: list[Example], tok, max_length: int) -> list[dict]:
    pairs = [p for e in examples for p in e.texts]
    enc = tok(
        [a for a, _ in pairs],
        [b or "" for _, b in pairs] if any(b is not None for _, b in pairs) else None,
        truncation=True,
        max_length=max_length,
        return_offsets_mapping=task.head == "span",
    )
    feats, row = [], 0
    for e in examples:
        n = len(e.texts)
        f = {
            "input_ids": enc["input_ids"][row : row + n],
            "token_type_ids": enc["token_type_ids"][row : row + n] if "token_type_ids" in enc else None,
            "target": e.target,
            "value": float(e.label) if task.head == "regression" and e.label is not None else None,
        }
        if task.head == "span":
            f["spans"] = [_span_tokens(enc["offset_mapping"][row], enc.sequence_ids(row), s) for s in e.spans or ()]
        f["length"] = max(len(x) for x in f["input_ids"])
        feats.append(f)
        row += n
    return feats


def _span_tokens(offsets: list[tuple[int, int]], seq_ids: list, span: tuple[int, int]) -> list[int]:
    """Token positions (of the first text) overlapping the char span."""
    start, end = span
    return [i for i, ((a, b), s) in enumerate(zip(offsets, seq_ids, strict=True)) if s == 0 and a < end and b > start]


def _pad(rows: list[list[int]], value: int, width: int | None = None) -> Tensor:
    width = width or max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r[:width], dtype=torch.long)
    return out


def collate(split: Split, idx: list[int], family: str, pad_id: int) -> dict:
    feats = [split.features[i] for i in idx]
    batch: dict = {"task": split.task.name, "task_ids": torch.full((len(idx),), split.task_id),
                   "index": torch.tensor(idx)}
    if family == "t5":
        batch.update(_t5_batch(feats, pad_id))
    else:
        batch.update(_encoder_batch(split.task, feats, pad_id))
    return batch


def _t5_batch(feats: list[dict], pad_id: int) -> dict:
    ids = _pad([f["input_ids"] for f in feats], pad_id)
    c = max(len(f["cands"]) for f in feats)
    t = max(len(x) for f in feats for x in f["cands"])
    cands = torch.full((len(feats), c, t), IGNORE, dtype=torch.long)
    for i, f in enumerate(feats):
        cands[i, : len(f["cands"])] = _pad(f["cands"], IGNORE, t)
    targets = torch.tensor([f["target"] for f in feats])
    choice_mask = cands[:, :, 0] != IGNORE
    batch = {"input_ids": ids, "attention_mask": (ids != pad_id).long(), "cand_ids": cands,
             "choice_mask": choice_mask, "targets": targets}
    if bool((targets >= 0).all()):
        batch["labels"] = cands[torch.arange(len(feats)), targets]
    return batch


def _encoder_batch(task: Task, feats: list[dict], pad_id: int) -> dict:
    c = max(len(f["input_ids"]) for f in feats)
    rows, types, valid = [], [], []
    for f in feats:
        n = len(f["input_ids"])
        rows += f["input_ids"] + [f["input_ids"][0][:1] + f["input_ids"][0][-1:]] * (c - n)
        tt = f["token_type_ids"] or [[0] * len(x) for x in f["input_ids"]]
        types += tt + [[0, 0]] * (c - n)
        valid.append([True] * n + [False] * (c - n))
    ids = _pad(rows, pad_id)
    lengths = torch.tensor([len(r) for r in rows])
    mask = (torch.arange(ids.shape[1])[None] < lengths[:, None]).long()
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": _pad(types, 0),
             "choice_mask": torch.tensor(valid), "targets": torch.tensor([f["target"] for f in feats])}
    if task.head == "regression":
        if all(f["value"] is not None for f in feats):
            batch["labels"] = torch.tensor([f["value"] for f in feats])
    elif bool((batch["targets"] >= 0).all()):
        batch["labels"] = batch["targets"]
    if task.head == "span":
        span_mask = torch.zeros(len(feats), 2, ids.shape[1], dtype=torch.bool)
        for i, f in enumerate(feats):
            for s, toks in enumerate(f["spans"][:2]):
                span_mask[i, s, toks] = True
        batch["span_mask"] = span_mask
    return batch


def train_batches(lengths: list[int], batch_size: int, seed: int, epoch: int, group_by_length: bool,
                  mega: int = 50) -> list[list[int]]:
    """One epoch's batches: shuffled, then (optionally) sorted by length inside mega-batches of
    ``mega * batch_size`` rows, and the resulting batches shuffled again. Deterministic in (seed, epoch),
    so a resumed run replays exactly the batches it would have seen."""
    rng = random.Random(seed * 100_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group_by_length:
        size = mega * batch_size
        chunks = [sorted(order[i : i + size], key=lambda j: lengths[j]) for i in range(0, len(order), size)]
        order = [j for c in chunks for j in c]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if group_by_length:
        rng.shuffle(batches)
    return batches


def eval_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Length-sorted batches (longest first, so peak memory shows up at once)."""
    order = sorted(range(len(lengths)), key=lambda j: -lengths[j])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def iterate(split: Split, batches: list[list[int]], family: str, pad_id: int) -> Iterator[dict]:
    for idx in batches:
        yield collate(split, idx, family, pad_id)


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}
