"""Build the parts of a run from a config, and own the run folder.

    outputs/<run>/  config.yaml  prompt.safetensors  state/  metrics.jsonl  results.json
"""

from __future__ import annotations

import dataclasses
import json
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from omegaconf import OmegaConf
from rich.console import Console

from ptune import backbones, methods, tasks
from ptune.backbones.base import Backbone
from ptune.config import Config, to_config
from ptune.errors import CheckpointError, ConfigError
from ptune.methods.base import PromptMethod
from ptune.tasks.base import Task
from ptune.tasks.collate import Split, featurize
from ptune.tasks.data import check_labels
from ptune.training import checkpoint as ckpt
from ptune.training.loop import fit


@dataclass
class Parts:
    cfg: Config
    task: Task
    backbone: Backbone
    method: PromptMethod
    train: Split | None
    eval: Split
    device: torch.device
    run_dir: Path

    @property
    def pad_id(self) -> int:
        return self.backbone.tokenizer.pad_token_id

    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        return {"method": self.method, "head": getattr(self.backbone, "heads", torch.nn.ModuleDict())}

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """What the optimizer sees: the method's and the heads' parameters, never the frozen body."""
        return [p for m in self.trainable_modules().values() for p in m.parameters() if p.requires_grad]

    def metadata(self) -> dict[str, str]:
        c = self.cfg
        return {"format": ckpt.FORMAT, "method": c.method.name, "model": c.model.hf_id or c.model.name,
                "family": c.model.family, "task": c.task.name}

    def save_prompt(self, path: Path, step: int) -> None:
        meta = dict(self.metadata(), step=str(step))
        ckpt.atomic_save_tensors(path, ckpt.trainable_state(self.trainable_modules()), meta)

    def load_prompt(self, path: Path) -> int:
        tensors, meta = ckpt.read_tensors(path)
        if meta.get("format") != ckpt.FORMAT:
            raise CheckpointError(f"{path} is not a ptune prompt checkpoint (format={meta.get('format')!r})")
        ckpt.check_metadata(meta, self.metadata(), path)
        ckpt.load_trainable(self.trainable_modules(), tensors, path)
        return int(meta.get("step", -1))

    def parameter_counts(self) -> dict[str, int]:
        trainable = sum(p.numel() for p in ckpt.trainable_state(self.trainable_modules()).values())
        frozen = sum(p.numel() for p in self.backbone.model.parameters())
        return {"trainable_params": trainable, "total_params": trainable + frozen}


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda but no CUDA device is visible; use trainer.device=cpu or auto")
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
    """Task -> data -> backbone -> method -> featurized splits, cheap checks first.

    ``examples`` ({"train": [...], "eval": [...]}) replaces loading from data (tests, benchmarks).
    """
    task = tasks.get(cfg.task.name)
    device = pick_device(cfg.trainer.device)
    check_precision(cfg.trainer.precision, device)
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    root = cfg.data.root  # None: tasks.data falls back to $PTUNE_DATA_DIR, then the hub
    if examples is not None:
        train_ex, eval_ex = examples.get("train") if train else None, examples["eval"]
    else:
        train_ex = tasks.load_split(task, "train", root=root, limit=cfg.data.train_limit) if train else None
        eval_ex = tasks.load_split(task, cfg.data.eval_split, root=root, limit=cfg.data.eval_limit)
    if train_ex is not None:
        check_labels(task, train_ex, "train", need_all=True)
    check_labels(task, eval_ex, cfg.data.eval_split, need_all=False)
    torch.manual_seed(cfg.seed)
    backbone = backbones.load(cfg.model, [task], cfg.trainer.precision, device)
    torch.manual_seed(cfg.seed)
    if hasattr(backbone, "heads"):
        for head in backbone.heads.values():
            head.classifier.reset_parameters()
    method = methods.build(cfg.method, backbone.dims(), [verbalizers(task)]).to(device)
    tok, fam, m = backbone.tokenizer, cfg.model.family, cfg.model
    train_split = featurize(task, 0, train_ex, tok, fam, m.max_length, m.max_target_length) if train_ex else None
    eval_split = featurize(task, 0, eval_ex, tok, fam, m.max_length, m.max_target_length)
    return Parts(cfg, task, backbone, method, train_split, eval_split, device, Path(cfg.resolved_run_dir()))


def verbalizers(task: Task) -> list[str]:
    return [name.replace("_", " ") for name in task.label_names]


# --- one run --------------------------------------------------------------------------------------
def train(cfg: Config, console: Console, sweep: dict | None = None) -> dict:
    """Train one run into its folder (continuing it if it holds saved state); returns its results.

    Raises ``Interrupted`` when a signal stopped it (the state is saved first). ``sweep`` (the job's
    overrides and variant) goes into results.json so ``ptune table`` can tell sweep rows apart.
    """
    run_dir = Path(cfg.resolved_run_dir())
    check_run_folder(cfg, run_dir)
    parts = build(cfg)
    save_config(cfg, run_dir)
    counts = parts.parameter_counts()
    console.print(
        f"[bold]ptune[/] {cfg.method.name} on {cfg.task.name} with {cfg.model.name} -> {run_dir}  "
        f"(trainable {counts['trainable_params']:,} of {counts['total_params']:,} parameters, "
        f"{parts.device}, {cfg.trainer.precision})"
    )
    results = write_results(parts, fit(parts, console), sweep)
    best = results["best"] or {}
    console.print(
        f"done: best {results['main_metric']} {best.get(results['main_metric'], float('nan')):.2f} "
        f"at step {best.get('step')}, {results['steps']} steps, {results['wall_time_s']:.1f}s -> {run_dir}"
    )
    return dict(results, run_dir=str(run_dir))


# --- run folder ------------------------------------------------------------------------------------
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


def finished_results(cfg: Config) -> dict | None:
    """The results of this very run (same config) if its folder holds them; None: it still has to run."""
    run_dir = Path(cfg.resolved_run_dir())
    try:
        same = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml")) == OmegaConf.to_container(
            OmegaConf.structured(cfg))
        return json.loads((run_dir / "results.json").read_text()) if same else None
    except (OSError, ValueError, yaml.YAMLError):
        return None


def save_config(cfg: Config, run_dir: Path) -> None:
    ckpt.atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.structured(cfg)))


def load_config(run_dir: Path) -> Config:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a ptune run folder (no config.yaml)")
    return to_config(OmegaConf.load(path))


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
    return env


def write_results(parts: Parts, outcome: dict, sweep: dict | None = None) -> dict:
    history = outcome["progress"]["history"]
    best = next((r for r in history if r["step"] == outcome["best_step"]), None)
    results = {
        "task": parts.task.name,
        "method": parts.cfg.method.name,
        "model": parts.cfg.model.name,
        "seed": parts.cfg.seed,
        "main_metric": parts.task.main_metric,
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
    ckpt.atomic_write_json(parts.run_dir / "results.json", results)
    return results
