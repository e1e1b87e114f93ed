"""``medhub compare``: parse arguments, call :func:`medhub.compare.comparison.run_comparison`, show the result.

Kept light to import: every ``medhub`` call imports this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


def compare_command(
    source: Annotated[list[str], typer.Option("--source", "-s", help="A hub model id, a folder of DICOM SEG files, "
                                              "a folder of label maps with labels.yaml, or a mapping file; "
                                              "NAME=… names it. Repeat for each source.")],
    input: Annotated[Path, typer.Option("--input", "-i", help="The images: a DICOM tree or volume files (the "
                                        "cases, and the grid every mask is compared on).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder (model runs are kept there and "
                                         "reused).")],
    reference: Annotated[str | None, typer.Option("--reference", "-r", help="Compare every source with this one "
                                                  "(same forms as --source); without it, every pair.")] = None,
    tolerance_mm: Annotated[float, typer.Option("--tolerance-mm", help="Tolerance of the normalized surface Dice "
                                                "(mm).")] = 2.0,
    case_pattern: Annotated[str | None, typer.Option("--case-pattern", help="Regular expression whose first group "
                                                     "names a case in file names, e.g. '^(\\d+)_'.")] = None,
) -> None:
    """Compare segmentations of several sources, per case and segment: Dice, HD95, MSD, NSD, volume difference."""
    from medhub.compare.comparison import run_comparison

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, transient=True) as progress:
        bar = progress.add_task("compare: starting", total=None)

        def show(text: str, done: int, total: int) -> None:
            progress.update(bar, description=text, completed=done, total=total)

        result = run_comparison(source, input, output, reference=reference, tolerance_mm=tolerance_mm,
                                case_pattern=case_pattern, progress=show)
    table = Table(title="medhub compare: mean [95 % CI] over cases")
    for column in ("source", "reference", "segment", "n", "Dice", "HD95 mm", "NSD"):
        table.add_column(column)
    by_key: dict[tuple, dict[str, dict]] = {}
    for row in result.summary:
        by_key.setdefault((row["source"], row["reference"], row["segment_name"]), {})[row["metric"]] = row
    for (src, ref, segment), metrics in by_key.items():
        def cell(metric: str, metrics: dict = metrics) -> str:
            m = metrics.get(metric)
            return f"{m['mean']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]" if m else "–"
        table.add_row(src, ref, segment, f"{metrics['dice']['n']:.0f}", cell("dice"), cell("hd95_mm"), cell("nsd"))
    console.print(table)
    for name, cases in result.unmatched["cases_without_source"].items():
        if cases:
            err_console.print(f"[yellow]warning:[/] {name}: no prediction for {len(cases)} case(s): "
                              f"{', '.join(cases[:5])}{' …' if len(cases) > 5 else ''}", highlight=False)
    for name, files in result.unmatched["source_cases_without_input"].items():
        if files:
            err_console.print(f"[yellow]warning:[/] {name}: {len(files)} prediction(s) match no input case: "
                              f"{', '.join(files[:5])}{' …' if len(files) > 5 else ''}", highlight=False)
    for item in result.unmatched["segments"]:
        err_console.print(f"[yellow]warning:[/] {item['source']} vs {item['reference']}: unmatched segments "
                          f"{', '.join(item['only_in_source'] + item['only_in_reference'])}", highlight=False)
    for failure in result.failures:
        err_console.print(f"[red]failed:[/] {failure.get('source') or 'input'} on {failure.get('case')}: "
                          f"{failure.get('message')}", highlight=False)
    console.print(f"outputs: {result.output} (report.html, metrics.csv, summary.csv, compare.json)", highlight=False)
    if not result.rows:
        raise typer.Exit(1)
