"""Task mixtures: which task each training batch comes from, and how the tasks' scores average.

Sampling (``data.sampling``), as in T5 (Raffel et al. 2020, Section 3.5.2) and hyperformer: task i of
sizes n_1..n_T is drawn with probability proportional to

* ``proportional``: n_i (examples-proportional mixing),
* ``temperature``: n_i ** (1 / T) with T = ``data.temperature`` (T = 1 is proportional, T -> inf equal),
* ``equal``: 1.

``data.sampling_cap`` (T5's artificial limit K) replaces n_i by min(n_i, K) in these rates only; a
per-task ``train_limit`` caps the rows actually loaded.

Each batch holds **one task**. BERT-family models keep one head per task and T5 scores against one
task's candidate set, so a one-task batch runs one head and one candidate set; hypernetwork methods
then generate one prompt per batch. Within a task the rows come from that task's own shuffled passes
(``collate.train_batches``), so every row is seen before any repeats. A mixture epoch holds as many
batches as the tasks' own epochs together (sum of ceil(n_i / batch)). Everything is a pure function
of (seed, epoch), so a resumed run and every process of a distributed run see the same batches. A
mixture of one task gives exactly the single-task batches.

Averages (``avg``): each task's score is the mean of its official metrics (MRPC / QQP: F1 and accuracy,
STS-B: Pearson and Spearman, CB: accuracy and macro-F1, MultiRC: F1a and EM, ReCoRD: F1 and EM), a task
scored on several evaluation splits (MNLI matched and mismatched) averages them, and ``avg`` is the mean
over tasks. This is the rule of T5's ``compute_avg_glue`` (t5/evaluation/eval_utils.py: metrics grouped
per task, MNLIm and MNLImm in one group, group means averaged), so MNLI counts once.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from ptune.errors import ConfigError
from ptune.tasks.collate import train_batches

SAMPLINGS = ("proportional", "temperature", "equal")


def task_probabilities(sizes: Sequence[int], sampling: str, temperature: float = 1.0,
                       cap: int | None = None) -> list[float]:
    if sampling not in SAMPLINGS:
        raise ConfigError(f"data.sampling={sampling!r} is not valid; choose one of: {', '.join(SAMPLINGS)}")
    if sampling == "temperature" and temperature <= 0:
        raise ConfigError(f"data.temperature={temperature} must be > 0")
    sizes = [min(n, cap) if cap else n for n in sizes]
    if sampling == "equal":
        weights = [1.0 for _ in sizes]
    else:
        power = 1.0 if sampling == "proportional" else 1.0 / temperature
        weights = [float(n) ** power for n in sizes]
    total = sum(weights)
    return [w / total for w in weights]


def mixture_batches(lengths: Sequence[Sequence[int]], batch_size: int, seed: int, epoch: int,
                    probabilities: Sequence[float], group_by_length: bool = False) -> list[tuple[int, list[int]]]:
    """One mixture epoch as (task id, row indices of that task) batches, deterministic in (seed, epoch)."""
    if len(lengths) == 1:
        return [(0, b) for b in train_batches(list(lengths[0]), batch_size, seed, epoch, group_by_length)]
    total = sum(-(-len(rows) // batch_size) for rows in lengths)
    rng = random.Random(f"ptune-mixture-{seed}-{epoch}")
    draws = rng.choices(range(len(lengths)), weights=probabilities, k=total)
    queues: list[list[list[int]]] = [[] for _ in lengths]
    passes = [0] * len(lengths)
    out = []
    for t in draws:
        if not queues[t]:  # the task's next own pass: a fresh shuffle, independent of the others
            pass_seed = random.Random(f"ptune-task-{seed}-{epoch}-{t}-{passes[t]}").randrange(2**31)
            queues[t] = train_batches(list(lengths[t]), batch_size, pass_seed, 0, group_by_length)[::-1]
            passes[t] += 1
        out.append((t, queues[t].pop()))
    return out


def task_score(metrics: dict[str, float], metric_names: Sequence[str]) -> float:
    """The leaderboard's score of one task on one split: the mean of its official metrics."""
    return sum(metrics[m] for m in metric_names) / len(metric_names)


def average(per_task: dict[str, list[float]]) -> float:
    """``avg``: the mean over tasks of each task's score (averaged over its evaluation splits)."""
    scores = [sum(s) / len(s) for s in per_task.values()]
    return sum(scores) / len(scores)
