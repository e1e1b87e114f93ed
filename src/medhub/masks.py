"""Plain functions on 3D masks and arrays of an anisotropic grid (spacing in mm, array axis order): bounding boxes,
exact Euclidean ball dilation, block means, and moving an array onto another grid. Everything that grows or crops a
mask by millimetres, or resamples between grids, comes here."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _ball_rows(spacing, radius_mm: float) -> dict[tuple[int, int], int]:
    """The ball ``sqrt((dz sz)^2 + (dy sy)^2 + (dx sx)^2) <= radius_mm`` (voxel offsets, anisotropic spacing) as
    ``{(dz, dy): largest dx}`` for ``dz, dy >= 0`` (the ball is symmetric). The distance is computed as scipy's
    ``distance_transform_edt`` computes it, so the ball holds exactly the offsets that transform puts within
    ``radius_mm``."""
    sp = [float(s) for s in spacing]
    kz, ky, kx = (int(np.floor(radius_mm / s)) for s in sp)
    dx = np.arange(kx + 1, dtype=np.float64) * sp[2]
    rows = {}
    for dz in range(kz + 1):
        for dy in range(ky + 1):
            dist = np.sqrt(((dz * sp[0]) ** 2 + (dy * sp[1]) ** 2) + dx * dx)
            inside = np.nonzero(dist <= radius_mm)[0]
            if inside.size:
                rows[(dz, dy)] = int(inside[-1])
    return rows


def _shift_packed(packed: np.ndarray, shift: int) -> np.ndarray:
    """``out[..., x] = in[..., x - shift]`` (zeros shifted in) for bits packed along the last axis by
    ``np.packbits`` (big-endian: element ``x`` is bit ``7 - x % 8`` of byte ``x // 8``)."""
    out = np.zeros_like(packed)
    nb = packed.shape[-1]
    q, r = divmod(abs(shift), 8)
    if q >= nb:
        return out
    if shift > 0:  # towards higher x
        src = packed[..., : nb - q]
        out[..., q:] = src >> r
        if r:
            out[..., q + 1 :] |= src[..., :-1] << (8 - r)
    else:  # towards lower x
        src = packed[..., q:]
        out[..., : nb - q] = src << r
        if r:
            out[..., : nb - q - 1] |= src[..., 1:] >> (8 - r)
    return out


def dilate_ball(mask: np.ndarray, spacing, radius_mm: float) -> np.ndarray:
    """Binary dilation of ``mask`` with a ball of ``radius_mm`` (anisotropic ``spacing``); nothing outside the array.

    Exactly ``distance_transform_edt(~mask, sampling=spacing) <= radius_mm`` (for a mask that is not empty), at a
    fraction of its time and memory: the ball is a union of rows along the last axis, and the mask is bit-packed
    along that axis (8 voxels a byte) once; rows of every half-width ``w`` are ORs of bit shifts, and the shifts
    along the first two axes are ORs of whole packed rows.
    """
    mask = np.ascontiguousarray(mask, dtype=bool)
    nz, ny, nx = mask.shape
    rows = _ball_rows(spacing, radius_mm)
    base = np.packbits(mask, axis=2)
    packed, grown = {}, base
    for w in range(max(rows.values()) + 1):  # row half-width w: the OR of the shifts -w..w along the last axis
        if w:
            grown = grown | _shift_packed(base, w) | _shift_packed(base, -w)
        packed[w] = grown
    out = None
    for dz in range(max(z for z, _ in rows) + 1):
        plane = np.zeros_like(packed[rows[(0, 0)]])  # the union of the ball's rows at this dz, over dy
        for (z, dy), w in rows.items():
            if z != dz or dy >= ny:
                continue
            src = packed[w]
            plane[:, : ny - dy] |= src[:, dy:]
            if dy:
                plane[:, dy:] |= src[:, : ny - dy]
        if out is None:
            out = plane
        elif dz < nz:
            out[: nz - dz] |= plane[dz:]
            out[dz:] |= plane[: nz - dz]
    return np.unpackbits(out, axis=2, count=nx).view(bool)


def crop_box(mask: np.ndarray, pad: tuple[int, int, int]) -> tuple[slice, ...] | None:
    """Bounding box of a 3D mask grown by ``pad`` voxels per axis (clipped to the array), or ``None`` for an empty
    mask. The same box as ``ndi.find_objects(mask.astype(np.uint8))`` grown by ``pad``, about 30 times faster on
    a full-resolution bool mask (no uint8 copy, projections instead of a scan of every voxel)."""
    m = np.asarray(mask)
    if m.dtype != bool:
        m = m != 0
    rows = m.reshape(m.shape[0], -1)
    if rows.flags.c_contiguous and rows.shape[1] % 8 == 0:
        rows = rows.view(np.uint64)  # 8 voxels at a time
    zs = np.flatnonzero(rows.any(axis=1))
    if zs.size == 0:
        return None
    proj = np.logical_or.reduce(m[zs[0] : zs[-1] + 1], axis=0)
    ys = np.flatnonzero(proj.any(axis=1))
    xs = np.flatnonzero(proj.any(axis=0))
    bounds = ((zs[0], zs[-1] + 1), (ys[0], ys[-1] + 1), (xs[0], xs[-1] + 1))
    return tuple(
        slice(max(0, int(a) - p), min(n, int(b) + p)) for (a, b), p, n in zip(bounds, pad, m.shape, strict=True)
    )


def crop_centred(array: np.ndarray, centre: Sequence[int], shape: Sequence[int], fill: float) -> np.ndarray:
    """The block of ``shape`` voxels round index ``centre`` (its first voxel at ``centre - shape // 2``), with
    ``fill`` where the block leaves the array; a copy, in ``array``'s dtype."""
    lo = [int(c) - int(n) // 2 for c, n in zip(centre, shape, strict=True)]
    out = np.full(tuple(int(n) for n in shape), fill, dtype=array.dtype)
    src = tuple(slice(max(0, a), max(0, a, min(size, a + int(n))))  # empty where the block misses the array
                for a, n, size in zip(lo, shape, array.shape, strict=True))
    out[tuple(slice(s.start - a, s.stop - a) for s, a in zip(src, lo, strict=True))] = array[src]
    return out


def dilate_mm(mask: np.ndarray, spacing_mm: Sequence[float], radius_mm: float) -> np.ndarray:
    """``mask`` dilated by a ball of ``radius_mm`` (Euclidean, anisotropic spacing), bool on the same grid: exactly
    ``distance_transform_edt(~mask, sampling=spacing_mm) <= radius_mm``, computed on the mask's bounding box."""
    sp = tuple(float(s) for s in spacing_mm)
    pad = tuple(int(np.ceil(radius_mm / s)) + 1 for s in sp)
    out = np.zeros(np.shape(mask), bool)
    box = crop_box(mask, pad)
    if box is None:
        return out
    out[box] = dilate_ball(np.asarray(mask)[box], sp, radius_mm)
    return out


def resample_grid(array: np.ndarray, from_affine: np.ndarray, to_affine: np.ndarray, to_shape: Sequence[int],
                  order: int = 0, fill: float = 0.0) -> np.ndarray:
    """``array`` moved onto another grid through patient space: nearest neighbour (``order=0``, for label maps) or
    linear (``order=1``, for images); target voxels outside the source grid get ``fill``.

    Affines map the arrays' indices to the same patient space (mm), in any convention. Where the grids share their
    voxel centres (a slab of the same series, a flipped axis) every value lands exactly; on the same grid the array
    comes back as it is.
    """
    from scipy import ndimage as ndi

    to_affine = np.asarray(to_affine, dtype=np.float64)
    if np.shape(array) == tuple(to_shape) and np.allclose(from_affine, to_affine, atol=1e-4):
        return np.asarray(array)
    mapping = np.linalg.inv(np.asarray(from_affine, dtype=np.float64)) @ to_affine
    return ndi.affine_transform(np.asarray(array), mapping[:3, :3], offset=mapping[:3, 3],
                                output_shape=tuple(int(n) for n in to_shape), order=order, mode="constant", cval=fill)


def block_mean(array: np.ndarray, factor: int) -> np.ndarray:
    """The mean over ``factor``-sided cubes of the last three axes (each cut to a multiple of ``factor`` first):
    a coarser grid whose voxels average the finer ones."""
    if factor == 1:
        return array
    *lead, x, y, z = array.shape
    nx, ny, nz = x // factor, y // factor, z // factor
    cut = array[..., : nx * factor, : ny * factor, : nz * factor]
    return cut.reshape(*lead, nx, factor, ny, factor, nz, factor).mean(axis=(-5, -3, -1))
