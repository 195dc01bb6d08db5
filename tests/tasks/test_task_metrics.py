"""Metrics against values worked out by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import warnings

import pytest

from ptune.tasks import metrics
from ptune.tasks.metrics import METRICS


def test_accuracy():
    # 3 of 4 right -> 75
    assert metrics.accuracy([1, 0, 1, 1], [1, 0, 0, 1]) == pytest.approx(75.0)


def test_binary_f1_uses_class_one_as_positive():
    # TP = 2 (items 0, 3), FP = 1 (item 1), FN = 1 (item 4): P = R = 2/3, F1 = 2/3
    preds, labels = [1, 1, 0, 1, 0, 0], [1, 0, 0, 1, 1, 0]
    assert metrics.f1(preds, labels) == pytest.approx(200 / 3)
    # nothing predicted positive: TP = 0, precision undefined -> 0, and no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert metrics.f1([0, 0, 0], [1, 0, 1]) == 0.0


def test_mcc_of_a_two_by_two_table():
    # labels 1 1 1 1 0 0 0, preds 1 1 1 0 0 0 1: TP = 3, FN = 1, TN = 2, FP = 1
    # MCC = (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (6 - 1) / sqrt(4*4*3*3) = 5/12
    labels, preds = [1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0, 1]
    assert metrics.mcc(preds, labels) == pytest.approx(100 * 5 / 12)


def test_macro_f1_over_three_classes():
    # labels 0 0 1 1 2 2, preds 0 1 1 1 2 0
    # class 0: TP 1, FP 1 (item 5), FN 1 (item 1) -> P 1/2, R 1/2, F1 1/2
    # class 1: TP 2, FP 1 (item 1), FN 0          -> P 2/3, R 1,   F1 4/5
    # class 2: TP 1, FP 0, FN 1 (item 5)          -> P 1,   R 1/2, F1 2/3
    # macro = (1/2 + 4/5 + 2/3) / 3 = 59/90
    assert metrics.macro_f1([0, 1, 1, 1, 2, 0], [0, 0, 1, 1, 2, 2]) == pytest.approx(100 * 59 / 90)


def test_pearson_and_spearman():
    # x = 1 2 3, y = 1 2 4: dx = -1 0 1, dy = -4/3 -1/3 5/3
    # cov = 4/3 + 0 + 5/3 = 3; sum dx^2 = 2; sum dy^2 = 42/9 = 14/3; r = 3 / sqrt(2 * 14/3) = 3 / sqrt(28/3)
    assert metrics.pearson([1, 2, 3], [1, 2, 4]) == pytest.approx(100 * 3 / (28 / 3) ** 0.5)
    # ranks 1 2 3 4 vs 1 3 2 4: d = 0 -1 1 0, sum d^2 = 2; rho = 1 - 6*2 / (4 * (16 - 1)) = 0.8
    assert metrics.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(80.0)


@pytest.mark.parametrize("name", ["pearson", "spearman", "mcc"])
def test_constant_predictions_score_zero_without_warnings(name):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert METRICS[name]([1, 1, 1, 1], [0, 1, 0, 1]) == 0.0
        assert METRICS[name]([0, 1, 0, 1], [1, 1, 1, 1]) == 0.0


def test_multirc_em_and_f1a():
    # question A: labels 1 0 1, preds 1 0 1 -> all right
    # question B: labels 1 0,   preds 1 1   -> wrong
    # question C: labels 0 0 1, preds 0 0 0 -> wrong              EM = 1/3
    # F1a over all 8 answers: TP 3 (items 0, 2, 3), FP 1 (item 4), FN 1 (item 7) -> P = R = 3/4, F1 = 3/4
    groups = ["A", "A", "A", "B", "B", "C", "C", "C"]
    labels = [1, 0, 1, 1, 0, 0, 0, 1]
    preds = [1, 0, 1, 1, 1, 0, 0, 0]
    assert METRICS["em"](preds, labels, groups) == pytest.approx(100 / 3)
    assert METRICS["f1a"](preds, labels, groups) == pytest.approx(75.0)
    # without groups EM is per example: 6 of 8 right
    assert METRICS["em"](preds, labels) == pytest.approx(75.0)


def test_squad_normalisation_and_token_f1():
    assert metrics.normalize_answer("The  Quick, brown fox!") == "quick brown fox"
    assert metrics.normalize_answer("An apple a day") == "apple day"
    # "x y y" vs "y y z": common = min counts = 2 (y, y); P = 2/3, R = 2/3 -> F1 = 2/3
    assert metrics.token_f1("x y y", "y y z") == pytest.approx(2 / 3)
    assert metrics.token_f1("", "y") == 0.0


def test_record_f1_and_em_take_the_best_gold_answer():
    # 1: "the Eiffel Tower!" -> "eiffel tower" == "eiffel tower": F1 1, EM 1 (best of the two golds)
    # 2: "Paris, France" -> "paris france" vs "paris": common 1, P 1/2, R 1 -> F1 2/3, EM 0
    # 3: "London" vs "Berlin": F1 0, EM 0
    # F1 = (1 + 2/3 + 0) / 3 = 5/9, EM = 1/3
    preds = ["the Eiffel Tower!", "Paris, France", "London"]
    golds = [["Tower", "Eiffel Tower"], ["Paris"], ["Berlin"]]
    assert METRICS["record_f1"](preds, golds) == pytest.approx(100 * 5 / 9)
    assert METRICS["record_em"](preds, golds) == pytest.approx(100 / 3)


def test_score_skips_unlabelled_rows_and_returns_floats():
    result = metrics.score(["accuracy", "f1"], [1, 0, 1], [1, None, 0])
    # the labelled pairs are (1, 1) and (1, 0): accuracy 1/2; F1: TP 1, FP 1 -> P 1/2, R 1, F1 2/3
    assert result == pytest.approx({"accuracy": 50.0, "f1": 200 / 3})
    assert all(type(v) is float for v in result.values())
    assert metrics.score(["accuracy"], [1, 0], [None, None]) == {}
