"""Build the parts of a run from a config (``training.parts.Parts``), and train one run into its folder
(ptune/run_folder.py: its files, lock and resume rules)."""

from __future__ import annotations

import dataclasses
import platform
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import torch
from rich.console import Console

from ptune import backbones, methods, run_folder, tasks
from ptune.config import Config
from ptune.errors import ConfigError, MissingDataError
from ptune.methods import transfer
from ptune.tasks import mixture
from ptune.tasks.base import Task
from ptune.tasks.collate import Split, featurize
from ptune.tasks.data import resolve_root
from ptune.tasks.schema import Place, check_labelled
from ptune.training import checkpoint as ckpt
from ptune.training import distributed, trackers
from ptune.training.loop import Interrupted, fit
from ptune.training.parts import Parts, run_metadata
from ptune.training.trackers import Tracker


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA when visible, else the CPU; one rank of several takes ``cuda:LOCAL_RANK``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda but no CUDA device is visible; use trainer.device=cpu or auto")
    world = distributed.current()
    if name == "cuda" and world.parallel:
        return torch.device("cuda", world.local_rank)
    return torch.device(name)


def check_precision(precision: str, device: torch.device) -> None:
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("trainer.precision=fp16 needs CUDA (loss scaling); on CPU use trainer.precision=bf16 or fp32")
    if precision == "bf16" and device.type == "cpu" and not cpu_has_bf16():
        print("ptune: warning: this CPU has no bf16 instructions (avx512_bf16 / amx_bf16), so "
              "trainer.precision=bf16 is emulated and slower than fp32 here (docs/benchmarks.md)", file=sys.stderr)


def cpu_has_bf16() -> bool:
    """Whether the CPU computes bf16 natively (x86 avx512_bf16 / amx_bf16; ARM bf16). Unknown: True."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16", "bf16"))


def build(cfg: Config, *, train: bool = True, examples: dict[str, list] | None = None) -> Parts:
    """Tasks -> data -> backbone -> method -> featurized splits, cheap checks first.

    ``examples`` ({"train": [...], "eval": [...]}, one-task runs) replaces loading from data (tests,
    benchmarks).
    """
    run_tasks = [tasks.get(name) for name in cfg.task_names]
    device = pick_device(cfg.trainer.device)
    check_precision(cfg.trainer.precision, device)
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    check_init_applies(cfg, run_tasks)
    places = methods.METHODS[cfg.method.name].places
    backbones.preflight(cfg.model, places, 0 if places == "none" else cfg.method.num_virtual_tokens)
    data = load_data(cfg, run_tasks, train, examples)
    torch.manual_seed(cfg.seed)
    backbone = backbones.load(cfg.model, run_tasks, cfg.trainer.precision, device)
    torch.manual_seed(cfg.seed)
    if hasattr(backbone, "heads"):
        for head in backbone.heads.values():
            head.classifier.reset_parameters()
    method = methods.build_for(cfg.method, backbone.dims(), run_tasks).to(device)
    tok, fam, m = backbone.tokenizer, cfg.model.family, cfg.model

    def feats(task_id: int, rows: list, split: str) -> Split:
        out = featurize(run_tasks[task_id], task_id, rows, tok, fam, m.max_length, m.max_target_length,
                        cloze=m.head == "mlm")
        out.split = split
        return out

    trains = [feats(i, d["train"], "train") for i, d in enumerate(data) if d["train"] is not None]
    evals = [feats(i, rows, split) for i, d in enumerate(data) for split, rows in d["eval"].items()]
    sizes = [len(s) for s in trains]
    per_epoch = sum(-(-n // cfg.trainer.batch_size) for n in sizes)
    if train and trains and cfg.trainer.grad_accum > per_epoch:
        raise ConfigError(f"trainer.grad_accum={cfg.trainer.grad_accum} is more than the {per_epoch} batches in an "
                          f"epoch ({sum(sizes)} training rows, trainer.batch_size={cfg.trainer.batch_size}); lower it "
                          "or use more data")
    probabilities = [1.0]
    if len(trains) > 1:
        rates = mixture.task_probabilities(sizes, cfg.data.sampling, cfg.data.temperature, cfg.data.sampling_cap)
        weighted = [r * cfg.task[t.name].weight for r, t in zip(rates, run_tasks, strict=True)]
        probabilities = [w / sum(weighted) for w in weighted]
    return Parts(cfg, run_tasks, backbone, method, trains, evals, device, Path(cfg.resolved_run_dir()),
                 probabilities)


def check_init_applies(cfg: Config, run_tasks: list[Task]) -> None:
    """An init that reads the tasks' class labels needs a task that has them (STS-B has none), before loading."""
    for key in ("init", "prompt_init"):
        if getattr(cfg.method, key, None) == "class_labels" and not any(t.label_names for t in run_tasks):
            raise ConfigError(f"method.{key}=class_labels: task(s) {', '.join(t.name for t in run_tasks)} have no "
                              "class labels (regression); choose random_uniform, vocab_sample or another init")


def load_data(cfg: Config, run_tasks: list[Task], train: bool, examples: dict | None) -> list[dict]:
    """Every task's training rows and evaluation splits, checked against the task's schema (ptune/tasks/schema.py:
    every file, its columns, types, values and labels); a mixture whose tasks lack data fails once, naming every
    missing task, before any model is loaded."""
    root = cfg.data.root  # None: tasks.data falls back to $PTUNE_DATA_DIR, then the hub
    out, missing = [], []
    for task in run_tasks:
        spec = cfg.task[task.name]
        splits = spec.eval_splits or [cfg.data.eval_split]
        if examples is not None:
            out.append({"train": examples.get("train") if train else None, "eval": {splits[0]: examples["eval"]}})
            continue
        try:
            rows = {"train": tasks.load_split(task, "train", root=root, limit=spec.train_limit or cfg.data.train_limit)
                    if train else None,
                    "eval": {s: tasks.load_split(task, s, root=root, limit=spec.eval_limit or cfg.data.eval_limit)
                             for s in splits}}
        except MissingDataError as err:  # a split that is there but fails its schema is raised as it is
            if len(run_tasks) == 1:
                raise
            missing.append((task.name, str(err)))
            continue
        out.append(rows)
    if missing:
        where = resolve_root(root) or "the hub"
        raise MissingDataError(f"no data for {len(missing)} of the {len(run_tasks)} tasks "
                        f"({', '.join(n for n, _ in missing)}) in {where}; first: {missing[0][1]}")
    if examples is not None:  # loaded splits were checked as they were read (tasks.load_split)
        for task, rows in zip(run_tasks, out, strict=True):
            if rows["train"] is not None:
                check_labelled(task, rows["train"], Place(f"task {task.name!r} split 'train'"), "all")
            for split, ex in rows["eval"].items():
                check_labelled(task, ex, Place(f"task {task.name!r} split {split!r}"), "some")
    return out


# --- one run --------------------------------------------------------------------------------------
def train(cfg: Config, console: Console, sweep: dict | None = None) -> dict:
    """Train one run into its folder (continuing it if it holds saved state); returns its results.

    Raises ``Interrupted`` when a signal stopped it (the state is saved first). ``sweep`` (the job's
    overrides and variant) goes into results.json so ``ptune table`` can tell sweep rows apart.
    """
    world = distributed.setup(cfg.trainer.device)
    if not world.main:
        console = Console(quiet=True)
    run_dir = Path(cfg.resolved_run_dir())
    with ExitStack() as held:
        def claim() -> dict | None:  # rank 0 locks and checks the folder; the other ranks take its verdict
            held.enter_context(run_folder.lock(run_dir))
            return run_folder.check_resume(cfg, run_dir)

        done = world.agree(claim)
        if done is not None:
            console.print(f"[bold]ptune[/] {run_dir} already finished ({done.get('steps')} steps, "
                          f"{done.get('stopped')}); left untouched")
            return dict(done, run_dir=str(run_dir))
        return _train(cfg, console, run_dir, sweep)


def _train(cfg: Config, console: Console, run_dir: Path, sweep: dict | None) -> dict:
    fresh = not cfg.resume or ckpt.latest_state_dir(run_dir / run_folder.STATE) is None
    source = transfer.check(cfg, run_metadata(cfg), backbones.sizes) if cfg.method.init_from and fresh else None
    tracker = trackers.build(cfg, run_dir, run_dir.parent.name if sweep else None)  # before the model loads
    status = "FAILED"
    try:
        results = _train_tracked(cfg, console, run_dir, source, tracker, sweep)
        status = "FINISHED"
        return results
    except (Interrupted, KeyboardInterrupt):
        status = "KILLED"
        raise
    finally:
        tracker.close(status)


def _train_tracked(cfg: Config, console: Console, run_dir: Path, source, tracker: Tracker, sweep: dict | None) -> dict:
    parts = build(cfg)
    parts.tracker = tracker
    if source is not None:
        n = transfer.apply(parts.method, cfg, *source)
        console.print(f"initialised the method's {n} parameter tensors from {source[2]} (method.init_from)")
        heads = transfer.apply_heads(getattr(parts.backbone, "heads", {}), source[0])
        if heads:
            console.print(f"initialised the heads of {', '.join(heads)} from the adapter's classifier")
        if source[1].get("note"):
            console.print(source[1]["note"])
    if distributed.current().main:
        run_folder.save_config(cfg, run_dir)
    counts = parts.parameter_counts()
    console.print(
        f"[bold]ptune[/] {cfg.method.name} on {cfg.task_label} with {cfg.model.name} -> {run_dir}  "
        f"(trainable {counts['trainable_params']:,} of {counts['total_params']:,} parameters, "
        f"{parts.device}, {cfg.trainer.precision})"
    )
    tracker.log_config(dataclasses.asdict(cfg))
    results = write_results(parts, fit(parts, console), sweep)
    tracker.log_results(results)
    best = results["best"] or {}
    console.print(
        f"done: best {results['main_metric']} {best.get(results['main_metric'], float('nan')):.2f} "
        f"at step {best.get('step')}, {results['steps']} steps, {results['wall_time_s']:.1f}s -> {run_dir}"
    )
    return dict(results, run_dir=str(run_dir))


def environment() -> dict[str, str]:
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__,
           "transformers": transformers.__version__, "platform": platform.platform()}
    try:
        here = Path(__file__).resolve().parent
        env["git_commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    env["argv"] = " ".join(sys.argv)
    env["world_size"] = str(distributed.current().size)
    return env


def write_results(parts: Parts, outcome: dict, sweep: dict | None = None) -> dict:
    history = outcome["progress"]["history"]
    best = next((r for r in history if r["step"] == outcome["best_step"]), None)
    results = {
        "task": parts.cfg.task_label,
        "tasks": parts.cfg.task_names,
        "method": parts.cfg.method.name,
        "model": parts.cfg.model.name,
        "seed": parts.cfg.seed,
        "main_metric": parts.monitor_key(),
        "best": best,
        "final": history[-1] if history else None,
        "steps": outcome["progress"]["step"],
        "stopped": outcome["stopped"],
        "wall_time_s": round(outcome["progress"]["wall_time"], 2),
        **parts.parameter_counts(),
        "environment": environment(),
        "config": dataclasses.asdict(parts.cfg),
    }
    if sweep:
        results["sweep"] = sweep
    if distributed.current().main:
        run_folder.write_results(parts.run_dir, results)
    return results
