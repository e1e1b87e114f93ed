"""Segmentation metrics, cross-checked against MONAI on random anisotropic shapes, and their empty-mask values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.metrics import (
    compute_average_surface_distance,
    compute_dice,
    compute_hausdorff_distance,
    compute_surface_dice,
)
from scipy import ndimage as ndi

from medhub.metrics.segmentation import (
    EMPTY_CONVENTION,
    SEGMENTATION_METRICS,
    grid_diagonal_mm,
    segmentation_metrics,
)

# MONAI 1.6 deprecates an argument its own surface metrics still pass.
pytestmark = pytest.mark.filterwarnings("ignore:.*always_return_as_numpy:FutureWarning")


def _blob(rng: np.random.Generator, shape: tuple[int, int, int], fill: float) -> np.ndarray:
    """A random smooth blob (thresholded smoothed noise), possibly several components, touching borders at times."""
    noise = ndi.gaussian_filter(rng.normal(size=shape), sigma=rng.uniform(1.5, 3.5))
    return noise > np.quantile(noise, 1 - fill)


def _monai(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, float, float], tolerance: float) -> dict:
    p = torch.from_numpy(pred[None, None].astype(np.float32))
    r = torch.from_numpy(ref[None, None].astype(np.float32))
    return {
        "dice": float(compute_dice(p, r, include_background=True)),
        "hd95_mm": float(compute_hausdorff_distance(p, r, include_background=True, percentile=95, spacing=spacing)),
        "msd_mm": float(compute_average_surface_distance(p, r, include_background=True, symmetric=True,
                                                         spacing=spacing)),
        "nsd": float(compute_surface_dice(p, r, class_thresholds=[tolerance], include_background=True,
                                          spacing=spacing)),
    }


@pytest.mark.parametrize("seed", range(8))
def test_metrics_equal_monai_on_random_anisotropic_shapes(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(12, 40, size=3))
    spacing = tuple(float(s) for s in rng.choice([0.5, 0.7, 1.0, 2.5, 3.0, 5.0], size=3))
    ref = _blob(rng, shape, rng.uniform(0.05, 0.3))
    pred = ndi.binary_dilation(ref, iterations=int(rng.integers(0, 2))) ^ _blob(rng, shape, 0.03)
    tolerance = float(rng.choice([1.0, 2.0, 4.0]))

    ours = segmentation_metrics(pred, ref, spacing, tolerance_mm=tolerance)
    theirs = _monai(pred, ref, spacing, tolerance)

    for name, value in theirs.items():
        assert ours[name] == pytest.approx(value, rel=1e-5, abs=1e-5), name
    voxel_ml = np.prod(spacing) / 1000
    assert ours["volume_difference_ml"] == pytest.approx((pred.sum() - ref.sum()) * voxel_ml)
    assert ours["relative_volume_difference"] == pytest.approx(pred.sum() / ref.sum() - 1)


def test_a_shifted_cube_has_the_distances_geometry_says():
    ref = np.zeros((20, 20, 20), bool)
    ref[5:15, 5:15, 5:15] = True
    pred = np.roll(ref, 2, axis=0)  # shifted two voxels of 3 mm along the first axis: 6 mm
    metrics = segmentation_metrics(pred, ref, (3.0, 1.0, 1.0), tolerance_mm=5.9)
    assert metrics["dice"] == pytest.approx(0.8)
    assert metrics["hd95_mm"] == pytest.approx(6.0)
    assert metrics["nsd"] < 1.0
    assert segmentation_metrics(pred, ref, (3.0, 1.0, 1.0), tolerance_mm=6.0)["nsd"] == pytest.approx(1.0)
    assert metrics["volume_difference_ml"] == 0.0


def test_empty_masks_get_the_documented_values_never_nan():
    empty, full = np.zeros((4, 5, 6), bool), np.zeros((4, 5, 6), bool)
    full[1:3, 1:4, 1:5] = True
    spacing = (2.0, 1.0, 1.0)
    diagonal = grid_diagonal_mm(empty.shape, spacing)
    assert diagonal == pytest.approx(np.sqrt(8**2 + 5**2 + 6**2))

    both = segmentation_metrics(empty, empty, spacing)
    missed = segmentation_metrics(empty, full, spacing)
    invented = segmentation_metrics(full, empty, spacing)

    assert {k: both[k] for k in EMPTY_CONVENTION["both empty"]} == EMPTY_CONVENTION["both empty"]
    assert (missed["dice"], missed["nsd"], missed["hd95_mm"], missed["msd_mm"]) == (0.0, 0.0, diagonal, diagonal)
    assert missed["relative_volume_difference"] == -1.0 and invented["relative_volume_difference"] == 1.0
    assert (missed["pred_empty"], missed["ref_empty"], invented["pred_empty"], invented["ref_empty"]) == (
        True, False, False, True)
    for result in (both, missed, invented):
        assert all(np.isfinite(result[name]) for name in SEGMENTATION_METRICS)


def test_shape_and_spacing_mismatch_are_refused():
    with pytest.raises(ValueError, match="differ in shape"):
        segmentation_metrics(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)), (1, 1, 1))
    with pytest.raises(ValueError, match="spacing"):
        segmentation_metrics(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), (1, 1))
