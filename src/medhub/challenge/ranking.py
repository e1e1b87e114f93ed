"""Challenge ranking from a metric table, as FOMO25 ranks: metric ranks -> task ranks -> an overall score.

A metric table has one row per submission and one column per task metric (``t1_auroc``, ``t2_dice``, ...). For
each metric the submissions are ranked, the best getting rank 1 and tied values sharing the lowest (best) rank of
their group (1, 2, 2, 4). A task's rank is the mean of its metric ranks; the overall score is the mean of the task
ranks, optionally weighted (FOMO26 weighs each image-level task 10 % and each voxel-level task 25 %). A metric that
a submission lacks (NaN: it did not take part in the task) gets rank ``n + 1`` for ``n`` submissions. Lower overall
scores are better.

Tiers come from the bootstrap: the case set is resampled, metrics and ranks recomputed, and each submission's
overall rank gets a 95 % interval; tier 1 is the leader and every submission whose interval overlaps the
leader's, tier 2 starts with the best submission left, and so on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata


def rank_values(values: Sequence[float] | np.ndarray, *, higher_is_better: bool) -> np.ndarray:
    """Ranks of ``values`` across submissions (the last axis; rows of a 2-D array are ranked one by one): 1 for
    the best, ties sharing their group's best rank, NaN (a missing value) ranked ``n + 1``."""
    x = np.asarray(values, dtype=np.float64)
    missing = ~np.isfinite(x)
    # a missing value sorts after every real one, then gets n + 1
    keyed = np.where(missing, np.inf, -x if higher_is_better else x)
    ranks = rankdata(keyed, method="min", axis=-1).astype(np.float64)
    ranks[missing] = x.shape[-1] + 1
    return ranks


@dataclass(frozen=True)
class MetricColumn:
    """One column of a metric table: its task and whether higher is better."""

    name: str
    task: str
    higher_is_better: bool


@dataclass
class Ranking:
    """Ranks of every submission: per metric, per task and overall (the mean of task ranks; lower is better)."""

    submissions: list[str]
    metric_ranks: dict[str, np.ndarray]
    task_ranks: dict[str, np.ndarray]
    overall: np.ndarray

    def order(self) -> list[int]:
        """Submission indices from best to worst overall (ties by name)."""
        return sorted(range(len(self.submissions)), key=lambda i: (self.overall[i], self.submissions[i]))


def rank_table(submissions: Sequence[str], table: Mapping[str, Sequence[float]], columns: Sequence[MetricColumn],
               *, task_weights: Mapping[str, float] | None = None) -> Ranking:
    """Rank ``submissions`` on ``table`` (column name -> one value per submission, NaN where missing).

    A task whose metrics are all missing for a submission gets task rank ``n + 1`` (each missing metric already
    ranks ``n + 1``). ``task_weights`` weighs the overall mean (normalized to sum 1); by default every task
    counts the same."""
    metric_ranks = {c.name: rank_values(table[c.name], higher_is_better=c.higher_is_better) for c in columns}
    tasks: dict[str, list[str]] = {}
    for c in columns:
        tasks.setdefault(c.task, []).append(c.name)
    task_ranks = {task: np.mean([metric_ranks[name] for name in names], axis=0) for task, names in tasks.items()}
    # (for a 2-D table, each row is one bootstrap resample of every submission)
    weights = np.array([(task_weights or {}).get(task, 1.0) for task in tasks], dtype=np.float64)
    if task_weights is not None and set(task_weights) - set(tasks):
        raise ValueError(f"weights for unknown tasks {sorted(set(task_weights) - set(tasks))}")
    weights = weights / weights.sum()
    overall = np.sum([w * task_ranks[task] for w, task in zip(weights, tasks, strict=True)], axis=0)
    return Ranking(list(submissions), metric_ranks, task_ranks, overall)


def rank_tiers(observed: np.ndarray, bootstrap_overall: np.ndarray, *, level: float = 0.95) -> list[int]:
    """Tiers (1 = best) from bootstrap overall scores, shape ``(resamples, submissions)``; see the module."""
    tail = (1 - level) / 2
    low = np.quantile(bootstrap_overall, tail, axis=0)
    high = np.quantile(bootstrap_overall, 1 - tail, axis=0)
    order = sorted(range(len(observed)), key=lambda i: observed[i])
    tiers = [0] * len(observed)
    tier, leader = 0, None
    for i in order:
        if leader is None or low[i] > high[leader]:
            tier, leader = tier + 1, i
        tiers[i] = tier
    return tiers
