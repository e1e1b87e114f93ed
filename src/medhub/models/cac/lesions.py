"""Coronary-calcium lesion segmentation: a small 3D U-Net that tells coronary calcium apart from noise and from
non-coronary calcium (aortic valve, mitral annulus, aortic wall, bone).

Pipeline of :func:`segment_calcium`, stated once:

1. **Candidates.** Only voxels ``>= 130 HU`` inside ``heart_region`` (the dilated heart, given by the caller) can
   be positive. Without candidates the answer is an empty mask and the network is not run at all.
2. **Working grid.** The bounding box of the heart region plus :data:`CONTEXT_MM` of context is resampled to an
   isotropic :data:`WORK_SPACING_MM` grid (separable linear interpolation, Gaussian anti-aliasing when
   down-sampling). Training used the same function, so the network always sees the same voxel size.
3. **Network.** Two input channels: a soft-tissue window ``clip(HU - shift, -250, 350) / 250`` and a calcium
   window ``clip(HU - 130, 0, 800) / 400``. ``shift`` brings the scan's own soft tissue (the heart's median,
   :func:`soft_tissue_noise`) to the phantoms' level, :data:`SOFT_TISSUE_REFERENCE_HU`, within
   :data:`MAX_SOFT_TISSUE_SHIFT_HU`: the phantoms give every tissue one HU, and the network came to rely on it
   (on LIDC 0987 a +10 HU shift of the whole scan took its lesions' probabilities from 0.97/0.83 to 0.01). The
   calcium window stays absolute, as Agatston's 130 HU threshold is. The network
   (:class:`medhub.learn.unet3d.UNet3D`, no normalisation layers) is fully convolutional, so it runs on the whole
   region at once, or in overlapping z slabs for big regions.
4. **Back to the input grid.** The probability map is interpolated (trilinear) at every candidate voxel of the
   input grid. Candidates are grouped into 26-connected components: a component whose mean probability is
   ``>= threshold`` is kept whole (so the whole ``>= 130 HU`` part of a plaque is covered), otherwise only its
   voxels with probability ``>= threshold`` are kept.
   A kept lesion lying mostly outside the heart mask proper (in the margin around it, where the aortic wall, the
   valve rings and bone lie too) must reach a mean probability of :data:`OUTSIDE_HEART_THRESHOLD`.

5. **Partial-volume footprint** (:func:`half_maximum_footprint`). The PSF spreads a dense plaque's HU beyond its
   edge: around a 800 HU plaque the image stays above 130 HU for about half a PSF width outside it, so scoring every
   ``>= 130 HU`` voxel of the lesion inflates dense plaques by up to half. Each lesion is cut, slice by slice, at its
   half-maximum level, ``background + (peak - background) / 2`` (never below 130 HU): on a blurred edge the
   half-maximum sits on the true boundary, whatever the PSF width. Only on grids that resolve the PSF
   (:func:`scored_footprint`): on coarse resamplings such as DeepCAC's 3 mm grid every ``>= 130 HU`` voxel counts.

6. **Lung contact** (:func:`drop_lung_contact`). Coronary calcium lies in the epicardial fat, under the
   pericardium; calcium with lung (< -400 HU) on a fifth or more of its 3 mm surroundings is pulmonary or pleural
   (a granuloma, a vessel wall) that the dilated heart region happens to reach. Such lesions are dropped and listed.
   On the generated phantoms no coronary plaque has more than 5 % lung around it; the false lesion on LIDC 0187 has
   31 %.

7. **Noise specks** (:func:`drop_noise_like`). A lesion under :data:`NOISE_MAX_AREA_MM2` (largest slice) whose
   peak is less than :data:`NOISE_PEAK_SD` noise SDs above the heart's soft tissue is dropped and listed:
   correlated noise of 20-30 HU makes such specks in any heart, and one is enough to turn a zero score into a
   non-zero one. The noise SD is measured on the scan itself (:func:`soft_tissue_noise`). The constants were
   chosen on validation phantoms (seeds 5000-5079 and, without coronary calcium, 6000-6059; never trained on);
   see their comments.

Everything is deterministic: fixed thread count during inference, deterministic algorithms, no randomness.

The shipped weights were trained on synthetic phantoms only (:mod:`medhub.synth.cac_phantom`) with
:mod:`medhub.models.cac.train`; they are not validated on patient scans.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi

from medhub.io.files import sidecar_path
from medhub.learn.unet3d import UNet3D, UNet3DConfig
from medhub.masks import crop_box, dilate_ball

#: Candidate threshold (HU): only voxels at or above it can be coronary calcium (Agatston's threshold).
CANDIDATE_HU = 130.0
#: Isotropic voxel size (mm) of the grid the network works on.
WORK_SPACING_MM = 1.5
#: Context (mm) added around the heart region's bounding box before running the network.
CONTEXT_MM = 12.0
#: Above this many working voxels, inference runs in overlapping z slabs.
MAX_WHOLE_VOXELS = 2_500_000
#: Slab overlap (working voxels) on each side when tiling.
SLAB_MARGIN = 24
#: Default decision threshold on the probability.
THRESHOLD = 0.5
#: Mean probability a lesion lying mostly outside the heart mask needs: the margin around the heart holds the
#: aortic wall, the valve rings and bone as well as the coronaries. On 74 validation phantoms (seeds 5000-5079)
#: 0.70-0.80 all remove the same two false lesions (aortic-wall and annulus calcium) and no coronary plaque;
#: the least confident coronary plaque outside the heart mask had a mean of 0.86.
OUTSIDE_HEART_THRESHOLD = 0.75

DEFAULT_WEIGHTS = Path(__file__).with_name("weights") / "cac_lesion_unet.pt"

#: The network configuration the shipped weights use (also stored in the sidecar JSON).
DEFAULT_NET = UNet3DConfig(in_channels=2, out_channels=1, base_channels=8, depth=4, norm="none")


# ------------------------------------------------------------------------------------------- resampling
def _axis_weights(n_in: int, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear interpolation indices and weights along one axis for fractional ``positions`` (index units);
    positions outside ``[0, n_in - 1]`` are clamped (edge replication)."""
    p = np.clip(positions, 0.0, n_in - 1.0)
    i0 = np.floor(p).astype(np.intp)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w = (p - i0).astype(np.float32)
    return i0, i1, w


def resample_linear(array: np.ndarray, positions: Sequence[np.ndarray]) -> np.ndarray:
    """Separable linear interpolation of a 3D array at the outer product of per-axis fractional index
    ``positions`` (clamped at the edges). Returns float32 of shape ``(len(p0), len(p1), len(p2))``."""
    out = np.asarray(array, dtype=np.float32)
    for axis, pos in enumerate(positions):
        i0, i1, w = _axis_weights(out.shape[axis], np.asarray(pos, dtype=np.float64))
        shape = [1, 1, 1]
        shape[axis] = len(w)
        w = w.reshape(shape)
        out = np.take(out, i0, axis=axis) * (1.0 - w) + np.take(out, i1, axis=axis) * w
    return out


def antialias(array: np.ndarray, spacing_mm: Sequence[float], target_mm: float) -> np.ndarray:
    """Gaussian pre-filter before down-sampling to ``target_mm`` (only along axes finer than the target)."""
    sigma = [0.4 * target_mm / s if target_mm > s * 1.05 else 0.0 for s in spacing_mm]
    if not any(sigma):
        return np.asarray(array, dtype=np.float32)
    return ndi.gaussian_filter(np.asarray(array, dtype=np.float32), sigma=sigma, mode="nearest")


@dataclass(frozen=True)
class WorkGrid:
    """An isotropic working grid laid over an input grid: working voxel ``w`` along axis ``a`` sits at input
    (fractional) index ``start[a] + w * step[a]``."""

    start: tuple[float, float, float]
    step: tuple[float, float, float]
    shape: tuple[int, int, int]

    def positions(self) -> list[np.ndarray]:
        return [self.start[a] + np.arange(self.shape[a]) * self.step[a] for a in range(3)]

    def to_work(self, index: np.ndarray) -> np.ndarray:
        """Input-grid indices ``(N, 3)`` -> fractional working-grid indices ``(N, 3)``."""
        return (np.asarray(index, np.float64) - np.asarray(self.start)) / np.asarray(self.step)


def work_grid_for(bbox_lo: Sequence[int], bbox_hi: Sequence[int], spacing_mm: Sequence[float],
                  context_mm: float = CONTEXT_MM, work_mm: float = WORK_SPACING_MM, multiple: int = 8
                  ) -> WorkGrid:
    """The working grid covering the input-index box ``[lo, hi)`` plus ``context_mm`` on each side, with every
    size a multiple of ``multiple`` (the box is grown symmetrically; it may extend past the input: edge values
    are replicated there)."""
    start, step, shape = [], [], []
    for lo, hi, s in zip(bbox_lo, bbox_hi, spacing_mm, strict=True):
        extent = (hi - 1 - lo) * s + 2.0 * context_mm
        n = math.ceil(extent / work_mm) + 1
        n = int(math.ceil(n / multiple) * multiple)
        centre = (lo + hi - 1) / 2.0
        st = work_mm / s
        start.append(centre - (n - 1) / 2.0 * st)
        step.append(st)
        shape.append(n)
    return WorkGrid(tuple(start), tuple(step), tuple(shape))  # type: ignore[arg-type]


#: Soft-tissue level (HU) of the training phantoms, as :func:`soft_tissue_noise` measures it (37-40 HU on them:
#: blood 38 HU, myocardium 45 HU).
SOFT_TISSUE_REFERENCE_HU = 40.0
#: Largest shift (HU) of the soft-tissue channel towards the reference; a scan further off is shifted this much.
MAX_SOFT_TISSUE_SHIFT_HU = 40.0


def soft_tissue_shift(soft_tissue_hu: float | None) -> float:
    """How far (HU) a scan's soft tissue lies above the phantoms' (:data:`SOFT_TISSUE_REFERENCE_HU`), clipped to
    :data:`MAX_SOFT_TISSUE_SHIFT_HU`; 0 when unknown."""
    if soft_tissue_hu is None or not math.isfinite(soft_tissue_hu):
        return 0.0
    limit = MAX_SOFT_TISSUE_SHIFT_HU
    return float(min(max(soft_tissue_hu - SOFT_TISSUE_REFERENCE_HU, -limit), limit))


def hu_channels(hu_work: np.ndarray, soft_shift_hu: float = 0.0) -> np.ndarray:
    """Network input ``(2, D, H, W)`` float32 from working-grid HU; the soft-tissue window is read ``soft_shift_hu``
    higher (see :func:`soft_tissue_shift`)."""
    soft = np.clip(hu_work - soft_shift_hu, -250.0, 350.0) / 250.0
    calc = np.clip(hu_work - CANDIDATE_HU, 0.0, 800.0) / 400.0
    return np.stack([soft, calc]).astype(np.float32)


def to_work(hu: np.ndarray, spacing_mm: Sequence[float], grid: WorkGrid, work_mm: float = WORK_SPACING_MM
            ) -> np.ndarray:
    """Input HU -> working-grid HU (anti-aliased, linear; only the needed box is filtered)."""
    pos = grid.positions()
    # crop the input to the box the positions need (plus a filter margin) before filtering
    lo = [max(0, math.floor(p.min()) - 4) for p in pos]
    hi = [min(n, math.ceil(p.max()) + 5) for p, n in zip(pos, hu.shape, strict=True)]
    lo = [min(lo_a, n - 1) for lo_a, n in zip(lo, hu.shape, strict=True)]
    hi = [max(hi_a, lo_a + 1) for hi_a, lo_a in zip(hi, lo, strict=True)]
    crop = hu[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    crop = antialias(crop, spacing_mm, work_mm)
    return resample_linear(crop, [p - o for p, o in zip(pos, lo, strict=True)])


# ------------------------------------------------------------------------------------------- model
def load_network(weights_path: Path = DEFAULT_WEIGHTS) -> tuple[UNet3D, dict[str, Any]]:
    """The network with its weights, in evaluation mode, and the sidecar (``{}`` when there is none).

    The network configuration comes from the sidecar's ``"net"`` entry, else :data:`DEFAULT_NET`.
    """
    weights_path = Path(weights_path)
    side = sidecar_path(weights_path)
    meta: dict[str, Any] = json.loads(side.read_text()) if side.exists() else {}
    config = UNet3DConfig.from_dict(meta["net"]) if "net" in meta else DEFAULT_NET
    net = UNet3D(config)
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    net.eval()
    # channels-last 3D convolutions are about twice as fast on CPU (oneDNN)
    net.to(memory_format=torch.channels_last_3d)
    return net, meta


@lru_cache(maxsize=2)
def _network(weights_path: str, mtime: float) -> tuple[UNet3D, dict[str, Any]]:
    return load_network(Path(weights_path))


def _cached_network(weights_path: Path) -> tuple[UNet3D, dict[str, Any]]:
    """The network at ``weights_path``, loaded once per process (per file version), as the classifier is."""
    p = Path(weights_path).resolve()
    return _network(str(p), p.stat().st_mtime)


@contextmanager
def deterministic_torch(threads: int | None = 1):
    """Fixed thread count and deterministic algorithms for the duration of the block (restored afterwards)."""
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        if threads is not None:
            torch.set_num_threads(int(threads))
        # torch.use_deterministic_algorithms() also sets an inductor option and imports torch._inductor and
        # torch._dynamo for it: about 2 s on one core. The eager flag alone is what inference needs.
        torch._C._set_deterministic_algorithms(True, warn_only=True)
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch._C._set_deterministic_algorithms(old_det, warn_only=old_warn)


def predict_probability(net: UNet3D, channels: np.ndarray, max_voxels: int = MAX_WHOLE_VOXELS,
                        margin: int = SLAB_MARGIN) -> np.ndarray:
    """Sigmoid probability ``(D, H, W)`` float32 of the network on ``channels`` ``(C, D, H, W)`` (sizes multiples
    of ``net.size_multiple``); in overlapping z slabs when the volume is big."""
    _c, d, h, w = channels.shape
    m = net.size_multiple
    out = np.empty((d, h, w), np.float32)
    with torch.inference_mode():
        if d * h * w <= max_voxels:
            x = torch.from_numpy(np.ascontiguousarray(channels))[None]
            return torch.sigmoid(net(x.contiguous(memory_format=torch.channels_last_3d)))[0, 0].numpy().copy()
        # tiles start on multiples of m (same pooling grid as the whole volume) and keep `margin` voxels of
        # context on both sides of the part they contribute, so the result equals the whole-volume one
        margin = int(math.ceil(margin / m) * m)
        core = max(m, ((max_voxels // (h * w)) - 2 * margin) // m * m)
        z = 0
        while z < d:
            z0 = max(0, z - margin)
            z1 = min(d, z + core + margin)
            n = z1 - z0
            pad = (-n) % m
            x = torch.from_numpy(np.ascontiguousarray(channels[:, z0:z1]))[None]
            if pad:
                x = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, pad), mode="replicate")
            x = x.contiguous(memory_format=torch.channels_last_3d)
            p = torch.sigmoid(net(x))[0, 0, :n].numpy()
            ze = min(d, z + core)
            out[z:ze] = p[z - z0:ze - z0]
            z = ze
    return out


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
    Per slice rather than per 3D component, because the network's mask can join two plaques through a few voxels of
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


# ------------------------------------------------------------------------------------------- inference
def candidate_mask(hu: np.ndarray, heart_region: np.ndarray) -> np.ndarray:
    """Voxels that may be coronary calcium: ``>= 130 HU`` inside the heart region."""
    return (np.asarray(hu) >= CANDIDATE_HU) & np.asarray(heart_region, bool)


def _mean_per_label(labels: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Mean of ``values`` per label ``0..n`` (``labels`` and ``values`` aligned 1D arrays); 0 for an absent label."""
    counts = np.bincount(labels, minlength=n + 1)
    return np.bincount(labels, weights=np.asarray(values, np.float64), minlength=n + 1) / np.maximum(counts, 1)


def decide_components(candidates: np.ndarray, prob_at: np.ndarray, threshold: float = THRESHOLD,
                      outside_heart: np.ndarray | None = None, outside_threshold: float = OUTSIDE_HEART_THRESHOLD
                      ) -> np.ndarray:
    """Per-candidate decision from the probability at each candidate voxel (in ``np.nonzero`` order): a
    26-connected candidate component with mean probability ``>= threshold`` is kept whole, otherwise only its
    voxels at or above the threshold. With ``outside_heart`` (bool per candidate, same order: the voxel lies outside
    the heart mask proper), a kept lesion (26-connected) lying mostly outside the heart must also reach a mean
    probability of ``outside_threshold``. Returns a bool mask on the grid of ``candidates``."""
    out = np.zeros(candidates.shape, bool)
    nz = np.nonzero(candidates)
    if not len(nz[0]):
        return out
    box = tuple(slice(int(a.min()), int(a.max()) + 1) for a in nz)
    sub = candidates[box]
    lab, n = ndi.label(sub, structure=_CONNECTED_26)
    idx = lab[sub]  # same (C) order as np.nonzero(candidates)
    prob_at = np.asarray(prob_at, np.float64)
    out_vals = prob_at >= threshold
    if n:
        out_vals |= _mean_per_label(idx, prob_at, n)[idx] >= threshold
    if outside_heart is not None and out_vals.any():
        kept = np.zeros(sub.shape, bool)
        kept[sub] = out_vals
        lesion_lab, n_lesions = ndi.label(kept, structure=_CONNECTED_26)
        lesion = lesion_lab[sub][out_vals]
        mean = _mean_per_label(lesion, prob_at[out_vals], n_lesions)
        outside = _mean_per_label(lesion, np.asarray(outside_heart, bool)[out_vals], n_lesions)
        unsure = (outside > 0.5) & (mean < outside_threshold)
        out_vals[out_vals] = ~unsure[lesion]
    out[box][sub] = out_vals
    return out


def calcium_probability(hu: np.ndarray, spacing_mm: Sequence[float], heart_region: np.ndarray,
                        net: UNet3D, candidates: np.ndarray | None = None, soft_tissue_hu: float | None = None
                        ) -> tuple[np.ndarray, np.ndarray]:
    """The network's probability at every candidate voxel. Returns ``(candidates, prob_at_candidates)``.
    ``soft_tissue_hu`` is the scan's soft-tissue level (see :func:`soft_tissue_shift`)."""
    if candidates is None:
        candidates = candidate_mask(hu, heart_region)
    if not candidates.any():
        return candidates, np.zeros(0, np.float32)
    box = crop_box(heart_region, (0, 0, 0))
    lo = [b.start for b in box]
    hi = [b.stop for b in box]
    grid = work_grid_for(lo, hi, spacing_mm, multiple=net.size_multiple)
    hu_w = to_work(hu, spacing_mm, grid)
    prob = predict_probability(net, hu_channels(hu_w, soft_tissue_shift(soft_tissue_hu)))
    coords = grid.to_work(np.argwhere(candidates[box]) + np.asarray(lo)).T
    prob_at = ndi.map_coordinates(prob, coords, order=1, mode="nearest").astype(np.float32)
    return candidates, prob_at


def segment_calcium(hu: np.ndarray, spacing_mm: Sequence[float], heart_region: np.ndarray,
                    weights_path: Path = DEFAULT_WEIGHTS, *, threshold: float = THRESHOLD,
                    threads: int | None = 1, heart_mask: np.ndarray | None = None,
                    soft_tissue_hu: float | None = None) -> np.ndarray:
    """Coronary-calcium mask (uint8 0/1) on the input grid.

    Parameters
    ----------
    hu:
        CT in HU, ``(slices, rows, cols)``.
    spacing_mm:
        ``(slice spacing, row spacing, column spacing)`` in mm.
    heart_region:
        Bool mask on the same grid: the (already dilated) heart region. Only voxels ``>= 130 HU`` inside it can be
        positive.
    weights_path:
        The ``.pt`` state dict; its JSON sidecar (same name, ``.json``) gives the network configuration.
    threshold:
        Decision threshold on the probability.
    threads:
        Torch threads during inference (fixed for reproducibility); ``None`` leaves torch's setting alone.
    heart_mask:
        The heart mask proper (inside ``heart_region``); lesions mostly outside it need a mean probability of
        :data:`OUTSIDE_HEART_THRESHOLD` (see :func:`decide_components`). ``None``: one threshold everywhere.
    soft_tissue_hu:
        The scan's soft-tissue level (HU; :func:`soft_tissue_noise`), to which the network's soft-tissue window is
        aligned (:func:`soft_tissue_shift`). ``None``: no alignment.
    """
    hu = np.asarray(hu)
    heart_region = np.asarray(heart_region, bool)
    if hu.ndim != 3 or heart_region.shape != hu.shape:
        raise ValueError(f"hu {hu.shape} and heart_region {heart_region.shape} must be the same 3D grid")
    out = np.zeros(hu.shape, np.uint8)
    box = crop_box(heart_region, (0, 0, 0))  # nothing outside the region's bounding box can be positive
    if box is None:
        return out
    candidates = np.zeros(hu.shape, bool)
    candidates[box] = candidate_mask(hu[box], heart_region[box])
    if not candidates[box].any():
        return out
    net, _ = _cached_network(Path(weights_path))
    with deterministic_torch(threads):
        _, prob_at = calcium_probability(hu, spacing_mm, heart_region, net, candidates, soft_tissue_hu)
    outside = None if heart_mask is None else ~np.asarray(heart_mask, bool)[box][candidates[box]]
    out[box] = decide_components(candidates[box], prob_at, threshold, outside)
    return out
