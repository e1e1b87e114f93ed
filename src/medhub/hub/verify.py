"""``medhub verify``: rerun a model on its shipped reference case and compare with the expected outputs.

A model folder's ``reference/`` holds:

* ``input/``: the input (a DICOM series or a volume file);
* ``expected/``: ``seg.dcm`` (expected segmentation) and ``values.json`` (expected scalar outputs);
* ``tolerances.yaml``: :class:`Tolerances`: minimum Dice per segment, absolute/relative tolerance per value,
  and which SEG metadata must match (segment count, codes, referenced series, frame count).
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medhub.errors import MedhubError, VerificationError
from medhub.hub.cases import discover_inputs
from medhub.hub.model import Model
from medhub.hub.registry import get_model
from medhub.hub.runner import check_model_runnable, run
from medhub.io import records
from medhub.metrics.segmentation import dice


class ValueTolerance(BaseModel):
    model_config = ConfigDict(extra="forbid")
    abs: float = Field(0.0, ge=0)
    rel: float = Field(0.0, ge=0)


class SegChecks(BaseModel):
    model_config = ConfigDict(extra="forbid")
    segment_count: bool = True
    codes: bool = True
    referenced_series: bool = True
    frame_count: bool = True


class Tolerances(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dice_min: float = Field(0.99, ge=0, le=1, description="Default minimum Dice for every segment.")
    dice_min_per_segment: dict[str, float] = Field(default_factory=dict)
    values: dict[str, ValueTolerance] = Field(default_factory=dict)
    seg: SegChecks = SegChecks()


@dataclass
class Check:
    name: str
    expected: str
    actual: str
    passed: bool


@dataclass
class VerifyReport:
    model_id: str
    version: str
    checks: list[Check] = field(default_factory=list)
    runtime_s: float = 0.0
    peak_rss_mib: float = 0.0

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)


def load_tolerances(path: Path) -> Tolerances:
    try:
        return Tolerances.model_validate(yaml.safe_load(path.read_text()) or {})
    except FileNotFoundError as e:
        raise VerificationError(path, "tolerances file not found", code="no-reference") from e
    except (yaml.YAMLError, ValidationError) as e:
        raise VerificationError(path, f"invalid tolerances: {str(e).splitlines()[0]}") from e


def _segment_codes(ds: pydicom.Dataset) -> list[str]:
    return [
        f"{item.SegmentLabel}={item.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator}:"
        f"{item.SegmentedPropertyTypeCodeSequence[0].CodeValue}"
        + (f"/{item.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence[0].CodeValue}"
           if "SegmentedPropertyTypeModifierCodeSequence" in item.SegmentedPropertyTypeCodeSequence[0] else "")
        for item in ds.SegmentSequence
    ]


def _referenced_series(ds: pydicom.Dataset) -> str:
    seq = ds.get("ReferencedSeriesSequence")
    return str(seq[0].SeriesInstanceUID) if seq else ""


def verify_model(model: str | Model) -> VerifyReport:
    """Run ``model`` on its reference input and compare every output with the expected one."""
    from medhub.io.seg import read_seg

    model = get_model(model) if isinstance(model, str) else model
    card = model.card
    if card.weights is None and card.needs_weights:
        return _verify_refusal(model)
    if card.reference is None:
        raise VerificationError(card.id, "the model card declares no reference data", code="no-reference")
    folder = Path(model.folder)
    input_path = folder / card.reference.input
    expected_dir = folder / card.reference.expected
    tolerances = load_tolerances(folder / card.reference.tolerances)
    expected_seg_path = expected_dir / "seg.dcm"
    expected_values_path = expected_dir / "values.json"
    for needed in (input_path, expected_dir):
        if not needed.exists():
            raise VerificationError(needed, "reference data missing", code="no-reference")

    report = VerifyReport(model_id=card.id, version=card.version)
    with tempfile.TemporaryDirectory(prefix="medhub-verify-") as tmp:
        start = time.perf_counter()
        run_report = run(model, input_path, tmp, outputs=("seg", "sr", "json"))
        report.runtime_s = round(time.perf_counter() - start, 2)
        report.peak_rss_mib = records.peak_rss_mib()
        if len(run_report.results) != 1:
            raise VerificationError(input_path, f"reference input must hold one case, found "
                                    f"{len(run_report.results)}", code="bad-reference")
        result = run_report.results[0]
        report.checks.append(Check("run", "ok", result.message or result.status, result.ok))
        if not result.ok:
            return report

        if expected_seg_path.exists():
            case = discover_inputs(input_path, card.inputs.sequences).cases[0]
            # a session's outputs are on its first declared sequence, whose series the SEG references
            reference_volume = (next(iter(case.inputs.values())) if case.is_session else case).load()
            report.checks.extend(_compare_segs(
                Path(result.outputs["seg"]), expected_seg_path, reference_volume, tolerances, read_seg))
        if expected_values_path.exists():
            expected_values = json.loads(expected_values_path.read_text())
            report.checks.extend(_compare_values(result.values, expected_values, tolerances))
    return report


def _verify_refusal(model: Model) -> VerifyReport:
    """A model whose card says it has no trained weights passes when it refuses to run, with ``no-weights``."""
    report = VerifyReport(model_id=model.card.id, version=model.card.version)
    start = time.perf_counter()
    try:
        check_model_runnable(model)
        outcome, passed = "ran", False
    except MedhubError as e:
        outcome, passed = e.code, e.code == "no-weights"
    report.runtime_s = round(time.perf_counter() - start, 2)
    report.peak_rss_mib = records.peak_rss_mib()
    report.checks.append(Check("no weights: refuses to run", "no-weights", outcome, passed))
    return report


def _compare_segs(actual_path: Path, expected_path: Path, reference, tolerances: Tolerances,
                  read_seg) -> list[Check]:
    checks = []
    actual_labels, actual_segments = read_seg(actual_path, reference=reference)
    expected_labels, expected_segments = read_seg(expected_path, reference=reference)
    for segment in expected_segments:
        name, label = segment["label"], segment["number"]
        actual_number = next((s["number"] for s in actual_segments if s["label"] == name), None)
        minimum = tolerances.dice_min_per_segment.get(name, tolerances.dice_min)
        if actual_number is None:
            checks.append(Check(f"dice {name}", f"≥ {minimum}", "segment missing", False))
            continue
        score = dice(actual_labels == actual_number, expected_labels == label)
        checks.append(Check(f"dice {name}", f"≥ {minimum}", f"{score:.4f}", score >= minimum))

    actual_ds = pydicom.dcmread(actual_path, stop_before_pixels=True)
    expected_ds = pydicom.dcmread(expected_path, stop_before_pixels=True)
    seg = tolerances.seg
    if seg.segment_count:
        a, e = len(actual_ds.SegmentSequence), len(expected_ds.SegmentSequence)
        checks.append(Check("SEG segment count", str(e), str(a), a == e))
    if seg.codes:
        a, e = _segment_codes(actual_ds), _segment_codes(expected_ds)
        checks.append(Check("SEG segment codes", ", ".join(e), ", ".join(a), a == e))
    if seg.referenced_series:
        a, e = _referenced_series(actual_ds), _referenced_series(expected_ds)
        checks.append(Check("SEG referenced series", e, a, bool(a) and a == e))
    if seg.frame_count:
        a, e = int(actual_ds.NumberOfFrames), int(expected_ds.NumberOfFrames)
        checks.append(Check("SEG frame count", str(e), str(a), a == e))
    return checks


def _compare_values(actual: dict[str, Any], expected: dict[str, Any], tolerances: Tolerances) -> list[Check]:
    checks = []
    for name, want in expected.items():
        got = actual.get(name)
        if isinstance(want, (int, float)) and isinstance(got, (int, float)):
            tol = tolerances.values.get(name, ValueTolerance())
            allowed = max(tol.abs, tol.rel * abs(want))
            passed = abs(got - want) <= allowed
            checks.append(Check(name, f"{want:g} ± {allowed:g}", f"{got:g}", passed))
        else:
            checks.append(Check(name, str(want), str(got), got == want))
    return checks
