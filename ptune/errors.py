"""User-facing errors: one line naming the bad value and the choices; the CLI prints them without a traceback."""

from __future__ import annotations

from collections.abc import Iterable


class PtuneError(Exception):
    """A mistake in what the user asked for (config, data, checkpoint), not a bug in ptune."""


class ConfigError(PtuneError):
    pass


class DataError(PtuneError):
    pass


class MissingDataError(DataError):
    """No data where a split should be (no folder, no split files, the hub unreachable), as against data that is
    there but does not match its task's schema (a plain DataError)."""


class ModelError(PtuneError):
    pass


class CheckpointError(PtuneError):
    pass


class TrainingError(PtuneError):
    pass


def unknown(kind: str, value: object, choices: Iterable[str]) -> ConfigError:
    """The one error for an unknown registry key: ``unknown task 'nope'; choose one of: cola, ...``."""
    return ConfigError(f"unknown {kind} {value!r}; choose one of: {', '.join(sorted(choices))}")
