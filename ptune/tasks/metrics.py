"""GLUE / SuperGLUE metrics on the percent scale (0-100), as the papers report them.

Definitions follow the benchmark papers (Wang et al., 2019a/b) and their reference scorers:
Matthews correlation (CoLA), binary F1 with positive class 1 (MRPC, QQP), Pearson / Spearman (STS-B),
unweighted macro F1 over the classes present (CB, as scikit-learn's ``average="macro"`` and the
SuperGLUE scorer compute it), F1a over all answer options and exact match per question (MultiRC,
Khashabi et al., 2018), and max-over-gold token F1 / EM after SQuAD normalisation (ReCoRD, Zhang et
al., 2018). Every metric has the signature ``(predictions, labels, groups=None) -> float``; ``groups``
matters only for the grouped ones. Degenerate inputs (a constant column for the correlations) score 0.0
instead of NaN and warnings.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import stats
from sklearn.metrics import f1_score, matthews_corrcoef

Metric = Callable[..., float]


def _pct(value: float | np.floating[Any]) -> float:
    return float(100.0 * value)


def accuracy(predictions: Sequence[Any], labels: Sequence[Any], groups: Sequence[Any] | None = None) -> float:
    """Fraction of exact matches."""
    return _pct(np.mean([p == y for p, y in zip(predictions, labels, strict=True)]))


def f1(predictions: Sequence[int], labels: Sequence[int], groups: Sequence[Any] | None = None) -> float:
    """Binary F1 with class 1 as the positive class (0 when nothing is predicted or gold positive)."""
    return _pct(f1_score(list(labels), list(predictions), pos_label=1, average="binary", zero_division=0))


def macro_f1(predictions: Sequence[int], labels: Sequence[int], groups: Sequence[Any] | None = None) -> float:
    """Unweighted mean of per-class F1 over the classes that occur in labels or predictions."""
    return _pct(f1_score(list(labels), list(predictions), average="macro", zero_division=0))


def mcc(predictions: Sequence[int], labels: Sequence[int], groups: Sequence[Any] | None = None) -> float:
    """Matthews correlation coefficient; 0.0 when either column is constant."""
    if len(set(predictions)) < 2 or len(set(labels)) < 2:
        return 0.0
    return _pct(matthews_corrcoef(list(labels), list(predictions)))


def _correlation(fn: Callable[..., Any], predictions: Sequence[float], labels: Sequence[float]) -> float:
    x, y = np.asarray(predictions, dtype=float), np.asarray(labels, dtype=float)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    return _pct(fn(x, y)[0])


def pearson(
    predictions: Sequence[float], labels: Sequence[float], groups: Sequence[Any] | None = None
) -> float:
    return _correlation(stats.pearsonr, predictions, labels)


def spearman(
    predictions: Sequence[float], labels: Sequence[float], groups: Sequence[Any] | None = None
) -> float:
    return _correlation(stats.spearmanr, predictions, labels)


def exact_match(
    predictions: Sequence[Any], labels: Sequence[Any], groups: Sequence[Any] | None = None
) -> float:
    """Fraction of groups whose every prediction is right (MultiRC EM: all answers of a question)."""
    if groups is None:
        return accuracy(predictions, labels)
    right: dict[Any, bool] = {}
    for p, y, g in zip(predictions, labels, groups, strict=True):
        right[g] = right.get(g, True) and p == y
    return _pct(np.mean(list(right.values())))


_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normalisation: lowercase, drop punctuation and articles, squeeze whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(prediction: str, gold: str) -> float:
    """Bag-of-tokens F1 between two normalised strings, in [0, 1]."""
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_tokens), common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def record_f1(
    predictions: Sequence[str], labels: Sequence[Sequence[str]], groups: Sequence[Any] | None = None
) -> float:
    """ReCoRD F1: per query the max token F1 over its gold answers, averaged over queries."""
    return _pct(
        np.mean(
            [
                max((token_f1(p, g) for g in golds), default=0.0)
                for p, golds in zip(predictions, labels, strict=True)
            ]
        )
    )


def record_em(
    predictions: Sequence[str], labels: Sequence[Sequence[str]], groups: Sequence[Any] | None = None
) -> float:
    """ReCoRD EM: per query 1 if the normalised prediction equals any normalised gold answer."""
    hits = [
        any(normalize_answer(p) == normalize_answer(g) for g in golds)
        for p, golds in zip(predictions, labels, strict=True)
    ]
    return _pct(np.mean(hits))


METRICS: dict[str, Metric] = {
    "accuracy": accuracy,
    "f1": f1,
    "macro_f1": macro_f1,
    "mcc": mcc,
    "pearson": pearson,
    "spearman": spearman,
    "f1a": f1,  # MultiRC F1a is binary F1 over all answer options, ignoring the grouping
    "em": exact_match,
    "record_f1": record_f1,
    "record_em": record_em,
}


def score(
    names: Sequence[str],
    predictions: Sequence[Any],
    labels: Sequence[Any],
    groups: Sequence[Any] | None = None,
) -> dict[str, float]:
    """The named metrics over the labelled pairs (label None = unlabelled test row, skipped); {} if none."""
    keep = [i for i, y in enumerate(labels) if y is not None]
    if not keep:
        return {}
    preds, golds = [predictions[i] for i in keep], [labels[i] for i in keep]
    grps = None if groups is None else [groups[i] for i in keep]
    return {name: METRICS[name](preds, golds, grps) for name in names}
