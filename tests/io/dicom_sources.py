"""Small DICOM CT series for the SEG/SR tests, written with pydicom and read back header-only.

Geometry: axial slices, LPS, 0.8 mm pixels, 2.5 mm slice step along +z, so a :class:`Volume`'s affine is
``diag(2.5, 0.8, 0.8)`` (slice, row, column) plus the first slice's ``ImagePositionPatient``.
"""

from __future__ import annotations

import shutil
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from medhub.hub.card import Code, ModelCard, SegmentSpec, ValueSpec, Weights
from medhub.io.volume import DicomSource, Volume, affine_from_dicom
from medhub.synth.dicom_series import write_series

#: The real, badly de-identified Siemens series (``../shared/data`` beside the clone), see its README.
from tests.conftest import SHARED_DATA

REAL_DICOM = SHARED_DATA / "ct_siemens_example" / "dicom"

ORIGIN = (-120.0, -110.0, -300.0)
PIXEL_MM = 0.8
SLICE_MM = 2.5

# Type 2 attributes that real, badly de-identified files lack entirely (plain highdicom raises on them).
TYPE2_DROPPED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyID",
    "StudyTime",
    "SeriesNumber",
)


def write_ct_series(
    folder: Path, slices: int = 12, rows: int = 64, columns: int = 64, *, damaged: bool = False
) -> list[Path]:
    """Write a CT Image Storage series (:func:`medhub.synth.dicom_series.write_series`), one file per slice;
    return the paths in slice order.

    ``damaged`` mimics the real example in ``shared/data/ct_siemens_example``: Study/Series/SOP Instance UIDs
    and SOP Class UID present but empty (the file meta keeps the SOP identifiers), the Type 2 attributes in
    :data:`TYPE2_DROPPED` missing altogether, and file names without an extension.
    """
    values = np.random.default_rng(0).integers(-1000, 400, (slices, rows, columns))
    affine = affine_from_dicom(ORIGIN, [1, 0, 0, 0, 1, 0], [PIXEL_MM, PIXEL_MM], [0.0, 0.0, SLICE_MM])
    seed = zlib.crc32(str(folder).encode())  # distinct UIDs per folder, as real series have
    paths = write_series(values, affine, folder, seed=seed, file_names="numbered")
    if not damaged:
        return paths
    damaged_paths = []
    for path in paths:
        ds = pydicom.dcmread(path)
        for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
            setattr(ds, keyword, "")
        for keyword in TYPE2_DROPPED:
            if keyword in ds:
                delattr(ds, keyword)
        bare = path.with_suffix("")
        ds.save_as(bare, enforce_file_format=True)
        path.unlink()
        damaged_paths.append(bare)
    return damaged_paths


def fill_surrogates(headers: list[Dataset], series_key: str) -> dict[str, str]:
    """Fill empty identifiers in place, as ``medhub.io.dicom`` does: SOP identifiers from the file meta,
    study and series UIDs derived from ``series_key``. Returns keyword -> surrogate value."""
    surrogates: dict[str, str] = {}
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
        if not headers[0].get(keyword):
            surrogates[keyword] = generate_uid(entropy_srcs=[series_key, keyword])
    for ds in headers:
        for keyword, value in surrogates.items():
            setattr(ds, keyword, value)
        if not ds.get("SOPInstanceUID"):
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        if not ds.get("SOPClassUID"):
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    return surrogates


def read_header_volume(paths: list[Path] | Path) -> Volume:
    """Read a single-frame series header-only into a :class:`Volume` (zero voxels) sorted along the normal.

    Uses ``medhub.io.dicom.read_dicom_volume`` when that module exists, so the tests exercise the real reader.
    """
    if isinstance(paths, Path):
        try:
            from medhub.io.dicom import read_dicom_volume

            return read_dicom_volume(paths)
        except Exception:  # the reader is written in parallel; these tests must not depend on its state
            paths = sorted(p for p in paths.iterdir() if p.is_file())
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    normal = np.cross(
        np.asarray(headers[0].ImageOrientationPatient[:3], float),
        np.asarray(headers[0].ImageOrientationPatient[3:], float),
    )
    order = np.argsort([float(np.dot(normal, h.ImagePositionPatient)) for h in headers])
    headers = [headers[i] for i in order]
    files = [str(paths[i]) for i in order]
    surrogates = fill_surrogates(headers, series_key=str(Path(files[0]).parent))
    first = np.asarray(headers[0].ImagePositionPatient, float)
    step = np.asarray(headers[1].ImagePositionPatient, float) - first if len(headers) > 1 else normal
    affine = affine_from_dicom(first, headers[0].ImageOrientationPatient, headers[0].PixelSpacing, step)
    array = np.zeros((len(headers), int(headers[0].Rows), int(headers[0].Columns)), np.int16)
    source = DicomSource(headers=headers, files=files, surrogate_uids=surrogates)
    return Volume(array=array, affine=affine, modality=str(headers[0].Modality), source=source)


def blob_labels(shape: tuple[int, int, int], empty_label: int | None = None) -> np.ndarray:
    """A uint8 label map with two ellipsoids (labels 1 and 2), like a left and right lung."""
    k, j, i = np.ogrid[: shape[0], : shape[1], : shape[2]]
    ck, cj = (shape[0] - 1) / 2, (shape[1] - 1) / 2
    rk, rj, ri = shape[0] * 0.4, shape[1] * 0.35, shape[2] * 0.18
    labels = np.zeros(shape, np.uint8)
    for label, ci in ((1, shape[2] * 0.3), (2, shape[2] * 0.7)):
        inside = ((k - ck) / rk) ** 2 + ((j - cj) / rj) ** 2 + ((i - ci) / ri) ** 2 <= 1
        labels[inside] = label
    if empty_label is not None:
        labels[labels == empty_label] = 0
    return labels


def lung_card(version: str = "1.0.0", *, ai: bool = False) -> ModelCard:
    """A two-segment lung model card (right and left lung) with SNOMED CT codes and two scalar outputs."""
    lung = Code(value="39607008", scheme="SCT", meaning="Lung")
    organ = Code(value="123037004", scheme="SCT", meaning="Anatomical Structure")
    thorax = Code(value="51185008", scheme="SCT", meaning="Thorax")
    weights = None
    if ai:
        weights = Weights(
            file="weights/model.pt", sha256="0" * 64, size_bytes=1, license="MIT", trained_on="synthetic"
        )
    return ModelCard.model_validate(
        {
            "id": "lung-test",
            "name": "Lung test model",
            "version": version,
            "title": "Lung segmentation for tests",
            "description": "Test card.",
            "task": "segmentation",
            "inputs": {"modality": "CT", "body_part": "chest"},
            "outputs": {
                "segments": [
                    SegmentSpec(
                        label=1,
                        name="right lung",
                        category=organ,
                        type=lung,
                        modifier=Code(value="24028007", scheme="SCT", meaning="Right"),
                        anatomic_region=thorax,
                        color_rgb=(128, 174, 128),
                    ),
                    SegmentSpec(
                        label=2,
                        name="left lung",
                        category=organ,
                        type=lung,
                        modifier=Code(value="7771000", scheme="SCT", meaning="Left"),
                        anatomic_region=thorax,
                    ),
                ],
                "values": [
                    ValueSpec(
                        name="lung_volume",
                        unit="ml",
                        concept=Code(value="118565006", scheme="SCT", meaning="Volume"),
                    ),
                    ValueSpec(
                        name="mean_density",
                        unit="[hnsf'U]",
                        concept=Code(value="112031", scheme="DCM", meaning="Attenuation Coefficient"),
                    ),
                ],
            },
            "weights": weights,
            "intended_use": "Tests only.",
            "limitations": "None known.",
            "license": "Apache-2.0",
        }
    )


def dciodvfy_errors(path: Path) -> list[str]:
    """Error lines of dciodvfy; skips the test when dciodvfy is missing."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]
