"""GLUE (Wang et al., 2019) tasks, and :class:`TextTask`, the column-driven format SuperGLUE reuses.

T5 format (``Example.source`` / ``candidates``): Raffel et al. (2020), Appendix D, i.e. the t5 library's
``glue`` preprocessor. The input is ``"<task> <key>: <value> <key>: <value>"`` with the input columns in
sorted order (so MNLI reads ``"mnli hypothesis: ... premise: ..."``), and the target is the label name
itself, so the candidates are the hub ``ClassLabel`` names in label order. STS-B (t5 ``stsb``
preprocessor) targets the score rounded to the nearest 0.2 and printed with one decimal, so it becomes
rank classification over the 26 strings "0.0" ... "5.0".

Encoder format (``Example.texts``): the (text_a, text_b) pair in the dataset's column order, as in
BERT's ``run_classifier.py``; STS-B uses a regression head on the float label.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral
from typing import Any, ClassVar

import pyarrow as pa

from ptune.tasks import metrics
from ptune.tasks.base import Example, Task

GLUE = "nyu-mll/glue"
# the hub's feature types (``datasets`` stores a ClassLabel as int64, a Value("int32") index as int32)
TEXT, INDEX, CLASS, SCORE = pa.string(), pa.int32(), pa.int64(), pa.float32()


def text_features(*columns: str, label: pa.DataType = CLASS, **more: pa.DataType) -> dict[str, pa.DataType]:
    """A hub schema of text columns, a label and ``idx`` (the layout of every GLUE config), plus ``more``."""
    return {**dict.fromkeys(columns, TEXT), **more, "label": label, "idx": INDEX}

SPLITS = {"train": "train", "validation": "validation", "test": "test"}
MNLI_SPLITS = {
    "train": "train",
    "validation": "validation_matched",
    "validation_mismatched": "validation_mismatched",
    "test": "test_matched",
    "test_mismatched": "test_mismatched",
}


@dataclass(frozen=True)
class TextTask(Task):
    """A task whose format is a list of columns: T5 ``<prefix> key: value ...`` and encoder pairs.

    Subclasses override the per-row pieces (``source``, ``texts``, ``target``, ...) they format
    differently; ``example`` assembles them and ``compute_metrics`` scores ``metric_names``.
    """

    prefix: str = ""  # T5's task prefix (its ``benchmark_name``)
    t5_fields: tuple[str, ...] = ()  # columns in the order T5 writes them
    text_fields: tuple[str, ...] = ()  # text_a[, text_b] columns for the encoder
    EXTRA_INPUTS: ClassVar[tuple[str, ...]] = ()  # columns a subclass's format reads besides the fields

    @property
    def input_columns(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*self.text_fields, *self.t5_fields, *self.EXTRA_INPUTS)))

    def source(self, row: dict[str, Any]) -> str:
        return " ".join([self.prefix, *(f"{key}: {row[key]}" for key in self.t5_fields)])

    def candidates(self, row: dict[str, Any]) -> tuple[str, ...]:
        return self.label_names

    def texts(self, row: dict[str, Any]) -> tuple[tuple[str, str | None], ...]:
        first, *rest = self.text_fields
        return ((row[first], row[rest[0]] if rest else None),)

    def target(self, row: dict[str, Any]) -> int:
        """Gold candidate index; hub test rows carry label -1."""
        label = row["label"]
        return -1 if label is None or label < 0 else int(label)

    def gold(self, row: dict[str, Any], target: int) -> Any:
        return None if target < 0 else target

    def group(self, row: dict[str, Any]) -> int | None:
        return None

    def spans(self, row: dict[str, Any]) -> tuple[tuple[int, int], ...] | None:
        return None

    def example(self, row: dict[str, Any]) -> Example:
        target = self.target(row)
        return Example(
            source=self.source(row),
            candidates=self.candidates(row),
            target=target,
            texts=self.texts(row),
            label=self.gold(row, target),
            group=self.group(row),
            spans=self.spans(row),
        )

    def decode(self, example: Example, prediction: int | float) -> Any:
        return int(prediction)

    def compute_metrics(self, predictions: list[Any], examples: list[Example]) -> dict[str, float]:
        """Score raw predictions (candidate indices) or decoded ones: ``decode`` is idempotent.

        Unlabelled examples (``label`` None) are skipped; all unlabelled gives ``{}``.
        """
        decoded = [self.decode(ex, p) for p, ex in zip(predictions, examples, strict=True)]
        labels = [ex.label for ex in examples]
        return metrics.score(self.metric_names, decoded, labels, [ex.group for ex in examples])


STSB_BUCKETS = tuple(f"{i / 5:.1f}" for i in range(26))  # "0.0", "0.2", ..., "5.0"


@dataclass(frozen=True)
class StsbTask(TextTask):
    """STS-B: T5 ranks the 26 score buckets; the encoder regresses the float label."""

    def candidates(self, row: dict[str, Any]) -> tuple[str, ...]:
        return STSB_BUCKETS

    def target(self, row: dict[str, Any]) -> int:
        label = row["label"]
        if label is None or label < 0:
            return -1
        # T5 rounds label * 5 with round-half-to-even (tf.round); Python's round() does the same.
        return min(max(round(float(label) * 5), 0), len(STSB_BUCKETS) - 1)

    def gold(self, row: dict[str, Any], target: int) -> Any:
        return None if target < 0 else float(row["label"])

    def decode(self, example: Example, prediction: int | float) -> float:
        """A candidate index (T5) becomes its bucket value; a float (regression head) stays as is."""
        if isinstance(prediction, Integral):
            return float(STSB_BUCKETS[int(prediction)])
        return float(prediction)


def _pair(name: str, fields: tuple[str, ...], labels: tuple[str, ...], **kw: Any) -> TextTask:
    """A GLUE classification task: T5 writes the input columns sorted, the encoder in column order."""
    return TextTask(
        name=name,
        hub_id=GLUE,
        hub_config=name,
        head="classification",
        label_names=labels,
        splits=dict(kw.pop("splits", SPLITS)),
        prefix=name,
        t5_fields=tuple(sorted(fields)),
        text_fields=fields,
        features=text_features(*fields),
        **kw,
    )


ENTAILMENT = ("entailment", "not_entailment")

TASKS: tuple[TextTask, ...] = (
    _pair("cola", ("sentence",), ("unacceptable", "acceptable"), metric_names=("mcc",), main_metric="mcc"),
    _pair("sst2", ("sentence",), ("negative", "positive")),
    _pair(
        "mrpc",
        ("sentence1", "sentence2"),
        ("not_equivalent", "equivalent"),
        metric_names=("f1", "accuracy"),
        main_metric="f1",
    ),
    _pair(
        "qqp",
        ("question1", "question2"),
        ("not_duplicate", "duplicate"),
        metric_names=("f1", "accuracy"),
        main_metric="f1",
    ),
    StsbTask(
        name="stsb",
        hub_id=GLUE,
        hub_config="stsb",
        head="regression",
        splits=dict(SPLITS),
        metric_names=("pearson", "spearman"),
        main_metric="pearson",
        features=text_features("sentence1", "sentence2", label=SCORE),
        label_range=(0.0, 5.0),
        prefix="stsb",
        t5_fields=("sentence1", "sentence2"),
        text_fields=("sentence1", "sentence2"),
    ),
    _pair("mnli", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"), splits=MNLI_SPLITS),
    _pair("qnli", ("question", "sentence"), ENTAILMENT),
    _pair("rte", ("sentence1", "sentence2"), ENTAILMENT),
    _pair("wnli", ("sentence1", "sentence2"), ("not_entailment", "entailment")),
)
