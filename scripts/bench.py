"""ptune's speed and memory benchmark against Hugging Face PEFT (docs/benchmarks.md explains the numbers).

    HF_HUB_OFFLINE=1 HF_HUB_CACHE=../shared/models/hub python scripts/bench.py      # full run, ~1 h on 2 cores
    HF_HUB_OFFLINE=1 HF_HUB_CACHE=../shared/models/hub python scripts/bench.py --quick   # smoke run, tiny model

What is measured, all in one process unless said otherwise:

1. **Training step, per registered method** (``ptune.methods.METHODS``) and precision. ptune's parts come
   from ``ptune.config.load`` + ``ptune.run.build`` and each step is ``ptune.training.loop.train_step`` (collate,
   forward, backward, clipping, AdamW, schedule). PEFT's twin is ``get_peft_model`` over
   ``BertForSequenceClassification`` (task type SEQ_CLS) holding ptune's frozen weights and head:
   prompt_tuning -> ``PromptTuningConfig``; p_tuning_v2 -> ``PrefixTuningConfig(prefix_projection=False)``;
   prefix_tuning -> ``PrefixTuningConfig(prefix_projection=True)``. Both train on the SAME batches: rows of
   joined SST-2 sentences cut to exactly ``--max-length`` tokens, so no position is padding. Dropout is
   the model's own. Repeats are interleaved (ptune, PEFT, alternating order) and reported as median
   (min-max); ptune/PEFT ratios are the median of per-repeat ratios. Also: examples/s, tokens/s, the
   no-grad forward of the frozen backbone alone on the same batch (step/forward), and evaluation passes
   (ptune's ``predict`` vs PEFT's model) over the same rows. bf16: ptune stores the frozen body in bf16
   (its ``trainer.precision=bf16``); PEFT runs as HF Trainer's ``bf16=True`` does (fp32 weights, autocast).
2. **Peak memory**, one fresh process per (system, method, precision) (scripts/bench_memory.py): RSS
   before the first step, then the kernel's high-water mark over ``--memory-steps`` steps after resetting
   it; "training MB" is the difference (CUDA: ``max_memory_allocated``).
3. **One epoch end to end** over the first ``--epoch-rows`` SST-2 train rows (scripts/bench_epoch.py):
   data loading, tokenization, model loading and all steps; ptune fp32 (length-grouped, dynamic padding),
   ptune bf16, ptune fp32 without length grouping, PEFT with per-batch dynamic padding over shuffled
   batches, PEFT padding every batch to max length. Rounds are interleaved; ratios are per round.
4. **SST-2 validation throughput**: ptune's ``predict`` vs PEFT's model in file order, per-batch padding.
5. **bf16 quality**: each method's gradient on one fixed batch in bf16 vs fp32 (dropout off), and
   validation accuracy after the same one-epoch training in bf16 vs fp32.

Threads: ``torch.set_num_threads(--threads)`` (default: all cores) in every process, and
``trainer.num_threads`` is set to the same value. Timings never appear in tests; this is a script.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch
from bench_common import ROOT, add_common_args, load_average, machine, quiet_libraries, versions

QUICK = {"model": "tiny-bert", "batch_size": 8, "max_length": 32, "repeats": 3, "warmup": 1, "eval_repeats": 1,
         "batches": 2, "epoch_rows": 160, "eval_rows": 64, "epoch_repeats": 1, "memory_steps": 2,
         "eval_batch_size": 32}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="ptune vs PEFT: step time, memory, epochs, evaluation, bf16 quality")
    add_common_args(p)
    a = p.add_argument
    a("--precision", nargs="+", default=None, choices=("fp32", "bf16"),
      help="precisions (default: fp32, plus bf16 on CUDA or on a CPU with bf16 instructions)")
    a("--repeats", type=int, default=10, help="timed training steps per method and system")
    a("--warmup", type=int, default=2)
    a("--eval-repeats", type=int, default=3)
    a("--batches", type=int, default=2, help="distinct fixed batches, cycled through the repeats")
    a("--epoch-rows", type=int, default=3200)
    a("--epoch-repeats", type=int, default=2, help="interleaved rounds of the epoch configurations")
    a("--epoch-method", default="prompt_tuning")
    a("--eval-rows", type=int, default=None, help="SST-2 validation rows (default: all 872)")
    a("--skip", nargs="*", default=[], choices=("steps", "memory", "epochs", "quality"))
    a("--quick", action="store_true", help="smoke run: tiny-bert, small batches, few repeats (seconds)")
    a("--out", type=Path, default=None, help="JSON results (default docs/benchmarks.json; --quick: outputs/)")
    a("--doc", type=Path, default=None, help="Markdown to update (default docs/benchmarks.md; --quick: outputs/)")
    args = p.parse_args(argv)
    if args.quick:
        given = {a.dest for a in p._actions if any(s in (argv or sys.argv[1:]) for s in a.option_strings)}
        for key, value in QUICK.items():
            if key not in given:
                setattr(args, key, value)
    if args.precision is None:
        from ptune.run import cpu_has_bf16

        on_cuda = args.device != "cpu" and torch.cuda.is_available()
        bf16 = on_cuda or cpu_has_bf16()
        args.precision = ["fp32", "bf16"] if bf16 else ["fp32"]
    folder, stem = (ROOT / "outputs", "bench-quick") if args.quick else (ROOT / "docs", "benchmarks")
    args.out = args.out or folder / f"{stem}.json"
    args.doc = args.doc or folder / f"{stem}.md"
    return args


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def memory_processes(args) -> list[dict]:
    """One fresh process per (precision, method, system), run one after another."""
    from ptune.methods import METHODS

    common = ["--model", args.model, "--batch-size", str(args.batch_size), "--max-length", str(args.max_length),
              "--num-virtual-tokens", str(args.num_virtual_tokens), "--threads", str(args.threads),
              "--device", args.device, "--data-root", str(args.data_root), "--seed", str(args.seed),
              "--memory-steps", str(args.memory_steps)]
    out = []
    for precision in args.precision:
        for method in METHODS:
            for system in ("ptune", "peft"):
                cmd = [sys.executable, str(Path(__file__).with_name("bench_memory.py")), *common,
                       "--system", system, "--method", method, "--precision", precision]
                done = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if done.returncode:
                    raise SystemExit(f"bench: memory process failed:\n{done.stderr[-3000:]}")
                out.append(json.loads(done.stdout.strip().splitlines()[-1]))
                log(f"  memory {precision} {method} {system}: training {out[-1]['training_mb']:.0f} MB")
    return out


def fixed_texts(args) -> list:
    from bench_common import full_length_texts, ptune_overrides
    from transformers import AutoTokenizer

    from ptune.config import load

    cfg = load(ptune_overrides(args, "prompt_tuning", "fp32", args.batch_size))
    tok = AutoTokenizer.from_pretrained(cfg.model.tokenizer_id or cfg.model.hf_id)
    return full_length_texts(args.data_root, tok, args.batches * args.batch_size, args.max_length)


def run_all(args) -> dict:
    from bench_epoch import accuracy_check, epoch_benchmark, eval_benchmark
    from bench_steps import gradient_check, step_benchmark

    res: dict = {"steps": {}, "memory": []}
    texts = fixed_texts(args)
    if "steps" not in args.skip:
        for precision in args.precision:
            res["steps"][precision] = step_benchmark(args, precision, texts, log)
    if "quality" not in args.skip:
        res["gradients"] = gradient_check(args, texts, log)
    if "memory" not in args.skip:
        log("peak memory: one process per configuration")
        res["memory"] = memory_processes(args)
    if "epochs" not in args.skip:
        log(f"epochs over {args.epoch_rows} SST-2 train rows")
        res["epochs"], kept = epoch_benchmark(args, log)
        res["validation"] = eval_benchmark(args, kept, log)
        if "quality" not in args.skip and "ptune_bf16" in kept:
            res["accuracy"] = accuracy_check(kept)
    return res


def main(argv: list[str] | None = None) -> int:
    from bench_report import render, write_doc

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    quiet_libraries()
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu")
    started, load_before = time.perf_counter(), load_average()
    res = {"date": dt.datetime.now().isoformat(timespec="minutes"), "machine": machine(device), "versions": versions(),
           "command": "python scripts/bench.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
           "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
           "load_before": load_before}
    res.update(run_all(args))
    res["load_after"], res["wall_s"] = load_average(), round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    write_doc(args.doc, render(res))
    log(f"done in {res['wall_s']:.0f}s -> {args.out}, {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
