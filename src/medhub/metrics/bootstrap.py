"""Summaries of per-case metric values with percentile-bootstrap confidence intervals."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

#: Resamples of the bootstrap (the seed is fixed, so a summary is reproducible).
N_RESAMPLES = 2000


def bootstrap_ci(values: Sequence[float], statistic: Callable[[np.ndarray], float] = np.mean, *,
                 level: float = 0.95, n_resamples: int = N_RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of ``statistic`` over cases: resample the cases with replacement ``n_resamples``
    times and take the ``(1 ± level) / 2`` quantiles. Seeded, so the same values give the same interval.

    One value gives ``(value, value)``; none gives NaNs.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan
    if x.size == 1:
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    resamples = x[rng.integers(0, x.size, size=(n_resamples, x.size))]
    if statistic is np.mean:
        estimates = resamples.mean(axis=1)
    elif statistic is np.median:
        estimates = np.median(resamples, axis=1)
    else:
        estimates = np.array([statistic(resample) for resample in resamples])
    tail = (1 - level) / 2
    low, high = np.quantile(estimates, [tail, 1 - tail])
    return float(low), float(high)


def summarize(values: Sequence[float], *, level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """``n``, ``mean``, ``sd``, ``median``, ``min``, ``max`` and the bootstrap CI of the mean (``ci_low``,
    ``ci_high``) of finite per-case values."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return {"n": 0.0, "mean": math.nan, "sd": math.nan, "median": math.nan, "min": math.nan, "max": math.nan,
                "ci_low": math.nan, "ci_high": math.nan}
    low, high = bootstrap_ci(x, level=level, seed=seed)
    return {"n": float(x.size), "mean": float(x.mean()), "sd": float(x.std(ddof=1)) if x.size > 1 else 0.0,
            "median": float(np.median(x)), "min": float(x.min()), "max": float(x.max()), "ci_low": low,
            "ci_high": high}
