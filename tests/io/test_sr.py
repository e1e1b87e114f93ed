"""DICOM SR (TID 1500 Measurement Report) output, checked with pydicom, highdicom and dciodvfy."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import pydicom
import pytest

from medhub.errors import OutputError
from medhub.io.seg import write_seg
from medhub.io.sr import write_sr
from medhub.io.volume import Volume
from tests.io.dicom_sources import (
    REAL_DICOM,
    TYPE2_DROPPED,
    blob_labels,
    dciodvfy_errors,
    lung_card,
    read_header_volume,
    write_ct_series,
)

VALUES = {"lung_volume": 4321.5, "mean_density": -850.25}


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Volume]:
    root = tmp_path_factory.mktemp("sr-sources")
    found = {
        "well-formed": read_header_volume(write_ct_series(root / "good", slices=6, rows=32, columns=32)),
        "damaged": read_header_volume(
            write_ct_series(root / "bad", slices=6, rows=32, columns=32, damaged=True)
        ),
    }
    if REAL_DICOM.is_dir():
        found["real"] = read_header_volume(REAL_DICOM)
    return found


def content_items(ds: pydicom.Dataset) -> Iterator[pydicom.Dataset]:
    for item in ds.get("ContentSequence", []):
        yield item
        yield from content_items(item)


def named(ds: pydicom.Dataset, value_type: str) -> dict[str, pydicom.Dataset]:
    """Content items of one value type, by concept code value."""
    return {
        item.ConceptNameCodeSequence[0].CodeValue: item
        for item in content_items(ds)
        if item.ValueType == value_type
    }


def test_numeric_values_round_trip_with_units_and_codes(sources, tmp_path):
    volume = sources["well-formed"]
    card = lung_card()
    out = write_sr(VALUES, card.outputs.values, volume, tmp_path / "sr.dcm", card=card)
    ds = pydicom.dcmread(out)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR Storage
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    numbers = named(ds, "NUM")
    volume_item = numbers["118565006"].MeasuredValueSequence[0]
    assert math.isclose(float(volume_item.NumericValue), 4321.5)
    assert volume_item.MeasurementUnitsCodeSequence[0].CodeValue == "ml"
    assert volume_item.MeasurementUnitsCodeSequence[0].CodingSchemeDesignator == "UCUM"
    density = numbers["112031"].MeasuredValueSequence[0]
    assert math.isclose(float(density.NumericValue), -850.25)
    assert density.MeasurementUnitsCodeSequence[0].CodeValue == "[hnsf'U]"

    codes = named(ds, "CODE")
    assert codes["121058"].ConceptCodeSequence[0].CodeValue == "77477000"  # procedure reported: CT
    texts = named(ds, "TEXT")
    assert texts["121013"].TextValue == "Lung test model 1.0.0"  # device observer name
    assert texts["121014"].TextValue == "medhub"  # device observer manufacturer
    assert texts["111001"].TextValue == "Lung test model"  # algorithm name
    assert texts["111003"].TextValue == "1.0.0"  # algorithm version

    # highdicom parses it back as a TID 1500 report with one image-level measurement group.
    report = hd.sr.srread(out)
    groups = report.content.get_image_measurement_groups()
    assert len(groups) == 1
    names = {m.name.value: m.value for m in groups[0].get_measurements()}
    assert names == {"118565006": 4321.5, "112031": -850.25}


def test_text_values_and_comments_are_text_items(sources, tmp_path):
    volume = sources["well-formed"]
    card = lung_card()
    specs = [*card.outputs.values, card.outputs.values[0].model_copy(update={"name": "risk_class"})]
    out = write_sr({"lung_volume": 10.0, "risk_class": "high"}, specs, volume, tmp_path / "sr.dcm",
                   card=card, extra_text={"input": "slice gap filled"})
    texts = [item.TextValue for item in content_items(pydicom.dcmread(out)) if item.ValueType == "TEXT"]
    assert "high" in texts
    assert "input: slice gap filled" in texts
    assert dciodvfy_errors(out) == []


@pytest.mark.parametrize("name", ["well-formed", "damaged", "real"])
def test_dciodvfy_finds_no_errors_and_seg_is_referenced(sources, tmp_path, name):
    if name not in sources:
        pytest.skip(f"{REAL_DICOM} is not present")
    volume = sources[name]
    card = lung_card()
    seg = write_seg(blob_labels(volume.shape), volume, card.outputs.segments, tmp_path / "seg.dcm", card=card)
    out = write_sr(VALUES, card.outputs.values, volume, tmp_path / "sr.dcm", card=card, seg_path=seg)
    assert dciodvfy_errors(out) == []

    ds = pydicom.dcmread(out)
    seg_ds = pydicom.dcmread(seg, stop_before_pixels=True)
    evidence = {
        series.SeriesInstanceUID: {ref.ReferencedSOPInstanceUID for ref in series.ReferencedSOPSequence}
        for study in ds.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
    }
    assert evidence[volume.source.series_instance_uid] == set(volume.source.sop_instance_uids)
    assert evidence[seg_ds.SeriesInstanceUID] == {seg_ds.SOPInstanceUID}
    assert ds.StudyInstanceUID == volume.source.study_instance_uid
    if name == "damaged":
        for keyword in TYPE2_DROPPED:
            assert keyword not in volume.source.headers[0]


def test_same_input_gives_byte_identical_sr_and_version_changes_uids(sources, tmp_path):
    volume = sources["damaged"]
    card = lung_card("2.0.0")
    first = write_sr(VALUES, card.outputs.values, volume, tmp_path / "a.dcm", card=card)
    second = write_sr(VALUES, card.outputs.values, volume, tmp_path / "b.dcm", card=card)
    assert first.read_bytes() == second.read_bytes()
    newer = lung_card("2.0.1")
    third = write_sr(VALUES, newer.outputs.values, volume, tmp_path / "c.dcm", card=newer)
    a, c = pydicom.dcmread(first), pydicom.dcmread(third)
    assert a.SOPInstanceUID != c.SOPInstanceUID and a.SeriesInstanceUID != c.SeriesInstanceUID


def test_bad_values_and_unwritable_output_are_output_errors(sources, tmp_path: Path):
    volume = sources["well-formed"]
    card = lung_card()
    with pytest.raises(OutputError, match="no value specification"):
        write_sr({"unknown": 1.0}, card.outputs.values, volume, tmp_path / "sr.dcm", card=card)
    with pytest.raises(OutputError, match="nan"):
        write_sr({"lung_volume": float("nan")}, card.outputs.values, volume, tmp_path / "sr.dcm", card=card)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError):
        write_sr(VALUES, card.outputs.values, volume, blocker / "sr.dcm", card=card)
    assert [p.name for p in tmp_path.iterdir()] == ["file"]
