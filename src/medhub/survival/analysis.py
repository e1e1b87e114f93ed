"""Survival analytics of a risk score: Cox models, groups with Kaplan–Meier curves, concordance, added value.

Fitter-style, on a :class:`pandas.DataFrame` with one row per subject: a follow-up ``time`` (any unit, > 0), an
``event`` indicator (1 = the event happened at ``time``, 0 = censored there) and a risk ``score`` (higher = worse,
e.g. a predicted risk or an Agatston score), optionally covariates. Everything is fitted with lifelines (Cox
partial likelihood with Efron's ties, as lifelines does; Kaplan–Meier; log-rank), so the figures equal
lifelines' own to floating-point precision.

:class:`SurvivalAnalysis` holds the settings; :meth:`SurvivalAnalysis.fit` returns a :class:`SurvivalReport`
with every table; :func:`write_report` writes them as CSV and Markdown with the Kaplan–Meier plot.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medhub.errors import InputError


@dataclass
class SurvivalReport:
    """The tables of one analysis (pandas DataFrames, one row per term or group) and the fitted summaries."""

    n: int
    events: int
    cox: pd.DataFrame
    concordance: dict[str, float]
    groups: pd.DataFrame | None = None
    group_hazards: pd.DataFrame | None = None
    logrank: dict[str, float] | None = None
    added_value: dict[str, float] | None = None
    km_curves: dict[str, pd.DataFrame] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class SurvivalAnalysis:
    """What to analyse: the columns of a table, the grouping, a second score, the bootstrap.

    ``groups`` is ``"quartile"`` (quartiles of ``score``, Q1 lowest), ``None``, or a column whose categories make
    the groups (in ``group_order`` if given, else sorted; the first is the reference of the hazard ratios).
    ``added_score`` is a second score whose added value over ``score`` + covariates is tested (likelihood ratio,
    ΔC-index).
    """

    time: str
    event: str
    score: str
    covariates: Sequence[str] = ()
    groups: str | None = "quartile"
    group_order: Sequence[str] | None = None
    added_score: str | None = None
    n_resamples: int = 1000
    seed: int = 0

    def _frame(self, table: pd.DataFrame) -> pd.DataFrame:
        columns = [self.time, self.event, self.score, *self.covariates]
        if self.added_score:
            columns.append(self.added_score)
        if self.groups not in (None, "quartile"):
            columns.append(self.groups)
        missing = [c for c in dict.fromkeys(columns) if c not in table.columns]
        if missing:
            raise InputError(None, f"column(s) {', '.join(missing)} not in the table (it has "
                             f"{', '.join(map(str, table.columns))})", code="bad-input")
        frame = table[list(dict.fromkeys(columns))].dropna()
        if frame.empty:
            raise InputError(None, "no complete rows (every row misses a value)", code="bad-input")
        numeric = [self.time, self.event, self.score, *self.covariates] + ([self.added_score] if self.added_score
                                                                           else [])
        for column in numeric:
            try:
                frame[column] = pd.to_numeric(frame[column])
            except (ValueError, TypeError) as e:
                raise InputError(None, f"column {column!r} is not numeric", code="bad-input") from e
        if (frame[self.time] <= 0).any():
            raise InputError(None, f"column {self.time!r} has times <= 0", code="bad-input")
        if not frame[self.event].isin([0, 1]).all():
            raise InputError(None, f"column {self.event!r} must hold 0 (censored) or 1 (event)", code="bad-input")
        return frame

    def fit(self, table: pd.DataFrame) -> SurvivalReport:
        """Every table of the analysis on ``table`` (rows with a missing value in a used column are dropped)."""
        frame = self._frame(table)
        report = SurvivalReport(n=len(frame), events=int(frame[self.event].sum()),
                                cox=cox_table(frame, self.time, self.event, [self.score, *self.covariates]),
                                concordance=concordance(frame, self.time, self.event, self.score,
                                                        n_resamples=self.n_resamples, seed=self.seed),
                                settings={k: (list(v) if isinstance(v, tuple) else v) for k, v in
                                          self.__dict__.items()})
        if self.groups is not None:
            labels = _group_labels(frame, self.score, self.groups, self.group_order)
            report.groups, report.km_curves, report.logrank, report.group_hazards = group_analysis(
                frame, self.time, self.event, labels, self.group_order)
        if self.added_score:
            report.added_value = added_value(frame, self.time, self.event, [self.score, *self.covariates],
                                             self.added_score)
        return report


def cox_table(frame: pd.DataFrame, time: str, event: str, terms: Sequence[str]) -> pd.DataFrame:
    """Multivariable Cox model of ``terms``: per term the coefficient, HR per unit with its 95 % CI and p, the
    term's SD, and the HR per SD with its CI (``exp(coef * sd)``)."""
    from lifelines import CoxPHFitter

    fitter = CoxPHFitter()
    fitter.fit(frame[[time, event, *terms]], duration_col=time, event_col=event)
    summary = fitter.summary
    rows = []
    for term in terms:
        coef, se = float(summary.loc[term, "coef"]), float(summary.loc[term, "se(coef)"])
        low, high = float(summary.loc[term, "coef lower 95%"]), float(summary.loc[term, "coef upper 95%"])
        sd = float(frame[term].std(ddof=1))
        rows.append({"term": term, "coef": coef, "se": se, "hr": math.exp(coef), "hr_low": math.exp(low),
                     "hr_high": math.exp(high), "p": float(summary.loc[term, "p"]), "sd": sd,
                     "hr_per_sd": math.exp(coef * sd), "hr_per_sd_low": math.exp(low * sd),
                     "hr_per_sd_high": math.exp(high * sd)})
    return pd.DataFrame(rows)


def concordance(frame: pd.DataFrame, time: str, event: str, score: str, *, n_resamples: int = 1000,
                seed: int = 0) -> dict[str, float]:
    """Harrell's C-index of ``score`` (higher score = earlier event) with a percentile bootstrap 95 % CI over
    subjects (seeded). A resample without a comparable pair (no event before another subject's time) is
    skipped; ``resamples`` counts those used, and the C-index is NaN when the data itself has no such pair."""
    from lifelines.utils import concordance_index

    def harrell(pick: np.ndarray | slice) -> float | None:
        try:
            return float(concordance_index(t[pick], -s[pick], e[pick]))
        except ZeroDivisionError:  # lifelines: "No admissable pairs in the dataset"
            return None

    t, e, s = (frame[c].to_numpy(dtype=np.float64) for c in (time, event, score))
    whole = harrell(slice(None))
    value = math.nan if whole is None else whole
    rng = np.random.default_rng(seed)
    estimates = []
    for _ in range(n_resamples):
        pick = rng.integers(0, len(t), len(t))
        if e[pick].sum() == 0:
            continue
        estimate = harrell(pick)
        if estimate is not None:
            estimates.append(estimate)
    low, high = (np.quantile(estimates, [0.025, 0.975]) if estimates else (math.nan, math.nan))
    return {"c_index": value, "c_index_low": float(low), "c_index_high": float(high), "resamples": len(estimates)}


def _group_labels(frame: pd.DataFrame, score: str, groups: str, order: Sequence[str] | None) -> pd.Series:
    if groups == "quartile":
        quartiles = pd.qcut(frame[score].rank(method="first"), 4, labels=["Q1", "Q2", "Q3", "Q4"])
        return quartiles.astype(str)
    labels = frame[groups].astype(str)
    if order:
        unknown = sorted(set(labels) - set(order))
        if unknown:
            raise InputError(None, f"groups {unknown} of {groups!r} are not in the given order", code="bad-input")
    return labels


def group_analysis(frame: pd.DataFrame, time: str, event: str, labels: pd.Series,
                   order: Sequence[str] | None = None
                   ) -> tuple[pd.DataFrame, dict[str, pd.DataFrame], dict[str, float], pd.DataFrame]:
    """Per group: size, events, median survival (Kaplan–Meier); the KM curves; the log-rank test across groups;
    and Cox HRs of each group against the first (lowest) one."""
    from lifelines import CoxPHFitter, KaplanMeierFitter
    from lifelines.statistics import multivariate_logrank_test

    names = list(order) if order else sorted(labels.unique(), key=_natural_key)
    rows, curves = [], {}
    for name in names:
        chosen = labels == name
        if not chosen.any():
            continue
        km = KaplanMeierFitter().fit(frame.loc[chosen, time], frame.loc[chosen, event], label=name)
        curves[name] = km.survival_function_.reset_index().rename(columns={"timeline": "time", name: "survival"})
        rows.append({"group": name, "n": int(chosen.sum()), "events": int(frame.loc[chosen, event].sum()),
                     "median_survival": float(km.median_survival_time_)})
    test = multivariate_logrank_test(frame[time], labels, frame[event])
    present = [r["group"] for r in rows]
    dummies = pd.DataFrame({f"group={g}": (labels == g).astype(float) for g in present[1:]}, index=frame.index)
    fitter = CoxPHFitter().fit(pd.concat([frame[[time, event]], dummies], axis=1), duration_col=time,
                               event_col=event)
    summary = fitter.summary
    hazards = [{"group": present[0], "hr": 1.0, "hr_low": math.nan, "hr_high": math.nan, "p": math.nan,
                "reference": True}]
    for g in present[1:]:
        term = f"group={g}"
        hazards.append({"group": g, "hr": float(summary.loc[term, "exp(coef)"]),
                        "hr_low": float(summary.loc[term, "exp(coef) lower 95%"]),
                        "hr_high": float(summary.loc[term, "exp(coef) upper 95%"]), "p": float(summary.loc[term, "p"]),
                        "reference": False})
    return (pd.DataFrame(rows), curves, {"chi2": float(test.test_statistic), "df": len(present) - 1,
                                         "p": float(test.p_value)}, pd.DataFrame(hazards))


def _natural_key(label: str) -> tuple:
    """Sort ``Q2`` before ``Q10`` and ``1-99`` before ``100-399``: by the first number in the label, then text."""
    import re

    number = re.search(r"-?\d+(?:\.\d+)?", label)
    return (float(number.group()) if number else math.inf, label)


def added_value(frame: pd.DataFrame, time: str, event: str, base_terms: Sequence[str], extra: str) -> dict[str, float]:
    """Does ``extra`` add to ``base_terms``? The likelihood-ratio test of the nested Cox models (1 degree of
    freedom) and the change of the C-index of their linear predictors."""
    from lifelines import CoxPHFitter
    from lifelines.utils import concordance_index
    from scipy.stats import chi2

    base = CoxPHFitter().fit(frame[[time, event, *base_terms]], duration_col=time, event_col=event)
    full = CoxPHFitter().fit(frame[[time, event, *base_terms, extra]], duration_col=time, event_col=event)
    statistic = 2 * (full.log_likelihood_ - base.log_likelihood_)
    c_base = concordance_index(frame[time], -base.predict_partial_hazard(frame), frame[event])
    c_full = concordance_index(frame[time], -full.predict_partial_hazard(frame), frame[event])
    return {"lr_statistic": float(statistic), "df": 1, "p": float(chi2.sf(statistic, 1)),
            "c_index_base": float(c_base), "c_index_full": float(c_full), "delta_c_index": float(c_full - c_base)}


def plot_km(curves: dict[str, pd.DataFrame], path: str | Path, *, title: str = "", time_label: str = "time") -> Path:
    """The Kaplan–Meier curves as a step plot (PNG), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medhub.io.files import atomic_path

    figure, axis = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    for name, curve in curves.items():
        axis.step(curve["time"], curve["survival"], where="post", label=name)
    axis.set_ylim(0, 1.02)
    axis.set_xlabel(time_label)
    axis.set_ylabel("survival probability")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(title="group")
    figure.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)
    return path


def _markdown_table(frame: pd.DataFrame) -> list[str]:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "–" if math.isnan(value) else f"{value:.4g}"
        return str(value)

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return lines


def write_report(report: SurvivalReport, folder: str | Path, *, title: str = "Survival analysis") -> dict[str, Path]:
    """``cox.csv``, ``groups.csv``, ``group_hazards.csv``, ``km.png``, ``report.md`` and ``survival.json`` in
    ``folder`` (each written atomically)."""
    import json

    from medhub.io import records
    from medhub.io.files import write_text_atomic

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    settings = report.settings
    written = {"cox": records.write_csv(folder / "cox.csv", report.cox.to_dict("records"))}
    c = report.concordance
    lines = [f"# {title}", "", f"{report.n} subjects, {report.events} events; time `{settings['time']}`, event "
             f"`{settings['event']}`, score `{settings['score']}`.", "",
             "## Multivariable Cox model (hazard ratio per unit and per SD, 95 % CI)", "", *_markdown_table(
                 report.cox[["term", "hr", "hr_low", "hr_high", "p", "sd", "hr_per_sd", "hr_per_sd_low",
                             "hr_per_sd_high"]]), "",
             f"Harrell's C-index of `{settings['score']}`: {c['c_index']:.4f} (95 % bootstrap CI "
             f"{c['c_index_low']:.4f}–{c['c_index_high']:.4f}, {c['resamples']} resamples)."]
    if report.groups is not None and report.group_hazards is not None and report.logrank is not None:
        written["groups"] = records.write_csv(folder / "groups.csv", report.groups.to_dict("records"))
        written["group_hazards"] = records.write_csv(folder / "group_hazards.csv",
                                                     report.group_hazards.to_dict("records"))
        written["km"] = plot_km(report.km_curves, folder / "km.png", title=f"Kaplan–Meier by {settings['groups']}",
                                time_label=settings["time"])
        merged = report.groups.merge(report.group_hazards.drop(columns="reference"), on="group")
        lines += ["", f"## Groups ({settings['groups']}; hazard ratios against {merged['group'].iloc[0]})", "",
                  *_markdown_table(merged), "", f"Log-rank test across groups: χ² = {report.logrank['chi2']:.3f}, "
                  f"df = {report.logrank['df']}, p = {report.logrank['p']:.4g}.", "", "![Kaplan–Meier](km.png)"]
    if report.added_value is not None:
        a = report.added_value
        lines += ["", f"## Added value of `{settings['added_score']}`", "",
                  f"Likelihood-ratio test: χ² = {a['lr_statistic']:.3f} (1 df), p = {a['p']:.4g}; C-index "
                  f"{a['c_index_base']:.4f} → {a['c_index_full']:.4f} (Δ {a['delta_c_index']:+.4f})."]
    written["md"] = write_text_atomic(folder / "report.md", "\n".join(lines) + "\n")
    summary = {"kind": "medhub-survival", "n": report.n, "events": report.events, "settings": settings,
               "cox": report.cox.to_dict("records"), "concordance": report.concordance,
               "groups": None if report.groups is None else report.groups.to_dict("records"),
               "group_hazards": None if report.group_hazards is None else report.group_hazards.to_dict("records"),
               "logrank": report.logrank, "added_value": report.added_value, "finished_utc": records.utc_now()}
    written["json"] = records.write_json(folder / "survival.json", json.loads(json.dumps(summary, default=float)))
    return written
