"""lung-ct's vectorised helpers equal the straightforward definitions they replace."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from medhub.models.lung_ct.segment import (
    _fill_holes_2d,
    body_mask,
    describe_components,
    segment_lungs,
    segment_lungs_canonical,
)
from tests.conftest import SHARED_DATA

LIDC = SHARED_DATA / "lidc_chest_ct"


def _fill_holes_2d_reference(mask: np.ndarray, max_hole_px: int | None = None) -> np.ndarray:
    out = mask.copy()
    for z in range(mask.shape[0]):
        s = mask[z]
        if not s.any():
            continue
        filled = ndi.binary_fill_holes(s)
        if max_hole_px is None:
            out[z] = filled
            continue
        lab, _ = ndi.label(filled & ~s)
        small = np.bincount(lab.ravel()) <= max_hole_px
        small[0] = False
        out[z] = s | small[lab]
    return out


def test_fill_holes_2d_equals_per_slice_fill():
    rng = np.random.default_rng(4)
    for i in range(60):
        shape = tuple(int(n) for n in rng.integers(1, 25, 3))
        mask = rng.random(shape) > 0.5 if i % 3 == 0 else ndi.binary_dilation(rng.random(shape) > 0.9)
        for max_hole in (None, 0, 1, 4, 30):
            assert np.array_equal(_fill_holes_2d(mask, max_hole), _fill_holes_2d_reference(mask, max_hole))


def _describe_reference(lab, hu, body, spacing, mid_x):
    vox_ml = float(np.prod(spacing)) / 1000.0
    rows_any = body.any(axis=2)
    ny = body.shape[1]
    back = np.where(rows_any.any(1), ny - 1 - np.argmax(rows_any[:, ::-1], axis=1), 0)
    front = np.where(rows_any.any(1), np.argmax(rows_any, axis=1), 0)
    depth = np.maximum(back - front + 1, 1)
    out = []
    for i, sl in enumerate(ndi.find_objects(lab)):
        if sl is None:
            continue
        m = lab[sl] == i + 1
        vals = hu[sl][m]
        zz, yy, xx = np.nonzero(m)
        zz, yy, xx = zz + sl[0].start, yy + sl[1].start, xx + sl[2].start
        gaps = [(back[z] - yy[zz == z].max()) / depth[z] for z in np.unique(zz)]
        out.append({
            "index": i + 1, "volume_ml": float(m.sum() * vox_ml), "median_hu": float(np.median(vals)),
            "frac_below_950": float(np.mean(vals < -950)), "posterior_gap": float(np.min(gaps)),
            "centroid_x": float(xx.mean()), "left_share": float(np.mean(xx > mid_x)), "is_lung": False,
        })
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_describe_components_equals_per_component_loop(dtype):
    rng = np.random.default_rng(9)
    hu = ndi.gaussian_filter(rng.normal(-500, 400, (20, 40, 40)), 1.5).astype(dtype)
    body = np.zeros(hu.shape, bool)
    body[:, 4:36, 3:38] = True
    mid_x = 20.5
    for threshold in (-700, -500, -300):
        lab, n = ndi.label((hu < threshold) & body)
        lab[lab == 2] = 0  # a label with no voxel is skipped
        got = [c.__dict__ for c in describe_components(lab, n, hu, body, (2.5, 2.0, 2.0), mid_x)]
        assert got == _describe_reference(lab, hu, body, (2.5, 2.0, 2.0), mid_x)
    assert describe_components(np.zeros_like(lab), 0, hu, body, (2.5, 2.0, 2.0), mid_x) == []


@pytest.mark.skipif(not LIDC.is_dir(), reason="shared real data not available")
def test_segment_lungs_canonical_equals_segment_lungs():
    from medhub.io.nifti import read_volume
    from medhub.io.orientation import CANONICAL_DIRECTION, apply_canonical, canonical_transform

    vol = read_volume(LIDC / "0987_ct_3mm.nrrd")
    tr = canonical_transform(vol.direction)
    can = np.ascontiguousarray(apply_canonical(vol.array, tr)).astype(np.float32)
    sp = tuple(float(vol.spacing[p]) for p in tr[0])
    expected = segment_lungs(can, sp, CANONICAL_DIRECTION)
    assert np.array_equal(segment_lungs_canonical(can, sp), expected)
    assert np.array_equal(segment_lungs_canonical(can, sp, body=body_mask(can)), expected)
