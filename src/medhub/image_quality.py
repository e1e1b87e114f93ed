"""Image-quality measurements on CT volumes: how sharp a scan is, read from the scan itself.

Arrays are ``(slices, rows, columns)``; spacing is ``(slice, row, column)`` in mm; intensities are HU.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi
from scipy.optimize import least_squares
from scipy.special import erf

#: Plateaus an edge profile must reach on each side: aerated lung, and soft tissue or fat (HU).
LUNG_HU = (-1000.0, -650.0)
SOFT_TISSUE_HU = (-150.0, 200.0)
#: The iso-level that locates lung / soft-tissue edges (HU).
EDGE_LEVEL_HU = -400.0


def edge_spread_sigma_mm(hu: np.ndarray, spacing_mm: Sequence[float], n_slices: int = 24,
                         half_width_px: float = 4.0, step_px: float = 0.25) -> tuple[float, int]:
    """The in-plane sharpness of a CT scan: the sigma (mm) of a Gaussian edge spread fitted to its lung edges.

    Every pixel on the -400 HU iso-line of ``n_slices`` evenly spaced slices (smoothed by 1.5 pixels to find it)
    gives a profile of the raw image along the edge normal, ``half_width_px`` pixels each side, kept only when
    its ends lie on aerated lung (-1,000 to -650 HU) and on soft tissue or fat (-150 to 200 HU). Each profile is
    normalised by its own plateaus and centred on its 50 % crossing; one error function is fitted to all of
    them. The sigma includes the scanner's PSF and the pixel grid, so it is a property of the image as stored:
    larger is blurrier. Noise averages out over the thousands of profiles of a chest CT.

    Returns ``(sigma_mm, number_of_profiles)``. Raises ``ValueError`` when the scan has no such edge (no lung
    in view).
    """
    if hu.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {hu.shape}")
    offsets = np.arange(-half_width_px, half_width_px + step_px / 2, step_px)
    slices = np.unique(np.linspace(0, hu.shape[0] - 1, min(n_slices, hu.shape[0])).round().astype(int))
    profiles = [_edge_profiles(hu[z].astype(np.float32), offsets) for z in slices]
    stacked = np.concatenate(profiles) if profiles else np.empty((0, len(offsets)))
    if len(stacked) < 50:
        raise ValueError(f"too few lung edges to measure sharpness ({len(stacked)} profiles)")
    low = stacked[:, :4].mean(axis=1, keepdims=True)
    high = stacked[:, -4:].mean(axis=1, keepdims=True)
    normalised = (stacked - low) / (high - low)
    # the crossing is read from a lightly smoothed, monotone copy so that noise cannot make it ambiguous
    monotone = np.maximum.accumulate(ndi.uniform_filter1d(normalised, 5, axis=1), axis=1)
    centres = np.array([np.interp(0.5, row, offsets) for row in monotone])
    distance = (offsets[None] - centres[:, None]).ravel()
    value = normalised.ravel()
    inner = np.abs(distance) < half_width_px - 1
    distance, value = distance[inner], value[inner]

    def residual(p: np.ndarray) -> np.ndarray:
        return 0.5 * (1 + erf((distance - p[1]) / (np.sqrt(2) * abs(p[0])))) - value

    sigma_px = abs(least_squares(residual, [1.0, 0.0]).x[0])
    return float(sigma_px * float(spacing_mm[1])), len(stacked)


def _edge_profiles(image: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Profiles ``(n, len(offsets))`` across the lung / soft-tissue edges of one slice, lung side first."""
    smooth = ndi.gaussian_filter(image, 1.5)
    tissue = smooth > EDGE_LEVEL_HU
    rows, cols = np.nonzero(tissue & ~ndi.binary_erosion(tissue))
    if len(rows) == 0:
        return np.empty((0, len(offsets)))
    grad_r, grad_c = ndi.sobel(smooth, 0)[rows, cols], ndi.sobel(smooth, 1)[rows, cols]
    norm = np.hypot(grad_r, grad_c) + 1e-6
    at_r = rows[:, None] + (grad_r / norm)[:, None] * offsets[None]
    at_c = cols[:, None] + (grad_c / norm)[:, None] * offsets[None]
    coords = [at_r.ravel(), at_c.ravel()]
    raw = ndi.map_coordinates(image, coords, order=3, mode="nearest").reshape(at_r.shape)
    guide = ndi.map_coordinates(smooth, coords, order=1, mode="nearest").reshape(at_r.shape)
    on_lung = ((guide[:, :3] > LUNG_HU[0]) & (guide[:, :3] < LUNG_HU[1])).all(axis=1)
    on_tissue = ((guide[:, -3:] > SOFT_TISSUE_HU[0]) & (guide[:, -3:] < SOFT_TISSUE_HU[1])).all(axis=1)
    return raw[on_lung & on_tissue]
