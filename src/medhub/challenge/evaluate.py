"""``medhub evaluate``: run every submission on every case of every task, score, rank, and write a leaderboard.

**Truth** (``--truth ROOT``): one folder per task, named by its id or name (``ROOT/t1`` or ``ROOT/infarct``), in the
FOMO finetuning layout: ``preprocessed/sub_*/ses_1/<sequence>.nii.gz`` (what submissions see) and
``labels/sub_*/ses_1/label.txt`` (0/1, or a value) or ``seg.nii.gz`` (a mask; > 0 is the structure).

**Scoring policy.** A case whose prediction is missing or invalid (see :mod:`medhub.challenge.submissions`) is
recorded with its reason and scored as the worst plausible prediction, so that failing never pays:

* binary: the score ``1 - truth`` (the wrong certainty);
* value: the truth value of the task's cases farthest from this case's truth;
* mask: Dice 0 and NSD 0.

**Metrics** come from :mod:`medhub.metrics` (the module ``medhub compare`` uses): Dice and NSD per case
(:func:`~medhub.metrics.segmentation.segmentation_metrics`, NSD at the task's tolerance) and the absolute error
per case, averaged over cases; AUROC and Pearson r over all cases. **CIs**: percentile bootstrap over cases
(``n_resamples``, seeded), the same resampled case sets for every submission, which also give each submission's
bootstrap overall rank and the ranking tiers (:func:`~medhub.challenge.ranking.rank_tiers`). **Pairwise tests**:
for each task metric and pair of submissions, a paired permutation test (each case's two predictions swapped at
random, ``n_resamples`` times; two-sided p).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from medhub.challenge.leaderboard import leaderboard_rows, write_leaderboard
from medhub.challenge.ranking import rank_table, rank_tiers
from medhub.challenge.submissions import PredictionError, Submission, TruthCase, read_mask, read_value
from medhub.challenge.tasks import MetricSpec, TaskSet, TaskSpec
from medhub.errors import InputError
from medhub.io import records

#: Resamples of the bootstrap and of the permutation tests, as the issue asks.
N_RESAMPLES = 10_000


def load_truth(root: str | Path, task: TaskSpec) -> list[TruthCase] | None:
    """The task's cases under ``ROOT/<task id or name>``; ``None`` when the folder is not there."""
    from medhub.brain.layout import find_sessions

    root = Path(root)
    folder = next((root / key for key in (task.id, task.name) if (root / key).is_dir()), None)
    if folder is None:
        return None
    cases = []
    for session in find_sessions(folder):
        label = None
        if task.label != "mask":
            if session.label is None:
                raise InputError(folder, f"sub_{session.subject} has no labels/.../label.txt", code="bad-input")
            try:
                label = float(session.label)
            except ValueError as e:
                raise InputError(folder, f"sub_{session.subject}: label {session.label!r} is not a number",
                                 code="bad-input") from e
        elif session.seg is None:
            raise InputError(folder, f"sub_{session.subject} has no labels/.../seg.nii.gz", code="bad-input")
        cases.append(TruthCase(case_id=f"sub_{session.subject}", inputs=dict(session.files), label=label,
                               mask=session.seg))
    return cases


@dataclass
class TaskScores:
    """One submission's predictions on one task, ready for metrics: one entry per truth case, in case order."""

    predictions: np.ndarray  # scores (binary), values (value); NaN for masks
    per_case: dict[str, np.ndarray] = field(default_factory=dict)  # dice, nsd, mae (absolute error)


def _metric_rows(metric: MetricSpec, scores: TaskScores, truth: np.ndarray, index: np.ndarray,
                 aggregation: str = "mean") -> np.ndarray:
    """The metric on each row of case indices ``index`` (shape ``(rows, cases)``); per-case metrics are
    aggregated over each row by ``aggregation``."""
    from medhub.metrics.agreement import pearson_rows
    from medhub.metrics.classification import auroc_rows

    if metric.name == "auroc":
        return auroc_rows(scores.predictions[index], truth[index])
    if metric.name == "corr":
        return pearson_rows(scores.predictions[index], truth[index])
    values = scores.per_case[metric.name][index]
    return np.median(values, axis=1) if aggregation == "median" else values.mean(axis=1)


def _worst_value(truth: np.ndarray, i: int) -> float:
    return float(truth[np.argmax(np.abs(truth - truth[i]))])


def score_task(task: TaskSpec, cases: Sequence[TruthCase], submission: Submission, folder: Path,
               on_case: Callable[[], None] | None = None) -> tuple[TaskScores, list[dict[str, Any]]]:
    """Run ``submission`` on every case of ``task`` (predictions kept in ``folder``) and score each case."""
    from medhub.metrics.agreement import absolute_errors
    from medhub.metrics.segmentation import segmentation_metrics

    folder.mkdir(parents=True, exist_ok=True)
    truth = np.array([c.label if c.label is not None else np.nan for c in cases], dtype=np.float64)
    predictions = np.full(len(cases), np.nan)
    per_case = {m.name: np.zeros(len(cases)) for m in task.metrics if m.per_case}
    rows = []
    for i, case in enumerate(cases):
        row: dict[str, Any] = {"submission": submission.name, "task": task.id, "case": case.case_id,
                               "status": "ok", "reason": "", "message": ""}
        output = folder / f"{case.case_id}{task.output_suffix}"
        try:
            with tempfile.TemporaryDirectory(dir=folder, prefix=".case-") as tmp:
                produced = submission.predict(task, case, Path(tmp) / output.name)
                produced.replace(output)
            if task.label == "mask":
                import nibabel as nib

                reference = next(iter(case.inputs.values()))
                mask = read_mask(output, reference)
                truth_image = nib.load(case.mask)
                spacing = [float(z) for z in truth_image.header.get_zooms()[:3]]
                tolerance = next((m.tolerance_mm for m in task.metrics if m.name == "nsd"), 2.0)
                values = segmentation_metrics(mask, np.asarray(truth_image.dataobj) > 0, spacing, tolerance)
                for name in per_case:
                    per_case[name][i] = float(values[name])
                row["prediction"] = output.name
            else:
                predictions[i] = read_value(output)
                row["prediction"] = predictions[i]
        except PredictionError as e:
            row.update(status="failed", reason=e.code, message=e.message)
            output.unlink(missing_ok=True)
            if task.label == "binary":
                predictions[i] = 1.0 - truth[i]
            elif task.label == "value":
                predictions[i] = _worst_value(truth, i)
            for name in per_case:
                per_case[name][i] = 0.0
        if task.label != "mask":
            row["truth"] = truth[i]
        if "mae" in per_case:
            per_case["mae"][i] = absolute_errors([predictions[i]], [truth[i]])[0]
        row.update({name: round(float(values[i]), 6) for name, values in per_case.items()})
        row["seconds"] = submission.seconds.get(f"{task.id}/{case.case_id}", "")
        rows.append(row)
        if on_case is not None:
            on_case()
    return TaskScores(predictions, per_case), rows


@dataclass
class Evaluation:
    """Everything ``medhub evaluate`` computed; :func:`write_evaluation` writes it."""

    task_set: TaskSet
    submissions: list[str]
    table: dict[str, list[float]]
    intervals: dict[str, list[tuple[float, float]]]
    tiers: list[int]
    case_rows: list[dict[str, Any]]
    pairwise: list[dict[str, Any]]
    skipped_tasks: list[str]
    settings: dict[str, Any]


def evaluate(task_set: TaskSet, submissions: Sequence[Submission], truth_root: str | Path, output: str | Path, *,
             n_resamples: int = N_RESAMPLES, seed: int = 0, on_case: Callable[[], None] | None = None
             ) -> Evaluation:
    """Score every submission on every task whose truth is present (see the module); never raises for a
    submission's failure."""
    output = Path(output)
    started = time.perf_counter()
    names = [s.name for s in submissions]
    if len(set(names)) != len(names):
        raise InputError(None, f"submission names must differ, got {names}", code="bad-option")
    columns = task_set.columns()
    table = {c.name: [np.nan] * len(submissions) for c in columns}
    boot = {c.name: np.full((n_resamples, len(submissions)), np.nan) for c in columns}
    intervals = {c.name: [(np.nan, np.nan)] * len(submissions) for c in columns}
    case_rows: list[dict[str, Any]] = []
    pairwise: list[dict[str, Any]] = []
    skipped = []
    rng = np.random.default_rng(seed)
    for task in task_set.tasks:
        cases = load_truth(truth_root, task)
        if not cases:
            skipped.append(task.id)
            continue
        truth = np.array([c.label if c.label is not None else np.nan for c in cases], dtype=np.float64)
        index = rng.integers(0, len(cases), size=(n_resamples, len(cases)))
        scores: list[TaskScores | None] = []
        for j, submission in enumerate(submissions):
            if not submission.takes_part(task):
                scores.append(None)
                continue
            task_scores, rows = score_task(task, cases, submission, output / "predictions" / submission.name / task.id,
                                           on_case)
            scores.append(task_scores)
            case_rows += rows
            for metric in task.metrics:
                column = task.column(metric)
                table[column][j] = float(_metric_rows(metric, task_scores, truth, np.arange(len(cases))[None],
                                                      task.aggregation)[0])
                boot[column][:, j] = _metric_rows(metric, task_scores, truth, index, task.aggregation)
                finite = boot[column][:, j][np.isfinite(boot[column][:, j])]
                intervals[column][j] = ((float(np.quantile(finite, 0.025)), float(np.quantile(finite, 0.975)))
                                        if finite.size else (np.nan, np.nan))
        swaps = rng.random((n_resamples, len(cases))) < 0.5
        for metric in task.metrics:
            for a, b in combinations([j for j, score in enumerate(scores) if score is not None], 2):
                pairwise.append(_permutation_test(task, metric, scores[a], scores[b], truth,  # type: ignore[arg-type]
                                                  swaps, names[a], names[b]))
    weights = task_set.weights()
    present = [c for c in columns if c.task not in skipped]
    ranking = rank_table(names, {c.name: table[c.name] for c in present}, present,
                         task_weights={t: w for t, w in weights.items() if t not in skipped})
    resampled = rank_table(names, {c.name: boot[c.name] for c in present}, present,
                           task_weights={t: w for t, w in weights.items() if t not in skipped})
    tiers = rank_tiers(ranking.overall, resampled.overall) if present else [1] * len(names)
    settings = {"task_set": task_set.model_dump(), "truth": str(truth_root), "n_resamples": n_resamples,
                "seed": seed, "submissions": [{"name": s.name, "kind": s.describe()} for s in submissions],
                "skipped_tasks": skipped, "seconds": round(time.perf_counter() - started, 2)}
    return Evaluation(task_set, names, table, intervals, tiers, case_rows, pairwise, skipped, settings)


def _permutation_test(task: TaskSpec, metric: MetricSpec, a: TaskScores, b: TaskScores, truth: np.ndarray,
                      swaps: np.ndarray, name_a: str, name_b: str) -> dict[str, Any]:
    """Two-sided paired permutation test of ``metric(a) - metric(b)``: each case's two predictions swapped where
    ``swaps`` is true, one row per permutation."""
    everything = np.arange(truth.size)[None]
    observed = float(_metric_rows(metric, a, truth, everything, task.aggregation)[0]
                     - _metric_rows(metric, b, truth, everything, task.aggregation)[0])

    def mixed(first: TaskScores, second: TaskScores) -> TaskScores:
        return TaskScores(np.where(swaps, second.predictions, first.predictions),
                          {k: np.where(swaps, second.per_case[k], v) for k, v in first.per_case.items()})

    diffs = _permuted_differences(metric, mixed(a, b), mixed(b, a), truth, task.aggregation)
    valid = diffs[np.isfinite(diffs)]
    p_value = float((1 + np.sum(np.abs(valid) >= abs(observed) - 1e-12)) / (1 + valid.size)) if valid.size else np.nan
    return {"task": task.id, "metric": metric.name, "a": name_a, "b": name_b, "difference": round(observed, 6),
            "p_value": round(p_value, 6), "permutations": int(valid.size)}


def _permuted_differences(metric: MetricSpec, a: TaskScores, b: TaskScores, truth: np.ndarray,
                          aggregation: str) -> np.ndarray:
    """``metric(a_row) - metric(b_row)`` for every row of the permuted predictions (rows x cases)."""
    from medhub.metrics.agreement import pearson_rows
    from medhub.metrics.classification import auroc_rows

    if metric.name == "auroc":
        labels = np.broadcast_to(truth, a.predictions.shape)
        return auroc_rows(a.predictions, labels) - auroc_rows(b.predictions, labels)
    if metric.name == "corr":
        targets = np.broadcast_to(truth, a.predictions.shape)
        return pearson_rows(a.predictions, targets) - pearson_rows(b.predictions, targets)
    aggregate = np.median if aggregation == "median" else np.mean
    return aggregate(a.per_case[metric.name], axis=1) - aggregate(b.per_case[metric.name], axis=1)


def write_evaluation(evaluation: Evaluation, output: str | Path) -> dict[str, Path]:
    """``leaderboard.csv/.md/.html`` (with CIs and tiers), ``metrics.csv`` (the metric table, which ``medhub
    leaderboard`` reads), ``cases.csv``, ``pairwise.csv`` and ``evaluation.json`` in ``output``."""
    output = Path(output)
    task_set = evaluation.task_set
    present = [c for c in task_set.columns() if c.task not in evaluation.skipped_tasks]
    ranking = rank_table(evaluation.submissions, {c.name: evaluation.table[c.name] for c in present}, present,
                         task_weights={t: w for t, w in task_set.weights().items()
                                       if t not in evaluation.skipped_tasks})
    shown = TaskSet(name=task_set.name, tasks=[t for t in task_set.tasks if t.id not in evaluation.skipped_tasks])
    rows = leaderboard_rows(ranking, evaluation.table, shown, evaluation.tiers, evaluation.intervals)
    written = write_leaderboard(rows, shown, output, title=f"{task_set.name} evaluation")
    metric_rows = [{"submission": name, **{c.name: evaluation.table[c.name][j] for c in task_set.columns()}}
                   for j, name in enumerate(evaluation.submissions)]
    written["metrics"] = records.write_csv(output / "metrics.csv", metric_rows)
    case_columns = ("submission", "task", "case", "status", "reason", "message", "prediction", "truth", "dice",
                    "nsd", "mae", "seconds")
    written["cases"] = records.write_csv(output / "cases.csv", evaluation.case_rows, case_columns)
    written["pairwise"] = records.write_csv(output / "pairwise.csv", evaluation.pairwise,
                                            ("task", "metric", "a", "b", "difference", "p_value", "permutations"))
    failures: dict[str, int] = {}
    for row in evaluation.case_rows:
        if row["status"] != "ok":
            failures[row["reason"]] = failures.get(row["reason"], 0) + 1
    summary = {"kind": "medhub-evaluation", **evaluation.settings, "leaderboard": rows,
               "cases": len(evaluation.case_rows), "failures_by_reason": failures,
               "medhub_version": records.package_versions().get("medhub"), "packages": records.package_versions(),
               "finished_utc": records.utc_now()}
    written["json"] = records.write_json(output / "evaluation.json", json.loads(json.dumps(summary, default=float)))
    return written
