"""A deterministic chest CT phantom with a known truth.

The phantom is built from small composable pieces so that later generators can add structures (heart chambers,
coronary arteries, calcium) without rewriting it:

* :class:`Grid` holds the voxel grid and the patient coordinates (mm, LPS, centred) of every axis;
* :class:`ChestGeometry` holds the anatomy's key sizes and levels, derived from the field of view;
* ``*_mask`` functions return boolean masks of one structure;
* :func:`paint_chest` paints them in order into a float HU canvas and returns the named masks;
* :func:`make_chest_phantom` adds blur, noise and the truth label map and returns a :class:`ChestPhantom`.

The array is in DICOM axial order: axis 0 runs foot to head (+z), axis 1 anterior to posterior (+y), axis 2
patient right to left (+x), so the affine is diagonal. Lungs are air at about -860 HU with vessels; the trachea
splits into two main bronchi; a heart and mediastinum sit between the lungs; a domed diaphragm has the liver under
the right dome and a stomach with an air-fluid level under the left one; gas-filled bowel loops with mottled
content lie lower in the abdomen (the hard distractor for lung segmentation). The truth labels are 1 = right lung,
2 = left lung, vessels included, airways (lumen and wall) excluded.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage as ndi

RIGHT_LUNG, LEFT_LUNG = 1, 2

HU = {
    "air": -1000.0,
    "lung": -860.0,
    "fat": -95.0,
    "soft": 35.0,
    "muscle": 50.0,
    "heart": 45.0,
    "vessel": 40.0,
    "liver": 60.0,
    "fluid": 15.0,
    "bone": 650.0,
    "marrow": 220.0,
    "table": 300.0,
}


@dataclass(frozen=True)
class Grid:
    """Voxel grid of shape ``(slices, rows, cols)`` with spacing in mm; coordinates are centred LPS mm."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]

    @property
    def half_extent(self) -> tuple[float, float, float]:
        return tuple(n * s / 2.0 for n, s in zip(self.shape, self.spacing, strict=False))  # type: ignore[return-value]

    def coords(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable ``z, y, x`` coordinate arrays (mm) of voxel centres."""
        z, y, x = (((np.arange(n) - (n - 1) / 2.0) * s).astype(np.float32)
                   for n, s in zip(self.shape, self.spacing, strict=True))
        return z[:, None, None], y[None, :, None], x[None, None, :]

    def affine(self) -> np.ndarray:
        """Index (slice, row, col) -> LPS mm, per :mod:`medhub.io.volume`."""
        a = np.zeros((4, 4))
        a[3, 3] = 1.0
        a[2, 0], a[1, 1], a[0, 2] = self.spacing
        z, y, x = (-(n - 1) / 2.0 * s for n, s in zip(self.shape, self.spacing, strict=False))
        a[:3, 3] = (x, y, z)
        return a

    def index_of(self, z: float, y: float, x: float) -> tuple[int, int, int]:
        """Nearest voxel index of an LPS point (mm)."""
        return tuple(round(c / s + (n - 1) / 2.0) for c, s, n in
                     zip((z, y, x), self.spacing, self.shape, strict=False))  # type: ignore[return-value]


@dataclass(frozen=True)
class ChestGeometry:
    """Key sizes (mm) and levels of the phantom anatomy, scaled to the field of view."""

    body_a: float  # body half-width (left-right)
    body_b: float  # body half-depth (antero-posterior)
    fat: float
    muscle: float
    rib: float
    cavity_a: float
    cavity_b: float
    z_apex: float  # top of the lungs
    z_dome_right: float  # top of the right diaphragm dome
    z_dome_left: float
    z_recess: float  # lowest point of the costophrenic recesses
    z_carina: float
    mediastinum_half_width: float
    trachea_y: float
    trachea_radius: float = 8.0
    bronchus_radius: float = 5.5
    airway_wall: float = 2.0
    diaphragm: float = 5.0  # thickness of the diaphragm between the lung bases and the abdominal organs
    junction_gap: float = 1.0  # pleural gap between the lungs at the anterior junction line
    #: The trachea ends flat at ``z_carina`` and the main bronchi leave from either side of a carinal ridge, so the
    #: airway is seen split from the carina down, as on real CT. Without it (the lung-ct phantoms' airway) the
    #: trachea ends in a rounded cap and the bronchi leave from one point: the split is first seen about 11 mm
    #: lower.
    carinal_ridge: bool = False

    @classmethod
    def for_grid(cls, grid: Grid) -> ChestGeometry:
        Z, Y, X = grid.half_extent
        a, b = 0.85 * X, 0.62 * Y
        fat, muscle, rib = 0.06 * a, 0.05 * a, 0.03 * a
        ca, cb = a - fat - muscle - rib, b - fat - muscle - rib
        return cls(
            body_a=a, body_b=b, fat=fat, muscle=muscle, rib=rib, cavity_a=ca, cavity_b=cb,
            z_apex=0.80 * Z, z_dome_right=-0.22 * Z, z_dome_left=-0.30 * Z, z_recess=-0.58 * Z,
            z_carina=0.30 * Z, mediastinum_half_width=0.2 * ca, trachea_y=0.15 * cb,
        )


# ------------------------------------------------------------------------------------------- primitives
def ellipse_xy(y: np.ndarray, x: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    return ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0


def ellipsoid(grid: Grid, center: tuple[float, float, float], radii: tuple[float, float, float]) -> np.ndarray:
    z, y, x = grid.coords()
    return (((z - center[0]) / radii[0]) ** 2 + ((y - center[1]) / radii[1]) ** 2
            + ((x - center[2]) / radii[2]) ** 2) <= 1.0


def tube(grid: Grid, p0: tuple[float, float, float], p1: tuple[float, float, float], r0: float,
         r1: float | None = None) -> np.ndarray:
    """Voxels within a (linearly tapering) radius of the segment p0-p1 (points as z, y, x mm).

    Only the segment's bounding box is computed, so long thin tubes on big grids stay cheap.
    """
    r1 = r0 if r1 is None else r1
    out = np.zeros(grid.shape, bool)
    p0a, p1a = np.asarray(p0, np.float64), np.asarray(p1, np.float64)
    rmax = max(r0, r1)
    lo = [grid.index_of(*(np.minimum(p0a, p1a) - rmax))[k] - 1 for k in range(3)]
    hi = [grid.index_of(*(np.maximum(p0a, p1a) + rmax))[k] + 2 for k in range(3)]
    sl = tuple(slice(max(0, a), min(n, b)) for a, b, n in zip(lo, hi, grid.shape, strict=True))
    if any(s.start >= s.stop for s in sl):
        return out
    z, y, x = grid.coords()
    zz, yy, xx = z[sl[0]], y[:, sl[1]], x[:, :, sl[2]]
    d = p1a - p0a
    L2 = float(d @ d) or 1.0
    t = ((zz - p0a[0]) * d[0] + (yy - p0a[1]) * d[1] + (xx - p0a[2]) * d[2]) / L2
    t = np.clip(t, 0.0, 1.0)
    dist2 = (zz - p0a[0] - t * d[0]) ** 2 + (yy - p0a[1] - t * d[1]) ** 2 + (xx - p0a[2] - t * d[2]) ** 2
    out[sl] = dist2 <= (r0 + (r1 - r0) * t) ** 2
    return out


# ------------------------------------------------------------------------------------------- anatomy
def body_masks(grid: Grid, g: ChestGeometry) -> dict[str, np.ndarray]:
    """Nested elliptic cylinders: body (skin), inside the fat, inside the muscle, thoracic/abdominal cavity."""
    _, y, x = grid.coords()
    out = {}
    for name, shrink in (("body", 0.0), ("below_fat", g.fat), ("below_muscle", g.fat + g.muscle),
                         ("cavity", g.fat + g.muscle + g.rib)):
        m2 = ellipse_xy(y, x, 0.0, 0.0, g.body_b - shrink, g.body_a - shrink)
        out[name] = np.broadcast_to(m2, grid.shape)
    return out


def ribs_mask(grid: Grid, g: ChestGeometry, period_mm: float = 26.0, width_mm: float = 11.0) -> np.ndarray:
    """Bone bands between the muscle and the cavity, above the recesses, sloping down anteriorly."""
    z, y, _x = grid.coords()
    shell = body_masks(grid, g)["below_muscle"] & ~body_masks(grid, g)["cavity"]
    phase = np.mod(z + 0.25 * y, period_mm)
    return shell & (phase < width_mm) & (z > g.z_recess - 20.0)


def spine_masks(grid: Grid, g: ChestGeometry) -> tuple[np.ndarray, np.ndarray]:
    """Vertebral column (cortex, marrow) posterior in the midline, all slices."""
    _, y, x = grid.coords()
    r = 0.16 * g.cavity_a
    cy = g.cavity_b - 1.1 * r
    outer = np.broadcast_to(ellipse_xy(y, x, cy, 0.0, r, r), grid.shape)
    inner = np.broadcast_to(ellipse_xy(y, x, cy, 0.0, 0.7 * r, 0.7 * r), grid.shape)
    return outer, inner


def diaphragm_height(grid: Grid, g: ChestGeometry) -> np.ndarray:
    """z (mm) of the diaphragm surface at each (y, x): two domes, deepest in the posterior recesses."""
    _, y, x = grid.coords()
    y2, x2 = y[0], x[0]
    out = np.full(np.broadcast_shapes(y2.shape, x2.shape), g.z_recess, np.float32)
    for sign, peak in ((-1.0, g.z_dome_right), (1.0, g.z_dome_left)):
        cx = sign * 0.5 * g.cavity_a
        r2 = ((x2 - cx) / (0.6 * g.cavity_a)) ** 2 + ((y2 + 0.1 * g.cavity_b) / (0.95 * g.cavity_b)) ** 2
        dome = peak - (peak - g.z_recess) * np.clip(r2, 0.0, 1.0)
        out = np.maximum(out, dome)
    return out


def heart_mask(grid: Grid, g: ChestGeometry) -> np.ndarray:
    """The heart as an ellipsoid resting on the diaphragm, anterior and to the left."""
    center = (g.z_dome_right + 0.17 * (g.z_apex - g.z_dome_right), -0.25 * g.cavity_b, 0.18 * g.cavity_a)
    radii = (0.2 * (g.z_apex - g.z_recess), 0.55 * g.cavity_b, 0.36 * g.cavity_a)
    return ellipsoid(grid, center, radii)


def lung_region(grid: Grid, g: ChestGeometry, side: int, exclude: np.ndarray | None = None,
                mediastinum_half_width: float | None = None) -> np.ndarray:
    """One lung's space (1 = right, 2 = left): cavity above the diaphragm, lateral to the mediastinum.

    ``exclude`` (a mask on ``grid``) replaces this module's heart ellipsoid as what the lungs wrap around, and
    ``mediastinum_half_width`` (mm) overrides ``g.mediastinum_half_width`` for the lungs' medial border only:
    generators with their own heart and mediastinal organs (:mod:`medhub.synth.cac_phantom`) use both.
    """
    z, y, x = grid.coords()
    z_mid = 0.25 * g.z_apex
    frac = np.clip((z - z_mid) / (g.z_apex - z_mid), 0.0, 1.0)
    scale = np.sqrt(np.clip(1.0 - frac ** 2, 0.0, 1.0))  # rounded apex
    sign = -1.0 if side == RIGHT_LUNG else 1.0
    # the half-cavity, shrunk towards a point above each lung's centre as z nears the apex
    ay, ax = 0.05 * g.cavity_b, sign * 0.45 * g.cavity_a
    inv = 1.0 / np.maximum(scale, 1e-3)
    ys, xs = ay + (y - ay) * inv, ax + (x - ax) * inv
    in_cavity = ((ys / g.cavity_b) ** 2 + (xs / g.cavity_a) ** 2 <= 1.0) & (sign * xs > 0)
    # in front of the great vessels the two lungs almost meet (anterior junction line)
    junction = (y < -0.55 * g.cavity_b) & (z > 0.0)
    half_width = g.mediastinum_half_width if mediastinum_half_width is None else mediastinum_half_width
    lateral = (sign * x) > np.where(junction, g.junction_gap / 2.0, half_width)
    above = z > diaphragm_height(grid, g)[None]
    spine, _ = spine_masks(grid, g)
    organs = heart_mask(grid, g) if exclude is None else exclude
    return in_cavity & lateral & above & (z < g.z_apex) & ~organs & ~spine


RIDGE_MM = 2.0  # soft tissue between the two main bronchi's lumens at the carina (``carinal_ridge``)
#: ``carinal_ridge``: over its last FLARE_LENGTH_MM the trachea's radius grows by FLARE_WIDENING_MM, to hold both
#: bronchi's openings (more, and ``find_airway``'s tube check no longer takes it for a trachea on a 3 mm grid).
FLARE_LENGTH_MM, FLARE_WIDENING_MM = 12.0, 2.0


def airway_centerlines(g: ChestGeometry) -> dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]]:
    """Trachea and main-bronchus segments (z, y, x mm); the bronchi end just inside the lungs' medial border."""
    carina = (g.z_carina, g.trachea_y, 0.0)
    top = (1e4, g.trachea_y, 0.0)
    drop = 0.12 * (g.z_apex - g.z_recess)
    reach = g.mediastinum_half_width + 6.0
    ridge = g.bronchus_radius + RIDGE_MM / 2.0 if g.carinal_ridge else 0.0
    return {
        "trachea": (top, carina),
        "right_bronchus": ((g.z_carina, g.trachea_y, -ridge), (g.z_carina - drop, g.trachea_y + 5.0, -reach)),
        "left_bronchus": ((g.z_carina, g.trachea_y, ridge), (g.z_carina - 1.3 * drop, g.trachea_y + 5.0, reach)),
    }


def airway_masks(grid: Grid, g: ChestGeometry) -> tuple[np.ndarray, np.ndarray]:
    """(outer incl. wall, lumen) of the trachea and both main bronchi."""
    segments = []  # (p0, p1, radius at p0, radius at p1)
    for name, (p0, p1) in airway_centerlines(g).items():
        r = g.trachea_radius if name == "trachea" else g.bronchus_radius
        if name != "trachea":
            segments.append((p0, p1, r, r))
            continue
        p0 = (grid.half_extent[0] + 5.0, p0[1], p0[2])  # keep the trachea's top inside the grid for the bounding box
        if g.carinal_ridge:
            flare = (p1[0] + FLARE_LENGTH_MM, p1[1], p1[2])
            segments += [(p0, flare, r, r), (flare, p1, r, r + FLARE_WIDENING_MM)]
        else:
            segments.append((p0, p1, r, r))
    outer = np.zeros(grid.shape, bool)
    lumen = np.zeros(grid.shape, bool)
    z = grid.coords()[0]
    for p0, p1, r0, r1 in segments:
        part_outer = tube(grid, p0, p1, r0 + g.airway_wall, r1 + g.airway_wall)
        part_lumen = tube(grid, p0, p1, r0, r1)
        if g.carinal_ridge:  # the trachea above the carina plane, the bronchi below it
            side = z >= g.z_carina if p0[0] > g.z_carina else z <= g.z_carina
            part_outer &= side
            part_lumen &= side
        outer |= part_outer
        lumen |= part_lumen
    return outer, lumen


def vessel_mask(grid: Grid, g: ChestGeometry, lungs: dict[int, np.ndarray], rng: np.random.Generator,
                per_lung: int = 14) -> np.ndarray:
    """Tapering vessels from each hilum to random points inside that lung (clipped to the lung)."""
    out = np.zeros(grid.shape, bool)
    z, y, x = grid.coords()
    for side, region in lungs.items():
        idx = np.argwhere(region[:, ::2, ::2])
        if len(idx) == 0:
            continue
        sign = -1.0 if side == RIGHT_LUNG else 1.0
        hilum = (g.z_carina - 0.1 * (g.z_apex - g.z_recess), g.trachea_y, sign * (g.mediastinum_half_width + 4.0))
        for k in rng.integers(0, len(idx), size=per_lung):
            i = idx[k]
            end = (float(z[i[0], 0, 0]), float(y[0, 2 * i[1], 0]), float(x[0, 0, 2 * i[2]]))
            out |= tube(grid, hilum, end, 3.5, 1.0)
    return out


def stomach_masks(grid: Grid, g: ChestGeometry) -> tuple[np.ndarray, np.ndarray]:
    """(stomach, gas in it): under the left dome, gas anteriorly above a flat air-fluid level."""
    center = (g.z_dome_left - 0.12 * (g.z_apex - g.z_recess), -0.35 * g.cavity_b, 0.45 * g.cavity_a)
    radii = (0.1 * (g.z_apex - g.z_recess), 0.35 * g.cavity_b, 0.3 * g.cavity_a)
    stomach = ellipsoid(grid, center, radii)
    z, y, _x = grid.coords()
    stomach &= z < diaphragm_height(grid, g)[None] - g.diaphragm
    inner = ndi.binary_erosion(stomach, iterations=1)
    gas = inner & (y < center[1] - 0.1 * radii[1])
    return stomach, gas


def bowel_masks(grid: Grid, g: ChestGeometry, rng: np.random.Generator, n: int = 7
                ) -> tuple[np.ndarray, np.ndarray]:
    """(bowel loops, their gas): ellipsoids below the diaphragm, gas with mottled stool (random soft specks)."""
    loops = np.zeros(grid.shape, bool)
    z, _y, _x = grid.coords()
    dia = diaphragm_height(grid, g)[None]
    Z = grid.half_extent[0]
    for _ in range(n):
        c = (rng.uniform(-Z, g.z_recess - 5.0), rng.uniform(-0.7, 0.2) * g.cavity_b,
             rng.uniform(-0.6, 0.6) * g.cavity_a)
        r = (rng.uniform(12.0, 30.0), rng.uniform(12.0, 28.0), rng.uniform(15.0, 40.0))
        loops |= ellipsoid(grid, c, r)
    cavity = body_masks(grid, g)["cavity"]
    loops &= cavity & (z < dia - 8.0)
    gas = ndi.binary_erosion(loops, iterations=1)
    specks = rng.random(grid.shape) < 0.15
    gas &= ~specks
    return loops, gas


# ------------------------------------------------------------------------------------------- assembly
def paint_chest(grid: Grid, g: ChestGeometry, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Paint the chest into a float32 HU canvas; return it with the named structure masks."""
    z, y, x = grid.coords()
    hu = np.full(grid.shape, HU["air"], np.float32)
    masks: dict[str, np.ndarray] = {}
    b = body_masks(grid, g)
    hu[b["body"]] = HU["fat"]
    hu[b["below_fat"]] = HU["muscle"]
    hu[b["below_muscle"]] = HU["soft"]
    masks["body"] = np.ascontiguousarray(b["body"])
    ribs = ribs_mask(grid, g)
    hu[ribs] = HU["bone"]
    masks["ribs"] = ribs
    dia = diaphragm_height(grid, g)[None]
    below = b["cavity"] & (z < dia - g.diaphragm)
    liver = below & (x < 0.3 * g.cavity_a) & (y < 0.55 * g.cavity_b)
    hu[liver] = HU["liver"]
    masks["liver"] = liver
    stomach, stomach_gas = stomach_masks(grid, g)
    hu[stomach] = HU["fluid"]
    hu[stomach_gas] = HU["air"]
    masks["stomach"], masks["stomach_gas"] = stomach, stomach_gas
    loops, bowel_gas = bowel_masks(grid, g, rng)
    hu[loops] = HU["soft"]
    hu[bowel_gas] = HU["air"]
    masks["bowel"], masks["bowel_gas"] = loops, bowel_gas
    heart = heart_mask(grid, g) & (z > dia + 2.0)
    hu[heart] = HU["heart"]
    masks["heart"] = heart
    lungs = {side: lung_region(grid, g, side) for side in (RIGHT_LUNG, LEFT_LUNG)}
    for m in lungs.values():
        hu[m] = HU["lung"]
    vessels = vessel_mask(grid, g, lungs, rng)
    any_lung = lungs[RIGHT_LUNG] | lungs[LEFT_LUNG]
    hu[vessels & any_lung] = HU["vessel"]
    masks["lung_vessels"] = vessels & any_lung
    outer, lumen = airway_masks(grid, g)
    hu[outer] = HU["soft"]
    hu[lumen] = HU["air"]
    masks["airway"] = outer
    spine, marrow = spine_masks(grid, g)
    hu[spine] = HU["bone"]
    hu[marrow] = HU["marrow"]
    masks["spine"] = np.ascontiguousarray(spine)
    table = np.broadcast_to((y > g.body_b + 10.0) & (y < g.body_b + 16.0) & (np.abs(x) < 0.9 * g.body_a), grid.shape)
    hu[table] = HU["table"]
    for side, m in lungs.items():
        masks["right_lung" if side == RIGHT_LUNG else "left_lung"] = m & ~outer
    return hu, masks


@dataclass
class ChestPhantom:
    """A generated chest CT: HU (int16, axial DICOM order), LPS affine, truth labels and structure masks."""

    hu: np.ndarray
    affine: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]
    masks: dict[str, np.ndarray] = field(default_factory=dict)


def make_chest_phantom(shape: tuple[int, int, int] = (64, 128, 128),
                       spacing: tuple[float, float, float] = (5.0, 2.5, 2.5),
                       noise_sd: float = 15.0, seed: int = 0, blur_mm: float = 0.8,
                       **geometry: float) -> ChestPhantom:
    """Generate a chest CT phantom.

    Parameters
    ----------
    shape:
        ``(slices, rows, cols)``.
    spacing:
        ``(slice, row, col)`` spacing in mm. The anatomy scales with the field of view, so keep it about
        300-400 mm in-plane and 250-350 mm along z for adult-like proportions.
    noise_sd:
        Standard deviation (HU) of the added Gaussian noise.
    seed:
        Random seed (vessels, bowel loops, noise); the same arguments give the same phantom.
    blur_mm:
        Gaussian blur (sigma, mm) imitating the scanner's point spread.
    geometry:
        Overrides of :class:`ChestGeometry` fields (mm), e.g. ``diaphragm=2.0`` for a thin diaphragm that lets
        the stomach gas touch the left lung base.

    Returns
    -------
    :class:`ChestPhantom` with ``labels`` 1 = right lung, 2 = left lung.
    """
    grid = Grid(tuple(int(n) for n in shape), tuple(float(s) for s in spacing))  # type: ignore[arg-type]
    g = ChestGeometry.for_grid(grid)
    if geometry:
        g = replace(g, **geometry)
    rng = np.random.default_rng(seed)
    hu, masks = paint_chest(grid, g, rng)
    if blur_mm > 0:
        hu = ndi.gaussian_filter(hu, sigma=[blur_mm / s for s in grid.spacing], output=np.float32)
    if noise_sd > 0:
        hu += rng.normal(0.0, noise_sd, size=grid.shape).astype(np.float32)
    labels = np.zeros(grid.shape, np.uint8)
    labels[masks["right_lung"]] = RIGHT_LUNG
    labels[masks["left_lung"]] = LEFT_LUNG
    hu_int = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    return ChestPhantom(hu=hu_int, affine=grid.affine(), labels=labels, spacing=grid.spacing, masks=masks)
