"""ptune's command line: Hydra composes ``configs/`` (shipped as ``ptune.configs``) into typed dataclasses.

    ptune train method=p_tuning_v2 model=minilm task=sst2 trainer.max_steps=300
    ptune eval run=outputs/<run>
    ptune describe method=prompt_tuning task=rte     # the resolved config, nothing loaded

User mistakes (unknown names, wrong types, bad ranges, missing data or models, broken checkpoints)
print one line and exit 2; internal errors keep their traceback.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
from pathlib import Path

from hydra import compose, initialize_config_module
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console

import ptune.methods  # noqa: F401  (registers the method configs)
from ptune.config import METHOD_CONFIGS, Config, validate
from ptune.errors import ConfigError, PtuneError

GROUPS = ("method", "model", "task", "optimizer", "trainer")
USAGE = """ptune <command> [key=value ...]

commands:
  train      train a method on a task:   ptune train method=p_tuning_v2 task=rte model=minilm
  eval       re-score a saved run:        ptune eval run=outputs/<run> [data.root=...]
  describe   print the resolved config (nothing is loaded or trained)

groups (choose with group=name): method, model, task, optimizer, trainer; any value can be
overridden with a dotted key, e.g. trainer.max_steps=300 optimizer.lr=0.1 data.root=../shared/data/hub
"""


def group_choices(group: str) -> list[str]:
    folder = Path(__file__).resolve().parent.parent / "configs" / group
    if not folder.is_dir():  # installed wheel: configs ship as the package ptune.configs
        import ptune.configs

        folder = Path(ptune.configs.__file__).parent / group
    return sorted(p.stem for p in folder.glob("*.yaml"))


def compose_config(overrides: list[str]) -> DictConfig:
    """Compose with Hydra, turning its multi-line errors into one line naming key, value and choices."""
    for o in overrides:
        m = re.match(r"^([a-z_]+)=(.*)$", o)
        if m and m.group(1) in GROUPS and m.group(2) not in group_choices(m.group(1)):
            raise ConfigError(
                f"unknown {m.group(1)} {m.group(2)!r}; choose one of: {', '.join(group_choices(m.group(1)))}"
            )
        if "=" not in o:
            raise ConfigError(f"argument {o!r} is not key=value (e.g. task=rte, trainer.max_steps=300)")
    try:
        with initialize_config_module(config_module="ptune.configs", version_base=None):
            return compose(config_name="config", overrides=overrides)
    except MissingConfigException as err:
        raise ConfigError(str(err).splitlines()[0]) from None
    except (HydraException, OmegaConfBaseException) as err:
        bad = re.search(r"Could not override '([^']+)'", str(err))
        if bad:
            group = bad.group(1).split(".")[0]
            raise ConfigError(
                f"unknown key {bad.group(1)!r}; `ptune describe` lists the keys of {group!r}"
            ) from None
        msg = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
        raise ConfigError(msg) from None


def to_config(raw: DictConfig) -> Config:
    """DictConfig -> typed Config; a wrong type fails naming the key, the value and the expected type."""
    name = raw.get("method", {}).get("name", "prompt_tuning")
    if name not in METHOD_CONFIGS:
        raise ConfigError(f"unknown method {name!r}; choose one of: {', '.join(sorted(METHOD_CONFIGS))}")
    schema = OmegaConf.structured(Config)
    schema.method = OmegaConf.structured(METHOD_CONFIGS[name])
    try:
        merged = OmegaConf.merge(schema, raw)
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        value = _lookup(raw, key)
        first = str(err).splitlines()[0]
        if "not in struct" in first or "Key '" in first:
            raise ConfigError(f"unknown key {key!r} ({first})") from None
        raise ConfigError(f"{key}={value!r} has the wrong type: {first}") from None
    assert isinstance(cfg, Config)
    return validate(cfg)


def _lookup(raw: DictConfig, key: str):
    try:
        return OmegaConf.select(raw, key)
    except OmegaConfBaseException:
        return None


def load(overrides: list[str]) -> Config:
    return to_config(compose_config(overrides))


# --- commands ---------------------------------------------------------------------------------------
def cmd_train(overrides: list[str], console: Console) -> int:
    from ptune import run
    from ptune.training.loop import Interrupted, fit

    cfg = load(overrides)
    run_dir = Path(cfg.resolved_run_dir())
    check_run_folder(cfg, run_dir)
    parts = run.build(cfg)
    run.save_config(cfg, run_dir)
    counts = parts.parameter_counts()
    console.print(
        f"[bold]ptune[/] {cfg.method.name} on {cfg.task.name} with {cfg.model.name} -> {run_dir}  "
        f"(trainable {counts['trainable_params']:,} of {counts['total_params']:,} parameters, "
        f"{parts.device}, {cfg.trainer.precision})"
    )
    try:
        outcome = fit(parts, console)
    except Interrupted as stop:
        console.print(f"interrupted at step {stop.step}; training state saved in {run_dir}/state — "
                      "rerun the same command to resume")
        return 128 + stop.signum
    results = run.write_results(parts, outcome)
    best = results["best"] or {}
    console.print(
        f"done: best {results['main_metric']} {best.get(results['main_metric'], float('nan')):.2f} "
        f"at step {best.get('step')}, {results['steps']} steps, {results['wall_time_s']:.1f}s -> {run_dir}"
    )
    print(json.dumps({"run_dir": str(run_dir), "best": best}))
    return 0


def check_run_folder(cfg: Config, run_dir: Path) -> None:
    """Never overwrite another run's results: a folder holding a different run is refused."""
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return
    if not cfg.resume:
        raise ConfigError(f"run folder {run_dir} already exists; use resume=true to continue it or another run_dir=")
    old, new = OmegaConf.load(saved), OmegaConf.structured(cfg)
    for key in ("method.name", "model.name", "task.name", "seed"):
        if str(OmegaConf.select(old, key)) != str(OmegaConf.select(new, key)):
            raise ConfigError(
                f"run folder {run_dir} holds a run with {key}={OmegaConf.select(old, key)}; choose another run_dir="
            )


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
