"""Per-method step benchmark of scripts/bench.py: ptune and its PEFT twin on the same full-length batches.

For every registered method one *rig* holds ptune's parts (built by ``ptune.run.build``) and PEFT's model
on the same frozen weights and head. Repeats are interleaved: each repeat runs one ptune step and one
PEFT step per method back to back (alternating which goes first) and one no-grad forward of the frozen
backbone, so all of them see the same machine noise; ratios are taken per repeat, then the median.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from bench_common import (
    PEFT_SYSTEM,
    PTUNE_SYSTEM,
    autocast,
    build_parts,
    fixed_batches,
    full_length_split,
    paired_ratio,
    peft_inputs,
    peft_optimizer,
    peft_step,
    peft_twin,
    ptune_optimizer,
    ptune_step,
    stats,
    timed,
    to_device,
)

BIG = 1_000_000  # schedule length: the learning rate stays put while timing


@dataclass
class Rig:
    method: str
    parts: object
    ptune_state: tuple
    peft: torch.nn.Module
    peft_state: tuple
    idx: list[list[int]]  # row indices of each fixed batch (into parts.train)
    batches: list[dict]  # the same batches as ptune's collate makes them


def make_rig(args, method: str, precision: str, texts: list) -> Rig:
    from ptune.tasks.collate import collate

    parts = build_parts(args, method, precision, train_limit=args.batch_size)
    parts.train = parts.eval = full_length_split(parts, texts)
    idx = fixed_batches(len(texts), args.batch_size)
    batches = [collate(parts.train, i, parts.backbone.family, parts.pad_id) for i in idx]
    assert all(bool(b["attention_mask"].all()) for b in batches), "benchmark batches must hold no padding"
    peft = peft_twin(parts)
    return Rig(method, parts, ptune_optimizer(parts, BIG), peft, peft_optimizer(peft, parts.cfg.lr, BIG), idx, batches)


def run_step(rig: Rig, system: str, b: int, precision: str) -> float:
    parts = rig.parts
    if system == PTUNE_SYSTEM:
        return timed(lambda: ptune_step(parts, rig.ptune_state, rig.idx[b]), parts.device)
    batch = peft_inputs(rig.batches[b])
    return timed(lambda: peft_step(rig.peft, rig.peft_state, batch, precision, parts.device), parts.device)


@torch.no_grad()
def backbone_forward(parts, batch: dict) -> None:
    """The frozen backbone alone (no prompt, no head), no grad: the floor a training step is compared with."""
    model = parts.backbone.model
    model.eval()
    batch = to_device(batch, parts.device)
    model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
          token_type_ids=batch.get("token_type_ids"))


def time_steps(args, rigs: dict[str, Rig], precision: str, log) -> dict:
    """Interleaved warm-up + repeats; returns per method and system the step times after warm-up."""
    times = {m: {PTUNE_SYSTEM: [], PEFT_SYSTEM: []} for m in rigs}
    forward: list[float] = []
    nb = len(next(iter(rigs.values())).batches)
    for r in range(args.warmup + args.repeats):
        b = r % nb
        for i, (m, rig) in enumerate(rigs.items()):
            order = (PTUNE_SYSTEM, PEFT_SYSTEM) if (r + i) % 2 == 0 else (PEFT_SYSTEM, PTUNE_SYSTEM)
            for system in order:
                t = run_step(rig, system, b, precision)
                if r >= args.warmup:
                    times[m][system].append(t)
        first = next(iter(rigs.values()))
        t = timed(lambda first=first, b=b: backbone_forward(first.parts, first.batches[b]), first.parts.device)
        if r >= args.warmup:
            forward.append(t)
        log(f"  step repeat {r + 1}/{args.warmup + args.repeats}" + (" (warm-up)" if r < args.warmup else ""))
    return {"steps": times, "forward": forward}


@torch.inference_mode()
def peft_predict(model, batches: list[dict], precision: str, device) -> list[int]:
    model.eval()
    preds: list[int] = []
    for batch in batches:
        with autocast(precision, device):
            logits = model(**to_device(peft_inputs(batch, labels=False), device)).logits
        preds += logits.float().argmax(-1).tolist()
    return preds


def time_eval(args, rigs: dict[str, Rig], precision: str) -> dict:
    """Evaluation passes over the fixed rows: ptune's ``predict`` vs PEFT's model, interleaved."""
    from ptune.training.loop import predict

    times = {m: {PTUNE_SYSTEM: [], PEFT_SYSTEM: []} for m in rigs}
    for r in range(args.eval_repeats + 1):  # the first pass is a warm-up
        for m, rig in rigs.items():
            p = rig.parts
            t_pt = timed(lambda p=p: predict(p, p.eval, args.batch_size), p.device)
            t_pf = timed(lambda rig=rig, p=p: peft_predict(rig.peft, rig.batches, precision, p.device), p.device)
            if r:
                times[m][PTUNE_SYSTEM].append(t_pt)
                times[m][PEFT_SYSTEM].append(t_pf)
    return times


def summarize(args, raw: dict, evals: dict, rows: int) -> dict:
    """Medians, spreads, throughput and paired ratios per method."""
    b, length = args.batch_size, args.max_length
    fwd = stats(raw["forward"])
    out: dict = {"forward_s": fwd, "methods": {}}
    for m, by_system in raw["steps"].items():
        entry: dict = {}
        for system, xs in by_system.items():
            s = stats(xs)
            ev = stats(evals[m][system])
            entry[system] = {"step_s": s, "examples_per_s": b / s["median"], "tokens_per_s": b * length / s["median"],
                             "step_over_forward": s["median"] / fwd["median"], "eval_s": ev,
                             "eval_examples_per_s": rows / ev["median"]}
        entry["ptune_over_peft_step"] = paired_ratio(by_system[PTUNE_SYSTEM], by_system[PEFT_SYSTEM])
        entry["ptune_over_peft_eval"] = paired_ratio(evals[m][PTUNE_SYSTEM], evals[m][PEFT_SYSTEM])
        out["methods"][m] = entry
    return out


def step_benchmark(args, precision: str, texts: list, log) -> dict:
    from ptune.methods import METHODS

    log(f"step benchmark ({precision}): building ptune parts and PEFT twins for {', '.join(METHODS)}")
    rigs = {m: make_rig(args, m, precision, texts) for m in METHODS}
    raw = time_steps(args, rigs, precision, log)
    log("  evaluation passes")
    evals = time_eval(args, rigs, precision)
    result = summarize(args, raw, evals, len(texts))
    result["trainable_params"] = {
        m: {PTUNE_SYSTEM: r.parts.parameter_counts()["trainable_params"],
            PEFT_SYSTEM: sum(p.numel() for p in r.peft.parameters() if p.requires_grad)}
        for m, r in rigs.items()
    }
    result["attn_implementation"] = {PTUNE_SYSTEM: next(iter(rigs.values())).parts.backbone.model.config._attn_implementation,
                                     PEFT_SYSTEM: "sdpa"}
    return result


# --- bf16 quality: the prompt's gradient on a fixed batch ----------------------------------------------
def method_gradient(args, method: str, precision: str, texts: list) -> tuple[torch.Tensor, float]:
    """Gradient of the method's parameters on one fixed batch, dropout off (so only precision differs)."""
    from ptune.tasks.collate import collate
    from ptune.tasks.collate import to_device as pt_device

    extra = ("model.dropout=0.0",) + (("method.prefix_dropout=0.0",) if method in ("p_tuning_v2", "prefix_tuning")
                                      else ("method.encoder_dropout=0.0",) if method == "p_tuning" else ())
    parts = build_parts(args, method, precision, train_limit=args.batch_size, extra=extra)
    split = full_length_split(parts, texts[: args.batch_size])
    batch = pt_device(collate(split, list(range(args.batch_size)), parts.backbone.family, parts.pad_id), parts.device)
    parts.method.train()
    parts.backbone.train()
    loss = parts.backbone(batch, parts.method(batch["task_ids"]), score=False).loss
    loss.backward()
    trained = [*parts.method.parameters()] or [p for p in parts.backbone.parameters() if p.requires_grad]
    grad = torch.cat([p.grad.detach().float().flatten() for p in trained if p.grad is not None])
    return grad.cpu(), float(loss)


def gradient_check(args, texts: list, log) -> dict:
    from ptune.methods import METHODS

    log("bf16 quality: method gradients in bf16 vs fp32 on one fixed batch")
    out = {}
    for m in METHODS:
        g32, l32 = method_gradient(args, m, "fp32", texts)
        g16, l16 = method_gradient(args, m, "bf16", texts)
        rel = float((g16 - g32).norm() / g32.norm())
        cos = float(torch.nn.functional.cosine_similarity(g16, g32, dim=0))
        out[m] = {"relative_error": rel, "cosine": cos, "loss_fp32": l32, "loss_bf16": l16}
    return out
