"""One preprocessing policy for brain MRI, the same at training and at inference, with an exact inverse.

FOMO25's baseline finetuned on the native thick-slice grid and resampled to 1 mm at inference, and scored Dice 0 on
the meningioma task. Here every sequence of a session goes through :func:`preprocess`, whether it feeds pretraining,
finetuning or a hub model, and a prediction goes back to the input grid through :meth:`Preprocessing.to_input_grid`:

1. **RAS**: axes permuted and flipped (never interpolated) so that the array's axes run to the patient's Right,
   Anterior and Superior;
2. **crop to the foreground box**: the bounding box of the voxels that differ from the background, the value of
   the volume's corners (0 for skull-stripped FOMO data; BraTS stores a negative constant), over all sequences;
3. **z-normalization with a percentile clip**: within the foreground, values clipped to their 0.5th-99.5th
   percentiles, then minus the mean, over the SD; the background becomes 0;
4. **resampling to 1 mm isotropic** (linear for images; nearest for masks), keeping the box's first voxel centre.

Coordinates are NIfTI's: an affine maps ``(i, j, k)`` indices to RAS+ world millimetres. The inverse maps every
input voxel's centre into the preprocessed grid and takes the nearest preprocessed voxel: the geometry is exact
(no shift, flip or half-voxel offset); where the input grid is already 1 mm RAS it is the identity on the box.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage as ndi

from medhub.masks import resample_grid

#: Target voxel size (mm).
SPACING_MM = 1.0
#: Percentiles of the foreground that bound the intensities before z-normalization.
CLIP_PERCENTILES = (0.5, 99.5)


@dataclass(frozen=True)
class Preprocessing:
    """What :func:`preprocess` did to one session, enough to undo it (JSON-serializable via :meth:`to_dict`).

    Attributes
    ----------
    input_shape, input_affine:
        The session's grid as read (every sequence shares it).
    box:
        ``(start, stop)`` per RAS axis of the foreground crop, in RAS-reoriented voxel indices.
    affine:
        Index-to-RAS affine of the preprocessed arrays (1 mm voxels).
    shape:
        Shape of the preprocessed arrays.
    """

    input_shape: tuple[int, int, int]
    input_affine: tuple[tuple[float, ...], ...]
    box: tuple[tuple[int, int], ...]
    affine: tuple[tuple[float, ...], ...]
    shape: tuple[int, int, int]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> Preprocessing:
        return cls(input_shape=tuple(data["input_shape"]), input_affine=tuple(map(tuple, data["input_affine"])),
                   box=tuple(map(tuple, data["box"])), affine=tuple(map(tuple, data["affine"])),
                   shape=tuple(data["shape"]))

    def to_input_grid(self, labels: np.ndarray) -> np.ndarray:
        """A label map (or any array) on the preprocessed grid, back on the input grid by nearest neighbour;
        input voxels outside the box get 0."""
        if labels.shape != self.shape:
            raise ValueError(f"labels of shape {labels.shape} are not on the preprocessed grid {self.shape}")
        return resample_grid(labels, np.asarray(self.affine), np.asarray(self.input_affine), self.input_shape)

    def from_input_grid(self, labels: np.ndarray) -> np.ndarray:
        """A label map on the input grid (e.g. a training mask) onto the preprocessed grid, by nearest neighbour."""
        return resample_grid(labels, np.asarray(self.input_affine), np.asarray(self.affine), self.shape)


def to_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``array`` with its axes permuted and flipped to RAS, and the matching affine (no interpolation)."""
    import nibabel as nib

    orientation = nib.orientations.io_orientation(affine)
    target = nib.orientations.axcodes2ornt(("R", "A", "S"))
    transform = nib.orientations.ornt_transform(orientation, target)
    out = nib.orientations.apply_orientation(array, transform)
    new_affine = affine @ nib.orientations.inv_ornt_aff(transform, array.shape)
    return np.ascontiguousarray(out), new_affine


def background_value(array: np.ndarray) -> float:
    """The value of the volume's eight corners (the most common one): what lies outside the head or brain."""
    corners = [array[i, j, k] for i in (0, -1) for j in (0, -1) for k in (0, -1)]
    values, counts = np.unique(np.asarray(corners, dtype=np.float64), return_counts=True)
    return float(values[np.argmax(counts)])


def znormalize(array: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """Clip the foreground to its :data:`CLIP_PERCENTILES` and z-normalize it; the background becomes 0."""
    values = array[foreground].astype(np.float64)
    if values.size == 0:
        return np.zeros(array.shape, np.float32)
    low, high = np.percentile(values, CLIP_PERCENTILES)
    clipped = np.clip(values, low, high)
    sd = clipped.std()
    out = np.zeros(array.shape, np.float32)
    out[foreground] = (clipped - clipped.mean()) / (sd if sd > 0 else 1.0)
    return out


def preprocess(sequences: Mapping[str, tuple[np.ndarray, np.ndarray]], *, spacing_mm: float = SPACING_MM
               ) -> tuple[dict[str, np.ndarray], Preprocessing]:
    """Preprocess one session: ``{name: (array, affine)}`` on one grid -> ``{name: float32 array}`` on the 1 mm RAS
    grid of the foreground box, and the :class:`Preprocessing` that undoes it. See the module docstring."""
    if not sequences:
        raise ValueError("no sequences to preprocess")
    first_array, first_affine = next(iter(sequences.values()))
    shape = first_array.shape
    for name, (array, affine) in sequences.items():
        if array.shape != shape or not np.allclose(affine, first_affine, atol=1e-3):
            raise ValueError(f"sequence {name!r} is on another grid than the first; register the session first")
    ras = {name: to_ras(np.asarray(array, np.float32), np.asarray(affine, np.float64))
           for name, (array, affine) in sequences.items()}
    ras_affine = next(iter(ras.values()))[1]
    foreground = np.zeros(next(iter(ras.values()))[0].shape, bool)
    for array, _ in ras.values():
        foreground |= array != background_value(array)
    found = ndi.find_objects(foreground.astype(np.uint8))
    box = found[0] if found else tuple(slice(0, n) for n in foreground.shape)
    start = np.array([s.start for s in box], dtype=np.float64)
    box_affine = ras_affine.copy()
    box_affine[:3, 3] += ras_affine[:3, :3] @ start
    cropped_foreground = foreground[box]
    voxel = np.linalg.norm(ras_affine[:3, :3], axis=0)
    extent = np.array(cropped_foreground.shape) * voxel
    out_shape = tuple(int(n) for n in np.maximum(1, np.floor((extent - voxel) / spacing_mm + 1e-6) + 1))
    out_affine = box_affine.copy()
    out_affine[:3, :3] = box_affine[:3, :3] / voxel * spacing_mm  # RAS axes stay; voxels become spacing_mm
    arrays = {}
    for name, (array, _) in ras.items():
        normalized = znormalize(array[box], cropped_foreground)
        arrays[name] = resample_grid(normalized, box_affine, out_affine, out_shape, order=1).astype(np.float32)
    record = Preprocessing(
        input_shape=tuple(int(n) for n in shape),  # type: ignore[arg-type]
        input_affine=tuple(tuple(float(v) for v in row) for row in np.asarray(first_affine, np.float64)),
        box=tuple((int(s.start), int(s.stop)) for s in box),
        affine=tuple(tuple(float(v) for v in row) for row in out_affine),
        shape=out_shape,  # type: ignore[arg-type]
    )
    return arrays, record
