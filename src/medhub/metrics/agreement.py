"""Agreement of paired values: a prediction and a reference measured on the same cases.

* :func:`icc_2_1`: ICC(2,1), two-way random effects, absolute agreement, single rater (Shrout & Fleiss 1979;
  McGraw & Wong's ICC(A,1)), from the two-way ANOVA mean squares of an ``n × k`` table:
  ``(MSR − MSE) / (MSR + (k − 1)·MSE + k·(MSC − MSE)/n)``;
* :func:`cohen_kappa` on a :func:`confusion_matrix` (rows reference, columns prediction), unweighted, linearly or
  quadratically weighted;
* :func:`correlation`: Pearson or Spearman with scipy's two-sided p-value;
* :func:`paired_agreement`: the difference (prediction − reference), Bland–Altman 95 % limits of agreement
  ``mean ± 1.96·SD`` (SD with ``n − 1``), Pearson r, Spearman ρ and ICC(2,1) of a set of pairs.

Undefined statistics (a constant input, fewer than 2 pairs) are NaN; summaries report them as empty.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from scipy import stats

KAPPA_WEIGHTS = ("unweighted", "linear", "quadratic")


def icc_2_1(ratings: np.ndarray) -> float:
    """ICC(2,1) (two-way random, absolute agreement, single rater) of an ``n subjects × k raters`` table."""
    y = np.asarray(ratings, dtype=np.float64)
    n, k = y.shape
    if n < 2:
        return math.nan
    grand = y.mean()
    ss_rows = k * np.sum((y.mean(axis=1) - grand) ** 2)
    ss_cols = n * np.sum((y.mean(axis=0) - grand) ** 2)
    ss_error = np.sum((y - grand) ** 2) - ss_rows - ss_cols
    ms_rows = ss_rows / (n - 1)
    ms_cols = ss_cols / (k - 1)
    ms_error = ss_error / ((n - 1) * (k - 1))
    denominator = ms_rows + (k - 1) * ms_error + k * (ms_cols - ms_error) / n
    return float((ms_rows - ms_error) / denominator) if denominator > 0 else math.nan


def confusion_matrix(ref_codes: np.ndarray, pred_codes: np.ndarray, n_classes: int) -> np.ndarray:
    """``n_classes × n_classes`` counts; rows are reference codes, columns predicted codes (0-based)."""
    return np.bincount(ref_codes * n_classes + pred_codes, minlength=n_classes**2).reshape(n_classes, n_classes)


def cohen_kappa(confusion: np.ndarray, weights: str = "unweighted") -> float:
    """Cohen's κ from a confusion matrix: ``1 − Σ w·O / Σ w·E`` with ``E`` the outer product of the marginals
    over ``n``; ``w`` is 0 on the diagonal and 1 (unweighted), ``|i−j|/(K−1)`` (linear) or
    ``((i−j)/(K−1))²`` (quadratic) off it. NaN when undefined (chance disagreement is 0)."""
    observed = np.asarray(confusion, dtype=np.float64)
    size = observed.shape[0]
    distance = np.abs(np.subtract.outer(np.arange(size), np.arange(size))) / max(size - 1, 1)
    w = {"unweighted": (distance > 0).astype(np.float64), "linear": distance, "quadratic": distance**2}.get(weights)
    if w is None:
        raise ValueError(f"weights must be one of {', '.join(KAPPA_WEIGHTS)}, got {weights!r}")
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / observed.sum()
    chance = float(np.sum(w * expected))
    return 1.0 - float(np.sum(w * observed)) / chance if chance > 0 else math.nan


def correlation(x: Sequence[float], y: Sequence[float], method: str = "pearson") -> tuple[float, float]:
    """(coefficient, two-sided p) of ``method`` ``"pearson"`` or ``"spearman"``; NaNs for constant input or
    fewer than 3 pairs."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, math.nan
    # scipy warns for nearly constant input; the coefficient is still the answer.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = stats.spearmanr(x, y) if method == "spearman" else stats.pearsonr(x, y)
    return float(result[0]), float(result[1])


def absolute_errors(pred: Sequence[float], ref: Sequence[float]) -> np.ndarray:
    """``|pred - ref|`` per pair: the per-case terms of the mean absolute error (MAE)."""
    return np.abs(np.asarray(pred, dtype=np.float64) - np.asarray(ref, dtype=np.float64))


def pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson's r of each row of ``x`` with the same row of ``y`` (shape ``(rows, pairs)``), at once: for
    bootstrap resamples and permutations. NaN for a constant row."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    dx = x - x.mean(axis=1, keepdims=True)
    dy = y - y.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (dx * dy).sum(axis=1) / np.sqrt((dx**2).sum(axis=1) * (dy**2).sum(axis=1))
    return np.where(np.isfinite(r), r, np.nan)


def paired_agreement(pred: Sequence[float], ref: Sequence[float]) -> dict[str, float]:
    """Difference, Bland–Altman limits, correlations and ICC(2,1) of paired finite values (see the module)."""
    p, r = np.asarray(pred, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if p.shape != r.shape or p.ndim != 1:
        raise ValueError(f"pred and ref must be 1D and the same length, got {p.shape} and {r.shape}")
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(r))):
        raise ValueError("values must be finite")
    difference = p - r
    mean = float(difference.mean()) if p.size else math.nan
    sd = float(difference.std(ddof=1)) if p.size > 1 else math.nan
    return {
        "n": float(p.size),
        "mean_difference": mean,
        "sd_difference": sd,
        "mean_absolute_difference": float(np.abs(difference).mean()) if p.size else math.nan,
        "loa_lower": mean - 1.96 * sd,
        "loa_upper": mean + 1.96 * sd,
        "pearson_r": correlation(p, r, "pearson")[0],
        "spearman_rho": correlation(p, r, "spearman")[0],
        "icc_2_1": icc_2_1(np.c_[p, r]) if p.size else math.nan,
    }
