"""NIfTI, NRRD and MHA files <-> :class:`~medhub.io.volume.Volume` (through SimpleITK).

This is the one place where file-format orientation conventions meet medhub's. SimpleITK already presents every
format in LPS (it converts NIfTI's RAS on read and back on write), so the only conversion left here is the axis
order: an ITK index is ``(x, y, z)`` = ``(column, row, slice)``, a :class:`Volume` index is ``(slice, row,
column)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medhub.errors import InputError
from medhub.io.files import atomic_path
from medhub.io.volume import Volume

#: Suffixes read and written by this module.
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


def is_volume_file(path: str | Path) -> bool:
    name = Path(path).name.lower()
    return any(name.endswith(s) for s in VOLUME_SUFFIXES)


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return next((s for s in VOLUME_SUFFIXES if name.endswith(s)), path.suffix)


def image_to_volume(image: sitk.Image, modality: str | None = None) -> Volume:
    """Convert a 3D SimpleITK image (LPS) to a :class:`Volume`."""
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"need a 3D scalar image, got {image.GetDimension()}D with "
                         f"{image.GetNumberOfComponentsPerPixel()} components")
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    affine = np.eye(4)
    # ITK direction column c is the LPS direction of index axis c (x, y, z); ours are reversed.
    affine[:3, :3] = (direction * spacing)[:, ::-1]
    affine[:3, 3] = image.GetOrigin()
    return Volume(array=sitk.GetArrayFromImage(image), affine=affine, modality=modality)


def volume_to_image(volume: Volume, array: np.ndarray | None = None) -> sitk.Image:
    """Convert a :class:`Volume` (or another array on its grid) to a SimpleITK image in LPS."""
    data = volume.array if array is None else array
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    image = sitk.GetImageFromArray(np.ascontiguousarray(data))
    spacing = np.asarray(volume.spacing)[::-1]
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(v) for v in volume.origin))
    image.SetDirection(tuple(float(v) for v in volume.direction[:, ::-1].ravel()))
    return image


def read_volume(path: str | Path, modality: str | None = None) -> Volume:
    """Read a NIfTI / NRRD / MHA file into a :class:`Volume` (LPS, mm).

    ``modality`` is taken on trust, since these formats do not record it.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found", code="not-found")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise InputError(path, f"cannot read {_suffix(path)} file ({_first_line(e)})", code="corrupt") from e
    if image.GetDimension() != 3:
        raise InputError(path, f"need a 3D volume, got {image.GetDimension()}D", code="not-3d")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(path, "need a scalar volume, got a multi-component image", code="not-scalar")
    volume = image_to_volume(image, modality=modality)
    volume.meta["source_file"] = str(path)
    return volume


def write_volume(volume: Volume, path: str | Path, array: np.ndarray | None = None) -> Path:
    """Write ``volume`` (or ``array`` on its grid, e.g. a label map) atomically; format from the suffix."""
    path = Path(path)
    image = volume_to_image(volume, array)
    with atomic_path(path) as tmp:
        # SimpleITK picks the writer from the file name, so the temp name keeps the real suffix.
        named = tmp.with_name(tmp.name + _suffix(path))
        try:
            sitk.WriteImage(image, str(named), useCompression=True)
            named.replace(tmp)
        finally:
            named.unlink(missing_ok=True)
    return path


def resample_isotropic(volume: Volume, grid_mm: float, masks: Sequence[np.ndarray] = ()
                       ) -> tuple[Volume, list[np.ndarray]]:
    """``volume`` resampled to ``grid_mm`` isotropic over the same extent (linear; outside it -1024), as DeepCAC's
    localisation step resampled its scans to 3 mm, and ``masks`` (bool, on the volume's grid) with it (nearest
    neighbour). The result's ``nominal_slice_thickness_mm`` is ``grid_mm``."""
    image = volume_to_image(volume)
    size = [round(n * s / grid_mm) for n, s in zip(image.GetSize(), image.GetSpacing(), strict=True)]

    def resample(img: sitk.Image, interpolator: int, default: float) -> sitk.Image:
        return sitk.Resample(img, size, sitk.Transform(), interpolator, img.GetOrigin(), (grid_mm,) * 3,
                             img.GetDirection(), default, img.GetPixelID())

    out = image_to_volume(resample(image, sitk.sitkLinear, -1024.0), modality=volume.modality)
    out.meta["nominal_slice_thickness_mm"] = grid_mm
    return out, [sitk.GetArrayFromImage(resample(volume_to_image(volume, np.asarray(m, np.uint8)),
                                                 sitk.sitkNearestNeighbor, 0)) > 0 for m in masks]


def _first_line(error: Exception) -> str:
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    return lines[-1] if lines else type(error).__name__
