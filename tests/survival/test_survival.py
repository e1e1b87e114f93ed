"""`medhub survival` against lifelines run directly, on lifelines' bundled Rossi data and on a cac-style table."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter, KaplanMeierFitter
from lifelines.datasets import load_rossi
from lifelines.statistics import multivariate_logrank_test
from lifelines.utils import concordance_index

from medhub.errors import InputError
from medhub.survival.analysis import SurvivalAnalysis, cox_table
from tests.conftest import run_cli

ROSSI_TERMS = ["fin", "age", "race", "wexp", "mar", "paro", "prio"]
#: Rossi et al.'s recidivism data as analysed by Fox (2002), Cox model with Efron ties: the published coefficients.
PUBLISHED = {"fin": -0.379, "age": -0.0574, "race": 0.3139, "wexp": -0.1498, "mar": -0.4337, "paro": -0.0849,
             "prio": 0.0915}


def test_cox_equals_lifelines_and_the_published_rossi_coefficients():
    rossi = load_rossi()
    table = cox_table(rossi, "week", "arrest", ROSSI_TERMS).set_index("term")
    direct = CoxPHFitter().fit(rossi, duration_col="week", event_col="arrest").summary
    for term in ROSSI_TERMS:
        assert table.loc[term, "coef"] == pytest.approx(direct.loc[term, "coef"], abs=1e-6)
        assert table.loc[term, "hr_low"] == pytest.approx(direct.loc[term, "exp(coef) lower 95%"], abs=1e-6)
        assert table.loc[term, "p"] == pytest.approx(direct.loc[term, "p"], abs=1e-6)
        assert table.loc[term, "coef"] == pytest.approx(PUBLISHED[term], abs=5e-4)
        sd = rossi[term].std()
        assert table.loc[term, "hr_per_sd"] == pytest.approx(np.exp(direct.loc[term, "coef"] * sd), abs=1e-6)


def test_the_command_on_rossi_writes_lifelines_figures(tmp_path):
    rossi = load_rossi()
    rossi.to_csv(tmp_path / "rossi.csv", index=False)
    proc = run_cli("survival", str(tmp_path / "rossi.csv"), "--time", "week", "--event", "arrest", "--score", "prio",
                   "--covariates", ",".join(t for t in ROSSI_TERMS if t != "prio"), "--resamples", "50")
    assert proc.returncode == 0, proc.stderr
    written = pd.read_csv(tmp_path / "rossi_survival" / "cox.csv").set_index("term")
    direct = CoxPHFitter().fit(rossi, duration_col="week", event_col="arrest").summary
    for term in ROSSI_TERMS:
        assert written.loc[term, "coef"] == pytest.approx(direct.loc[term, "coef"], abs=1e-6)
        assert written.loc[term, "hr_high"] == pytest.approx(direct.loc[term, "exp(coef) upper 95%"], abs=1e-6)
    assert set(pd.read_csv(tmp_path / "rossi_survival" / "groups.csv").group) == {"Q1", "Q2", "Q3", "Q4"}


def test_groups_km_logrank_concordance_and_added_value_equal_lifelines():
    rossi = load_rossi()
    report = SurvivalAnalysis(time="week", event="arrest", score="prio", covariates=["age"], groups="wexp",
                              added_score="fin", n_resamples=200).fit(rossi)
    assert report.concordance["c_index"] == pytest.approx(concordance_index(rossi.week, -rossi.prio, rossi.arrest),
                                                          abs=1e-9)
    assert report.concordance["c_index_low"] < report.concordance["c_index"] < report.concordance["c_index_high"]
    direct = multivariate_logrank_test(rossi.week, rossi.wexp.astype(str), rossi.arrest)
    assert report.logrank["chi2"] == pytest.approx(direct.test_statistic, abs=1e-6)
    km = KaplanMeierFitter().fit(rossi.week[rossi.wexp == 1], rossi.arrest[rossi.wexp == 1])
    np.testing.assert_allclose(report.km_curves["1"]["survival"].to_numpy(), km.survival_function_.iloc[:, 0],
                               atol=1e-9)
    hazards = report.group_hazards.set_index("group")
    hr = CoxPHFitter().fit(rossi[["week", "arrest", "wexp"]], "week", "arrest").summary.loc["wexp", "exp(coef)"]
    assert hazards.loc["1", "hr"] == pytest.approx(hr, abs=1e-6) and hazards.loc["0", "reference"]
    base = CoxPHFitter().fit(rossi[["week", "arrest", "prio", "age"]], "week", "arrest")
    full = CoxPHFitter().fit(rossi[["week", "arrest", "prio", "age", "fin"]], "week", "arrest")
    assert report.added_value["lr_statistic"] == pytest.approx(2 * (full.log_likelihood_ - base.log_likelihood_),
                                                               abs=1e-6)


def _cac_cohort(n: int = 400, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A cac batch's results table and a SIMULATED outcomes table: exponential event times whose hazard doubles
    with each Agatston category, administrative censoring at 10 years."""
    rng = np.random.default_rng(seed)
    agatston = np.where(rng.random(n) < 0.3, 0.0, np.exp(rng.normal(4, 1.6, n)))
    category = pd.cut(agatston, [-1, 0, 99.999, 399.999, np.inf], labels=["0", "1-99", "100-399", ">=400"])
    hazard = 0.02 * 2.0 ** category.codes
    time = rng.exponential(1 / hazard)
    results = pd.DataFrame({"case_id": [f"scan{i:04d}" for i in range(n)], "status": "ok",
                            "agatston": agatston.round(1), "risk_category": category.astype(str)})
    outcomes = pd.DataFrame({"case_id": results.case_id, "years": np.minimum(time, 10.0).round(3),
                             "death": (time < 10).astype(int), "age": rng.normal(60, 8, n).round(1)})
    return results, outcomes


def test_a_cac_batch_table_joined_with_outcomes_gives_hazard_ratios_by_risk_category(tmp_path):
    results, outcomes = _cac_cohort()
    results.to_csv(tmp_path / "results.csv", index=False)
    outcomes.to_csv(tmp_path / "outcomes.csv", index=False)

    proc = run_cli("survival", str(tmp_path / "results.csv"), "--join", str(tmp_path / "outcomes.csv"),
                   "--time", "years", "--event", "death", "--score", "agatston", "--covariates", "age",
                   "--groups", "risk_category", "-o", str(tmp_path / "out"), "--resamples", "100")

    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "out" / "survival.json").read_text())
    hazards = {row["group"]: row["hr"] for row in summary["group_hazards"]}
    assert list(hazards) == ["0", "1-99", "100-399", ">=400"]  # by the first number in each name
    assert hazards["0"] == 1.0 and 1.3 < hazards["1-99"] < 3.5 and hazards[">=400"] > 4  # simulated: 2, 4, 8
    assert summary["logrank"]["p"] < 1e-6
    assert (tmp_path / "out" / "km.png").stat().st_size > 10_000
    assert "Kaplan" in (tmp_path / "out" / "report.md").read_text()


def test_bad_tables_are_refused_in_one_line(tmp_path):
    rossi = load_rossi()
    with pytest.raises(InputError, match="weeks"):
        SurvivalAnalysis(time="weeks", event="arrest", score="prio").fit(rossi)
    bad = rossi.assign(arrest=rossi.arrest * 2)
    with pytest.raises(InputError, match="0 \\(censored\\) or 1"):
        SurvivalAnalysis(time="week", event="arrest", score="prio").fit(bad)
    proc = run_cli("survival", str(tmp_path / "missing.csv"), "--time", "t", "--event", "e", "--score", "s",
                   "-o", str(tmp_path / "o"))
    assert proc.returncode != 0 and "file not found" in proc.stderr and "Traceback" not in proc.stderr
