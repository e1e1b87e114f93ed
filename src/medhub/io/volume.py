"""The in-memory image that every layer of medhub passes around.

Conventions, stated once:

* ``Volume.array`` is indexed ``[k, j, i]`` = ``[slice, row, column]``, i.e. ``(z, y, x)`` order.
* ``Volume.affine`` is a 4x4 matrix that maps an index ``(k, j, i, 1)`` *in array axis order* to patient
  coordinates in millimetres in the DICOM patient frame, **LPS** (x to the patient's left, y to posterior,
  z to head). This is the same convention as ``highdicom.Volume``.
* Column 0 of the affine is the slice step, column 1 the row step (along the DICOM column direction
  cosine, ``ImageOrientationPatient[3:6]``), column 2 the column step (along ``ImageOrientationPatient[0:3]``).
  Their norms are the spacings in mm. Column 3 is the position of voxel ``(0, 0, 0)``: the centre of the
  first pixel of the first slice (DICOM ``ImagePositionPatient``).
* CT values are Hounsfield units: rescale slope/intercept are applied when the volume is read, never later.

NIfTI's RAS convention is converted to and from LPS in :mod:`medhub.io.nifti` only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydicom import Dataset


@dataclass
class DicomSource:
    """Where a volume came from, for outputs that must reference it.

    Parameters
    ----------
    headers:
        One header-only dataset per slice, in the volume's slice order (for a multi-frame source, the single
        header repeated). Identifiers that were missing in the files are already filled with surrogates here.
    frame_numbers:
        For a multi-frame source, the 1-based frame number of each slice; ``None`` for single-frame series.
    surrogate_uids:
        Attribute keyword -> surrogate value for every identifier medhub had to make up because the files
        lacked it (e.g. an empty ``SeriesInstanceUID`` after bad de-identification).
    files:
        Source file path of each slice, in slice order.
    """

    headers: list[Dataset]
    files: list[str]
    frame_numbers: list[int] | None = None
    surrogate_uids: dict[str, str] = field(default_factory=dict)

    @property
    def study_instance_uid(self) -> str:
        return str(self.headers[0].StudyInstanceUID)

    @property
    def series_instance_uid(self) -> str:
        return str(self.headers[0].SeriesInstanceUID)

    @property
    def frame_of_reference_uid(self) -> str | None:
        value = self.headers[0].get("FrameOfReferenceUID")
        return str(value) if value else None

    @property
    def sop_instance_uids(self) -> list[str]:
        return [str(h.SOPInstanceUID) for h in self.headers]


@dataclass
class Volume:
    """A 3D scalar image with explicit geometry.

    Parameters
    ----------
    array:
        Voxel values, shape ``(slices, rows, columns)``. CT in HU.
    affine:
        4x4 index-to-LPS matrix in mm (see module docstring).
    modality:
        DICOM modality (``"CT"``, ``"MR"``...) when known.
    source:
        The DICOM series the volume was read from, or ``None`` for NIfTI/NRRD/MHA inputs.
    meta:
        Free-form facts found while reading (nominal slice thickness, geometry findings, sequence name...).
    """

    array: np.ndarray
    affine: np.ndarray
    modality: str | None = None
    source: DicomSource | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.array.ndim != 3:
            raise ValueError(f"Volume array must be 3D (slices, rows, columns), got shape {self.array.shape}")
        if self.affine.shape != (4, 4):
            raise ValueError(f"Volume affine must be 4x4, got {self.affine.shape}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel spacing in mm, in array axis order ``(slice, row, column)``."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def direction(self) -> np.ndarray:
        """3x3 matrix of unit axis directions in LPS; column ``a`` is the direction of array axis ``a``."""
        return self.affine[:3, :3] / np.asarray(self.spacing)

    @property
    def origin(self) -> np.ndarray:
        """LPS position (mm) of the centre of voxel ``(0, 0, 0)``."""
        return self.affine[:3, 3].copy()

    def with_array(self, array: np.ndarray, **changes: Any) -> Volume:
        """A volume on the same grid with other voxel values (e.g. a label map)."""
        if array.shape != self.array.shape:
            raise ValueError(f"array shape {array.shape} does not match the volume grid {self.array.shape}")
        return Volume(
            array=array,
            affine=self.affine.copy(),
            modality=changes.get("modality", self.modality),
            source=changes.get("source", self.source),
            meta=changes.get("meta", dict(self.meta)),
        )

    def same_grid(self, other: Volume, atol_mm: float = 1e-3) -> bool:
        """Whether ``other`` has the same shape and voxel-to-LPS mapping (within ``atol_mm``)."""
        return self.shape == other.shape and bool(np.allclose(self.affine, other.affine, atol=atol_mm))


def affine_from_dicom(
    image_position: np.ndarray | list[float],
    image_orientation: np.ndarray | list[float],
    pixel_spacing: np.ndarray | list[float],
    slice_step: np.ndarray | list[float],
) -> np.ndarray:
    """Build a :class:`Volume` affine from DICOM geometry.

    Parameters
    ----------
    image_position:
        ``ImagePositionPatient`` of the first slice (LPS, mm).
    image_orientation:
        ``ImageOrientationPatient``: row direction cosine, then column direction cosine.
    pixel_spacing:
        ``PixelSpacing``: (spacing between rows, spacing between columns) in mm.
    slice_step:
        LPS vector (mm) from the first slice's position to the second's.
    """
    orientation = np.asarray(image_orientation, dtype=np.float64)
    row_cosine, column_cosine = orientation[:3], orientation[3:]
    row_spacing, column_spacing = (float(v) for v in pixel_spacing)
    affine = np.eye(4)
    affine[:3, 0] = np.asarray(slice_step, dtype=np.float64)
    affine[:3, 1] = column_cosine * row_spacing
    affine[:3, 2] = row_cosine * column_spacing
    affine[:3, 3] = np.asarray(image_position, dtype=np.float64)
    return affine


def resample_onto(volume: Volume, grid: Volume, order: int = 1, fill: float = 0.0) -> Volume:
    """``volume``'s values on ``grid``'s voxels (interpolation ``order``: 0 nearest, 1 linear), through patient
    coordinates; voxels of ``grid`` outside ``volume`` get ``fill``. The same volume back when the grids agree."""
    from medhub.masks import resample_grid

    if volume.same_grid(grid):
        return volume
    array = resample_grid(volume.array.astype(np.float32, copy=False) if order else volume.array, volume.affine,
                          grid.affine, grid.shape, order=order, fill=fill)
    return Volume(array=array, affine=grid.affine.copy(), modality=volume.modality, source=None,
                  meta={**volume.meta, "resampled_onto": "grid of the session's first sequence"})
