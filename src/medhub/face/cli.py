"""``medhub robustness``: how much a photo model's prediction moves under photo changes that should not matter."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console()
#: Card units (UCUM) shown as words in reports.
UCUM_WORDS = {"a": "years", "{risk}": "log hazard ratio"}


def robustness_command(
    model: Annotated[str, typer.Argument(help="A photo model id (e.g. face-age) or a folder made by "
                                         "`medhub export-model`.")],
    input: Annotated[Path, typer.Option("--input", "-i", help="A folder of photos (JPEG/PNG).")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Folder for robustness.csv/.md/.png and "
                                                "predictions.csv (default: INPUT's name + _robustness, beside "
                                                "it).")] = None,
    limit: Annotated[int | None, typer.Option(help="Use the first N photos only.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random perturbations (occlusion place).")] = 0,
) -> None:
    """Perturb every photo (brightness, contrast, gamma, blur, JPEG, rotation ±15°, flip, occlusion) and report the
    mean and 95th-percentile absolute change of the prediction, as a table and a plot."""
    from medhub.errors import InputError
    from medhub.face.robustness import assess, write_report
    from medhub.hub.registry import get_model
    from medhub.hub.runner import check_model_runnable
    from medhub.io.photo import find_photos

    instance = get_model(model)
    if instance.card.inputs.kind != "photo":
        raise InputError(None, f"{instance.card.id} is not a photo model (robustness perturbs photos)",
                         code="bad-option")
    check_model_runnable(instance)
    if not input.exists():
        raise InputError(input, "no such file or folder", code="not-found")
    photos = find_photos(input)[:limit]
    if not photos:
        raise InputError(input, "no JPEG or PNG photos", code="no-input")
    report = assess(instance, photos, seed=seed)
    output = output or input.resolve().parent / f"{input.resolve().name}_robustness"
    unit = UCUM_WORDS.get(instance.card.outputs.values[0].unit, instance.card.outputs.values[0].unit)
    write_report(report, output, unit=unit)
    console.print(f"{instance.card.id} on {len(photos)} photos ({len(report.failures)} failures); worst p95 change "
                  f"{max(r['p95_abs_change'] for r in report.table()):.2f} {unit}; table and plot in {output}",
                  highlight=False)
