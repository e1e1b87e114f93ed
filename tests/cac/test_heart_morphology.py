"""The fast morphology helpers (heart finder, medhub.masks) equal the scipy definitions they replace."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from medhub.masks import crop_box, crop_centred, dilate_ball
from medhub.models.cac.heart import (
    _ball_open,
    _block_mean_fast,
    _fill_holes_3d,
    _upsample_smooth,
    heart_region,
)

SPACINGS = [(1.0, 1.0, 1.0), (2.0, 1.0, 1.0), (1.0, 0.7, 0.7), (2.5, 0.68, 0.68), (3.0, 2.8, 2.8), (0.8, 1.3, 0.9)]


def _random_mask(rng: np.random.Generator, shape=(24, 31, 37), density=0.995) -> np.ndarray:
    return ndi.binary_dilation(rng.random(shape) > density, iterations=int(rng.integers(0, 3)))


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("radius", [1.0, 3.0, 5.0, 15.0])
def test_dilate_ball_is_the_distance_map_threshold(spacing, radius):
    rng = np.random.default_rng(int(radius * 10) + len(spacing))
    for _ in range(3):
        mask = _random_mask(rng)
        mask[0, 0, 0] = True  # the array's edge: nothing is assumed beyond it
        expected = ndi.distance_transform_edt(~mask, sampling=spacing) <= radius
        assert np.array_equal(dilate_ball(mask, spacing, radius), expected)


@pytest.mark.parametrize("spacing", SPACINGS)
def test_ball_open_is_the_distance_map_opening(spacing):
    rng = np.random.default_rng(7)
    for radius in (2.0, 6.0):
        mask = ndi.binary_dilation(rng.random((30, 40, 40)) > 0.99, iterations=4)
        mask[:, :3, :] = True  # touching the array's edge
        eroded = ndi.distance_transform_edt(mask, sampling=spacing) > radius
        expected = ndi.distance_transform_edt(~eroded, sampling=spacing) <= radius if eroded.any() else eroded
        assert np.array_equal(_ball_open(mask, spacing, radius), expected)
    assert not _ball_open(np.zeros((5, 6, 7), bool), spacing, 2.0).any()


def test_heart_region_matches_distance_definition():
    rng = np.random.default_rng(3)
    mask = np.zeros((40, 60, 60), bool)
    mask[10:30, 20:45, 15:40] = rng.random((20, 25, 25)) > 0.3
    sp = (1.0, 0.7, 0.7)
    expected = ndi.distance_transform_edt(~mask, sampling=sp) <= 5.0
    assert np.array_equal(heart_region(mask, sp, 5.0), expected)


def test_crop_box_and_fill_holes():
    rng = np.random.default_rng(11)
    for _ in range(50):
        shape = tuple(int(n) for n in rng.integers(1, 20, 3))
        mask = ndi.binary_dilation(rng.random(shape) > 0.9, iterations=2)
        if mask.any():
            mask[tuple(int(rng.integers(0, n)) for n in shape)] = False
        objects = ndi.find_objects(mask.astype(np.uint8))
        for pad in ((0, 0, 0), (1, 2, 3)):
            expected = None if not objects else tuple(
                slice(max(0, b.start - p), min(n, b.stop + p)) for b, p, n in zip(objects[0], pad, shape, strict=True)
            )
            assert crop_box(mask, pad) == expected
        assert np.array_equal(_fill_holes_3d(mask), ndi.binary_fill_holes(mask))


def test_crop_centred_equals_padding_then_slicing():
    rng = np.random.default_rng(12)
    for _ in range(50):
        array = rng.integers(-1000, 1000, tuple(int(n) for n in rng.integers(1, 15, 3))).astype(np.int16)
        shape = tuple(int(n) for n in rng.integers(1, 9, 3))
        centre = tuple(int(rng.integers(-3, n + 3)) for n in array.shape)
        pad = max(shape) + 4
        padded = np.pad(array, pad, constant_values=-2000)
        start = [c - n // 2 + pad for c, n in zip(centre, shape, strict=True)]
        expected = padded[tuple(slice(a, a + n) for a, n in zip(start, shape, strict=True))]
        out = crop_centred(array, centre, shape, -2000)
        assert out.dtype == array.dtype and out.shape == shape
        assert np.array_equal(out, expected)


def test_upsample_smooth_is_linear_zoom_thresholded():
    rng = np.random.default_rng(5)
    for _ in range(60):
        f = tuple(int(k) for k in rng.integers(1, 5, 3))
        low = ndi.binary_dilation(rng.random(tuple(int(n) for n in rng.integers(3, 10, 3))) > 0.8)
        shape = tuple(n * k - int(rng.integers(0, k)) for n, k in zip(low.shape, f, strict=True))
        fine = ndi.zoom(low.astype(np.float64), f, order=1, mode="nearest", grid_mode=True)[
            : shape[0], : shape[1], : shape[2]
        ]
        got = _upsample_smooth(low, f, shape)
        assert got.shape == shape and got.dtype == bool
        clear = np.abs(fine - 0.5) > 1e-9  # exact ties may round either way in floating point
        assert np.array_equal(got[clear], (fine > 0.5)[clear])


def test_block_mean_is_the_rounded_exact_mean():
    rng = np.random.default_rng(2)
    for _ in range(30):
        shape = tuple(int(n) for n in rng.integers(1, 14, 3))
        f = tuple(int(k) for k in rng.integers(1, 5, 3))
        a = rng.integers(-1024, 3072, shape).astype(np.int16)
        got = _block_mean_fast(a, f)
        expected = np.zeros(tuple(-(-n // k) for n, k in zip(shape, f, strict=True)))
        for idx in np.ndindex(expected.shape):
            expected[idx] = a[tuple(slice(i * k, (i + 1) * k) for i, k in zip(idx, f, strict=True))].mean()
        assert got.dtype == np.float32
        assert np.array_equal(got, expected.astype(np.float32))
    view = np.flip(rng.integers(-1000, 1000, (9, 10, 11)).astype(np.int16).transpose(2, 0, 1), 1)
    assert np.allclose(_block_mean_fast(view, (2, 3, 2)), _block_mean_fast(np.ascontiguousarray(view), (2, 3, 2)))
