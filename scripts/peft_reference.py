"""PEFT's reference accuracy for docs/results.md: the usual PEFT recipe on SST-2, seed by seed.

    HF_HUB_OFFLINE=1 HF_HUB_CACHE=../shared/models/hub python scripts/peft_reference.py \
        --method prompt_tuning --lr 0.3 --seeds 42 43 44

``get_peft_model(BertForSequenceClassification)`` (task type SEQ_CLS: prompt and classifier trainable),
shuffled batches padded per batch (``DataCollatorWithPadding``), AdamW, 6% warmup then linear decay,
clipping at 1.0, ``--steps`` steps of ``--batch-size``; validation accuracy on all of SST-2 validation.
Prints one JSON line per seed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys

import numpy as np
import torch
from bench_common import add_common_args, peft_base, peft_model, peft_optimizer, peft_step, quiet_libraries
from bench_epoch import peft_loader, peft_validation, sst2_records


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(p)
    p.add_argument("--method", default="prompt_tuning", choices=("prompt_tuning", "p_tuning_v2", "prefix_tuning"))
    p.add_argument("--lr", type=float, required=True)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seeds", type=int, nargs="+", default=[42])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    quiet_libraries()
    from transformers import AutoTokenizer

    from ptune.config import load

    cfg = load([f"method={args.method}", f"model={args.model}", f"method.num_virtual_tokens={args.num_virtual_tokens}"])
    tok = AutoTokenizer.from_pretrained(cfg.model.hf_id)
    train = sst2_records(args, tok, "train", None)
    valid = sst2_records(args, tok, "validation", None)
    for seed in args.seeds:
        random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
        args.seed = seed
        model = peft_model(peft_base(cfg.model), cfg.method)
        state = peft_optimizer(model, args.lr, args.steps)
        loader = peft_loader(args, tok, train, "longest", shuffle=True, batch_size=args.batch_size)
        for batch in itertools.islice(itertools.cycle(loader), args.steps):
            peft_step(model, state, dict(batch), "fp32", torch.device("cpu"))
        eval_loader = peft_loader(args, tok, valid, "longest", shuffle=False, batch_size=args.eval_batch_size)
        preds = peft_validation(model, eval_loader, torch.device("cpu"))
        acc = 100 * sum(int(a == r["labels"]) for a, r in zip(preds, valid, strict=True)) / len(valid)
        print(json.dumps({"method": args.method, "lr": args.lr, "seed": seed, "steps": args.steps,
                          "accuracy": acc}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
