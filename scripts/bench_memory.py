"""Peak memory of one configuration, in a fresh process (run by scripts/bench.py, one per configuration).

    python scripts/bench_memory.py --system ptune --method prompt_tuning --precision fp32 [bench options]

The process builds one system (ptune's parts, or PEFT's model on the same hub weights), the fixed
full-length batches and the optimizer, records its resident set size (the *baseline*: interpreter,
libraries, weights, data), resets the kernel's high-water mark (``/proc/self/clear_refs`` 5, Linux) and
runs ``--memory-steps`` training steps. It prints one JSON line: the peak RSS during those steps and the
*training* memory (peak minus baseline: activations kept for backward, gradients, optimizer state). On
CUDA it also reports ``torch.cuda.max_memory_allocated`` over the steps. A separate process per
configuration keeps one configuration's freed-but-cached memory from hiding another's peak.
"""

from __future__ import annotations

import argparse
import gc
import json

import torch
from bench_common import (
    PTUNE_SYSTEM,
    build_parts,
    fixed_batches,
    full_length_split,
    full_length_texts,
    peak_mb,
    peft_base,
    peft_inputs,
    peft_model,
    peft_optimizer,
    peft_step,
    ptune_optimizer,
    ptune_step,
    quiet_libraries,
    reset_peak,
    rss_mb,
)


def ptune_runner(args):
    parts = build_parts(args, args.method, args.precision, train_limit=args.batch_size)
    texts = full_length_texts(args.data_root, parts.backbone.tokenizer, 2 * args.batch_size, args.max_length)
    parts.train = full_length_split(parts, texts)
    state = ptune_optimizer(parts, 1_000_000)
    batches = fixed_batches(len(texts), args.batch_size)
    return lambda i: ptune_step(parts, state, batches[i % len(batches)]), parts.device


def peft_runner(args):
    from bench_common import ptune_overrides
    from transformers import AutoTokenizer

    from ptune.config import load
    from ptune.tasks.collate import collate, featurize

    cfg = load(ptune_overrides(args, args.method, args.precision, args.batch_size))
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu")
    tok = AutoTokenizer.from_pretrained(cfg.model.tokenizer_id or cfg.model.hf_id)
    texts = full_length_texts(args.data_root, tok, 2 * args.batch_size, args.max_length)
    model = peft_model(peft_base(cfg.model), cfg.method).to(device)
    state = peft_optimizer(model, cfg.lr, 1_000_000)
    from ptune import tasks

    task = tasks.get("sst2")
    examples = [task.example({"sentence": t, "label": y, "idx": i}) for i, (t, y) in enumerate(texts)]
    split = featurize(task, 0, examples, tok, "bert", cfg.model.max_length)
    batches = [peft_inputs(collate(split, i, "bert", tok.pad_token_id)) for i in fixed_batches(len(texts), args.batch_size)]
    return lambda i: peft_step(model, state, batches[i % len(batches)], args.precision, device), device


def measure(args) -> dict:
    run, device = (ptune_runner if args.system == PTUNE_SYSTEM else peft_runner)(args)
    gc.collect()
    baseline = rss_mb()
    exact = reset_peak(device)
    for i in range(args.memory_steps):
        run(i)
    peak = peak_mb(device)
    return {"system": args.system, "method": args.method, "precision": args.precision, "baseline_rss_mb": baseline,
            **peak, "training_mb": (peak["peak_rss_mb"] - baseline) if peak["peak_rss_mb"] else None,
            "exact_high_water_mark": exact, "steps": args.memory_steps}


def main() -> None:
    from bench_common import add_common_args

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--system", required=True, choices=("ptune", "peft"))
    parser.add_argument("--method", required=True)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quiet_libraries()
    print(json.dumps(measure(args)))


if __name__ == "__main__":
    main()
