"""``medhub leaderboard`` (and, to come, ``medhub evaluate`` and ``medhub export-fomo``). Kept light to import."""

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
