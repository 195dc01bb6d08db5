"""End-to-end epochs of scripts/bench.py: one epoch over a fixed slice of SST-2 train, everything included.

Each epoch is timed from reading the parquet file to the last optimizer step: config composition (ptune),
data loading, tokenization, model loading and every training step. Evaluation is timed separately.

* ``ptune_fp32`` / ``ptune_bf16``: ``ptune.run.build`` then ptune's ``train_batches`` (length-grouped,
  shuffled) and ``train_step`` for each batch, i.e. ``fit``'s loop without its evaluation and checkpoints.
* ``ptune_fp32_shuffled``: the same with ``trainer.group_by_length=false`` (dynamic padding over plain
  shuffled batches), which separates what length grouping buys from what the rest of ptune buys.
* ``peft_dynamic`` / ``peft_max_length``: the usual PEFT recipe: read the parquet, tokenize, wrap
  ``BertForSequenceClassification`` with ``get_peft_model``, then a shuffled ``DataLoader`` with
  transformers' ``DataCollatorWithPadding`` (padding to the longest row of each batch, or every batch to
  ``max_length``), AdamW, linear schedule and gradient clipping at 1.0 as HF Trainer does.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path

import torch
from bench_common import (
    SST2,
    build_parts,
    paired_ratio,
    peft_base,
    peft_model,
    peft_optimizer,
    peft_step,
    ptune_optimizer,
    ptune_overrides,
    ptune_step,
    stats,
    timed,
    to_device,
)

CONFIGS = ("ptune_fp32", "ptune_bf16", "ptune_fp32_shuffled", "peft_dynamic", "peft_max_length")


def ptune_epoch(args, precision: str, grouped: bool = True) -> dict:
    from ptune.tasks.collate import train_batches

    start = time.perf_counter()
    extra = ("trainer.group_by_length=true",) if grouped else ("trainer.group_by_length=false",)
    parts = build_parts(args, args.epoch_method, precision, args.epoch_rows, extra, eval_limit=args.eval_rows)
    built = time.perf_counter() - start
    tc = parts.cfg.trainer
    lengths = parts.train.lengths()
    batches = train_batches(lengths, tc.batch_size, parts.cfg.seed, 0, tc.group_by_length)
    state = ptune_optimizer(parts, len(batches))
    for idx in batches:
        ptune_step(parts, state, idx)
    positions = sum(len(i) * max(lengths[j] for j in i) for i in batches)
    return {"seconds": time.perf_counter() - start, "setup_s": built, "steps": len(batches),
            "tokens": sum(lengths), "positions": positions, "model": parts}


def sst2_records(args, tok, split: str, limit: int | None) -> list[dict]:
    """PEFT's data: the parquet rows, tokenized in one batched call (truncation to max_length)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(args.data_root) / SST2[0] / SST2[1]
    table = pa.concat_tables([pq.read_table(f) for f in sorted(folder.glob(f"{split}-*.parquet"))])
    rows = table.slice(0, limit).to_pylist() if limit else table.to_pylist()
    enc = tok([r["sentence"] for r in rows], truncation=True, max_length=args.max_length)
    return [{**{k: enc[k][i] for k in enc}, "labels": r["label"]} for i, r in enumerate(rows)]


def peft_loader(args, tok, records: list[dict], padding: str, shuffle: bool, batch_size: int):
    from torch.utils.data import DataLoader
    from transformers import DataCollatorWithPadding

    collator = DataCollatorWithPadding(tok, padding=padding, max_length=args.max_length if padding == "max_length" else None)
    gen = torch.Generator().manual_seed(args.seed)
    return DataLoader(records, batch_size=batch_size, shuffle=shuffle, generator=gen, collate_fn=collator)


def peft_epoch(args, cfg, padding: str) -> dict:
    from transformers import AutoTokenizer

    start = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(cfg.model.tokenizer_id or cfg.model.hf_id)
    records = sst2_records(args, tok, "train", args.epoch_rows)
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu")
    torch.manual_seed(args.seed)
    model = peft_model(peft_base(cfg.model), cfg.method).to(device)
    loader = peft_loader(args, tok, records, padding, shuffle=True, batch_size=args.batch_size)
    built = time.perf_counter() - start
    state = peft_optimizer(model, cfg.lr, len(loader))
    positions = 0
    for batch in loader:
        positions += batch["input_ids"].numel()
        peft_step(model, state, batch, "fp32", device)
    return {"seconds": time.perf_counter() - start, "setup_s": built, "steps": len(loader),
            "tokens": sum(len(r["input_ids"]) for r in records), "positions": positions,
            "model": (model, tok, device)}


def run_config(args, name: str, peft_cfg) -> dict:
    if name == "ptune_fp32":
        return ptune_epoch(args, "fp32")
    if name == "ptune_bf16":
        return ptune_epoch(args, "bf16")
    if name == "ptune_fp32_shuffled":
        return ptune_epoch(args, "fp32", grouped=False)
    return peft_epoch(args, peft_cfg, "longest" if name == "peft_dynamic" else "max_length")


def epoch_benchmark(args, log) -> tuple[dict, dict]:
    """Interleaved rounds (forward order, then reversed); returns timings and round 0's trained models."""
    from ptune.config import load

    peft_cfg = load(ptune_overrides(args, args.epoch_method, "fp32", args.epoch_rows))
    configs = [c for c in CONFIGS if "bf16" not in c or "bf16" in args.precision]
    times: dict = {c: [] for c in configs}
    detail: dict = {}
    kept: dict = {}
    for r in range(args.epoch_repeats):
        for name in configs if r % 2 == 0 else list(reversed(configs)):
            out = run_config(args, name, peft_cfg)
            model = out.pop("model")
            if r == 0 and name in ("ptune_fp32", "ptune_bf16", "peft_dynamic"):
                kept[name] = model
            times[name].append(out["seconds"])
            detail.setdefault(name, []).append(out)
            log(f"  epoch {name} (round {r + 1}/{args.epoch_repeats}): {out['seconds']:.1f}s")
            del model
            gc.collect()
    return summarize_epochs(times, detail), kept


def summarize_epochs(times: dict, detail: dict) -> dict:
    out = {}
    for name, xs in times.items():
        d = detail[name][0]
        out[name] = {"seconds": stats(xs), "setup_s": stats([x["setup_s"] for x in detail[name]]),
                     "steps": d["steps"], "tokens": d["tokens"], "positions": d["positions"],
                     "padding_waste": 1 - d["tokens"] / d["positions"]}
    pairs = [("ptune_fp32", "peft_dynamic"), ("peft_max_length", "ptune_fp32"), ("ptune_bf16", "peft_dynamic"),
             ("ptune_bf16", "ptune_fp32"), ("ptune_fp32_shuffled", "peft_dynamic")]
    ratios = {f"{a}/{b}": paired_ratio(times[a], times[b]) for a, b in pairs if a in times and b in times}
    return {"configs": out, "ratios": ratios}


# --- evaluation over SST-2 validation ---------------------------------------------------------------
@torch.inference_mode()
def peft_validation(model, loader, device) -> list[int]:
    model.eval()
    preds: list[int] = []
    for batch in loader:
        batch = to_device({k: v for k, v in batch.items() if k != "labels"}, device)
        preds += model(**batch).logits.argmax(-1).tolist()
    return preds


def eval_benchmark(args, kept: dict, log) -> dict:
    """SST-2 validation: ptune's ``predict`` (length-sorted) vs PEFT's model in file order, interleaved."""
    from ptune.training.loop import predict

    parts = kept["ptune_fp32"]
    model, tok, device = kept["peft_dynamic"]
    records = sst2_records(args, tok, "validation", args.eval_rows)
    loader = peft_loader(args, tok, records, "longest", shuffle=False, batch_size=args.eval_batch_size)
    t_pt, t_pf = [], []
    for r in range(args.eval_repeats + 1):  # the first pass is a warm-up
        a = timed(lambda: predict(parts, parts.eval, args.eval_batch_size), parts.device)
        b = timed(lambda: peft_validation(model, loader, device), device)
        if r:
            t_pt.append(a)
            t_pf.append(b)
    log(f"  validation passes: ptune {min(t_pt):.2f}s, PEFT {min(t_pf):.2f}s")
    n = len(records)
    peft_acc = 100 * sum(p == r["labels"] for p, r in zip(peft_validation(model, loader, device), records, strict=True)) / n
    return {"rows": n, "batch_size": args.eval_batch_size,
            "ptune": {"seconds": stats(t_pt), "examples_per_s": n / stats(t_pt)["median"]},
            "peft": {"seconds": stats(t_pf), "examples_per_s": n / stats(t_pf)["median"], "accuracy": peft_acc},
            "peft_over_ptune_time": paired_ratio(t_pf, t_pt)}


def accuracy_check(kept: dict) -> dict:
    """Validation accuracy after the same one-epoch training, fp32 vs bf16 (same seed, same batches)."""
    from ptune.training.loop import evaluate

    acc = {p: evaluate(kept[f"ptune_{p}"], kept[f"ptune_{p}"].eval)["accuracy"] for p in ("fp32", "bf16")}
    return {"accuracy_fp32": acc["fp32"], "accuracy_bf16": acc["bf16"], "difference": acc["bf16"] - acc["fp32"]}
