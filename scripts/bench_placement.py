"""Deep prompt placement: transformers' attention registry (ptune) against a prefilled ``DynamicCache``
(PEFT's way, and ptune's before the registry) on the same frozen BERT, the same prefix and batches.

    python scripts/bench_placement.py [--model minilm] [--steps 20] [--out docs/bench_placement.json]

Needs a transformers whose BertModel still takes ``past_key_values`` (5.23; in 5.24 it is deprecated).
Each repeat times one training step (forward, backward into the prefix) per mechanism, alternating
which goes first; it also checks that both give the same logits. Writes JSON and prints a Markdown row.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_CACHE", str(ROOT.parent / "shared" / "models" / "hub"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--prefix", type=int, default=20)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "docs" / "bench_placement.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import transformers
    from transformers import DynamicCache

    from ptune import backbones, methods, tasks
    from ptune.config import load

    cfg = load([f"model={args.model}", "method=p_tuning_v2", "task=sst2", f"method.num_virtual_tokens={args.prefix}",
                "model.attn_implementation=sdpa", "method.prefix_dropout=0.0", "model.dropout=0.0"])
    bb = backbones.load(cfg.model, [tasks.get("sst2")])
    method = methods.build(cfg.method, bb.dims(), [["negative", "positive"]])
    bb.train(), method.train()
    torch.manual_seed(0)
    ids = torch.randint(1000, 20000, (args.batch_size, args.length))
    mask = torch.ones_like(ids)
    mask[: args.batch_size // 2, args.length // 2:] = 0  # half the rows padded
    batch = {"task": "sst2", "input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}

    def registry():
        return bb.encode(ids, mask, batch["token_type_ids"], method(torch.zeros(len(ids), dtype=torch.long)))[1]

    def cache():  # the Cache route: a past of the prefix, the mask extended in front
        kv = method(torch.zeros(len(ids), dtype=torch.long)).keys_values
        full = torch.cat([mask.new_ones(len(ids), args.prefix), mask], 1)
        out = bb.model(input_ids=ids, attention_mask=full, token_type_ids=batch["token_type_ids"],
                       past_key_values=DynamicCache(kv, config=bb.model.config))
        return out.pooler_output

    with torch.no_grad():
        diff = (registry() - cache()).abs().max().item()

    def step(fn) -> float:
        method.zero_grad(set_to_none=True)
        t = time.perf_counter()
        fn().float().pow(2).mean().backward()
        return (time.perf_counter() - t) * 1000

    for fn in (registry, cache):
        step(fn)  # warm-up
    times: dict[str, list[float]] = {"registry": [], "cache": []}
    for i in range(args.steps):
        order = [("registry", registry), ("cache", cache)][:: 1 if i % 2 == 0 else -1]
        for name, fn in order:
            times[name].append(step(fn))
    ratio = statistics.median(r / c for r, c in zip(times["registry"], times["cache"], strict=True))
    result = {
        "model": args.model, "batch_size": args.batch_size, "length": args.length, "prefix": args.prefix,
        "threads": args.threads, "torch": torch.__version__, "transformers": transformers.__version__,
        "cpu_bf16": "avx512_bf16" in Path("/proc/cpuinfo").read_text(),
        "max_abs_diff_pooled": diff, "step_ms": times,
        "median_ms": {k: statistics.median(v) for k, v in times.items()}, "median_ratio_registry_over_cache": ratio,
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    m = result["median_ms"]
    print(f"| {args.model} | {args.batch_size} x {args.length} | {args.prefix} | {m['registry']:.0f} | "
          f"{m['cache']:.0f} | {ratio:.3f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
