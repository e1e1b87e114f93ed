"""``medhub evaluate``, ``medhub leaderboard`` and ``medhub export-fomo``. Kept light to import: no torch here."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

console = Console(soft_wrap=True)


def _weights(text: str | None) -> dict[str, float] | None:
    from medhub.errors import InputError

    if not text:
        return None
    try:
        return {key.strip(): float(value) for key, value in (part.split("=") for part in text.split(","))}
    except ValueError as e:
        raise InputError(None, f"--weights {text!r}: write task=weight pairs, e.g. t1=0.1,t2=0.25",
                         code="bad-option") from e


def leaderboard_command(
    table: Annotated[Path, typer.Argument(help="Metric table CSV: a submission column and one column per task "
                                          "metric (t1_auroc, t2_dice, t2_nsd, t3_mae, t3_corr).")],
    tasks: Annotated[str, typer.Option(help="Task set: fomo25, or a YAML file.")] = "fomo25",
    weights: Annotated[str | None, typer.Option(help="Task weights of the overall score, e.g. t1=0.1,t2=0.25,"
                                                "t3=0.1 (default: equal).")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Also write leaderboard.csv/.md/.html "
                                                "here.")] = None,
) -> None:
    """Rank submissions from a metric table alone: metric ranks, task ranks (their mean), overall (mean task rank)."""
    from medhub.challenge.leaderboard import rank_metric_table, write_leaderboard
    from medhub.challenge.tasks import load_task_set

    task_set = load_task_set(tasks)
    rows = rank_metric_table(table, task_set, task_weights=_weights(weights))
    view = Table(title=f"{task_set.name} leaderboard (lower overall is better)")
    task_columns = [f"{t.id}_rank" for t in task_set.tasks]
    for column in ["#", "submission", "overall", *task_columns]:
        view.add_column(column, justify="left" if column == "submission" else "right")
    for row in rows:
        view.add_row(str(row["position"]), row["submission"], f"{row['overall']:.2f}",
                     *(f"{row[c]:.2f}" for c in task_columns))
    console.print(view)
    if output is not None:
        written = write_leaderboard(rows, task_set, output, title=f"{task_set.name} leaderboard")
        console.print(f"written: {', '.join(str(p) for p in written.values())}", highlight=False)


def evaluate_command(
    submissions: Annotated[list[str], typer.Option(
        "--submission", "--submissions", "-s", help="NAME=model:ID, NAME=folder:PATH or NAME=fomo:PATH (a "
        "predict.py folder or an .sif image), optionally ending @t1,t3; repeat for each.")],
    truth: Annotated[Path, typer.Option(help="ROOT/<task id or name>/ in the FOMO finetuning layout.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the leaderboard and tables.")],
    tasks: Annotated[str, typer.Option(help="Task set: fomo25, or a YAML file.")] = "fomo25",
    resamples: Annotated[int, typer.Option(help="Bootstrap resamples and permutations.")] = 10_000,
    time_limit: Annotated[float, typer.Option(help="Per-case time limit of a FOMO command submission (s).")] = 120.0,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap and the permutations.")] = 0,
) -> None:
    """Evaluate submissions as a challenge would: per-case validation, metrics with bootstrap CIs, pairwise
    permutation tests, ranks, tiers; leaderboard CSV/Markdown/HTML and per-case tables."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from medhub.challenge.evaluate import evaluate, load_truth, write_evaluation
    from medhub.challenge.submissions import CommandSubmission, parse_submission
    from medhub.challenge.tasks import load_task_set

    task_set = load_task_set(tasks)
    parsed = [parse_submission(spec) for spec in submissions]
    for submission in parsed:
        if isinstance(submission, CommandSubmission):
            submission.time_limit_s = time_limit
    total = sum(len(load_truth(truth, t) or []) for t in task_set.tasks) * len(parsed)
    with Progress(TextColumn("[bold]evaluating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        progress = bar.add_task("cases", total=total)
        evaluation = evaluate(task_set, parsed, truth, output, n_resamples=resamples, seed=seed,
                              on_case=lambda: bar.advance(progress))
    written = write_evaluation(evaluation, output)
    failed = sum(row["status"] != "ok" for row in evaluation.case_rows)
    console.print((output / "leaderboard.md").read_text(), highlight=False)
    note = f"; {failed} case prediction(s) failed, scored as the worst (see cases.csv)" if failed else ""
    skipped = f"; no truth for {', '.join(evaluation.skipped_tasks)}" if evaluation.skipped_tasks else ""
    console.print(f"{len(evaluation.case_rows)} case predictions{note}{skipped}; written: "
                  f"{', '.join(str(p) for p in written.values())}", highlight=False)


def export_fomo_command(
    model: Annotated[str, typer.Argument(help="A model id (e.g. brain-age) or a `medhub export-model` folder.")],
    task: Annotated[str, typer.Option(help="FOMO25 task: 1 (infarct), 2 (meningioma) or 3 (brain age).")],
    to: Annotated[Path, typer.Option("--to", help="The submission folder to write.")],
) -> None:
    """Wrap a medhub model in the FOMO25 container contract: predict.py, Apptainer.def, requirements.txt."""
    from medhub.challenge.export import export_fomo

    folder = export_fomo(model, task, to)
    console.print(f"wrote {folder}/predict.py, Apptainer.def, requirements.txt; try it with `python "
                  f"{folder}/predict.py --help`, build it with `apptainer build submission.sif {folder}/Apptainer.def`",
                  highlight=False)
