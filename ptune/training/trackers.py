"""Experiment trackers (``logger=none|tensorboard|mlflow``): the resolved config, per-step train loss and
learning rate, per-evaluation metrics and the final results, beside ``metrics.jsonl`` (always written).

A registry of small classes behind one protocol. ``build`` runs before the model loads, so a missing
library fails in one line naming the extra to install. Only rank 0 logs (``RANK``, as torchrun sets it).
A resumed run continues its tracker run: TensorBoard appends to the same log dir (a rewound step purges
the newer events), MLflow reuses the run id kept in ``<run_dir>/tracker.json``.
"""

from __future__ import annotations

import importlib.util as importlib_util
import json
import math
import os
import time
from pathlib import Path
from typing import Protocol

from ptune import files, run_folder
from ptune.config import flatten
from ptune.errors import ConfigError
from ptune.training import checkpoint as ckpt


class Tracker(Protocol):
    def log_config(self, config: dict) -> None: ...
    def log_metrics(self, step: int, metrics: dict) -> None: ...
    def log_results(self, results: dict) -> None: ...
    def close(self, status: str = "FINISHED") -> None: ...  # FINISHED | FAILED | KILLED


def is_rank_zero() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def numbers(tree: dict, prefix: str = "") -> dict[str, float]:
    """The finite numbers of a (nested) row, flattened with ``/``; flags and strings are left out."""
    return {k: float(v) for k, v in flatten(tree, prefix, "/").items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}


def eval_metrics(row: dict) -> dict[str, float]:
    """A metrics.jsonl row -> ``eval/<metric>`` (mixtures: ``eval/<task>/<metric>``, ``eval/avg``)."""
    return numbers({k: v for k, v in row.items() if k not in ("step", "epoch", "elapsed_s")}, "eval/")


def results_metrics(results: dict) -> dict[str, float]:
    """results.json -> ``best/<metric>``, ``final/<metric>`` and the run's totals."""
    out = {}
    for which in ("best", "final"):
        if results.get(which):
            out.update(numbers({k: v for k, v in results[which].items() if k != "elapsed_s"}, f"{which}/"))
    for key in ("steps", "wall_time_s", "trainable_params", "total_params"):
        if isinstance(results.get(key), int | float):
            out[f"results/{key}"] = float(results[key])
    return out


class NoneTracker:
    """``logger=none``: metrics.jsonl and results.json only."""

    def log_config(self, config: dict) -> None:
        pass

    def log_metrics(self, step: int, metrics: dict) -> None:
        pass

    def log_results(self, results: dict) -> None:
        pass

    def close(self, status: str = "FINISHED") -> None:
        pass


class TensorBoardTracker:
    """Event files in ``logger.log_dir`` (null: ``<run_dir>/tensorboard``); the config as text."""

    def __init__(self, lcfg, run_dir: Path, experiment: str, start_step: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        # a resume purges events past the saved state's step (logged before a kill, then trained again)
        self.writer = SummaryWriter(log_dir=str(Path(lcfg.log_dir) if lcfg.log_dir else run_dir / run_folder.TENSORBOARD),
                                    purge_step=start_step + 1 if start_step else None)

    def log_config(self, config: dict) -> None:
        import yaml

        self.writer.add_text("config", "```yaml\n" + yaml.safe_dump(config, sort_keys=False) + "```", 0)

    def log_metrics(self, step: int, metrics: dict) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def log_results(self, results: dict) -> None:
        step = int(results.get("steps") or 0)
        for key, value in results_metrics(results).items():
            self.writer.add_scalar(key, value, step)
        shown = {k: v for k, v in results.items() if k not in ("config", "environment")}
        self.writer.add_text("results", "```json\n" + json.dumps(shown, indent=1, default=str) + "\n```", step)
        self.writer.flush()

    def close(self, status: str = "FINISHED") -> None:
        self.writer.close()


SERVER_WAIT_S = 5.0  # how long a tracking server may take to answer before the run stops, saying so


def check_server(uri: str, timeout: float | None = None) -> None:
    """An http(s) tracking URI must answer within SERVER_WAIT_S seconds (MLflow's own client retries for minutes,
    silently); anything else (a file or database store) is local."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    wait = SERVER_WAIT_S if timeout is None else timeout
    try:
        with urllib.request.urlopen(urllib.request.Request(uri.rstrip("/") + "/health", method="GET"), timeout=wait):
            return
    except urllib.error.HTTPError:
        return  # it answered
    except (OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise ConfigError(f"logger.tracking_uri={uri} did not answer within {wait:.0f} s ({reason}); start the "
                          "MLflow server, or drop logger.tracking_uri for a local store (./mlflow.db), or use "
                          "logger=none") from None


class MlflowTracker:
    """One MLflow run per ptune run in ``logger.tracking_uri`` (null: ``sqlite:///$PWD/mlflow.db``); the
    config as flattened params, metrics with their steps, the final results as metrics and results.json."""

    ID_FILE = run_folder.TRACKER

    def __init__(self, lcfg, run_dir: Path, experiment: str, start_step: int = 0):
        from mlflow.tracking import MlflowClient

        # MLflow's own default: a SQLite store in the working directory, artifacts under ./mlruns
        uri = lcfg.tracking_uri or f"sqlite:///{Path('mlflow.db').resolve()}"
        check_server(uri)
        self.client = MlflowClient(tracking_uri=uri)
        self.id_file = run_dir / self.ID_FILE
        saved = json.loads(self.id_file.read_text()) if self.id_file.is_file() else {}
        self.resumed = saved.get("mlflow_tracking_uri") == uri and "mlflow_run_id" in saved
        if self.resumed:
            self.run_id = saved["mlflow_run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            return
        found = self.client.get_experiment_by_name(experiment)
        exp_id = found.experiment_id if found else self.client.create_experiment(experiment)
        self.run_id = self.client.create_run(exp_id, run_name=run_dir.name,
                                             tags={"ptune.run_dir": str(run_dir.resolve())}).info.run_id
        files.atomic_write_json(self.id_file, {"mlflow_tracking_uri": uri, "mlflow_run_id": self.run_id,
                                              "mlflow_experiment": experiment})

    def log_config(self, config: dict) -> None:
        from mlflow.entities import Param

        have = self.client.get_run(self.run_id).data.params if self.resumed else {}
        # a resume may change a few keys (trainer.max_steps, ...); MLflow params are write-once, so only new
        # keys are added and config.yaml stays the record of the change
        params = [Param(k, str(v)[:6000]) for k, v in flatten(config).items() if k not in have]
        for i in range(0, len(params), 100):  # MLflow's batch limit on params
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def log_metrics(self, step: int, metrics: dict) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def log_results(self, results: dict) -> None:
        self.log_metrics(int(results.get("steps") or 0), results_metrics(results))
        self.client.log_dict(self.run_id, results, run_folder.RESULTS)

    def close(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


# name -> (tracker class, the module it needs, the ptune extra that installs it)
TRACKERS: dict[str, tuple[type, str | None, str | None]] = {
    "none": (NoneTracker, None, None),
    "tensorboard": (TensorBoardTracker, "tensorboard", "tensorboard"),
    "mlflow": (MlflowTracker, "mlflow", "mlflow"),
}


def check(lcfg) -> None:
    """An unknown logger or a missing library, in one line, before anything loads."""
    if lcfg.name not in TRACKERS:
        raise ConfigError(f"unknown logger {lcfg.name!r}; choose one of: {', '.join(TRACKERS)}")
    _, module, extra = TRACKERS[lcfg.name]
    if module is not None and importlib_util.find_spec(module) is None:
        raise ConfigError(f"logger={lcfg.name} needs the {module} package: pip install -e '.[{extra}]' in the ptune checkout")


def resume_step(cfg, run_dir: Path) -> int:
    """The step a resumed run continues from (its saved state), else 0."""
    state = ckpt.latest_state_dir(run_dir / run_folder.STATE) if cfg.resume else None
    return (run_folder.saved_step(state) or 0) if state is not None else 0  # the loop reports an unreadable state itself


def build(cfg, run_dir: Path, experiment: str | None = None) -> Tracker:
    """The run's tracker (``none`` on ranks other than 0); ``experiment``: the default experiment name."""
    check(cfg.logger)
    if not is_rank_zero():
        return NoneTracker()
    cls = TRACKERS[cfg.logger.name][0]
    if cls is NoneTracker:
        return NoneTracker()
    return cls(cfg.logger, run_dir, cfg.logger.experiment or experiment or run_dir.name, resume_step(cfg, run_dir))
