"""Task sampling for mixtures: rates, determinism, one task per batch, and the leaderboard average."""

from __future__ import annotations

from collections import Counter

import pytest

from ptune.errors import ConfigError
from ptune.tasks.collate import train_batches
from ptune.tasks.mixture import average, mixture_batches, task_probabilities, task_score

SIZES = [9000, 1000, 250]


def test_rates_follow_each_rule():
    assert task_probabilities(SIZES, "proportional") == pytest.approx([9000 / 10250, 1000 / 10250, 250 / 10250])
    assert task_probabilities(SIZES, "equal") == pytest.approx([1 / 3] * 3)
    # T = 2: sqrt sizes 94.87, 31.62, 15.81 over 142.30
    assert task_probabilities(SIZES, "temperature", 2.0) == pytest.approx([0.66667, 0.22222, 0.11111], abs=1e-4)
    assert task_probabilities(SIZES, "temperature", 1.0) == pytest.approx(task_probabilities(SIZES, "proportional"))
    # T5's cap K: rates from min(n, K)
    assert task_probabilities(SIZES, "proportional", cap=1000) == pytest.approx([1000 / 2250, 1000 / 2250, 250 / 2250])


@pytest.mark.parametrize("sampling,temperature", [("proportional", 1.0), ("temperature", 3.0), ("equal", 1.0)])
def test_drawn_tasks_match_the_rates(sampling, temperature):
    lengths = [[5] * n for n in SIZES]
    probs = task_probabilities(SIZES, sampling, temperature)
    counts: Counter = Counter()
    for epoch in range(6):
        counts.update(t for t, _ in mixture_batches(lengths, 8, seed=1, epoch=epoch, probabilities=probs))
    total = sum(counts.values())
    for t, p in enumerate(probs):
        assert counts[t] / total == pytest.approx(p, abs=0.02), (t, counts)


def test_batches_are_deterministic_in_seed_and_epoch_and_hold_one_task():
    lengths = [[3] * 100, [4] * 37]
    probs = task_probabilities([100, 37], "equal")
    a = mixture_batches(lengths, 8, seed=5, epoch=2, probabilities=probs)
    assert a == mixture_batches(lengths, 8, seed=5, epoch=2, probabilities=probs)
    assert a != mixture_batches(lengths, 8, seed=5, epoch=3, probabilities=probs)
    assert a != mixture_batches(lengths, 8, seed=6, epoch=2, probabilities=probs)
    assert len(a) == 13 + 5  # the tasks' own epochs together
    for t, idx in a:
        assert all(0 <= i < len(lengths[t]) for i in idx)


def test_a_task_sees_every_row_before_any_repeats():
    lengths = [[1] * 40, [1] * 40]
    batches = mixture_batches(lengths, 4, seed=0, epoch=0, probabilities=[0.5, 0.5])
    rows = [i for t, idx in batches if t == 0 for i in idx]
    first = rows[:40] if len(rows) >= 40 else rows
    assert len(set(first)) == len(first)


def test_a_mixture_of_one_task_gives_the_single_task_batches():
    lengths = [[3, 9, 4, 7, 1] * 9]
    for group in (False, True):
        got = mixture_batches(lengths, 4, seed=3, epoch=1, probabilities=[1.0], group_by_length=group)
        assert got == [(0, b) for b in train_batches(lengths[0], 4, 3, 1, group)]


def test_leaderboard_average_counts_each_task_once():
    mrpc = task_score({"f1": 90.0, "accuracy": 86.0}, ("f1", "accuracy"))
    assert mrpc == 88.0
    # MNLI matched 80 and mismatched 82 are one task; CoLA 50
    assert average({"mnli": [80.0, 82.0], "mrpc": [mrpc], "cola": [50.0]}) == pytest.approx((81 + 88 + 50) / 3)


def test_bad_sampling_names_the_choices():
    with pytest.raises(ConfigError, match="data.sampling='sorted'.*proportional, temperature, equal"):
        task_probabilities(SIZES, "sorted")
    with pytest.raises(ConfigError, match="data.temperature=0"):
        task_probabilities(SIZES, "temperature", 0)
