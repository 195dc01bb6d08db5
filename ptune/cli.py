"""ptune's command line: dispatch only; config loading lives in :mod:`ptune.config`, runs in :mod:`ptune.run`.

    ptune train method=p_tuning_v2 model=minilm task=sst2 trainer.max_steps=300
    ptune eval run=outputs/<run>
    ptune describe method=prompt_tuning task=rte     # the resolved config, nothing loaded

User mistakes (unknown names, wrong types, bad ranges, missing data or models, broken checkpoints)
print one line and exit 2; internal errors keep their traceback.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from omegaconf import OmegaConf
from rich.console import Console

from ptune.config import load, to_config
from ptune.errors import ConfigError, PtuneError

USAGE = """ptune <command> [key=value ...]

commands:
  train      train a method on a task:   ptune train method=p_tuning_v2 task=rte model=minilm
  eval       re-score a saved run:        ptune eval run=outputs/<run> [data.root=...]
  describe   print the resolved config (nothing is loaded or trained)

groups (choose with group=name): method, model, task, optimizer, trainer; any value can be
overridden with a dotted key, e.g. trainer.max_steps=300 optimizer.lr=0.1 data.root=../shared/data/hub
"""


# --- commands ---------------------------------------------------------------------------------------
def cmd_train(overrides: list[str], console: Console) -> int:
    from ptune import run
    from ptune.training.loop import Interrupted

    cfg = load(overrides)
    try:
        results = run.train(cfg, console)
    except Interrupted as stop:
        console.print(f"interrupted at step {stop.step}; training state saved in {cfg.resolved_run_dir()}/state — "
                      "rerun the same command to resume")
        return 128 + stop.signum
    print(json.dumps({"run_dir": results["run_dir"], "best": results["best"]}))
    return 0


def cmd_eval(overrides: list[str], console: Console) -> int:
    from ptune import run
    from ptune.training.loop import evaluate

    runs = [o.split("=", 1)[1] for o in overrides if o.startswith("run=")]
    if not runs:
        raise ConfigError("ptune eval needs run=<run folder>, e.g. ptune eval run=outputs/prompt_tuning-sst2-minilm-s42")
    run_dir = Path(runs[0])
    saved = run.load_config(run_dir)
    rest = [o for o in overrides if not o.startswith("run=")]
    cfg = to_config(OmegaConf.merge(OmegaConf.structured(saved), OmegaConf.from_dotlist(rest)))
    parts = run.build(cfg, train=False)
    step = parts.load_prompt(run_dir / "prompt.safetensors")
    metrics = evaluate(parts, parts.eval)
    stored = {}
    results_path = run_dir / "results.json"
    if results_path.is_file():
        stored = (json.loads(results_path.read_text()).get("best") or {})
    main = parts.task.main_metric
    console.print(f"{cfg.task.name} {cfg.data.eval_split} @ step {step}: " +
                  ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()) +
                  (f"  (stored {main} {stored[main]:.2f})" if main in stored else ""))
    print(json.dumps({"run_dir": str(run_dir), "step": step, "metrics": metrics,
                      "stored": {k: stored[k] for k in metrics if k in stored}}))
    return 0


def cmd_describe(overrides: list[str], console: Console) -> int:
    cfg = load(overrides)
    print(OmegaConf.to_yaml(OmegaConf.structured(cfg)), end="")
    return 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "describe": cmd_describe}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ptune", usage=USAGE, add_help=True)
    parser.add_argument("command", choices=sorted(COMMANDS), help="train | eval | describe")
    parser.add_argument("overrides", nargs="*", help="key=value overrides")
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL) if hasattr(signal, "SIGPIPE") else None
    try:
        return COMMANDS[args.command](args.overrides, console)
    except PtuneError as err:
        print(f"ptune: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
