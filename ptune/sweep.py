"""`ptune train` under Hydra: the job every launcher runs, and the sweep record beside its run folders.

    ptune train -m method=prompt_tuning,p_tuning_v2 task=rte,stsb seed=1,2,3 hydra.sweep.dir=multirun/grid
    multirun/grid/  multirun.yaml  sweep.json  prompt_tuning-rte-minilm-s1/  ...  (one run folder per job)

A single run is what it always was: a user mistake prints one line and exits 2. In a sweep each job is
wrapped the way lightning-hydra-template wraps its tasks: a failed job is recorded in ``sweep.json``
with its one-line error and returns NaN, so the launcher goes on with the others; a job whose run folder
already holds its finished results is skipped; an interrupted one resumes from its ``state/`` (which is
also how a SLURM job that was preempted and requeued picks up). Jobs return the best main metric, the
value Hydra's Optuna sweeper maximizes.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from ptune import files, run_folder
from ptune.config import RUN_ONLY, Config, check_key_value, check_unique, compose_config, to_config
from ptune.errors import ConfigError, PtuneError
from ptune.training import distributed

RECORD = "sweep.json"
NAMED = ("method", "task", "model", "seed")  # already in every run folder's name
console = Console(stderr=True)


# --- the job --------------------------------------------------------------------------------------
def job(raw: DictConfig) -> float:
    """What ``@hydra.main`` runs, once per job: returns the best main metric (NaN for a failed sweep job)."""
    hydra = HydraConfig.get()
    return sweep_job(raw, hydra) if hydra.mode == RunMode.MULTIRUN else single_run(raw)


def single_run(raw: DictConfig) -> float:
    from ptune import run
    from ptune.training.loop import Interrupted

    try:
        cfg = to_config(raw)
        if cfg.run_dir is None:
            cfg.run_dir = str(Path(cfg.output_dir) / plain_folder_name(cfg, list(HydraConfig.get().overrides.task)))
        results = run.train(cfg, console)
    except PtuneError as err:
        print(f"ptune: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except Interrupted as stop:
        raise SystemExit(interrupted(stop, cfg.resolved_run_dir())) from None
    if distributed.is_main_process():
        print(json.dumps({"run_dir": results["run_dir"], "best": results["best"]}))
    return best_metric(results)


def sweep_job(raw: DictConfig, hydra: Any) -> float:
    """One job of a sweep: never raises for a failed run (recorded instead), so the others go on."""
    from ptune import run
    from ptune.training.loop import Interrupted

    sweep_dir, overrides = Path(hydra.sweep.dir), list(hydra.overrides.task)
    record = Record(sweep_dir, overrides, num=hydra.job.num)
    keys = record.sweep_keys()
    record.fields["swept"] = " ".join(str(o.input_line) for o in parse(overrides) if o.key_or_group in keys)
    try:
        cfg = to_config(raw)
        cfg.run_dir = cfg.run_dir or str(sweep_dir / run_folder_name(cfg, overrides, keys))
        done = run_folder.finished_results(cfg)
        if done is not None:
            console.print(f"[bold]ptune[/] {cfg.run_dir} already finished; skipped")
            record.update(status="finished", run_dir=cfg.run_dir, skipped=True, metric=best_metric(done))
            return best_metric(done)
        record.update(status="running", run_dir=cfg.run_dir, error=None, started=now())
        results = run.train(cfg, console, sweep={"overrides": overrides, "variant": variant(overrides, keys)})
    except Interrupted as stop:
        record.update(status="interrupted", error=f"interrupted at step {stop.step}", ended=now())
        raise SystemExit(interrupted(stop, record.fields.get("run_dir"))) from None
    except PtuneError as err:
        print(f"ptune: error: job #{hydra.job.num} ({record.fields['swept']}): {err}", file=sys.stderr)
        record.update(status="failed", error=str(err), ended=now())
        return math.nan
    except Exception as err:  # a bug: keep its traceback, and let the other jobs run
        traceback.print_exc()
        first = str(err).splitlines()[0] if str(err) else ""
        record.update(status="failed", error=f"{type(err).__name__}: {first}", ended=now())
        return math.nan
    record.update(status="finished", skipped=False, metric=best_metric(results), ended=now())
    return best_metric(results)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def best_metric(results: dict) -> float:
    best = results.get("best") or {}
    return float(best.get(results.get("main_metric"), math.nan))


def interrupted(stop, run_dir: Any) -> int:
    console.print(f"interrupted at step {stop.step}; training state saved in {run_dir}/{run_folder.STATE} — "
                  "rerun the same command to resume")
    return 128 + stop.signum


# --- run folder names -----------------------------------------------------------------------------
def parse(overrides: list[str]) -> list[Override]:
    try:
        return OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as err:
        raise ConfigError(" ".join(str(err).split())) from None


def variant(overrides: list[str], sweep_keys: list[str]) -> str:
    """The swept values a run folder's name does not already say, e.g. ``optimizer.lr=0.1``."""
    parts = [f"{o.key_or_group}={short(o.get_value_element_as_str())}" for o in parse(overrides)
             if o.key_or_group in sweep_keys and o.key_or_group not in NAMED]
    return ",".join(sorted(parts)).replace("/", "_")


def short(value: str, limit: int = 24) -> str:
    """A value as it goes into a folder name: as written when short, else its start and a stable hash."""
    if len(value) <= limit:
        return value
    return f"{value[:12]}~{hashlib.sha1(value.encode()).hexdigest()[:8]}"


def plain_folder_name(cfg: Config, overrides: list[str]) -> str:
    """A single run's folder: ``<method>-<task>-<model>-s<seed>`` and, as a sweep's folders do, every setting the
    command line changed from the defaults of that method, model and task (``-optimizer.lr=0.03``), so a second
    value never lands in the first one's folder. Values equal to the default and run-only keys are left out."""
    from ptune.config import lookup

    last = {o.key_or_group: o for o in parse(overrides)}  # a key given twice: Hydra keeps the last
    parsed = [o for o in last.values() if o.key_or_group not in NAMED
              and not o.key_or_group.lstrip("+~").startswith(RUN_ONLY)]
    if not parsed:
        return cfg.run_name()
    named = [o.input_line for o in parse(overrides) if o.key_or_group in NAMED and o.key_or_group != "seed"]
    base = to_config(compose_config(named))
    parts = []
    for o in parsed:
        key = o.key_or_group.lstrip("+~")
        dotted = key.replace("/", ".")
        group = "." not in dotted and dotted in ("optimizer", "trainer", "logger", "experiment", "sweep")
        try:
            if dotted in ("optimizer.lr", "method.lr"):  # one learning rate, however it was given
                now, before = cfg.lr, base.lr
            elif group:
                now, before = lookup(cfg, f"{dotted}.name"), lookup(base, f"{dotted}.name")
            else:
                now, before = lookup(cfg, dotted), lookup(base, dotted)
        except (AttributeError, KeyError):
            now, before = o.get_value_element_as_str(), None
        if now != before:
            parts.append(f"{key}={short(o.get_value_element_as_str())}")
    extra = ",".join(sorted(parts)).replace("/", "_")
    return cfg.run_name() + (f"-{extra}" if extra else "")


def run_folder_name(cfg: Config, overrides: list[str], sweep_keys: list[str]) -> str:
    extra = variant(overrides, sweep_keys)
    return cfg.run_name() + (f"-{extra}" if extra else "")


def swept(overrides: list[str], hydra_cfg: DictConfig | None) -> list[Override]:
    """Overrides that take several values: from the command line and from ``hydra.sweeper.params``."""
    params = OmegaConf.select(hydra_cfg, "sweeper.params", default=None) if hydra_cfg is not None else None
    extra = [f"{k}={v}" for k, v in (params or {}).items()]
    return [o for o in parse([*extra, *overrides]) if o.is_sweep_override()]


# --- checks before Hydra runs ---------------------------------------------------------------------
def check(overrides: list[str], multirun: bool) -> bool:
    """Compose every value a sweep names before any job starts: a mistake is one line, exit 2.

    Returns whether this is a multirun (``-m``, or a preset that sets ``hydra.mode: MULTIRUN``).
    """
    check_key_value(overrides)
    check_unique(overrides)
    parsed = parse(overrides)
    base = [v for v in map(first_value, parsed) if v is not None]  # the first job
    first = compose_config(base, hydra=True)
    to_config(first)
    multirun = multirun or first.hydra.mode == RunMode.MULTIRUN
    sweeps = swept(overrides, first.hydra if multirun else None)
    if sweeps and not multirun:
        raise ConfigError(f"{sweeps[0].input_line} sweeps several values: add -m to run one job per value "
                          "(ptune train -m ...), or quote it to mean one string")
    fixed = {o.key_or_group for o in parsed if not o.is_sweep_override()}
    if multirun and "run_dir" in fixed - {o.key_or_group for o in sweeps}:
        raise ConfigError("run_dir= names one folder, but a sweep writes one run folder per job; "
                          "choose the sweep's folder with hydra.sweep.dir= instead")
    for o in sweeps:
        others = [b for b in base if parse([b])[0].key_or_group != o.key_or_group]
        for value in values(o):
            if f"{o.get_key_element()}={value}" not in base:
                to_config(compose_config([*others, f"{o.get_key_element()}={value}"], hydra=True))
    return multirun


def values(o: Override) -> list[str]:
    try:
        return list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
    except HydraException:  # interval() and glob(): only the sweeper can draw them
        return []


def first_value(o: Override) -> str | None:
    """An override with its first value, as the first job gets it (None: only the sweeper can draw one)."""
    if not o.is_sweep_override():
        return o.input_line
    vals = values(o)
    return f"{o.get_key_element()}={vals[0]}" if vals else None


# --- sweep.json -----------------------------------------------------------------------------------
@contextmanager
def locked(sweep_dir: Path):
    """Jobs of one sweep may run at once (joblib, SLURM): read-modify-write sweep.json under a lock."""
    if not distributed.is_main_process():  # a torchrun sweep: every rank runs each job; rank 0 records
        yield read_record(sweep_dir) or {"jobs": []}
        return
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with open(sweep_dir / ".sweep.lock", "a") as f:
        fcntl.lockf(f, fcntl.LOCK_EX)
        try:
            path = sweep_dir / RECORD
            data = json.loads(path.read_text()) if path.is_file() else {"jobs": []}
            yield data
            files.atomic_write_json(path, data)
        finally:
            fcntl.lockf(f, fcntl.LOCK_UN)


def read_record(sweep_dir: Path) -> dict | None:
    path = Path(sweep_dir) / RECORD
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class Record:
    """One job's entry in sweep.json, found again on a rerun by its overrides."""

    def __init__(self, sweep_dir: Path, overrides: list[str], num: int):
        self.sweep_dir = sweep_dir
        self.fields: dict[str, Any] = {"overrides": overrides, "num": num}

    def sweep_keys(self) -> list[str]:
        data = read_record(self.sweep_dir) or {}
        if "sweep_keys" in data:
            return data["sweep_keys"]
        return [o.key_or_group for o in parse(self.fields["overrides"])]  # no record: name by every override

    def update(self, **fields: Any) -> None:
        self.fields.update(fields)
        with locked(self.sweep_dir) as data:
            jobs = data.setdefault("jobs", [])
            old = next((j for j in jobs if j["overrides"] == self.fields["overrides"]), None)
            if old is None:
                jobs.append(dict(self.fields, attempts=1))
            else:
                attempts = old.get("attempts", 1) + (fields.get("status") == "running")
                old.update(self.fields, attempts=attempts)
            jobs.sort(key=lambda j: j.get("num", 0))


class SweepRecord(Callback):
    """Hydra callback (configs/config.yaml): writes the grid into sweep.json first, sums it up at the end."""

    last: dict | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        overrides = list(config.hydra.overrides.task)
        keys = sorted({o.key_or_group for o in swept(overrides, config.hydra)})
        with locked(Path(config.hydra.sweep.dir)) as data:
            data.update(overrides=overrides, sweep_keys=keys, started=now())
        SweepRecord.last = None

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        data = read_record(sweep_dir) or {"jobs": []}
        SweepRecord.last = dict(data, sweep_dir=str(sweep_dir))
        summarize(SweepRecord.last)


def summarize(data: dict) -> None:
    jobs = data.get("jobs", [])
    count = {s: sum(j.get("status") == s for j in jobs) for s in ("finished", "failed", "interrupted", "running")}
    skipped = sum(bool(j.get("skipped")) for j in jobs if j.get("status") == "finished")
    console.print(f"[bold]sweep[/] {data['sweep_dir']}: {len(jobs)} jobs, {count['finished']} finished "
                  f"({skipped} skipped as already done), {count['failed']} failed"
                  + (f", {count['interrupted'] + count['running']} unfinished" if count['interrupted'] + count['running'] else "")
                  + f"; ptune table {data['sweep_dir']}")
    for j in jobs:
        if j.get("status") == "failed":
            console.print(f"  failed: #{j.get('num')} {j.get('swept', ' '.join(j['overrides']))}: {j.get('error')}",
                          highlight=False)
