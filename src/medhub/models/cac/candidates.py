"""Calcium candidates and what describes them: every ``>= 130 HU`` component near the heart, with its features.

Clinical scoring software finds calcium by the threshold and leaves the judgement (coronary or not) to a reader;
``cac`` does the same with a classifier (:mod:`.classifier`). This module is the finding half, plain functions on
arrays in the canonical orientation of :mod:`medhub.io.orientation` (axis 0 slices from the feet up, axis 1 rows
from anterior, axis 2 columns from the patient's right), HU and millimetres throughout.

A candidate is a 26-connected component of ``hu >= 130`` inside the heart region (the heart mask grown by a
margin, metal excluded): found exactly, never a learned guess. Its features (:data:`FEATURES`) are what a reader
looks at: size and density, the tissue around it (fat, soft tissue, lung, other calcium), whether it is part of a
larger dense structure (bone), and where it sits in the heart: depth inside the heart mask, position along the
heart's long axis (base to apex) and distance from that axis, and its offset from the heart's centre in units of
the heart's own extent. Positions are relative to the heart, so that no one generator's geometry is learnt in
absolute millimetres. Beside the features, each candidate's distance to the wall of the descending aorta
(``aorta_distance_mm``, :class:`AortaTrack`) lets the classifier's aortic-wall rule
(:data:`medhub.models.cac.classifier.AORTIC_WALL_MM`) call calcium in that wall aortic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from medhub.masks import crop_box, dilate_ball

CANDIDATE_HU = 130.0
#: Bone and large dense structures: a >= BONE_HU object bigger than BONE_MIN_MM3, or running out of a box
#: BONE_CONTEXT_MM around the candidate, is part of bone (ribs, sternum, spine) or of a big calcified structure.
BONE_HU, BONE_CONTEXT_MM = 200.0, 20.0
#: HU bands of the candidate's surroundings.
LUNG_HU, FAT_HU, SOFT_HU = -400.0, (-200.0, -30.0), (-30.0, CANDIDATE_HU)
#: Shell (mm) around a candidate whose tissue is described, and the neighbourhood (mm) where other calcium counts.
SHELL_MM, NEIGHBOURHOOD_MM = 3.0, 10.0
#: Distances (mm) are capped here: further is "far".
FAR_MM = 40.0

_CONNECTED_26 = np.ones((3, 3, 3), bool)

#: The classifier's inputs, in order. Units: mm, mm², mm³, HU; ``*_sd`` in noise SDs; ``rel_*`` in the heart's
#: half-extents; ``*_fraction`` in [0, 1].
FEATURES = (
    "volume_mm3", "max_area_mm2", "z_extent_mm", "elongation", "peak_hu", "mean_hu", "peak_sd",
    "shell_lung_fraction", "shell_fat_fraction", "shell_soft_fraction", "shell_dense_fraction", "shell_mean_hu",
    "neighbour_dense_mm3", "dense_structure_mm3", "dense_structure_open",
    "heart_fraction", "heart_depth_mm", "lung_distance_mm",
    "long_axis_position", "axis_distance", "rel_z", "rel_y", "rel_x",
    "slice_spacing_mm", "pixel_mm",
)


@dataclass
class Candidates:
    """The candidates of one scan: ``labels`` (int32 on the scan's sub-box ``box``, 0 = none, ``i`` = the table's
    row ``i - 1``), the scan's ``shape``, and ``table`` (one row per candidate: :data:`FEATURES` plus
    ``first_slice``, ``last_slice``, ``centroid_index`` as z, y, x voxel indices of the scan)."""

    labels: np.ndarray
    box: tuple[slice, ...]
    shape: tuple[int, ...]
    table: pd.DataFrame

    def __len__(self) -> int:
        return len(self.table)

    def mask(self, keep: np.ndarray) -> np.ndarray:
        """Bool mask on the scan's grid of the candidates whose ``keep`` entry (one per row) is true."""
        out = np.zeros(self.shape, bool)
        lookup = np.concatenate([[False], np.asarray(keep, bool)])
        out[self.box] = lookup[self.labels]
        return out

    def full_labels(self) -> np.ndarray:
        """``labels`` on the scan's whole grid."""
        out = np.zeros(self.shape, np.int32)
        out[self.box] = self.labels
        return out


@dataclass(frozen=True)
class HeartFrame:
    """Heart-centred coordinates: centre (mm, in index order z, y, x), unit long axis pointing from the base to
    the apex, half-length along it and mean radius around it (mm), and the half-extents along z, y, x (mm)."""

    centre_mm: np.ndarray
    long_axis: np.ndarray
    half_length_mm: float
    radius_mm: float
    half_extent_mm: np.ndarray

    @classmethod
    def of(cls, heart_mask: np.ndarray, spacing_mm: tuple[float, float, float]) -> HeartFrame:
        points = np.argwhere(heart_mask)
        if len(points) > 20000:  # the frame needs the shape, not every voxel
            points = points[:: len(points) // 20000 + 1]
        points = points * np.asarray(spacing_mm, float)
        centre = points.mean(axis=0)
        offsets = points - centre
        _, vectors = np.linalg.eigh(np.cov(offsets.T))
        axis = vectors[:, -1]
        # The apex lies inferior (lower z), anterior (lower row) and to the patient's left (higher column).
        if axis @ np.array([-1.0, -1.0, 1.0]) < 0:
            axis = -axis
        along = offsets @ axis
        radial = np.linalg.norm(offsets - np.outer(along, axis), axis=1)
        return cls(centre, axis, float(np.percentile(np.abs(along), 98)) or 1.0, float(radial.mean()) or 1.0,
                   np.maximum(np.percentile(np.abs(offsets), 98, axis=0), 1.0))

    def coordinates(self, point_mm: np.ndarray) -> tuple[float, float, float, float, float]:
        """``(long_axis_position, axis_distance, rel_z, rel_y, rel_x)`` of a point (mm, index order): position
        along the long axis in half-lengths (-1 base, +1 apex), distance from the axis in mean radii, and the
        offset from the centre in half-extents."""
        offset = np.asarray(point_mm, float) - self.centre_mm
        along = float(offset @ self.long_axis)
        radial = float(np.linalg.norm(offset - along * self.long_axis))
        rel = offset / self.half_extent_mm
        return along / self.half_length_mm, radial / self.radius_mm, float(rel[0]), float(rel[1]), float(rel[2])


#: Distances are computed on a grid of about this voxel size (mm): a plaque's depth in the heart needs no finer.
DISTANCE_GRID_MM = 2.0
#: The descending aorta is found on a grid of about this voxel size (mm), as on DeepCAC's 3 mm grid.
AORTA_GRID_MM = 3.0


@dataclass(frozen=True)
class AortaTrack:
    """The descending aorta beside the heart (:func:`.aorta.descending_aorta`): its centre per slice (mm, rows and
    columns of the canonical view) and outer radius (mm); empty when it was not found."""

    slice_mm: np.ndarray
    centre_mm: np.ndarray
    radius_mm: float

    @classmethod
    def of(cls, hu: np.ndarray, heart_mask: np.ndarray, spacing_mm: tuple[float, float, float]) -> AortaTrack:
        from medhub.models.cac.aorta import descending_aorta

        stride = tuple(max(1, round(AORTA_GRID_MM / s)) for s in spacing_mm)
        coarse = tuple(slice(None, None, f) for f in stride)
        sampling = tuple(s * f for s, f in zip(spacing_mm, stride, strict=True))
        found = descending_aorta(np.asarray(hu)[coarse], np.asarray(heart_mask, bool)[coarse], sampling)
        if found is None:
            return cls(np.zeros(0), np.zeros((0, 2)), 0.0)
        centres, radius = found
        ks = sorted(centres)
        return cls(np.array(ks, float) * sampling[0],
                   np.array([centres[k] for k in ks], float) * np.array(sampling[1:]), radius)

    def distance_mm(self, point_index: np.ndarray, spacing_mm: tuple[float, float, float]) -> float:
        """In-plane distance (mm) from a point (voxel indices z, y, x) to the aorta's outer wall on the nearest
        tracked slice, negative inside it, capped at :data:`FAR_MM`; NaN when no tracked slice lies within
        :data:`AORTA_GRID_MM` of the point's."""
        if not len(self.slice_mm):
            return float("nan")
        point = np.asarray(point_index, float) * np.asarray(spacing_mm, float)
        nearest = int(np.argmin(np.abs(self.slice_mm - point[0])))
        if abs(self.slice_mm[nearest] - point[0]) > AORTA_GRID_MM:
            return float("nan")
        gap = float(np.hypot(*(point[1:] - self.centre_mm[nearest]))) - self.radius_mm
        return float(np.clip(gap, -FAR_MM, FAR_MM))


def _coarse_distance(mask: np.ndarray, spacing_mm: tuple[float, float, float], signed: bool
                     ) -> tuple[np.ndarray, tuple[int, ...]]:
    """Distance (mm) to the edge of ``mask`` on a strided grid of about :data:`DISTANCE_GRID_MM`, capped at
    :data:`FAR_MM`, and the strides: look a voxel ``i`` up at ``i // stride``. ``signed``: positive inside,
    negative outside; otherwise the distance of every voxel outside ``mask`` to it (0 inside)."""
    stride = tuple(max(1, round(DISTANCE_GRID_MM / s)) for s in spacing_mm)
    coarse = np.asarray(mask, bool)[::stride[0], ::stride[1], ::stride[2]]
    sampling = tuple(s * f for s, f in zip(spacing_mm, stride, strict=True))
    outside = ndi.distance_transform_edt(~coarse, sampling=sampling) if coarse.any() else np.full(coarse.shape,
                                                                                                 FAR_MM)
    if signed:
        outside = np.where(coarse, ndi.distance_transform_edt(coarse, sampling=sampling), -outside)
    return np.clip(outside, -FAR_MM, FAR_MM).astype(np.float32), stride


def find_candidates(hu: np.ndarray, spacing_mm: tuple[float, float, float], region: np.ndarray,
                    heart_mask: np.ndarray, *, soft_tissue_hu: float = 40.0, noise_sd: float = 20.0,
                    threshold_hu: float = CANDIDATE_HU) -> Candidates:
    """Every 26-connected ``hu >= threshold_hu`` component inside ``region`` (bool, the heart mask grown by a
    margin, metal already removed), with its :data:`FEATURES` and ``aorta_distance_mm`` (:class:`AortaTrack`).

    ``heart_mask`` is the heart proper (its frame gives the positions); ``soft_tissue_hu`` and ``noise_sd`` are
    the scan's own (:func:`medhub.models.cac.lesions.soft_tissue_noise`), so ``peak_sd`` is measured on the scan.
    """
    hu = np.asarray(hu)
    spacing = tuple(float(s) for s in spacing_mm)
    columns = [*FEATURES, "aorta_distance_mm", "first_slice", "last_slice", "centroid_index"]
    pad = tuple(int(np.ceil((FAR_MM / 2) / s)) for s in spacing)
    within = crop_box(np.asarray(region, bool), pad)
    empty = Candidates(np.zeros((0, 0, 0), np.int32), (slice(0, 0),) * 3, hu.shape, pd.DataFrame(columns=columns))
    if within is None:
        return empty
    offset = np.array([b.start for b in within])
    hu_box = hu[within]
    region_box = np.asarray(region, bool)[within]
    heart_box = np.asarray(heart_mask, bool)[within]
    found, n = ndi.label((hu_box >= threshold_hu) & region_box, structure=_CONNECTED_26)
    if not n:
        return empty
    depth, depth_stride = _coarse_distance(heart_box, spacing, signed=True)
    aorta = AortaTrack.of(hu, heart_mask, spacing)
    lung_distance, lung_stride = _coarse_distance(hu_box < LUNG_HU, spacing, signed=False)
    frame = HeartFrame.of(heart_box, spacing) if heart_box.any() else None
    voxel_mm3 = float(np.prod(spacing))
    pixel_mm2 = spacing[1] * spacing[2]
    shell_pad = [int(np.ceil(NEIGHBOURHOOD_MM / s)) + 1 for s in spacing]
    bone_pad = [int(np.ceil(BONE_CONTEXT_MM / s)) for s in spacing]
    noise = max(float(noise_sd), 1.0) if np.isfinite(noise_sd) else 20.0
    tissue = float(soft_tissue_hu) if np.isfinite(soft_tissue_hu) else 40.0
    rows = []
    for index, box in enumerate(ndi.find_objects(found), start=1):
        inner = found[box] == index
        points = np.argwhere(inner) + [b.start for b in box]
        values = hu_box[box][inner].astype(np.float64)
        # surroundings: a shell of SHELL_MM and a neighbourhood of NEIGHBOURHOOD_MM, on a padded box
        near = tuple(slice(max(b.start - p, 0), min(b.stop + p, s)) for b, p, s in zip(box, shell_pad,
                                                                                    hu_box.shape, strict=True))
        own = found[near] == index
        local = hu_box[near]
        shell = dilate_ball(own, spacing, SHELL_MM) & ~own
        shell_values = local[shell] if shell.any() else np.array([tissue])
        dense = (local >= threshold_hu) & ~own
        neighbour = dilate_ball(own, spacing, NEIGHBOURHOOD_MM) & dense
        # the dense structure (>= BONE_HU) the candidate belongs to, in a BONE_CONTEXT_MM box
        wide = tuple(slice(max(b.start - p, 0), min(b.stop + p, s)) for b, p, s in zip(box, bone_pad,
                                                                                   hu_box.shape, strict=True))
        structure_mm3, structure_open = 0.0, 0.0
        own_wide = found[wide] == index
        if values.max() >= BONE_HU:
            dense_wide, _ = ndi.label(hu_box[wide] >= BONE_HU, structure=_CONNECTED_26)
            ids = np.unique(dense_wide[own_wide])
            ids = ids[ids > 0]
            if len(ids):
                part = np.isin(dense_wide, ids)
                structure_mm3 = float(part.sum()) * voxel_mm3
                structure_open = float(any(
                    (part.take(0, axis=a).any() and w.start + offset[a] > 0)
                    or (part.take(-1, axis=a).any() and w.stop + offset[a] < hu.shape[a])
                    for a, w in enumerate(wide)))
        centroid = points.mean(axis=0)
        centroid_mm = centroid * spacing
        areas = inner.sum(axis=(1, 2))
        if len(points) >= 3:
            eig = np.linalg.eigvalsh(np.cov((points * spacing).T)) + 1e-3
            elongation = float(np.sqrt(eig[-1] / max(eig[-2], 1e-3)))
        else:
            elongation = 1.0
        in_heart = heart_box[box][inner]
        position = frame.coordinates(centroid_mm) if frame is not None else (0.0,) * 5
        depth_at = depth[tuple((points // depth_stride).T)]
        rows.append({
            "volume_mm3": float(inner.sum()) * voxel_mm3,
            "max_area_mm2": float(areas.max()) * pixel_mm2,
            "z_extent_mm": float(np.ptp(points[:, 0]) + 1) * spacing[0],
            "elongation": elongation,
            "peak_hu": float(values.max()),
            "mean_hu": float(values.mean()),
            "peak_sd": (float(values.max()) - tissue) / noise,
            "shell_lung_fraction": float((shell_values < LUNG_HU).mean()),
            "shell_fat_fraction": float(((shell_values >= FAT_HU[0]) & (shell_values < FAT_HU[1])).mean()),
            "shell_soft_fraction": float(((shell_values >= SOFT_HU[0]) & (shell_values < SOFT_HU[1])).mean()),
            "shell_dense_fraction": float((shell_values >= threshold_hu).mean()),
            "shell_mean_hu": float(shell_values.mean()),
            "neighbour_dense_mm3": float(neighbour.sum()) * voxel_mm3,
            "dense_structure_mm3": structure_mm3,
            "dense_structure_open": structure_open,
            "heart_fraction": float(in_heart.mean()),
            "heart_depth_mm": float(depth_at.max()),
            "lung_distance_mm": float(lung_distance[tuple((points // lung_stride).T)].min()),
            "aorta_distance_mm": aorta.distance_mm(centroid + offset, spacing),
            "long_axis_position": position[0], "axis_distance": position[1],
            "rel_z": position[2], "rel_y": position[3], "rel_x": position[4],
            "slice_spacing_mm": spacing[0], "pixel_mm": float(np.sqrt(pixel_mm2)),
            "first_slice": int(points[:, 0].min() + offset[0]), "last_slice": int(points[:, 0].max() + offset[0]),
            "centroid_index": [round(float(v), 1) for v in centroid + offset],
        })
    return Candidates(found, within, hu.shape, pd.DataFrame(rows, columns=columns))
