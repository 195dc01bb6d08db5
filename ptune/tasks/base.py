"""The task interface: how a GLUE/SuperGLUE row becomes model input, and how predictions are scored.

A task turns one hub row into an :class:`Example` that serves both backbone families:

* T5 (text-to-text): ``source`` is the input text, ``candidates`` the verbalized answers that rank
  classification scores in one batched decoder pass; ``target`` indexes the gold candidate.
* BERT family (encoder + head): ``texts`` are the (text_a, text_b) pairs the encoder reads, one pair
  for classification / regression / span heads, one pair per choice for multiple choice.

Predictions come back per example as an index into the candidates/choices (or a float for an
encoder regression head); :meth:`Task.decode` turns that into the value the metrics compare with
``Example.label``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:
    import pyarrow as pa

Head = Literal["classification", "regression", "multiple_choice", "span"]


@dataclass(frozen=True)
class Example:
    source: str
    candidates: tuple[str, ...]
    target: int  # index of the gold candidate / choice; -1 for unlabeled rows (test splits)
    texts: tuple[tuple[str, str | None], ...]
    label: Any  # gold value for metrics: int class, float (stsb), list[str] answers (record), None
    group: int | None = None  # question / query id for grouped metrics (MultiRC, ReCoRD)
    spans: tuple[tuple[int, int], ...] | None = None  # char spans in texts[0][0] (WSC span head)


@dataclass(frozen=True)
class Task:
    """A task's identity and data; subclasses define the format and the metrics."""

    name: str
    hub_id: str  # e.g. "nyu-mll/glue"
    hub_config: str  # e.g. "sst2"
    head: Head
    label_names: tuple[str, ...] = ()
    splits: dict[str, str] = field(default_factory=dict)  # role ("train", "validation", ...) -> hub split
    metric_names: tuple[str, ...] = ("accuracy",)
    main_metric: str = "accuracy"
    # The schema every split and input file is checked against before a model loads (ptune/tasks/schema.py):
    # the hub's columns and their Arrow types, the range of a regression label (STS-B), text columns that hold
    # one of a few values (COPA's question). A classification label's values are ``label_names``' indices.
    features: dict[str, pa.DataType] = field(default_factory=dict)
    label_range: tuple[float, float] | None = None
    choices: dict[str, tuple[str, ...]] = field(default_factory=dict)

    LABEL: ClassVar[str] = "label"  # the gold column
    # what a row without a gold answer carries in place of one (prediction inputs, hub test splits)
    UNLABELLED: ClassVar[dict[str, Any]] = {"label": -1}
    OPTIONAL_INPUTS: ClassVar[tuple[str, ...]] = ()  # columns read when present
    ALSO_READ: ClassVar[dict[str, tuple[pa.DataType, ...]]] = {}  # other shapes of a column that are read too
    NONEMPTY: ClassVar[tuple[str, ...]] = ()  # list columns that need an item

    @property
    def input_columns(self) -> tuple[str, ...]:
        """The row columns :meth:`example` reads besides the label: what ``ptune predict`` needs."""
        return ()

    @property
    def label_words(self) -> list[str]:
        """The words each class is said as (``not_entailment`` -> "not entailment"): what a method initialises
        prompts from and the cloze form scores; empty for regression."""
        return [name.replace("_", " ") for name in self.label_names]

    @property
    def num_labels(self) -> int:
        """Output units of an encoder head: classes, 1 for regression and multiple choice."""
        if self.head in ("regression", "multiple_choice"):
            return 1
        return len(self.label_names)

    def example(self, row: dict[str, Any]) -> Example:
        raise NotImplementedError

    def decode(self, example: Example, prediction: int | float) -> Any:
        """Map a predicted candidate index (or regression value) to what the metrics compare."""
        return prediction

    def compute_metrics(self, predictions: list[Any], examples: list[Example]) -> dict[str, float]:
        raise NotImplementedError
