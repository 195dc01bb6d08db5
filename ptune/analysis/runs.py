"""Find run folders under sweep folders (or anywhere) and read what ``table`` and ``plot`` need.

A run folder is one that holds ``config.yaml`` (ptune's own, never Hydra's ``.hydra/config.yaml``);
``results.json`` marks it finished. A sweep folder's ``sweep.json`` says which jobs failed, with their
one-line error, including those that failed before they had a folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from ptune import files, run_folder
from ptune.config import RUN_ONLY, flatten, saved_task_label
from ptune.errors import CheckpointError, ConfigError
from ptune.tasks import TASKS

RECORD = "sweep.json"  # a sweep folder's record of its jobs (ptune.sweep.RECORD; not imported: it loads torch)


@dataclass
class Run:
    folder: Path
    status: str  # finished | failed | unfinished
    method: str = "?"
    task: str = "?"
    model: str = "?"
    seed: int | None = None
    variant: str = ""  # swept values beyond method/task/model/seed, from the folder's name
    main_metric: str | None = None
    score: float | None = None  # best main metric
    trainable: int | None = None
    total: int | None = None
    paper: float | None = None
    paper_source: str | None = None
    error: str | None = None
    step: int | None = None
    max_steps: int | None = None
    history: list[dict] = field(default_factory=list)
    task_scores: dict[str, float] = field(default_factory=dict)  # a mixture: each task's best-step main metric
    task_metrics: dict[str, str] = field(default_factory=dict)  # ... and which metric that is
    settings: dict = field(default_factory=dict)  # what decides its result (settings()), flattened

    @property
    def label(self) -> str:
        return f"{self.method} {self.variant}".strip()


# besides the run-only keys: the seed (what tables average over), the paper's numbers, and the task node (a
# table's columns tell tasks apart)
NOT_SETTINGS = ("seed", "paper.", "task.", *RUN_ONLY)


def settings(config: dict, world_size: int | str | None = None) -> dict:
    """A saved config flattened to the settings that decide a run's result: run-only keys left out, the
    learning rate as one ``lr`` (``optimizer.lr``, else the method's), and the number of processes."""
    flat = flatten(config)
    lr = flat.get("optimizer.lr") if flat.get("optimizer.lr") is not None else flat.get("method.lr")
    out = {k: v for k, v in flat.items()
           if k not in ("optimizer.lr", "method.lr") and not k.startswith(NOT_SETTINGS)}
    out["lr"] = lr
    out["processes"] = int(world_size) if world_size not in (None, "") else 1
    return {k: tuple(v) if isinstance(v, list) else v for k, v in out.items()}



def find(folders: list[Path]) -> list[Run]:
    """Every run under ``folders`` (each once), and every failed sweep job that never got a folder."""
    runs: dict[Path, Run] = {}
    failures: dict[Path, dict] = {}
    missing = [str(f) for f in folders if not Path(f).is_dir()]
    if missing:
        raise ConfigError(f"no such folder: {', '.join(missing)}")
    for top in map(Path, folders):
        for record in top.rglob(RECORD):
            failures.update(failed_jobs(record))
        for found in run_folder.find(top):
            folder = found.resolve()
            if folder not in runs:
                runs[folder] = read_run(found, failures.get(folder))
    for folder, job in failures.items():
        if folder not in runs:  # failed before it had a run folder (e.g. a bad value for one job)
            given = dict(o.lstrip("+").split("=", 1) for o in job.get("overrides", []) if "=" in o)
            runs[folder] = Run(folder=folder, status="failed", error=job.get("error"), method=given.get("method", "?"),
                               task=given.get("task", "?"), model=given.get("model", "?"),
                               variant=job.get("swept", ""))
    if not runs:
        raise ConfigError(f"no run folders under {', '.join(map(str, folders))} (a run folder holds "
                          f"{run_folder.CONFIG})")
    return sorted(runs.values(), key=lambda r: (r.task, r.method, r.variant, r.seed or 0, str(r.folder)))


def failed_jobs(record: Path) -> dict[Path, dict]:
    data = files.read_json(record) or {}
    out = {}
    for job in data.get("jobs", []):
        if job.get("status") == "failed":
            given = Path(job["run_dir"]) if job.get("run_dir") else Path(f"job-{job.get('num')}")
            folder = given if given.is_absolute() else record.parent / given.name  # run folders sit in the sweep
            out[folder.resolve()] = job
    return out


def read_run(folder: Path, failed: dict | None) -> Run:
    try:
        opened = run_folder.open(folder)
    except CheckpointError as err:  # a damaged config.yaml: listed as failed, the other runs still read
        return Run(folder=folder.resolve(), status="failed", error=str(err))
    cfg = opened.raw
    get = lambda key, default=None: OmegaConf.select(cfg, key, default=default)  # noqa: E731
    run = Run(folder=folder.resolve(), status="unfinished", method=str(get("method.name", "?")),
              task=saved_task_label(cfg), model=str(get("model.name", "?")), seed=get("seed"),
              max_steps=get("trainer.max_steps"), paper_source=get("paper.source"))
    base = f"{run.method}-{run.task}-{run.model}-s{run.seed}"
    run.variant = folder.name[len(base):].lstrip("-") if folder.name.startswith(base) else ""
    paper = get("paper.scores") or {}
    run.paper = float(paper[run.task]) if run.task in paper else None
    run.history = opened.metrics
    results = opened.results
    saved = OmegaConf.to_container(cfg, resolve=False)
    run.settings = settings(saved if isinstance(saved, dict) else {},
                            ((results or {}).get("environment") or {}).get("world_size"))
    if results is not None:
        best = results.get("best") or {}
        run.main_metric = results.get("main_metric")
        run.score = best.get(run.main_metric)
        for name, metrics in (best.get("tasks") or {}).items():  # first splits only: "mnli/validation_mismatched" is not
            if "/" not in name and name in TASKS and TASKS[name].main_metric in metrics:
                run.task_metrics[name] = TASKS[name].main_metric
                run.task_scores[name] = float(metrics[TASKS[name].main_metric])
        run.trainable, run.total = results.get("trainable_params"), results.get("total_params")

        run.step = results.get("steps")
        run.status = "finished" if run.score is not None else "failed"
        run.error = None if run.score is not None else f"{run_folder.RESULTS} holds no evaluation"
    else:
        run.step = run_folder.state_step(folder)
        if failed is not None:
            run.status, run.error = "failed", failed.get("error")
        elif opened.results_damaged:  # written whole at the end, then damaged: not "unfinished"
            run.status = "failed"
            run.error = (f"{run_folder.RESULTS} is damaged (not a JSON object); ptune eval run={folder} re-scores the "
                         "saved prompt")
    return run

