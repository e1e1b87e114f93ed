"""DICOM Segmentation (SEG) output and input, via highdicom.

Outputs are reproducible: the same label map, source series and model card give a byte-identical file.
UIDs are derived from (source series UID, card id, card version, output kind) with
:func:`pydicom.uid.generate_uid` entropy sources, and every date and time comes from the source study (see
:func:`study_datetime`), never from the clock.

Segment numbering: the segments passed to :func:`write_seg` are sorted by their card label and numbered
1..N (DICOM requires consecutive segment numbers from 1). When the card's labels are 1..N, as usual, SEG
segment numbers equal the label values. Every segment passed in is described in the SEG even when the
label map holds none of its voxels: such a segment simply has no frames, so readers learn that the model
looked for it and found nothing.

Geometry: the SEG lies on the source grid; frame ``k`` of the label map (array axis 0) is source slice ``k``
(single-frame series) or source frame ``frame_numbers[k]`` (multi-frame source).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medhub import __version__
from medhub.errors import OutputError
from medhub.hub.card import Code, ModelCard, SegmentSpec
from medhub.io.files import atomic_path
from medhub.io.volume import Volume

MANUFACTURER = "medhub"

#: Used when the source has no study, series, acquisition or content date: a fixed, obviously synthetic
#: date keeps the output reproducible.
FALLBACK_DATE = "19000101"
FALLBACK_TIME = "000000"

SEG_SERIES_NUMBER = 900

#: Type 2 attributes highdicom copies from the source into SEG and SR; real de-identified files often lack
#: them, so they are filled with empty values (valid for Type 2) on copies of the source headers.
TYPE2_FROM_SOURCE = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyID",
    "StudyDate",
    "StudyTime",
)

# CID 7162 has no plain "image processing" concept; thresholding-and-morphology pipelines, which is what
# medhub's classical models are, fit "Morphological Operations".
CLASSICAL_FAMILY = codes.cid7162.MorphologicalOperations
AI_FAMILY = codes.cid7162.ArtificialIntelligence


def derived_uid(source_series_uid: str, card: ModelCard, kind: str, *extra: str) -> str:
    """A UID that depends only on the source series, the model (id and version) and the output ``kind``."""
    return str(generate_uid(entropy_srcs=[source_series_uid, card.id, card.version, kind, *extra]))


def study_datetime(header: Dataset) -> tuple[str, str]:
    """The (DA, TM) to stamp on derived objects: the study's, else the series', acquisition's or content's.

    Falls back to :data:`FALLBACK_DATE` / :data:`FALLBACK_TIME` so the output never depends on the clock.
    """
    for date_kw, time_kw in (
        ("StudyDate", "StudyTime"),
        ("SeriesDate", "SeriesTime"),
        ("AcquisitionDate", "AcquisitionTime"),
        ("ContentDate", "ContentTime"),
    ):
        date = str(header.get(date_kw) or "").strip()
        if len(date) == 8 and date.isdigit():
            time = str(header.get(time_kw) or "").strip()
            # Drop fractions and anything malformed: derived objects only need a plausible time.
            time = time.split(".")[0]
            return date, time if time.isdigit() and len(time) in (2, 4, 6) else FALLBACK_TIME
    return FALLBACK_DATE, FALLBACK_TIME


def complete_headers(headers: Sequence[Dataset]) -> list[Dataset]:
    """Copies of ``headers`` with missing Type 2 attributes present and empty.

    The copies have their own element dictionaries (elements themselves are shared, not deep-copied, which
    keeps this cheap for hundreds of slices), so adding an attribute never touches the caller's datasets.
    """
    completed = []
    for header in headers:
        # Dataset.copy() would share the element dictionary with the original.
        ds = Dataset(dict(header.items()))
        for keyword in TYPE2_FROM_SOURCE:
            if keyword not in ds:
                setattr(ds, keyword, None)
        completed.append(ds)
    return completed


def coded(code: Code) -> hd.sr.CodedConcept:
    # "SRT" is the retired designator of SNOMED CT; DICOM now requires "SCT" for the same codes.
    scheme = "SCT" if code.scheme == "SRT" else code.scheme
    return hd.sr.CodedConcept(value=code.value, scheme_designator=scheme, meaning=code.meaning)


def algorithm_identification(card: ModelCard) -> hd.AlgorithmIdentificationSequence:
    """The model as a DICOM algorithm: AI when it runs on trained weights, classical otherwise."""
    is_ai = card.needs_weights or card.weights is not None
    return hd.AlgorithmIdentificationSequence(
        name=card.name[:64],
        family=AI_FAMILY if is_ai else CLASSICAL_FAMILY,
        version=card.version[:64],
        source=MANUFACTURER,
    )


def source_headers(source: Volume, path: Path) -> list[Dataset]:
    """The source's DICOM headers; :class:`OutputError` when there are none or they lack pixel geometry."""
    if source.source is None or not source.source.headers:
        raise OutputError(path, "cannot write DICOM output: the input volume was not read from DICOM")
    headers = source.source.headers
    first = headers[0]
    for keyword in ("ImageOrientationPatient", "PixelSpacing", "FrameOfReferenceUID"):
        if not first.get(keyword) and "SharedFunctionalGroupsSequence" not in first:
            raise OutputError(path, f"cannot write DICOM output: the source lacks {keyword} (no geometry)")
    return list(headers)


def _segment_numbers(
    labels: np.ndarray, segments: Sequence[SegmentSpec], card: ModelCard, path: Path
) -> tuple[list[SegmentSpec], np.ndarray | None]:
    """Segments in SEG order and the lookup table label value -> segment number (None when identity)."""
    if not segments:
        raise OutputError(path, "cannot write a SEG without segments")
    ordered = sorted(segments, key=lambda s: s.label)
    for spec in ordered:
        try:
            known = card.segment(spec.label)
        except KeyError:
            raise OutputError(path, f"segment label {spec.label} is not in the card of {card.id}") from None
        if known != spec:
            raise OutputError(path, f"segment label {spec.label} differs from the card of {card.id}")
    allowed = {0} | {s.label for s in ordered}
    highest = int(labels.max(initial=0))
    if not set(range(highest + 1)) <= allowed:
        # Rare path (non-contiguous labels or a stray value): count per slice, as a bincount of the whole
        # map would first copy it to int64 (8 bytes per voxel).
        counts = sum(np.bincount(plane.ravel(), minlength=256) for plane in labels)
        unknown = sorted(set(np.flatnonzero(counts).tolist()) - allowed)
    else:
        unknown = []
    if unknown:
        raise OutputError(path, f"label map holds values {unknown} that are not among the segments written")
    if all(spec.label == number for number, spec in enumerate(ordered, start=1)):
        return ordered, None
    lut = np.zeros(256, np.uint8)
    for number, spec in enumerate(ordered, start=1):
        lut[spec.label] = number
    return ordered, lut


def segment_descriptions(
    segments: Sequence[SegmentSpec], card: ModelCard, source_series_uid: str
) -> list[hd.seg.SegmentDescription]:
    """One description per segment, numbered 1..N in the given order, with the card's codes."""
    algorithm = algorithm_identification(card)
    descriptions = []
    for number, spec in enumerate(segments, start=1):
        description = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=spec.name[:64],
            segmented_property_category=coded(spec.category),
            segmented_property_type=coded(spec.type),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=derived_uid(source_series_uid, card, "segment", str(spec.label)),
            tracking_id=f"{card.id} {spec.name}"[:64],
            anatomic_regions=[coded(spec.anatomic_region)] if spec.anatomic_region else None,
            display_color=hd.color.CIELabColor.from_rgb(*spec.color_rgb) if spec.color_rgb else None,
        )
        if spec.modifier is not None:
            # highdicom has no argument for it; DICOM nests the modifier inside the property type item.
            description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
                coded(spec.modifier)
            ]
        descriptions.append(description)
    return descriptions


def pin_clock_values(ds: Dataset, date: str, time: str, dimension_uid: str | None = None) -> None:
    """Replace what highdicom fills from the clock or a random UID with reproducible values.

    That is the instance creation date and time, the contribution time of highdicom's own "Processing
    Equipment" item, and (for multi-frame images) the dimension organization UID.
    """
    ds.InstanceCreationDate = date
    ds.InstanceCreationTime = time
    for item in ds.get("ContributingEquipmentSequence", []):
        if item.get("ManufacturerModelName") == "highdicom" and "ContributionDateTime" in item:
            item.ContributionDateTime = date + time
    if dimension_uid is None:
        return
    for item in ds.get("DimensionOrganizationSequence", []):
        item.DimensionOrganizationUID = dimension_uid
    for item in ds.get("DimensionIndexSequence", []):
        item.DimensionOrganizationUID = dimension_uid


def write_seg(
    labels: np.ndarray,
    source: Volume,
    segments: Sequence[SegmentSpec],
    path: str | Path,
    *,
    card: ModelCard,
    labelmap: bool = False,
    workers: int = 0,
) -> Path:
    """Write a label map as a DICOM Segmentation that references the source series.

    Parameters
    ----------
    labels:
        Integer label map on the source grid, shape ``(slices, rows, columns)`` (array order of
        :class:`Volume`); 0 is background, other values are the ``label`` of one of ``segments``.
    source:
        The volume the labels were computed on; its ``source`` must hold the DICOM headers.
    segments:
        The segments to describe (from ``card``); each is written even if empty.
    path:
        Output file, written atomically.
    card:
        The model card: algorithm name, version and family, and the segments' codes.
    labelmap:
        Write a LABELMAP segmentation (one 8-bit frame per slice, Label Map Segmentation Storage) instead
        of the default BINARY one (one 1-bit frame per slice and segment, Segmentation Storage).
    workers:
        Frame-encoding worker processes for highdicom (0: encode in this process). highdicom uses them only
        for compressed transfer syntaxes; medhub writes uncompressed frames, which are the fastest to write
        here (see ``benchmarks/RESULTS.md``), so this changes nothing today.

    Raises
    ------
    OutputError
        The source has no DICOM headers or geometry, the label map is on another grid or holds labels that
        are not among ``segments``, or the file cannot be written.
    """
    path = Path(path)
    headers = source_headers(source, path)
    if labels.shape != source.shape:
        raise OutputError(path, f"label map shape {labels.shape} is not the source grid {source.shape}")
    if labels.dtype != np.uint8:
        if labels.min(initial=0) < 0 or labels.max(initial=0) > 255:
            raise OutputError(path, "label values must lie in 0..255")
        labels = labels.astype(np.uint8)
    ordered, lut = _segment_numbers(labels, segments, card, path)
    if lut is not None:
        labels = lut[labels]

    frame_numbers = source.source.frame_numbers
    if frame_numbers is not None:
        if sorted(frame_numbers) != list(range(1, len(frame_numbers) + 1)):
            raise OutputError(path, "a multi-frame source must be used whole, each frame once")
        # highdicom maps planes of the array to source frames 1..N in order.
        in_frame_order = np.empty_like(labels)
        in_frame_order[np.asarray(frame_numbers) - 1] = labels
        labels, headers = in_frame_order, headers[:1]

    series_uid = source.source.series_instance_uid
    kind = "seg-labelmap" if labelmap else "seg-binary"
    date, time = study_datetime(headers[0])
    try:
        seg = hd.seg.Segmentation(
            source_images=complete_headers(headers),
            pixel_array=labels,
            segmentation_type=(
                hd.seg.SegmentationTypeValues.LABELMAP if labelmap else hd.seg.SegmentationTypeValues.BINARY
            ),
            segment_descriptions=segment_descriptions(ordered, card, series_uid),
            series_instance_uid=derived_uid(series_uid, card, kind, "series"),
            series_number=SEG_SERIES_NUMBER,
            sop_instance_uid=derived_uid(series_uid, card, kind, "instance"),
            instance_number=1,
            manufacturer=MANUFACTURER,
            manufacturer_model_name=card.name[:64],
            software_versions=f"medhub {__version__}"[:64],
            device_serial_number=card.id[:64],
            content_label=_content_label(card.id),
            content_description=card.title[:64],
            series_description=f"{card.name} {card.version} segmentation"[:64],
            transfer_syntax_uid=ExplicitVRLittleEndian,
            omit_empty_frames=True,
            workers=workers,
            content_date=date,
            content_time=time,
            series_date=date,
            series_time=time,
        )
    except (ValueError, TypeError, AttributeError) as e:
        raise OutputError(path, f"cannot build the DICOM SEG: {e}") from e
    pin_clock_values(seg, date, time, derived_uid(series_uid, card, kind, "dimensions"))
    save_dataset(seg, path)
    return path


def _content_label(card_id: str) -> str:
    # ContentLabel is a CS: upper case, digits, space and underscore, at most 16 characters.
    return card_id.upper().replace("-", "_")[:16]


def save_dataset(ds: Dataset, path: Path) -> None:
    """Save ``ds`` as a DICOM file (with file meta) at ``path``, atomically."""
    try:
        with atomic_path(path) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
    except OSError as e:  # a full disk, or a target that is a folder; atomic_path removed the temp file
        raise OutputError(path, f"cannot write output ({e.strerror or e})") from e


def read_seg(path: str | Path, reference: Volume | None = None) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Read a SEG back into a uint8 label map of segment numbers, plus its segment descriptions.

    Parameters
    ----------
    path:
        A BINARY or LABELMAP SEG whose segments do not overlap.
    reference:
        The source volume: the label map is then on its grid, ``(slices, rows, columns)``, slice ``k``
        being the SEG frame that references source instance ``k`` (frame ``frame_numbers[k]`` for a
        multi-frame source). Without it, the label map follows the SEG's own geometry (highdicom
        ``get_volume``: slices sorted along the normal) and spans only the slab of slices that have frames,
        since empty frames are not stored; pass ``reference`` to get the full source grid.

    Returns
    -------
    labels, segments:
        The label map (0 = background) and, per segment, a dict with ``number``, ``label`` (the segment
        label text), ``category``, ``type``, ``modifier``, ``anatomic_region`` (each ``(value, scheme,
        meaning)`` or None), ``tracking_id``, ``tracking_uid`` and ``color_rgb`` (the recommended display colour,
        sRGB 0-255, or None).
    """
    path = Path(path)
    try:
        seg = hd.seg.segread(path)
    except (OSError, ValueError, AttributeError, pydicom.errors.InvalidDicomError) as e:
        raise OutputError(path, f"cannot read DICOM SEG ({e})") from e
    if reference is None:
        labels = seg.get_volume(combine_segments=True, relabel=False, dtype=np.uint8).array
    elif reference.source is None:
        raise OutputError(path, "the reference volume was not read from DICOM")
    elif reference.source.frame_numbers is not None:
        frame_array = seg.get_pixels_by_source_frame(
            source_sop_instance_uid=reference.source.sop_instance_uids[0],
            source_frame_numbers=reference.source.frame_numbers,
            combine_segments=True,
            relabel=False,
            assert_missing_frames_are_empty=True,
            dtype=np.uint8,
        )
        labels = np.asarray(frame_array, np.uint8)
    else:
        labels = np.asarray(
            seg.get_pixels_by_source_instance(
                source_sop_instance_uids=reference.source.sop_instance_uids,
                combine_segments=True,
                relabel=False,
                assert_missing_frames_are_empty=True,
                dtype=np.uint8,
            ),
            np.uint8,
        )
    # A LABELMAP SEG describes background as segment 0; the label map's zeros already say that.
    return labels, [_describe(item) for item in seg.SegmentSequence if int(item.SegmentNumber) != 0]


def _code_tuple(items: Sequence[Dataset] | None) -> tuple[str, str, str] | None:
    if not items:
        return None
    item = items[0]
    return str(item.CodeValue), str(item.CodingSchemeDesignator), str(item.CodeMeaning)


def read_segment_descriptions(path: str | Path) -> list[dict[str, Any]]:
    """The segments of a SEG as :func:`read_seg` describes them, without reading its pixel data."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return [_describe(item) for item in ds.get("SegmentSequence", []) if int(item.SegmentNumber) != 0]


def cielab_to_rgb(dicom_lab: Sequence[int]) -> tuple[int, int, int]:
    """A DICOM CIELab triple (each 0-65535, PS3.3 C.10.7.1.1) as sRGB 0-255."""
    from skimage.color import lab2rgb

    l_star, a_star, b_star = (float(v) for v in dicom_lab)
    lab = np.array([[[l_star * 100 / 65535, a_star * 255 / 65535 - 128, b_star * 255 / 65535 - 128]]])
    return tuple(round(float(c) * 255) for c in lab2rgb(lab)[0, 0])  # type: ignore[return-value]


def _describe(item: Dataset) -> dict[str, Any]:
    type_items = item.get("SegmentedPropertyTypeCodeSequence")
    lab = item.get("RecommendedDisplayCIELabValue")
    return {
        "color_rgb": cielab_to_rgb(lab) if lab else None,
        "number": int(item.SegmentNumber),
        "label": str(item.SegmentLabel),
        "category": _code_tuple(item.get("SegmentedPropertyCategoryCodeSequence")),
        "type": _code_tuple(type_items),
        "modifier": _code_tuple(type_items[0].get("SegmentedPropertyTypeModifierCodeSequence")),
        "anatomic_region": _code_tuple(item.get("AnatomicRegionSequence")),
        "tracking_id": str(item.get("TrackingID", "")) or None,
        "tracking_uid": str(item.get("TrackingUID", "")) or None,
    }
