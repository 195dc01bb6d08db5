"""Why does a method not learn on a real model? Prints, as one JSON line, the scales that decide it.

    python scripts/diagnose.py method=prefix_tuning [more overrides]      # offline: HF_HUB_OFFLINE=1 HF_HUB_CACHE=...

30 steps of batch 32 on real SST-2 rows (../shared/data/hub) with the run's optimizer groups, recording: the
backbone's own key/value RMS per layer and its word-embedding row norm; the prompt's soft-token norm or
per-layer key/value RMS at step 0 and step 30; the gradient norm of every trainable tensor in the first and
last step; the training losses; and the pooled output's spread across the batch (std norm over mean norm;
0 = every input gives the same vector, the head can only learn the majority class). docs/methods.md,
"Why methods stalled on a real model", holds what it showed.
"""

from __future__ import annotations

import json
import random
import sys
import time

import torch

from ptune import config
from ptune.methods.base import Prompt
from ptune.run import build
from ptune.tasks.collate import collate, to_device
from ptune.training.optim import build_optimizer, build_scheduler

STEPS = 30


def prompt_scales(method, task_ids) -> dict:
    with torch.no_grad():
        prompt = method(task_ids)
    out = {}
    if prompt.embeds is not None:
        tokens = prompt.embeds[0].float()
        out["token_norm"] = round(tokens.norm(dim=-1).mean().item(), 3)
        unit = torch.nn.functional.normalize(tokens, dim=-1)
        p = len(unit)  # mean pairwise cosine of the soft tokens, off the diagonal: near 1 = a prompt of rank ~1
        out["token_cosine"] = round(((unit @ unit.T).sum().item() - p) / max(1, p * (p - 1)), 3)
    if prompt.keys_values is not None:
        out["key_rms"] = [round(k.pow(2).mean().sqrt().item(), 3) for k, _ in prompt.keys_values]
        out["value_rms"] = [round(v.pow(2).mean().sqrt().item(), 3) for _, v in prompt.keys_values]
    return out


def spread(parts, batch) -> float:
    parts.backbone.eval(), parts.method.eval()
    with torch.no_grad():
        _, pooled = parts.backbone.encode(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"),
                                          parts.method(batch["task_ids"]))
    return round((pooled.std(0).norm() / pooled.mean(0).norm()).item(), 4)


def body_kv_rms(parts, batch) -> dict:
    """The frozen body's own keys and values on a real batch, without a prompt (BERT family)."""
    seen: dict = {}
    hooks = []
    for i, sa in enumerate(parts.backbone.self_attention):
        for name in ("key", "value"):
            hooks.append(getattr(sa, name).register_forward_hook(
                lambda m, a, o, i=i, name=name: seen.__setitem__((name, i), o.float().pow(2).mean().sqrt().item())))
    parts.backbone.eval()
    with torch.no_grad():
        parts.backbone(batch, Prompt())
    for h in hooks:
        h.remove()
    layers = range(len(parts.backbone.self_attention))
    return {f"body_{n}_rms": [round(seen[(n, i)], 3) for i in layers] for n in ("key", "value")}


def main(overrides: list[str]) -> dict:
    cfg = config.load(["data.root=../shared/data/hub", "data.train_limit=4000", "data.eval_limit=200",
                       "trainer.num_threads=1", f"trainer.max_steps={STEPS}", "run_dir=/tmp/ptune-diagnose",
                       *overrides])
    parts = build(cfg)
    bb = parts.backbone
    order = list(range(len(parts.train)))
    random.Random(0).shuffle(order)
    batches = [to_device(collate(parts.train, order[32 * i: 32 * (i + 1)], bb.family, parts.pad_id), parts.device)
               for i in range(STEPS + 1)]
    probe = batches[0]
    out: dict = {"overrides": overrides, "lr": cfg.lr,
                 "word_embedding_row_norm": round(bb.model.get_input_embeddings().weight.norm(dim=1).mean().item(), 3)}
    out.update(body_kv_rms(parts, probe))
    out["prompt_start"] = prompt_scales(parts.method, probe["task_ids"])
    out["spread_start"] = spread(parts, probe)
    optimizer = build_optimizer(cfg.optimizer, parts.param_groups(), cfg.lr, parts.device)
    scheduler = build_scheduler(cfg.optimizer, optimizer, STEPS)
    params = parts.trainable_parameters()
    named = {f"method.{n}": p for n, p in parts.method.named_parameters()}
    named.update({f"head.{n}": p for n, p in getattr(bb, "heads", torch.nn.ModuleDict()).named_parameters()})
    losses, grads = [], []
    start = time.perf_counter()
    for step, batch in enumerate(batches[1:]):
        parts.method.train(), bb.train()
        loss = bb(batch, parts.method(batch["task_ids"])).loss
        loss.backward()
        if step in (0, STEPS - 1):
            grads.append({n: round(p.grad.norm().item(), 5) for n, p in named.items() if p.grad is not None})
        torch.nn.utils.clip_grad_norm_(params, cfg.optimizer.max_grad_norm)
        optimizer.step(), scheduler.step(), optimizer.zero_grad()
        losses.append(round(loss.item(), 4))
    out["seconds_per_step"] = round((time.perf_counter() - start) / STEPS, 3)
    out["losses"] = losses
    out["grad_norm_first"], out["grad_norm_last"] = grads
    out["prompt_end"] = prompt_scales(parts.method, probe["task_ids"])
    out["spread_end"] = spread(parts, probe)
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
