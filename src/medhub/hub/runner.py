"""``run(model, input, output)``: discover cases, check them against the card, predict, write outputs.

Each case is written to ``OUTPUT/<case-id>/`` through a hidden staging folder that is renamed into place only
when every file of the case is complete, so an interrupted or failed case never leaves partial output. A case
that fails becomes a :class:`CaseResult` with a reason code and message; the run goes on with the next case.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medhub import __version__
from medhub.errors import InputError, MedhubError, ModelError, OutputError
from medhub.hub.card import ModelCard, Weights, sha256_file
from medhub.hub.cases import Case, Discovery, discover_inputs
from medhub.hub.model import Model, Prediction
from medhub.hub.registry import get_model
from medhub.io import records
from medhub.io.files import ensure_writable_dir, make_staging_dir
from medhub.io.volume import Volume, resample_onto

OUTPUT_KINDS = ("seg", "sr", "nifti", "json", "png")
DEFAULT_OUTPUTS = OUTPUT_KINDS


@dataclass
class CaseResult:
    """The outcome of one case; ``status`` is ``"ok"`` or ``"failed"``."""

    case_id: str
    status: str
    input: dict[str, Any]
    outputs: dict[str, str] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    reason_code: str | None = None
    message: str | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    peak_rss_mib: float | None = None
    columns: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class RunReport:
    model_id: str
    output: Path
    results: list[CaseResult]
    discovery_warnings: list[str] = field(default_factory=list)
    non_dicom_files: int = 0
    record_path: Path | None = None

    @property
    def failed(self) -> list[CaseResult]:
        return [r for r in self.results if not r.ok]


def _weights_file(model: Model, weights: Weights) -> Path:
    folder = getattr(model, "folder", None)
    return Path(folder) / weights.file if folder is not None else Path(weights.file)


def check_model_runnable(model: Model) -> str | None:
    """Refuse a model whose card says it needs weights it does not have, or whose weights files (``weights`` and
    ``extra_weights``) are missing or differ from the card's sha256; return the main weights' sha256."""
    card = model.card
    if card.weights is None and card.needs_weights:
        how = f" To train it: {card.how_to_train}" if card.how_to_train else ""
        raise ModelError(card.id, "this model has no trained weights (see `medhub info "
                         f"{card.id}`); it refuses to run rather than make up outputs.{how}", code="no-weights")
    for weights in ([card.weights] if card.weights else []) + list(card.extra_weights):
        path = _weights_file(model, weights)
        if not path.exists():
            raise ModelError(card.id, f"weights file {weights.file} is missing", code="no-weights")
        digest = sha256_file(path)
        if digest != weights.sha256:
            raise ModelError(card.id, f"weights file {weights.file} has sha256 {digest[:12]}…, the card "
                             f"expects {weights.sha256[:12]}…", code="weights-mismatch")
    return card.weights.sha256 if card.weights else None


def load_session(card: ModelCard, case: Case, workers: int | None = None) -> dict[str, Volume]:
    """The session's volumes by sequence name, in the card's order, each on the first one's grid (resampled
    linearly through patient coordinates when a series was acquired on another grid)."""
    volumes: dict[str, Volume] = {}
    for spec in card.inputs.sequences:
        if spec.name in case.inputs:
            loaded = case.inputs[spec.name].load(workers=workers)
            volumes[spec.name] = loaded if not volumes else resample_onto(loaded, next(iter(volumes.values())))
    return volumes


def check_case(card: ModelCard, case: Case) -> None:
    """Refuse, before loading pixels, a case that does not match the card's inputs: a session lacking a required
    sequence, a DICOM series of another modality or too few slices."""
    if case.is_session:
        if case.missing:
            wanted = ", ".join(s.name for s in card.inputs.sequences if s.required)
            raise InputError(case.label, f"missing sequence{'s' if len(case.missing) > 1 else ''} "
                             f"{', '.join(case.missing)} ({card.id} needs {wanted})", code="missing-sequence")
        for sub in case.inputs.values():
            check_case(card, sub)
        return
    series = case.series
    if series is None:
        return
    wanted = card.inputs.modality
    if series.modality and series.modality != wanted:
        raise InputError(case.label, f"modality {series.modality}, {card.id} needs {wanted}",
                         code="wrong-modality")
    if len(series.files) < card.inputs.min_slices and not series.headers[0].get("NumberOfFrames"):
        raise InputError(case.label, f"{len(series.files)} slice(s); {card.id} needs at least "
                         f"{card.inputs.min_slices} (a localizer or a single image is not a volume)",
                         code="too-few-slices")
    if series.geometry.has_gap and card.inputs.on_gap == "refuse":
        raise InputError(case.label, "; ".join(series.geometry.messages()) + f"; {card.id} refuses series with "
                         "missing slices", code="gap")


def check_volume(card: ModelCard, case: Case, volume: Volume) -> list[str]:
    """Refuse a loaded volume whose geometry or values do not fit the card; return warnings to record."""
    warnings: list[str] = []
    spec = card.inputs
    dz, dy, dx = volume.spacing
    limits = spec.spacing_mm
    if not all(np.isfinite([dz, dy, dx])) or min(dz, dy, dx) <= 0:
        raise InputError(case.label, f"absurd voxel spacing {dz:g}×{dy:g}×{dx:g} mm", code="bad-spacing")
    if not (limits.in_plane_min <= min(dy, dx) and max(dy, dx) <= limits.in_plane_max):
        raise InputError(case.label, f"in-plane spacing {dy:g}×{dx:g} mm is outside {card.id}'s range "
                         f"{limits.in_plane_min:g}–{limits.in_plane_max:g} mm", code="bad-spacing")
    if not (limits.slice_min <= dz <= limits.slice_max):
        raise InputError(case.label, f"slice spacing {dz:g} mm is outside {card.id}'s range "
                         f"{limits.slice_min:g}–{limits.slice_max:g} mm", code="bad-spacing")
    if volume.shape[0] < spec.min_slices:
        raise InputError(case.label, f"{volume.shape[0]} slice(s); {card.id} needs at least {spec.min_slices}",
                         code="too-few-slices")
    if case.series is None and spec.modality == "CT":
        low = float(np.percentile(volume.array[:: max(1, volume.shape[0] // 16)], 1))
        if low > -200:
            raise InputError(case.label, f"values do not look like CT in HU (1st percentile {low:.0f}); "
                             f"{card.id} needs CT", code="wrong-modality")
        warnings.append(f"{case.label}: volume files do not record modality; values look like CT in HU")
    return warnings


def _write_case_outputs(
    staging: Path, model: Model, case: Case, volume: Volume, prediction: Prediction,
    outputs: set[str], labelmap: bool,
) -> tuple[dict[str, str], list[str]]:
    card = model.card
    written: dict[str, str] = {}
    notes: list[str] = []
    has_labels = prediction.labels is not None and bool(card.outputs.segments)
    dicom_source = volume.source is not None
    if ("seg" in outputs or "sr" in outputs) and not dicom_source:
        notes.append("SEG/SR need a DICOM source; not written for a volume-file input")
    if "seg" in outputs and has_labels and dicom_source:
        from medhub.io.seg import write_seg

        write_seg(prediction.labels, volume, card.outputs.segments, staging / "seg.dcm", card=card,
                  labelmap=labelmap)
        written["seg"] = "seg.dcm"
    if "sr" in outputs and prediction.values and dicom_source:
        from medhub.io.sr import write_sr

        specs = [v for v in card.outputs.values if v.name in prediction.values]
        write_sr(prediction.values, specs, volume, staging / "sr.dcm", card=card,
                 seg_path=staging / "seg.dcm" if "seg" in written else None)
        written["sr"] = "sr.dcm"
    if "nifti" in outputs and has_labels:
        from medhub.io.nifti import write_volume

        write_volume(volume, staging / "labels.nii.gz", array=prediction.labels.astype(np.uint8))
        written["nifti"] = "labels.nii.gz"
    if "png" in outputs and has_labels:
        from medhub.io.preview import auto_window, write_overlay_png

        level, width = (-300.0, 1400.0) if card.inputs.modality == "CT" else auto_window(volume.array)
        caption = f"{card.id} {card.version}: " + ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in prediction.values.items() if not (isinstance(v, str) and len(v) > 20))
        write_overlay_png(volume, prediction.labels, card.outputs.segments, staging / "preview.png", level=level,
                          width=width, caption=caption)
        written["png"] = "preview.png"
    return written, notes


def _write_photo_outputs(staging: Path, prediction: Prediction, outputs: set[str]
                         ) -> tuple[dict[str, str], list[str]]:
    """A photo's pictures (``<name>.png``); DICOM SEG/SR and NIfTI have no source to refer to."""
    from medhub.io.files import write_bytes_atomic

    written: dict[str, str] = {}
    if "png" in outputs:
        import io

        from PIL import Image

        for name, picture in prediction.images.items():
            buffer = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(picture, dtype=np.uint8)).save(buffer, format="PNG")
            write_bytes_atomic(staging / f"{name}.png", buffer.getvalue())
            written[name] = f"{name}.png"
    return written, []  # SEG/SR/NIfTI need a DICOM or volume source: a photo gets JSON, CSV and PNG


def _publish(staging: Path, target: Path) -> None:
    """Move a finished case folder into place, replacing an older result for the same case."""
    if target.exists():
        trash = target.with_name(f".{target.name}.old-{time.time_ns()}")
        target.rename(trash)
        staging.rename(target)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        staging.rename(target)


def run_case(
    model: Model, case: Case, output: Path, *, outputs: Iterable[str] = DEFAULT_OUTPUTS,
    labelmap: bool = False, provenance: dict[str, Any] | None = None, workers: int | None = None,
) -> CaseResult:
    """Run ``model`` on one case and write ``output/<case.id>/``; never raises for an expected failure."""
    result = CaseResult(case_id=case.id, status="failed", input=case.input_record())
    timings = result.timings_s
    staging: Path | None = None
    wanted = set(outputs)
    try:
        t = time.perf_counter()
        check_case(model.card, case)
        volume: Volume | None = None
        if case.photo:
            model_input: Any = case.load_photo()
        else:
            inputs = load_session(model.card, case, workers) if case.is_session else None
            # a session's outputs are on its first declared sequence's grid
            volume = next(iter(inputs.values())) if inputs else case.load(workers=workers)
            result.warnings.extend(check_volume(model.card, case, volume))
            model_input = inputs if inputs is not None else volume
        timings["load"] = round(time.perf_counter() - t, 3)

        t = time.perf_counter()
        try:
            prediction = model.predict(model_input)
        except MedhubError as e:
            # Models do not know file names; name the case in their refusals.
            if e.where is None:
                e.where = case.label
            raise
        timings["predict"] = round(time.perf_counter() - t, 3)
        result.values = dict(prediction.values)
        result.columns = dict(prediction.columns)
        result.warnings.extend(prediction.warnings)

        t = time.perf_counter()
        staging = make_staging_dir(output, case.id)
        if volume is not None:
            written, notes = _write_case_outputs(staging, model, case, volume, prediction, wanted, labelmap)
        else:
            written, notes = _write_photo_outputs(staging, prediction, wanted)
        result.warnings.extend(notes)
        result.outputs = {kind: str(output / case.id / name) for kind, name in written.items()}
        result.status = "ok"
        if "json" in wanted:
            record = {**(provenance or {}), "case": case_record(result), "extra": prediction.extra}
            records.write_json(staging / "results.json", record)
            records.write_csv(staging / "results.csv", [_csv_row(result)])
            result.outputs["json"] = str(output / case.id / "results.json")
            for name, table in prediction.tables.items():
                records.write_csv(staging / f"{name}.csv", table.rows, table.columns)
                result.outputs[name] = str(output / case.id / f"{name}.csv")
        _publish(staging, output / case.id)
        staging = None
        timings["write"] = round(time.perf_counter() - t, 3)
    except MedhubError as e:
        result.status, result.reason_code, result.message = "failed", e.code, e.message
    except OSError as e:
        err = OutputError(output / case.id, f"cannot write output ({e.strerror or e})")
        result.status, result.reason_code, result.message = "failed", err.code, err.message
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        result.peak_rss_mib = records.peak_rss_mib()
    if not result.ok:
        result.outputs = {}
    return result


def case_record(r: CaseResult) -> dict[str, Any]:
    return {
        "case_id": r.case_id, "status": r.status, "reason_code": r.reason_code, "message": r.message,
        "input": r.input, "outputs": r.outputs, "values": r.values, **({"columns": r.columns} if r.columns else {}),
        "warnings": r.warnings,
        "timings_s": r.timings_s, "peak_rss_mib": r.peak_rss_mib,
    }


def _csv_row(r: CaseResult) -> dict[str, Any]:
    return {
        "case_id": r.case_id, "status": r.status, "reason_code": r.reason_code or "",
        **({"image": r.input["path"]} if r.input.get("kind") == "photo" else
           {"series_instance_uid": r.input.get("series_instance_uid", "")}), **r.values, **r.columns,
        "message": r.message or "",
    }


def _skipped_paths(discovery: Discovery) -> dict[str, list[str]]:
    """The paths the walk of the input skipped, for the run record."""
    tree = discovery.tree
    if tree is None:
        return {}
    return {"dangling_links": [f"{link} -> {target}" for link, target in tree.dangling_links],
            "duplicate_paths": [f"{skipped} = {kept}" for skipped, kept in tree.duplicates],
            "link_loops": [f"{link} -> {target}" for link, target in tree.loops],
            "unlistable_folders": [f"{folder}: {why}" for folder, why in tree.unreadable]}


def provenance_record(model: Model, weights_digest: str | None) -> dict[str, Any]:
    card = model.card
    return {
        "medhub_version": __version__,
        "model": {"id": card.id, "name": card.name, "version": card.version,
                  "weights_sha256": weights_digest,
                  "weights_trained_on": card.weights.trained_on if card.weights else None,
                  "extra_weights": [{"file": w.file, "sha256": w.sha256, "purpose": w.purpose,
                                     "trained_on": w.trained_on} for w in card.extra_weights]},
        "packages": records.package_versions(),
        "host": records.host_info(),
        "started_utc": records.utc_now(),
    }


def run(
    model: str | Model, input_path: str | Path, output: str | Path, *,
    outputs: Iterable[str] = DEFAULT_OUTPUTS, labelmap: bool = False, workers: int | None = None,
    on_scan_progress: Callable[[int, int], None] | None = None,
    on_case_start: Callable[[Case, int, int], None] | None = None,
    on_case_done: Callable[[CaseResult], None] | None = None,
) -> RunReport:
    """Run a model on every case under ``input_path`` and write results to ``output``.

    Returns a :class:`RunReport`; raises :class:`MedhubError` only for problems that stop the whole run
    (unknown model, no weights, unwritable output folder, no case found in the input).
    """
    wanted = set(outputs)
    unknown = wanted - set(OUTPUT_KINDS)
    if unknown:
        raise InputError(None, f"unknown output kind(s) {sorted(unknown)}; choose from {', '.join(OUTPUT_KINDS)}",
                         code="bad-option")
    model = get_model(model) if isinstance(model, str) else model
    digest = check_model_runnable(model)
    output = ensure_writable_dir(output)
    t0 = time.perf_counter()
    discovery: Discovery = discover_inputs(input_path, model.card.inputs.sequences, progress=on_scan_progress,
                                           kind=model.card.inputs.kind)
    discovery_s = round(time.perf_counter() - t0, 3)
    provenance = provenance_record(model, digest)

    results = []
    for index, case in enumerate(discovery.cases):
        if on_case_start:
            on_case_start(case, index, len(discovery.cases))
        result = run_case(model, case, output, outputs=wanted, labelmap=labelmap, provenance=provenance,
                          workers=workers)
        results.append(result)
        if on_case_done:
            on_case_done(result)

    report = RunReport(model_id=model.card.id, output=output, results=results,
                       discovery_warnings=discovery.warnings, non_dicom_files=discovery.non_dicom_files)
    run_record = {
        **provenance,
        "finished_utc": records.utc_now(),
        "input": str(Path(input_path).resolve()),
        "options": {"outputs": sorted(wanted), "labelmap": labelmap},
        "discovery": {"seconds": discovery_s, "non_dicom_files": discovery.non_dicom_files,
                      "unreadable": [f"{p}: {why}" for p, why in discovery.unreadable],
                      **_skipped_paths(discovery),
                      "warnings": discovery.warnings},
        "peak_rss_mib": records.peak_rss_mib(),
        "cases": [case_record(r) for r in results],
    }
    report.record_path = records.write_json(output / "run.json", run_record)
    records.write_csv(output / "results.csv", [_csv_row(r) for r in results])
    return report
