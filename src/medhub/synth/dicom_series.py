"""Write synthetic DICOM image series for tests, benchmarks and demos.

:func:`write_series` turns a voxel array plus a :class:`~medhub.io.volume.Volume`-style affine (index in array
axis order ``(slice, row, column)`` -> LPS mm) into a CT or MR series that is a valid source for DICOM SEG:
one file per slice (CT/MR Image Storage) or, with ``enhanced=True``, one Enhanced CT/MR multi-frame file.

Output is deterministic: the same inputs give byte-identical files (UIDs come from ``seed`` and the given
UIDs, dates and times are fixed).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EnhancedCTImageStorage,
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLossless,
    JPEGLosslessSV1,
    MRImageStorage,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

from medhub.io.files import atomic_path

_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian)
#: Lossless JPEG (Process 14) syntaxes and the predictor written: SV1 must use 1; 6 exercises another.
_LOSSLESS_JPEG_PREDICTOR = {JPEGLosslessSV1: 1, JPEGLossless: 6}
_FIXED_DATE = "20240101"
_FIXED_TIME = "120000"
_TYPE2_OMITTABLE = (
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyID",
    "StudyTime",
)


def _ds(values: Sequence[float] | np.ndarray) -> list[str]:
    # Explicit formatting keeps every DS value within 16 characters at the best precision that fits.
    return [format_number_as_ds(float(v)) for v in values]


def _uid(seed: int, *parts: str) -> str:
    return generate_uid(entropy_srcs=[f"medhub-synth-{seed}", *parts])


def _stored_values(array: np.ndarray, intercept: float) -> tuple[np.ndarray, int, int]:
    """Stored pixel values (int16 or uint16), PixelRepresentation and BitsStored for ``array``.

    Unsigned data gets the fewest bits, at least 12, that hold it, as CT scanners write it.
    """
    stored = np.rint(np.asarray(array, dtype=np.float64) - intercept)
    low, high = float(stored.min()), float(stored.max())
    if low >= 0 and high <= 65535:
        return stored.astype(np.uint16), 0, max(12, int(high).bit_length())
    if low >= -32768 and high <= 32767:
        return stored.astype(np.int16), 1, 16
    raise ValueError(f"values minus intercept span [{low}, {high}], which does not fit 16-bit pixel data")


def _geometry(affine: np.ndarray) -> tuple[np.ndarray, list[float], np.ndarray, float]:
    """(IOP, PixelSpacing [row, column] mm, slice step vector mm, slice spacing along the normal mm)."""
    row_step, column_step = affine[:3, 2], affine[:3, 1]  # along a row = ImageOrientationPatient[0:3]
    column_spacing, row_spacing = float(np.linalg.norm(row_step)), float(np.linalg.norm(column_step))
    row_cosine, column_cosine = row_step / column_spacing, column_step / row_spacing
    orientation = np.concatenate([row_cosine, column_cosine])
    normal = np.cross(row_cosine, column_cosine)
    step = affine[:3, 0]
    return orientation, [row_spacing, column_spacing], step, abs(float(step @ normal))


def _common_header(
    *,
    modality: str,
    sop_class: str,
    study_uid: str,
    series_uid: str,
    frame_of_reference_uid: str,
    patient_name: str,
    patient_id: str,
    study_description: str,
    series_description: str,
    series_number: int,
    omit_type2: bool,
) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = _FIXED_DATE
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = _FIXED_TIME
    ds.AccessionNumber = "SYNTH0001"
    ds.Modality = modality
    ds.Manufacturer = "medhub synthetic"
    ds.ReferringPhysicianName = "Referrer^Synthetic"
    ds.StudyDescription = study_description
    ds.SeriesDescription = series_description
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.FrameOfReferenceUID = frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.PatientPosition = "HFS"
    ds.BodyPartExamined = "CHEST" if modality == "CT" else "BRAIN"
    if modality == "CT":
        ds.KVP = "120"
        ds.ConvolutionKernel = "STANDARD"
    else:
        ds.ScanningSequence = "GR"
        ds.SequenceVariant = "SP"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "3D"
        ds.RepetitionTime = "8"
        ds.EchoTime = "3"
        ds.EchoTrainLength = "1"
        ds.MagneticFieldStrength = "3"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    if omit_type2:
        for keyword in _TYPE2_OMITTABLE:
            delattr(ds, keyword)
    return ds


def _file_meta(sop_class: str, sop_instance: str, transfer_syntax: UID) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = transfer_syntax
    return meta


def _set_pixels(ds: Dataset, stored: np.ndarray, transfer_syntax: UID) -> None:
    """Put ``stored`` (frames, rows, columns) or (rows, columns) into ``ds`` in ``transfer_syntax``."""
    ds.PixelData = stored.tobytes()
    if transfer_syntax in _UNCOMPRESSED:
        return
    if transfer_syntax in _LOSSLESS_JPEG_PREDICTOR:
        # pydicom has no lossless JPEG encoder; libjpeg-turbo (in imagecodecs) writes Process 14 streams.
        import imagecodecs

        frames = stored.reshape(-1, *stored.shape[-2:]).view(np.uint16)  # signed data: its two's complement bits
        ds.PixelData = encapsulate([
            imagecodecs.jpeg8_encode(frame, lossless=True, predictor=_LOSSLESS_JPEG_PREDICTOR[transfer_syntax],
                                     bitspersample=int(ds.BitsStored))
            for frame in frames])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        return
    # pydicom picks the encoder plugin (its own RLE, pyjpegls, pylibjpeg-openjpeg); it raises if none exists.
    ds.compress(transfer_syntax, arr=stored, generate_instance_uid=False)


def write_series(
    array: np.ndarray,
    affine: np.ndarray,
    folder: str | Path,
    *,
    modality: str = "CT",
    transfer_syntax: str = ExplicitVRLittleEndian,
    series_uid: str | None = None,
    study_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    seed: int = 0,
    rescale_intercept: float | None = None,
    slice_thickness: float | None = None,
    slice_positions: np.ndarray | None = None,
    patient_name: str = "Synthetic^Patient",
    patient_id: str = "MEDHUB-SYNTH-0001",
    study_description: str = "Synthetic study",
    series_description: str = "Synthetic series",
    series_number: int = 1,
    enhanced: bool = False,
    omit_type2: bool = False,
    file_names: str = "uid",
) -> list[Path]:
    """Write ``array`` as a DICOM series into ``folder`` and return the written paths in slice order.

    Parameters
    ----------
    array:
        Voxel values, shape ``(slices, rows, columns)``; HU for CT. Rounded to integers and stored as 16-bit.
    affine:
        4x4 index-to-LPS matrix in mm, in array axis order (see :mod:`medhub.io.volume`). Column 0 is the
        slice step; a step not parallel to the slice normal writes a gantry-tilted series.
    transfer_syntax:
        Explicit/Implicit VR Little Endian, Deflated, or a lossless compressed syntax: RLE Lossless (pydicom),
        JPEG-LS (pyjpegls), JPEG 2000 lossless (pylibjpeg-openjpeg), lossless JPEG, Process 14 and its SV1
        subset (imagecodecs).
    series_uid, study_uid, frame_of_reference_uid, seed:
        Fixed UIDs; those not given are derived deterministically from ``seed``.
    rescale_intercept:
        Stored value = value - intercept (slope 1). Defaults to -1024 for CT; MR is written without rescale.
    slice_thickness:
        SliceThickness in mm; defaults to the slice spacing along the normal.
    slice_positions:
        Optional ``(slices, 3)`` ImagePositionPatient values (LPS mm) overriding the affine's regular grid,
        to write gaps, duplicates or non-uniform spacing.
    enhanced:
        Write one Enhanced CT/MR Image Storage multi-frame file instead of one file per slice.
    omit_type2:
        Drop PatientBirthDate, PatientSex, AccessionNumber, ReferringPhysicianName, StudyID and StudyTime,
        as many real-world files do.
    file_names:
        ``"uid"`` (SOP Instance UID + ``.dcm``, so directory order is not slice order) or ``"numbered"``
        (``IM0001.dcm``...).
    """
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"array must be (slices, rows, columns), got shape {array.shape}")
    if file_names not in ("uid", "numbered"):
        raise ValueError(f"file_names must be 'uid' or 'numbered', got {file_names!r}")
    transfer_syntax = UID(transfer_syntax)
    affine = np.asarray(affine, dtype=np.float64)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    modality = modality.upper()
    if modality not in ("CT", "MR"):
        raise ValueError(f"modality must be CT or MR, got {modality!r}")
    n_slices, rows, columns = array.shape
    if rescale_intercept is None:
        rescale_intercept = -1024.0 if modality == "CT" else 0.0
    stored, pixel_representation, bits_stored = _stored_values(array, rescale_intercept)
    orientation, pixel_spacing, step, spacing = _geometry(affine)
    if slice_positions is None:
        positions = affine[:3, 3] + np.arange(n_slices)[:, None] * step
    else:
        positions = np.asarray(slice_positions, dtype=np.float64).reshape(n_slices, 3)
    thickness = spacing if slice_thickness is None else float(slice_thickness)
    study_uid = study_uid or _uid(seed, "study")
    series_uid = series_uid or _uid(seed, "series", modality, str(enhanced))
    frame_of_reference_uid = frame_of_reference_uid or _uid(seed, "frame-of-reference")
    if enhanced:
        sop_class = EnhancedCTImageStorage if modality == "CT" else EnhancedMRImageStorage
    else:
        sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    common = dict(
        modality=modality,
        sop_class=sop_class,
        study_uid=study_uid,
        series_uid=series_uid,
        frame_of_reference_uid=frame_of_reference_uid,
        patient_name=patient_name,
        patient_id=patient_id,
        study_description=study_description,
        series_description=series_description,
        series_number=series_number,
        omit_type2=omit_type2,
    )

    def save(ds: Dataset, sop_instance: str, index: int) -> Path:
        ds.file_meta = _file_meta(sop_class, sop_instance, transfer_syntax)
        name = f"{sop_instance}.dcm" if file_names == "uid" else f"IM{index + 1:04d}.dcm"
        path = folder / name
        with atomic_path(path) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
        return path

    if enhanced:
        ds = _common_header(**common)
        sop_instance = _uid(seed, "instance", series_uid, "enhanced")
        ds.SOPInstanceUID = sop_instance
        ds.InstanceNumber = 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
        ds.ContentQualification = "PRODUCT"
        ds.AcquisitionDateTime = _FIXED_DATE + _FIXED_TIME
        ds.NumberOfFrames = n_slices
        ds.Rows, ds.Columns = rows, columns
        ds.PixelRepresentation = pixel_representation
        ds.BitsStored, ds.HighBit = bits_stored, bits_stored - 1
        ds.BurnedInAnnotation = "NO"
        ds.LossyImageCompression = "00"
        ds.PresentationLUTShape = "IDENTITY"
        shared = Dataset()
        measures = Dataset()
        measures.PixelSpacing = _ds(pixel_spacing)
        measures.SliceThickness = format_number_as_ds(thickness)
        shared.PixelMeasuresSequence = [measures]
        plane = Dataset()
        plane.ImageOrientationPatient = _ds(orientation)
        shared.PlaneOrientationSequence = [plane]
        transform = Dataset()
        transform.RescaleIntercept = format_number_as_ds(float(rescale_intercept))
        transform.RescaleSlope = "1"
        transform.RescaleType = "HU" if modality == "CT" else "US"
        shared.PixelValueTransformationSequence = [transform]
        ds.SharedFunctionalGroupsSequence = [shared]
        per_frame = []
        for k in range(n_slices):
            item = Dataset()
            position = Dataset()
            position.ImagePositionPatient = _ds(positions[k])
            item.PlanePositionSequence = [position]
            content = Dataset()
            content.StackID = "1"
            content.InStackPositionNumber = k + 1
            content.DimensionIndexValues = [1, k + 1]
            item.FrameContentSequence = [content]
            per_frame.append(item)
        ds.PerFrameFunctionalGroupsSequence = per_frame
        _set_pixels(ds, stored, transfer_syntax)
        return [save(ds, sop_instance, 0)]

    paths = []
    for k in range(n_slices):
        ds = _common_header(**common)
        sop_instance = _uid(seed, "instance", series_uid, str(k))
        ds.SOPInstanceUID = sop_instance
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = _ds(positions[k])
        ds.ImageOrientationPatient = _ds(orientation)
        ds.SliceThickness = format_number_as_ds(thickness)
        ds.SliceLocation = format_number_as_ds(float(positions[k] @ np.cross(orientation[:3], orientation[3:])))
        ds.Rows, ds.Columns = rows, columns
        ds.PixelSpacing = _ds(pixel_spacing)
        ds.PixelRepresentation = pixel_representation
        ds.BitsStored, ds.HighBit = bits_stored, bits_stored - 1
        if modality == "CT":
            ds.RescaleIntercept = format_number_as_ds(float(rescale_intercept))
            ds.RescaleSlope = "1"
            ds.RescaleType = "HU"
            ds.WindowCenter, ds.WindowWidth = "40", "400"
        _set_pixels(ds, stored[k], transfer_syntax)
        paths.append(save(ds, sop_instance, k))
    return paths
