"""Agreement statistics, cross-checked against scikit-learn, pingouin and scipy, and the agreement CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from typer.testing import CliRunner

from medhub.cac.agreement import agreement, bland_altman_plot, cohen_kappa, confusion_matrix, icc_2_1
from medhub.cac.cli import cac_app
from medhub.errors import InputError


def random_scores(seed: int, n: int = 80) -> tuple[np.ndarray, np.ndarray]:
    """Skewed CAC-like scores with a quarter zeros, and a noisy prediction of them."""
    rng = np.random.default_rng(seed)
    ref = rng.lognormal(4.0, 1.8, n) * (rng.random(n) > 0.25)
    pred = np.clip(ref * rng.lognormal(0.0, 0.4, n) + rng.normal(0, 15, n), 0, None)
    return pred, ref


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("weights", "sklearn_weights"), [("unweighted", None), ("linear", "linear"),
                                                         ("quadratic", "quadratic")])
def test_kappa_matches_sklearn(seed, weights, sklearn_weights):
    from sklearn.metrics import cohen_kappa_score

    rng = np.random.default_rng(seed)
    ref = rng.integers(0, 4, 60)
    pred = np.where(rng.random(60) < 0.6, ref, rng.integers(0, 4, 60))
    ours = cohen_kappa(confusion_matrix(ref, pred, 4), weights)
    theirs = cohen_kappa_score(ref, pred, labels=[0, 1, 2, 3], weights=sklearn_weights)
    assert ours == pytest.approx(theirs, abs=1e-10)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_icc_matches_pingouin(seed):
    import pingouin

    pred, ref = random_scores(seed)
    n = len(pred)
    long = pd.DataFrame({"case": np.tile(np.arange(n), 2), "rater": np.repeat(["pred", "ref"], n),
                         "score": np.r_[pred, ref]})
    table = pingouin.intraclass_corr(data=long, targets="case", raters="rater", ratings="score")
    # pingouin < 0.6 names ICC(2,1) "ICC2"; later versions "ICC(A,1)" (absolute agreement, single rater).
    row = table[table["Type"].isin(["ICC2", "ICC(A,1)"])]
    expected = float(row["ICC"].iloc[0])
    assert icc_2_1(np.c_[pred, ref]) == pytest.approx(expected, abs=1e-10)
    assert agreement(pred, ref).icc_2_1 == pytest.approx(expected, abs=1e-10)


@pytest.mark.parametrize("seed", [0, 3])
def test_correlations_bland_altman_and_categories(seed):
    pred, ref = random_scores(seed)
    report = agreement(pred, ref)
    assert report.spearman_rho == pytest.approx(stats.spearmanr(pred, ref).statistic, abs=1e-12)
    assert report.pearson_log_r == pytest.approx(stats.pearsonr(np.log1p(pred), np.log1p(ref)).statistic, abs=1e-12)
    difference = pred - ref
    assert report.mean_difference == pytest.approx(difference.mean(), abs=1e-9)
    assert report.loa_upper - report.loa_lower == pytest.approx(2 * 1.96 * difference.std(ddof=1), abs=1e-9)
    for scheme in ("standard", "deepcac"):
        categories = report.categories[scheme]
        confusion = np.asarray(categories.confusion)
        assert confusion.shape == (4, 4)
        assert confusion.sum() == len(pred)
        # rows are the reference: row sums count reference categories (zeros are category "0").
        assert confusion[0].sum() == int(np.sum(ref == 0))
        assert confusion[:, 0].sum() == int(np.sum(pred == 0))
        assert categories.proportion_agreement == pytest.approx(np.trace(confusion) / len(pred))


def test_perfect_agreement_and_undefined_statistics():
    scores = [0.0, 5.0, 150.0, 800.0]
    report = agreement(scores, scores)
    assert report.icc_2_1 == pytest.approx(1.0)
    assert report.categories["standard"].kappa == pytest.approx(1.0)
    constant = agreement([0.0, 0.0, 0.0], [0.0, 0.0, 0.0])
    assert np.isnan(constant.spearman_rho) and np.isnan(constant.categories["standard"].kappa)
    assert json.loads(json.dumps(constant.to_dict(), allow_nan=True))["n"] == 3
    with pytest.raises(ValueError):
        agreement([1.0, -2.0], [1.0, 2.0])


def test_bland_altman_plot_is_a_png(tmp_path):
    pred, ref = random_scores(5, 30)
    path = bland_altman_plot(agreement(pred, ref), tmp_path / "ba.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["ba.png"]


def write_csvs(tmp_path: Path) -> tuple[Path, Path]:
    pred, ref = random_scores(11, 20)
    ids = [f"case{n:02d}" for n in range(20)]
    pd.DataFrame({"case_id": [*ids, "extra"], "agatston": [*pred, 1.0]}).to_csv(tmp_path / "pred.csv", index=False)
    pd.DataFrame({"case_id": ids[::-1], "agatston": ref[::-1]}).to_csv(tmp_path / "ref.csv", index=False)
    return tmp_path / "pred.csv", tmp_path / "ref.csv"


def test_cli_agreement(tmp_path):
    pred_csv, ref_csv = write_csvs(tmp_path)
    result = CliRunner().invoke(cac_app, ["agreement", "--pred", str(pred_csv), "--ref", str(ref_csv),
                                          "--plot", str(tmp_path / "ba.png"), "--json", str(tmp_path / "a.json")])
    assert result.exit_code == 0, result.output
    assert "ICC(2,1)" in result.output and "1 only in pred.csv" in result.output
    data = json.loads((tmp_path / "a.json").read_text())
    pred, ref = random_scores(11, 20)
    assert data["n"] == 20 and data["unmatched_pred"] == 1 and data["unmatched_ref"] == 0
    assert data["icc_2_1"] == pytest.approx(icc_2_1(np.c_[pred, ref]), abs=1e-10)
    assert (tmp_path / "ba.png").stat().st_size > 0


@pytest.mark.parametrize(("pred_text", "message"), [
    ("id,agatston\na,1\nb,2\n", "no column 'case_id'"),
    ("case_id,agatston\na,1\nb,oops\n", "line 3: agatston 'oops' is not a number"),
    ("case_id,agatston\nx,1\ny,2\n", "0 case_id value(s) in common"),
])
def test_cli_agreement_refuses_bad_csv(tmp_path, pred_text, message):
    (tmp_path / "pred.csv").write_text(pred_text)
    (tmp_path / "ref.csv").write_text("case_id,agatston\na,1\nb,2\n")
    result = CliRunner().invoke(cac_app, ["agreement", "--pred", str(tmp_path / "pred.csv"),
                                          "--ref", str(tmp_path / "ref.csv")])
    assert isinstance(result.exception, InputError)
    assert str(result.exception).startswith(str(tmp_path / "pred.csv"))
    assert message in str(result.exception) and "\n" not in str(result.exception)


def _cac_mounted() -> bool:
    probe = subprocess.run([sys.executable, "-m", "medhub", "cac", "--help"], capture_output=True, text=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _cac_mounted(), reason="medhub cac is not mounted in medhub.cli yet")
def test_cli_agreement_subprocess(tmp_path):
    pred_csv, ref_csv = write_csvs(tmp_path)
    ok = subprocess.run([sys.executable, "-m", "medhub", "cac", "agreement", "--pred", str(pred_csv), "--ref",
                         str(ref_csv), "--json", str(tmp_path / "a.json")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert json.loads((tmp_path / "a.json").read_text())["n"] == 20
    bad = subprocess.run([sys.executable, "-m", "medhub", "cac", "agreement", "--pred", str(pred_csv), "--ref",
                          str(ref_csv), "--score-col", "missing"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1 and "no column 'missing'" in bad.stderr
