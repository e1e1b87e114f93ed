"""The ``medhub`` command line. Thin: each command parses its arguments and calls one library function.

Exit codes: 0 success; 1 a case or a check failed; 2 the input, options or model were refused (one line on
stderr naming the file or series and the reason); 3 an unexpected internal error. ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from medhub import __version__
from medhub.cac.cli import cac_app
from medhub.challenge.cli import evaluate_command, export_fomo_command, leaderboard_command
from medhub.cohort.cli import batch_command, release_command
from medhub.compare.cli import compare_command
from medhub.dashboard.cli import dashboard_command
from medhub.errors import MedhubError
from medhub.face.cli import robustness_command
from medhub.learn.cli import export_model_command, finetune_command, pretrain_command
from medhub.survival.cli import survival_command

app = typer.Typer(
    name="medhub",
    help="Run packaged medical-imaging models with one command: DICOM in, DICOM SEG/SR out.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(cac_app, name="cac", help="Coronary artery calcium: scoring, agreement statistics, training.")
app.command("batch")(batch_command)
app.command("release")(release_command)
app.command("compare")(compare_command)
app.command("dashboard")(dashboard_command)
app.command("pretrain")(pretrain_command)
app.command("finetune")(finetune_command)
app.command("export-model")(export_model_command)
app.command("evaluate")(evaluate_command)
app.command("leaderboard")(leaderboard_command)
app.command("export-fomo")(export_fomo_command)
app.command("survival")(survival_command)
app.command("robustness")(robustness_command)
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)
_state = {"debug": False}

DEMO_MODEL = "lung-ct"


def _version(value: bool) -> None:
    if value:
        console.print(f"medhub {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    _state["debug"] = debug


@app.command("models")
def models_command() -> None:
    """List the available models."""
    from medhub.hub.registry import available_models, get_card

    table = Table(title="medhub models")
    for column in ("id", "version", "task", "input", "outputs", "weights", "source"):
        table.add_column(column)
    for model_id, origin in sorted(available_models().items()):
        card = get_card(model_id)
        outputs = [s.name for s in card.outputs.segments] + [v.name for v in card.outputs.values]
        weights = "none needed" if card.weights is None and not card.needs_weights else (
            "none: refuses to run" if card.weights is None else card.weights.sha256[:12])
        table.add_row(card.id, card.version, card.task.value, f"{card.inputs.modality} {card.inputs.body_part}",
                      ", ".join(outputs), weights, origin)
    console.print(table)


@app.command("info")
def info_command(model: Annotated[str, typer.Argument(help="Model id, e.g. lung-ct.")]) -> None:
    """Show a model's card."""
    import yaml

    from medhub.hub.registry import get_card

    card = get_card(model)
    console.print(yaml.safe_dump(card.model_dump(mode="json", exclude_none=True), sort_keys=False,
                                 allow_unicode=True, width=110))


@app.command("card-schema")
def card_schema_command() -> None:
    """Print the JSON Schema of the model card."""
    from medhub.hub.card import card_json_schema

    sys.stdout.write(card_json_schema() + "\n")


def _parse_outputs(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _run_with_progress(model: str, input_path: Path, output: Path, outputs: list[str], labelmap: bool):
    from medhub.hub.runner import run

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err_console, transient=True) as progress:
        task = progress.add_task(f"{model}: reading headers", total=None)

        def scanned(done: int, total: int) -> None:
            progress.update(task, total=total, completed=done)

        def started(case, index: int, total: int) -> None:
            progress.update(task, total=total, completed=index, description=f"{model}: {case.id}")

        def finished(result) -> None:
            progress.advance(task)

        return run(model, input_path, output, outputs=outputs, labelmap=labelmap,
                   on_scan_progress=scanned, on_case_start=started, on_case_done=finished)


def _print_report(report) -> None:
    for line in report.discovery_warnings:
        err_console.print(f"[yellow]warning:[/] {line}", highlight=False)
    for result in report.results:
        if result.ok:
            values = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in result.values.items())
            console.print(f"[green]ok[/] {result.case_id}: {values}", highlight=False)
            for line in result.warnings:
                err_console.print(f"  [yellow]note:[/] {line}", highlight=False)
        else:
            err_console.print(f"[red]error:[/] {result.message}", highlight=False)
    console.print(f"outputs: {report.output}  (provenance: {report.record_path})", highlight=False)


@app.command("run")
def run_command(
    model: Annotated[str, typer.Argument(help="Model id (e.g. lung-ct), or a folder made by `medhub export-model`.")],
    input: Annotated[Path, typer.Option("--input", "-i", help="DICOM folder/file, NIfTI/NRRD/MHA file, "
                                        "a folder of sessions, or photos (JPEG/PNG) for a photo model.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder.")],
    outputs: Annotated[str, typer.Option(help="Comma-separated: seg,sr,nifti,json,png.")] = "seg,sr,nifti,json,png",
    labelmap: Annotated[bool, typer.Option(help="Write a LABELMAP SEG instead of BINARY.")] = False,
    saliency: Annotated[bool, typer.Option("--saliency", help="Photo models: write a saliency overlay "
                                           "(saliency.png) per photo.")] = False,
    saliency_method: Annotated[str, typer.Option(help="integrated-gradients or grad-cam (with --saliency).")
                               ] = "integrated-gradients",
) -> None:
    """Run MODEL on every case under INPUT and write OUTPUT/<case-id>/."""
    if saliency:
        from medhub.hub.registry import get_model

        instance = get_model(model)
        if not hasattr(instance, "saliency"):
            raise MedhubError(model, "this model has no saliency maps (--saliency is for photo models)",
                              code="bad-option")
        from medhub.face.saliency import SALIENCY_METHODS

        if saliency_method not in SALIENCY_METHODS:
            raise MedhubError(None, f"--saliency-method {saliency_method}: choose from "
                              f"{', '.join(SALIENCY_METHODS)}", code="bad-option")
        instance.saliency = saliency_method
    report = _run_with_progress(model, input, output, _parse_outputs(outputs), labelmap)
    _print_report(report)
    if report.failed:
        raise typer.Exit(1)


@app.command("verify")
def verify_command(
    model: Annotated[str | None, typer.Argument(help="Model id.")] = None,
    all_models: Annotated[bool, typer.Option("--all", help="Verify every available model.")] = False,
) -> None:
    """Rerun models on their reference data and compare with the expected outputs."""
    from medhub.hub.registry import available_models
    from medhub.hub.verify import verify_model

    if bool(model) == all_models:
        raise MedhubError(None, "give either a MODEL id or --all", code="bad-option")
    ids = sorted(available_models()) if all_models else [model]
    failed = 0
    for model_id in ids:
        with console.status(f"verifying {model_id}…"):
            report = verify_model(model_id)
        table = Table(title=f"verify {report.model_id} {report.version}: "
                            f"{'PASS' if report.passed else 'FAIL'} "
                            f"({report.runtime_s:.1f} s, peak RSS {report.peak_rss_mib:.0f} MiB)")
        for column in ("check", "expected", "actual", "result"):
            table.add_column(column)
        for check in report.checks:
            table.add_row(check.name, check.expected, check.actual,
                          "[green]pass[/]" if check.passed else "[red]FAIL[/]")
        console.print(table)
        failed += not report.passed
    if failed:
        raise typer.Exit(1)


@app.command("demo")
def demo_command(
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder.")] = Path("medhub-demo-output"),
) -> None:
    """Run lung-ct on the chest CT shipped inside the package and show where the outputs are."""
    from medhub.hub.registry import get_model

    model = get_model(DEMO_MODEL)
    input_path = Path(model.folder) / model.card.reference.input
    console.print(f"medhub demo: {DEMO_MODEL} {model.card.version} on {input_path}", highlight=False)
    report = _run_with_progress(DEMO_MODEL, input_path, output.resolve(), ["seg", "sr", "nifti", "json", "png"], False)
    _print_report(report)
    for result in report.results:
        for kind, path in result.outputs.items():
            console.print(f"  {kind:6s} {path}", highlight=False)
    if report.failed:
        raise typer.Exit(1)


def main() -> None:
    """Entry point: run the app, turning expected errors into one line and an exit code."""
    debug = "--debug" in sys.argv[1:]
    if debug:  # accepted anywhere on the line, not only before the command
        sys.argv = [sys.argv[0], "--debug", *(a for a in sys.argv[1:] if a != "--debug")]
    # Library log lines (highdicom, pydicom) would interleave with our one-line messages; --debug shows them.
    logging.basicConfig(level=logging.DEBUG if debug else logging.ERROR,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        code = app(standalone_mode=False)
    except typer.Exit as e:
        code = e.exit_code
    except MedhubError as e:
        if debug:
            raise
        err_console.print(f"[red]error:[/] {e.message}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("aborted")
        sys.exit(130)
    except Exception as e:  # usage errors come here too
        # typer raises its vendored click's exceptions (typer._click), so recognise them by their interface
        if callable(getattr(e, "show", None)) and isinstance(getattr(e, "exit_code", None), int):
            e.show()
            sys.exit(e.exit_code)
        if debug:
            raise
        err_console.print(f"[red]error:[/] internal error: {type(e).__name__}: {e} (run with --debug for the "
                          "traceback)", highlight=False, soft_wrap=True)
        sys.exit(3)
    sys.exit(code or 0)


if __name__ == "__main__":
    main()
