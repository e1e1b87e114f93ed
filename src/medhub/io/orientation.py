"""Canonical array orientation: the same anatomy in the same array order, whatever order the file stored it in.

A volume's array can come in any of 48 axis orders and signs: a DICOM series is sorted along its slice normal,
a NIfTI file written by a RAS tool has its rows and columns reversed relative to DICOM, a sagittal series has its
slice axis along x. Models whose decisions depend on anatomy (a heart left of the midline, lesions per *axial*
slice, a network trained on one orientation) work on the **canonical** view instead:

* axis 0 points to the head (+z in LPS): index 0 is the most inferior slice, so axis 0 is the axial slice axis;
* axis 1 points posterior (+y): row 0 is the most anterior;
* axis 2 points to the patient's left (+x): column 0 is the patient's right.

This is the stored order of a standard axial DICOM series (ImageOrientationPatient ``[1, 0, 0, 0, 1, 0]``,
slices sorted by position), for which the transform is the identity and costs nothing. Only axis permutations and
flips are used, never resampling; for oblique data each axis is matched to the LPS axis it points most nearly
along.
"""

from __future__ import annotations

import itertools

import numpy as np

from medhub.io.volume import Volume

#: ``(perm, flips)``: ``np.transpose(array, perm)``, then flip canonical axis ``k`` where ``flips[k]``.
Transform = tuple[tuple[int, int, int], tuple[bool, bool, bool]]

IDENTITY: Transform = ((0, 1, 2), (False, False, False))

#: :attr:`Volume.direction` of a canonical array: column ``k`` is the LPS direction of canonical axis ``k``.
CANONICAL_DIRECTION = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


#: Flips x and y: LPS (DICOM, :class:`Volume`) to RAS (NIfTI) coordinates and back (it is its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def ras_view(volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    """``volume``'s array (not copied, axes as stored) and the affine mapping its indices to RAS+ mm (NIfTI's
    world), for code written in NIfTI's convention."""
    return volume.array, LPS_TO_RAS @ volume.affine


def volume_from_ras(array: np.ndarray, affine_ras: np.ndarray, **fields) -> Volume:
    """A :class:`Volume` (``(slice, row, column)`` order, LPS affine) from a NIfTI-ordered ``(x, y, z)`` array and
    its index-to-RAS affine, as nibabel reads them; ``fields`` go to the Volume (e.g. ``modality``)."""
    permute = np.eye(4)[[2, 1, 0, 3]]  # (k, j, i) index -> (i, j, k)
    return Volume(array=np.ascontiguousarray(np.transpose(array, (2, 1, 0))),
                  affine=LPS_TO_RAS @ np.asarray(affine_ras, np.float64) @ permute, **fields)


def canonical_affine(spacing_mm: tuple[float, float, float], origin_lps_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
                     ) -> np.ndarray:
    """The 4x4 index-to-LPS affine of a canonical array with ``(slice, row, column)`` spacing ``spacing_mm`` and
    voxel ``(0, 0, 0)`` centred at ``origin_lps_mm``: a standard axial series."""
    affine = np.eye(4)
    affine[:3, :3] = CANONICAL_DIRECTION * np.asarray(spacing_mm, dtype=np.float64)
    affine[:3, 3] = origin_lps_mm
    return affine


def canonical_transform(direction: np.ndarray) -> Transform:
    """Axis permutation and flips that bring an array to canonical (head, posterior, left) order.

    ``direction`` is the 3x3 matrix whose column ``a`` is the LPS unit direction of array axis ``a``
    (:attr:`Volume.direction`).
    """
    d = np.asarray(direction, dtype=np.float64)
    best, best_score = (0, 1, 2), -1.0
    for perm in itertools.permutations(range(3)):  # canonical axis k is LPS component 2 - k
        score = sum(abs(d[2 - k, perm[k]]) for k in range(3))
        if score > best_score + 1e-9:
            best, best_score = perm, score
    perm = tuple(int(p) for p in best)
    flips = tuple(bool(d[2 - k, perm[k]] < 0) for k in range(3))
    return perm, flips  # type: ignore[return-value]


def apply_canonical(array: np.ndarray, transform: Transform) -> np.ndarray:
    """View (no copy) of ``array`` in canonical orientation."""
    perm, flips = transform
    out = np.transpose(array, perm)
    for k in range(3):
        if flips[k]:
            out = np.flip(out, axis=k)
    return out


def undo_canonical(array: np.ndarray, transform: Transform) -> np.ndarray:
    """Inverse of :func:`apply_canonical`: a canonical-order array back in the stored order (a view)."""
    perm, flips = transform
    out = array
    for k in range(3):
        if flips[k]:
            out = np.flip(out, axis=k)
    return np.transpose(out, np.argsort(perm))


def reoriented(volume: Volume, transform: Transform) -> Volume:
    """``volume`` stored in another axis order: its array is ``apply_canonical(volume.array, transform)`` (a
    C-contiguous copy) and its affine's columns are permuted and negated with the axes, the origin moved to the
    voxel that became index ``(0, 0, 0)``, so every voxel keeps its LPS position."""
    perm, flips = transform
    steps = volume.affine[:3, :3][:, list(perm)].copy()
    origin = volume.affine[:3, 3].copy()
    shape = [volume.shape[p] for p in perm]
    for k in range(3):
        if flips[k]:
            origin += steps[:, k] * (shape[k] - 1)
            steps[:, k] = -steps[:, k]
    affine = np.eye(4)
    affine[:3, :3], affine[:3, 3] = steps, origin
    array = np.ascontiguousarray(apply_canonical(volume.array, transform))
    return Volume(array, affine, modality=volume.modality, source=volume.source, meta=dict(volume.meta))


def canonical_volume(volume: Volume) -> tuple[Volume, Transform]:
    """``volume`` in canonical orientation (:func:`reoriented`), and the transform that took it there; the input
    volume itself for the identity transform (a standard axial series), at no cost."""
    transform = canonical_transform(volume.direction)
    return (volume if transform == IDENTITY else reoriented(volume, transform)), transform
