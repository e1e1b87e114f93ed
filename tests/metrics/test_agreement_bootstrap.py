"""Paired agreement and bootstrap summaries, against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from medhub.metrics.agreement import paired_agreement
from medhub.metrics.bootstrap import bootstrap_ci, summarize


def test_paired_agreement_matches_scipy_and_the_bland_altman_definition():
    rng = np.random.default_rng(3)
    ref = rng.gamma(2.0, 50.0, 40)
    pred = ref * 1.1 + rng.normal(0, 10, 40)
    result = paired_agreement(pred, ref)
    difference = pred - ref
    assert result["mean_difference"] == pytest.approx(difference.mean())
    assert result["loa_upper"] - result["loa_lower"] == pytest.approx(2 * 1.96 * difference.std(ddof=1))
    assert result["pearson_r"] == pytest.approx(stats.pearsonr(pred, ref)[0])
    assert result["spearman_rho"] == pytest.approx(stats.spearmanr(pred, ref)[0])
    assert 0.8 < result["icc_2_1"] < 1.0


def test_too_few_or_constant_pairs_give_nan_statistics_not_errors():
    result = paired_agreement([1.0, 1.0], [2.0, 3.0])
    assert result["mean_difference"] == pytest.approx(-1.5)
    assert math.isnan(result["pearson_r"]) and math.isnan(result["spearman_rho"])


def test_bootstrap_ci_covers_the_mean_and_is_reproducible():
    rng = np.random.default_rng(0)
    values = rng.normal(0.8, 0.05, 30)
    low, high = bootstrap_ci(values)
    assert low < values.mean() < high
    # the percentile interval of a mean is close to the normal one, mean +- 1.96 SE
    se = values.std(ddof=1) / np.sqrt(values.size)
    assert high - low == pytest.approx(2 * 1.96 * se, rel=0.15)
    assert bootstrap_ci(values) == (low, high)
    assert bootstrap_ci(values, np.median) != (low, high)


def test_summaries_skip_non_finite_values_and_handle_one_or_none():
    assert summarize([0.5, np.nan])["n"] == 1 and summarize([0.5])["ci_low"] == 0.5
    assert summarize([])["n"] == 0 and math.isnan(summarize([])["mean"])
