"""AUROC from ranks against the pairwise definition."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medhub.metrics.classification import auroc


def _pairwise(scores, labels):
    positives, negatives = scores[labels == 1], scores[labels == 0]
    wins = (positives[:, None] > negatives[None, :]) + 0.5 * (positives[:, None] == negatives[None, :])
    return float(wins.mean())


@pytest.mark.parametrize("seed", range(5))
def test_auroc_equals_the_pairwise_definition_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 80)
    scores = np.round(rng.normal(size=80) + labels, 1)  # rounding makes ties
    assert auroc(scores, labels) == pytest.approx(_pairwise(scores, labels), abs=1e-12)


def test_auroc_extremes_and_an_empty_class():
    assert auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert auroc([0.5, 0.5, 0.5], [0, 1, 1]) == 0.5
    assert math.isnan(auroc([0.1, 0.2], [1, 1]))
    with pytest.raises(ValueError, match="same length"):
        auroc([0.1, 0.2], [1])
