"""A synthetic non-gated chest CT for coronary artery calcium (CAC) scoring, with an analytic truth.

The chest (body, fat layer, muscle, ribs, spine, lungs, airways, abdomen) comes from :mod:`medhub.synth.chest`;
this module adds a sternum, mediastinal fat, the aorta and a layered heart (pericardium, epicardial fat,
myocardium with a septum, blood pool), the coronary arteries (left main, LAD, LCX, RCA) running in the
epicardial fat, calcified plaques on them and non-coronary distractors (aortic valve, mitral annulus, aortic wall,
a metal stent).

Axes and units follow :mod:`medhub.synth.chest`: arrays are ``(slices, rows, cols)`` = ``(z, y, x)``, axis 0 runs
foot to head (+z), axis 1 anterior to posterior (+y), axis 2 patient right to left (+x); the affine maps an index to
LPS mm; lengths are mm, areas mm², volumes mm³, intensities HU.

**Analytic truth.** Every calcification is an exact set of voxels with a constant HU per slice, painted after
the anatomy and before any blur or noise, so a noise-free, blur-free phantom holds exactly those voxels at exactly
those values. Scores are computed from this geometry (never from the image) for every scoring convention in
:data:`CONVENTIONS`; see :func:`analytic_scores` for the exact rules.

**Truth** (``CacPhantom.truth``, ``truth.json`` under ``"truth"``, schema ``medhub.cac_phantom.truth/1``):
``plaques`` — one entry per calcification: ``id``, ``kind`` (coronary | valve | annulus | aortic | node |
granuloma | stent), ``artery`` (LM | LAD | LCX | RCA, ``None`` for the others), ``is_coronary`` (only kind coronary; the
stent is flagged, never scored), ``edge_case`` (name or ``None``), ``hu`` (peak), ``hu_per_slice``, ``slices``,
``pixels_per_slice``, ``area_mm2_per_slice``, ``volume_mm3``, ``centroid_index`` and ``voxels`` ((slice, row,
col) indices); ``totals`` — per convention name of :data:`CONVENTIONS` (e.g. ``roi_8_mm2``, ``lesion_3d_px``):
``agatston``, ``volume_mm3``, ``mass_mg``, ``n_lesions``, ``risk_standard``, ``risk_deepcac``, coronary only;
``conventions`` (the :class:`Convention` fields of each name), ``spacing_mm``, ``slice_spacing_mm`` (Agatston's
Δz), ``slice_thickness_mm``, ``pixel_area_mm2``, ``calibration_factor_mg_per_cm3_per_hu``, ``label_names``,
``n_coronary_plaques``, ``has_coronary_calcium``, ``flags`` (contrast, stent, edge_cases, distractors) and, with
edge cases, ``edge_cases_missing``.

**Seeds.** :data:`TRAIN_SEEDS` and :data:`HELD_OUT_SEEDS` are disjoint ranges: train only on the first, evaluate
only on the second (:func:`random_phantom_params` draws the held-out parameter distribution from either).
"""

from __future__ import annotations

import heapq
import itertools
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from medhub.masks import crop_box
from medhub.synth.chest import HU, ChestGeometry, Grid, diaphragm_height

#: Seeds for training data. Never overlaps :data:`HELD_OUT_SEEDS`.
TRAIN_SEEDS = range(0, 10_000)
#: Seeds for held-out evaluation only.
HELD_OUT_SEEDS = range(1_000_000, 1_000_100)

BACKGROUND, HEART, CORONARY_CALCIUM, OTHER_CALCIUM, STENT = 0, 1, 2, 3, 4
LABEL_NAMES = {BACKGROUND: "background", HEART: "heart", CORONARY_CALCIUM: "coronary_calcium",
               OTHER_CALCIUM: "non_coronary_calcium", STENT: "stent"}

CAC_HU = {
    "epicardial_fat": -100.0,
    "mediastinal_fat": -90.0,
    "pericardium": 30.0,
    "myocardium": 45.0,
    "blood": 38.0,
    "blood_contrast": 300.0,
    "aortic_wall": 45.0,
    "sternum_cortex": 600.0,
    "sternum_marrow": 250.0,
    "stent": 2500.0,
    "rib_cortex": 650.0,
    "rib_marrow": 260.0,
    "cartilage": 110.0,
    "vertebral_cortex": 550.0,
    "vertebral_marrow": 230.0,
    "disc": 80.0,
    "posterior_elements": 450.0,
    "canal": 25.0,
}

#: Plaque HUs set mid-bin (Agatston density weights 1, 2, 3, 4); the top bin is drawn from 600-1000 HU.
MID_BIN_HU = (165.0, 250.0, 350.0)
#: Heavy coronary calcifications (``make_cac_phantom(large_plaques=True)``): length along z (mm) and in-plane area
#: per slice (mm²). One that does not fit (longer than the vessel's run across slices near the drawn point, wider
#: than its fat sleeve on a slice) is tried shorter and narrower.
LARGE_PLAQUE_LENGTH_MM, LARGE_PLAQUE_AREA_MM2 = (6.0, 20.0), (12.0, 45.0)
#: Edge-case HUs at the Agatston bin edges.
BIN_EDGE_HU = (129.0, 130.0, 199.0, 200.0, 299.0, 300.0, 399.0, 400.0)
#: Names of the edge-case lesions (truth ``edge_case``) that ``edge_cases=True`` adds.
EDGE_CASES = ("min_area", "under_min_area", *(f"bin_edge_{int(v)}" for v in BIN_EDGE_HU), "diagonal",
              "per_slice_peak", "sub130_slice")
#: Calcium mass calibration factor default (mg per cm³ per HU), the scoring helper's default.
DEFAULT_CALIBRATION = 0.743
#: Agatston's reference slice spacing (mm): scores at other spacings are scaled by spacing / 3 mm.
AGATSTON_REFERENCE_MM = 3.0
#: The chest anatomy is laid out for this physical field of view (z, y, x mm), whatever the grid's extent.
VIRTUAL_EXTENT_MM = (320.0, 360.0, 360.0)


# ------------------------------------------------------------------------------------------- grid
@dataclass(frozen=True)
class OffsetGrid(Grid):
    """A :class:`Grid` whose centre sits at ``offset`` (z, y, x mm) of the anatomy's frame.

    The chest's anatomy is laid out for a fixed adult-sized field of view; a smaller grid (a cardiac FOV, few
    slices) is a window on it centred near the heart, so organ sizes never shrink with the field of view.
    """

    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def half_extent(self) -> tuple[float, float, float]:
        # chest.py reaches "the top of the grid" (trachea) and "the bottom" (bowel) through this: cover both the
        # window and the whole virtual chest, so a small window shows the same anatomy as a big one.
        return tuple(max(n * s / 2.0 + abs(o), v / 2.0) for n, s, o, v in
                     zip(self.shape, self.spacing, self.offset, VIRTUAL_EXTENT_MM, strict=True))  # type: ignore

    def coords(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        z, y, x = Grid.coords(self)
        oz, oy, ox = (np.float32(o) for o in self.offset)
        return z + oz, y + oy, x + ox

    def affine(self) -> np.ndarray:
        a = Grid.affine(self)
        a[:3, 3] += (self.offset[2], self.offset[1], self.offset[0])
        return a

    def index_of(self, z: float, y: float, x: float) -> tuple[int, int, int]:
        return Grid.index_of(self, z - self.offset[0], y - self.offset[1], x - self.offset[2])

    def slab(self, k0: int, k1: int) -> OffsetGrid:
        """The sub-grid of slices ``k0:k1`` (same coordinates)."""
        z = self.axis_coords(0)
        centre = (z[k0] + z[k1 - 1]) / 2.0
        return OffsetGrid((k1 - k0, self.shape[1], self.shape[2]), self.spacing,
                          (float(centre), self.offset[1], self.offset[2]))

    def axis_coords(self, axis: int) -> np.ndarray:
        """Voxel-centre coordinates (mm, float64) along one axis."""
        n, s = self.shape[axis], self.spacing[axis]
        return (np.arange(n) - (n - 1) / 2.0) * s + self.offset[axis]


def virtual_geometry() -> ChestGeometry:
    """Adult-sized chest geometry, independent of the grid (body about 306 mm wide, 223 mm deep)."""
    shape = tuple(int(e) for e in VIRTUAL_EXTENT_MM)
    # the carina seen where it is (cac 0.13.1): our heart top is measured from it, on patients and phantoms alike
    geometry = ChestGeometry.for_grid(Grid(shape, (1.0, 1.0, 1.0)))  # type: ignore[arg-type]
    return replace(geometry, carinal_ridge=True)


# ------------------------------------------------------------------------------------------- heart geometry
@dataclass(frozen=True)
class HeartGeometry:
    """The heart as a tilted ellipsoid with nested layers (mm, anatomy frame z, y, x).

    ``axes[0]`` is the long axis from the base (posterior, right, superior) to the apex (anterior, left,
    inferior); ``axes[1]`` points anteriorly, ``axes[2]`` completes the frame towards the patient's right.
    """

    center: tuple[float, float, float]
    radii: tuple[float, float, float]
    axes: tuple[tuple[float, float, float], ...]
    pericardium: float = 1.5
    fat: float = 5.0
    myocardium: float = 10.0
    septum_half: float = 5.0
    vessel_radius: float = 1.8
    groove_fat: float = 4.5  # fat around the coronaries, beyond the lumen (mm)
    paracardiac_fat: float = 3.0  # mediastinal fat between the pericardium and the lungs (mm)

    @classmethod
    def draw(cls, rng: np.random.Generator) -> HeartGeometry:
        long_axis = np.array([-0.35, -0.62, 0.70]) + rng.normal(0.0, 0.04, 3)
        long_axis /= np.linalg.norm(long_axis)
        ant = np.array([0.0, -1.0, 0.0]) - long_axis * (-long_axis[1])
        ant /= np.linalg.norm(ant)
        third = np.cross(long_axis, ant)
        if third[2] > 0:  # make the third axis point to the patient's right so that RCA is on +phi
            third = -third
        # z: the heart rests on the diaphragm and its top (the aortic root) lies about 2 cm below the carina
        center = (-22.0 + rng.uniform(-6, 6), -22.0 + rng.uniform(-5, 5), 18.0 + rng.uniform(-6, 6))
        s = rng.uniform(0.92, 1.08)
        radii = (62.0 * s, 50.0 * s, 45.0 * s)
        return cls(center=center, radii=radii, axes=(tuple(long_axis), tuple(ant), tuple(third)),
                   fat=float(rng.uniform(4.5, 7.0)), myocardium=float(rng.uniform(9.0, 12.0)),
                   vessel_radius=float(rng.uniform(1.5, 2.0)), groove_fat=float(rng.uniform(3.5, 6.0)),
                   paracardiac_fat=float(rng.uniform(2.0, 4.0)))

    @property
    def vessel_depth(self) -> float:
        """Depth (mm below the outer surface) of the coronary centrelines: the middle of the epicardial fat."""
        return self.pericardium + self.fat / 2.0

    def surface_point(self, u: float, phi: float, depth: float) -> np.ndarray:
        """Point (z, y, x mm) on the surface ``depth`` mm inside the outer one, at long-axis fraction ``u``
        (-1 base, +1 apex) and angle ``phi`` around the long axis (0 anterior, +pi/2 patient right)."""
        r = [max(R - depth, 1.0) for R in self.radii]
        w = math.sqrt(max(0.0, 1.0 - u * u))
        local = (u * r[0], w * math.cos(phi) * r[1], w * math.sin(phi) * r[2])
        return np.asarray(self.center) + sum(c * np.asarray(a) for c, a in zip(local, self.axes, strict=True))

    def bbox(self, grid: OffsetGrid, margin: float = 4.0) -> tuple[slice, slice, slice]:
        r = max(self.radii) + margin
        return box_slices(grid, np.asarray(self.center) - r, np.asarray(self.center) + r)

    def local(self, grid: OffsetGrid, box: tuple[slice, slice, slice]) -> list[np.ndarray]:
        """Local (long, anterior, third) coordinates (mm, float32) of the voxels in ``box``."""
        z, y, x = (grid.axis_coords(k)[box[k]].astype(np.float32) - np.float32(self.center[k]) for k in range(3))
        z, y, x = z[:, None, None], y[None, :, None], x[None, None, :]
        return [np.float32(a[0]) * z + np.float32(a[1]) * y + np.float32(a[2]) * x for a in self.axes]

    def inside(self, local: list[np.ndarray], depth: float) -> np.ndarray:
        """Voxels inside the surface ``depth`` mm below the outer one."""
        q = sum((c / np.float32(max(R - depth, 1.0))) ** 2 for c, R in zip(local, self.radii, strict=True))
        return q <= 1.0


def box_slices(grid: OffsetGrid, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice, slice]:
    """Index slices of the grid voxels whose centres may lie in the box [lo, hi] (z, y, x mm), clipped."""
    out = []
    for k in range(3):
        c = grid.axis_coords(k)
        a = int(np.searchsorted(c, lo[k] - grid.spacing[k]))
        b = int(np.searchsorted(c, hi[k] + grid.spacing[k]))
        out.append(slice(max(0, a), min(grid.shape[k], max(a, b))))
    return tuple(out)  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------- coronaries
#: Spacing (mm) of the points along the coronary centrelines.
PATH_STEP_MM = 0.5
#: Arteries of every phantom and the share of plaques each gets; with branches (:class:`CoronaryAnatomy`) the
#: first diagonal, the first obtuse marginal and the posterior descending artery take a share too.
ARTERY_WEIGHTS = {"LAD": 0.4, "RCA": 0.3, "LCX": 0.2, "LM": 0.1}
BRANCHED_ARTERY_WEIGHTS = {"LAD": 0.3, "RCA": 0.22, "LCX": 0.15, "LM": 0.08, "D1": 0.09, "OM1": 0.08, "PDA": 0.08}


@dataclass(frozen=True)
class CoronaryAnatomy:
    """Course of the coronaries on the heart (:class:`HeartGeometry`'s frame: ``u`` the long-axis fraction from
    -1 at the base to +1 at the apex, ``phi`` the angle round the long axis, 0 anterior, +pi/2 patient right).

    The defaults are the one fixed course of the standard phantoms: every vessel at the middle of the epicardial
    fat, the atrioventricular (AV) groove at ``u = -0.42``. :meth:`draw` varies it as real hearts do: where the AV
    groove lies, how far the LAD, LCX and RCA reach, how deep their grooves cut into the myocardium, how they
    meander, and side branches (first diagonal D1, first obtuse marginal OM1, posterior descending PDA); with
    ``base_fat_mm`` a fat pad fills the heart's base round the left main and the proximal arteries. They test
    whether a network relies on the standard anatomy (cac 0.5.0 does not: ``benchmarks/RESULTS.md``).
    """

    av_u: float = -0.42
    lad_phi: tuple[float, float] = (-0.35, -0.15)  # at the bifurcation and at the LAD's end
    lad_end_u: float = 0.88
    lcx_end_phi: float = -2.5
    rca_end_phi: float = 2.9
    rca_rise_u: float = 0.08  # how far towards the apex the RCA's end lies below the AV groove
    groove_mm: float = 0.0  # extra depth (mm) of a vessel at the deepest point of its groove
    meander_mm: float = 0.0  # amplitude (mm) of a vessel's meander across its groove
    branches: bool = False
    detail_seed: int = 0  # phases of the depth profiles and meanders, and where the branches leave
    base_fat_mm: float = 0.0  # extra radius (mm) of the fat round the left main and the proximal arteries
    base_fat_length_mm: float = 0.0  # how far along LAD, LCX and RCA that fat reaches (mm)

    @classmethod
    def draw(cls, rng: np.random.Generator) -> CoronaryAnatomy:
        return cls(av_u=float(rng.uniform(-0.55, -0.30)),
                   lad_phi=(float(rng.uniform(-0.5, -0.2)), float(rng.uniform(-0.3, 0.0))),
                   lad_end_u=float(rng.uniform(0.7, 0.95)), lcx_end_phi=float(rng.uniform(-2.9, -1.6)),
                   rca_end_phi=float(rng.uniform(2.4, 3.2)), rca_rise_u=float(rng.uniform(0.0, 0.15)),
                   groove_mm=float(rng.uniform(0.0, 9.0)), meander_mm=float(rng.uniform(0.0, 4.0)),
                   branches=bool(rng.random() < 0.8), detail_seed=int(rng.integers(0, 2**31)))


def coronary_paths(h: HeartGeometry, aortic_root: np.ndarray, root_radius: float,
                   anatomy: CoronaryAnatomy = CoronaryAnatomy(), step_mm: float = PATH_STEP_MM,
                   groove_scale: float = 1.0
                   ) -> dict[str, np.ndarray]:
    """Centrelines (N, 3) z, y, x mm of the left main, LAD, LCX and RCA (and with ``anatomy.branches`` D1, OM1
    and PDA), sampled every ``step_mm``.

    LAD runs in the anterior interventricular groove from the base to near the apex; LCX and RCA run in the
    AV groove around the left and the right side; the left main and the RCA's first segment join them to the
    aortic root. ``groove_scale`` scales the extra groove depth: 0 gives the same courses at the middle of the
    epicardial fat (where the fat that fills a groove starts).
    """
    d = h.vessel_depth
    u_av = anatomy.av_u
    detail = np.random.default_rng(anatomy.detail_seed)
    r_mean = float(np.mean(h.radii[1:]))

    def wave(n: int, amplitude: float) -> np.ndarray:
        t = np.linspace(0.0, 1.0, n)
        return amplitude * np.sin(2 * np.pi * detail.uniform(0.7, 2.0) * t + detail.uniform(0, 2 * np.pi))

    def depth_profile(n: int, share: float) -> np.ndarray:
        """Extra depth (mm) along a vessel: deepest where its groove is, eased in from its start."""
        if anatomy.groove_mm <= 0:
            return np.zeros(n)
        t = np.linspace(0.0, 1.0, n)
        ease = np.clip(t / 0.15, 0.0, 1.0)
        return groove_scale * share * anatomy.groove_mm * ease * (0.55 + wave(n, 0.45))

    def curve(us: np.ndarray, phis: np.ndarray, extra: np.ndarray) -> np.ndarray:
        return np.array([h.surface_point(float(u), float(p), d + float(e))
                         for u, p, e in zip(us, phis, extra, strict=True)])

    def resample(points: np.ndarray) -> np.ndarray:
        seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
        s = np.concatenate([[0.0], np.cumsum(seg)])
        t = np.arange(0.0, s[-1] + 1e-9, step_mm)
        return np.stack([np.interp(t, s, points[:, k]) for k in range(3)], axis=1)

    n = 200
    lad_u, lad_phi = np.linspace(u_av, anatomy.lad_end_u, n), np.linspace(*anatomy.lad_phi, n)
    lcx_u, lcx_phi = np.full(n, u_av), np.linspace(-0.35, anatomy.lcx_end_phi, n)
    rca_u, rca_phi = np.linspace(u_av, u_av + anatomy.rca_rise_u, n), np.linspace(0.35, anatomy.rca_end_phi, n)
    if anatomy.meander_mm > 0:  # across the groove: around the long axis for the LAD, along it for LCX and RCA
        lad_phi = lad_phi + wave(n, anatomy.meander_mm / r_mean)
        lcx_u = lcx_u + wave(n, anatomy.meander_mm / h.radii[0])
        rca_u = rca_u + wave(n, anatomy.meander_mm / h.radii[0])
    courses = {"LAD": (lad_u, lad_phi, depth_profile(n, 0.6)), "LCX": (lcx_u, lcx_phi, depth_profile(n, 1.0)),
               "RCA": (rca_u, rca_phi, depth_profile(n, 1.0))}
    if anatomy.branches:
        def branch(parent: str, t0: tuple[float, float], du: float, dphi: float, share: float) -> tuple:
            pu, pphi, pextra = courses[parent]
            i = min(n - 1, int(detail.uniform(*t0) * n))
            us = np.linspace(pu[i], min(0.92, pu[i] + du), n)
            phis = np.linspace(pphi[i], pphi[i] + dphi, n) + wave(n, anatomy.meander_mm / r_mean)
            return us, phis, np.maximum(pextra[i] * np.linspace(1.0, 0.0, n), depth_profile(n, share))

        courses["D1"] = branch("LAD", (0.15, 0.4), detail.uniform(0.4, 0.7), -detail.uniform(0.7, 1.2), 0.3)
        courses["OM1"] = branch("LCX", (0.3, 0.6), detail.uniform(0.6, 0.9), detail.uniform(-0.2, 0.2), 0.3)
        courses["PDA"] = branch("RCA", (0.99, 1.0), detail.uniform(0.5, 0.9), detail.uniform(0.05, 0.3), 0.8)
    paths = {name: curve(*course) for name, course in courses.items()}
    # the ostia lie on the aortic root's wall; the first millimetres run through the fat at the heart's base

    def ostium(target: np.ndarray) -> np.ndarray:
        d = target - aortic_root
        return aortic_root + (root_radius - 1.0) * d / np.linalg.norm(d)

    bif, rca_start = paths["LAD"][0], paths["RCA"][0]
    out = {"LM": resample(np.array([ostium(bif), bif])), "LAD": resample(paths["LAD"]),
           "LCX": resample(paths["LCX"]), "RCA": resample(np.concatenate([[ostium(rca_start)], paths["RCA"]]))}
    out.update({name: resample(pts) for name, pts in paths.items() if name not in out})
    return out


def segment_distance2(grid: OffsetGrid, box: tuple[slice, slice, slice], p0: np.ndarray, p1: np.ndarray
                      ) -> np.ndarray:
    """Squared distance (mm², float32) from the voxel centres in ``box`` to the segment p0-p1 (z, y, x mm)."""
    z, y, x = (grid.axis_coords(k)[box[k]].astype(np.float32) for k in range(3))
    z, y, x = z[:, None, None] - np.float32(p0[0]), y[None, :, None] - np.float32(p0[1]), \
        x[None, None, :] - np.float32(p0[2])
    d = (np.asarray(p1) - np.asarray(p0)).astype(np.float32)
    length2 = float(d @ d) or 1.0
    t = np.clip((z * d[0] + y * d[1] + x * d[2]) / np.float32(length2), 0.0, 1.0)
    return (z - t * d[0]) ** 2 + (y - t * d[1]) ** 2 + (x - t * d[2]) ** 2


def tube_box(grid: OffsetGrid, p0: np.ndarray, p1: np.ndarray, radius: float, distance2: bool = False
             ) -> tuple[tuple[slice, slice, slice], np.ndarray]:
    """(box, mask) of the voxels within ``radius`` mm of the segment p0-p1, on the segment's bounding box only.

    With ``distance2`` the squared distances (mm², float32) are returned instead of the mask. Points far outside
    the grid (the aorta running on below it) are fine: the box is clipped.
    """
    p0, p1 = np.asarray(p0, np.float64), np.asarray(p1, np.float64)
    box = box_slices(grid, np.minimum(p0, p1) - radius, np.maximum(p0, p1) + radius)
    d2 = segment_distance2(grid, box, p0, p1)
    return box, d2 if distance2 else d2 <= np.float32(radius * radius)


def polyline_tube(grid: OffsetGrid, points: np.ndarray, radius: float, every: int = 4,
                  within: tuple[slice, slice, slice] | None = None) -> np.ndarray:
    """Voxels within ``radius`` mm of a polyline (sub-sampled every ``every`` points).

    Each segment is evaluated on its own small bounding box, so long curves on 512² grids stay cheap. With
    ``within`` (a box of the grid) the mask of that box only is returned.
    """
    within = within or tuple(slice(0, n) for n in grid.shape)
    out = np.zeros(tuple(s.stop - s.start for s in within), bool)
    idx = list(range(0, len(points), every))
    if idx[-1] != len(points) - 1:
        idx.append(len(points) - 1)
    r2 = np.float32(radius * radius)
    for a, b in itertools.pairwise(idx):
        p0, p1 = points[a], points[b]
        box = box_slices(grid, np.minimum(p0, p1) - radius, np.maximum(p0, p1) + radius)
        box = tuple(slice(max(s.start, w.start), min(s.stop, w.stop)) for s, w in zip(box, within, strict=True))
        if any(s.start >= s.stop for s in box):
            continue
        local = tuple(slice(s.start - w.start, s.stop - w.start) for s, w in zip(box, within, strict=True))
        out[local] |= segment_distance2(grid, box, p0, p1) <= r2
    return out


# ------------------------------------------------------------------------------------------- plaques
@dataclass
class Calcification:
    """One calcification: exact voxels and a constant HU per slice."""

    id: int
    kind: str  # coronary, valve, annulus, aortic, stent
    artery: str | None
    voxels: dict[int, np.ndarray]  # slice index -> (n, 2) rows, cols
    hu: dict[int, float]  # slice index -> HU

    @property
    def is_coronary(self) -> bool:
        return self.kind == "coronary"


def grow_blob(allowed: np.ndarray, seed: tuple[int, int], n: int, rng: np.random.Generator,
              spacing: tuple[float, float], diagonal_only: bool = False) -> np.ndarray:
    """Grow a compact 4-connected set of ``n`` pixels from ``seed`` inside the 2D mask ``allowed``.

    Pixels join in order of distance (mm) from the seed, with a small random jitter for irregular outlines;
    the result is 4-connected so that every connectivity convention sees one lesion. Returns (m, 2) indices,
    ``m <= n`` when ``allowed`` runs out. ``diagonal_only`` instead makes a chain of ``n`` pixels that touch only
    at corners (a staircase), the one shape whose lesion count differs between 4- and 8-connectivity.
    """
    rows, cols = allowed.shape
    sr, sc = seed
    if diagonal_only:
        pts = [(sr + k, sc + k) for k in range(n)]
        return np.array([p for p in pts if 0 <= p[0] < rows and 0 <= p[1] < cols], dtype=np.int64).reshape(-1, 2)
    dy, dx = spacing
    taken: set[tuple[int, int]] = set()
    heap = [(0.0, sr, sc)]
    seen = {(sr, sc)}
    while heap and len(taken) < n:
        _, r, c = heapq.heappop(heap)
        taken.add((r, c))
        for rr, cc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
            if 0 <= rr < rows and 0 <= cc < cols and (rr, cc) not in seen and allowed[rr, cc]:
                seen.add((rr, cc))
                dist = math.hypot((rr - sr) * dy, (cc - sc) * dx) + float(rng.uniform(0.0, 0.6)) * min(dy, dx)
                heapq.heappush(heap, (dist, rr, cc))
    return np.array(sorted(taken), dtype=np.int64).reshape(-1, 2)


# ------------------------------------------------------------------------------------------- scoring truth
@dataclass(frozen=True)
class Convention:
    """How lesions are formed and counted; the fields mirror :class:`medhub.cac.scoring.ScoringConvention`.

    ``mode``: ``"roi"`` (lesions are components of mask ∩ HU >= 130), ``"lesion"`` (components of the mask; every
    voxel counts, sub-130 ones included, weight from the peak) or ``"mapped"`` (components of the mask, only voxels
    >= 130 HU count). ``connectivity``: ``"8"``, ``"4"`` (2D per slice), ``"3d"`` (26-), ``"3d6"`` (6-connected).
    ``min_area_mm2`` / ``min_area_px``: inclusive minimum of the lesion's largest cross-section (``None``: off).
    """

    mode: str
    connectivity: str
    min_area_mm2: float | None = 1.0
    min_area_px: int | None = None

    def scoring_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``medhub.cac.scoring.ScoringConvention``."""
        return {"mode": self.mode, "connectivity": self.connectivity, "min_area_mm2": self.min_area_mm2,
                "min_area_px": self.min_area_px}


#: Minimum area in pixels for the ``*_px`` conventions: DeepCAC drops objects of 3 pixels or fewer.
MIN_AREA_PX = 4
#: Every convention the truth is computed for: ``{mode}_{connectivity}_{mm2|px}``.
CONVENTIONS: dict[str, Convention] = {
    f"{mode}_{conn}_{unit}": Convention(mode, conn, 1.0 if unit == "mm2" else None,
                                        None if unit == "mm2" else MIN_AREA_PX)
    for mode in ("roi", "lesion", "mapped") for conn in ("8", "4", "3d", "3d6") for unit in ("mm2", "px")
}
#: The classic clinical convention; ``lesion_8_px`` is DeepCAC's.
STANDARD_CONVENTION = "roi_8_mm2"
DEEPCAC_CONVENTION = "lesion_8_px"
_AREA_RTOL = 1e-9


def agatston_weight(peak_hu: float) -> int:
    """Agatston density weight of a lesion's peak HU: < 130 -> 0, 130-199 -> 1, 200-299 -> 2, 300-399 -> 3,
    >= 400 -> 4 (lower edges inclusive)."""
    return int(sum(peak_hu >= edge for edge in (130.0, 200.0, 300.0, 400.0)))


def risk_standard(agatston: float) -> str:
    """Standard risk category: 0, 1-99, 100-399, >=400 (any positive score below 100 is 1-99)."""
    if agatston <= 0:
        return "0"
    if agatston < 100:
        return "1-99"
    return "100-399" if agatston < 400 else ">=400"


def risk_deepcac(agatston: float) -> str:
    """DeepCAC's risk category: 0, 1-100, 101-300, >300 (upper edges inclusive)."""
    if agatston <= 0:
        return "0"
    if agatston <= 100:
        return "1-100"
    return "101-300" if agatston <= 300 else ">300"


def _structure(connectivity: str) -> np.ndarray:
    if connectivity == "3d":
        return np.ones((3, 3, 3), bool)
    if connectivity == "3d6":
        return ndi.generate_binary_structure(3, 1)
    # 2D lesions: a structure with empty planes above and below never joins slices
    out = np.zeros((3, 3, 3), bool)
    out[1] = np.ones((3, 3), bool) if connectivity == "8" else ndi.generate_binary_structure(2, 1)
    return out


def analytic_scores(calc_hu: np.ndarray, mask: np.ndarray, spacing: tuple[float, float, float],
                    convention: Convention, calibration_factor: float = DEFAULT_CALIBRATION) -> dict[str, Any]:
    """Scores of the noise-free calcium ``calc_hu`` (HU where ``mask``) under ``convention``.

    Rules, stated once (the same as :mod:`medhub.cac.scoring`, written independently as a cross-check):

    * lesions are the connected components (per slice, or in 3D) of ``mask ∩ HU >= 130`` (``roi``) or of
      ``mask`` (``lesion``, ``mapped``); the counted voxels are all of them, except ``mapped`` which counts only
      those >= 130 HU;
    * a lesion's weight comes from the peak HU of its counted voxels (0 below 130: never counted); it counts if
      its largest cross-section reaches the minimum area;
    * Agatston = Σ counted area (mm²) × weight × (slice spacing / 3 mm) — Δz is the spacing, never the thickness;
    * volume (mm³) = counted voxels × pixel area × slice spacing;
    * mass (mg) = ``calibration_factor`` (mg per cm³ per HU) × Σ HU × voxel volume (mm³) / 1000.
    """
    dz, dy, dx = spacing
    px = dy * dx
    calcified = mask & (calc_hu >= 130.0)
    base = calcified if convention.mode == "roi" else mask
    lab, _ = ndi.label(base, _structure(convention.connectivity))
    agatston = volume = mass = 0.0
    n_lesions = 0
    for i, box in enumerate(ndi.find_objects(lab), start=1):
        if box is None:
            continue
        counted = lab[box] == i
        if convention.mode == "mapped":
            counted &= calcified[box]
        n = int(counted.sum())
        if n == 0:
            continue
        values = calc_hu[box][counted].astype(np.float64)
        weight = agatston_weight(float(values.max()))
        largest = int(counted.sum(axis=(1, 2)).max())
        ok = weight > 0
        if convention.min_area_mm2 is not None:
            ok &= largest * px >= convention.min_area_mm2 * (1 - _AREA_RTOL)
        if convention.min_area_px is not None:
            ok &= largest >= convention.min_area_px
        if not ok:
            continue
        n_lesions += 1
        agatston += n * px * weight * dz / AGATSTON_REFERENCE_MM
        volume += n * px * dz
        mass += float(values.sum()) * px * dz
    mass *= calibration_factor / 1000.0
    return {
        "agatston": agatston, "volume_mm3": volume, "mass_mg": mass, "n_lesions": n_lesions,
        "risk_standard": risk_standard(agatston), "risk_deepcac": risk_deepcac(agatston),
    }


# ------------------------------------------------------------------------------------------- the phantom
@dataclass
class CacPhantom:
    """A generated CAC phantom (arrays ``(slices, rows, cols)``, LPS affine, mm, HU)."""

    hu: np.ndarray  # int16 HU
    affine: np.ndarray  # 4x4 index -> LPS mm
    labels: np.ndarray  # uint8: 0 bg, 1 heart, 2 coronary calcium, 3 non-coronary calcium, 4 stent
    heart_mask: np.ndarray  # bool, the whole heart inside the pericardium
    spacing: tuple[float, float, float]  # (slice spacing, row, col) mm
    slice_thickness_mm: float
    truth: dict  # JSON-ready
    params: dict  # JSON-ready generation parameters
    coronary_region: np.ndarray | None = None  # bool: fat sleeves around the coronaries, stent excluded
    masks: dict[str, np.ndarray] = field(default_factory=dict)  # named structure masks


#: In-plane half-size (mm) of the region round the heart's centre that a field of view always shows.
HEART_VIEW_MM = 75.0


def _grid_for(shape: tuple[int, int, int], spacing: tuple[float, float, float],
              heart_center: tuple[float, float, float]) -> OffsetGrid:
    """Window on the virtual chest: centred on the chest when it fits, shifted towards the heart when it does not."""
    offset = []
    for k, (n, s) in enumerate(zip(shape, spacing, strict=True)):
        half, vhalf = n * s / 2.0, VIRTUAL_EXTENT_MM[k] / 2.0
        if k == 0:
            # the whole heart with about a centimetre below it, then as much as fits of the great vessels and the
            # carina above it (a window shorter than the heart is centred on it)
            target = heart_center[0] + float(np.clip(half - 60.0, 0.0, 30.0))
        else:
            # in-plane the window stays centred on the patient, as a scanner's, unless the heart (with a margin
            # of HEART_VIEW_MM) would leave it: shifting a 29 cm window towards the heart cut one chest wall to
            # a sliver along the image edge, which no body mask can close around the lung
            lo, hi = heart_center[k] + HEART_VIEW_MM - half, heart_center[k] - HEART_VIEW_MM + half
            target = float(np.clip(0.0, lo, hi)) if lo <= hi else heart_center[k]
        room = max(0.0, vhalf - half)
        offset.append(float(np.clip(target, -room, room)) if k == 0 else float(target))
    return OffsetGrid(shape, spacing, tuple(offset))  # type: ignore[arg-type]


#: Default phantom grid: ``(slices, rows, columns)`` and ``(slice spacing, row, column)`` mm.
DEFAULT_SHAPE, DEFAULT_SPACING_MM = (96, 192, 192), (2.5, 1.5, 1.5)


def make_cac_phantom(seed: int, *, shape: tuple[int, int, int] = DEFAULT_SHAPE,
                     spacing: tuple[float, float, float] = DEFAULT_SPACING_MM, slice_thickness_mm: float | None = None,
                     noise_sd: float = 0.0, noise_corr_mm: float = 1.0, blur_mm: float = 0.0,
                     n_plaques: int | None = None, distractors: bool = True, stent: bool = False,
                     contrast: bool = False, edge_cases: bool = False, coronary_variation: bool = False,
                     base_fat: bool = False, large_plaques: bool = False, nodes: bool = False,
                     calibration_factor: float = DEFAULT_CALIBRATION) -> CacPhantom:
    """Generate a CAC phantom.

    Parameters
    ----------
    seed:
        Everything random (anatomy jitter, plaques, noise) derives from it; same arguments, same phantom.
    shape, spacing:
        ``(slices, rows, cols)`` and ``(slice spacing, row, col)`` mm. The anatomy is adult-sized whatever the
        field of view; a small field of view is centred near the heart.
    slice_thickness_mm:
        Reconstructed slice thickness (mm), written as DICOM SliceThickness; defaults to the slice spacing.
        Thicker than the spacing is an overlapping reconstruction: with ``blur_mm > 0`` it widens the z blur;
        Agatston's Δz is always the spacing.
    noise_sd, noise_corr_mm:
        Noise SD (HU) of Gaussian white noise filtered with a Gaussian of sigma ``noise_corr_mm`` (mm, all axes)
        and rescaled to exactly ``noise_sd`` over the volume.
    blur_mm:
        Gaussian PSF sigma (mm). 0 gives the ideal image whose calcium voxels equal the truth exactly.
    n_plaques:
        Coronary plaques; ``None`` draws 0-6.
    distractors:
        Aortic-valve, mitral-annulus and aortic-wall calcium (label 3).
    stent:
        A 2500 HU stent segment in a coronary (label 4, excluded from scoring).
    contrast:
        Contrast-enhanced variant: blood pool, aorta and coronary lumens about 300 HU.
    edge_cases:
        Adds the edge-case lesions (minimum area, bin-edge HUs, diagonal-only, per-slice peaks).
    coronary_variation:
        Coronaries whose course, groove depth and side branches vary with the seed (:meth:`CoronaryAnatomy.draw`,
        from its own random stream: everything else equals the phantom without it); otherwise the one standard
        course.
    base_fat:
        A fat pad deep in the heart's base round the left main and the first 15-35 mm of LAD, LCX and RCA, 4-10 mm
        wider than their grooves (own random stream too), as real hearts hold round the aortic root.
    large_plaques:
        Adds 1-3 heavy coronary calcifications (:data:`LARGE_PLAQUE_LENGTH_MM` long, :data:`LARGE_PLAQUE_AREA_MM2`
        per slice, 350 or 600-1000 HU), drawn from their own random stream after the standard plaques, so every
        other calcification stays where it is without them. The issue's plaques (2-25 mm² on 1-4 slices) are the
        evaluation distribution; heavy calcium of patients with high scores is longer and wider.
    nodes:
        Adds 1-3 calcified mediastinal lymph nodes round the aortic root (kind ``node``) and 0-2 calcified
        granulomas under the diaphragm just below the heart (kind ``granuloma``), label 3, from their own random
        stream: dense non-coronary calcium just above and below the heart.
    calibration_factor:
        Mass calibration (mg per cm³ per HU) for the truth's mass scores.
    """
    shape = tuple(int(n) for n in shape)  # type: ignore[assignment]
    spacing = tuple(float(s) for s in spacing)  # type: ignore[assignment]
    thickness = float(spacing[0] if slice_thickness_mm is None else slice_thickness_mm)
    params = dict(seed=int(seed), shape=list(shape), spacing=list(spacing), slice_thickness_mm=thickness,
                  noise_sd=float(noise_sd), noise_corr_mm=float(noise_corr_mm), blur_mm=float(blur_mm),
                  n_plaques=n_plaques, distractors=bool(distractors), stent=bool(stent), contrast=bool(contrast),
                  edge_cases=bool(edge_cases), coronary_variation=bool(coronary_variation), base_fat=bool(base_fat),
                  large_plaques=bool(large_plaques), nodes=bool(nodes), calibration_factor=float(calibration_factor))
    ss = np.random.SeedSequence(int(seed))
    rng_anat, rng_chest, rng_plaque, rng_noise = (np.random.default_rng(s) for s in ss.spawn(4))

    h = HeartGeometry.draw(rng_anat)
    grid = _grid_for(shape, spacing, h.center)  # type: ignore[arg-type]
    g = virtual_geometry()
    hu, masks = paint_thorax(grid, g, rng_chest, heart=h)
    anatomy = (CoronaryAnatomy.draw(np.random.default_rng([int(seed), 0xC0A])) if coronary_variation
               else CoronaryAnatomy())
    if base_fat:
        rng_base = np.random.default_rng([int(seed), 0xBA5E])
        anatomy = replace(anatomy, base_fat_mm=float(rng_base.uniform(4.0, 10.0)),
                          base_fat_length_mm=float(rng_base.uniform(15.0, 35.0)))
    m = paint_mediastinum(hu, masks, grid, g, h, contrast, anatomy)
    calcs, coronary_region, stent_mask = place_calcium(
        hu, grid, m, rng_plaque, n_plaques=n_plaques, distractors=distractors, stent=stent, contrast=contrast,
        edge_cases=edge_cases,
        large_plaques=np.random.default_rng([int(seed), 0x1A5E]) if large_plaques else None,
        nodes=np.random.default_rng([int(seed), 0x40DE]) if nodes else None)

    labels = np.zeros(grid.shape, np.uint8)
    labels[m.heart] = HEART
    for c in calcs:
        lab = STENT if c.kind == "stent" else CORONARY_CALCIUM if c.is_coronary else OTHER_CALCIUM
        for k, px in c.voxels.items():
            labels[k, px[:, 0], px[:, 1]] = lab
    truth = phantom_truth(calcs, grid, thickness, calibration_factor)
    if edge_cases:
        present = {p["edge_case"] for p in truth["plaques"]}
        # under_min_area cannot exist when one pixel is already >= 1 mm²; others can fail to find room
        truth["edge_cases_missing"] = [e for e in EDGE_CASES if e not in present]
    truth["flags"] = {"contrast": bool(contrast), "stent": stent_mask is not None, "edge_cases": bool(edge_cases),
                      "distractors": bool(distractors)}
    hu = degrade(hu, grid.spacing, thickness, blur_mm, noise_sd, noise_corr_mm, rng_noise)
    masks["heart"] = m.heart
    masks["bone"] = m.bone
    return CacPhantom(hu=hu, affine=grid.affine(), labels=labels, heart_mask=m.heart, spacing=grid.spacing,
                      slice_thickness_mm=thickness, truth=truth, params=params, coronary_region=coronary_region,
                      masks=masks)


def degrade(hu: np.ndarray, spacing: tuple[float, float, float], thickness: float, blur_mm: float,
            noise_sd: float, noise_corr_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Blur (Gaussian PSF plus the slice profile), add correlated noise, round to int16 HU.

    The slice sensitivity profile is modelled as the extra z variance of a box of ``thickness`` over the painted
    box of one spacing, ``(T² - S²) / 12``; it is applied only with a PSF (``blur_mm > 0``) so that
    ``blur_mm == 0`` always gives the ideal image. Noise is white Gaussian noise filtered with a Gaussian of
    sigma ``noise_corr_mm`` (all axes) and scaled by the filter's exact variance gain, so its SD is ``noise_sd``
    away from the volume's faces.
    """
    out = hu
    if blur_mm > 0:
        extra = max(0.0, thickness ** 2 - spacing[0] ** 2) / 12.0
        sigma = (math.sqrt(blur_mm ** 2 + extra) / spacing[0], blur_mm / spacing[1], blur_mm / spacing[2])
        out = gaussian_blur(hu, sigma)
    if noise_sd > 0:
        noise = white_noise(hu.shape, rng)
        gain = 1.0
        if noise_corr_mm > 0:
            sigma_n = tuple(noise_corr_mm / s for s in spacing)
            noise = gaussian_blur(noise, sigma_n, out=noise)  # type: ignore[arg-type]
            gain = math.prod(float(np.sum(_gaussian_weights(sg) ** 2)) for sg in sigma_n)
        noise *= np.float32(noise_sd / math.sqrt(gain))
        if out is hu:
            out = hu.copy()
        out += noise
        del noise
    np.rint(out, out=out)
    np.clip(out, -1024, 3071, out=out)
    return out.astype(np.int16)


_BLOCK = 16  # slices per block for threaded noise and filtering; fixed so results never depend on the threads


def _threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _gaussian_weights(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """The 1D kernel :func:`scipy.ndimage.gaussian_filter1d` uses (radius ``int(truncate * sigma + 0.5)``)."""
    radius = int(truncate * sigma + 0.5)
    if sigma <= 0 or radius == 0:
        return np.ones(1)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def white_noise(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Standard normal float32 noise, generated in fixed slice blocks by independent child generators, in threads."""
    out = np.empty(shape, np.float32)
    starts = list(range(0, shape[0], _BLOCK))
    children = [np.random.default_rng(s) for s in np.random.SeedSequence(int(rng.integers(2 ** 63))).spawn(len(starts))]

    def fill(i: int) -> None:
        k = starts[i]
        children[i].standard_normal(out=out[k:k + _BLOCK], dtype=np.float32)

    with ThreadPoolExecutor(_threads()) as pool:
        list(pool.map(fill, range(len(starts))))
    return out


def gaussian_blur(a: np.ndarray, sigma: tuple[float, float, float], out: np.ndarray | None = None) -> np.ndarray:
    """Separable Gaussian filter (float32, ``reflect`` mode) equal to :func:`scipy.ndimage.gaussian_filter`,
    run in threads: the in-plane pass over slice blocks, the z pass over row blocks."""
    src = a
    out = np.empty(a.shape, np.float32) if out is None else out

    def inplane(k: int) -> None:
        sl = slice(k, k + _BLOCK)
        ndi.gaussian_filter(src[sl], (0.0, sigma[1], sigma[2]), output=out[sl])

    def along_z(j: int) -> None:
        sl = (slice(None), slice(j, j + _BLOCK))
        out[sl] = ndi.gaussian_filter1d(out[sl], sigma[0], axis=0, output=np.float32)

    with ThreadPoolExecutor(_threads()) as pool:
        if sigma[1] > 0 or sigma[2] > 0:
            list(pool.map(inplane, range(0, a.shape[0], _BLOCK)))
        elif out is not a:
            out[...] = a
        if sigma[0] > 0:
            list(pool.map(along_z, range(0, a.shape[1], _BLOCK)))
    return out


def phantom_truth(calcs: list[Calcification], grid: OffsetGrid, thickness: float,
                  calibration_factor: float) -> dict[str, Any]:
    """The JSON-ready truth: every calcification and the coronary totals per scoring convention."""
    dz, dy, dx = grid.spacing
    px = dy * dx
    plaques = []
    for c in calcs:
        ks = sorted(c.voxels)
        voxels = np.concatenate([np.c_[np.full(len(c.voxels[k]), k), c.voxels[k]] for k in ks])
        plaques.append({
            "id": c.id, "kind": c.kind, "artery": c.artery, "is_coronary": c.is_coronary,
            "edge_case": getattr(c, "edge_case", None),
            "hu": max(c.hu.values()), "hu_per_slice": [c.hu[k] for k in ks], "slices": ks,
            "pixels_per_slice": [len(c.voxels[k]) for k in ks],
            "area_mm2_per_slice": [len(c.voxels[k]) * px for k in ks],
            "volume_mm3": sum(len(v) for v in c.voxels.values()) * px * dz,
            "centroid_index": [float(v) for v in np.mean(voxels, axis=0)],
            "voxels": voxels.tolist(),
        })
    calc_hu, mask, _ = coronary_arrays(calcs, grid.shape)
    totals = {name: analytic_scores(calc_hu, mask, grid.spacing, conv, calibration_factor)
              for name, conv in CONVENTIONS.items()}
    coronary = [p for p in plaques if p["is_coronary"]]
    return {
        "schema": "medhub.cac_phantom.truth/1",
        "spacing_mm": list(grid.spacing), "slice_spacing_mm": dz, "slice_thickness_mm": thickness,
        "pixel_area_mm2": px, "agatston_reference_mm": AGATSTON_REFERENCE_MM,
        "calibration_factor_mg_per_cm3_per_hu": calibration_factor,
        "label_names": {str(k): v for k, v in LABEL_NAMES.items()},
        "conventions": {name: c.scoring_kwargs() for name, c in CONVENTIONS.items()},
        "standard_convention": STANDARD_CONVENTION, "deepcac_convention": DEEPCAC_CONVENTION,
        "plaques": plaques,
        "n_coronary_plaques": len(coronary),
        "has_coronary_calcium": bool(coronary),
        "totals": totals,
    }


def coronary_arrays(calcs: list[Calcification], shape: tuple[int, int, int]
                    ) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]]:
    """(calcium HU, mask, offset) of the coronary calcifications on their bounding box of the grid (with a
    one-voxel margin, so connectivity sees the same neighbours as on the full grid)."""
    cor = [c for c in calcs if c.is_coronary]
    if not cor:
        return np.zeros((1, 1, 1), np.float32), np.zeros((1, 1, 1), bool), (0, 0, 0)
    allpx = np.concatenate([np.c_[np.full(len(v), k), v] for c in cor for k, v in c.voxels.items()])
    lo = np.maximum(allpx.min(axis=0) - 1, 0)
    hi = np.minimum(allpx.max(axis=0) + 2, shape)
    calc_hu = np.zeros(tuple(hi - lo), np.float32)
    mask = np.zeros(calc_hu.shape, bool)
    for c in cor:
        for k, v in c.voxels.items():
            calc_hu[k - lo[0], v[:, 0] - lo[1], v[:, 1] - lo[2]] = c.hu[k]
            mask[k - lo[0], v[:, 0] - lo[1], v[:, 1] - lo[2]] = True
    return calc_hu, mask, tuple(int(v) for v in lo)  # type: ignore[return-value]


#: In-plane PSF (Gaussian sigma, mm) of clinical reconstruction kernels: a standard soft-tissue kernel has its 10 %
#: MTF near 6.5 lp/cm, i.e. sigma = sqrt(ln 10 / 2) / (pi * 0.65 lp/mm) = 0.53 mm; sharper kernels reach 0.3 mm.
#: FWHM 0.7-1.2 mm.
CLINICAL_PSF_SIGMA_MM = (0.3, 0.5)
#: A deliberately blurrier range (FWHM 1.2-2.1 mm, softer than clinical kernels) for stress tests.
STRESS_PSF_SIGMA_MM = (0.5, 0.9)


def random_phantom_params(seed: int, held_out: bool = False,
                          psf_sigma_mm: tuple[float, float] = CLINICAL_PSF_SIGMA_MM) -> dict[str, Any]:
    """Keyword arguments for :func:`make_cac_phantom` drawn from the issue's held-out distribution.

    Noise SD 20-30 HU, correlated (0.6-1.2 mm); PSF sigma drawn from ``psf_sigma_mm`` (default
    :data:`CLINICAL_PSF_SIGMA_MM`); distractors always; slice spacing 1-3 mm
    (thickness equal or up to 1.5x, overlapping); about 20 % without coronary calcium; about 8 % with a stent
    and 8 % contrast-enhanced. ``held_out`` checks that ``seed`` is in :data:`HELD_OUT_SEEDS` (else in
    :data:`TRAIN_SEEDS`), so the two sets can never be mixed up by accident.
    """
    seeds = HELD_OUT_SEEDS if held_out else TRAIN_SEEDS
    if seed not in seeds:
        raise ValueError(f"seed {seed} is not in {'HELD_OUT_SEEDS' if held_out else 'TRAIN_SEEDS'} ({seeds})")
    rng = np.random.default_rng([int(seed), 0xCAC])
    dz = float(rng.choice([1.0, 1.25, 1.5, 2.0, 2.5, 3.0]))
    thickness = dz if rng.random() < 0.6 else float(min(5.0, round(dz * rng.uniform(1.2, 1.5) * 4) / 4))
    px = float(rng.uniform(0.6, 0.8))
    n_slices = round(rng.uniform(150.0, 190.0) / dz)
    return {
        "seed": int(seed),
        "shape": (n_slices, 512, 512),
        "spacing": (dz, px, px),
        "slice_thickness_mm": thickness,
        "noise_sd": float(rng.uniform(20.0, 30.0)),
        "noise_corr_mm": float(rng.uniform(0.6, 1.2)),
        "blur_mm": float(rng.uniform(*psf_sigma_mm)),
        "n_plaques": 0 if rng.random() < 0.2 else int(rng.integers(1, 7)),
        "distractors": True,
        "stent": bool(rng.random() < 0.08),
        "contrast": bool(rng.random() < 0.08),
        "edge_cases": False,
    }


def write_cac_phantom(phantom: CacPhantom, folder: str | Path, *, dicom: bool = True, nifti: bool = True
                      ) -> dict[str, Path]:
    """Write the phantom: ``dicom/`` (CT series), ``ct.nii.gz``, ``labels.nii.gz``, ``heart.nii.gz`` and
    ``truth.json`` (truth plus the generation parameters). Returns name -> path.

    The DICOM series is in its own sub-folder so that case discovery on it finds exactly one case.
    """
    from medhub.io.nifti import write_volume
    from medhub.io.records import write_json
    from medhub.io.volume import Volume
    from medhub.synth.dicom_series import write_series

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    seed = int(phantom.params.get("seed", 0))
    if dicom:
        write_series(phantom.hu, phantom.affine, folder / "dicom", modality="CT", seed=seed,
                     slice_thickness=phantom.slice_thickness_mm,
                     series_description=f"Synthetic CAC phantom seed {seed}", file_names="numbered")
        out["dicom"] = folder / "dicom"
    if nifti:
        vol = Volume(array=phantom.hu, affine=phantom.affine, modality="CT")
        out["ct"] = write_volume(vol, folder / "ct.nii.gz")
        out["labels"] = write_volume(vol, folder / "labels.nii.gz", phantom.labels)
        out["heart"] = write_volume(vol, folder / "heart.nii.gz", phantom.heart_mask.astype(np.uint8))
    out["truth"] = write_json(folder / "truth.json", {"truth": phantom.truth, "params": phantom.params})
    return out


# ------------------------------------------------------------------------------------------- anatomy painting
def rib_masks(grid: OffsetGrid, g: ChestGeometry, period_mm: float = 26.0, width_mm: float = 10.0,
              slope: float = 0.22, thickness_mm: float = 8.0, cartilage_mm: float = 45.0
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rib bone, rib marrow, costal cartilage): bands outside the cavity that descend along their course.

    A rib's height z falls by ``slope`` mm per mm of arc from the spine round to the front, so an axial slice cuts
    each side's ribs into a few short segments, as on real CT (a band that followed the body outline would show
    long arcs). The anterior ``cartilage_mm`` of each rib is costal cartilage (~110 HU, not bone).
    """
    _, y, x = grid.coords()
    y2, x2 = y[0, :, 0], x[0, 0, :]
    yy, xx = np.meshgrid(y2, x2, indexing="ij")

    def ell(grow: float) -> np.ndarray:
        return ((yy / (g.cavity_b + grow)) ** 2 + (xx / (g.cavity_a + grow)) ** 2) <= 1.0

    shell = ell(thickness_mm) & ~ell(0.0)
    core = ell(thickness_mm - 2.0) & ~ell(2.0)
    rr, cc = np.nonzero(shell)
    theta = np.arctan2(np.abs(xx[rr, cc]), yy[rr, cc])  # 0 at the posterior midline, pi at the anterior
    arc = theta * 0.5 * (g.cavity_a + g.cavity_b)
    z = grid.axis_coords(0).astype(np.float32)[:, None]
    phase = np.mod(z + np.float32(slope) * arc[None].astype(np.float32), np.float32(period_mm))
    band = (phase < width_mm) & (z > g.z_recess - 20.0) & (z < g.z_apex + 10.0)
    inner = band & (phase > 2.0) & (phase < width_mm - 2.0) & core[rr, cc][None]
    front = (np.pi - theta) * 0.5 * (g.cavity_a + g.cavity_b) < cartilage_mm
    out = [np.zeros(grid.shape, bool) for _ in range(3)]
    out[0][:, rr, cc] = band & ~front[None]
    out[1][:, rr, cc] = inner & ~front[None]
    out[2][:, rr, cc] = band & front[None]
    return out[0], out[1], out[2]


def paint_spine(hu: np.ndarray, grid: OffsetGrid, g: ChestGeometry, disc_period_mm: float = 27.0,
                disc_mm: float = 6.0) -> np.ndarray:
    """Paint the vertebral column (in place) and return its bone mask.

    Vertebral bodies with a thin cortex and marrow, separated by discs, plus the neural arch round the spinal canal
    and a spinous process behind it; at the position of :func:`medhub.synth.chest.spine_masks`' column.
    """
    _, y, x = grid.coords()
    y2, x2 = y[0], x[0]
    r = 0.16 * g.cavity_a
    cy = g.cavity_b - 1.1 * r
    body = ((y2 - cy) / (0.95 * r)) ** 2 + (x2 / r) ** 2 <= 1.0
    marrow = ((y2 - cy) / (0.95 * r - 2.0)) ** 2 + (x2 / (r - 2.0)) ** 2 <= 1.0
    ay = cy + r + 6.0
    arch = (((y2 - ay) / 10.0) ** 2 + (x2 / 11.0) ** 2 <= 1.0)
    canal = (((y2 - ay) / 6.0) ** 2 + (x2 / 7.0) ** 2 <= 1.0)
    spinous = (y2 > ay + 8.0) & (y2 < ay + 30.0) & (np.abs(x2) < 3.5)
    z = grid.axis_coords(0)
    disc = np.mod(z, disc_period_mm) < disc_mm
    for k in range(grid.shape[0]):
        sl = hu[k]
        if disc[k]:
            sl[body] = CAC_HU["disc"]
        else:
            sl[body] = CAC_HU["vertebral_cortex"]
            sl[marrow] = CAC_HU["vertebral_marrow"]
        sl[(arch | spinous) & ~body] = CAC_HU["posterior_elements"]
        sl[canal & ~body] = CAC_HU["canal"]
    bone2 = (body | arch | spinous) & ~(canal & ~body)
    out = np.zeros(grid.shape, bool)
    out[:] = bone2[None]
    out[disc] &= ~body[None]
    return out


def paint_thorax(grid: OffsetGrid, g: ChestGeometry, rng: np.random.Generator, heart: HeartGeometry | None = None
                 ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The chest of :func:`medhub.synth.chest.paint_chest` without its heart, built for big grids.

    With ``heart`` the lungs wrap that heart, the aorta and the oesophagus as in real anatomy (a thin layer of
    mediastinal fat between them, the lungs reaching the midline behind the heart) instead of leaving a slab of
    mediastinum from the sternum to the spine around :func:`medhub.synth.chest.heart_mask`.

    The same pieces in the same order, but the z-invariant layers are painted from one 2D template and the
    abdominal organs and the lungs are computed only on the slabs of slices that can hold them, which makes a
    512 x 512 x 300 grid several times faster than painting every structure on the full grid.
    """
    from medhub.synth.chest import (
        RIGHT_LUNG,
        airway_masks,
        body_masks,
        bowel_masks,
        lung_region,
        stomach_masks,
        vessel_mask,
    )

    z = grid.axis_coords(0)
    masks: dict[str, np.ndarray] = {}
    b = body_masks(grid, g)
    template = np.full(grid.shape[1:], HU["air"], np.float32)
    for name, value in (("body", HU["fat"]), ("below_fat", HU["muscle"]), ("below_muscle", HU["soft"])):
        template[b[name][0]] = value
    _, y, x = grid.coords()
    table = (y[0] > g.body_b + 10.0) & (y[0] < g.body_b + 16.0) & (np.abs(x[0]) < 0.9 * g.body_a)
    template[table] = HU["table"]
    hu = np.empty(grid.shape, np.float32)
    hu[:] = template
    masks["body"] = np.ascontiguousarray(b["body"])
    ribs, rib_marrow, cartilage = rib_masks(grid, g)
    np.copyto(hu, np.float32(CAC_HU["rib_cortex"]), where=ribs)
    np.copyto(hu, np.float32(CAC_HU["rib_marrow"]), where=rib_marrow)
    np.copyto(hu, np.float32(CAC_HU["cartilage"]), where=cartilage)
    masks["ribs"], masks["costal_cartilage"] = ribs, cartilage
    dia2 = diaphragm_height(grid, g)
    for key in ("liver", "stomach", "stomach_gas", "bowel", "bowel_gas", "lung_vessels", "right_lung", "left_lung"):
        masks[key] = np.zeros(grid.shape, bool)
    # abdomen: only the slices below the highest point of the diaphragm
    k_ab = int(np.searchsorted(z, float(dia2.max()) - g.diaphragm, side="right"))
    if k_ab > 0:
        sub = grid.slab(0, k_ab)
        zs = sub.coords()[0]
        below = b["cavity"][:k_ab] & (zs < dia2[None] - g.diaphragm)
        liver = below & (x < 0.3 * g.cavity_a) & (y < 0.55 * g.cavity_b)
        view = hu[:k_ab]
        view[liver] = HU["liver"]
        stomach, stomach_gas = stomach_masks(sub, g)
        view[stomach] = HU["fluid"]
        view[stomach_gas] = HU["air"]
        loops, bowel_gas = bowel_masks(sub, g, rng)
        view[loops] = HU["soft"]
        view[bowel_gas] = HU["air"]
        for key, mk in (("liver", liver), ("stomach", stomach), ("stomach_gas", stomach_gas), ("bowel", loops),
                        ("bowel_gas", bowel_gas)):
            masks[key][:k_ab] = mk
    # lungs: only between the costophrenic recesses and the apices
    k0 = int(np.searchsorted(z, g.z_recess, side="left"))
    k1 = int(np.searchsorted(z, g.z_apex, side="right"))
    outer, lumen = airway_masks(grid, g)
    if k1 > k0:
        sub = grid.slab(k0, k1)
        if heart is None:
            lungs = {side: lung_region(sub, g, side) for side in (RIGHT_LUNG, 3 - RIGHT_LUNG)}
        else:
            organs = mediastinal_organs(sub, g, heart)
            lungs = {side: lung_region(sub, g, side, exclude=organs, mediastinum_half_width=MEDIAL_LUNG_MM)
                     for side in (RIGHT_LUNG, 3 - RIGHT_LUNG)}
        view = hu[k0:k1]
        for mk in lungs.values():
            view[mk] = HU["lung"]
        vessels = vessel_mask(sub, g, lungs, rng)
        any_lung = lungs[1] | lungs[2]
        view[vessels & any_lung] = HU["vessel"]
        masks["lung_vessels"][k0:k1] = vessels & any_lung
        for side, mk in lungs.items():
            masks["right_lung" if side == RIGHT_LUNG else "left_lung"][k0:k1] = mk & ~outer[k0:k1]
    hu[outer] = HU["soft"]
    hu[lumen] = HU["air"]
    masks["airway"] = outer
    spine = paint_spine(hu, grid, g)
    masks["spine"] = spine
    return hu, masks


#: Half-width (mm) of the midline strip the lungs leave free when they wrap the mediastinal organs.
MEDIAL_LUNG_MM = 8.0


def aortic_root(h: HeartGeometry) -> np.ndarray:
    """Centre (z, y, x mm) of the aortic root, inside the heart's base."""
    return h.surface_point(-0.62, 0.15, 0.45 * h.radii[1])


def oesophagus_segment(grid: OffsetGrid, g: ChestGeometry) -> tuple[np.ndarray, np.ndarray, float]:
    """(top, bottom, radius mm) of the oesophagus, behind the trachea and the heart."""
    return (np.array([grid.half_extent[0] + 5.0, g.trachea_y + 14.0, 6.0]),
            np.array([g.z_dome_left - 10.0, g.trachea_y + 22.0, 12.0]), 7.0)


def mediastinal_organs(grid: OffsetGrid, g: ChestGeometry, h: HeartGeometry) -> np.ndarray:
    """What the lungs wrap around: the heart, the aorta and the oesophagus, each grown by a thin fat layer."""
    out = np.zeros(grid.shape, bool)
    pad = h.paracardiac_fat
    box = h.bbox(grid, margin=pad + 4.0)
    if all(b.stop > b.start for b in box):
        out[box] = h.inside(h.local(grid, box), -pad)
    tubes = [(p0, p1, r + 2.0) for p0, p1, r in aorta_segments(g, aortic_root(h))]
    p0, p1, r = oesophagus_segment(grid, g)
    tubes.append((p0, p1, r + 2.0))
    for p0, p1, r in tubes:
        tbox, mk = tube_box(grid, p0, p1, r)
        if all(b.stop > b.start for b in tbox):
            out[tbox] |= mk
    return out


@dataclass
class Mediastinum:
    """What the calcium placement needs to know about the painted anatomy."""

    heart: np.ndarray  # bool, whole heart
    bone: np.ndarray  # bool, ribs, spine, sternum
    paths: dict[str, np.ndarray]  # coronary centrelines (N, 3) mm
    sleeves: dict[str, np.ndarray]  # per artery: bool fat sleeve (lumen included) inside the pericardium
    lumens: dict[str, np.ndarray]  # per artery: bool lumen
    aorta: list[tuple[np.ndarray, np.ndarray, float]]  # segments (p0, p1, outer radius mm)
    aortic_root: np.ndarray  # z, y, x mm
    aortic_root_radius: float
    aortic_axis: np.ndarray  # unit vector of the ascending aorta at the root
    aorta_outer: np.ndarray  # bool, aortic lumen and wall
    geometry: HeartGeometry
    anatomy: CoronaryAnatomy
    base_fat: np.ndarray | None = None  # bool: the fat pad at the heart's base (see CoronaryAnatomy.base_fat_mm)


def sternum_masks(grid: OffsetGrid, g: ChestGeometry) -> tuple[np.ndarray, np.ndarray]:
    """(sternum, marrow): a flat bone in the anterior midline, from the manubrium to the xiphoid."""
    z, y, x = (grid.axis_coords(k) for k in range(3))
    cy = -g.cavity_b + 2.0
    m2 = ((y[:, None] - cy) / 7.0) ** 2 + (x[None, :] / 15.0) ** 2 <= 1.0
    i2 = ((y[:, None] - cy) / 4.5) ** 2 + (x[None, :] / 12.0) ** 2 <= 1.0
    zr = (z > g.z_dome_left - 25.0) & (z < g.z_carina + 45.0)
    return zr[:, None, None] & m2[None], zr[:, None, None] & i2[None]


def aorta_segments(g: ChestGeometry, root: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Ascending aorta, arch and descending aorta as tube segments (z, y, x mm; outer radius mm)."""
    top = g.z_carina + 30.0
    # the arch runs in front of the trachea and past its left side, clear of it (cac 0.13.1; until then it cut
    # through the trachea, which looked on CT as if the trachea ended about 2 cm above the carina)
    pts = [
        (root, 15.0),
        (np.array([top - 12.0, -18.0, -16.0]), 15.0),
        (np.array([top, -14.0, 2.0]), 13.5),
        (np.array([top + 2.0, 2.0, 30.0]), 12.5),
        (np.array([top - 8.0, 44.0, 28.0]), 12.0),
        (np.array([g.z_carina - 30.0, 50.0, 30.0]), 11.5),
        (np.array([-1e3, 48.0, 26.0]), 11.0),
    ]
    return [(a, b, max(ra, rb)) for (a, ra), (b, rb) in itertools.pairwise(pts)]


def paint_mediastinum(hu: np.ndarray, masks: dict[str, np.ndarray], grid: OffsetGrid, g: ChestGeometry,
                      h: HeartGeometry, contrast: bool, anatomy: CoronaryAnatomy = CoronaryAnatomy()
                      ) -> Mediastinum:
    """Paint the sternum, mediastinal fat, oesophagus, aorta, heart and coronaries over the chest (in place).

    Work on the full grid is limited to a few masked copies; everything cardiac happens in the heart's box.
    """
    from medhub.synth.chest import body_masks

    blood = CAC_HU["blood_contrast"] if contrast else CAC_HU["blood"]
    z = grid.axis_coords(0).astype(np.float32)
    dia2 = diaphragm_height(grid, g)
    cavity2 = np.ascontiguousarray(body_masks(grid, g)["cavity"][0])
    sternum, marrow = sternum_masks(grid, g)
    bone = masks["ribs"] | masks["spine"] | sternum
    # real mediastina are mostly fat: everything between the lungs that is not an organ
    k0 = int(np.searchsorted(z, float(dia2.min())))
    medi = np.zeros(grid.shape, bool)
    medi[k0:] = (cavity2[None] & (z[k0:, None, None] > dia2[None]) & ~masks["right_lung"][k0:]
                 & ~masks["left_lung"][k0:] & ~masks["airway"][k0:] & ~bone[k0:])
    np.copyto(hu, np.float32(CAC_HU["mediastinal_fat"]), where=medi)
    oes_box, oes = tube_box(grid, *oesophagus_segment(grid, g))
    np.copyto(hu[oes_box], np.float32(HU["soft"]), where=oes & medi[oes_box])
    np.copyto(hu, np.float32(CAC_HU["sternum_cortex"]), where=sternum)
    np.copyto(hu, np.float32(CAC_HU["sternum_marrow"]), where=marrow)
    masks["sternum"] = sternum

    # the heart: nested layers in its bounding box (``sub`` is a view into ``hu``)
    box = h.bbox(grid)
    loc = h.local(grid, box)
    near_bone = ndi.binary_dilation(bone[box], iterations=2)
    above = z[box[0], None, None] > dia2[None, box[1], box[2]] + 2.0
    ellipsoid_box = h.inside(loc, 0.0)
    heart_box = ellipsoid_box & above & cavity2[None, box[1], box[2]] & ~near_bone
    sub = hu[box]
    depth_myo = h.pericardium + h.fat
    np.copyto(sub, np.float32(CAC_HU["pericardium"]), where=heart_box)
    inside_peri = heart_box & h.inside(loc, h.pericardium)
    np.copyto(sub, np.float32(CAC_HU["epicardial_fat"]), where=inside_peri)
    myo = heart_box & h.inside(loc, depth_myo)
    np.copyto(sub, np.float32(CAC_HU["myocardium"]), where=myo)
    septum = np.abs(loc[2] + np.float32(0.12 * h.radii[2])) < np.float32(h.septum_half)
    pool = myo & h.inside(loc, depth_myo + h.myocardium) & ~septum
    np.copyto(sub, np.float32(blood), where=pool)
    masks["blood_pool"] = np.zeros(grid.shape, bool)
    masks["blood_pool"][box] = pool

    # aorta: wall then lumen, over the heart's base (the root lies inside the pericardium)
    root = aortic_root(h)
    segs = aorta_segments(g, root)
    aorta_outer = np.zeros(grid.shape, bool)
    aorta_lumen = np.zeros(grid.shape, bool)
    for p0, p1, r in segs:
        sbox, d2 = tube_box(grid, p0, p1, r, distance2=True)
        outer = (d2 <= np.float32(r * r)) & ~bone[sbox]
        aorta_outer[sbox] |= outer
        aorta_lumen[sbox] |= outer & (d2 <= np.float32((r - 2.0) ** 2))
    np.copyto(hu, np.float32(CAC_HU["aortic_wall"]), where=aorta_outer)
    np.copyto(hu, np.float32(blood), where=aorta_lumen)
    masks["aorta"], masks["aorta_lumen"] = aorta_outer, aorta_lumen
    # the aortic root inside the pericardium is heart (as in DeepCAC's masks); the aorta outside it is not
    heart_box &= ~(aorta_outer[box] & ~ellipsoid_box)
    heart = np.zeros(grid.shape, bool)
    heart[box] = heart_box

    axis = segs[0][1] - segs[0][0]
    axis = axis / np.linalg.norm(axis)
    r_root = segs[0][2]
    paths = coronary_paths(h, root, r_root, anatomy)
    sleeves, lumens = {}, {}
    keep = inside_peri & ~aorta_lumen[box]
    for name, pts in paths.items():
        sleeve_box = polyline_tube(grid, pts, h.vessel_radius + 2.2, within=box) & keep
        sleeves[name] = np.zeros(grid.shape, bool)
        sleeves[name][box] = sleeve_box
        lumens[name] = np.zeros(grid.shape, bool)
        lumens[name][box] = polyline_tube(grid, pts, h.vessel_radius, within=box) & sleeve_box
    # epicardial fat gathers in the grooves the arteries run in: paint it wider than the scoring sleeve; a deep
    # groove is fat from the epicardial layer down to its vessel, and keeps a thin wall round the blood pool
    grooves = [paths]
    if anatomy.groove_mm > 0:
        grooves += [coronary_paths(h, root, r_root, anatomy, groove_scale=f) for f in (0.0, 0.5)]
        keep = keep & ~h.inside(loc, depth_myo + h.myocardium - 2.0)
    for courses in grooves:
        for pts in courses.values():
            groove = polyline_tube(grid, pts, h.vessel_radius + h.groove_fat, within=box) & keep
            np.copyto(sub, np.float32(CAC_HU["epicardial_fat"]), where=groove)
    base_fat = None
    if anatomy.base_fat_mm > 0:
        # real hearts hold fat deep in their base, round the aortic root and the proximal coronaries
        radius = h.vessel_radius + h.groove_fat + anatomy.base_fat_mm
        n_proximal = max(2, round(anatomy.base_fat_length_mm / PATH_STEP_MM))
        pad = np.zeros(sub.shape, bool)
        for name in ("LM", "LAD", "LCX", "RCA"):
            pts = paths[name] if name == "LM" else paths[name][:n_proximal]
            pad |= polyline_tube(grid, pts, radius, within=box)
        pad &= keep & ~aorta_outer[box]
        np.copyto(sub, np.float32(CAC_HU["epicardial_fat"]), where=pad)
        base_fat = np.zeros(grid.shape, bool)
        base_fat[box] = pad
    for name in paths:
        np.copyto(sub, np.float32(blood if contrast else HU["vessel"]), where=lumens[name][box])
    masks["coronary_lumen"] = np.logical_or.reduce(list(lumens.values()))
    return Mediastinum(heart=heart, bone=bone, paths=paths, sleeves=sleeves, lumens=lumens, aorta=segs,
                       aortic_root=root, aortic_root_radius=r_root, aortic_axis=axis,
                       aorta_outer=aorta_outer, geometry=h, anatomy=anatomy, base_fat=base_fat)


# ------------------------------------------------------------------------------------------- calcium placement
@dataclass
class _Placer:
    """Places voxel-exact calcifications without letting two of them touch (one voxel gap in 3D, two in-plane)."""

    grid: OffsetGrid
    rng: np.random.Generator
    occupied: np.ndarray
    calcs: list[Calcification] = field(default_factory=list)

    def slice_of(self, zmm: float) -> int:
        return round((zmm - self.grid.offset[0]) / self.grid.spacing[0] + (self.grid.shape[0] - 1) / 2.0)

    def pixel_of(self, p: np.ndarray) -> tuple[int, int, int]:
        k, r, c = self.grid.index_of(float(p[0]), float(p[1]), float(p[2]))
        return int(k), int(r), int(c)

    def inside(self, k: int, r: int, c: int) -> bool:
        n0, n1, n2 = self.grid.shape
        return 0 <= k < n0 and 0 <= r < n1 and 0 <= c < n2

    def add(self, kind: str, artery: str | None, footprint: dict[int, np.ndarray], hu: dict[int, float],
            edge_case: str | None = None) -> Calcification | None:
        footprint = {k: v for k, v in footprint.items() if len(v)}
        if not footprint:
            return None
        c = Calcification(id=len(self.calcs) + 1, kind=kind, artery=artery, voxels=footprint,
                          hu={k: hu[k] for k in footprint})
        c.edge_case = edge_case  # type: ignore[attr-defined]
        self.calcs.append(c)
        n0, n1, n2 = self.grid.shape
        # keep the next calcification at least one voxel away in 3D (so no connectivity joins them) and about
        # 2 mm away in-plane (so they read as separate lesions)
        gap = max(1, round(2.0 / min(self.grid.spacing[1:])))
        for k, px in footprint.items():
            for kk in range(max(0, k - 1), min(n0, k + 2)):
                for dr in range(-gap, gap + 1):
                    for dc in range(-gap, gap + 1):
                        self.occupied[kk, np.clip(px[:, 0] + dr, 0, n1 - 1), np.clip(px[:, 1] + dc, 0, n2 - 1)] = True
        return c

    def blob(self, region: np.ndarray, seeds: dict[int, tuple[int, int]], n_px: dict[int, int],
             diagonal: bool = False) -> dict[int, np.ndarray]:
        """Per slice, grow ``n_px[k]`` pixels from ``seeds[k]`` inside ``region`` minus what is taken."""
        out = {}
        for k, (r, c) in seeds.items():
            allowed = region[k] & ~self.occupied[k]
            if not allowed[r, c]:
                continue
            px = grow_blob(allowed, (r, c), n_px[k], self.rng, self.grid.spacing[1:], diagonal_only=diagonal)
            if diagonal and not all(allowed[a, b] for a, b in px):
                continue
            out[k] = px
        return out


def _crossings(placer: _Placer, pts: np.ndarray, i: int, n_slices: int, wall_mm: float
               ) -> dict[int, tuple[int, int]]:
    """Seeds on up to ``n_slices`` consecutive slices where the centreline near point ``i`` crosses them.

    Each seed is pushed ``wall_mm`` off the centreline (calcium sits in the vessel wall), in one random direction
    perpendicular to the vessel, so that the plaque is eccentric as in real arteries.
    """
    grid = placer.grid
    lo, hi = max(0, i - 30), min(len(pts), i + 31)
    window = pts[lo:hi]
    k0 = placer.slice_of(float(pts[i][0]))
    tangent = pts[min(i + 2, len(pts) - 1)] - pts[max(i - 2, 0)]
    tangent = tangent / (np.linalg.norm(tangent) or 1.0)
    v = placer.rng.normal(size=3)
    v -= tangent * (v @ tangent)
    v /= np.linalg.norm(v) or 1.0
    ks = [k0 + d for d in sorted(range(-n_slices, n_slices + 1), key=abs)]
    seeds: dict[int, tuple[int, int]] = {}
    for k in ks:
        if len(seeds) >= n_slices:
            break
        zk = (k - (grid.shape[0] - 1) / 2.0) * grid.spacing[0] + grid.offset[0]
        j = int(np.argmin(np.abs(window[:, 0] - zk)))
        if abs(window[j, 0] - zk) > 0.5 * grid.spacing[0]:
            continue
        if seeds and min(abs(k - kk) for kk in seeds) != 1:
            continue
        p = window[j] + wall_mm * v
        _, r, c = placer.pixel_of(np.array([zk, p[1], p[2]]))
        if placer.inside(k, r, c):
            seeds[k] = (r, c)
    return dict(sorted(seeds.items()))


def draw_plaque_hu(rng: np.random.Generator) -> float:
    """A coronary plaque's HU: one of :data:`MID_BIN_HU` or 600-1000 HU, each of the four bins equally likely."""
    b = int(rng.integers(0, 4))
    return float(MID_BIN_HU[b]) if b < 3 else float(round(rng.uniform(600.0, 1000.0)))


def draw_heavy_plaque_hu(rng: np.random.Generator) -> float:
    """A heavy calcification's HU (``large_plaques``): 350 HU (a quarter) or 600-1000 HU: heavy calcium is dense."""
    return float(MID_BIN_HU[2]) if rng.random() < 0.25 else float(round(rng.uniform(600.0, 1000.0)))


def _pixels_for(area_mm2: float, grid: OffsetGrid) -> int:
    return max(1, round(area_mm2 / (grid.spacing[1] * grid.spacing[2])))


def place_calcium(hu: np.ndarray, grid: OffsetGrid, m: Mediastinum, rng: np.random.Generator, *,
                  n_plaques: int | None, distractors: bool, stent: bool, contrast: bool, edge_cases: bool,
                  large_plaques: np.random.Generator | None = None, nodes: np.random.Generator | None = None
                  ) -> tuple[list[Calcification], np.ndarray, np.ndarray | None]:
    """Place coronary plaques, edge cases, the stent and distractors; paint them into ``hu`` (in place).
    ``large_plaques``, when given, is the random stream of the heavy calcifications placed after the standard
    plaques; ``nodes`` that of the calcified lymph nodes placed last (see :func:`make_cac_phantom`).

    Returns the calcifications, the coronary scoring region (fat sleeves, stent excluded) and the stent mask.
    """
    placer = _Placer(grid, rng, m.bone.copy())
    shares = BRANCHED_ARTERY_WEIGHTS if m.anatomy.branches else ARTERY_WEIGHTS
    arteries = tuple(shares)
    weights = np.array(list(shares.values()))
    px_area = grid.spacing[1] * grid.spacing[2]
    stent_mask = None

    def usable(name: str) -> np.ndarray:
        # the part of the centreline inside the grid, away from the ends
        pts = m.paths[name]
        ok = np.array([placer.inside(*placer.pixel_of(p)) for p in pts])
        ok[:6] = ok[-6:] = False
        return np.flatnonzero(ok)

    idx = {a: usable(a) for a in arteries}

    def try_plaque(n_slices: int, areas: list[float], hus: list[float], artery: str | None = None,
                   diagonal: bool = False, edge_case: str | None = None, exact_pixels: bool = False,
                   tries: int | None = None) -> Calcification | None:
        tries = tries or (200 if edge_case else 40)
        for _ in range(tries):
            name = artery or str(rng.choice(arteries, p=weights))
            if len(idx[name]) == 0:
                continue
            i = int(rng.choice(idx[name]))
            seeds = _crossings(placer, m.paths[name], i, n_slices, 0.6 * m.geometry.vessel_radius)
            if len(seeds) < n_slices:
                continue
            if exact_pixels:  # edge cases give pixel counts, not areas
                n_px = {k: int(a) for k, a in zip(seeds, areas, strict=False)}
            else:
                n_px = {k: _pixels_for(a, grid) for k, a in zip(seeds, areas, strict=False)}
            fp = placer.blob(m.sleeves[name], seeds, n_px, diagonal=diagonal)
            if len(fp) < n_slices or any(len(fp[k]) != n_px[k] for k in fp):
                continue
            return placer.add("coronary", name, fp, dict(zip(fp, hus, strict=False)), edge_case)
        return None

    if stent:
        name = str(rng.choice(("LAD", "RCA")))
        pts = m.paths[name]
        ok = idx[name]
        if len(ok) > 60:
            i0 = int(rng.choice(ok[: len(ok) // 2]))
            seg = pts[i0: i0 + int(rng.uniform(24, 36))]  # 12-18 mm at 0.5 mm steps
            # struts on the lumen wall, at least about one pixel thick so that coarse grids still show a ring
            r, half = m.geometry.vessel_radius, 0.5 * max(grid.spacing[1], 0.6)
            shell = polyline_tube(grid, seg, r + half, every=2) & ~polyline_tube(grid, seg, max(r - half, 0.3),
                                                                                    every=2)
            shell &= ~placer.occupied
            if shell.any():
                stent_mask = shell
                fp = {int(k): np.argwhere(shell[k]) for k in np.flatnonzero(shell.any(axis=(1, 2)))}
                placer.add("stent", name, fp, dict.fromkeys(fp, CAC_HU["stent"]))
                # keep plaques clear of the stent and of the margin cut out of the scoring region around it
                placer.occupied |= dilate_local(shell, 3)


    if edge_cases:  # first: they are the hardest to fit
        exact = 1.0 / px_area
        n_min = math.ceil(exact - 1e-9)
        try_plaque(1, [n_min], [250.0], edge_case="min_area", exact_pixels=True)
        if n_min > 1:
            try_plaque(1, [n_min - 1], [250.0], edge_case="under_min_area", exact_pixels=True)
        for v in BIN_EDGE_HU:
            try_plaque(1, [6.0], [v], edge_case=f"bin_edge_{int(v)}")
        n_diag = max(2, math.ceil(1.5 / px_area))
        try_plaque(1, [n_diag], [350.0], diagonal=True, edge_case="diagonal", exact_pixels=True)
        try_plaque(3, [8.0, 8.0, 8.0], [180.0, 450.0, 260.0], edge_case="per_slice_peak")
        # a sub-130 slice joined to a calcified one: only 3D "lesion" mode counts it
        try_plaque(2, [6.0, 6.0], [129.0, 300.0], edge_case="sub130_slice")

    # coronary plaques
    n = int(rng.integers(0, 7)) if n_plaques is None else int(n_plaques)
    for _ in range(n):
        ns = int(rng.integers(1, 5))
        areas = [float(np.exp(rng.uniform(np.log(2.0), np.log(25.0)))) for _ in range(ns)]
        h = draw_plaque_hu(rng)
        try_plaque(ns, areas, [h] * ns)

    if large_plaques is not None:  # own stream: the plaques above and the distractors below stay as they are
        standard_rng, rng = rng, large_plaques
        placer.rng = large_plaques
        for _ in range(int(rng.integers(1, 4))):
            ns = max(2, round(float(rng.uniform(*LARGE_PLAQUE_LENGTH_MM)) / grid.spacing[0]))
            area = float(np.exp(rng.uniform(*np.log(LARGE_PLAQUE_AREA_MM2))))
            h = draw_heavy_plaque_hu(rng)
            for _ in range(3):  # what does not fit is tried shorter and narrower
                if try_plaque(ns, [area * float(rng.uniform(0.7, 1.3)) for _ in range(ns)], [h] * ns):
                    break
                ns, area = max(2, (2 * ns) // 3), max(LARGE_PLAQUE_AREA_MM2[0], 0.75 * area)
        rng = placer.rng = standard_rng

    coronary_region = np.logical_or.reduce(list(m.sleeves.values()))
    if stent_mask is not None:
        coronary_region &= ~dilate_local(stent_mask, 2)

    if distractors:
        keep_out = dilate_local(coronary_region, 2)
        placer.occupied |= keep_out
        _place_distractors(placer, m)
    if nodes is not None:
        placer.rng = nodes
        _place_nodes(placer, m, (hu == np.float32(CAC_HU["mediastinal_fat"])) & ~m.heart & ~m.aorta_outer,
                     (hu >= 20.0) & (hu <= 80.0) & ~m.heart & ~m.bone)
        placer.rng = rng

    for c in placer.calcs:
        for k, px in c.voxels.items():
            hu[k, px[:, 0], px[:, 1]] = c.hu[k]
    return placer.calcs, coronary_region, stent_mask


#: Calcified mediastinal lymph nodes (old granulomatous disease, common on chest CT): radius (mm) and HU ranges.
NODE_RADIUS_MM, NODE_HU = (2.5, 7.0), (300.0, 1800.0)


#: Calcified granulomas under the diaphragm (liver, spleen): how far (mm) below the heart's lowest point they lie.
GRANULOMA_BELOW_HEART_MM = (0.0, 30.0)


def _place_nodes(placer: _Placer, m: Mediastinum, fat: np.ndarray, soft: np.ndarray, tries: int = 20) -> None:
    """Old granulomatous calcium, common on chest CT and never coronary: 1-3 calcified lymph nodes (kind ``node``),
    dense ovoids in the mediastinal fat round the aortic root and the ascending aorta (subcarinal, paratracheal,
    aorto-pulmonary window), and 0-2 calcified granulomas (kind ``granuloma``) in the soft tissue under the
    diaphragm just below the heart (liver, spleen), where a search region grown round the heart reaches."""
    grid, rng = placer.grid, placer.rng
    axis = m.aortic_axis

    def ovoid_at(centre: np.ndarray, allowed: np.ndarray, kind: str) -> bool:
        box, ball = _ball_region(grid, centre, float(rng.uniform(*NODE_RADIUS_MM)))
        if ball.size == 0:
            return False
        body = ball & allowed[box] & ~placer.occupied[box]
        if body.sum() < 0.6 * ball.sum() or not body.any():
            return False
        corner = np.array([box[1].start, box[2].start])
        footprint = {int(k + box[0].start): np.argwhere(body[k]) + corner
                     for k in np.flatnonzero(body.any(axis=(1, 2)))}
        return placer.add(kind, None, footprint, dict.fromkeys(footprint, float(round(rng.uniform(*NODE_HU))))
                          ) is not None

    for _ in range(int(rng.integers(1, 4))):
        for _ in range(tries):
            direction = np.cross(axis, rng.normal(size=3))
            direction /= np.linalg.norm(direction)
            if ovoid_at(m.aortic_root + axis * rng.uniform(0.0, 45.0)
                        + direction * (m.aortic_root_radius + rng.uniform(4.0, 25.0)), fat, "node"):
                break
    heart_slices = np.flatnonzero(m.heart.any(axis=(1, 2)))
    if not len(heart_slices):
        return
    below = np.zeros(grid.shape[0], bool)
    lo, hi = (heart_slices[0] - round(d / grid.spacing[0]) for d in GRANULOMA_BELOW_HEART_MM[::-1])
    below[max(lo, 0):max(hi, 0) + 1] = True
    sites = np.argwhere(soft & below[:, None, None])
    for _ in range(int(rng.integers(0, 3))):
        for _ in range(tries if len(sites) else 0):
            k, r, c = sites[int(rng.integers(len(sites)))]
            if ovoid_at(np.array([grid.axis_coords(a)[i] for a, i in enumerate((k, r, c))]), soft, "granuloma"):
                break


def dilate_local(mask: np.ndarray, iterations: int) -> np.ndarray:
    """3D binary dilation (26-neighbourhood) computed on the mask's bounding box only."""
    out = np.zeros_like(mask)
    box = crop_box(mask, (0, 0, 0))
    if box is None:
        return out
    grown = tuple(slice(max(0, b.start - iterations), min(n, b.stop + iterations))
                  for b, n in zip(box, mask.shape, strict=True))
    out[grown] = ndi.binary_dilation(mask[grown], np.ones((3, 3, 3), bool), iterations=iterations)
    return out


def _ball_region(grid: OffsetGrid, center: np.ndarray, radius: float) -> tuple[tuple[slice, slice, slice],
                                                                                np.ndarray]:
    box = box_slices(grid, center - radius, center + radius)
    return box, segment_distance2(grid, box, center, center) <= np.float32(radius * radius)


def _place_distractors(placer: _Placer, m: Mediastinum, tries: int = 15) -> None:
    """Aortic-valve, mitral-annulus and aortic-wall calcium (kinds valve, annulus, aortic), 1-3 of each kind.

    Each one is retried at new random positions until it fits (inside the grid, clear of the coronary region
    and of other calcium); a kind whose anatomy lies outside the field of view is simply absent.
    """
    grid, rng = placer.grid, placer.rng
    axis = m.aortic_axis
    perp = np.cross(axis, [1.0, 0.0, 0.0])
    perp /= np.linalg.norm(perp)
    perp2 = np.cross(axis, perp)
    hg = m.geometry

    def blob_at(center: np.ndarray, kind: str, region: np.ndarray, n_slices: int, radius: float = 4.0) -> bool:
        box, ball = _ball_region(grid, center, radius)
        if ball.size == 0:
            return False
        local = ball & region[box]
        k0, r0, c0 = placer.pixel_of(center)
        seeds = {}
        for k in range(k0, k0 + n_slices):
            if not box[0].start <= k < box[0].stop:
                continue
            kl = k - box[0].start
            cand = np.argwhere(local[kl] & ~placer.occupied[k][box[1], box[2]])
            if len(cand):
                j = int(np.argmin(np.abs(cand[:, 0] + box[1].start - r0) + np.abs(cand[:, 1] + box[2].start - c0)))
                seeds[kl] = (int(cand[j, 0]), int(cand[j, 1]))
        if not seeds:
            return False
        n_px = {k: _pixels_for(float(np.exp(rng.uniform(np.log(3.0), np.log(20.0)))), grid) for k in seeds}
        occupied = placer.occupied
        placer.occupied = occupied[box]  # grow on the box: a view, so marks land in the full array
        fp = placer.blob(local, seeds, n_px)
        placer.occupied = occupied
        corner = np.array([box[1].start, box[2].start])
        fp = {k + box[0].start: px + corner for k, px in fp.items()}
        hv = float(round(rng.uniform(300.0, 900.0)))
        return placer.add(kind, None, fp, dict.fromkeys(fp, hv)) is not None

    def valve() -> np.ndarray:
        # cusps: on the ring where the root meets the ventricle
        ang = rng.uniform(0, 2 * np.pi)
        ring = 0.8 * m.aortic_root_radius * (np.cos(ang) * perp + np.sin(ang) * perp2)
        return m.aortic_root - 4.0 * axis + ring

    def annulus() -> np.ndarray:
        # mitral annulus: posterior-left at the atrioventricular junction, where myocardium meets blood
        return hg.surface_point(m.anatomy.av_u + rng.uniform(-0.05, 0.05), rng.uniform(-2.6, -1.2),
                                hg.pericardium + hg.fat + hg.myocardium * rng.uniform(0.7, 1.0))

    def aortic() -> np.ndarray:
        p0, p1, r = m.aorta[int(rng.integers(0, len(m.aorta)))]
        if p1[0] < -500:  # the descending aorta runs on below the grid; stay near its top
            p1 = p0 + 80.0 * (p1 - p0) / np.linalg.norm(p1 - p0)
        d = (p1 - p0) / np.linalg.norm(p1 - p0)
        q = np.cross(d, rng.normal(size=3))
        q /= np.linalg.norm(q)
        return p0 + rng.uniform(0.1, 0.9) * (p1 - p0) + (r - 1.0) * q

    wall = m.aorta_outer & ~m.heart
    cardiac = m.heart if m.base_fat is None else m.heart & ~m.base_fat  # valve calcium stays out of the fat
    for kind, where, region in (("valve", valve, cardiac), ("annulus", annulus, cardiac), ("aortic", aortic, wall)):
        for _ in range(int(rng.integers(1, 4))):
            for _ in range(tries):
                if blob_at(where(), kind, region, int(rng.integers(1, 3))):
                    break
