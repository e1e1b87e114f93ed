"""Classical left/right lung segmentation on CT, as plain functions on arrays.

The entry point is :func:`segment_lungs`. Everything works on a *canonical* view of the array (axis 0 towards
the head, axis 1 towards posterior, axis 2 towards the patient's left, found from the direction matrix), on a
working grid of about 2 mm in-plane and 2.5 mm between slices (block-averaged; inputs already that coarse are
used as they are). The label map is mapped back to full resolution, refined with the air threshold in a thin
band along the lung boundary, and returned in the input's own array orientation.

Steps (on the working grid):

1. Body: soft tissue above -500 HU, largest 3D component, holes filled slice by slice (so lungs and airways are
   inside it, outside air and the table are not).
2. Air inside the body: below ``threshold_hu`` (-400 HU), split into 3D connected components.
3. Trachea and main bronchi: the airway is found as a round, midline, very dark (< -900 HU) 2D region in the
   upper slices and grown in 3D with "explosion control" (the growing threshold is lowered until the grown
   volume stays below an airway-sized limit; if it never does, the trachea is tracked slice by slice). It is
   removed from the air.
4. Gas pockets: inside every component, solid pure gas (< -960 HU, closed and opened with a 3x3x3 cube) whose
   surroundings are soft tissue rather than parenchyma is cut out with a two-voxel rim
   (:func:`detach_gas`). This separates stomach or colon gas joined to a lung base through a diaphragm lost in
   the partial volume, and a trachea the airway search missed.
5. Lung components: every component is scored (:func:`classify_components`). Lung parenchyma is air with
   vessels (median around -850 HU, under 10 % of voxels below -950 HU), reaches back to the posterior body wall
   beside the spine, and is not tiny next to the biggest lung part. Gas in the stomach and bowel is nearly pure
   air, lies anteriorly below the diaphragm, and is small next to the lungs in a full chest scan. Very big
   components (> 1 L) are kept whatever their density, so emphysematous lungs are not lost. A posterior,
   parenchymal component rejected only for too much gas (lung joined to mottled bowel content) loses the
   surroundings of its gas and its pieces are scored again (:func:`rescue_lung_from_gas`).
6. Left/right: a component that lies on both sides of the body midline (lungs touching at the anterior or
   posterior junction) is split by eroding until it falls apart into two parts, then a watershed from those two
   seeds on the distance map plus the (faint) density ridge of the junction line. Parts are labelled right (1) /
   left (2) by the side of the body midline their centroid lies on (canonical +x is the patient's left).
7. Clean-up per lung: small holes (vessels, intrapulmonary bronchi; up to 4 cm^2) are filled slice by slice;
   large holes, such as the liver dome seen through the lung base, are not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from medhub.io.orientation import CANONICAL_DIRECTION, apply_canonical, canonical_transform, undo_canonical

RIGHT, LEFT = 1, 2
SPLIT_COMPACTNESS = 0.1  # compact watershed: the junction goes to the nearer seed where the distance map is flat
SPLIT_HU_WEIGHT = 1.0  # weight of the density ridge (per 100 HU) against the distance map (mm)


# ------------------------------------------------------------------------------------------------ resampling
def block_factors(spacing_mm, target_mm=(2.5, 2.0, 2.0)) -> tuple[int, int, int]:
    """Integer downsampling factors that bring ``spacing_mm`` near ``target_mm`` (never below 1)."""
    return tuple(max(1, round(t / s)) for s, t in zip(spacing_mm, target_mm, strict=False))  # type: ignore[return-value]


def block_mean(a: np.ndarray, f: tuple[int, int, int]) -> np.ndarray:
    """Mean over ``f``-sized blocks (the array is edge-padded to a multiple of ``f``)."""
    if f == (1, 1, 1):
        return a.astype(np.float32)
    pad = [(0, (-n) % k) for n, k in zip(a.shape, f, strict=False)]
    a = np.pad(a.astype(np.float32), pad, mode="edge")
    s = a.shape
    return a.reshape(s[0] // f[0], f[0], s[1] // f[1], f[1], s[2] // f[2], f[2]).mean(axis=(1, 3, 5))


def upsample_nearest(a: np.ndarray, f: tuple[int, int, int], shape: tuple[int, ...]) -> np.ndarray:
    """Repeat each voxel ``f`` times per axis and crop to ``shape``."""
    for ax, k in enumerate(f):
        if k > 1:
            a = np.repeat(a, k, axis=ax)
    return a[: shape[0], : shape[1], : shape[2]]


# ------------------------------------------------------------------------------------------------ structure
def _largest_component(mask: np.ndarray) -> np.ndarray:
    lab, n = ndi.label(mask)
    if n == 0:
        return mask.copy()
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(sizes.argmax())


_IN_PLANE_CROSS = np.zeros((3, 3, 3), bool)
_IN_PLANE_CROSS[1] = ndi.generate_binary_structure(2, 1)


def _fill_holes_2d(mask: np.ndarray, max_hole_px: int | None = None) -> np.ndarray:
    """Fill holes in every axial slice; with ``max_hole_px`` only holes up to that many pixels.

    The same as ``ndi.binary_fill_holes`` slice by slice (a hole is a 4-connected part of the slice's background
    that does not reach the slice's edge), done for all slices with one labelling of the background.
    """
    mask = np.asarray(mask, bool)
    lab, n = ndi.label(~mask, structure=_IN_PLANE_CROSS)
    if n == 0:
        return mask.copy()
    hole = np.ones(n + 1, bool)
    hole[0] = False
    for edge in (lab[:, 0, :], lab[:, -1, :], lab[:, :, 0], lab[:, :, -1]):
        hole[edge] = False  # background reaching the slice's edge
    if max_hole_px is not None:
        hole &= np.bincount(lab.ravel(), minlength=n + 1) <= max_hole_px
    return mask | hole[lab]


def body_mask(hu: np.ndarray) -> np.ndarray:
    """The patient's body (canonical working grid): tissue above -500 HU, largest 3D part, 2D holes filled."""
    tissue = hu > -500
    # cut thin bridges to the table / blankets before taking the largest part
    tissue = ndi.binary_opening(tissue, structure=np.ones((1, 3, 3), bool))
    body = _largest_component(tissue)
    return _fill_holes_2d(body)


# ------------------------------------------------------------------------------------------------- airways
def find_airway(
    hu: np.ndarray,
    body: np.ndarray,
    spacing: tuple[float, float, float],
    seed_hu: float = -900.0,
    max_airway_ml: float = 200.0,
) -> np.ndarray:
    """Trachea and main bronchi (canonical grid), or an empty mask if no trachea is found.

    The seed is the first (from the head down) roundish, midline 2D region darker than ``seed_hu`` of
    trachea size (1-7 cm^2) within the top 40 % of the slices. It is grown in 3D below a threshold that starts at
    -900 HU and is lowered by 20 HU steps while the grown volume exceeds ``max_airway_ml`` (explosion control).
    """
    nz = hu.shape[0]
    pix_mm2 = spacing[1] * spacing[2]
    vox_ml = float(np.prod(spacing)) / 1000.0
    xs = np.nonzero(body.any(axis=(0, 1)))[0]
    if xs.size == 0:
        return np.zeros_like(body)
    body_mid_x = 0.5 * (xs[0] + xs[-1])
    body_w = xs[-1] - xs[0] + 1
    dark = (hu < seed_hu) & body
    seed = None
    for z in range(nz - 1, int(nz * 0.6) - 1, -1):
        lab, n = ndi.label(dark[z])
        if n == 0:
            continue
        for i, sl in enumerate(ndi.find_objects(lab)):
            m = lab[sl] == i + 1
            area = m.sum() * pix_mm2
            if not 100.0 <= area <= 700.0:
                continue
            h = (sl[0].stop - sl[0].start) * spacing[1]
            w = (sl[1].stop - sl[1].start) * spacing[2]
            if max(h, w) > 2.2 * min(h, w) or max(h, w) > 40.0:
                continue
            cx = 0.5 * (sl[1].start + sl[1].stop - 1)
            if abs(cx - body_mid_x) > 0.12 * body_w:
                continue
            # the trachea lies in the middle third of the body's depth (front of the spine), not anteriorly
            ys = np.nonzero(body[z].any(axis=1))[0]
            cy = 0.5 * (sl[0].start + sl[0].stop - 1)
            if not 0.27 <= (cy - ys[0]) / max(ys[-1] - ys[0], 1) <= 0.65:
                continue
            # and it is a tube: dark air continues below it for at least 2 cm with a similar area
            m2 = lab == i + 1
            below = int(np.ceil(20.0 / spacing[0]))
            if z - below < 0:
                continue
            if not all(0.4 * m.sum() <= (dark[z - k] & ndi.binary_dilation(m2, iterations=2)).sum()
                       <= 2.5 * m.sum() for k in range(1, below + 1)):
                continue
            seed = (z, m2)
            break
        if seed is not None:
            break
    if seed is None:
        return np.zeros_like(body)
    z0, seed2d = seed
    airway = np.zeros_like(body)
    for t in range(int(seed_hu), -1040, -20):
        grow = (hu < t) & body
        markers = np.zeros_like(body)
        markers[z0] = seed2d & grow[z0]
        if not markers.any():
            break
        lab, _ = ndi.label(grow)
        ids = np.unique(lab[markers])
        ids = ids[ids > 0]
        cand = np.isin(lab, ids)
        if cand.sum() * vox_ml <= max_airway_ml:
            airway = cand
            break
    if not airway.any():
        airway = _track_trachea(dark, z0, seed2d)
    if airway.any():
        airway = ndi.binary_dilation(airway, structure=ndi.generate_binary_structure(3, 1))
    return airway


def _track_trachea(dark: np.ndarray, z0: int, seed2d: np.ndarray) -> np.ndarray:
    """Fallback when 3D growing explodes at every threshold (e.g. emphysema as dark as the airway lumen):
    follow the trachea down slice by slice while its dark cross-section stays under 2.5 times the seed's area."""
    airway = np.zeros(dark.shape, bool)
    current, area0 = seed2d, int(seed2d.sum())
    for z in range(z0, -1, -1):
        lab, _ = ndi.label(dark[z])
        ids = np.unique(lab[ndi.binary_dilation(current, iterations=2)])
        ids = ids[ids > 0]
        nxt = np.isin(lab, ids)
        if not nxt.any() or nxt.sum() > 2.5 * area0:
            break
        airway[z] = nxt
        current = nxt
    return airway


# ----------------------------------------------------------------------------------------- lung components
@dataclass
class Component:
    index: int
    volume_ml: float
    median_hu: float
    frac_below_950: float
    posterior_gap: float  # (body back - component back) / body depth, in the component's slices
    centroid_x: float
    left_share: float  # share of voxels on the patient-left side of the body midline
    is_lung: bool = False


def describe_components(
    lab: np.ndarray,
    n: int,
    hu: np.ndarray,
    body: np.ndarray,
    spacing: tuple[float, float, float],
    mid_x: float,
) -> list[Component]:
    vox_ml = float(np.prod(spacing)) / 1000.0
    # posterior-most and anterior-most body row per slice
    rows_any = body.any(axis=2)  # (z, y)
    ny = body.shape[1]
    back = np.where(rows_any.any(1), ny - 1 - np.argmax(rows_any[:, ::-1], axis=1), 0)
    front = np.where(rows_any.any(1), np.argmax(rows_any, axis=1), 0)
    depth = np.maximum(back - front + 1, 1)
    # all components at once: the labelled voxels grouped by label, each group in C order (z, then y, then x)
    flat = lab.ravel()
    where = np.flatnonzero(flat)
    order = np.argsort(flat[where], kind="stable")
    where = where[order]
    ids = flat[where]
    vals = np.asarray(hu).ravel()[where]
    zz, yy, xx = np.unravel_index(where, lab.shape)
    present = np.unique(ids)
    if present.size == 0:
        return []
    counts = np.bincount(ids)[present]
    starts = np.searchsorted(ids, present)
    below = np.bincount(ids, weights=vals < -950)[present]
    sum_x = np.bincount(ids, weights=xx)[present]
    left = np.bincount(ids, weights=xx > mid_x)[present]
    # per component and slice: how far its back edge is from the body's back (in C order the last voxel of each
    # slice has the slice's largest y)
    last = np.append(np.nonzero((zz[1:] != zz[:-1]) | (ids[1:] != ids[:-1]))[0], ids.size - 1)
    gaps = (back[zz[last]] - yy[last]) / depth[zz[last]]
    min_gap = np.minimum.reduceat(gaps, np.searchsorted(ids[last], present))
    # medians as np.median takes them: the middle value, or the mean of the two middle values
    by_value = vals[np.lexsort((vals, ids))]
    half = counts // 2
    odd = counts % 2 == 1
    medians = np.empty(present.size, dtype=np.result_type(np.mean(vals[:1])))
    if odd.any():
        medians[odd] = np.mean(by_value[(starts + half)[odd]].reshape(-1, 1), axis=1)
    if (~odd).any():
        pairs = (starts + half)[~odd]
        medians[~odd] = np.mean(np.stack([by_value[pairs - 1], by_value[pairs]], axis=1), axis=1)
    return [
        Component(
            index=int(i),
            volume_ml=float(c * vox_ml),
            median_hu=float(med),
            frac_below_950=float(b / c),
            posterior_gap=float(g),
            centroid_x=float(sx / c),
            left_share=float(lf / c),
        )
        for i, c, med, b, g, sx, lf in zip(present, counts, medians, below, min_gap, sum_x, left, strict=True)
    ]


def classify_components(comps: list[Component], min_ml: float = 5.0) -> list[Component]:
    """Mark lung components (see the module docstring, step 4)."""
    for c in comps:
        if c.volume_ml < min_ml:
            continue
        if c.volume_ml >= 1000.0:
            c.is_lung = True
            continue
        parenchyma = c.frac_below_950 < 0.1 and -960.0 < c.median_hu < -650.0
        posterior = c.posterior_gap < 0.25
        c.is_lung = parenchyma and posterior
    kept = [c for c in comps if c.is_lung]
    if kept:
        biggest = max(c.volume_ml for c in kept)
        for c in kept:  # gas pockets with mottled content next to full lungs
            if c.volume_ml < 0.03 * biggest:
                c.is_lung = False
    return comps


def detach_gas(component: np.ndarray, hu: np.ndarray, spacing, gas_hu: float = -960.0, min_ml: float = 3.0,
               max_parenchyma: float = 0.3, big_ml: float = 1000.0) -> tuple[np.ndarray, list[dict]]:
    """Remove pockets of pure gas wrapped in soft tissue from a lung component.

    At coarse slice spacing a thin diaphragm can vanish in the partial volume and join a lung base to the gas in
    the stomach or colon below it. Such a pocket is solid gas (< ``gas_hu``; lung parenchyma with its vessels
    almost never is) whose surroundings are soft tissue (stomach or bowel wall, fluid) rather than lung
    parenchyma. Emphysematous bullae and bronchi are also solid gas but are surrounded by parenchyma, so they stay.
    A removed pocket takes its debris and a two-voxel rim with it, which cuts a thin bridge to the lung; the pieces
    left are classified like any other air component.
    A pocket goes if at most ``max_parenchyma`` of a 2-voxel shell around it (outside its own partial-volume
    rim) is parenchyma (-950..-500 HU). This
    also cuts off a trachea or main bronchus that the airway search missed (their shell is wall and mediastinum).
    In a component of ``big_ml`` or more (a whole lung) only a pocket at its base (centroid in the lowest 30 % of
    its height) and under 10 % of its volume can go, so that emphysema, even severe, is never cut out of a lung.
    Returns the cleaned component and a note per removed pocket.
    """
    bbox = ndi.find_objects(component.astype(np.uint8))
    if not bbox or bbox[0] is None:
        return component, []
    bbox = tuple(slice(max(0, s.start - 3), s.stop + 3) for s in bbox[0])
    cleaned, notes = _detach_gas(component[bbox], hu[bbox], spacing, gas_hu, min_ml, max_parenchyma, big_ml)
    if not notes:
        return component, []
    out = np.zeros_like(component)
    out[bbox] = cleaned
    return out, notes


def _detach_gas(component, hu, spacing, gas_hu, min_ml, max_parenchyma, big_ml):
    vox_ml = float(np.prod(spacing)) / 1000.0
    total_ml = float(component.sum() * vox_ml)
    zs = np.nonzero(component.any(axis=(1, 2)))[0]
    z_base = zs[0] + 0.3 * (zs[-1] - zs[0])
    cube = np.ones((3, 3, 3), bool)
    cross = ndi.generate_binary_structure(3, 1)
    # close first: gas mottled with stool or food is still one pocket
    gas = ndi.binary_closing(component & (hu < gas_hu), structure=cube) & component
    gas = ndi.binary_opening(gas, structure=cube)
    lab, n = ndi.label(gas)
    if n == 0:
        return component, []
    removed = np.zeros_like(component)
    notes = []
    for i, sl in enumerate(ndi.find_objects(lab)):
        # a 3-voxel margin around the pocket's box holds its shell
        box = tuple(slice(max(0, s.start - 3), s.stop + 3) for s in sl)
        blob = lab[box] == i + 1
        volume = float(blob.sum() * vox_ml)
        if volume < min_ml:
            continue
        if total_ml >= big_ml:
            z_centre = box[0].start + np.nonzero(blob)[0].mean()
            if z_centre > z_base or volume >= 0.1 * total_ml:
                continue
        near = ndi.binary_dilation(blob, structure=cube)  # the pocket's own partial-volume rim
        shell = ndi.binary_dilation(near, structure=cube, iterations=2) & ~near
        h = hu[box][shell]
        parenchyma = float(np.mean((h >= -950) & (h < -500)))
        if parenchyma <= max_parenchyma:
            # the pocket with its debris and its partial-volume rim, two voxels deep
            cut = ndi.binary_dilation(ndi.binary_fill_holes(near), structure=cross)
            removed[box] |= cut & component[box]
            notes.append({"volume_ml": round(volume, 1), "parenchyma_share": round(parenchyma, 2)})
    if not removed.any():
        return component, []
    return component & ~removed, notes


def rescue_lung_from_gas(lab: np.ndarray, n: int, comps: list[Component], hu: np.ndarray, body: np.ndarray,
                         spacing, mid_x: float, min_ml: float = 5.0):
    """Split lung out of components rejected only for holding too much gas.

    A lung base joined to gas-filled bowel with mottled stool (which no pocket test catches) looks like lung
    that is too gassy: posterior, parenchymal median, but >= 10 % of voxels below -950 HU. Such a component loses
    every voxel within one voxel of (closed) pure gas; the pieces left are classified again. Clean lungs are
    never touched, so bullae in a lung that passed are safe.
    """
    cube = np.ones((3, 3, 3), bool)
    rescued = []
    for c in list(comps):
        if c.is_lung or c.volume_ml < min_ml or not 0.1 <= c.frac_below_950 < 0.6:
            continue
        if c.posterior_gap >= 0.25 or not -960.0 < c.median_hu < -650.0:
            continue
        box = ndi.find_objects((lab == c.index).astype(np.uint8))[0]
        sl = tuple(slice(max(0, s.start - 2), s.stop + 2) for s in box)
        m = lab[sl] == c.index
        gas = ndi.binary_closing(m & (hu[sl] < -950), structure=cube)
        rest = m & ~ndi.binary_dilation(gas, structure=cube)
        pieces, k = ndi.label(rest)
        if k == 0:
            continue
        sub = lab[sl]
        sub[m] = 0
        sub[pieces > 0] = pieces[pieces > 0] + n
        new = describe_components(np.where(lab > n, lab - n, 0), k, hu, body, spacing, mid_x)
        for piece in new:
            piece.index += n
        classify_components(new, min_ml=min_ml)
        kept = [p for p in new if p.is_lung]
        rescued.extend(round(p.volume_ml, 1) for p in kept)
        comps.extend(new)
        n += k
    if rescued:
        classify_components([c for c in comps if c.is_lung or c.volume_ml >= min_ml], min_ml=min_ml)
    return lab, n, comps, rescued


# -------------------------------------------------------------------------------------------- left / right
def _split_two(mask: np.ndarray, spacing, max_iter: int = 12, hu: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray] | None:
    """Split a component in two: erode (by thresholding its distance map) until it falls apart into two
    parts of at least 5 % each, then grow them back with a seeded watershed."""
    from skimage.segmentation import watershed

    box = ndi.find_objects(mask.astype(np.uint8))[0]
    box = tuple(slice(max(0, b.start - 1), b.stop + 1) for b in box)
    m = mask[box]
    total = int(m.sum())
    dist = ndi.distance_transform_edt(m, sampling=spacing)
    step = min(spacing)
    for k in range(1, max_iter + 1):
        lab, n = ndi.label(dist > k * step)
        if n == 0:
            return None
        if n < 2:
            continue
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        big = [int(i) for i in np.argsort(sizes)[::-1] if sizes[i] >= 0.05 * total]
        if len(big) < 2:
            continue  # only small buds fell off; erode further
        markers = np.zeros(m.shape, np.int32)
        markers[lab == big[0]] = 1
        markers[lab == big[1]] = 2
        elevation = -dist
        if hu is not None and SPLIT_HU_WEIGHT:
            # the junction line between the lungs is a faint ridge of higher density
            smooth = ndi.gaussian_filter(np.where(m, hu[box], -850.0).astype(np.float32), 1.0)
            elevation = elevation + SPLIT_HU_WEIGHT * np.clip(smooth + 850.0, 0.0, 300.0) / 100.0
        ws = watershed(elevation, markers, mask=m, compactness=SPLIT_COMPACTNESS)
        first = np.zeros_like(mask)
        second = np.zeros_like(mask)
        first[box] = ws == 1
        second[box] = ws == 2
        return first, second
    return None


def split_left_right(lung: np.ndarray, lab: np.ndarray, comps: list[Component], spacing, mid_x: float,
                     hu: np.ndarray | None = None) -> np.ndarray:
    """Label map (1 right, 2 left) from the lung components."""
    out = np.zeros(lung.shape, np.uint8)
    for c in comps:
        if not c.is_lung:
            continue
        m = lab == c.index
        parts = [m]
        if 0.15 < c.left_share < 0.85:
            sp = _split_two(m, spacing, hu=hu)
            if sp is not None:
                parts = list(sp)
            else:  # fall back to the body midline
                xs = np.arange(m.shape[2])
                parts = [m & (xs <= mid_x)[None, None, :], m & (xs > mid_x)[None, None, :]]
        for p in parts:
            if not p.any():
                continue
            cx = np.nonzero(p)[2].mean()
            out[p] = LEFT if cx > mid_x else RIGHT
    return out


# --------------------------------------------------------------------------------------------------- main
def _segment_canonical(hu: np.ndarray, spacing, threshold_hu: float, body: np.ndarray | None = None
                       ) -> tuple[np.ndarray, np.ndarray, dict]:
    if body is None:
        body = body_mask(hu)
    xs = np.nonzero(body.any(axis=(0, 1)))[0]
    mid_x = 0.5 * (xs[0] + xs[-1]) if xs.size else hu.shape[2] / 2
    air = (hu < threshold_hu) & body
    all_air = air.copy()
    airway = find_airway(hu, body, spacing)
    air &= ~airway
    lab, n = ndi.label(air)
    # pockets of gas joined to a lung through a thin wall (or an airway left in place) are cut off first
    gas_notes = []
    min_vox = 5.0 / (float(np.prod(spacing)) / 1000.0)
    for i, sl in enumerate(ndi.find_objects(lab)):
        if sl is None:
            continue
        m = lab[sl] == i + 1
        if m.sum() < min_vox:
            continue
        cleaned, notes = detach_gas(m, hu[sl], spacing)
        if notes:
            air[sl] &= ~(m & ~cleaned)
            gas_notes.extend(notes)
    if gas_notes:
        lab, n = ndi.label(air)
    comps = classify_components(describe_components(lab, n, hu, body, spacing, mid_x))
    lab, n, comps, rescued = rescue_lung_from_gas(lab, n, comps, hu, body, spacing, mid_x)
    labels = split_left_right(air, lab, comps, spacing, mid_x, hu)
    # clean-up: small holes (vessels, bronchi) in each lung, slice by slice
    max_hole_px = round(400.0 / (spacing[1] * spacing[2]))  # 4 cm^2
    for value in (RIGHT, LEFT):
        m = labels == value
        if not m.any():
            continue
        m = ndi.binary_closing(m, structure=np.ones((1, 3, 3), bool)) | m
        m = _fill_holes_2d(m, max_hole_px)
        labels[m & (labels == 0)] = value
    info = {
        "airway_found": bool(airway.any()),  # (already widened by one voxel)
        "airway_ml": float(airway.sum() * np.prod(spacing) / 1000.0),
        "gas_pockets_removed": gas_notes,
        "rescued_from_gas_ml": rescued,
        "components": [c.__dict__ for c in comps if c.volume_ml >= 5.0],
    }
    # what must not grow back at full resolution: the airway and any air that is not lung
    blocked = airway | (all_air & (labels == 0))
    return labels, blocked, info


def segment_lungs_canonical(
    hu: np.ndarray,
    spacing_mm: tuple[float, float, float],
    threshold_hu: float = -400.0,
    body: np.ndarray | None = None,
) -> np.ndarray:
    """:func:`segment_lungs` for an array already in canonical orientation (see :mod:`medhub.io.orientation`).

    On a grid at least as coarse as the working grid (``block_factors(spacing_mm) == (1, 1, 1)``) this is the
    working-grid segmentation itself, with no copy or resampling, and ``body`` (:func:`body_mask` of ``hu``, if
    the caller has it) is not computed again; the result equals
    ``segment_lungs(hu, spacing_mm, direction_of_the_canonical_axes)``. Finer grids go through
    :func:`segment_lungs`.
    """
    sp = tuple(float(s) for s in spacing_mm)
    if block_factors(sp) != (1, 1, 1) or np.asarray(hu).dtype != np.float32:
        return segment_lungs(hu, sp, CANONICAL_DIRECTION, threshold_hu=threshold_hu)
    labels, _blocked, _info = _segment_canonical(np.asarray(hu), sp, threshold_hu, body=body)
    return labels.astype(np.uint8, copy=False)


def segment_lungs(
    hu: np.ndarray,
    spacing_mm: tuple[float, float, float],
    direction: np.ndarray,
    threshold_hu: float = -400.0,
    return_info: bool = False,
):
    """Segment the right (1) and left (2) lung in a CT volume.

    Parameters
    ----------
    hu:
        CT in Hounsfield units, any axis order; ``direction`` says which way each axis points.
    spacing_mm:
        Voxel spacing of the array axes, in mm.
    direction:
        3x3 matrix, column ``a`` = LPS unit direction of array axis ``a`` (``Volume.direction``).
    threshold_hu:
        Air / tissue threshold.
    return_info:
        Also return a dict of intermediate facts (components, whether an airway was found).

    Returns
    -------
    uint8 label map on the input grid: 0 background, 1 right lung, 2 left lung (patient sides).
    """
    hu = np.asarray(hu)
    tr = canonical_transform(direction)
    can = apply_canonical(hu, tr)
    sp = tuple(float(spacing_mm[p]) for p in tr[0])
    f = block_factors(sp)
    low = block_mean(can, f)
    low_sp = tuple(s * k for s, k in zip(sp, f, strict=False))
    labels_low, blocked_low, info = _segment_canonical(low, low_sp, threshold_hu)
    labels = labels_low if f == (1, 1, 1) else _refine_full_resolution(can, labels_low, blocked_low, f, threshold_hu)
    info["work_spacing_mm"] = low_sp
    out = np.ascontiguousarray(undo_canonical(labels, tr)).astype(np.uint8)
    return (out, info) if return_info else out


def _refine_full_resolution(
    can: np.ndarray,
    labels_low: np.ndarray,
    blocked_low: np.ndarray,
    f: tuple[int, int, int],
    threshold_hu: float,
) -> np.ndarray:
    """Full-resolution labels: the eroded low-resolution lung as is, plus the air in a boundary band.

    ``blocked_low`` (the airway and the air that is not lung, on the working grid) never joins the band.
    """
    shape = can.shape
    labels = np.zeros(shape, np.uint8)
    struct = ndi.generate_binary_structure(3, 1)
    air_full = can < threshold_hu
    blocked = upsample_nearest(blocked_low, f, shape)
    for value, other in ((RIGHT, LEFT), (LEFT, RIGHT)):
        m = labels_low == value
        if not m.any():
            continue
        inner = ndi.binary_erosion(m, struct)
        outer = ndi.binary_dilation(m, struct) & (labels_low != other)
        band = upsample_nearest(outer & ~inner, f, shape) & air_full & ~blocked
        full = upsample_nearest(inner, f, shape) | band
        labels[full & (labels == 0)] = value
    return labels
