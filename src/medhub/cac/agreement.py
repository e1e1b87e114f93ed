"""Agreement between predicted and reference calcium scores (Agatston, unitless).

:func:`agreement` reports, for paired scores:

* Spearman ρ on the scores and Pearson r on ``log(1 + score)`` (CAC scores are heavily right-skewed; the log makes
  Pearson meaningful), both with scipy's two-sided p-values;
* ICC(2,1): two-way random effects, absolute agreement, single rater (Shrout & Fleiss 1979; McGraw & Wong's
  ICC(A,1)), computed from the two-way ANOVA mean squares of the ``n × 2`` table of scores:
  ``(MSR − MSE) / (MSR + (k − 1)·MSE + k·(MSC − MSE)/n)`` with ``k = 2``;
* Bland–Altman on the raw scores: mean difference (pred − ref) and 95 % limits of agreement ``mean ± 1.96·SD``
  (SD with ``n − 1``); :func:`bland_altman_plot` draws it;
* for each risk-category scheme of :mod:`medhub.cac.scoring` (``standard``, ``deepcac``): the 4×4 confusion
  matrix (rows = reference, columns = prediction, categories lowest first), the proportion in agreement and
  Cohen's κ unweighted, linearly and quadratically weighted (weights ``|i−j|/(K−1)`` and ``((i−j)/(K−1))²``).

Undefined statistics (a constant input, every case in one category) are NaN, written as ``null`` in JSON. The
generic statistics (ICC, κ, correlations) live in :mod:`medhub.metrics.agreement`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medhub.cac.scoring import CATEGORY_SCHEMES, risk_category
from medhub.io.files import atomic_path
from medhub.metrics.agreement import cohen_kappa, confusion_matrix, correlation, icc_2_1

__all__ = ["AgreementReport", "CategoryAgreement", "agreement", "bland_altman_plot", "category_agreement",
           "cohen_kappa", "confusion_matrix", "icc_2_1"]


@dataclass(frozen=True)
class CategoryAgreement:
    """Agreement of risk categories under one scheme; ``confusion[r][p]`` counts cases with reference category
    ``labels[r]`` and predicted category ``labels[p]``."""

    scheme: str
    labels: tuple[str, ...]
    confusion: tuple[tuple[int, ...], ...]
    proportion_agreement: float
    kappa: float
    kappa_linear: float
    kappa_quadratic: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "scheme": self.scheme,
            "labels": list(self.labels),
            "confusion_rows_reference": [list(row) for row in self.confusion],
            "proportion_agreement": self.proportion_agreement,
            "kappa": self.kappa,
            "kappa_linear": self.kappa_linear,
            "kappa_quadratic": self.kappa_quadratic,
        }


@dataclass(frozen=True)
class AgreementReport:
    """Agreement statistics of paired scores; see the module docstring for definitions."""

    n: int
    ids: tuple[str, ...] | None
    pred: tuple[float, ...]
    ref: tuple[float, ...]
    spearman_rho: float
    spearman_p: float
    pearson_log_r: float
    pearson_log_p: float
    icc_2_1: float
    mean_difference: float
    sd_difference: float
    loa_lower: float
    loa_upper: float
    categories: dict[str, CategoryAgreement]

    def to_dict(self, cases: bool = False) -> dict[str, Any]:
        """Summary statistics (flat scalars, then per-scheme category agreement); ``cases`` adds the pairs."""
        data: dict[str, Any] = {
            "n": self.n,
            "spearman_rho": self.spearman_rho,
            "spearman_p": self.spearman_p,
            "pearson_log1p_r": self.pearson_log_r,
            "pearson_log1p_p": self.pearson_log_p,
            "icc_2_1": self.icc_2_1,
            "bland_altman_mean_difference": self.mean_difference,
            "bland_altman_sd_difference": self.sd_difference,
            "bland_altman_loa_lower": self.loa_lower,
            "bland_altman_loa_upper": self.loa_upper,
            "categories": {name: c.to_dict() for name, c in self.categories.items()},
        }
        if cases:
            ids = self.ids or tuple(str(n) for n in range(self.n))
            data["cases"] = [{"id": i, "pred": p, "ref": r} for i, p, r in zip(ids, self.pred, self.ref, strict=True)]
        return data


def category_agreement(pred: Sequence[float], ref: Sequence[float], scheme: str) -> CategoryAgreement:
    labels = CATEGORY_SCHEMES[scheme]
    code = {label: number for number, label in enumerate(labels)}
    pred_codes = np.asarray([code[risk_category(s, scheme)] for s in pred], dtype=np.int64)
    ref_codes = np.asarray([code[risk_category(s, scheme)] for s in ref], dtype=np.int64)
    confusion = confusion_matrix(ref_codes, pred_codes, len(labels))
    return CategoryAgreement(
        scheme=scheme,
        labels=labels,
        confusion=tuple(tuple(int(v) for v in row) for row in confusion),
        proportion_agreement=float(np.trace(confusion) / confusion.sum()),
        kappa=cohen_kappa(confusion, "unweighted"),
        kappa_linear=cohen_kappa(confusion, "linear"),
        kappa_quadratic=cohen_kappa(confusion, "quadratic"),
    )


def agreement(pred: Sequence[float], ref: Sequence[float], ids: Sequence[str] | None = None) -> AgreementReport:
    """Agreement statistics of paired calcium scores (``pred[i]`` and ``ref[i]`` are the same case).

    Scores must be finite and ``>= 0``; at least 2 pairs. Raises :class:`ValueError` otherwise.
    """
    p = np.asarray(pred, dtype=np.float64)
    r = np.asarray(ref, dtype=np.float64)
    if p.ndim != 1 or p.shape != r.shape:
        raise ValueError(f"pred and ref must be 1D and the same length, got {p.shape} and {r.shape}")
    if ids is not None and len(ids) != len(p):
        raise ValueError(f"{len(ids)} ids for {len(p)} pairs")
    if len(p) < 2:
        raise ValueError(f"need at least 2 pairs, got {len(p)}")
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(r)) and p.min() >= 0 and r.min() >= 0):
        raise ValueError("scores must be finite numbers >= 0")

    rho, rho_p = correlation(p, r, "spearman")
    log_r, log_p = correlation(np.log1p(p), np.log1p(r), "pearson")
    difference = p - r
    mean_difference = float(difference.mean())
    sd_difference = float(difference.std(ddof=1))
    return AgreementReport(
        n=len(p),
        ids=tuple(str(i) for i in ids) if ids is not None else None,
        pred=tuple(float(v) for v in p),
        ref=tuple(float(v) for v in r),
        spearman_rho=rho,
        spearman_p=rho_p,
        pearson_log_r=log_r,
        pearson_log_p=log_p,
        icc_2_1=icc_2_1(np.c_[p, r]),
        mean_difference=mean_difference,
        sd_difference=sd_difference,
        loa_lower=mean_difference - 1.96 * sd_difference,
        loa_upper=mean_difference + 1.96 * sd_difference,
        categories={scheme: category_agreement(p, r, scheme) for scheme in CATEGORY_SCHEMES},
    )


def bland_altman_plot(report: AgreementReport, path: str | Path, title: str = "Agatston: prediction vs reference"
                      ) -> Path:
    """Write a Bland–Altman PNG (difference pred − ref against the pair mean), atomically."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    p, r = np.asarray(report.pred), np.asarray(report.ref)
    figure = Figure(figsize=(6, 4.5), dpi=120)
    axes = figure.subplots()
    axes.scatter((p + r) / 2, p - r, s=12, alpha=0.7, color="tab:blue")
    for value, style, text in ((report.mean_difference, "-", "mean"), (report.loa_lower, "--", "−1.96 SD"),
                               (report.loa_upper, "--", "+1.96 SD")):
        axes.axhline(value, color="tab:red", linestyle=style, linewidth=1)
        axes.annotate(f"{text} {value:.1f}", xy=(1, value), xycoords=("axes fraction", "data"), ha="right",
                      va="bottom", fontsize=8, color="tab:red")
    axes.set_xlabel("mean of prediction and reference (Agatston)")
    axes.set_ylabel("prediction − reference (Agatston)")
    axes.set_title(f"{title} (n={report.n})")
    figure.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    return path
