"""Overlap, surface-distance and volume metrics of a predicted mask against a reference mask.

Masks are boolean arrays on one grid, ``spacing`` the voxel size in mm along each array axis (any order, any
anisotropy). Surfaces follow MONAI's definition, so the figures can be compared with MONAI's and with the
literature that uses it: a mask's surface is its voxels that have a 6-connected neighbour outside it (the mask
XOR its erosion by the 3D cross; a voxel on the array border counts as surface). Distances are in mm between
voxel centres, each surface voxel to the nearest surface voxel of the other mask (a Euclidean distance transform
with the grid's spacing).

* ``dice``: ``2|P∩R| / (|P| + |R|)``.
* ``hd95``: the symmetric 95th-percentile Hausdorff distance, ``max(p95(P→R), p95(R→P))`` (MONAI's
  ``compute_hausdorff_distance(percentile=95)``), mm.
* ``msd``: the symmetric mean surface distance, the mean of both directed distance sets pooled (MONAI's
  ``compute_average_surface_distance(symmetric=True)``), mm.
* ``nsd``: the normalized surface Dice at tolerance τ mm, the share of both surfaces within τ of the other,
  ``(#{P→R ≤ τ} + #{R→P ≤ τ}) / (|∂P| + |∂R|)`` (MONAI's ``compute_surface_dice``).
* ``volume_difference_ml``: ``V(P) − V(R)`` in ml; ``relative_volume_difference``: ``(V(P) − V(R)) / V(R)``.

Empty masks never give NaN or an error; their values are fixed (:data:`EMPTY_CONVENTION`):

* both empty: Dice 1, NSD 1, HD95 0, MSD 0, volume differences 0 (nothing to find, nothing found);
* one empty: Dice 0, NSD 0, HD95 and MSD the diagonal of the grid in mm (the largest distance the grid allows, as
  in the BraTS and Medical Segmentation Decathlon evaluations);
* the relative volume difference with an empty reference: 1.0 (+100 %) when the prediction is not empty.

:func:`segmentation_metrics` reports ``pred_empty`` and ``ref_empty`` beside the values, so summaries can count
or leave out those cases.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

#: Metric names in the order they are reported, with their units.
SEGMENTATION_METRICS: dict[str, str] = {
    "dice": "1",
    "hd95_mm": "mm",
    "msd_mm": "mm",
    "nsd": "1",
    "volume_difference_ml": "ml",
    "relative_volume_difference": "1",
}
#: The tolerance of the normalized surface Dice when none is given, mm.
DEFAULT_TOLERANCE_MM = 2.0
EMPTY_CONVENTION = {
    "both empty": {"dice": 1.0, "nsd": 1.0, "hd95_mm": 0.0, "msd_mm": 0.0, "volume_difference_ml": 0.0,
                   "relative_volume_difference": 0.0},
    "one empty": {"dice": 0.0, "nsd": 0.0, "hd95_mm": "grid diagonal", "msd_mm": "grid diagonal",
                  "relative_volume_difference": "-1 (empty prediction) or 1 (empty reference)"},
}
_CROSS = ndi.generate_binary_structure(3, 1)


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice coefficient of two boolean masks; 1.0 when both are empty."""
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    total = int(pred.sum()) + int(ref.sum())
    return 2.0 * int(np.logical_and(pred, ref).sum()) / total if total else 1.0


def surface(mask: np.ndarray) -> np.ndarray:
    """The surface voxels of a boolean mask: those with a 6-connected neighbour outside it (see module)."""
    mask = np.asarray(mask, bool)
    structure = _CROSS if mask.ndim == 3 else ndi.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndi.binary_erosion(mask, structure=structure, border_value=0)


def surface_distances(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances in mm: from each surface voxel of ``pred`` to ``ref``'s surface, and back.

    Both masks must be non-empty. Works on the bounding box of their union, which gives the same distances as the
    whole grid (every surface voxel lies in it) at a fraction of the cost.
    """
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    if not (pred.any() and ref.any()):
        raise ValueError("surface distances need two non-empty masks")
    box = ndi.find_objects((pred | ref).astype(np.uint8))[0]
    pred, ref = pred[box], ref[box]
    # The tight box holds every surface voxel, and a voxel on its face is on the mask's outer surface anyway.
    edge_pred, edge_ref = surface(pred), surface(ref)
    sampling = tuple(float(s) for s in spacing)
    to_ref = ndi.distance_transform_edt(~edge_ref, sampling=sampling)
    to_pred = ndi.distance_transform_edt(~edge_pred, sampling=sampling)
    return to_ref[edge_pred], to_pred[edge_ref]


def grid_diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """The diagonal of a grid's extent in mm: the distance used when one mask is empty."""
    return float(np.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing, strict=True))))


def segmentation_metrics(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float],
                         tolerance_mm: float = DEFAULT_TOLERANCE_MM) -> dict[str, float | bool]:
    """Every metric of :data:`SEGMENTATION_METRICS` for one pair of masks, plus ``pred_empty`` and ``ref_empty``.

    ``spacing`` is the voxel size in mm along the array axes; ``tolerance_mm`` the normalized surface Dice's τ.
    """
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    if pred.shape != ref.shape:
        raise ValueError(f"masks differ in shape: {pred.shape} and {ref.shape}")
    if len(spacing) != pred.ndim or min(spacing) <= 0:
        raise ValueError(f"spacing {tuple(spacing)} does not fit a {pred.ndim}D grid")
    voxel_ml = float(np.prod(spacing)) / 1000.0
    volume_pred, volume_ref = pred.sum() * voxel_ml, ref.sum() * voxel_ml
    pred_empty, ref_empty = volume_pred == 0, volume_ref == 0
    result: dict[str, float | bool] = {
        "dice": dice(pred, ref),
        "volume_difference_ml": float(volume_pred - volume_ref),
        "relative_volume_difference": (float((volume_pred - volume_ref) / volume_ref) if not ref_empty
                                       else 0.0 if pred_empty else 1.0),
    }
    if pred_empty and ref_empty:
        result.update(hd95_mm=0.0, msd_mm=0.0, nsd=1.0)
    elif pred_empty or ref_empty:
        worst = grid_diagonal_mm(pred.shape, spacing)
        result.update(hd95_mm=worst, msd_mm=worst, nsd=0.0)
    else:
        to_ref, to_pred = surface_distances(pred, ref, spacing)
        result["hd95_mm"] = float(max(np.percentile(to_ref, 95), np.percentile(to_pred, 95)))
        result["msd_mm"] = float(np.concatenate([to_ref, to_pred]).mean())
        within = int((to_ref <= tolerance_mm).sum()) + int((to_pred <= tolerance_mm).sum())
        result["nsd"] = within / (to_ref.size + to_pred.size)
    ordered: dict[str, float | bool] = {name: result[name] for name in SEGMENTATION_METRICS}
    ordered.update(pred_empty=bool(pred_empty), ref_empty=bool(ref_empty))
    return ordered
