"""Rules on accepted calcium lesions, between the classifier's decision and the score: plain functions on arrays in
index order (slice, row, column), HU and millimetres.

1. **Partial-volume footprint** (:func:`half_maximum_footprint`). The PSF spreads a dense plaque's HU beyond its
   edge: around a 800 HU plaque the image stays above 130 HU for about half a PSF width outside it, so scoring every
   ``>= 130 HU`` voxel of the lesion inflates dense plaques by up to half. Each lesion is cut, slice by slice, at its
   half-maximum level, ``background + (peak - background) / 2`` (never below 130 HU): on a blurred edge the
   half-maximum sits on the true boundary, whatever the PSF width. Only on grids that resolve the PSF
   (:func:`scored_footprint`): on coarse resamplings such as DeepCAC's 3 mm grid every ``>= 130 HU`` voxel counts.
2. **Lung contact** (:func:`drop_lung_contact`). Coronary calcium lies in the epicardial fat, under the
   pericardium; calcium with lung (< -400 HU) on a fifth or more of its 3 mm surroundings is pulmonary or pleural
   (a granuloma, a vessel wall) that the dilated heart region happens to reach. Such lesions are dropped and listed.
3. **Noise specks** (:func:`drop_noise_like`). A lesion under :data:`NOISE_MAX_AREA_MM2` (largest slice) whose
   peak is less than :data:`NOISE_PEAK_SD` noise SDs above the heart's soft tissue is dropped and listed:
   correlated noise of 20-30 HU makes such specks in any heart, and one is enough to turn a zero score into a
   non-zero one. The noise SD is measured on the scan itself (:func:`soft_tissue_noise`). The constants were
   chosen on validation phantoms (seeds 5000-5079 and, without coronary calcium, 6000-6059; never trained on).

The 0.x lesion network that these rules were first written for was removed in cac 0.14.0: it won nowhere against
the candidate classifier (RESULTS-history).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from medhub.masks import crop_box, dilate_ball

#: Candidate threshold (HU): only voxels at or above it can be coronary calcium (Agatston's threshold).
CANDIDATE_HU = 130.0


# ------------------------------------------------------------------------------------------- partial volume
#: In-plane rings (voxels) around a lesion where its local background is measured: from 2 to 4 voxels out.
BACKGROUND_RING_VOXELS = (2, 4)
_INPLANE_8 = np.ones((3, 3), bool)
_CONNECTED_26 = np.ones((3, 3, 3), bool)


def half_maximum_footprint(hu: np.ndarray, lesions: np.ndarray, min_hu: float = CANDIDATE_HU) -> np.ndarray:
    """Cut each lesion at its half-maximum HU level, to undo the PSF's spread of dense calcium.

    Works per slice, as Agatston does: for each 2D 8-connected lesion of ``lesions`` (bool, same grid as ``hu``) on
    slice ``z``, the peak is the highest HU of the lesion voxels on slices ``z - 1 .. z + 1`` within its footprint
    (so that a dense plaque's spill into the next slice is cut at the dense plaque's level), and the local
    background is the median HU in an in-plane ring :data:`BACKGROUND_RING_VOXELS` around it. The lesion keeps the
    voxels within one in-plane voxel of it that reach ``max(min_hu, background + (peak - background) / 2)``.
    Per slice rather than per 3D component, because one lesion can join two plaques through a few voxels of
    heart, and one plaque's peak must not set the other's level (a 383 HU plaque joined to an 888 HU one was
    removed whole). Returns a bool mask on the grid of ``hu``.
    """
    hu = np.asarray(hu)
    lesions = np.asarray(lesions, bool)
    out = np.zeros(hu.shape, bool)
    inner, outer = BACKGROUND_RING_VOXELS
    within = crop_box(lesions, (1, outer + 1, outer + 1))  # work on the lesions' box, not the whole scan
    if within is None:
        return out
    hu_in, lesions_in, out_in = hu[within], lesions[within], out[within]
    n_slices = hu_in.shape[0]
    for z in np.flatnonzero(lesions_in.any(axis=(1, 2))):
        lab, _ = ndi.label(lesions_in[z], structure=_INPLANE_8)
        neighbours = slice(max(z - 1, 0), min(z + 2, n_slices))
        for index, box in enumerate(ndi.find_objects(lab), start=1):
            if box is None:
                continue
            box = tuple(slice(max(s.start - outer - 1, 0), s.stop + outer + 1) for s in box)
            lesion = lab[box] == index
            column = lesions_in[neighbours][(slice(None), *box)] & lesion
            peak = float(hu_in[neighbours][(slice(None), *box)][column].max())
            image = hu_in[z][box].astype(np.float32)
            ring = (ndi.binary_dilation(lesion, _INPLANE_8, iterations=outer)
                    & ~ndi.binary_dilation(lesion, _INPLANE_8, iterations=inner))
            background = float(np.median(image[ring])) if ring.any() else 0.0
            level = max(min_hu, background + 0.5 * (peak - background))
            out_in[z][box] |= ndi.binary_dilation(lesion, _INPLANE_8) & (image >= level)
    return out


#: Largest in-plane pixel (mm) on which lesions are cut at their half-maximum. The cut needs the PSF's spread resolved:
#: a clinical kernel spreads a dense plaque's HU about half a millimetre past its edge, a fringe of one or two
#: sub-millimetre pixels. On a coarse resampling (DeepCAC's 3 mm grid: linear for the image, nearest neighbour for
#: its reference masks) that fringe is a fraction of a voxel, every ``>= 130 HU`` voxel holds calcium, and the
#: reference masks there hold every one of them; cutting lost half of a dense plaque's score against them.
HALF_MAXIMUM_MAX_PIXEL_MM = 1.5


def scored_footprint(hu: np.ndarray, lesions: np.ndarray, spacing_mm: Sequence[float],
                     min_hu: float = CANDIDATE_HU) -> np.ndarray:
    """The voxels of ``lesions`` (bool, on the grid of ``hu``) that are scored: cut at their half-maximum
    (:func:`half_maximum_footprint`) when the in-plane pixel is at most :data:`HALF_MAXIMUM_MAX_PIXEL_MM`, otherwise
    every ``>= min_hu`` voxel. ``spacing_mm`` is (slice, row, column)."""
    if footprint_rule(spacing_mm) == "half-maximum":
        return half_maximum_footprint(hu, lesions, min_hu)
    return np.asarray(lesions, bool) & (np.asarray(hu) >= min_hu)


def footprint_rule(spacing_mm: Sequence[float]) -> str:
    """How :func:`scored_footprint` treats lesions on a grid of ``spacing_mm`` (slice, row, column; mm):
    ``"half-maximum"`` (cut) or ``"threshold"`` (every ``>= 130 HU`` voxel), for the run's record."""
    pixel_mm = math.sqrt(float(spacing_mm[1]) * float(spacing_mm[2]))
    return "half-maximum" if pixel_mm <= HALF_MAXIMUM_MAX_PIXEL_MM else "threshold"


def _drop_lesions(hu: np.ndarray, lesions: np.ndarray, pad: Sequence[int],
                  verdict: Callable[[np.ndarray, np.ndarray], dict[str, Any] | None]
                  ) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Remove each 26-connected lesion for which ``verdict(lesion, hu_box)`` returns a record (a dict with at least
    ``"reason"``); ``lesion`` is the lesion's bool mask on ``hu_box``, its bounding box grown by ``pad`` voxels.
    Returns the kept mask and the records, completed with slice range, centroid index and voxel count."""
    out = np.asarray(lesions, bool).copy()
    within = crop_box(out, tuple(pad))  # work on the lesions' box, not the whole scan
    if within is None:
        return out, []
    offset = [b.start for b in within]
    hu_in, out_in = np.asarray(hu)[within], out[within]
    lab, _ = ndi.label(out_in, structure=_CONNECTED_26)
    dropped = []
    for index, box in enumerate(ndi.find_objects(lab), start=1):
        if box is None:
            continue
        box = tuple(slice(max(b.start - p, 0), b.stop + p) for b, p in zip(box, pad, strict=True))
        lesion = lab[box] == index
        record = verdict(lesion, hu_in[box])
        if record is None:
            continue
        out_in[box] &= ~lesion
        idx = np.argwhere(lesion) + [b.start + o for b, o in zip(box, offset, strict=True)]
        dropped.append({**record, "first_slice": int(idx[:, 0].min()), "last_slice": int(idx[:, 0].max()),
                        "centroid_index": [round(float(v), 1) for v in idx.mean(axis=0)], "voxels": len(idx)})
    return out, dropped


#: Lung HU, the surroundings (mm) examined and the share of lung that makes a lesion pulmonary.
LUNG_HU, LUNG_CONTACT_MM, MAX_LUNG_CONTACT = -400.0, 3.0, 0.2


def drop_lung_contact(hu: np.ndarray, lesions: np.ndarray, spacing_mm: Sequence[float],
                      max_fraction: float = MAX_LUNG_CONTACT) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Remove lesions with lung (< :data:`LUNG_HU`) on more than ``max_fraction`` of their
    :data:`LUNG_CONTACT_MM` surroundings. Returns the kept mask and one record per dropped lesion (slice range,
    centroid index, voxels, lung fraction)."""

    def verdict(lesion: np.ndarray, hu_box: np.ndarray) -> dict[str, Any] | None:
        ring = dilate_ball(lesion, spacing_mm, LUNG_CONTACT_MM) & ~lesion
        fraction = float((hu_box[ring] < LUNG_HU).mean()) if ring.any() else 0.0
        if fraction <= max_fraction:
            return None
        return {"reason": "lung contact", "lung_fraction": round(fraction, 3)}

    pad = tuple(int(np.ceil(LUNG_CONTACT_MM / s)) + 1 for s in spacing_mm)
    return _drop_lesions(hu, lesions, pad, verdict)


#: Soft tissue (HU) whose spread measures the noise: blood and myocardium, without fat and calcium.
SOFT_TISSUE_HU = (-30.0, 130.0)
#: A lesion whose largest slice is under this area (mm²) ...
NOISE_MAX_AREA_MM2 = 4.0
#: ... and whose peak is under this many noise SDs above soft tissue cannot be told apart from noise. A heart
#: region holds tens of thousands of independent noise samples (0.6-1.2 mm correlation), so noise alone peaks near
#: 4.5 SD somewhere in it: on 60 validation phantoms without coronary calcium (seeds 6,000-6,059), 4 of the 5 false
#: scores of 0.4.0's first rule (3 mm², 4 SD) were specks of 1.2-3.4 mm² at 4.0-4.1 SD.
NOISE_PEAK_SD = 4.5


def soft_tissue_noise(hu: np.ndarray, heart_mask: np.ndarray) -> tuple[float, float]:
    """Median HU and noise SD (HU, 1.4826 × median absolute deviation) of the heart's soft tissue: the voxels of
    ``heart_mask`` within :data:`SOFT_TISSUE_HU`. Blood and myocardium are both 30-50 HU without contrast, so
    their spread is the image noise. ``(nan, nan)`` when there is no such voxel."""
    box = crop_box(np.asarray(heart_mask, bool), (0, 0, 0))
    if box is None:
        return float("nan"), float("nan")
    values = np.asarray(hu)[box][np.asarray(heart_mask)[box]]
    values = values[(values > SOFT_TISSUE_HU[0]) & (values < SOFT_TISSUE_HU[1])].astype(np.float32)
    if not values.size:
        return float("nan"), float("nan")
    median = float(np.median(values))
    return median, 1.4826 * float(np.median(np.abs(values - median)))


def drop_noise_like(hu: np.ndarray, lesions: np.ndarray, spacing_mm: Sequence[float], tissue_hu: float,
                    noise_sd: float, max_area_mm2: float = NOISE_MAX_AREA_MM2, peak_sd: float = NOISE_PEAK_SD
                    ) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Remove lesions that noise alone explains: largest slice under ``max_area_mm2`` and peak under
    ``tissue_hu + peak_sd * noise_sd``. With 20-30 HU of correlated noise the heart region holds specks of
    130-165 HU over a few voxels; a real plaque that small and that faint adds at most a few Agatston points, so
    dropping it costs little, while keeping a noise speck turns a zero score into a non-zero one.
    Returns the kept mask and one record per dropped lesion. Nothing is dropped when ``noise_sd`` is not finite."""
    if not np.isfinite(noise_sd) or not np.isfinite(tissue_hu):
        return np.asarray(lesions, bool).copy(), []
    pixel_mm2 = float(spacing_mm[1]) * float(spacing_mm[2])
    level = tissue_hu + peak_sd * noise_sd

    def verdict(lesion: np.ndarray, hu_box: np.ndarray) -> dict[str, Any] | None:
        area = float(lesion.sum(axis=(1, 2)).max()) * pixel_mm2
        peak = float(hu_box[lesion].max())
        if area >= max_area_mm2 or peak >= level:
            return None
        return {"reason": "noise-like", "peak_hu": peak, "area_mm2": round(area, 2),
                "noise_level_hu": round(level, 1)}

    return _drop_lesions(hu, lesions, (0, 0, 0), verdict)
