"""DICOM SEG output, checked with real tools: highdicom, dciodvfy (dicom3tools) and dcmqi."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from medhub.errors import OutputError
from medhub.io.seg import read_seg, write_seg
from medhub.io.volume import DicomSource, Volume
from tests.io.dicom_sources import (
    REAL_DICOM,
    TYPE2_DROPPED,
    blob_labels,
    dciodvfy_errors,
    lung_card,
    read_header_volume,
    write_ct_series,
)


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Volume]:
    """The well-formed and the damaged synthetic series (64×64×12) and, if present, the real example."""
    root = tmp_path_factory.mktemp("sources")
    found = {
        "well-formed": read_header_volume(write_ct_series(root / "good")),
        "damaged": read_header_volume(write_ct_series(root / "damaged", damaged=True)),
    }
    if REAL_DICOM.is_dir():
        found["real"] = read_header_volume(REAL_DICOM)
    return found


def source(sources: dict[str, Volume], name: str) -> Volume:
    if name not in sources:
        pytest.skip(f"{REAL_DICOM} is not present")
    return sources[name]


def segimage2itkimage() -> str:
    exe = Path(sys.executable).parent / "segimage2itkimage"
    found = str(exe) if exe.exists() else shutil.which("segimage2itkimage")
    if found is None:
        pytest.skip("dcmqi's segimage2itkimage is not installed")
    return found


@pytest.mark.parametrize("name", ["well-formed", "damaged", "real"])
@pytest.mark.parametrize("labelmap", [False, True], ids=["binary", "labelmap"])
def test_highdicom_reads_back_the_same_mask(sources, tmp_path, name, labelmap):
    volume = source(sources, name)
    card = lung_card()
    labels = blob_labels(volume.shape)
    out = write_seg(labels, volume, card.outputs.segments, tmp_path / "seg.dcm", card=card, labelmap=labelmap)

    back, segments = read_seg(out, reference=volume)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, labels)
    assert [s["number"] for s in segments] == [1, 2]
    right = segments[0]
    assert right["label"] == "right lung"
    assert right["category"] == ("123037004", "SCT", "Anatomical Structure")
    assert right["type"] == ("39607008", "SCT", "Lung")
    assert right["modifier"] == ("24028007", "SCT", "Right")
    assert right["anatomic_region"] == ("51185008", "SCT", "Thorax")

    seg = hd.seg.segread(out)
    expected_type = "LABELMAP" if labelmap else "BINARY"
    assert seg.SegmentationType == expected_type
    item = seg.SegmentSequence[-1]
    assert item.SegmentAlgorithmType == "AUTOMATIC"
    algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("Lung test model", "1.0.0")
    assert algorithm.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Morphological Operations"
    referenced = {
        ref.ReferencedSOPInstanceUID
        for series in seg.ReferencedSeriesSequence
        for ref in series.ReferencedInstanceSequence
    }
    assert referenced == set(volume.source.sop_instance_uids)
    assert seg.ContentDate == volume.source.headers[0].StudyDate


def test_ai_model_is_identified_as_artificial_intelligence(sources, tmp_path):
    volume = sources["well-formed"]
    card = lung_card(ai=True)
    out = write_seg(blob_labels(volume.shape), volume, card.outputs.segments, tmp_path / "s.dcm", card=card)
    algorithm = pydicom.dcmread(out).SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"


@pytest.mark.parametrize("name", ["well-formed", "damaged", "real"])
def test_dciodvfy_finds_no_errors_in_binary_seg(sources, tmp_path, name):
    volume = source(sources, name)
    card = lung_card()
    out = write_seg(blob_labels(volume.shape), volume, card.outputs.segments, tmp_path / "seg.dcm", card=card)
    assert dciodvfy_errors(out) == []


def test_dciodvfy_finds_no_errors_in_labelmap_seg(sources, tmp_path):
    volume = sources["well-formed"]
    card = lung_card()
    labels = blob_labels(volume.shape)
    out = write_seg(labels, volume, card.outputs.segments, tmp_path / "seg.dcm", card=card, labelmap=True)
    errors = dciodvfy_errors(out)
    if "Error - Information Object Not found" in errors:
        # dicom3tools before 2024 does not know Label Map Segmentation Storage, so it cannot judge it.
        pytest.skip("this dciodvfy predates the Label Map Segmentation IOD")
    assert errors == []


@pytest.mark.parametrize("empty", ["one segment", "all"])
def test_empty_segments_are_still_described(sources, tmp_path, empty):
    volume = sources["well-formed"]
    card = lung_card()
    labels = blob_labels(volume.shape, empty_label=2)
    if empty == "all":  # highdicom then stores every (empty) frame, as a SEG needs at least one
        labels[:] = 0
    out = write_seg(labels, volume, card.outputs.segments, tmp_path / "seg.dcm", card=card)
    back, segments = read_seg(out, reference=volume)
    np.testing.assert_array_equal(back, labels)
    assert [s["label"] for s in segments] == ["right lung", "left lung"]
    assert dciodvfy_errors(out) == []


def test_segment_numbers_are_consecutive_whatever_the_card_labels(sources, tmp_path):
    volume = sources["well-formed"]
    card = lung_card()
    left_only = blob_labels(volume.shape, empty_label=1)
    out = write_seg(left_only, volume, [card.segment(2)], tmp_path / "seg.dcm", card=card)
    back, segments = read_seg(out, reference=volume)
    # Card label 2 is the SEG's only segment, so it is segment number 1.
    np.testing.assert_array_equal(back, (left_only == 2).astype(np.uint8))
    assert [(s["number"], s["label"]) for s in segments] == [(1, "left lung")]


def test_without_reference_the_label_map_spans_the_stored_slices(sources, tmp_path):
    volume = sources["well-formed"]
    card = lung_card()
    labels = blob_labels(volume.shape)
    out = write_seg(labels, volume, card.outputs.segments, tmp_path / "seg.dcm", card=card)
    back, _ = read_seg(out)
    occupied = np.flatnonzero(labels.any(axis=(1, 2)))
    np.testing.assert_array_equal(back, labels[occupied[0] : occupied[-1] + 1])


def _dcmqi_label_map(seg_path: Path, out_dir: Path, volume: Volume) -> np.ndarray:
    """Convert with dcmqi (segments merged into one label file) and resample nothing: place dcmqi's
    output, which spans only the slices that have frames, into the source grid by its origin."""
    run = subprocess.run(
        [segimage2itkimage(), "--inputDICOM", str(seg_path), "--outputDirectory", str(out_dir),
         "-t", "nrrd", "--mergeSegments"],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    files = sorted(out_dir.glob("*.nrrd"))
    assert len(files) == 1, files
    image = sitk.ReadImage(str(files[0]))
    array = sitk.GetArrayFromImage(image)  # ITK (x, y, z) -> numpy (slice, row, column), as Volume
    np.testing.assert_allclose(np.array(image.GetDirection()).reshape(3, 3), volume.direction[:, ::-1],
                               atol=1e-4)
    offset = np.linalg.solve(volume.affine[:3, :3], np.array(image.GetOrigin()) - volume.origin)
    start = np.rint(offset).astype(int)
    np.testing.assert_allclose(offset, start, atol=1e-3)
    placed = np.zeros(volume.shape, np.uint8)
    k, j, i = start
    placed[k : k + array.shape[0], j : j + array.shape[1], i : i + array.shape[2]] = array
    return placed


@pytest.mark.parametrize("name", ["well-formed", "real"])
@pytest.mark.parametrize("labelmap", [False, True], ids=["binary", "labelmap"])
def test_dcmqi_converts_seg_to_the_same_mask(sources, tmp_path, name, labelmap):
    volume = source(sources, name)
    card = lung_card()
    labels = blob_labels(volume.shape)
    out = write_seg(labels, volume, card.outputs.segments, tmp_path / "seg.dcm", card=card, labelmap=labelmap)
    (tmp_path / "dcmqi").mkdir()
    np.testing.assert_array_equal(_dcmqi_label_map(out, tmp_path / "dcmqi", volume), labels)


def test_same_input_gives_byte_identical_seg_and_version_changes_uids(sources, tmp_path):
    volume = sources["damaged"]
    card = lung_card("1.0.0")
    labels = blob_labels(volume.shape)
    first = write_seg(labels, volume, card.outputs.segments, tmp_path / "a.dcm", card=card)
    second = write_seg(labels, volume, card.outputs.segments, tmp_path / "b.dcm", card=card)
    assert first.read_bytes() == second.read_bytes()

    newer = lung_card("1.1.0")
    third = write_seg(labels, volume, newer.outputs.segments, tmp_path / "c.dcm", card=newer)
    a, c = pydicom.dcmread(first), pydicom.dcmread(third)
    assert a.SOPInstanceUID != c.SOPInstanceUID
    assert a.SeriesInstanceUID != c.SeriesInstanceUID
    assert a.SegmentSequence[0].TrackingUID != c.SegmentSequence[0].TrackingUID
    assert a.StudyInstanceUID == c.StudyInstanceUID == volume.source.study_instance_uid


def test_caller_headers_are_not_modified(sources, tmp_path):
    volume = sources["damaged"]
    card = lung_card()
    write_seg(blob_labels(volume.shape), volume, card.outputs.segments, tmp_path / "s.dcm", card=card)
    for keyword in TYPE2_DROPPED:
        assert keyword not in volume.source.headers[0]


def test_multiframe_source_references_frames(sources, tmp_path):
    single = sources["well-formed"]
    files = [pydicom.dcmread(f) for f in single.source.files]
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        legacy_datasets=files, series_instance_uid=hd.UID(), series_number=5,
        sop_instance_uid=hd.UID(), instance_number=1,
    )
    header = pydicom.dcmread(pydicom.filebase.DicomBytesIO(_to_bytes(enhanced)), stop_before_pixels=True)
    # The multi-frame frames are sorted like the legacy files; map each volume slice to its frame.
    positions = [
        tuple(float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient)
        for item in header.PerFrameFunctionalGroupsSequence
    ]
    frame_numbers = [
        positions.index(tuple(float(v) for v in h.ImagePositionPatient)) + 1 for h in single.source.headers
    ]
    volume = Volume(
        single.array, single.affine, "CT",
        DicomSource(headers=[header] * len(frame_numbers), files=["mf"] * len(frame_numbers),
                    frame_numbers=frame_numbers),
    )
    card = lung_card()
    labels = blob_labels(volume.shape)
    out = write_seg(labels, volume, card.outputs.segments, tmp_path / "seg.dcm", card=card)
    back, _ = read_seg(out, reference=volume)
    np.testing.assert_array_equal(back, labels)
    frames = {
        item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber
        for item in pydicom.dcmread(out).PerFrameFunctionalGroupsSequence
    }
    assert frames <= set(frame_numbers)
    assert dciodvfy_errors(out) == []


def _to_bytes(ds: pydicom.Dataset) -> bytes:
    buffer = pydicom.filebase.DicomBytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_bad_inputs_are_one_line_output_errors(sources, tmp_path):
    volume = sources["well-formed"]
    card = lung_card()
    segments = card.outputs.segments
    labels = blob_labels(volume.shape)
    with pytest.raises(OutputError, match="not the source grid"):
        write_seg(labels[:-1], volume, segments, tmp_path / "s.dcm", card=card)
    stray = labels.copy()
    stray[0, 0, 0] = 7
    with pytest.raises(OutputError, match=r"values \[7\]"):
        write_seg(stray, volume, segments, tmp_path / "s.dcm", card=card)
    with pytest.raises(OutputError, match="not in the card"):
        write_seg(labels, volume, [*segments, segments[0].model_copy(update={"label": 9})],
                  tmp_path / "s.dcm", card=card)
    no_dicom = Volume(volume.array, volume.affine, "CT")
    with pytest.raises(OutputError, match="not read from DICOM"):
        write_seg(labels, no_dicom, segments, tmp_path / "s.dcm", card=card)
    no_geometry = volume.source.headers[0].copy()
    del no_geometry.ImageOrientationPatient
    flat = Volume(volume.array, volume.affine, "CT",
                  DicomSource(headers=[no_geometry] * volume.shape[0], files=[]))
    with pytest.raises(OutputError, match="no geometry") as error:
        write_seg(labels, flat, segments, tmp_path / "s.dcm", card=card)
    assert "\n" not in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_is_an_output_error_and_leaves_nothing(sources, tmp_path):
    volume = sources["well-formed"]
    card = lung_card()
    labels = blob_labels(volume.shape)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    with pytest.raises(OutputError):
        write_seg(labels, volume, card.outputs.segments, blocker / "seg.dcm", card=card)
    # The target is an existing folder: the rename fails after the temp file was written.
    (tmp_path / "taken.dcm").mkdir()
    with pytest.raises(OutputError):
        write_seg(labels, volume, card.outputs.segments, tmp_path / "taken.dcm", card=card)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-folder", "taken.dcm"]
    assert list((tmp_path / "taken.dcm").iterdir()) == []
