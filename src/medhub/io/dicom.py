"""Read DICOM image series from any folder tree into :class:`~medhub.io.volume.Volume` objects.

The reader works in two passes:

1. :func:`scan_dicom` finds DICOM files (any names, any nesting), reads their headers only (no pixel data),
   groups them into series, sorts the slices along the slice normal, checks the geometry and fills
   deterministic surrogates for identifiers that de-identification emptied. Nothing is decoded yet.
2. :meth:`DicomSeries.load` decodes the pixel data of one series (in parallel) and applies the rescale.

Coordinates are DICOM patient coordinates, **LPS**, in millimetres. Slices are ordered by the projection of
``ImagePositionPatient`` on the slice normal ``n = row cosine x column cosine`` (ascending), so the slice step
of the affine points along ``+n``.

Geometry policy (see :class:`GeometryReport`):

* duplicate slice positions are refused at load time (:class:`InputError`, code ``"duplicate-slices"``);
* gaps (a step > 1.5x the median step) and non-uniform spacing are *reported*, not refused: the slices are
  kept as they are (nothing is interpolated or inserted), the affine uses the median spacing, and
  ``volume.meta["geometry"]`` carries the report so that the caller (the runner, which knows the model card)
  can refuse. Voxel positions of such a volume are exact only up to the first irregular step;
* gantry tilt is kept: the affine's slice step is the real (oblique) step between positions, so the affine is
  sheared rather than resampled;
* ``SliceThickness`` may differ from the spacing (overlapping or sparse reconstructions); the affine always
  uses the spacing between positions and the thickness is kept as ``meta["nominal_slice_thickness_mm"]``.

Pixel values: the rescale (``RescaleSlope``/``RescaleIntercept``, or the Pixel Value Transformation functional
group) is applied once; the result is ``int16`` when slope and intercept are integers and the values fit,
``float32`` otherwise.
"""

from __future__ import annotations

import functools
import logging
import os
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom import Dataset
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.multival import MultiValue
from pydicom.pixels import get_decoder
from pydicom.pixels import pixel_array as decode_pixel_array
from pydicom.tag import BaseTag
from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EnhancedCTImageStorage,
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from medhub.errors import InputError, MissingDecoderError
from medhub.io.codecs import FAST_CODECS, decode_frame_into, read_single_frame
from medhub.io.tree import FileTree, walk_files
from medhub.io.volume import DicomSource, Volume, affine_from_dicom

log = logging.getLogger(__name__)

#: Two slice positions closer than this along the normal (mm) are duplicates.
DUPLICATE_TOLERANCE_MM = 0.01
#: A step larger than this multiple of the median step is a gap.
GAP_FACTOR = 1.5
#: Steps may deviate from the median by max(this many mm, SPACING_RELATIVE_TOLERANCE x median) and still count
#: as uniform: DS strings round positions to ~1e-4 mm.
SPACING_TOLERANCE_MM = 0.01
SPACING_RELATIVE_TOLERANCE = 0.01
#: Angles (degrees) between the slice step and the normal below this are rounding, not tilt.
TILT_TOLERANCE_DEG = 0.05
#: ImageOrientationPatient cosines closer than this belong to the same orientation.
ORIENTATION_TOLERANCE = 1e-3
#: SliceThickness counts as equal to the spacing within this (mm).
THICKNESS_TOLERANCE_MM = 0.01

# Objects that share folders with images but are not image slices (e.g. medhub's own SEG outputs).
_NON_IMAGE_MODALITIES = frozenset({"SEG", "RTSTRUCT", "SR", "KO", "PR", "REG", "RTPLAN", "RTRECORD", "DOC"})
_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
_NATIVE_LITTLE_ENDIAN = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian})
_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"
_PIXEL_DATA_TAG_BIG_ENDIAN = b"\x7f\xe0\x00\x10"
_UNDEFINED_LENGTH = 0xFFFFFFFF
_IDENTIFIERS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
_SOP_CLASS_FOR_MODALITY = {"CT": CTImageStorage, "MR": MRImageStorage}
_MODALITY_FOR_SOP_CLASS = {
    CTImageStorage: "CT",
    EnhancedCTImageStorage: "CT",
    "1.2.840.10008.5.1.4.1.1.2.2": "CT",  # Legacy Converted Enhanced CT
    MRImageStorage: "MR",
    EnhancedMRImageStorage: "MR",
    "1.2.840.10008.5.1.4.1.1.4.4": "MR",  # Legacy Converted Enhanced MR
}
# pip packages that provide a pydicom decoder plugin, by transfer syntax UID prefix/value.
_DECODER_PACKAGES = {
    "1.2.840.10008.1.2.4.50": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.51": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.57": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.70": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.80": "pyjpegls",
    "1.2.840.10008.1.2.4.81": "pyjpegls",
    "1.2.840.10008.1.2.4.90": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.91": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.201": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.202": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.203": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.5": "pylibjpeg pylibjpeg-rle",
}


# ----------------------------------------------------------------------------------------------- geometry


@dataclass
class GeometryReport:
    """What the slice positions of a series say about its geometry (distances in mm, along the slice normal).

    Attributes
    ----------
    n_slices:
        Number of slices (frames) in the series.
    slice_spacing_mm:
        The spacing the affine uses: the mean step for a uniform series, the median step otherwise.
    nominal_slice_thickness_mm:
        ``SliceThickness`` as written in the files (``None`` if absent).
    duplicate_positions_mm:
        Positions along the normal that occur more than once.
    gaps:
        ``(index, step_mm)`` for each step larger than :data:`GAP_FACTOR` x the median step; ``index`` is the
        slice before the gap.
    max_spacing_deviation_mm:
        Largest ``|step - median step|`` over the non-duplicate steps.
    non_uniform:
        Whether that deviation exceeds the tolerance (gaps are non-uniform too).
    tilt_deg:
        Angle between the slice step and the slice normal (gantry tilt), degrees.
    """

    n_slices: int
    slice_spacing_mm: float
    nominal_slice_thickness_mm: float | None
    duplicate_positions_mm: list[float] = field(default_factory=list)
    gaps: list[tuple[int, float]] = field(default_factory=list)
    max_spacing_deviation_mm: float = 0.0
    non_uniform: bool = False
    tilt_deg: float = 0.0

    @property
    def has_duplicates(self) -> bool:
        return bool(self.duplicate_positions_mm)

    @property
    def has_gap(self) -> bool:
        return bool(self.gaps)

    @property
    def has_tilt(self) -> bool:
        return self.tilt_deg > TILT_TOLERANCE_DEG

    @property
    def thickness_differs(self) -> bool:
        return (
            self.nominal_slice_thickness_mm is not None
            and self.n_slices > 1
            and abs(self.nominal_slice_thickness_mm - self.slice_spacing_mm) > THICKNESS_TOLERANCE_MM
        )

    @property
    def is_regular(self) -> bool:
        """Whether the affine places every slice where its ImagePositionPatient says (tilt included)."""
        return not (self.has_duplicates or self.non_uniform)

    def messages(self) -> list[str]:
        """One human-readable line per finding; empty for a clean, regular series."""
        lines = []
        if self.has_duplicates:
            where = ", ".join(f"{p:.2f}" for p in self.duplicate_positions_mm[:5])
            lines.append(f"{len(self.duplicate_positions_mm)} duplicate slice position(s) at {where} mm")
        for index, step in self.gaps:
            lines.append(
                f"gap of {step:.2f} mm after slice {index} ({step / self.slice_spacing_mm:.1f}x the median "
                f"spacing of {self.slice_spacing_mm:.2f} mm)"
            )
        if self.non_uniform and not self.has_gap:
            lines.append(
                f"non-uniform slice spacing: steps deviate up to {self.max_spacing_deviation_mm:.3f} mm from "
                f"the median {self.slice_spacing_mm:.3f} mm"
            )
        if self.has_tilt:
            lines.append(f"gantry tilt of {self.tilt_deg:.2f} degrees (slice step not along the slice normal)")
        if self.thickness_differs:
            lines.append(
                f"SliceThickness {self.nominal_slice_thickness_mm:g} mm differs from the "
                f"{self.slice_spacing_mm:g} mm spacing between slice positions; the volume uses the spacing"
            )
        return lines

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict: the fields, the flags and the messages."""
        out = asdict(self)
        out["gaps"] = [list(g) for g in self.gaps]
        out.update(
            has_duplicates=self.has_duplicates,
            has_gap=self.has_gap,
            has_tilt=self.has_tilt,
            thickness_differs=self.thickness_differs,
            is_regular=self.is_regular,
            messages=self.messages(),
        )
        return out


def _analyse_geometry(
    positions: np.ndarray, normal: np.ndarray, thickness: float | None
) -> tuple[GeometryReport, np.ndarray]:
    """Geometry report and affine slice step (LPS mm) for positions already sorted along ``normal``."""
    n = len(positions)
    if n < 2:
        spacing = thickness if thickness else 1.0
        return GeometryReport(1, spacing, thickness), normal * spacing
    projections = positions @ normal
    steps = np.diff(projections)
    duplicate = steps < DUPLICATE_TOLERANCE_MM
    duplicates = sorted({round(float(projections[i]), 3) for i in np.flatnonzero(duplicate)})
    real_steps = steps[~duplicate]
    if real_steps.size == 0:
        report = GeometryReport(n, thickness or 1.0, thickness, duplicates)
        return report, normal * report.slice_spacing_mm
    median = float(np.median(real_steps))
    deviation = float(np.max(np.abs(real_steps - median)))
    gaps = [(int(i), float(steps[i])) for i in np.flatnonzero(steps > GAP_FACTOR * median)]
    non_uniform = deviation > max(SPACING_TOLERANCE_MM, SPACING_RELATIVE_TOLERANCE * median) or bool(gaps)
    # For a uniform series the mean step puts the first and last slices exactly where their headers say.
    spacing = median if (non_uniform or duplicates) else float((projections[-1] - projections[0]) / (n - 1))
    travel = positions[-1] - positions[0]
    along = float(travel @ normal)
    cosine = min(1.0, abs(along) / float(np.linalg.norm(travel))) if along else 1.0
    tilt = float(np.degrees(np.arccos(cosine)))
    report = GeometryReport(
        n_slices=n,
        slice_spacing_mm=spacing,
        nominal_slice_thickness_mm=thickness,
        duplicate_positions_mm=duplicates,
        gaps=gaps,
        max_spacing_deviation_mm=deviation,
        non_uniform=non_uniform,
        tilt_deg=tilt,
    )
    # A tilted step keeps its in-plane shift, scaled so that its component along the normal is the spacing.
    step = travel * (spacing / along) if report.has_tilt else normal * spacing
    return report, step


# ----------------------------------------------------------------------------------------------- slices


@dataclass
class _Slice:
    """One 2D image: a single-frame file, or one frame of a multi-frame file."""

    path: Path
    header: Dataset
    frame: int | None  # 1-based frame number in a multi-frame file
    position: np.ndarray  # ImagePositionPatient, LPS mm
    orientation: np.ndarray  # ImageOrientationPatient (6 cosines)
    pixel_spacing: tuple[float, float]  # (between rows, between columns) mm
    thickness: float | None
    slope: float
    intercept: float
    pixel_offset: int | None  # byte offset of the PixelData element, for the uncompressed fast path


def _floats(value: Any, count: int) -> np.ndarray | None:
    try:
        out = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return out if out.size == count and np.all(np.isfinite(out)) else None


def _float_or(value: Any, default: float | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default


def _functional_item(per_frame: Dataset | None, shared: Dataset | None, sequence: str) -> Dataset | None:
    for group in (per_frame, shared):
        if group is not None and sequence in group and len(group[sequence].value):
            return group[sequence].value[0]
    return None


def _slices_from_header(path: Path, ds: Dataset, pixel_offset: int | None) -> list[_Slice]:
    """Slices described by one file's header; ``ValueError`` (with a reason) if it is not a volume slice."""
    if "Rows" not in ds or "Columns" not in ds:
        raise ValueError("no Rows/Columns: not an image")
    spacing_default = (_value(ds, "PixelSpacing") or _value(ds, "ImagerPixelSpacing")).split("\\")
    frames = _uint(ds, "NumberOfFrames", 1)
    per_frame_groups = ds.get("PerFrameFunctionalGroupsSequence") if frames > 1 else None
    if frames == 1 and not per_frame_groups:
        position = _floats(_value(ds, "ImagePositionPatient").split("\\"), 3)
        orientation = _floats(_value(ds, "ImageOrientationPatient").split("\\"), 6)
        if position is None or orientation is None:
            raise ValueError("no ImagePositionPatient/ImageOrientationPatient: not a volume slice")
        pixel_spacing = _floats(spacing_default, 2)
        return [
            _Slice(
                path=path,
                header=ds,
                frame=None,
                position=position,
                orientation=orientation,
                pixel_spacing=tuple(pixel_spacing) if pixel_spacing is not None else (1.0, 1.0),
                thickness=_float_or(_value(ds, "SliceThickness"), None),
                slope=_float_or(_value(ds, "RescaleSlope"), 1.0) or 1.0,
                intercept=_float_or(_value(ds, "RescaleIntercept"), 0.0) or 0.0,
                pixel_offset=pixel_offset,
            )
        ]
    if not per_frame_groups or len(per_frame_groups) != frames:
        raise ValueError("multi-frame image without per-frame functional groups: not supported")
    shared_groups = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_groups[0] if shared_groups else None
    slices = []
    for number, per_frame in enumerate(per_frame_groups, start=1):
        plane = _functional_item(per_frame, shared, "PlanePositionSequence")
        plane_orientation = _functional_item(per_frame, shared, "PlaneOrientationSequence")
        measures = _functional_item(per_frame, shared, "PixelMeasuresSequence")
        transform = _functional_item(per_frame, shared, "PixelValueTransformationSequence")
        position = _floats(plane.get("ImagePositionPatient") if plane else None, 3)
        orientation = _floats(
            plane_orientation.get("ImageOrientationPatient")
            if plane_orientation
            else ds.get("ImageOrientationPatient"),
            6,
        )
        if position is None or orientation is None:
            raise ValueError(f"frame {number} has no plane position/orientation")
        pixel_spacing = _floats(measures.get("PixelSpacing") if measures else spacing_default, 2)
        slices.append(
            _Slice(
                path=path,
                header=ds,
                frame=number,
                position=position,
                orientation=orientation,
                pixel_spacing=tuple(pixel_spacing) if pixel_spacing is not None else (1.0, 1.0),
                thickness=_float_or(measures.get("SliceThickness") if measures else None, None),
                slope=_float_or(transform.get("RescaleSlope") if transform else None, 1.0) or 1.0,
                intercept=_float_or(transform.get("RescaleIntercept") if transform else None, 0.0) or 0.0,
                pixel_offset=None,
            )
        )
    return slices


# ----------------------------------------------------------------------------------------------- discovery


def _has_group_0008(ds: Dataset) -> bool:
    return any(tag.group == 0x0008 for tag in ds.keys())  # noqa: SIM118 (iterating yields elements)


def _read_header(path: Path) -> tuple[str, Dataset | str | None, int | None]:
    """Classify ``path`` and read its header: ``("dicom", dataset, pixel_offset)``, ``("non-dicom", None,
    None)`` or ``("unreadable", reason, None)``."""
    try:
        with open(path, "rb") as fp:
            start = fp.read(132)
            has_preamble = len(start) == 132 and start[128:132] == b"DICM"
            # A preamble-less data set starts with a group 0002 or 0008 tag (little endian); anything else
            # is not worth a forced parse.
            if not has_preamble and start[:2] not in (b"\x02\x00", b"\x08\x00"):
                return "non-dicom", None, None
            fp.seek(0)
            try:
                ds = pydicom.dcmread(fp, stop_before_pixels=True, force=not has_preamble)
            except Exception as e:  # pydicom raises many exception types on malformed bytes
                if not has_preamble:
                    return "non-dicom", None, None
                return "unreadable", _one_line(e), None
            offset = fp.tell()
            if fp.read(4) not in (_PIXEL_DATA_TAG, _PIXEL_DATA_TAG_BIG_ENDIAN):
                offset = None
    except OSError as e:
        return "unreadable", e.strerror or str(e), None
    if not has_preamble and not _has_group_0008(ds):
        return "non-dicom", None, None
    return "dicom", ds, offset


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text[:300]


# ----------------------------------------------------------------------------------------------- series


@dataclass
class DicomSeries:
    """One image series found by :func:`scan_dicom`, not yet decoded.

    ``files``, ``headers`` (header-only datasets with surrogate identifiers filled) and the geometry are in
    slice order (ascending along the slice normal). For a multi-frame file both lists repeat that file/header
    once per frame.
    """

    uid: str
    modality: str
    files: list[Path]
    headers: list[Dataset]
    geometry: GeometryReport
    warnings: list[str]
    surrogate_uids: dict[str, str]
    description: str
    _slices: list[_Slice] = field(default_factory=list, repr=False)
    _slice_step: np.ndarray = field(default_factory=lambda: np.zeros(3), repr=False)

    @property
    def frame_numbers(self) -> list[int] | None:
        frames = [s.frame for s in self._slices]
        return None if all(f is None for f in frames) else [int(f or 1) for f in frames]

    @property
    def transfer_syntaxes(self) -> list[str]:
        """Distinct transfer syntax UIDs of the series' files, in slice order of first appearance."""
        return list(dict.fromkeys(_transfer_syntax(h) for h in self.headers))

    @property
    def affine(self) -> np.ndarray:
        """Index-to-LPS affine (mm) the loaded volume will have."""
        first = self._slices[0]
        return affine_from_dicom(first.position, first.orientation, first.pixel_spacing, self._slice_step)

    def load(self, workers: int | None = None) -> Volume:
        """Decode the pixel data and return the volume.

        Raises :class:`InputError` (``"duplicate-slices"``) for duplicate positions, ``"truncated"`` /
        ``"corrupt"`` for unreadable pixel data, and :class:`MissingDecoderError` when the transfer syntax
        needs a decoder that is not installed. Gaps and non-uniform spacing are not refused: see the module
        docstring; ``volume.meta["geometry"]`` holds the report.
        """
        where = f"series {self.uid}"
        if self.geometry.has_duplicates:
            raise InputError(
                where,
                f"{len(self.geometry.duplicate_positions_mm)} slice position(s) occur more than once "
                f"(e.g. {self.geometry.duplicate_positions_mm[0]:.2f} mm along the normal); "
                "remove the duplicate files or pass a single acquisition",
                code="duplicate-slices",
            )
        for syntax in self.transfer_syntaxes:
            first = next(s.path for s in self._slices if _transfer_syntax(s.header) == syntax)
            check_decoder(syntax, first)
        raw = _decode(self._slices, workers)
        array = _rescale(raw, self._slices)
        first_header = self.headers[0]
        syntaxes = self.transfer_syntaxes
        meta = {
            "nominal_slice_thickness_mm": self.geometry.nominal_slice_thickness_mm,
            "slice_spacing_mm": self.geometry.slice_spacing_mm,
            "geometry": self.geometry.as_dict(),
            "series_description": self.description,
            "transfer_syntax": syntaxes[0] if len(syntaxes) == 1 else ",".join(syntaxes),
            "series_instance_uid": self.uid,
            "warnings": list(self.warnings),
            "photometric_interpretation": str(first_header.get("PhotometricInterpretation", "")),
        }
        return Volume(
            array=array,
            affine=self.affine,
            modality=self.modality or None,
            source=DicomSource(
                headers=list(self.headers),
                files=[str(p) for p in self.files],
                frame_numbers=self.frame_numbers,
                surrogate_uids=dict(self.surrogate_uids),
            ),
            meta=meta,
        )


@dataclass
class ScanResult:
    """What :func:`scan_dicom` found.

    ``skipped`` lists DICOM files that are not slices of an image volume (SEG, SR, DICOMDIR, images without
    plane geometry...), with the reason. ``tree`` is the walk: every file looked at, and the dangling links,
    duplicate paths and link loops that were skipped.
    """

    series: list[DicomSeries]
    non_dicom_files: int
    unreadable: list[tuple[Path, str]]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    tree: FileTree | None = None


def _transfer_syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    # Preamble-less files without file meta are Implicit VR Little Endian by the standard's default.
    return str(syntax) if syntax else ImplicitVRLittleEndian


@functools.cache
def _tag(keyword: str) -> BaseTag:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    return BaseTag(tag)


def _value(ds: Dataset, keyword: str) -> str:
    """Text of an ASCII-valued element (UI, CS, DS, IS, DA, TM; multiple values joined by a backslash), ``""``
    when absent or empty.

    Raw elements are decoded here directly: pydicom's value conversion costs ~40 us per element, which
    dominated scanning (20 elements x thousands of files).
    """
    element = ds.get_item(_tag(keyword))
    if element is None:
        return ""
    value = element.value
    if isinstance(value, bytes):
        return value.decode("latin-1").strip(" \x00")
    if value is None:
        return ""
    if isinstance(value, list | MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _uint(ds: Dataset, keyword: str, default: int) -> int:
    """Value of a US element (or an IS element) without pydicom's value conversion."""
    element = ds.get_item(_tag(keyword))
    if element is None:
        return default
    value = element.value
    if isinstance(value, bytes) and (element.VR or dictionary_VR(element.tag)) == "US" and len(value) == 2:
        little = getattr(element, "is_little_endian", True)
        return int.from_bytes(value, "little" if little else "big")
    try:
        return int(value.decode("latin-1").strip(" \x00") if isinstance(value, bytes) else value)
    except (TypeError, ValueError):
        return default


def _group_key(s: _Slice) -> tuple:
    ds = s.header
    series_uid = _value(ds, "SeriesInstanceUID")
    key: tuple = (
        series_uid,
        _value(ds, "FrameOfReferenceUID"),
        _uint(ds, "Rows", 0),
        _uint(ds, "Columns", 0),
    )
    if s.frame is not None:
        key += (str(s.path),)  # each multi-frame file is its own series
    if not series_uid:
        # Without a series UID, files only belong together if everything else that names a series agrees.
        key += tuple(
            _value(ds, k)
            for k in (
                "StudyInstanceUID",
                "Modality",
                "SeriesNumber",
                "SeriesDescription",
                "AcquisitionNumber",
            )
        )
    return key


def _split_by_orientation(slices: list[_Slice]) -> list[list[_Slice]]:
    groups: list[list[_Slice]] = []
    for s in slices:
        for group in groups:
            reference = group[0].orientation
            if np.array_equal(reference, s.orientation) or np.allclose(
                reference, s.orientation, atol=ORIENTATION_TOLERANCE
            ):
                group.append(s)
                break
        else:
            groups.append([s])
    return groups


def _most_common(values: list[str]) -> str:
    present = [v for v in values if v]
    return Counter(present).most_common(1)[0][0] if present else ""


def _fill_surrogates(slices: list[_Slice], geometry_key: str) -> tuple[dict[str, str], list[str], int]:
    """Fill empty identifiers on the header copies.

    Returns the surrogates, the keywords that were missing, and how many files lacked any of them.

    Values come from the file meta where it has them (SOP Class/Instance UID), otherwise they are derived
    from content with :func:`pydicom.uid.generate_uid` entropy sources, so two scans of the same files give
    the same values.
    """
    headers = list(dict.fromkeys(id(s.header) for s in slices))
    by_id = {id(s.header): s for s in slices}
    missing: dict[str, int] = {}
    lacking = 0
    surrogates: dict[str, str] = {}
    frame_of_reference = _value(slices[0].header, "FrameOfReferenceUID")

    instance_uids = []
    for index, header_id in enumerate(headers):
        s = by_id[header_id]
        ds, meta = s.header, getattr(s.header, "file_meta", Dataset())
        lacks = [k for k in _IDENTIFIERS if not _value(ds, k)]
        lacking += bool(lacks)
        for keyword in lacks:
            missing[keyword] = missing.get(keyword, 0) + 1
        if "SOPClassUID" in lacks:
            ds.SOPClassUID = _value(meta, "MediaStorageSOPClassUID") or _SOP_CLASS_FOR_MODALITY.get(
                _value(ds, "Modality"), SecondaryCaptureImageStorage
            )
        if "SOPInstanceUID" in lacks:
            from_meta = _value(meta, "MediaStorageSOPInstanceUID")
            ds.SOPInstanceUID = from_meta or generate_uid(
                entropy_srcs=[
                    "medhub-sop-instance",
                    frame_of_reference,
                    geometry_key,
                    " ".join(f"{v:.4f}" for v in s.position),
                    _value(ds, "InstanceNumber"),
                    _value(ds, "AcquisitionNumber"),
                    _value(ds, "ContentTime"),
                    str(index),
                ]
            )
            surrogates[f"SOPInstanceUID[{index}]"] = str(ds.SOPInstanceUID)
        instance_uids.append(str(ds.SOPInstanceUID))
    if "SOPClassUID" in missing:
        surrogates["SOPClassUID"] = _most_common([_value(by_id[h].header, "SOPClassUID") for h in headers])

    content = [frame_of_reference, geometry_key, *sorted(instance_uids)]
    for keyword in ("SeriesInstanceUID", "StudyInstanceUID"):
        if keyword not in missing:
            continue
        existing = _most_common([_value(by_id[h].header, keyword) for h in headers])
        if existing:
            value = existing
        elif keyword == "StudyInstanceUID" and frame_of_reference:
            # Series that share a frame of reference were acquired in one study: give them one study UID.
            value = generate_uid(entropy_srcs=["medhub-study", frame_of_reference])
        else:
            value = generate_uid(entropy_srcs=[f"medhub-{keyword}", *content])
        for h in headers:
            if not _value(by_id[h].header, keyword):
                setattr(by_id[h].header, keyword, value)
        surrogates[keyword] = value

    for h in headers:
        ds = by_id[h].header
        if not _value(ds, "SeriesNumber"):
            # Type 2, so outputs may copy it; an empty value breaks code that does int(SeriesNumber).
            ds.SeriesNumber = 1
            surrogates["SeriesNumber"] = "1"
        if not _value(ds, "Modality"):
            ds.Modality = _MODALITY_FOR_SOP_CLASS.get(_value(ds, "SOPClassUID"), "OT")
            surrogates["Modality"] = str(ds.Modality)
    return surrogates, [k for k in _IDENTIFIERS if k in missing], lacking


def _build_series(slices: list[_Slice], split_note: str | None) -> DicomSeries:
    orientation = slices[0].orientation
    normal = np.cross(orientation[:3], orientation[3:])
    normal /= np.linalg.norm(normal)
    slices = sorted(
        slices,
        key=lambda s: (
            float(s.position @ normal),
            _float_or(_value(s.header, "InstanceNumber"), 0.0),
            s.frame or 0,
            str(s.path),
        ),
    )
    thicknesses = [s.thickness for s in slices if s.thickness]
    thickness = float(np.median(thicknesses)) if thicknesses else None
    positions = np.stack([s.position for s in slices])
    geometry, step = _analyse_geometry(positions, normal, thickness)
    geometry_key = (
        " ".join(f"{v:.4f}" for v in orientation)
        + f" {_uint(slices[0].header, 'Rows', 0)}x{_uint(slices[0].header, 'Columns', 0)}"
    )
    surrogates, missing, lacking = _fill_surrogates(slices, geometry_key)
    first = slices[0].header
    uid = _value(first, "SeriesInstanceUID")
    warnings = []
    if missing:
        warnings.append(
            f"series {uid}: {lacking} files lack {_describe_missing(missing)}; "
            "using deterministic surrogates (recorded in run.json)"
        )
    if split_note:
        warnings.append(f"series {uid}: {split_note}")
    warnings.extend(f"series {uid}: {line}" for line in geometry.messages())
    for line in warnings:
        log.info(line)  # the caller shows ``warnings``; logging at WARNING would print every line twice
    return DicomSeries(
        uid=uid,
        modality=_value(first, "Modality"),
        files=[s.path for s in slices],
        headers=[s.header for s in slices],
        geometry=geometry,
        warnings=warnings,
        surrogate_uids=surrogates,
        description=str(first.get("SeriesDescription") or ""),
        _slices=slices,
        _slice_step=step,
    )


def _describe_missing(missing: list[str]) -> str:
    instance = [k.removesuffix("InstanceUID") for k in missing if k.endswith("InstanceUID")]
    parts = [f"{'/'.join(instance)} Instance UIDs"] if instance else []
    if "SOPClassUID" in missing:
        parts.append("SOPClassUID")
    return " and ".join(parts)


def scan_dicom(path: str | Path, progress: Callable[[int, int], None] | None = None) -> ScanResult:
    """Find and group the DICOM image series under ``path`` (a folder tree or a single file).

    Only headers are read. Files without the ``DICM`` marker are accepted only when they parse as a data set
    with group 0008 elements; everything else counts as non-DICOM. ``progress(done, total)`` is called after
    each file. An empty folder gives an empty series list; a missing path raises :class:`InputError`.
    Symbolic links are followed, each real file is read once (:func:`medhub.io.tree.walk_files`); ``tree`` of
    the result lists the links and duplicates that were skipped.
    """
    root = Path(path)
    if not root.exists():
        raise InputError(root, "no such file or folder", code="not-found")
    tree = walk_files(root)
    files = tree.files
    non_dicom = 0
    unreadable: list[tuple[Path, str]] = []
    skipped: list[tuple[Path, str]] = []
    groups: dict[tuple, list[_Slice]] = {}
    for done, file in enumerate(files, start=1):
        kind, result, offset = _read_header(file)
        if kind == "non-dicom":
            non_dicom += 1
        elif kind == "unreadable":
            unreadable.append((file, str(result)))
        else:
            assert isinstance(result, Dataset)
            reason = _non_image_reason(result)
            if reason is None and offset is None and _transfer_syntax(result) != DeflatedExplicitVRLittleEndian:
                # pydicom returns what it could parse of a cut-off header without complaint.
                unreadable.append((file, "no pixel data after the header: file truncated or not an image"))
            elif reason is None:
                try:
                    for s in _slices_from_header(file, result, offset):
                        groups.setdefault(_group_key(s), []).append(s)
                except ValueError as e:
                    skipped.append((file, str(e)))
            else:
                skipped.append((file, reason))
        if progress is not None:
            progress(done, len(files))

    series = []
    for slices in groups.values():
        parts = _split_by_orientation(slices)
        for part in parts:
            note = None
            if len(parts) > 1:
                note = f"files with one series UID have {len(parts)} orientations; split into separate series"
            series.append(_build_series(part, note))
    _note_splits(series)
    return ScanResult(series=series, non_dicom_files=non_dicom, unreadable=unreadable, skipped=skipped, tree=tree)


def _note_splits(series: list[DicomSeries]) -> None:
    """Warn on series whose UID was split because of mixed frame of reference or image size."""
    counts = Counter(s.uid for s in series if s.frame_numbers is None)
    for s in series:
        if counts.get(s.uid, 0) > 1 and not any("split into" in w for w in s.warnings):
            s.warnings.append(
                f"series {s.uid}: files with this series UID differ in frame of reference or image size; "
                f"split into {counts[s.uid]} series"
            )


def _non_image_reason(ds: Dataset) -> str | None:
    modality = _value(ds, "Modality")
    if modality in _NON_IMAGE_MODALITIES:
        return f"not an image slice (Modality {modality})"
    if _value(getattr(ds, "file_meta", Dataset()), "MediaStorageSOPClassUID") == _DICOMDIR_SOP_CLASS:
        return "DICOMDIR"
    if _uint(ds, "SamplesPerPixel", 1) != 1:
        return "colour image: not a volume slice"
    return None


def read_dicom_volume(path: str | Path) -> Volume:
    """Read the single image series under ``path``; :class:`InputError` if there is none or more than one."""
    result = scan_dicom(path)
    if not result.series:
        if result.unreadable:
            file, reason = result.unreadable[0]
            raise InputError(file, f"unreadable DICOM header ({reason})", code="corrupt")
        raise InputError(
            path, f"no DICOM image series found ({result.non_dicom_files} non-DICOM files)", code="no-dicom"
        )
    if len(result.series) > 1:
        names = ", ".join(f"{s.uid} ({len(s.files)} slices)" for s in result.series[:5])
        raise InputError(path, f"{len(result.series)} series found: {names}; pass one", code="multiple-series")
    return result.series[0].load()


# ----------------------------------------------------------------------------------------------- decoding


def required_decoder_package(transfer_syntax: str) -> str | None:
    """The pip package(s) that give pydicom a decoder for ``transfer_syntax`` (``None`` for native data)."""
    return _DECODER_PACKAGES.get(str(transfer_syntax))


def check_decoder(transfer_syntax: str, where: str | Path) -> None:
    """Raise :class:`MissingDecoderError` naming ``where`` and what to install if pixel data in
    ``transfer_syntax`` cannot be decoded here."""
    uid = UID(transfer_syntax)
    label = f"{uid.name} ({uid})" if uid.name != str(uid) else str(uid)
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        raise MissingDecoderError(
            where,
            f"{label} has no decoder in pydicom {pydicom.__version__}; convert the series to an uncompressed "
            "transfer syntax first (e.g. gdcmconv --raw)",
        ) from None
    if not decoder.is_available:
        package = required_decoder_package(uid) or " ".join(decoder.missing_dependencies)
        raise MissingDecoderError(where, f"{label} needs a decoder: pip install {package}")


def _raw_dtype(ds: Dataset) -> np.dtype:
    bits = _uint(ds, "BitsAllocated", 16)
    signed = _uint(ds, "PixelRepresentation", 0) == 1
    if bits not in (8, 16, 32):
        raise InputError(ds.filename if hasattr(ds, "filename") else None, f"BitsAllocated {bits} is not supported")
    return np.dtype(f"{'i' if signed else 'u'}{bits // 8}")


def _read_native(s: _Slice, out: np.ndarray) -> bool:
    """Read little-endian uncompressed pixel data straight into ``out``; ``False`` if the file does not fit
    the fast path (the caller then decodes with pydicom)."""
    expected = out.nbytes
    with open(s.path, "rb") as fp:
        fp.seek(s.pixel_offset or 0)
        element = fp.read(12)
        if element[:4] != _PIXEL_DATA_TAG:
            return False
        explicit = element[4:6] in (b"OW", b"OB")
        length = int.from_bytes(element[8:12] if explicit else element[4:8], "little")
        if length == _UNDEFINED_LENGTH or length < expected:
            return False
        fp.seek((s.pixel_offset or 0) + (12 if explicit else 8))
        read = fp.readinto(memoryview(out).cast("B"))
    if read != expected:
        raise InputError(s.path, f"truncated file: pixel data ends after {read} of {expected} bytes", code="truncated")
    return True


def _decode_with_pydicom(path: Path, transfer_syntax: str) -> np.ndarray:
    try:
        if transfer_syntax == DeflatedExplicitVRLittleEndian:
            # pydicom.pixels.pixel_array() parses the file without inflating it; dcmread() inflates.
            return pydicom.dcmread(path).pixel_array
        return decode_pixel_array(path)
    except MissingDecoderError:
        raise
    except Exception as e:  # decoders and the encapsulation parser raise many exception types
        reason = _one_line(e)
        truncated = isinstance(e, EOFError) or any(
            word in reason.lower() for word in ("end of file", "eof", "truncat", "insufficient", "not enough")
        )
        raise InputError(
            path,
            f"pixel data cannot be decoded ({reason})",
            code="truncated" if truncated else "corrupt",
        ) from e


def _decode(slices: list[_Slice], workers: int | None) -> np.ndarray:
    """Stored (raw) values of every slice, shape (slices, rows, columns)."""
    first = slices[0].header
    rows, columns = _uint(first, "Rows", 0), _uint(first, "Columns", 0)
    raw = np.empty((len(slices), rows, columns), dtype=_raw_dtype(first))
    cpus = os.cpu_count() or 1

    def check(path: Path, frame: np.ndarray) -> np.ndarray:
        if frame.shape != (rows, columns):
            raise InputError(
                path,
                f"decoded pixel data has shape {frame.shape}, expected {(rows, columns)}",
                code="corrupt",
            )
        return frame

    bits_stored = _uint(first, "BitsStored", raw.dtype.itemsize * 8)

    def one(k: int) -> None:
        s = slices[k]
        if k in fast and _read_native(s, raw[k]):
            return
        syntax = _transfer_syntax(s.header)
        if k in encapsulated:
            frame = read_single_frame(s.path, s.pixel_offset or 0)
            if frame is not None and decode_frame_into(frame, syntax, raw[k], bits_stored):
                return
        raw[k] = check(s.path, _decode_with_pydicom(s.path, syntax))

    by_file: dict[Path, list[int]] = {}
    native, compressed, encapsulated = [], [], set()
    for k, s in enumerate(slices):
        if s.frame is not None:
            by_file.setdefault(s.path, []).append(k)
        elif (
            s.pixel_offset is not None
            and _transfer_syntax(s.header) in _NATIVE_LITTLE_ENDIAN
            and _raw_dtype(s.header) == raw.dtype
        ):
            native.append(k)
        else:
            compressed.append(k)
            if (s.pixel_offset is not None and _transfer_syntax(s.header) in FAST_CODECS
                    and _raw_dtype(s.header) == raw.dtype and _uint(s.header, "BitsStored", 0) == bits_stored):
                encapsulated.add(k)
    for path, indices in by_file.items():
        frames = _decode_with_pydicom(path, _transfer_syntax(slices[indices[0]].header))
        if frames.ndim == 2:
            frames = frames[None]
        if frames.shape[1:] != (rows, columns) or frames.shape[0] < max(slices[k].frame or 1 for k in indices):
            raise InputError(path, f"decoded pixel data has shape {frames.shape}", code="corrupt")
        for k in indices:
            raw[k] = frames[(slices[k].frame or 1) - 1]
        del frames
    fast = set(native)
    if native or compressed:
        # Threads overlap file reads (readinto releases the GIL) on the native fast path, and decode JPEG 2000,
        # JPEG-LS and lossless JPEG in parallel: imagecodecs releases the GIL (pydicom's plugins, the fallback,
        # hold it). A process pool was tried before imagecodecs: no gain on 2 shared cores.
        with ThreadPoolExecutor(max_workers=max(1, workers or min(8, cpus + 2))) as pool:
            list(pool.map(one, native + compressed))
    _correct_unused_bits(raw, first)
    return raw


def _correct_unused_bits(raw: np.ndarray, ds: Dataset) -> None:
    """Mask (unsigned) or sign-extend (signed) values whose BitsStored < BitsAllocated, in place.

    Idempotent, so it is safe on values pydicom already corrected.
    """
    stored = _uint(ds, "BitsStored", raw.dtype.itemsize * 8)
    unused = raw.dtype.itemsize * 8 - stored
    if unused <= 0:
        return
    if raw.dtype.kind == "u":
        raw &= raw.dtype.type((1 << stored) - 1)
    else:
        raw <<= unused
        raw >>= unused


def _rescale(raw: np.ndarray, slices: list[_Slice]) -> np.ndarray:
    """Apply each slice's rescale: ``int16`` (in place) when integral and in range, else ``float32``."""
    slopes = np.array([s.slope for s in slices])
    intercepts = np.array([s.intercept for s in slices])
    uniform = bool(np.all(slopes == slopes[0]) and np.all(intercepts == intercepts[0]))
    integral = bool(np.all(slopes == np.round(slopes)) and np.all(intercepts == np.round(intercepts)))
    if integral and np.all(slopes > 0):
        # The range BitsStored allows usually settles it without a pass over the data.
        stored = _uint(slices[0].header, "BitsStored", raw.dtype.itemsize * 8)
        signed = raw.dtype.kind == "i"
        low, high = (-(2 ** (stored - 1)), 2 ** (stored - 1) - 1) if signed else (0, 2**stored - 1)
        fits = bool(np.all(low * slopes + intercepts >= -32768) and np.all(high * slopes + intercepts <= 32767))
        if not fits and uniform:
            low, high = float(raw.min()), float(raw.max())
            fits = low * slopes[0] + intercepts[0] >= -32768 and high * slopes[0] + intercepts[0] <= 32767
        elif not fits:
            lows = raw.min(axis=(1, 2)).astype(np.float64)
            highs = raw.max(axis=(1, 2)).astype(np.float64)
            fits = bool(np.all(lows * slopes + intercepts >= -32768) and np.all(highs * slopes + intercepts <= 32767))
        if fits:
            return _rescale_int16(raw, slopes, intercepts, uniform)
    out = raw.astype(np.float32)
    if uniform:
        if slopes[0] != 1:
            out *= np.float32(slopes[0])
        if intercepts[0] != 0:
            out += np.float32(intercepts[0])
    else:
        out *= slopes.astype(np.float32)[:, None, None]
        out += intercepts.astype(np.float32)[:, None, None]
    return out


def _rescale_int16(raw: np.ndarray, slopes: np.ndarray, intercepts: np.ndarray, uniform: bool) -> np.ndarray:
    # 16-bit arithmetic modulo 2**16 gives the right int16 bit pattern whenever the true result fits in
    # int16, so uint16 data can be rescaled in place and reinterpreted without a second array.
    wide = raw.view(np.uint16) if raw.dtype.itemsize == 2 else raw.astype(np.int64).astype(np.uint16)
    if uniform:
        if slopes[0] != 1:
            wide *= np.uint16(int(slopes[0]) % 65536)
        if intercepts[0] != 0:
            wide += np.uint16(int(intercepts[0]) % 65536)
    else:
        for k, (slope, intercept) in enumerate(zip(slopes, intercepts, strict=True)):
            if slope != 1:
                wide[k] *= np.uint16(int(slope) % 65536)
            if intercept != 0:
                wide[k] += np.uint16(int(intercept) % 65536)
    return wide.view(np.int16)
