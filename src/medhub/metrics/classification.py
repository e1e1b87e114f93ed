"""Metrics of scores against binary labels: the area under the ROC curve.

``scores`` are any real numbers where higher means "more likely positive" (probabilities, logits); ``labels`` are
0/1 (or booleans). Both are 1-D and the same length, one entry per case.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.stats import rankdata


def auroc(scores: Sequence[float], labels: Sequence[float]) -> float:
    """Area under the ROC curve: the probability that a random positive case outscores a random negative one, ties
    counting one half (the Mann-Whitney U over the product of the class sizes), computed from ranks in
    O(n log n). NaN when a class is empty."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    if s.shape != y.shape or s.ndim != 1:
        raise ValueError(f"scores and labels must be 1-D and the same length, got {s.shape} and {y.shape}")
    positives = int(y.sum())
    negatives = y.size - positives
    if positives == 0 or negatives == 0:
        return math.nan
    ranks = rankdata(s)  # ties get their mean rank, which counts each tie one half
    return float((ranks[y].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def auroc_rows(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """:func:`auroc` of each row of ``scores`` against the same row of ``labels`` (shape ``(rows, cases)``), at
    once: for bootstrap resamples and permutations. NaN for a row with an empty class."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    ranks = rankdata(s, axis=1)
    positives = y.sum(axis=1).astype(np.float64)
    negatives = y.shape[1] - positives
    with np.errstate(invalid="ignore", divide="ignore"):
        area = ((ranks * y).sum(axis=1) - positives * (positives + 1) / 2) / (positives * negatives)
    return np.where((positives > 0) & (negatives > 0), area, np.nan)
