"""SuperGLUE (Wang et al., 2019) tasks, hub ``aps/super_glue`` (schema of HF ``super_glue.py``).

T5 formats follow Raffel et al. (2020), Appendix D, i.e. the t5 library's preprocessors:

* ``glue`` (see :mod:`ptune.tasks.glue`) for BoolQ, CB, COPA, RTE, WiC and MultiRC, with T5's column
  orders: sorted for most, ``sentence1 sentence2 word`` for WiC, ``question answer paragraph`` for
  MultiRC (whose ``<b>``/``<br>`` markup T5 strips). COPA's targets are "choice1"/"choice2".
* ``wsc``: ``"wsc text: <text>"`` with span1 wrapped as ``* span *`` and span2 as ``# span #``; targets
  False/True.
* ``record``: ``"record query: <query> entities: <e1>, <e2>, ... passage: <passage>"`` with the
  ``@highlight`` lines joined into sentences; the target is an answer entity, so the candidates are the
  row's entities and rank classification picks one.

Encoder formats (``texts``) follow common BERT/RoBERTa practice: sentence pairs; COPA and ReCoRD as
multiple choice (one pair per choice); WSC as a span head over the text with character spans.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from numbers import Integral
from typing import Any, ClassVar

import pyarrow as pa

from ptune.tasks.base import Example, Head
from ptune.tasks.glue import INDEX, SPLITS, TEXT, TextTask, text_features

SUPER_GLUE = "aps/super_glue"
FALSE_TRUE = ("False", "True")


def _task(cls: type[TextTask], name: str, head: Head, labels: tuple[str, ...], **kw: Any) -> TextTask:
    kw.setdefault("hub_config", name)
    kw.setdefault("prefix", name)
    return cls(name=name, hub_id=SUPER_GLUE, head=head, label_names=labels, splits=dict(SPLITS), **kw)


@dataclass(frozen=True)
class WicTask(TextTask):
    """WiC: the encoder reads ``"<word>: <sentence1>"`` paired with sentence2."""

    def texts(self, row: dict[str, Any]) -> tuple[tuple[str, str | None], ...]:
        return ((f"{row['word']}: {row['sentence1']}", row["sentence2"]),)


COPA_CONNECTIVES = {"cause": "What was the cause?", "effect": "What happened as a result?"}


@dataclass(frozen=True)
class CopaTask(TextTask):
    """COPA: T5 sees both choices and answers "choice1"/"choice2"; the encoder scores each choice."""

    def texts(self, row: dict[str, Any]) -> tuple[tuple[str, str | None], ...]:
        context = f"{row['premise']} {COPA_CONNECTIVES[row['question']]}"
        return ((context, row["choice1"]), (context, row["choice2"]))


def strip_markup(paragraph: str) -> str:
    """T5's MultiRC cleaning: ``<br>`` becomes a space, ``<b>``/``</b>`` are dropped."""
    return re.sub(r"</?b>", "", paragraph.replace("<br>", " "))


@dataclass(frozen=True)
class MultiRcTask(TextTask):
    """MultiRC: one row per answer option, grouped by (paragraph, question) for EM."""

    EXTRA_INPUTS: ClassVar[tuple[str, ...]] = ("idx",)

    def source(self, row: dict[str, Any]) -> str:
        return super().source({**row, "paragraph": strip_markup(row["paragraph"])})

    def texts(self, row: dict[str, Any]) -> tuple[tuple[str, str | None], ...]:
        return ((strip_markup(row["paragraph"]), f"{row['question']} {row['answer']}"),)

    def group(self, row: dict[str, Any]) -> int:
        """Question id unique across paragraphs: idx values are non-negative int32."""
        return (int(row["idx"]["paragraph"]) << 32) | int(row["idx"]["question"])


def word_spans(text: str) -> list[tuple[int, int]]:
    """Character (start, end) of each whitespace-separated word."""
    return [m.span() for m in re.finditer(r"\S+", text)]


def char_span(text: str, word_index: int, span_text: str) -> tuple[int, int]:
    """Character span of ``span_text`` starting at word ``word_index`` (WSC's span indices count words).

    A few wsc.fixed spans still differ from the text (case, a dropped period); they then cover as many
    words as the span text has.
    """
    words = word_spans(text)
    if not 0 <= word_index < len(words):  # a broken index: fall back to the first occurrence
        start = max(text.find(span_text), 0)
        return start, min(start + len(span_text), len(text))
    start = words[word_index][0]
    if text[start : start + len(span_text)].lower() == span_text.lower():
        return start, start + len(span_text)
    last = min(word_index + len(span_text.split()), len(words)) - 1
    return start, words[last][1]


@dataclass(frozen=True)
class WscTask(TextTask):
    """WSC (wsc.fixed): does the pronoun (span2) refer to the noun phrase (span1)?"""

    EXTRA_INPUTS: ClassVar[tuple[str, ...]] = ("text", "span1_index", "span1_text", "span2_index", "span2_text")

    def spans(self, row: dict[str, Any]) -> tuple[tuple[int, int], ...]:
        return tuple(char_span(row["text"], int(row[f"{k}_index"]), row[f"{k}_text"]) for k in ("span1", "span2"))

    def source(self, row: dict[str, Any]) -> str:
        text = row["text"]
        marks = [
            (span, row[f"{k}_text"], mark)
            for span, k, mark in zip(self.spans(row), ("span1", "span2"), "*#", strict=True)
        ]
        # Right to left so earlier offsets stay valid; like T5's regex, mark only exact matches.
        for (start, end), span_text, mark in sorted(marks, reverse=True):
            if text[start:end] == span_text:
                text = f"{text[:start]}{mark} {span_text} {mark}{text[end:]}"
        return f"{self.prefix} text: {text}"

    def texts(self, row: dict[str, Any]) -> tuple[tuple[str, str | None], ...]:
        return ((row["text"], None),)


SPAN = pa.struct([("text", TEXT), ("start", INDEX), ("end", INDEX)])  # one entity mention, end exclusive
RECORD_FEATURES = {  # the hub stores entity_spans as a struct of lists; a list of SPAN structs is read too
    "passage": TEXT,
    "query": TEXT,
    "entities": pa.list_(TEXT),
    "entity_spans": pa.struct([("text", pa.list_(TEXT)), ("start", pa.list_(INDEX)), ("end", pa.list_(INDEX))]),
    "answers": pa.list_(TEXT),
    "idx": pa.struct([("passage", INDEX), ("query", INDEX)]),
}


def record_passage(passage: str) -> str:
    """T5's ReCoRD cleaning: each ``@highlight`` line becomes a sentence of the passage."""
    passage = re.sub(r"([.?!\"'])\n@highlight\n", r"\1 ", passage)
    return re.sub(r"\n@highlight\n", ". ", passage)


@dataclass(frozen=True)
class RecordTask(TextTask):
    """ReCoRD: pick the entity that fills ``@placeholder``; candidates are the row's entities."""

    EXTRA_INPUTS: ClassVar[tuple[str, ...]] = ("passage", "query", "entities", "idx")
    LABEL: ClassVar[str] = "answers"
    UNLABELLED: ClassVar[dict[str, Any]] = {"answers": []}
    OPTIONAL_INPUTS: ClassVar[tuple[str, ...]] = ("entity_spans",)
    ALSO_READ: ClassVar[dict[str, tuple[pa.DataType, ...]]] = {"entity_spans": (pa.list_(SPAN),)}
    NONEMPTY: ClassVar[tuple[str, ...]] = ("entities",)  # the candidates: a row without one has nothing to pick

    def candidates(self, row: dict[str, Any]) -> tuple[str, ...]:
        """Entity strings in passage order, deduplicated (``entity_spans``; else sorted ``entities``)."""
        spans = row.get("entity_spans") or []
        # hub files store a struct of lists; a list of {text, start, end} structs is read too
        texts = spans.get("text") or [] if isinstance(spans, dict) else [span["text"] for span in spans]
        return tuple(dict.fromkeys(texts or row["entities"]))

    def source(self, row: dict[str, Any]) -> str:
        entities = ", ".join(row["entities"])
        return f"{self.prefix} query: {row['query']} entities: {entities} passage: {record_passage(row['passage'])}"

    def texts(self, row: dict[str, Any]) -> tuple[tuple[str, str | None], ...]:
        passage = record_passage(row["passage"])
        return tuple(
            (passage, row["query"].replace("@placeholder", entity)) for entity in self.candidates(row)
        )

    def target(self, row: dict[str, Any]) -> int:
        answers = set(row["answers"] or ())
        return next((i for i, entity in enumerate(self.candidates(row)) if entity in answers), -1)

    def gold(self, row: dict[str, Any], target: int) -> Any:
        return list(row["answers"]) or None

    def group(self, row: dict[str, Any]) -> int:
        return int(row["idx"]["query"])

    def decode(self, example: Example, prediction: int | float | str) -> str:
        """A candidate index becomes its entity string (a string stays as is; out of range gives "")."""
        if isinstance(prediction, str):
            return prediction
        index = int(prediction) if isinstance(prediction, Integral) else -1
        return example.candidates[index] if 0 <= index < len(example.candidates) else ""


TASKS: tuple[TextTask, ...] = (
    _task(
        TextTask,
        "boolq",
        "classification",
        FALSE_TRUE,
        t5_fields=("passage", "question"),
        text_fields=("question", "passage"),
        features=text_features("question", "passage"),
    ),
    _task(
        TextTask,
        "cb",
        "classification",
        ("entailment", "contradiction", "neutral"),
        t5_fields=("hypothesis", "premise"),
        text_fields=("premise", "hypothesis"),
        features=text_features("premise", "hypothesis"),
        metric_names=("accuracy", "macro_f1"),
        main_metric="macro_f1",
    ),
    _task(
        CopaTask,
        "copa",
        "multiple_choice",
        ("choice1", "choice2"),
        t5_fields=("choice1", "choice2", "premise", "question"),
        features=text_features("premise", "choice1", "choice2", "question"),
        choices={"question": tuple(COPA_CONNECTIVES)},
    ),
    _task(
        MultiRcTask,
        "multirc",
        "classification",
        FALSE_TRUE,
        t5_fields=("question", "answer", "paragraph"),
        features={**text_features("paragraph", "question", "answer"),
                  "idx": pa.struct([("paragraph", INDEX), ("question", INDEX), ("answer", INDEX)])},
        metric_names=("f1a", "em"),
        main_metric="f1a",
    ),
    _task(
        RecordTask,
        "record",
        "multiple_choice",
        (),
        features=RECORD_FEATURES,
        metric_names=("record_f1", "record_em"),
        main_metric="record_f1",
    ),
    _task(
        TextTask,
        "superglue_rte",
        "classification",
        ("entailment", "not_entailment"),
        hub_config="rte",
        prefix="rte",
        t5_fields=("hypothesis", "premise"),
        text_fields=("premise", "hypothesis"),
        features=text_features("premise", "hypothesis"),
    ),
    _task(
        WicTask,
        "wic",
        "classification",
        FALSE_TRUE,
        t5_fields=("sentence1", "sentence2", "word"),
        features=text_features("word", "sentence1", "sentence2", **dict.fromkeys(("start1", "start2", "end1", "end2"),
                                                                                 INDEX)),
    ),
    _task(
        WscTask,
        "wsc",
        "span",
        FALSE_TRUE,
        hub_config="wsc.fixed",
        features=text_features("text", "span1_text", "span2_text", span1_index=INDEX, span2_index=INDEX),
    ),
)
