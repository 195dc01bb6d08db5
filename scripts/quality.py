"""`make quality`: every method and variant trains briefly on real data with its defaults; fail if any ends at
the majority class (issue 24, acceptance 4). A script, not a test: it takes minutes per method.

    python scripts/quality.py [--steps 150] [--task sst2] [--jobs 2] [--only p_tuning ...] [--out outputs/quality]

Each variant (ptune.methods.variants(): every registered method, each variant it declares) runs as
`ptune train <its overrides> model=minilm task=<task> trainer.max_steps=<steps> seed=1` with nothing else set,
into <out>/<label>/ (a rerun skips finished runs). The majority-class score is computed from the task's
validation labels; a variant fails when its best validation accuracy is not at least `--margin` points above
it. Prints a table and exits 1 naming every variant that failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def majority(task_name: str, root: str | None) -> float:
    from ptune import tasks

    rows = tasks.load_split(tasks.get(task_name), "validation", root=root)
    counts = Counter(r.label for r in rows)
    return 100.0 * max(counts.values()) / len(rows)


def run_one(label: str, overrides: tuple[str, ...], args, root: str | None) -> dict:
    run_dir = Path(args.out) / label.replace(" ", "-")
    cmd = [sys.executable, "-m", "ptune", "train", *overrides, "model=minilm", f"task={args.task}",
           f"trainer.max_steps={args.steps}", f"trainer.eval_every={max(1, args.steps // 3)}", "seed=1",
           "trainer.progress=false", f"trainer.num_threads={args.threads}", f"run_dir={run_dir}"]
    if root:
        cmd.append(f"data.root={root}")
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    results = run_dir / "results.json"
    if done.returncode != 0 or not results.exists():
        return {"label": label, "error": (done.stderr.strip().splitlines() or ["no output"])[-1]}
    best = json.loads(results.read_text())["best"]
    return {"label": label, "best": best.get("accuracy"), "step": best.get("step")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--margin", type=float, default=2.0, help="points above the majority class to pass")
    parser.add_argument("--only", nargs="*", help="method names (default: every registered method)")
    parser.add_argument("--out", default="outputs/quality")
    args = parser.parse_args()
    if (SHARED / "models" / "hub").is_dir():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_CACHE", str(SHARED / "models" / "hub"))
    root = str(SHARED / "data" / "hub") if (SHARED / "data" / "hub").is_dir() else None
    from ptune import methods

    todo = [(label, o) for label, o in methods.variants() if not args.only or o[0].split("=")[1] in args.only]
    floor = majority(args.task, root)
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda v: run_one(*v, args, root), todo))
    failed = []
    print(f"{args.task}, {args.steps} steps, seed 1, defaults; majority class {floor:.2f}, pass above "
          f"{floor + args.margin:.2f}")
    for row in rows:
        ok = row.get("best") is not None and row["best"] >= floor + args.margin
        status = "ok" if ok else "FAIL"
        detail = row.get("error") or f"best {row['best']:.2f} at step {row['step']}"
        print(f"  {status:4}  {row['label']:34} {detail}")
        if not ok:
            failed.append(row["label"])
    if failed:
        print(f"quality: {len(failed)} of {len(rows)} at the majority class (or failed): {', '.join(failed)}",
              file=sys.stderr)
        return 1
    print(f"quality: all {len(rows)} learned")
    return 0


if __name__ == "__main__":
    sys.exit(main())
