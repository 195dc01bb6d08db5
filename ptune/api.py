"""A small Python API beside the CLI, on the same code (docs/api.md).

    import ptune
    results = ptune.train({"method": "prompt_tuning", "model": "tiny-bert", "task": "sst2"})   # as `ptune train`
    run = ptune.load(results["run_dir"])                                  # as `ptune predict`, kept in memory
    run.predict(["a charming film", "a dull mess"])                       # -> pandas.DataFrame
    run.export(format="peft", out="adapter/")                             # as `ptune export`: PEFT adapters
    runs = ptune.load_many(["outputs/sst2-run", "outputs/rte-run"])      # one backbone, several runs' prompts
    runs.predict([{"task": "sst2", "sentence": "a charming film"},        # rows of both tasks in one batch
                  {"task": "rte", "sentence1": "It rains.", "sentence2": "It is wet."}])

``predict`` returns a DataFrame: the input columns, then ``prediction`` and the score columns that
``ptune predict`` writes (ptune/predict.py), one row per input in input order.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from ptune.errors import ConfigError, DataError

EXPORT_FORMATS = ("peft",)


def overrides_of(overrides: Sequence[str] | dict[str, Any]) -> list[str]:
    """``{"task": ["rte", "mrpc"], "trainer.max_steps": 10}`` -> ``["task=[rte,mrpc]", "trainer.max_steps=10"]``."""
    if isinstance(overrides, (str, bytes)):
        raise ConfigError(f"expected a dict ({{'model': 'minilm'}}) or a list of 'key=value' strings, got the string "
                          f"{overrides!r}: pass [{overrides!r}]")
    if not isinstance(overrides, dict):
        if not isinstance(overrides, (list, tuple)) or not all(isinstance(o, str) for o in overrides):
            got = type(overrides).__name__ if not isinstance(overrides, (list, tuple)) else \
                f"a {type(overrides).__name__} holding {sorted({type(o).__name__ for o in overrides})}"
            raise ConfigError(f"expected a dict ({{'model': 'minilm'}}) or a list of 'key=value' strings, got {got}")
        return list(overrides)
    bad = [k for k in overrides if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"override keys are dotted strings ('trainer.max_steps'), got {bad[0]!r}")

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return str(v).lower()
        if v is None:
            return "null"
        if isinstance(v, (list, tuple)):
            return "[" + ",".join(value(x) for x in v) + "]"
        return str(v)

    return [f"{k}={value(v)}" for k, v in overrides.items()]


def train(overrides: Sequence[str] | dict[str, Any], console: Console | None = None) -> dict:
    """Train one run (``ptune train`` without ``-m``) and return its results (results.json, plus ``run_dir``)."""
    from ptune import run
    from ptune.config import check_unique
    from ptune.config import load as load_config
    from ptune.sweep import plain_folder_name

    given = overrides_of(overrides)
    check_unique(given)
    cfg = load_config(given)
    if cfg.run_dir is None:  # as `ptune train` names it: the settings that differ from the defaults
        cfg.run_dir = str(Path(cfg.output_dir) / plain_folder_name(cfg, given))
    return run.train(cfg, console or Console(stderr=True))


class Run:
    """A trained run folder with its saved prompt loaded (``ptune.load``)."""

    def __init__(self, run_dir: str | Path, overrides: Sequence[str] | dict[str, Any] = ()):
        from ptune import predict

        self.run_dir = Path(run_dir)
        self.cfg = predict.run_config(self.run_dir, overrides_of(overrides), command="ptune.load")
        self._loaded = predict.load(self.run_dir, self.cfg)

    @property
    def tasks(self) -> list[str]:
        return list(self.cfg.task_names)

    def __repr__(self) -> str:
        return f"ptune.Run({str(self.run_dir)!r}, tasks={self.tasks}, step={self._loaded.step})"

    def predict(self, data, task: str | None = None):
        """Predictions for ``data``: a list of strings (a single-text task's one column), a list of dicts or a
        DataFrame holding the task's input columns. Returns a pandas DataFrame in input order."""
        import pandas as pd

        from ptune import predict

        tid = predict.task_id(self.cfg, task, self.run_dir)
        spec = self._loaded.parts.tasks[tid]
        if isinstance(data, (str, dict)):  # one text, or one row: not its characters or its keys
            data = [data]
        names: list[str] = []  # a bad row is named as the caller counts it: its DataFrame index or list position
        if isinstance(data, pd.DataFrame):
            rows, names = data.to_dict("records"), [f"the row at index {i!r}" for i in data.index]
        elif isinstance(data, (bytes, int, float)) or data is None or not hasattr(data, "__iter__"):
            raise ConfigError(f"run.predict takes a string, a list of strings, a dict, a list of dicts or a pandas "
                              f"DataFrame; got {type(data).__name__}")
        else:
            rows = list(data)
        if not rows:
            raise DataError("run.predict got no rows")
        if all(isinstance(r, str) for r in rows):
            if len(spec.input_columns) != 1:
                raise ConfigError(f"task {spec.name!r} reads {', '.join(spec.input_columns)}: pass dicts or a "
                                  "DataFrame with those columns, not strings")
            rows = [{spec.input_columns[0]: r} for r in rows]
        elif not all(isinstance(r, dict) for r in rows):
            raise ConfigError("run.predict takes a list of strings, a list of dicts or a pandas DataFrame")
        names = names or [f"data[{i}]" for i in range(len(rows))]
        return pd.DataFrame(self._loaded.predict(tid, rows, "run.predict input", names=names.__getitem__))

    def export(self, format: str = "peft", out: str | Path | None = None, task: str | None = None) -> dict:  # noqa: A002
        """The run as another library's adapters (``ptune export``; ptune/export/peft.py): one per task, or
        ``task``'s; ``out`` defaults to ``<run_dir>-peft``. Returns what was written."""
        return export(self.run_dir, format, out, task)


class Runs:
    """Several trained runs over one frozen backbone (``ptune.load_many``; ptune/pool.py): rows of their tasks, each
    naming its task in a ``task`` column, predicted together, each row with its own run's prompt (and head)."""

    def __init__(self, paths: Sequence[str | Path] | str | Path, overrides: Sequence[str] | dict[str, Any] = ()):
        from ptune.pool import Pool

        given = [paths] if isinstance(paths, (str, Path)) else list(paths)
        self._pool = Pool.open(given, overrides_of(overrides), command="ptune.load_many").load()

    @property
    def tasks(self) -> list[str]:
        """What a row's ``task`` may say: a task's name, or ``RUN:TASK`` where two runs share the task."""
        return self._pool.names

    def describe(self) -> list[dict]:
        """Each (run, task) entry: run, task, method, labels, best metrics (as ``GET /runs`` lists them)."""
        return [e.describe() for e in self._pool.entries]

    def __repr__(self) -> str:
        return f"ptune.Runs({len(self._pool.folders)} runs, tasks={self.tasks})"

    def predict(self, data):
        """Predictions for ``data``: a list of dicts or a DataFrame, each row with a ``task`` column and that task's
        input columns. Returns a pandas DataFrame in input order: the input columns, ``prediction`` and scores."""
        import pandas as pd

        if isinstance(data, dict):
            data = [data]
        if isinstance(data, pd.DataFrame):
            rows, names = data.to_dict("records"), [f"the row at index {i!r}" for i in data.index]
        elif isinstance(data, (list, tuple)) and all(isinstance(r, dict) for r in data):
            rows, names = list(data), [f"data[{i}]" for i in range(len(data))]
        else:
            raise ConfigError(f"Runs.predict takes a dict, a list of dicts or a pandas DataFrame, each row with a "
                              f"'task' column; got {type(data).__name__}")
        results = self._pool.predict(rows, "load_many input", names.__getitem__)
        return pd.DataFrame([{**row, **out} for row, (_, out, _) in zip(rows, results, strict=True)])


def load_many(paths: Sequence[str | Path] | str | Path, overrides: Sequence[str] | dict[str, Any] = ()) -> Runs:
    """Run or sweep folders of one backbone, loaded once, ready to predict rows that mix their tasks."""
    return Runs(paths, overrides)


def export(run_dir: str | Path, format: str, out: str | Path | None = None, task: str | None = None) -> dict:  # noqa: A002
    """``ptune export`` and ``Run.export``: the format's exporter, imported only when asked for."""
    if format not in EXPORT_FORMATS:
        raise ConfigError(f"unknown export format {format!r}; choose one of: {', '.join(EXPORT_FORMATS)}")
    from ptune.export import peft

    return peft.export(run_dir, out, task)


def load(run_dir: str | Path, overrides: Sequence[str] | dict[str, Any] = ()) -> Run:
    """A run folder ready to predict; ``overrides`` as for ``ptune predict`` (e.g. ``trainer.device=cpu``)."""
    return Run(run_dir, overrides)
