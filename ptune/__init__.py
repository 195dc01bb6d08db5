"""ptune: prompt-based parameter-efficient tuning of frozen language models."""

__version__ = "0.1.0"

from ptune.api import Run, load, train  # noqa: E402  (the notebook API, docs/api.md)

__all__ = ["Run", "__version__", "load", "train"]
