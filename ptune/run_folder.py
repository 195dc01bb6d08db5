"""The run folder: its file names, its layout, one way to open a run, its lock and its resume rules.

    outputs/<run>/  config.yaml         the resolved config: eval, predict, export, table and a resume read it back
                    prompt.safetensors  the best checkpoint's trainable parameters (method.*, head.*, body.*)
                    folded.safetensors  each task's plain prompt at that checkpoint (PromptMethod.export)
                    metrics.jsonl       a line per evaluation (a mixture: a line per task and split, then avg)
                    results.json        written once, at the end: best, final, steps, counts, environment
                    state/              the training state a resume continues from (training/checkpoint.py)
                    snapshots/step-N/   the prompt files at trainer.snapshot_steps
                    predictions/        ptune predict's output, unless out= says otherwise
                    tracker.json  tensorboard/   the experiment tracker's (logger=)
                    .ptune.lock         held by the process that trains it

Only this module spells those names (tests/test_run_folder.py holds ptune/ to it). Writers go through
``ptune.files`` (temp file, flush, rename); readers open a run with :func:`open`, which names a missing or
damaged ``config.yaml`` in one line, and read ``results.json`` and ``metrics.jsonl`` forgivingly: a run that
is still writing, or was damaged, reads as "no results" (:attr:`RunFolder.results_damaged` tells the two apart).
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ptune import files
from ptune.config import RUN_ONLY, Config, flatten, saved_task_label, to_config
from ptune.errors import CheckpointError, ConfigError

CONFIG = "config.yaml"
PROMPT = "prompt.safetensors"
FOLDED = "folded.safetensors"
METRICS = "metrics.jsonl"
RESULTS = "results.json"
STATE = "state"
STATE_FILE = "state.json"  # the last file of a state folder written (training/checkpoint.py): it marks one complete
SNAPSHOTS = "snapshots"
PREDICTIONS = "predictions"
TRACKER = "tracker.json"  # MLflow's run id, so a resume continues its run
TENSORBOARD = "tensorboard"
LOCK = ".ptune.lock"
OWN = (CONFIG, PROMPT, FOLDED, METRICS, RESULTS, STATE, SNAPSHOTS, TRACKER, TENSORBOARD, LOCK)  # never written over
NOT_RUNS = {".hydra", ".submitit", STATE}  # folders whose config.yaml is not a run's (Hydra's, submitit's)


# --- layout ---------------------------------------------------------------------------------------
def is_run(folder: Path) -> bool:
    return (Path(folder) / CONFIG).is_file()


def find(top: Path) -> Iterator[Path]:
    """Every run folder under ``top`` (``top`` itself included), in path order."""
    top = Path(top)
    for cfg in sorted(top.rglob(CONFIG)):
        if not NOT_RUNS & set(cfg.relative_to(top).parts[:-1]):
            yield cfg.parent


def snapshot(run_dir: Path, step: int) -> Path:
    """The folder that keeps the prompt files of ``step`` (``trainer.snapshot_steps``)."""
    return Path(run_dir) / SNAPSHOTS / f"step-{step}"


def snapshot_steps(run_dir: Path) -> list[int]:
    folder = Path(run_dir) / SNAPSHOTS
    steps = (p.name.split("-", 1)[1] for p in folder.glob("step-*")) if folder.is_dir() else ()
    return sorted(int(s) for s in steps if s.isdigit())


def state_step(run_dir: Path) -> int | None:
    """The step of the training state in ``state/``; None: none saved, or unreadable."""
    return saved_step(Path(run_dir) / STATE)


def saved_step(state: Path) -> int | None:
    """The step a training state folder holds (``state/``, or ``state.old/`` after a kill between the renames
    of training/checkpoint.py's swap); None: none saved, or unreadable (loading it says why)."""
    progress = (files.read_json(Path(state) / STATE_FILE) or {}).get("progress")
    step = progress.get("step") if isinstance(progress, dict) else None
    return step if isinstance(step, int) else None


def has_state(run_dir: Path) -> bool:
    return (Path(run_dir) / STATE / STATE_FILE).is_file()


def last_write(run_dir: Path) -> float | None:
    """When the run last wrote a file it keeps (results, metrics, config, state); None: none yet."""
    paths = [Path(run_dir) / n for n in (RESULTS, METRICS, CONFIG)] + [Path(run_dir) / STATE / STATE_FILE]
    times = [p.stat().st_mtime for p in paths if p.exists()]
    return max(times) if times else None


# --- writing --------------------------------------------------------------------------------------
def save_config(cfg: Config, run_dir: Path) -> None:
    files.atomic_write_text(Path(run_dir) / CONFIG, OmegaConf.to_yaml(OmegaConf.structured(cfg)))


def write_results(run_dir: Path, results: dict) -> None:
    files.atomic_write_json(Path(run_dir) / RESULTS, results)


def write_metrics(run_dir: Path, history: list[dict]) -> None:
    """The whole evaluation history (rewritten at each evaluation, atomically)."""
    files.atomic_write_text(Path(run_dir) / METRICS, "".join(metrics_lines(row) for row in history))


def metrics_lines(row: dict) -> str:
    """One line per evaluation; a mixture's evaluation is one line per task and split, then its ``avg`` line."""
    if "tasks" not in row:
        return json.dumps(row, sort_keys=True) + "\n"
    head = {k: row[k] for k in ("step", "epoch")}
    lines = [dict(head, task=key, **metrics) for key, metrics in row["tasks"].items()]
    lines.append({k: v for k, v in row.items() if k != "tasks"} | {"task": "avg"})
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in lines)


# --- reading --------------------------------------------------------------------------------------
def read_results(run_dir: Path) -> dict | None:
    """``results.json``; None while the run is unfinished, or when the file is damaged."""
    return files.read_json(Path(run_dir) / RESULTS)


def read_metrics(run_dir: Path) -> list[dict]:
    """One row per evaluation (a mixture's ``avg`` row; its per-task rows are in the best and final results).
    A torn last line of a run that is still writing, or a damaged line, is not an evaluation: skipped."""
    try:
        lines = (Path(run_dir) / METRICS).read_text().splitlines()
    except OSError:
        return []
    rows = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row.get("task", "avg") == "avg":
            rows.append(row)
    return rows


def read_config(run_dir: Path) -> DictConfig:
    """``config.yaml`` as saved, untyped; a missing, unparsable or empty one is one line."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a ptune run folder (no {CONFIG})")
    try:
        raw = OmegaConf.load(path)
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise CheckpointError(f"{path} is not valid YAML ({' '.join(str(err).split())[:120]})") from None
    if not isinstance(raw, DictConfig) or "method" not in raw or "task" not in raw:
        raise CheckpointError(f"{path} holds no run config (empty, or no method/task); it was not written by "
                              "ptune train, or was damaged")
    return raw


@dataclass
class RunFolder:
    """A run folder opened for reading: its saved config (as written, and typed), results, metrics and the
    files of its trainable parameters."""

    path: Path
    raw: DictConfig  # config.yaml as saved: what readers of runs from older versions select from (table, runs)

    @cached_property
    def config(self) -> Config:
        """The saved config, typed and checked (a config that no longer loads is one line)."""
        return to_config(self.raw)

    def configured(self, overrides: Sequence[str], command: str) -> Config:
        """The saved config with ``key=value`` overrides (``data.root=...``), checked; ``command`` names the
        caller in its one-line errors (eval, predict and ``ptune.load`` share it)."""
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ConfigError(f"{command} takes key=value overrides; {bad[0]!r} is not one (e.g. data.root=...)")
        try:
            merged: Any = OmegaConf.merge(OmegaConf.structured(self.config), OmegaConf.from_dotlist(list(overrides)))
        except OmegaConfBaseException as err:
            key = getattr(err, "full_key", None) or overrides[0].split("=", 1)[0]
            raise ConfigError(f"{command}: {key!r} cannot be set that way ({str(err).splitlines()[0]})") from None
        return to_config(merged)

    @cached_property
    def results(self) -> dict | None:
        return read_results(self.path)

    @property
    def results_damaged(self) -> bool:
        """Whether ``results.json`` is there but no JSON object (it is written whole, once: a damaged file)."""
        return self.results is None and (self.path / RESULTS).exists()

    @cached_property
    def metrics(self) -> list[dict]:
        return read_metrics(self.path)

    @property
    def prompt(self) -> Path:
        """The best checkpoint's trainable parameters (``Parts.load_prompt`` reads it)."""
        return self.path / PROMPT

    @property
    def folded(self) -> Path:
        """Each task's plain prompt at that checkpoint (export, similarity)."""
        return self.path / FOLDED


def open(run_dir: Path | str, *, need_prompt: bool = False) -> RunFolder:  # noqa: A001  (as tarfile.open)
    """The run folder at ``run_dir``; ``need_prompt``: its config must load and a prompt must be saved
    (predict, ``ptune.load``). Each failure is one line."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise CheckpointError(f"run folder {run_dir} does not exist")
    folder = RunFolder(run_dir, read_config(run_dir))
    if need_prompt:
        folder.config  # noqa: B018  (a config that no longer loads is named before a missing prompt)
        if not folder.prompt.is_file():
            raise CheckpointError(f"{run_dir} has no {PROMPT} (no evaluation saved a prompt yet); train it first")
    return folder


def load_config(run_dir: Path) -> Config:
    return open(run_dir).config


# --- one process per run, and the resume rules ------------------------------------------------------
@contextmanager
def lock(run_dir: Path):
    """One process per run folder: an exclusive lock on ``<run_dir>/.ptune.lock`` (released by the kernel
    if the process dies). Also where an unwritable ``run_dir`` fails, before any model loads."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        handle = (run_dir / LOCK).open("a+")  # noqa: SIM115  (held for the whole run)
    except OSError as err:
        raise ConfigError(f"run_dir={run_dir} cannot be written ({err.strerror or err}); choose another run_dir=") from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            who = handle.read().strip() or "?"
            raise ConfigError(f"run folder {run_dir} is in use by another ptune process (pid {who}); wait for it "
                              "or choose another run_dir=") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.close()


def held(run_dir: Path) -> bool:
    """Whether a live process holds the run's lock (the kernel drops it when that process dies)."""
    path = Path(run_dir) / LOCK
    if not path.is_file():
        return False
    with path.open("r") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


# keys a resume may change (applied, and recorded in config.yaml); every other key is the run's meaning
RESUMABLE = ("trainer.max_steps", "trainer.eval_every", *RUN_ONLY)


def check_resume(cfg: Config, run_dir: Path) -> dict | None:
    """Never overwrite or silently change another run (docs/reliability.md, "Resuming"). A folder holding
    a different run, or this run with keys that would change its meaning, is refused before anything is
    written; a finished run (max steps reached, or stopped early) is left as it is: its results are
    returned. None: train (from scratch or from its state)."""
    saved = run_dir / CONFIG
    if not saved.is_file():
        return None
    if not cfg.resume:
        raise ConfigError(f"run folder {run_dir} already exists; use resume=true to continue it or another run_dir=")
    try:
        raw = OmegaConf.load(saved)
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise CheckpointError(f"{saved} is unreadable ({str(err).splitlines()[0]}); choose another run_dir=") from None
    old_tasks = saved_task_label(raw)
    new = OmegaConf.structured(cfg)
    for key, before, now in (*((k, OmegaConf.select(raw, k), OmegaConf.select(new, k))
                                for k in ("method.name", "model.name", "seed")), ("task", old_tasks, cfg.task_label)):
        if str(before) != str(now):
            raise ConfigError(f"run folder {run_dir} holds a run with {key}={before}; choose another run_dir=")
    try:
        old = flatten(OmegaConf.to_container(OmegaConf.structured(to_config(raw))))  # type: ignore[arg-type]
    except ConfigError as err:
        raise CheckpointError(f"{saved} no longer loads ({err}); choose another run_dir=") from None
    now_flat = flatten(OmegaConf.to_container(new))  # type: ignore[arg-type]
    changed = [k for k, v in now_flat.items() if old.get(k) != v]
    refused = [k for k in changed if not k.startswith(RESUMABLE)]
    if refused:
        shown = ", ".join(f"{k}={old.get(k)!r} -> {now_flat.get(k)!r}" for k in refused[:3])
        raise ConfigError(f"run folder {run_dir} was started with other settings ({shown}"
                          f"{f', and {len(refused) - 3} more' if len(refused) > 3 else ''}); resuming would change "
                          "the run: rerun with its settings or choose another run_dir=")
    results = read_results(run_dir)
    if results is None:
        return None
    if results.get("stopped") == "early_stopping" or int(results.get("steps") or 0) >= cfg.trainer.max_steps:
        return results
    return None


def finished_results(cfg: Config) -> dict | None:
    """The results of this very run (same config) if its folder holds them; None: it still has to run."""
    run_dir = Path(cfg.resolved_run_dir())
    try:
        same = OmegaConf.to_container(OmegaConf.load(run_dir / CONFIG)) == OmegaConf.to_container(
            OmegaConf.structured(cfg))
    except (OSError, ValueError, yaml.YAMLError):
        return None
    return read_results(run_dir) if same else None
