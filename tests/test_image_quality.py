import numpy as np
import pytest
from scipy import ndimage as ndi

from medhub.image_quality import edge_spread_sigma_mm


def tissue_disc_in_lung(sigma_px: float, noise_sd: float = 25.0, n: int = 128, radius_px: float = 40.0,
                        supersample: int = 4) -> np.ndarray:
    """Four noisy slices of a 40 HU disc in -850 HU lung, anti-aliased (painted 4x finer, block-averaged), then
    blurred by a Gaussian of ``sigma_px``: its edge spread has variance ``sigma_px**2 + 1/12`` pixel²."""
    fine = (np.mgrid[0:n * supersample, 0:n * supersample] + 0.5) / supersample - n / 2
    painted = np.where(np.hypot(*fine) < radius_px, 40.0, -850.0)
    image = ndi.gaussian_filter(painted.reshape(n, supersample, n, supersample).mean(axis=(1, 3)), sigma_px)
    rng = np.random.default_rng(0)
    return np.stack([image + rng.normal(0.0, noise_sd, image.shape) for _ in range(4)])


def test_edge_spread_sigma_recovers_the_blur_in_mm():
    pixel_mm = 0.7
    estimates = []
    for sigma_px in (0.6, 0.8, 1.0):
        sigma_mm, n_profiles = edge_spread_sigma_mm(tissue_disc_in_lung(sigma_px), (2.0, pixel_mm, pixel_mm))
        expected_mm = np.sqrt(sigma_px ** 2 + 1 / 12) * pixel_mm
        assert sigma_mm == pytest.approx(expected_mm, abs=0.05 * pixel_mm)
        assert n_profiles > 500
        estimates.append(sigma_mm)
    assert estimates == sorted(estimates)


def test_edge_spread_sigma_refuses_a_scan_without_lung():
    soft_tissue_only = np.random.default_rng(1).normal(40.0, 20.0, (4, 64, 64))
    with pytest.raises(ValueError, match="too few lung edges"):
        edge_spread_sigma_mm(soft_tissue_only, (1.0, 0.7, 0.7))
