"""Coronary artery calcium (CAC) scores from a CT volume in HU and a mask: Agatston, volume and mass.

Pure functions on ``(hu, spacing_mm, mask)`` arrays, in the style of :mod:`skimage.measure`, plus
:func:`score_volume` for :class:`~medhub.io.volume.Volume` inputs. Arrays are indexed ``(slice, row, column)``
= ``(z, y, x)``; array axis 0 is the axial slice axis. Units: HU for CT values, mm for spacing, mm² for areas,
mm³ for volumes, mg for mass.

Agatston score (Agatston et al., JACC 1990), as computed here
----------------------------------------------------------------
* A *lesion* is a connected set of candidate voxels **within one axial slice** (8-connected by default).
* Candidate voxels are ``HU >= threshold_hu`` (130 HU) — how the mask takes part depends on the mode, below.
* A lesion counts if its area reaches the minimum area (1 mm² by default, inclusive; or a pixel count).
* Its weight comes from its **peak** HU: 130–199 → 1, 200–299 → 2, 300–399 → 3, ≥ 400 → 4 (below the
  threshold → 0, so such a lesion never counts).
* Its score is ``area_mm² × weight × Δz / 3 mm``.

**Δz is the real slice spacing** — the distance between slice positions, ``spacing_mm[0]`` (``Volume.spacing[0]``)
— **not the nominal DICOM SliceThickness.** The original score was defined on contiguous 3 mm slices; the
``Δz / 3`` factor rescales the sum of slice areas to that sampling, which depends on how far apart the slices are,
not on how thick each one is. For overlapping reconstructions (e.g. 3 mm thick every 1.5 mm) using the thickness
would double the score. These functions take a spacing only; the thickness is never used.

Volume score: ``voxels of counted lesions × dz·dy·dx`` in mm³. Mass score:
``c × Σ(HU × voxel volume mm³) / 1000`` in mg over the voxels of counted lesions, where ``c`` is a calibration
factor in mg hydroxyapatite per cm³ per HU. There is **no default** ``c``: mass depends on the scanner, tube
voltage and reconstruction (literature values at 120 kVp are around 0.7–0.8 mg/cm³/HU), so a mass is reported
only when ``c`` is given, or derived from a calibration rod as ``c = rod density / rod mean HU``.

Conventions (:class:`ScoringConvention`), to reproduce other tools
------------------------------------------------------------------
``mode``
    ``"roi"`` (default): the mask is a *region* (heart, coronary territory); lesions are the connected
    components of ``region ∩ HU >= threshold``.

    ``"lesion"``: the mask is a *predicted lesion mask* used as-is, as in DeepCAC: lesions are its connected
    components, **every mask voxel counts towards area, volume and mass, including voxels below 130 HU**, and
    the weight comes from the peak HU inside the lesion (a lesion whose peak is below the threshold gets
    weight 0 and does not count). :meth:`ScoringConvention.deepcac` reproduces DeepCAC's step-4 scoring
    (8-connected per slice, objects of ≤ 3 pixels dropped, DeepCAC risk classes), except that DeepCAC rounds
    the pixel volume and each lesion's score to 3 decimals and we do not.

    ``"mapped"``: the mask is a predicted lesion mask *mapped onto the threshold*: lesions are the connected
    components of the predicted mask (the prediction decides what one lesion is), but only their voxels
    ``>= threshold`` count towards area, volume, mass and the minimum-area test. This equals ``"roi"`` with the
    prediction as region unless a predicted lesion's calcified parts touch only through sub-threshold voxels:
    ``"roi"`` splits it into separate lesions (each facing the minimum area on its own), ``"mapped"`` keeps one.
``connectivity``
    ``"8"`` (default) or ``"4"``: 2D lesions per slice. ``"3d"`` (26-connected) or ``"3d6"`` (6-connected): 3D
    lesions. A 3D lesion's Agatston score is still a sum over slices, ``Σ_slices area_mm² × weight × Δz / 3``,
    but with **one weight for the whole lesion, from its 3D peak HU** (a per-slice weight would make the 3D
    grouping irrelevant to the score); it counts if its **largest cross-section** reaches the minimum area.
    Its ``area_mm2`` in the lesion table is the sum of its cross-sections.
``min_area_mm2`` / ``min_area_px``
    Minimum lesion area, inclusive; when both are set a lesion must reach both. ``None`` disables one.
``categories``
    Risk categories: ``"standard"`` 0 / 1–99 / 100–399 / ≥ 400 and ``"deepcac"`` 0 / 1–100 / 101–300 / > 300
    (see :func:`risk_category`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np
from scipy import ndimage

from medhub.errors import InputError
from medhub.io.orientation import apply_canonical, canonical_volume
from medhub.io.volume import Volume
from medhub.masks import crop_box

#: Weight bin edges above the threshold (HU): peaks >= 200, 300, 400 get weights 2, 3, 4.
WEIGHT_EDGES_HU = (200.0, 300.0, 400.0)

#: Category labels of each scheme, lowest first.
CATEGORY_SCHEMES: dict[str, tuple[str, ...]] = {
    "standard": ("0", "1-99", "100-399", ">=400"),
    "deepcac": ("0", "1-100", "101-300", ">300"),
}

MODES = ("roi", "lesion", "mapped")
CONNECTIVITIES = ("8", "4", "3d", "3d6")

# Float areas such as 100 × 0.01 mm² must not fall just short of a 1 mm² minimum.
_AREA_RTOL = 1e-9


def agatston_weight(peak_hu: float, threshold_hu: float = 130.0) -> int:
    """Agatston density weight of a lesion from its peak HU: 0 below ``threshold_hu``, then 1, 2, 3, 4 from
    ``threshold_hu``, 200, 300 and 400 HU (each edge inclusive)."""
    return int(_weights(np.asarray([peak_hu], dtype=np.float64), threshold_hu)[0])


def _weights(peaks: np.ndarray, threshold_hu: float) -> np.ndarray:
    edges = np.asarray((threshold_hu, *WEIGHT_EDGES_HU))
    return np.searchsorted(edges, peaks, side="right").astype(np.int64)


def risk_category(score: float, scheme: str = "standard") -> str:
    """Risk category of an Agatston score.

    ``"standard"``: ``"0"`` (score 0), ``"1-99"`` (0 < score < 100), ``"100-399"`` (100 ≤ score < 400),
    ``">=400"``. ``"deepcac"`` (DeepCAC): ``"0"``, ``"1-100"`` (0 < score ≤ 100), ``"101-300"``
    (100 < score ≤ 300), ``">300"``. Scores are not rounded: any positive score, even 0.2, is at least the
    second category, and 99.5 is ``"1-99"`` in the standard scheme.
    """
    labels = CATEGORY_SCHEMES.get(scheme)
    if labels is None:
        raise ValueError(f"unknown category scheme {scheme!r}; use one of {', '.join(CATEGORY_SCHEMES)}")
    score = float(score)
    if not math.isfinite(score) or score < 0:
        raise ValueError(f"an Agatston score must be a finite number >= 0, got {score}")
    if score == 0:
        return labels[0]
    if scheme == "standard":
        return labels[1] if score < 100 else labels[2] if score < 400 else labels[3]
    return labels[1] if score <= 100 else labels[2] if score <= 300 else labels[3]


@dataclass(frozen=True)
class ScoringConvention:
    """How lesions are found and scored; see the module docstring for each field's meaning.

    Parameters
    ----------
    connectivity:
        ``"8"`` | ``"4"`` (2D per slice) | ``"3d"`` (26-connected) | ``"3d6"`` (6-connected).
    min_area_mm2:
        Minimum lesion area in mm² (inclusive), or ``None``.
    min_area_px:
        Minimum lesion area in pixels (inclusive), or ``None``.
    threshold_hu:
        Calcium threshold in HU (130 at 120 kVp); also the lower edge of weight 1.
    mode:
        ``"roi"`` | ``"lesion"`` | ``"mapped"``.
    categories:
        Risk category scheme: ``"standard"`` | ``"deepcac"``.
    """

    connectivity: str = "8"
    min_area_mm2: float | None = 1.0
    min_area_px: int | None = None
    threshold_hu: float = 130.0
    mode: str = "roi"
    categories: str = "standard"

    def __post_init__(self) -> None:
        if self.connectivity not in CONNECTIVITIES:
            raise ValueError(f"connectivity must be one of {', '.join(CONNECTIVITIES)}, got {self.connectivity!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.categories not in CATEGORY_SCHEMES:
            raise ValueError(f"categories must be one of {', '.join(CATEGORY_SCHEMES)}, got {self.categories!r}")
        if not 0 < self.threshold_hu < WEIGHT_EDGES_HU[0]:
            raise ValueError(f"threshold_hu must be in (0, {WEIGHT_EDGES_HU[0]:g}) HU, got {self.threshold_hu}")
        if self.min_area_mm2 is not None and self.min_area_mm2 < 0:
            raise ValueError(f"min_area_mm2 must be >= 0, got {self.min_area_mm2}")
        if self.min_area_px is not None and self.min_area_px < 0:
            raise ValueError(f"min_area_px must be >= 0, got {self.min_area_px}")

    @classmethod
    def deepcac(cls) -> ScoringConvention:
        """DeepCAC's step-4 convention: predicted mask as-is, 8-connected per slice, objects of more than 3
        pixels, DeepCAC risk classes."""
        return cls(connectivity="8", min_area_mm2=None, min_area_px=4, mode="lesion", categories="deepcac")

    @property
    def is_3d(self) -> bool:
        return self.connectivity.startswith("3d")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """One line for reports, e.g. ``roi, >=130 HU, 8-connected per slice, min area 1 mm², standard``."""
        lesions = {"8": "8-connected per slice", "4": "4-connected per slice", "3d": "3D 26-connected",
                   "3d6": "3D 6-connected"}[self.connectivity]
        minimum = [f"{self.min_area_mm2:g} mm²"] if self.min_area_mm2 is not None else []
        minimum += [f"{self.min_area_px} px"] if self.min_area_px is not None else []
        return (f"{self.mode}, >={self.threshold_hu:g} HU, {lesions}, min area {' and '.join(minimum) or 'none'}, "
                f"{self.categories} categories")


@dataclass(frozen=True)
class Lesion:
    """One counted lesion.

    ``centroid_index`` is ``(slice, row, column)`` (fractional); ``centroid_lps_mm`` is the same point in LPS mm
    when an affine was given. ``slice_range`` is the first and last slice index (inclusive). ``area_mm2`` sums
    the lesion's cross-sections (one for a 2D lesion). ``mask_label`` is the most frequent mask label among the
    lesion's voxels when the mask was a label map, else ``None``.
    """

    id: int
    centroid_index: tuple[float, float, float]
    centroid_lps_mm: tuple[float, float, float] | None
    slice_range: tuple[int, int]
    n_voxels: int
    area_mm2: float
    peak_hu: float
    weight: int
    agatston: float
    volume_mm3: float
    mass_mg: float | None
    mask_label: int | None = None

    #: Header of the per-lesion table, in :meth:`to_dict`'s order.
    COLUMNS: ClassVar[tuple[str, ...]] = (
        "id", "centroid_k", "centroid_j", "centroid_i", "centroid_x_mm", "centroid_y_mm", "centroid_z_mm",
        "first_slice", "last_slice", "n_voxels", "area_mm2", "peak_hu", "weight", "agatston", "volume_mm3", "mass_mg",
        "mask_label")

    def to_dict(self) -> dict[str, Any]:
        """Flat row for a CSV lesion table."""
        row: dict[str, Any] = {"id": self.id}
        row.update(zip(("centroid_k", "centroid_j", "centroid_i"), self.centroid_index, strict=True))
        lps = self.centroid_lps_mm or (None, None, None)
        row.update(zip(("centroid_x_mm", "centroid_y_mm", "centroid_z_mm"), lps, strict=True))
        row.update(first_slice=self.slice_range[0], last_slice=self.slice_range[1], n_voxels=self.n_voxels,
                   area_mm2=self.area_mm2, peak_hu=self.peak_hu, weight=self.weight, agatston=self.agatston,
                   volume_mm3=self.volume_mm3, mass_mg=self.mass_mg, mask_label=self.mask_label)
        return row


@dataclass(frozen=True)
class CalciumScore:
    """Calcium scores of one scan.

    ``agatston`` (unitless), ``volume_mm3`` (mm³), ``mass_mg`` (mg, ``None`` without calibration);
    ``slice_spacing_mm`` is the Δz used; ``nominal_slice_thickness_mm`` is the DICOM SliceThickness when known
    (reported only, never used); ``calibration_factor`` in mg/cm³/HU when a mass was computed.
    """

    agatston: float
    volume_mm3: float
    mass_mg: float | None
    category: str
    lesions: tuple[Lesion, ...]
    convention: ScoringConvention
    slice_spacing_mm: float
    nominal_slice_thickness_mm: float | None = None
    calibration_factor: float | None = None

    @property
    def n_lesions(self) -> int:
        return len(self.lesions)

    def to_dict(self, lesions: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "agatston": self.agatston,
            "volume_mm3": self.volume_mm3,
            "mass_mg": self.mass_mg,
            "category": self.category,
            "n_lesions": self.n_lesions,
            "slice_spacing_mm": self.slice_spacing_mm,
            "nominal_slice_thickness_mm": self.nominal_slice_thickness_mm,
            "calibration_factor_mg_cm3_hu": self.calibration_factor,
            "convention": self.convention.as_dict(),
            "convention_text": self.convention.describe(),
        }
        if lesions:
            data["lesions"] = [lesion.to_dict() for lesion in self.lesions]
        return data


def calibration_factor(rod_hu: float, rod_density_mg_cm3: float) -> float:
    """Mass calibration factor in mg/cm³/HU from a calibration rod: ``density / mean HU``."""
    if not (math.isfinite(rod_hu) and rod_hu > 0):
        raise ValueError(f"rod mean HU must be a positive number, got {rod_hu}")
    if not (math.isfinite(rod_density_mg_cm3) and rod_density_mg_cm3 > 0):
        raise ValueError(f"rod density must be a positive number of mg/cm³, got {rod_density_mg_cm3}")
    return rod_density_mg_cm3 / rod_hu


def _structure(connectivity: str) -> np.ndarray:
    if connectivity == "3d":
        return np.ones((3, 3, 3), dtype=bool)
    if connectivity == "3d6":
        return ndimage.generate_binary_structure(3, 1)
    # A 2D structure in the middle plane with zero planes above and below labels every slice in one call,
    # without joining slices.
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndimage.generate_binary_structure(2, 2 if connectivity == "8" else 1)
    return structure


def _resolve_calibration(factor: float | None, rod_hu: float | None, rod_density: float | None) -> float | None:
    if (rod_hu is None) != (rod_density is None):
        raise ValueError("give both rod_hu and rod_density_mg_cm3, or neither")
    if rod_hu is not None:
        if factor is not None:
            raise ValueError("give calibration_factor or a calibration rod, not both")
        return calibration_factor(rod_hu, rod_density)  # type: ignore[arg-type]
    if factor is not None and not (math.isfinite(factor) and factor > 0):
        raise ValueError(f"calibration_factor must be a positive number of mg/cm³/HU, got {factor}")
    return factor


def score_calcium(
    hu: np.ndarray,
    spacing_mm: Sequence[float],
    mask: np.ndarray | None,
    convention: ScoringConvention | None = None,
    *,
    labels: Sequence[int] | None = None,
    affine: np.ndarray | None = None,
    calibration_factor: float | None = None,
    rod_hu: float | None = None,
    rod_density_mg_cm3: float | None = None,
    nominal_slice_thickness_mm: float | None = None,
) -> CalciumScore:
    """Agatston, volume and mass scores of a CT volume.

    Parameters
    ----------
    hu:
        CT values in HU, shape ``(slices, rows, columns)``; axis 0 is the axial slice axis.
    spacing_mm:
        ``(dz, dy, dx)`` in mm, in array axis order. ``dz`` must be the **real slice spacing** (distance between
        slice positions), not the nominal SliceThickness: it is the Δz of ``Δz / 3 mm``.
    mask:
        Region (``mode="roi"``) or predicted lesion mask (``"lesion"``, ``"mapped"``) on the same grid: boolean,
        or a label map whose nonzero voxels (or the ``labels`` listed) form the mask. ``None`` in ``"roi"``
        mode means the whole volume.
    convention:
        How lesions are found and scored; default :class:`ScoringConvention` ``()``.
    labels:
        Mask labels that form the mask (default: every nonzero label).
    affine:
        4x4 index-to-LPS matrix (mm) for lesion centroids in LPS; optional.
    calibration_factor:
        Mass calibration in mg hydroxyapatite per cm³ per HU. Without it (or a rod) ``mass_mg`` is ``None``.
    rod_hu, rod_density_mg_cm3:
        A calibration rod's mean HU and known density (mg/cm³), instead of ``calibration_factor``.
    nominal_slice_thickness_mm:
        Recorded in the result for reports; never used in the arithmetic.

    Returns
    -------
    CalciumScore
        Totals over counted lesions, the risk category and the per-lesion table (lesions numbered from 1 in
        the order of their first voxel in ``(slice, row, column)`` raster order).
    """
    convention = convention or ScoringConvention()
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise ValueError(f"hu must be a 3D array (slices, rows, columns), got shape {hu.shape}")
    spacing = tuple(float(s) for s in spacing_mm)
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing_mm must be three positive numbers (dz, dy, dx), got {spacing_mm}")
    factor = _resolve_calibration(calibration_factor, rod_hu, rod_density_mg_cm3)

    if mask is None:
        if convention.mode != "roi":
            raise ValueError(f"mode {convention.mode!r} needs a lesion mask")
        region = np.ones(hu.shape, dtype=bool)
    else:
        mask = np.asarray(mask)
        if mask.shape != hu.shape:
            raise InputError("mask", f"mask shape {_dims(mask.shape)} does not match the CT shape {_dims(hu.shape)}",
                             code="grid-mismatch")
        region = np.isin(mask, np.asarray(labels)) if labels is not None else mask != 0
    # only the region's bounding box matters: work there (raster order, and so lesion numbering, is the same)
    full_shape, offset = hu.shape, (0, 0, 0)
    box = crop_box(region, (0, 0, 0))
    if box is not None and mask is not None:
        offset = tuple(b.start for b in box)
        hu, region, mask = hu[box], region[box], mask[box]

    calcified = hu >= convention.threshold_hu
    labelled, _ = ndimage.label(region & calcified if convention.mode == "roi" else region,
                                structure=_structure(convention.connectivity))
    flat = labelled.ravel()
    index = np.flatnonzero(flat)
    if convention.mode == "mapped":
        index = index[calcified.ravel()[index]]
    lesion_of = flat[index]
    # Sorting by lesion groups each lesion's voxels; a stable sort keeps them in raster order, so slice
    # indices never decrease within a lesion (used for the 3D cross-sections below).
    order = np.argsort(lesion_of, kind="stable")
    index, lesion_of = index[order], lesion_of[order]
    values = hu.ravel()[index].astype(np.float64)
    starts = np.flatnonzero(np.r_[True, lesion_of[1:] != lesion_of[:-1]]) if index.size else np.zeros(0, np.intp)
    counts = np.diff(np.r_[starts, index.size])
    k, j, i = np.unravel_index(index, hu.shape)
    k, j, i = k + offset[0], j + offset[1], i + offset[2]

    if convention.is_3d and index.size:
        section_key = lesion_of.astype(np.int64) * full_shape[0] + k
        section_starts = np.flatnonzero(np.r_[True, section_key[1:] != section_key[:-1]])
        section_counts = np.diff(np.r_[section_starts, index.size])
        section_lesion = lesion_of[section_starts]
        first_section = np.flatnonzero(np.r_[True, section_lesion[1:] != section_lesion[:-1]])
        largest_section = np.maximum.reduceat(section_counts, first_section)
    else:
        largest_section = counts

    pixel_area = spacing[1] * spacing[2]
    voxel_volume = spacing[0] * pixel_area
    peaks = np.maximum.reduceat(values, starts) if index.size else np.zeros(0)
    weights = _weights(peaks, convention.threshold_hu)
    keep = weights > 0
    if convention.min_area_mm2 is not None:
        keep &= largest_section * pixel_area >= convention.min_area_mm2 * (1 - _AREA_RTOL)
    if convention.min_area_px is not None:
        keep &= largest_section >= convention.min_area_px

    areas = counts * pixel_area
    agatston = areas * weights * (spacing[0] / 3.0)
    volumes = counts * voxel_volume
    hu_sums = np.add.reduceat(values, starts) if index.size else np.zeros(0)
    masses = factor * hu_sums * voxel_volume / 1000.0 if factor is not None else None

    total = float(agatston[keep].sum())
    table = _lesion_table(
        keep=keep, starts=starts, counts=counts, k=k, j=j, i=i, areas=areas, peaks=peaks, weights=weights,
        agatston=agatston, volumes=volumes, masses=masses, affine=affine,
        mask_values=None if mask is None or mask.dtype == np.bool_ else mask.ravel()[index],
    )
    return CalciumScore(
        agatston=total,
        volume_mm3=float(volumes[keep].sum()),
        mass_mg=float(masses[keep].sum()) if masses is not None else None,
        category=risk_category(total, convention.categories),
        lesions=table,
        convention=convention,
        slice_spacing_mm=spacing[0],
        nominal_slice_thickness_mm=nominal_slice_thickness_mm,
        calibration_factor=factor,
    )


def _lesion_table(*, keep: np.ndarray, starts: np.ndarray, counts: np.ndarray, k: np.ndarray, j: np.ndarray,
                  i: np.ndarray, areas: np.ndarray, peaks: np.ndarray, weights: np.ndarray, agatston: np.ndarray,
                  volumes: np.ndarray, masses: np.ndarray | None, affine: np.ndarray | None,
                  mask_values: np.ndarray | None) -> tuple[Lesion, ...]:
    if not keep.any():
        return ()
    centroids = np.stack([np.add.reduceat(axis.astype(np.float64), starts) for axis in (k, j, i)], axis=1)
    centroids /= counts[:, None]
    first, last = np.minimum.reduceat(k, starts), np.maximum.reduceat(k, starts)
    lps = None
    if affine is not None:
        homogeneous = np.c_[centroids, np.ones(len(centroids))]
        lps = (np.asarray(affine, dtype=np.float64) @ homogeneous.T).T[:, :3]
    mask_labels = None
    if mask_values is not None:
        # Most frequent label per lesion: count (lesion, label) pairs on compact label codes.
        codes, inverse = np.unique(mask_values, return_inverse=True)
        lesion_rank = np.repeat(np.arange(len(starts)), counts)
        pairs = np.bincount(lesion_rank * len(codes) + inverse, minlength=len(starts) * len(codes))
        mask_labels = codes[pairs.reshape(len(starts), len(codes)).argmax(axis=1)]

    # Plain Python lists first: per-element numpy scalar conversion dominates for scans with many lesions.
    rows = np.flatnonzero(keep)
    columns = [centroids[rows].tolist(), lps[rows].tolist() if lps is not None else [None] * len(rows),
               first[rows].tolist(), last[rows].tolist(), counts[rows].tolist(), areas[rows].tolist(),
               peaks[rows].tolist(), weights[rows].tolist(), agatston[rows].tolist(), volumes[rows].tolist(),
               masses[rows].tolist() if masses is not None else [None] * len(rows),
               mask_labels[rows].tolist() if mask_labels is not None else [None] * len(rows)]
    lesions = [
        Lesion(id=number, centroid_index=tuple(centroid), centroid_lps_mm=tuple(point) if point else None,
               slice_range=(start, stop), n_voxels=n, area_mm2=area, peak_hu=float(peak), weight=weight,
               agatston=score, volume_mm3=volume, mass_mg=mass, mask_label=label)
        for number, (centroid, point, start, stop, n, area, peak, weight, score, volume, mass, label)
        in enumerate(zip(*columns, strict=True), start=1)
    ]
    return tuple(lesions)


def _dims(shape: Sequence[int]) -> str:
    return "×".join(str(int(n)) for n in shape)


def _grid_text(volume: Volume) -> str:
    spacing = "×".join(f"{s:.4g}" for s in volume.spacing)
    origin = ", ".join(f"{v:.4g}" for v in volume.origin)
    return f"{_dims(volume.shape)} at {spacing} mm, origin ({origin}) mm"


def score_volume(
    ct: Volume,
    mask: Volume,
    convention: ScoringConvention | None = None,
    *,
    labels: Sequence[int] | None = None,
    mask_name: str | None = None,
    calibration_factor: float | None = None,
    rod_hu: float | None = None,
    rod_density_mg_cm3: float | None = None,
) -> CalciumScore:
    """:func:`score_calcium` on a CT :class:`Volume` and a mask :class:`Volume` on the same grid.

    The mask must have the CT's shape and affine (within 1e-3 mm); otherwise an :class:`InputError` with code
    ``grid-mismatch`` names ``mask_name`` (default ``"mask"``) and both grids. Δz is ``ct.spacing[0]`` (from
    slice positions); the nominal SliceThickness (``ct.meta["nominal_slice_thickness_mm"]``, DICOM inputs) is
    only recorded in the result.

    Both are scored in canonical orientation (:mod:`medhub.io.orientation`), so lesions are axial whatever axis
    order the files used (a sagittally stored NIfTI, a RAS file); the lesion table's indices count in that order,
    its LPS millimetre centroids hold in any.
    """
    where = mask_name or "mask"
    if ct.modality not in (None, "CT"):
        raise InputError(ct.meta.get("source_file") or "CT", f"modality {ct.modality}, calcium scoring needs CT",
                         code="wrong-modality")
    if not ct.same_grid(mask):
        raise InputError(where, f"mask grid {_grid_text(mask)} does not match the CT grid {_grid_text(ct)}; "
                                "resample the mask onto the CT first", code="grid-mismatch")
    thickness = ct.meta.get("nominal_slice_thickness_mm")
    ct, orientation = canonical_volume(ct)
    mask_array = np.ascontiguousarray(apply_canonical(mask.array, orientation))
    return score_calcium(
        ct.array, ct.spacing, mask_array, convention, labels=labels, affine=ct.affine,
        calibration_factor=calibration_factor, rod_hu=rod_hu, rod_density_mg_cm3=rod_density_mg_cm3,
        nominal_slice_thickness_mm=float(thickness) if thickness is not None else None,
    )
