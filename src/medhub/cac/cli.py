"""``medhub cac``: calcium scoring and agreement commands (mounted by :mod:`medhub.cli` as ``cac``).

Thin: each command parses its arguments, loads inputs and calls one library function of :mod:`medhub.cac`.
Expected failures are :class:`~medhub.errors.InputError`; the main CLI prints them as one line and exits 2.
"""

from __future__ import annotations

import csv
import math
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from medhub.errors import InputError

cac_app = typer.Typer(help="Coronary artery calcium: scores and agreement statistics.", no_args_is_help=True,
                      add_completion=False, pretty_exceptions_enable=False)
console = Console(soft_wrap=True)


class Mode(StrEnum):
    roi = "roi"
    lesion = "lesion"
    mapped = "mapped"


class Connectivity(StrEnum):
    eight = "8"
    four = "4"
    three_d = "3d"
    three_d6 = "3d6"


class Categories(StrEnum):
    standard = "standard"
    deepcac = "deepcac"


def load_single_volume(path: Path, what: str):
    """The one series or volume file at ``path``; refuses a folder holding several."""
    from medhub.hub.cases import discover_cases

    cases = discover_cases(path).cases
    if len(cases) > 1:
        names = ", ".join(case.id for case in cases[:3]) + (", …" if len(cases) > 3 else "")
        raise InputError(path, f"{len(cases)} series or volume files found ({names}); give the {what} as one "
                               "series folder or file", code="several-series")
    return cases[0].load()


@cac_app.command("score")
def score_command(
    ct: Annotated[Path, typer.Argument(help="CT: DICOM series folder or NIfTI/NRRD/MHA file.")],
    mask: Annotated[Path, typer.Option("--mask", "-m", help="Mask on the CT grid (folder or file); binary or "
                                       "labelled, nonzero = mask unless --label is given.")],
    mode: Annotated[Mode, typer.Option(help="roi: region ∩ ≥130 HU; lesion: predicted lesions as-is (DeepCAC); "
                                       "mapped: predicted lesions, voxels ≥130 HU.")] = Mode.roi,
    connectivity: Annotated[Connectivity, typer.Option(help="Lesions: 8/4-connected per slice, or 3D.")]
    = Connectivity.eight,
    categories: Annotated[Categories, typer.Option(help="Risk category scheme.")] = Categories.standard,
    label: Annotated[list[int] | None, typer.Option(help="Mask label(s) forming the mask (repeatable).")] = None,
    min_area_mm2: Annotated[float | None, typer.Option(help="Minimum lesion area in mm² (inclusive).")] = 1.0,
    min_area_px: Annotated[int | None, typer.Option(help="Minimum lesion area in pixels (inclusive).")] = None,
    calibration_factor: Annotated[float | None, typer.Option(help="Mass calibration, mg/cm³/HU.")] = None,
    rod_hu: Annotated[float | None, typer.Option(help="Calibration rod mean HU (with --rod-density).")] = None,
    rod_density: Annotated[float | None, typer.Option(help="Calibration rod density, mg/cm³.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    lesions_csv: Annotated[Path | None, typer.Option(help="Write the per-lesion table to this CSV.")] = None,
) -> None:
    """Agatston, volume and mass calcium scores of CT within MASK."""
    from medhub.cac.scoring import Lesion, ScoringConvention, score_volume
    from medhub.io.records import to_json, write_csv

    if (rod_hu is None) != (rod_density is None):
        raise InputError(None, "give both --rod-hu and --rod-density, or neither", code="bad-option")
    if calibration_factor is not None and rod_hu is not None:
        raise InputError(None, "give --calibration-factor or a calibration rod, not both", code="bad-option")
    try:
        convention = ScoringConvention(connectivity=connectivity.value, min_area_mm2=min_area_mm2,
                                       min_area_px=min_area_px, mode=mode.value, categories=categories.value)
    except ValueError as e:
        raise InputError(None, str(e), code="bad-option") from e
    ct_volume = load_single_volume(ct, "CT")
    mask_volume = load_single_volume(mask, "mask")
    try:
        result = score_volume(ct_volume, mask_volume, convention, labels=label or None, mask_name=str(mask),
                              calibration_factor=calibration_factor, rod_hu=rod_hu, rod_density_mg_cm3=rod_density)
    except ValueError as e:
        raise InputError(None, str(e), code="bad-option") from e
    if lesions_csv is not None:
        write_csv(lesions_csv, [lesion.to_dict() for lesion in result.lesions], Lesion.COLUMNS)
    if as_json:
        console.out(to_json({"ct": str(ct), "mask": str(mask), **result.to_dict()}), end="", highlight=False)
        return
    table = Table(title=f"calcium score: {ct}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    mass = f"{result.mass_mg:.2f} mg" if result.mass_mg is not None else "n/a (no calibration given)"
    thickness = result.nominal_slice_thickness_mm
    rows = [
        ("Agatston", f"{result.agatston:.2f}"),
        ("category", f"{result.category} ({convention.categories})"),
        ("volume", f"{result.volume_mm3:.2f} mm³"),
        ("mass", mass),
        ("lesions", str(result.n_lesions)),
        ("slice spacing used (Δz)", f"{result.slice_spacing_mm:.4g} mm"),
        ("nominal SliceThickness", f"{thickness:.4g} mm (not used)" if thickness is not None else "n/a"),
        ("convention", convention.describe()),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)


def _read_scores(path: Path, id_col: str, score_col: str) -> dict[str, float]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            missing = [c for c in (id_col, score_col) if c not in columns]
            if missing:
                raise InputError(path, f"no column {', '.join(repr(c) for c in missing)} (columns: "
                                       f"{', '.join(columns) or 'none'})", code="missing-column")
            scores: dict[str, float] = {}
            for line, row in enumerate(reader, start=2):
                case, text = (row.get(id_col) or "").strip(), (row.get(score_col) or "").strip()
                try:
                    value = float(text)
                except ValueError:
                    value = math.nan
                if not math.isfinite(value) or value < 0:
                    raise InputError(path, f"line {line}: {score_col} {text!r} is not a number >= 0",
                                     code="not-a-number")
                if case in scores:
                    raise InputError(path, f"line {line}: {id_col} {case!r} appears twice", code="duplicate-id")
                scores[case] = value
    except OSError as e:
        raise InputError(path, f"cannot read ({e.strerror or e})", code="not-found") from e
    except (UnicodeDecodeError, csv.Error) as e:
        raise InputError(path, f"not a readable CSV file ({e})", code="corrupt") from e
    return scores


def _fmt(value: float) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.4g}"


@cac_app.command("agreement")
def agreement_command(
    pred: Annotated[Path, typer.Option("--pred", help="CSV of predicted scores.")],
    ref: Annotated[Path, typer.Option("--ref", help="CSV of reference scores.")],
    id_col: Annotated[str, typer.Option(help="Column joining the two files.")] = "case_id",
    score_col: Annotated[str, typer.Option(help="Score column in both files.")] = "agatston",
    plot: Annotated[Path | None, typer.Option(help="Write a Bland–Altman PNG here.")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the statistics as JSON here.")] = None,
) -> None:
    """Agreement of predicted and reference calcium scores, joined on the id column."""
    from medhub.cac.agreement import agreement, bland_altman_plot
    from medhub.io.records import write_json

    predicted = _read_scores(pred, id_col, score_col)
    reference = _read_scores(ref, id_col, score_col)
    common = [case for case in reference if case in predicted]
    if len(common) < 2:
        raise InputError(pred, f"{len(common)} {id_col} value(s) in common with {ref}; need at least 2",
                         code="no-overlap")
    only_pred, only_ref = len(predicted) - len(common), len(reference) - len(common)
    report = agreement([predicted[c] for c in common], [reference[c] for c in common], ids=common)

    data = {"pred": str(pred), "ref": str(ref), "unmatched_pred": only_pred, "unmatched_ref": only_ref,
            **report.to_dict(cases=True)}
    if json_path is not None:
        write_json(json_path, data)
    if plot is not None:
        bland_altman_plot(report, plot)

    summary = Table(title=f"agreement: {report.n} cases matched on {id_col} ({only_pred} only in {pred.name}, "
                          f"{only_ref} only in {ref.name})")
    summary.add_column("statistic")
    summary.add_column("value", justify="right")
    for name, value in (("Spearman ρ", report.spearman_rho), ("Pearson r, log(1+score)", report.pearson_log_r),
                        ("ICC(2,1)", report.icc_2_1), ("Bland–Altman mean diff", report.mean_difference),
                        ("95% LoA lower", report.loa_lower), ("95% LoA upper", report.loa_upper)):
        summary.add_row(name, _fmt(value))
    console.print(summary)
    for scheme in report.categories.values():
        table = Table(title=f"{scheme.scheme} categories: agreement {scheme.proportion_agreement:.1%}, "
                            f"κ {_fmt(scheme.kappa)}, linear κ {_fmt(scheme.kappa_linear)}, "
                            f"quadratic κ {_fmt(scheme.kappa_quadratic)}")
        table.add_column("ref \\ pred")
        for label in scheme.labels:
            table.add_column(label, justify="right")
        for label, row in zip(scheme.labels, scheme.confusion, strict=True):
            table.add_row(label, *(str(v) for v in row))
        console.print(table)
    if json_path is not None:
        console.print(f"statistics: {json_path}", highlight=False)
    if plot is not None:
        console.print(f"Bland–Altman plot: {plot}", highlight=False)


@cac_app.command("train-classifier")
def train_classifier_command(
    out: Annotated[Path | None, typer.Option("--out", help="Where to write the LightGBM models (.txt, or .txt.gz "
                                             "compressed; default: the cac model's shipped weights); a .json "
                                             "sidecar is added.")] = None,
    phantoms: Annotated[int, typer.Option("--phantoms", min=0, help="Training phantoms.")] = 240,
    lidc_trials: Annotated[int, typer.Option("--lidc-trials", min=0, help="Insertion trials per shared LIDC scan "
                                             "(skipped when ../shared/data is absent).")] = 40,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Processes collecting examples.")] = 2,
    examples: Annotated[Path | None, typer.Option("--examples", help="CSV of the collected examples: read when it "
                                                  "exists, else written.")] = None,
    leave_out_lidc: Annotated[Path | None, typer.Option("--leave-out-lidc", help="Also fit one classifier "
                                                        "without each LIDC scan into this folder.")] = None,
    members: Annotated[int, typer.Option("--members", min=1, help="Boosters averaged (bagging seeds seed ... "
                                         "seed + members - 1).")] = 5,
    seed: Annotated[int, typer.Option("--seed", min=0, help="First bagging seed.")] = 0,
    aortic_wall: Annotated[int, typer.Option("--aortic-wall", min=0, help="Calcifications inserted per LIDC trial "
                                             "into the descending aorta's wall, as aortic (an experiment; 0 for "
                                             "the shipped classifier).")] = 0,
) -> None:
    """Train the calcium-candidate classifier (coronary or not) on phantoms and on LIDC scans with inserted
    plaques."""
    from medhub.models.cac.train_classifier import summary, train

    model = train(out, phantoms=phantoms, lidc_trials=lidc_trials, workers=workers, leave_out_lidc=leave_out_lidc,
                  examples_csv=examples, members=members, seed=seed, aortic_wall=aortic_wall,
                  progress=console.is_terminal)
    console.print(f"wrote {out or 'the cac model weights'} and its sidecar: {summary(model)}", highlight=False)


@cac_app.command("phantom")
def phantom_command(
    out: Annotated[Path, typer.Argument(help="Folder to write: dicom/, ct.nii.gz, labels.nii.gz, heart.nii.gz, "
                                        "truth.json.")],
    seed: Annotated[int, typer.Option("--seed", min=0, help="Everything random derives from it.")] = 0,
    draw: Annotated[bool, typer.Option("--draw", help="Draw the parameters from the benchmark's distribution (noise "
                                       "20-30 HU, PSF, slice spacing 1-3 mm, stents, contrast) for this seed; the "
                                       "options below override single ones.")] = False,
    slices: Annotated[int | None, typer.Option("--slices", min=1, help="Number of axial slices.")] = None,
    size: Annotated[int | None, typer.Option("--size", min=16, help="Rows and columns per slice.")] = None,
    slice_spacing: Annotated[float | None, typer.Option("--slice-spacing", min=0.1, help="mm.")] = None,
    slice_thickness: Annotated[float | None, typer.Option("--slice-thickness", min=0.1,
                                                          help="mm; thicker than the spacing overlaps.")] = None,
    pixel: Annotated[float | None, typer.Option("--pixel", min=0.1, help="In-plane spacing, mm.")] = None,
    noise_sd: Annotated[float | None, typer.Option("--noise-sd", min=0.0, help="Noise SD, HU.")] = None,
    noise_corr: Annotated[float | None, typer.Option("--noise-corr-mm", min=0.0,
                                                     help="Noise correlation (Gaussian sigma), mm.")] = None,
    blur: Annotated[float | None, typer.Option("--blur-mm", min=0.0, help="PSF Gaussian sigma, mm.")] = None,
    plaques: Annotated[int | None, typer.Option("--plaques", min=0, help="Coronary plaques (default: 0-6).")] = None,
    distractors: Annotated[bool | None, typer.Option("--distractors/--no-distractors",
                                                     help="Valve, annulus and aortic-wall calcium.")] = None,
    stent: Annotated[bool | None, typer.Option("--stent/--no-stent", help="A 2,500 HU coronary stent.")] = None,
    contrast: Annotated[bool | None, typer.Option("--contrast/--no-contrast",
                                                  help="Contrast-enhanced blood (about 300 HU).")] = None,
    edge_cases: Annotated[bool | None, typer.Option("--edge-cases/--no-edge-cases",
                                                    help="Minimum-area, bin-edge and diagonal lesions.")] = None,
    nifti: Annotated[bool, typer.Option("--nifti/--no-nifti", help="Also write the NIfTI volumes.")] = True,
) -> None:
    """Write a synthetic chest CT phantom with coronary plaques (DICOM series, NIfTI) and its analytic truth."""
    from medhub.synth.cac_phantom import (
        DEFAULT_SHAPE,
        DEFAULT_SPACING_MM,
        HELD_OUT_SEEDS,
        make_cac_phantom,
        random_phantom_params,
        write_cac_phantom,
    )

    try:
        params: dict = random_phantom_params(seed, held_out=seed in HELD_OUT_SEEDS) if draw else {"seed": seed}
    except ValueError as e:  # the seed belongs to neither the training nor the held-out draws
        raise InputError(None, f"--draw: {e}", code="bad-option") from e
    shape = list(params.get("shape", DEFAULT_SHAPE))
    spacing = list(params.get("spacing", DEFAULT_SPACING_MM))
    if slices is not None:
        shape[0] = slices
    if size is not None:
        shape[1:] = [size, size]
    if slice_spacing is not None:
        spacing[0] = slice_spacing
    if pixel is not None:
        spacing[1:] = [pixel, pixel]
    overrides = {"slice_thickness_mm": slice_thickness, "noise_sd": noise_sd, "noise_corr_mm": noise_corr,
                 "blur_mm": blur, "n_plaques": plaques, "distractors": distractors, "stent": stent,
                 "contrast": contrast, "edge_cases": edge_cases}
    params.update(shape=tuple(shape), spacing=tuple(spacing), **{k: v for k, v in overrides.items() if v is not None})
    if slice_spacing is not None and slice_thickness is None:
        params.pop("slice_thickness_mm", None)  # a drawn thickness belonged to the drawn spacing
    try:
        phantom = make_cac_phantom(**params)
    except ValueError as e:
        raise InputError(None, str(e), code="bad-option") from e
    written = write_cac_phantom(phantom, out, nifti=nifti)
    truth = phantom.truth
    table = Table(title=f"phantom seed {seed}: analytic truth (noise-free, blur-free geometry)")
    for column in ("convention", "Agatston", "volume mm³", "mass mg", "lesions", "category"):
        table.add_column(column)
    for name in ("mapped_8_mm2", "roi_8_mm2", "lesion_8_mm2", "mapped_3d_mm2"):
        t = truth["totals"][name]
        table.add_row(name, f"{t['agatston']:.2f}", f"{t['volume_mm3']:.2f}", f"{t['mass_mg']:.2f}",
                      str(t["n_lesions"]), t["risk_standard"])
    console.print(table)
    flags = [name for name, on in truth.get("flags", {}).items() if on]
    console.print(f"{truth['n_coronary_plaques']} coronary plaques; flags: {', '.join(flags) or 'none'}; "
                  f"all conventions in {written['truth']}", highlight=False)
    for name, path in written.items():
        console.print(f"{name}: {path}", highlight=False)
