"""ptune: prompt-based parameter-efficient tuning of frozen language models."""

__version__ = "0.1.0"

from ptune.api import Run, Runs, load, load_many, train  # noqa: E402  (the notebook API, docs/api.md)

__all__ = ["Run", "Runs", "__version__", "load", "load_many", "train"]
