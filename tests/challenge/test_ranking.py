"""Ranking as FOMO25 ranks: metric ranks with shared ties, task rank = their mean, overall = mean task rank."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medhub.challenge.leaderboard import rank_metric_table
from medhub.challenge.ranking import MetricColumn, rank_table, rank_tiers, rank_values
from medhub.challenge.tasks import FOMO25, load_task_set
from medhub.errors import InputError
from tests.conftest import run_cli


def test_ties_share_the_best_rank_of_their_group_and_missing_ranks_last():
    assert rank_values([0.9, 0.8, 0.8, 0.7], higher_is_better=True).tolist() == [1, 2, 2, 4]
    assert rank_values([5.0, 3.0, math.nan, 3.0], higher_is_better=False).tolist() == [3, 1, 5, 1]


def test_task_and_overall_ranks_by_hand():
    columns = [MetricColumn("t1_auroc", "t1", True), MetricColumn("t2_dice", "t2", True),
               MetricColumn("t2_nsd", "t2", True), MetricColumn("t3_mae", "t3", False)]
    table = {"t1_auroc": [0.8, 0.85, 0.7], "t2_dice": [0.5, 0.5, math.nan], "t2_nsd": [0.6, 0.55, math.nan],
             "t3_mae": [6.0, 5.0, 7.0]}
    ranking = rank_table(["A", "B", "C"], table, columns)
    assert ranking.task_ranks["t2"].tolist() == [1.0, 1.5, 4.0]  # C missed task 2: n + 1
    assert ranking.overall.tolist() == pytest.approx([5 / 3, 3.5 / 3, 10 / 3])
    assert [ranking.submissions[i] for i in ranking.order()] == ["B", "A", "C"]
    weighted = rank_table(["A", "B", "C"], table, columns, task_weights={"t1": 0.1, "t2": 0.25, "t3": 0.1})
    assert weighted.overall[0] == pytest.approx((0.1 * 2 + 0.25 * 1 + 0.1 * 2) / 0.45)


def test_tiers_split_where_bootstrap_intervals_stop_overlapping():
    rng = np.random.default_rng(0)
    boot = np.c_[rng.normal(1.2, 0.1, 500), rng.normal(1.4, 0.1, 500), rng.normal(3.0, 0.1, 500)]
    assert rank_tiers(np.array([1.2, 1.4, 3.0]), boot) == [1, 1, 2]


def test_leaderboard_cli_ranks_a_metric_table_and_writes_three_formats(tmp_path):
    table = tmp_path / "metrics.csv"
    table.write_text("team,t1_auroc,t2_dice,t2_nsd,t3_mae,t3_corr\nA,0.80,0.50,0.60,6.0,0.80\n"
                     "B,0.85,0.50,0.55,5.0,0.85\nC,0.70,,,7.0,0.60\n")
    rows = rank_metric_table(table, FOMO25)
    assert [(r["submission"], r["overall"]) for r in rows] == [("B", 1.1667), ("A", 1.6667), ("C", 3.3333)]

    proc = run_cli("leaderboard", str(table), "-o", str(tmp_path / "lb"))

    assert proc.returncode == 0, proc.stderr
    assert "1.17" in proc.stdout
    assert (tmp_path / "lb" / "leaderboard.md").read_text().count("\n| ") == 4
    assert "<table>" in (tmp_path / "lb" / "leaderboard.html").read_text()


def test_a_table_without_a_task_column_is_refused_naming_it(tmp_path):
    table = tmp_path / "metrics.csv"
    table.write_text("team,t1_auroc\nA,0.8\n")
    with pytest.raises(InputError, match="t2_dice"):
        rank_metric_table(table, FOMO25)
    proc = run_cli("leaderboard", str(table))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and "t2_dice" in proc.stderr


def test_task_sets_load_from_yaml(tmp_path):
    spec = tmp_path / "tasks.yaml"
    spec.write_text("name: mine\ntasks:\n- {id: t1, name: tumour, sequences: [flair, t1c], label: mask, "
                    "metrics: [{name: dice}, {name: nsd, tolerance_mm: 1.0}], weight: 0.25}\n")
    task_set = load_task_set(spec)
    assert [c.name for c in task_set.columns()] == ["t1_dice", "t1_nsd"]
    assert task_set.task("tumour").metrics[1].tolerance_mm == 1.0
    assert FOMO25.task("3").name == "brain-age" and FOMO25.task("t2").output_suffix == ".nii.gz"


def test_per_case_metrics_aggregate_by_the_tasks_rule():
    from medhub.challenge.evaluate import TaskScores, _metric_rows
    from medhub.challenge.tasks import MetricSpec

    scores = TaskScores(np.zeros(3), {"dice": np.array([0.0, 0.8, 0.9])})
    rows = np.arange(3)[None]
    assert _metric_rows(MetricSpec(name="dice"), scores, np.zeros(3), rows)[0] == pytest.approx(1.7 / 3)
    assert _metric_rows(MetricSpec(name="dice"), scores, np.zeros(3), rows, "median")[0] == pytest.approx(0.8)


def test_a_published_style_table_reads_names_plus_minus_and_percent_cells(tmp_path):
    table = tmp_path / "published.csv"
    table.write_text("Team,t1_auroc,t2_dice,t2_nsd,t3_mae,t3_corr\nX,0.80 ± 0.03,55.0%,60%,6.1,0.8\n"
                     "Y,0.85 ± 0.02,50.0%,65%,5.9,0.9\nZ,–,–,–,7.0,0.7\n")
    rows = rank_metric_table(table, FOMO25)
    assert [r["submission"] for r in rows] == ["Y", "X", "Z"]
    assert rows[0]["t1_auroc"] == 0.85 and rows[2]["t1_rank"] == 4.0
    unnamed = tmp_path / "unnamed.csv"
    unnamed.write_text("entry,t1_auroc,t2_dice,t2_nsd,t3_mae,t3_corr\nA,0.8,0.5,0.6,6,0.8\n")
    assert rank_metric_table(unnamed, FOMO25)[0]["submission"] == "A"
