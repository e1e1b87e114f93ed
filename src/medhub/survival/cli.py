"""``medhub survival``: Cox, Kaplan–Meier by group, C-index and added value of a score. Kept light to import."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console(soft_wrap=True)


def read_table(path: Path):
    """A CSV or Parquet table as a DataFrame; a one-line error naming the file otherwise."""
    import pandas as pd

    from medhub.errors import InputError

    try:
        return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except FileNotFoundError as e:
        raise InputError(path, "file not found", code="not-found") from e
    except Exception as e:  # pandas raises many kinds for a damaged table
        raise InputError(path, f"cannot read the table ({str(e).splitlines()[0] if str(e) else type(e).__name__})",
                         code="unreadable") from e


def _names(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def survival_command(
    table: Annotated[Path, typer.Argument(help="CSV or Parquet: one row per subject (e.g. a batch's results.csv).")],
    time: Annotated[str, typer.Option("--time", help="Follow-up time column (> 0).")],
    event: Annotated[str, typer.Option("--event", help="Event column: 1 event, 0 censored.")],
    score: Annotated[str, typer.Option("--score", help="Risk score column (higher = worse).")],
    covariates: Annotated[str | None, typer.Option(help="Comma-separated covariate columns of the Cox model.")] = None,
    groups: Annotated[str, typer.Option(help="quartile (of the score), a column of categories, or none.")
                      ] = "quartile",
    group_order: Annotated[str | None, typer.Option(help="Comma-separated group order; the first is the "
                                                    "reference (default: by the first number in each name).")
                           ] = None,
    added: Annotated[str | None, typer.Option(help="A second score: its added value (LR test, ΔC-index).")] = None,
    join: Annotated[Path | None, typer.Option(help="An outcomes table to join (CSV or Parquet).")] = None,
    on: Annotated[str, typer.Option(help="The column both tables share, with --join.")] = "case_id",
    resamples: Annotated[int, typer.Option(help="Bootstrap resamples of the C-index CI.")] = 1000,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Folder for the tables, report.md and "
                                                "km.png (default: TABLE's name + _survival, beside it).")] = None,
) -> None:
    """Survival analytics of a risk score: multivariable Cox (HR per unit and per SD), Kaplan–Meier curves,
    log-rank and HRs by group, Harrell's C-index with a bootstrap CI, added value of a second score."""
    from medhub.errors import InputError
    from medhub.survival.analysis import SurvivalAnalysis, write_report

    frame = read_table(table)
    if join is not None:
        outcomes = read_table(join)
        for name, data in ((table, frame), (join, outcomes)):
            if on not in data.columns:
                raise InputError(name, f"no column {on!r} to join on", code="bad-input")
        frame = frame.merge(outcomes, on=on, how="inner", suffixes=("", "_outcome"))
        if frame.empty:
            raise InputError(join, f"no {on} in common with {table.name}", code="bad-input")
    analysis = SurvivalAnalysis(time=time, event=event, score=score, covariates=_names(covariates),
                                groups=None if groups == "none" else groups,
                                group_order=_names(group_order) or None, added_score=added, n_resamples=resamples)
    report = analysis.fit(frame)
    output = output or table.with_name(f"{table.stem}_survival")
    written = write_report(report, output, title=f"Survival analysis of {score}")
    console.print((output / "report.md").read_text(), highlight=False)
    console.print(f"written: {', '.join(str(p) for p in written.values())}", highlight=False)
