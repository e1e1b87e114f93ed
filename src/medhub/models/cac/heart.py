"""Heart localisation and segmentation on non-contrast chest CT (classical, no weights).

Plain functions on arrays, scikit-image style. The entry point is :func:`segment_heart`.

Definition matched (DeepCAC's heart masks, studied on overlays of two LIDC-IDRI cases): the heart as the
soft-tissue block inside the pericardium -- chambers, myocardium, epicardial fat and the roots of the great
vessels -- bounded laterally by the lungs, anteriorly by the chest wall (the anterior pericardial fat pad is
mostly left out), posteriorly by the descending aorta / oesophagus / spine (not included), cut by a roughly
horizontal plane at the top (about 2.5 cm below the carina, where the aortic root and the pulmonary trunk leave)
and at the bottom by the diaphragm / liver dome.

Method, on a canonical working grid of about 3 mm (axis 0 head, 1 posterior, 2 patient left; block means, with
``medhub.models.lung_ct.segment``'s orientation helpers):

1. Lungs (lung-ct's segmentation run directly on the working grid, :func:`segment_lungs_canonical`, unless given),
   body (computed once, shared with the lungs), airway.
2. Thoracic cavity per axial slice: the 2D convex hull of both lungs; the mediastinum is that hull minus the
   lungs. Candidate tissue: -120..+700 HU (fat-poor soft tissue up to contrast-enhanced blood; bone is mostly
   outside the hull or removed by the opening), with its noise specks (holes of <= 3 working voxels, fat that
   noise pushes under -120 HU) filled. Only slices where both lungs are present and fill at least 40 % of the
   hull count (not the lung bases wrapped around the liver and stomach).
3. Top: the carina (the highest slice where the airway is split into two bronchi, with >= 3 cm of trachea
   above, or >= 12 mm of it leaving through the scan's top slice) minus 20 mm, about where the aortic root and
   the pulmonary trunk leave the heart. Without a carina the heart top is taken at 57 % of the lungs' height
   from their base (a coarse anatomical prior); when the lungs are still wide in the scan's top slice, the scan
   cuts the chest and every slice is used
   (coverage "partial-top").
4. Shape prior: a 3D opening with a 15 mm ball keeps bulky structures (the heart, the liver dome) and removes
   the descending aorta, the oesophagus, vessels and thin tissue. The largest part is kept (the block).
5. Liver: walking down from the top, the block is held between the lungs until the liver dome (or the spleen/stomach
   under the left dome) joins it: then its right or left edge jumps outwards by more than 24 mm under the lung base. The
   slice above that jump is the last one taken as is (fallback rule: the slice of least area after the widest one, when
   the area then grows by 25 %). Either rule passes over a junction with less than a heart's volume (``MIN_HEART_ML``)
   of block above it: a scan that starts in the great vessels without a carina narrows and widens where they enter the
   heart (cac 0.13.1). Below it the heart is an ellipsoidal cap of height 18 mm over that slice's cross-section (area
   falling as ``1 - (d / 18 mm)^2``) (``inferior="cap"``, the rule until cac 0.12.0). The default since cac 0.13.0,
   ``inferior="soft-tissue"``, follows the heart down instead: each slice below the junction keeps the soft tissue
   (> -30 HU) whose 2D components lie mostly under the heart of the slice above, as a convex hull grown by one voxel of
   epicardial fat within it; the liver, which reaches out from under the heart and is parted from it by fat, is left
   out. The cap reached into a real scan's liver dome and stopped 10 mm short of the phantoms' apex
   (``benchmarks/cac_heart_mask.py``).
6. Each slice of the heart is replaced by its convex hull (inside the mediastinum), holes are filled, and the
   mask is brought back to the input grid by linear interpolation of the block mask (bounding box only).

"Not found" is reported rather than a fabricated mask when there are no lungs, no mediastinum between them, or
the heart-shaped block is too small; a heart cut by the scan's edge is reported as partial.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from medhub.io.orientation import apply_canonical, canonical_transform, undo_canonical
from medhub.masks import crop_box, dilate_ball, dilate_mm
from medhub.models.lung_ct.segment import block_factors, body_mask, find_airway, segment_lungs_canonical

WORK_MM = (3.0, 3.0, 3.0)  # working grid (block means)
TISSUE_HU = (-120.0, 700.0)  # candidate heart tissue: soft tissue up to contrast-enhanced blood
MIN_LUNG_SHARE = 0.4  # heart slices: the lungs fill at least this share of the chest (lung hull)
TOP_BELOW_CARINA_MM = 20.0  # heart top under the carina (aortic root / pulmonary trunk level)
MIN_TRACHEA_MM = 30.0  # a carina needs this much single airway above it
MIN_TRACHEA_CUT_MM = 12.0  # ... or this much when the airway leaves through the scan's top slice
TOP_LUNG_FRACTION = 0.57  # fallback heart top without a carina, as a fraction of the lungs' height
SCAN_TOP_LUNG_SHARE = 0.5  # lungs this wide (share of their widest slice) in the top slice: the scan cuts the chest
OPEN_RADIUS_MM = 15.0  # ball of the opening that keeps bulky structures only
MIN_HEART_TOP_MM = 30.0  # no liver junction this close under a carina-defined top
EXTENT_JUMP_MM = 24.0  # sideways jump of the block's edge where the liver dome joins it
JOIN_GROWTH = 1.25  # fallback rule: the block grows by this factor over its least area when the liver joins
DIP_SHARE = 0.97  # fallback rule: the area must have dipped below this share of the peak first
CAP_MM = 18.0  # height of the ellipsoidal cap below the liver junction
MIN_HEART_ML = 150.0  # a smaller block is not reported as a heart
#: Rules for the heart below the liver junction (step 5): "cap", or "soft-tissue" (followed down slice by slice; the
#: default).
INFERIOR_RULES = ("cap", "soft-tissue")
BELOW_JUNCTION_MM = 36.0  # "soft-tissue": how far below the junction slice the heart is followed at most
HEART_SOFT_HU = -30.0  # "soft-tissue": chambers and myocardium, not fat
MOSTLY_UNDER = 0.6  # "soft-tissue": a component this much under the heart of the slice above is heart
CONTRAST_BLOOD_HU = 150.0
MAX_SPECK_VOX = 3  # holes of at most this many working voxels in the candidate tissue are noise, filled


@dataclass
class HeartResult:
    found: bool
    mask: np.ndarray | None  # bool on the input grid
    reason: str  # why not found ("" when found)
    coverage: str  # "full" | "partial-top" | "partial-bottom" | "none"
    volume_ml: float
    blood_pool_hu: float | None
    info: dict[str, Any] = field(default_factory=dict)


def _not_found(reason: str, info: dict[str, Any]) -> HeartResult:
    return HeartResult(False, None, "heart not found: " + reason, "none", 0.0, None, info)


def _ball_open(mask: np.ndarray, spacing, radius_mm: float) -> np.ndarray:
    """Morphological opening with a ball of ``radius_mm`` (anisotropic spacing honoured).

    The same as thresholding distance maps (erosion: more than ``radius_mm`` from any background voxel of the
    array; dilation back: within ``radius_mm`` of an eroded voxel), computed with :func:`dilate_ball` on the
    mask's bounding box plus one voxel, which holds every voxel involved.
    """
    out = np.zeros_like(mask)
    box = crop_box(mask, (1, 1, 1))
    if box is None:
        return out
    crop = np.asarray(mask[box], bool)
    if crop.all():  # no background voxel to measure from: the distance-map definition
        eroded = ndi.distance_transform_edt(crop, sampling=spacing) > radius_mm
    else:
        eroded = ~dilate_ball(~crop, spacing, radius_mm)
    if eroded.any():
        out[box] = dilate_ball(eroded, spacing, radius_mm)
    return out


def _extent_jump(block: np.ndarray, sp, z_guard: float, above_ml: np.ndarray) -> int | None:
    """Last heart slice above the liver (or spleen/stomach) junction by the lateral-extent rule, or ``None``.

    In the heart's slices the block is held between the lungs; where the liver dome joins it, the block
    suddenly reaches far to the side under the lung base. The junction is the first slice (walking down) whose
    right or left edge lies more than ``EXTENT_JUMP_MM`` beyond the widest edge of all slices above it, with at
    least a heart's volume (``above_ml``, the block's volume from each slice up) above it: a scan that starts in
    the great vessels widens as sharply where they enter the heart.
    """
    zs = np.nonzero(block.any(axis=(1, 2)))[0]
    lo_seen, hi_seen = np.inf, -np.inf
    for z in zs[::-1]:
        xs = np.nonzero(block[z].any(axis=0))[0]
        lo, hi = xs[0] * sp[2], xs[-1] * sp[2]
        jumped = np.isfinite(lo_seen) and (lo_seen - lo > EXTENT_JUMP_MM or hi - hi_seen > EXTENT_JUMP_MM)
        if z <= z_guard and jumped and above_ml[z + 1] >= MIN_HEART_ML:
            return int(z + 1)
        lo_seen, hi_seen = min(lo_seen, lo), max(hi_seen, hi)
    return None


def _hull_per_slice(lung: np.ndarray) -> np.ndarray:
    """Each axial slice (with at least 10 voxels) replaced by its 2D convex hull, computed on the slice's bounding
    box (the hull is inside it; convex_hull_image on the whole slice gives the same)."""
    from skimage.morphology import convex_hull_image

    out = np.zeros_like(lung)
    counts = np.count_nonzero(lung, axis=(1, 2))
    for z in np.nonzero(counts >= 10)[0]:
        ys = np.nonzero(lung[z].any(axis=1))[0]
        xs = np.nonzero(lung[z].any(axis=0))[0]
        box = (slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1))
        out[z][box] = convex_hull_image(lung[z][box])
    return out


def _carina_slice(airway: np.ndarray, spacing) -> int | None:
    """Highest slice where the airway is split into two bronchus-sized parts (>= 20 mm^2 each)."""
    min_px = 20.0 / (spacing[1] * spacing[2])
    zs = np.nonzero(airway.any(axis=(1, 2)))[0]

    def split(z: int) -> bool:
        lab, n = ndi.label(airway[z])
        return n >= 2 and int((np.bincount(lab.ravel())[1:] >= min_px).sum()) >= 2

    for z in zs[::-1]:
        # a split that persists one more slice down (not a side branch)
        if z >= 1 and split(z) and split(z - 1):
            # and a trachea (one airway) runs at least MIN_TRACHEA_MM above it, or leaves through the scan's top
            # slice after MIN_TRACHEA_CUT_MM (a scan that starts just above the carina)
            above = zs[zs > z].size * spacing[0]
            cut = zs[-1] == airway.shape[0] - 1 and above >= MIN_TRACHEA_CUT_MM
            return int(z) if above >= MIN_TRACHEA_MM or cut else None
    return None


def _heart_canonical(
    hu: np.ndarray, sp: tuple[float, float, float], lungs: np.ndarray, body: np.ndarray | None = None,
    inferior: str = "soft-tissue",
) -> tuple[np.ndarray | None, str, dict[str, Any]]:
    """Heart mask on the canonical working grid, or ``(None, reason, info)``; ``body`` is
    :func:`body_mask` of ``hu`` when the caller has it; ``inferior`` one of :data:`INFERIOR_RULES`."""
    info: dict[str, Any] = {}
    vox_ml = float(np.prod(sp)) / 1000.0
    right, left = lungs == 1, lungs == 2
    lung = right | left
    info["lung_ml"] = [round(float(right.sum() * vox_ml), 1), round(float(left.sum() * vox_ml), 1)]
    if right.sum() * vox_ml < 50 or left.sum() * vox_ml < 50:
        return (
            None,
            (
                f"no pair of lungs to bound a heart (right {info['lung_ml'][0]:.0f} ml, left "
                f"{info['lung_ml'][1]:.0f} ml)"
            ),
            info,
        )
    if body is None:
        body = body_mask(hu)
    hull = _hull_per_slice(lung)
    cavity = hull & ~lung & body
    tissue = (hu > TISSUE_HU[0]) & (hu < TISSUE_HU[1])
    cand = cavity & tissue
    # noise specks: isolated voxels of fat that noise pushes under the tissue threshold (or a speck of dense
    # calcium) would each bite a ball out of the opening below and strip the epicardial fat from the heart
    specks, n_specks = ndi.label(cavity & ~tissue)
    if n_specks:
        small = np.bincount(specks.ravel()) <= MAX_SPECK_VOX
        small[0] = False
        cand |= small[specks]
    # slices where both lungs are present: the heart lies between them
    # and where the lungs fill much of the chest (not the lung bases wrapped around the liver and stomach)
    both = (right.sum(axis=(1, 2)) * sp[1] * sp[2] > 300) & (left.sum(axis=(1, 2)) * sp[1] * sp[2] > 300)
    hull_area = np.maximum(hull.sum(axis=(1, 2)), 1)
    both &= lung.sum(axis=(1, 2)) / hull_area >= MIN_LUNG_SHARE
    zl = np.nonzero(lung.any(axis=(1, 2)))[0]
    airway = find_airway(hu, body, sp)
    zc = _carina_slice(airway, sp) if airway.any() else None
    info["carina_slice"] = zc
    nz = hu.shape[0]
    if zc is not None:
        z_top = zc - TOP_BELOW_CARINA_MM / sp[0]
        top_rule = "carina"
    elif lung[nz - 1].sum() >= SCAN_TOP_LUNG_SHARE * lung.sum(axis=(1, 2)).max():
        # the scan cuts the chest through wide lungs (not at the apices): the heart may leave through the top
        z_top = nz - 1
        top_rule = "scan-top"
    else:
        z_top = zl[0] + TOP_LUNG_FRACTION * (zl[-1] - zl[0])
        top_rule = "lung-height"
    z_top_i = int(np.floor(z_top))
    info["top_rule"] = top_rule
    info["top_slice"] = z_top_i
    if z_top_i < 0:
        return None, "the scan lies below the heart (carina far above)", info
    cand[z_top_i + 1 :] = False
    opened = _ball_open(cand, sp, OPEN_RADIUS_MM)
    opened[~both] = False
    if not opened.any():
        return None, "no mediastinum between the lungs", info
    lab, _n = ndi.label(opened)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    block = lab == int(sizes.argmax())
    info["block_ml"] = round(float(block.sum() * vox_ml), 1)
    heart, bottom = _cut_liver(block, sp, z_top_i, info)
    info["inferior_rule"] = inferior
    if inferior == "soft-tissue" and info.get("liver_found"):
        heart, bottom = _follow_soft_tissue(heart, block, hu, cavity, sp, info["join_slice"])
    info["bottom_slice"] = bottom
    heart = _hull_per_slice(heart) & cavity & (hu < TISSUE_HU[1])
    return heart, "", info


def _cut_liver(block: np.ndarray, sp, z_top: int, info: dict[str, Any]) -> tuple[np.ndarray, int]:
    """Remove the liver dome from the heart block (module docstring, step 5).

    Walking down from the heart's widest slice, the block's area shrinks with the heart until the liver dome
    joins it and the area grows again. The slice of least area (``z_join``) is the last one taken as is; below
    it the heart is an ellipsoidal cap of height ``CAP_MM`` over the ``z_join`` cross-section (the cap's area
    falls as ``1 - (d / CAP_MM)^2``), intersected with the block.
    """
    area = block.sum(axis=(1, 2)).astype(float)
    zs = np.nonzero(area)[0]
    if zs.size == 0:
        return block, 0
    # walk down from the top: the area grows (great vessels -> widest heart), dips towards the apex, and grows
    # again where the liver dome joins
    peak = amin = 0.0
    z_peak = z_join = int(zs[-1])
    liver_found = False
    # the top of the heart (great vessels) is narrow and may wobble: no junction within MIN_HEART_TOP_MM of a
    # top that is the heart's own (the carina rule); any slice counts when the scan cuts the heart
    z_guard = int(zs[-1]) - (MIN_HEART_TOP_MM / sp[0] if info.get("top_rule") != "scan-top" else 0)
    vox_ml = float(np.prod(sp)) / 1000.0
    above_ml = np.cumsum(area[::-1])[::-1] * vox_ml  # block volume from each slice up
    for z in range(int(zs[-1]), -1, -1):
        a = area[z]
        if a > JOIN_GROWTH * amin and amin < DIP_SHARE * peak and z_join <= z_guard:
            if above_ml[z_join] >= MIN_HEART_ML:
                liver_found = True
                break
            # a dip with less than a heart above it: the great vessels narrowing into the heart where the scan
            # starts in the upper mediastinum (no carina, "scan-top"), not the liver; walk on
            peak = amin = a
            z_peak = z_join = z
            continue
        if a >= peak:  # still growing
            peak = amin = a
            z_peak = z_join = z
        elif a < amin:
            amin, z_join = a, z
    jump = _extent_jump(block, sp, z_guard, above_ml)
    if jump is not None:  # the lateral-extent rule is the more reliable one
        z_join, liver_found = jump, True
        info["liver_rule"] = "lateral-extent"
    elif liver_found:
        info["liver_rule"] = "area-dip"
    info["peak_slice"], info["join_slice"], info["liver_found"] = z_peak, z_join, liver_found
    if not liver_found:
        return block, int(zs[0])
    heart = block.copy()
    heart[:z_join] = False
    foot = block[z_join]
    if not foot.any():
        return heart, z_join
    dist = ndi.distance_transform_edt(foot, sampling=sp[1:])
    vals = np.sort(dist[foot])[::-1]
    n_cap = int(np.floor(CAP_MM / sp[0]))
    bottom = z_join
    for k in range(1, n_cap + 1):
        z = z_join - k
        if z < 0:
            break
        keep = 1.0 - (k * sp[0] / CAP_MM) ** 2
        n_keep = round(keep * vals.size)
        if n_keep < 1:
            break
        thr = vals[n_keep - 1]
        heart[z] = foot & (dist >= thr) & block[z]
        if heart[z].any():
            bottom = z
    return heart, bottom


def _follow_soft_tissue(heart: np.ndarray, block: np.ndarray, hu: np.ndarray, cavity: np.ndarray, sp,
                        z_join: int) -> tuple[np.ndarray, int]:
    """The heart below the junction slice ``z_join`` by the "soft-tissue" rule (module docstring, step 5).

    Walking down, a 2D component of soft tissue (> :data:`HEART_SOFT_HU`) is heart when at least
    :data:`MOSTLY_UNDER` of it lies under the heart of the slice above; the liver and the stomach reach out from
    under it. The slice's heart is the convex hull of those parts, grown by one voxel (the epicardial fat round
    them), all within the heart above: the heart narrows towards its diaphragmatic surface. The walk stops where no
    such tissue is left or :data:`BELOW_JUNCTION_MM` below the junction.
    """
    from skimage.morphology import convex_hull_image

    heart = heart.copy()
    heart[:z_join] = False
    above = block[z_join]
    bottom = z_join
    for k in range(1, int(BELOW_JUNCTION_MM / sp[0]) + 1):
        z = z_join - k
        if z < 0:
            break
        parts, n = ndi.label((hu[z] > HEART_SOFT_HU) & cavity[z])
        under = np.bincount(parts[above], minlength=n + 1)
        mostly_under = under >= MOSTLY_UNDER * np.bincount(parts.ravel(), minlength=n + 1)
        mostly_under[0] = False
        core = mostly_under[parts] & above
        if core.sum() < 4:
            break
        below = ndi.binary_dilation(convex_hull_image(core) & above) & above & cavity[z]
        heart[z], bottom, above = below, z, below
    return heart, bottom


# ------------------------------------------------------------------------------------------------ public API
def _block_mean_fast(a: np.ndarray, f: tuple[int, int, int]) -> np.ndarray:
    """Block means (float32) over ``f``-sized blocks; a partial last block is averaged over what it has.

    Integer input is summed exactly (int64 when int32 could overflow) and divided once, so each mean is the
    correctly rounded float32 of the true mean; the sums run over strided views, one slab of slices at a time
    (no float copy of the input, no full-size temporary).
    """
    a = np.asarray(a)
    if f == (1, 1, 1):
        return a.astype(np.float32)
    if a.dtype == bool or (np.issubdtype(a.dtype, np.integer) and a.dtype.itemsize <= 2):
        acc_type = np.int32 if int(np.prod(f)) < 2**15 else np.int64  # |value| <= 2**16: no overflow
    elif np.issubdtype(a.dtype, np.integer):
        acc_type = np.int64
    else:
        acc_type = np.float64
    shape_low = tuple(-(-n // k) for n, k in zip(a.shape, f, strict=True))  # the last block may be partial
    counts = []
    for n, k, m in zip(a.shape, f, shape_low, strict=True):
        cnt = np.full(m, k, np.int64)
        cnt[-1] = n - (m - 1) * k
        counts.append(cnt)
    sums = np.empty(shape_low, acc_type)
    # one slab of f[0] slices at a time: the partial sums stay small (no full-size temporary to page in)
    for i in range(shape_low[0]):
        slab = a[i * f[0] : (i + 1) * f[0]]
        acc = slab[0].astype(acc_type)
        for plane in slab[1:]:
            acc += plane
        for ax, k in ((0, f[1]), (1, f[2])):
            if k == 1:
                continue
            n = acc.shape[ax]
            sel = (slice(None),) * ax
            reduced = acc[(*sel, slice(0, n, k))].copy()  # element 0 of every block, then 1, 2, ... added
            for j in range(1, k):
                rows = acc[(*sel, slice(j, n, k))]
                reduced[(*sel, slice(0, rows.shape[ax]))] += rows
            acc = reduced
        sums[i] = acc
    total = counts[0][:, None, None] * counts[1][None, :, None] * counts[2][None, None, :]
    return (sums / total).astype(np.float32)


def _upsample_smooth(low: np.ndarray, f: tuple[int, int, int], shape: tuple[int, ...]) -> np.ndarray:
    """Bool mask on the fine grid: linear interpolation of the block mask, thresholded at 0.5 (bbox only).

    The interpolation is ``ndi.zoom(low, f, order=1, mode="nearest", grid_mode=True)`` done separably in integer
    arithmetic (the weights along an axis of factor ``k`` are multiples of ``1 / 2k``), so the threshold is exact:
    a voxel is in the mask when its interpolated value is above one half.
    """
    if f == (1, 1, 1):
        return low.astype(bool)
    out = np.zeros(shape, bool)
    box = crop_box(low, (1, 1, 1))
    if box is None:
        return out
    scale = int(np.prod([2 * k for k in f if k > 1]))
    acc = np.asarray(low[box], bool).astype(np.uint16 if scale <= np.iinfo(np.uint16).max else np.uint32)
    for ax, k in enumerate(f):
        if k == 1:
            continue
        n = acc.shape[ax]
        pos2k = 2 * np.arange(n * k) + 1 - k  # fine voxel centre in coarse index units, times 2k
        i0 = np.floor_divide(pos2k, 2 * k)
        w_hi = (pos2k - 2 * k * i0).astype(acc.dtype)
        lo, hi = np.clip(i0, 0, n - 1), np.clip(i0 + 1, 0, n - 1)  # "nearest": edge values continue outwards
        bshape = [1, 1, 1]
        bshape[ax] = n * k
        w_hi = w_hi.reshape(bshape)
        acc = np.take(acc, lo, axis=ax) * (acc.dtype.type(2 * k) - w_hi) + np.take(acc, hi, axis=ax) * w_hi
    fine = acc > scale // 2
    start = [b.start * k for b, k in zip(box, f, strict=True)]
    stop = [min(n, s0 + e) for s0, e, n in zip(start, fine.shape, shape, strict=True)]
    out[tuple(slice(a, b) for a, b in zip(start, stop, strict=True))] = fine[
        tuple(slice(0, b - a) for a, b in zip(start, stop, strict=True))
    ]
    return out


def _fill_holes_3d(mask: np.ndarray) -> np.ndarray:
    """``ndi.binary_fill_holes`` (3D, 6-connected background) by one labelling of the background."""
    lab, n = ndi.label(~mask)
    if n == 0:
        return mask.copy()
    hole = np.ones(n + 1, bool)
    hole[0] = False
    for ax in range(3):
        for side in (0, -1):
            hole[np.take(lab, side, axis=ax)] = False  # background reaching the array's faces
    return mask | hole[lab]


def segment_heart(
    hu: np.ndarray,
    spacing_mm: tuple[float, float, float],
    direction: np.ndarray,
    lungs: np.ndarray | None = None,
    inferior: str = "soft-tissue",
) -> HeartResult:
    """Find and segment the heart on a (non-contrast) chest CT.

    Parameters
    ----------
    hu:
        CT in Hounsfield units, any axis order; ``direction`` says which way each axis points.
    spacing_mm:
        Voxel spacing of the array axes, in mm.
    direction:
        3x3 matrix, column ``a`` = LPS unit direction of array axis ``a`` (``Volume.direction``).
    lungs:
        Optional lung-ct label map on the same grid (1 right, 2 left); computed when not given.
    inferior:
        How the heart below the liver junction is found (:data:`INFERIOR_RULES`, module docstring step 5).

    Returns
    -------
    :class:`HeartResult`. ``found`` is False (with ``reason``) when no heart can be located: no lungs, no
    mediastinum between them, or too small a heart-shaped block. ``coverage`` says whether the scan cuts the
    heart (``"partial-top"``/``"partial-bottom"``).
    """
    if inferior not in INFERIOR_RULES:
        raise ValueError(f"inferior must be one of {INFERIOR_RULES}, not {inferior!r}")
    hu = np.asarray(hu)
    tr = canonical_transform(direction)
    can = apply_canonical(hu, tr)
    sp = tuple(float(spacing_mm[p]) for p in tr[0])
    f = block_factors(sp, WORK_MM)
    low = _block_mean_fast(can, f)
    low_sp = tuple(s * k for s, k in zip(sp, f, strict=True))
    info: dict[str, Any] = {"work_spacing_mm": [round(s, 3) for s in low_sp]}
    body_low = None
    if lungs is None:
        body_low = body_mask(low)
        lungs_low = segment_lungs_canonical(low, low_sp, body=body_low)
    else:
        lc = apply_canonical(np.asarray(lungs), tr)
        lungs_low = lc[f[0] // 2 :: f[0], f[1] // 2 :: f[1], f[2] // 2 :: f[2]][
            : low.shape[0], : low.shape[1], : low.shape[2]
        ]
        pad = [(0, a - b) for a, b in zip(low.shape, lungs_low.shape, strict=True)]
        lungs_low = np.pad(lungs_low, pad)
    heart_low, reason, more = _heart_canonical(low, low_sp, lungs_low, body=body_low, inferior=inferior)
    info.update(more)
    if heart_low is None:
        return _not_found(reason, info)
    vox_ml_low = float(np.prod(low_sp)) / 1000.0
    if heart_low.sum() * vox_ml_low < MIN_HEART_ML:
        return _not_found(
            f"the soft-tissue block between the lungs is too small "
            f"({heart_low.sum() * vox_ml_low:.0f} ml < {MIN_HEART_ML:.0f} ml)",
            info,
        )
    # coverage: is the heart cut by the scan's first or last slice?
    nz = low.shape[0]
    zs = np.nonzero(heart_low.any(axis=(1, 2)))[0]
    top_cut = info.get("top_rule") == "scan-top" or zs[-1] >= nz - 1
    bottom_cut = not info.get("liver_found", False) and zs[0] <= 0
    coverage = "full"
    if top_cut and bottom_cut:
        coverage = "partial-both"
    elif top_cut:
        coverage = "partial-top"
    elif bottom_cut:
        coverage = "partial-bottom"
    heart_low = _fill_holes_3d(heart_low)
    full = _upsample_smooth(heart_low, f, can.shape)
    mask = np.ascontiguousarray(undo_canonical(full, tr))
    vox_ml = float(np.prod(spacing_mm)) / 1000.0
    bp = blood_pool_hu(low, heart_low, low_sp)  # on the working grid: fast, and the same on any input grid
    info["coverage_slices_mm"] = [round(float(zs[0] * low_sp[0]), 1), round(float(zs[-1] * low_sp[0]), 1)]
    return HeartResult(True, mask, "", coverage, float(np.count_nonzero(mask) * vox_ml), bp, info)


def blood_pool_hu(hu: np.ndarray, heart_mask: np.ndarray, spacing_mm) -> float:
    """Median HU of the blood pool: the heart's inner part, eroded 10 mm (less for a small mask) away from the
    epicardial fat, without fat (< -30 HU) and calcium or metal (> 600 HU), and only its brighter half.

    The brighter half, because the inner part still holds myocardium and septum: with contrast the blood is the
    bright part, and a plain median lands in the myocardium wherever the chambers are less than half the inner
    volume. Without contrast blood and myocardium are both 30-50 HU, so the choice changes little.
    ``nan`` for an empty mask."""
    sp = tuple(float(s) for s in spacing_mm)
    box = crop_box(heart_mask, (1, 1, 1))
    if box is None:
        return float("nan")
    m = np.asarray(heart_mask[box], bool)
    h = np.asarray(hu[box], np.float32)
    dist = ndi.distance_transform_edt(m, sampling=sp)
    vox_ml = float(np.prod(sp)) / 1000.0
    vals = h[m]
    for depth in (10.0, 6.0, 3.0, 0.0):
        inner = dist > depth
        if inner.sum() * vox_ml >= 5.0 or depth == 0.0:
            vals = h[inner]
            break
    keep = vals[(vals > -30) & (vals < 600)]
    if keep.size == 0:
        keep = vals
    if not keep.size:
        return float("nan")
    return float(np.median(keep[keep >= np.median(keep)]))


def is_contrast_enhanced(blood_hu: float | None, threshold_hu: float = CONTRAST_BLOOD_HU) -> bool:
    """Whether a blood-pool HU says the scan is contrast enhanced (non-contrast blood is about 30-50 HU)."""
    return blood_hu is not None and bool(np.isfinite(blood_hu)) and blood_hu > threshold_hu


def heart_region(mask: np.ndarray, spacing_mm, margin_mm: float = 5.0) -> np.ndarray:
    """The heart mask dilated by ``margin_mm`` (a ROI for the calcium search), bool on the same grid."""
    return dilate_mm(mask, spacing_mm, margin_mm)
