"""``medhub batch`` and ``medhub release``: parse arguments, call one library function, show the result.

Kept light to import (no Ray, no pyarrow here): every ``medhub`` call imports this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-:--:--"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def batch_command(
    model: Annotated[str, typer.Argument(help="Model id, e.g. cac.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Batch output folder (results store + runs).")],
    input: Annotated[Path | None, typer.Option("--input", "-i", help="Root folder: every series under it is a "
                                               "case.")] = None,
    manifest: Annotated[Path | None, typer.Option("--manifest", "-m", help="CSV of cases: path and/or "
                                                  "series_instance_uid (+ optional case_id) columns.")] = None,
    workers: Annotated[int | None, typer.Option(help="Cases in parallel (default: every core, or every CPU of "
                                                "the Ray cluster).")] = None,
    backend: Annotated[str, typer.Option(help="local (process pool) or ray.")] = "local",
    ray_address: Annotated[str | None, typer.Option(help="Address of a running Ray cluster (e.g. auto or "
                                                    "head:6379); without it --backend ray starts a local Ray.")
                           ] = None,
    timeout: Annotated[float | None, typer.Option(help="Seconds one case may take before it is killed and "
                                                  "recorded as 'timeout'.")] = None,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Run the failed cases again.")] = False,
    new_run: Annotated[bool, typer.Option("--new-run", help="After a model update: start a new run beside the "
                                          "current one (the same command resumes it after a crash).")] = False,
    outputs: Annotated[str, typer.Option(help="Comma-separated: seg,sr,nifti,json,png.")] = "seg,sr,json",
) -> None:
    """Run MODEL on a whole cohort, resumably: re-run the same command after a crash to finish it."""
    from medhub.cohort.batch import BatchProgress, run_batch

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[detail]}"), console=err_console, transient=True,
                  # No refresh thread: the coordinator forks workers, and forking a threaded process is unsafe.
                  auto_refresh=False) as progress:
        bar = progress.add_task(f"{model}: starting", total=None, detail="")

        def show(p: BatchProgress) -> None:
            rate = f"{p.rate_per_hour:,.0f}/h" if p.rate_per_hour else "-/h"
            progress.update(bar, total=p.total, completed=p.done, description=f"{model}",
                            detail=f"[green]{p.ok} ok[/] [red]{p.failed} failed[/] {p.remaining} left "
                                   f"({p.running} running)  {rate}  ETA {_duration(p.eta_s)}")
            progress.refresh()

        summary = run_batch(model, output, input_root=input, manifest=manifest, workers=workers, backend=backend,
                            ray_address=ray_address, timeout_s=timeout, retry_failed=retry_failed,
                            new_run=new_run, outputs=[k.strip() for k in outputs.split(",") if k.strip()],
                            on_progress=show)
    for line in summary.warnings:
        err_console.print(f"[yellow]warning:[/] {line}", highlight=False)
    rate = f", {summary.throughput_per_hour:,.0f} cases/h" if summary.throughput_per_hour else ""
    console.print(f"run {summary.run_id} ({summary.model_id} {summary.model_version}): {summary.ok} ok, "
                  f"{summary.failed} failed of {summary.total}; this call ran {summary.ran_now} on "
                  f"{summary.workers} {summary.backend} worker(s) in {_duration(summary.elapsed_s)}{rate}",
                  highlight=False)
    for reason, count in summary.failures_by_reason.items():
        console.print(f"  failed: {count} × {reason}", highlight=False)
    console.print(f"outputs: {summary.output}  (results store: {summary.store})", highlight=False)
    if summary.failed:
        raise typer.Exit(1)


def release_command(
    run_dir: Annotated[Path, typer.Argument(help="A `medhub batch` output folder.")],
    to: Annotated[Path, typer.Option("--to", help="New folder for the release.")],
    sample: Annotated[int | None, typer.Option(help="Release only N patients, drawn at random.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the --sample draw.")] = 0,
) -> None:
    """Write a dataset release of a batch run: DICOM SEG/SR per scan, metadata, dictionary, summary, SHA256SUMS."""
    from medhub.cohort.release import release

    summary = release(run_dir, to, sample=sample, seed=seed)
    drawn = f" (sample of {summary.sampled_from} scans)" if summary.sampled_from is not None else ""
    console.print(f"release: {summary.folder}: {summary.scans} scans of {summary.patients} patients{drawn}, "
                  f"{summary.ok} ok, {summary.failed} failed, {summary.files} files in SHA256SUMS", highlight=False)
