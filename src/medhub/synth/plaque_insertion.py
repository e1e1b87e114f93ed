"""Virtual calcified plaques inserted into a real CT, imaged as its scanner and resampling would have imaged them.

The plaque (an ellipsoid of one HU), optionally in the wall of a vessel (a lumen of radius 1-2 mm at 40 HU running
in a random direction), is drawn on a fine 0.2 mm grid, blurred by the scanner's in-plane PSF (Gaussian sigma
:data:`PSF_SIGMA_MM`) and slice profile, sampled on the scanner's grid (:data:`SCANNER_MM`, random phase) and
interpolated linearly onto the target grid (as DeepCAC's 3 mm resampling did). That gives each target voxel the
fractions ``f`` of plaque and ``g`` of lumen it holds, and the voxel becomes ``(1 - f - g) * HU + g * 40 + f *
plaque HU``: the scan's own noise and texture stay around the plaque.

Used by ``benchmarks/cac_lesion_insertion.py`` (sensitivity on the real LIDC scans) and by the candidate classifier's
training (:mod:`medhub.models.cac.train_classifier`), with different seeds. Arrays are in index order (slice, row,
column); distances in mm.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from medhub.masks import dilate_mm
from medhub.synth.cac_phantom import (
    LARGE_PLAQUE_AREA_MM2,
    LARGE_PLAQUE_LENGTH_MM,
    agatston_weight,
    draw_heavy_plaque_hu,
    draw_plaque_hu,
)

#: The LIDC scanner grid before DeepCAC resampled it (slice, row, column; mm) and its in-plane PSF sigma (mm).
SCANNER_MM = (2.5, 0.68, 0.68)
PSF_SIGMA_MM = 0.45
FINE_MM = 0.2
#: The target-grid block (voxels each side of the site) that a plaque and its vessel may touch; wider for the
#: heavy calcifications (up to 10 mm half-length, plus the slice profile and the resampling).
HALF_BOX, HALF_BOX_LARGE = 4, 5
#: Where plaques go on a real scan (with :func:`insertion_sites`): this far (mm) from
#: calcium or bone already there and from lung, and per trial this many plaques at least this far apart (mm).
SITE_CLEAR_MM, SITE_LUNG_CLEAR_MM = 12.0, 6.0
PLAQUES_PER_TRIAL, MIN_APART_MM = 3, 30.0
#: Lumen radius (mm) and HU of the vessel around a plaque (non-contrast blood).
VESSEL_RADIUS_MM, LUMEN_HU = (1.0, 2.0), 40.0


#: Insertion sites: epicardial fat (HU range), within this distance (mm) of the heart's soft tissue, and this far
#: (mm) from calcium, bone or metal unless the caller says otherwise.
INSERT_FAT_HU, INSERT_NEAR_SOFT_MM, INSERT_CLEAR_MM = (-150.0, -40.0), 6.0, 9.0


def insertion_sites(hu: np.ndarray, heart: np.ndarray, dense: np.ndarray, spacing_mm: Sequence[float],
                    clear_mm: float = INSERT_CLEAR_MM, lung_clear_mm: float | None = None) -> np.ndarray:
    """Voxel indices ``(N, 3)`` of fat inside ``heart``, within :data:`INSERT_NEAR_SOFT_MM` of its soft tissue and
    ``clear_mm`` clear of ``dense`` (calcium, bone, metal), and with ``lung_clear_mm``, as far from lung: where
    coronary plaques lie on real hearts, whatever path a phantom's coronaries take."""
    fat = heart & (hu >= INSERT_FAT_HU[0]) & (hu <= INSERT_FAT_HU[1])
    soft = heart & (hu > 20.0) & (hu < 100.0)
    if not fat.any() or not soft.any():
        return np.zeros((0, 3), np.intp)
    keep = fat & dilate_mm(soft, spacing_mm, INSERT_NEAR_SOFT_MM)
    if dense.any():
        keep &= ~dilate_mm(dense, spacing_mm, clear_mm)
    if lung_clear_mm is not None:
        keep &= ~dilate_mm(hu < -400.0, spacing_mm, lung_clear_mm)
    return np.argwhere(keep)


def fine_axes(half_box: int, grid_mm: Sequence[float]) -> list[np.ndarray]:
    """Coordinates (mm, relative to the centre voxel's centre) of the :data:`FINE_MM` grid under a
    ``(2 * half_box + 1)``³ block of the target grid, with room for the blur."""
    extent = (half_box + 1) * np.asarray(grid_mm) + 4.0
    return [np.arange(-e, e + FINE_MM / 2, FINE_MM) for e in extent]


def ellipsoid(axes: list[np.ndarray], centre_mm: np.ndarray, radius_mm: float, half_length_mm: float
              ) -> np.ndarray:
    """Bool on the fine grid: an ellipsoid with in-plane radius ``radius_mm`` and half-length along z."""
    z, y, x = np.meshgrid(*axes, indexing="ij", sparse=True)
    return (((z - centre_mm[0]) / half_length_mm) ** 2 + ((y - centre_mm[1]) / radius_mm) ** 2
            + ((x - centre_mm[2]) / radius_mm) ** 2) <= 1.0


def cylinder(axes: list[np.ndarray], point_mm: np.ndarray, direction: np.ndarray, radius_mm: float) -> np.ndarray:
    """Bool on the fine grid: an infinite cylinder of ``radius_mm`` around the line through ``point_mm``."""
    z, y, x = np.meshgrid(*axes, indexing="ij", sparse=True)
    d = [z - point_mm[0], y - point_mm[1], x - point_mm[2]]
    along = d[0] * direction[0] + d[1] * direction[1] + d[2] * direction[2]
    return d[0] ** 2 + d[1] ** 2 + d[2] ** 2 - along ** 2 <= radius_mm ** 2


def imaged_fraction(inside: np.ndarray, axes: list[np.ndarray], grid_mm: Sequence[float], half_box: int,
                    phase_mm: np.ndarray) -> np.ndarray:
    """Fraction of the object ``inside`` (bool on the fine grid ``axes``) in each voxel of the
    ``(2 * half_box + 1)``³ block of the target grid: the object is blurred by the in-plane PSF and the slice
    profile, sampled on the scanner grid (offset ``phase_mm``) and interpolated linearly at the target voxel
    centres."""
    blurred = ndi.gaussian_filter(inside.astype(np.float32), (0.0, PSF_SIGMA_MM / FINE_MM, PSF_SIGMA_MM / FINE_MM))
    blurred = ndi.uniform_filter1d(blurred, size=round(SCANNER_MM[0] / FINE_MM), axis=0)  # slice profile
    offsets = np.arange(-half_box, half_box + 1)
    targets = [offsets * g for g in grid_mm]  # target voxel centres (mm) per axis
    corners = []  # per axis: the two scanner samples around each target and the linear weight
    for t, s, p in zip(targets, SCANNER_MM, phase_mm, strict=True):
        k0 = np.floor((t - p) / s)
        w = (t - p) / s - k0
        corners.append((p + k0 * s, p + (k0 + 1) * s, w))
    out = np.zeros([len(t) for t in targets], np.float32)
    for bits in np.ndindex(2, 2, 2):
        coords = np.meshgrid(*[c[b] for c, b in zip(corners, bits, strict=True)], indexing="ij")
        weight = np.ones(out.shape, np.float32)
        for axis, (c, b) in enumerate(zip(corners, bits, strict=True)):
            shape = [1, 1, 1]
            shape[axis] = -1
            weight = weight * (c[2] if b else 1.0 - c[2]).reshape(shape)
        index = [(c - a[0]) / FINE_MM for c, a in zip(coords, axes, strict=True)]
        out += weight * ndi.map_coordinates(blurred, index, order=1, mode="constant")
    return out


def analytic_agatston(plaque: dict[str, float]) -> float:
    """The plaque's Agatston score from its geometry: volume / 3 mm times the weight of its HU (the limit of
    thin slices, each weighing its area times its thickness / 3 mm)."""
    volume = 4.0 / 3.0 * np.pi * plaque["radius_mm"] ** 2 * plaque["half_length_mm"]
    return volume / 3.0 * agatston_weight(plaque["plaque_hu"])


def draw_plaque(rng: np.random.Generator, large: bool = False) -> dict[str, float]:
    """HU, in-plane radius and half-length (mm) of one plaque: the phantoms' HU draw and their 2-25 mm² and 1-8 mm
    ranges (area uniform here; the phantoms draw it log-uniformly). ``large``: a heavy calcification as
    ``make_cac_phantom(large_plaques=True)`` draws it (350 or 600-1000 HU, 12-45 mm², 6-20 mm long)."""
    if large:
        plaque_hu = draw_heavy_plaque_hu(rng)
        area = float(np.exp(rng.uniform(*np.log(LARGE_PLAQUE_AREA_MM2))))
        half_length = float(rng.uniform(*LARGE_PLAQUE_LENGTH_MM)) / 2.0
    else:
        plaque_hu = draw_plaque_hu(rng)
        area = float(rng.uniform(2.0, 25.0))
        half_length = float(rng.uniform(0.5, 4.0))
    return {"plaque_hu": plaque_hu, "area_mm2": area, "radius_mm": float(np.sqrt(area / np.pi)),
            "half_length_mm": half_length}


def pick_sites(sites: np.ndarray, spacing_mm: Sequence[float], n: int, min_apart_mm: float,
               rng: np.random.Generator) -> list[np.ndarray]:
    """Up to ``n`` of ``sites`` (voxel indices ``(N, 3)``) in random order, each at least ``min_apart_mm`` from
    the others."""
    chosen: list[np.ndarray] = []
    spacing = np.asarray(spacing_mm, float)
    for index in rng.permutation(len(sites)):
        if len(chosen) >= n:
            break
        site = sites[index]
        if all(np.linalg.norm((site - c) * spacing) >= min_apart_mm for c in chosen):
            chosen.append(site)
    return chosen


@dataclass
class Insertion:
    """The image with its plaques, and per plaque its site, parameters and footprint (bool on the image's grid:
    the voxels holding at least 2 % of it, at least its own voxel)."""

    hu: np.ndarray
    sites: list[np.ndarray] = field(default_factory=list)
    plaques: list[dict[str, float]] = field(default_factory=list)
    footprints: list[np.ndarray] = field(default_factory=list)


def insert_plaques(hu: np.ndarray, spacing_mm: Sequence[float], sites: Sequence[np.ndarray], rng: np.random.Generator,
                   *, vessel: bool = True, large: bool = False) -> Insertion:
    """Insert one plaque (:func:`draw_plaque`) at each of ``sites`` into a float copy of ``hu``; returns the
    rounded int16 image with the plaques and their records. Sites must lie at least the block's half-size
    (:data:`HALF_BOX`, :data:`HALF_BOX_LARGE`) inside the image."""
    spacing = tuple(float(s) for s in spacing_mm)
    out = np.asarray(hu, np.float32).copy()
    half_box = HALF_BOX_LARGE if large else HALF_BOX
    axes = fine_axes(half_box, spacing)
    result = Insertion(out)
    for site in sites:
        plaque = draw_plaque(rng, large)
        phase = rng.uniform(0.0, 1.0, 3) * np.asarray(SCANNER_MM)
        centre = rng.uniform(-0.5, 0.5, 3) * np.asarray(spacing)
        inside = ellipsoid(axes, centre, plaque["radius_mm"], plaque["half_length_mm"])
        box = tuple(slice(int(c) - half_box, int(c) + half_box + 1) for c in site)
        f = imaged_fraction(inside, axes, spacing, half_box, phase)
        lumen = np.zeros_like(f)
        if vessel:  # the plaque sits in the wall of a vessel running in a random direction
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            radius = float(rng.uniform(*VESSEL_RADIUS_MM))
            normal = np.cross(direction, rng.normal(size=3))
            normal /= np.linalg.norm(normal)
            wall = cylinder(axes, centre - normal * radius, direction, radius) & ~inside
            lumen = imaged_fraction(wall, axes, spacing, half_box, phase)
            plaque["vessel_radius_mm"] = radius
        out[box] = (1.0 - f - lumen) * out[box] + lumen * LUMEN_HU + f * plaque["plaque_hu"]
        footprint = np.zeros(out.shape, bool)
        footprint[box] = f >= min(0.02, float(f.max()))
        result.sites.append(np.asarray(site))
        result.plaques.append(plaque)
        result.footprints.append(footprint)
    result.hu = np.rint(out).astype(np.int16)
    return result
