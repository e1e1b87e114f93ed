"""Partial-volume restoration of the Agatston score: a research estimate of the blur-free, noise-free score.

**Why.** Image-based Agatston (:func:`medhub.cac.scoring.score_calcium`, the score ``cac`` reports and clinical
thresholds were set on) scores what the scan shows. The PSF and the slice profile shrink the >= 130 HU area of
faint plaques and lower their peaks, and correlated noise lifts peaks over the 200/300/400 HU bin edges. On the
generated phantoms even the *true* plaque mask, scored on the image, is within ±10 %/±5 of the analytic
(blur-free) score on only 80-86 % of phantoms (``benchmarks/cac_ceiling.py``).

**How.** The lesion mask (the voxels ``cac`` scored) is split into *lesion groups*: 26-connected components of the
mask grown by one voxel, so nearby fragments of one plaque stay together. For each group a small 3D CNN
(:class:`GroupRestorationNet`) sees a 7 x 16 x 16 voxel patch round the group's centroid (HU, the group, the other
lesions), pools its features over the group and adds 14 scalars: slice spacing, slice thickness, pixel spacing,
the group's image score, volume and HU statistics, and the scan's sharpness measured on its own lung edges
(:func:`medhub.image_quality.edge_spread_sigma_mm`). It predicts ``log1p(restored) - log1p(image score)``; the
eight in-plane flips and transposes are averaged. The restored Agatston is the sum over groups.

**What it is not.** It was trained on generated phantoms only, whose plaques have one HU each (mid-bin 165, 250,
350 or 600-1,000 HU); real plaques do not. It is reported beside the image-based Agatston, never instead of it, and
the risk category stays the image-based one. Outside the scanner parameters it was trained on (the sidecar's
``trained_range``) it is not computed, and the reason is given.

Units: spacing and thickness in mm (slice, row, column), HU, scores in Agatston points.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi
from torch import nn

from medhub.cac.scoring import ScoringConvention, score_calcium
from medhub.image_quality import edge_spread_sigma_mm
from medhub.io.files import sidecar_path
from medhub.masks import crop_centred


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


#: Patch stored round a group's centroid (slices, rows, columns); the network sees its middle :data:`NET_PATCH`.
PATCH = (7, 24, 24)
NET_PATCH = (7, 16, 16)
#: HU window of the image channel (clipped, then divided by 400).
PATCH_HU = (-300.0, 1500.0)
MAPPED = ScoringConvention(mode="mapped")
#: The shipped weights (the card's ``extra_weights``).
DEFAULT_WEIGHTS = Path(__file__).with_name("weights") / "cac_restoration.pt"
_CUBE = np.ones((3, 3, 3), bool)


def lesion_groups(mask: np.ndarray) -> np.ndarray:
    """Group labels 1, 2, ... on the voxels of ``mask`` (0 elsewhere): 26-connected components of the mask grown
    by one voxel."""
    labels, _n = ndi.label(ndi.binary_dilation(mask, structure=_CUBE), structure=_CUBE)
    return np.where(mask, labels, 0)


@dataclass(frozen=True)
class GroupPatches:
    """Per lesion group: ``patches`` ``(N, 3, *PATCH)`` float16 (HU clipped to :data:`PATCH_HU` / 400, the group,
    the other lesions), raw ``scalars`` ``(N, 7)`` (slice spacing, thickness and pixel spacing in mm,
    log1p(image score), log1p(volume mm³), peak HU / 400, edge sigma in mm), ``standard`` ``(N,)`` image scores,
    the group ``labels`` (shaped like the mask), and per row its label and rounded centroid (voxel index)."""

    patches: np.ndarray
    scalars: np.ndarray
    standard: np.ndarray
    labels: np.ndarray
    group_ids: list[int] = field(default_factory=list)
    centres: list[list[int]] = field(default_factory=list)


def group_patches(hu: np.ndarray, spacing_mm: tuple[float, float, float], thickness_mm: float, mask: np.ndarray,
                  edge_sigma_mm: float) -> GroupPatches:
    """The restoration network's raw inputs for every lesion group of ``mask`` (canonical axial order)."""
    image = hu.astype(np.float32)
    labels = lesion_groups(mask)
    patches, scalars, standard, ids, centres = [], [], [], [], []
    for index, box in enumerate(ndi.find_objects(labels), start=1):
        group = labels[box] == index
        # a group's score and statistics need only its bounding box; the patch is cut from the whole volume
        score = score_calcium(image[box], spacing_mm, group, MAPPED).agatston
        centre = np.round(np.argwhere(group).mean(axis=0) + [s.start for s in box]).astype(int)
        in_group = crop_centred(labels, centre, PATCH, 0) == index
        channels = [np.clip(crop_centred(image, centre, PATCH, -100.0), *PATCH_HU) / 400.0, in_group,
                    crop_centred(mask, centre, PATCH, False) & ~in_group]
        patches.append(np.stack([c.astype(np.float32) for c in channels]).astype(np.float16))
        volume = group.sum() * float(np.prod(spacing_mm))
        scalars.append([spacing_mm[0], thickness_mm, spacing_mm[1], np.log1p(score), np.log1p(volume),
                        float(image[box][group].max()) / 400, edge_sigma_mm])
        standard.append(score)
        ids.append(index)
        centres.append([int(c) for c in centre])
    return GroupPatches(np.array(patches, np.float16).reshape(-1, 3, *PATCH),
                        np.array(scalars, np.float32).reshape(-1, 7), np.array(standard, float), labels, ids,
                        centres)


def network_inputs(patches: np.ndarray, scalars: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The middle :data:`NET_PATCH` of the patches, and 14 scaled scalars: spacing / 3, thickness / 3, pixel
    spacing / 0.7, log1p(image score), log1p(volume) / 5, peak / 400; the mean, median, quartiles, top-3 and
    top-5 means (HU / 400) of the group's voxels in the patch and log1p(their count) / 5; (edge sigma - 0.4 mm) /
    0.1 mm."""
    stats = np.zeros((len(patches), 7), np.float32)
    for i, patch in enumerate(patches):
        values = np.sort(patch[0][patch[1] > 0.5].astype(np.float32))[::-1]
        if len(values):
            stats[i] = [np.mean(values), np.median(values), np.percentile(values, 25), np.percentile(values, 75),
                        values[:3].mean(), values[:5].mean(), np.log1p(len(values)) / 5]
    scaled = scalars[:, :6] / np.array([3, 3, 0.7, 1, 5, 1], np.float32)
    sharpness = (scalars[:, 6:7] - 0.4) / 0.1
    dy, dx = [(a - b) // 2 for a, b in zip(PATCH[1:], NET_PATCH[1:], strict=True)]
    middle = patches[..., dy:dy + NET_PATCH[1], dx:dx + NET_PATCH[2]]
    return np.ascontiguousarray(middle), np.concatenate([scaled, stats, sharpness], 1).astype(np.float32)


class GroupRestorationNet(nn.Module):
    """Four 3D convolutions (16-32 channels, one in-plane pooling), features pooled over the group (mean and max),
    concatenated with the scalars, two linear layers: ``log1p(restored) - log1p(image score)``."""

    def __init__(self, n_scalars: int = 14, channels: int = 16) -> None:
        super().__init__()
        c = channels
        self.features = nn.Sequential(
            nn.Conv3d(3, c, (1, 3, 3), padding=(0, 1, 1)), nn.ReLU(),
            nn.Conv3d(c, c, 3, padding=1), nn.ReLU(),
            nn.MaxPool3d((1, 2, 2)),
            nn.Conv3d(c, 2 * c, 3, padding=1), nn.ReLU(),
            nn.Conv3d(2 * c, 2 * c, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(4 * c + n_scalars, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, patches: torch.Tensor, scalars: torch.Tensor) -> torch.Tensor:
        h = self.features(patches)
        group = nn.functional.max_pool3d(patches[:, 1:2], (1, 2, 2))
        mean = (h * group).sum((2, 3, 4)) / group.sum((2, 3, 4)).clamp(min=1)
        peak = (h - 1e4 * (1 - group)).amax((2, 3, 4)).clamp(min=-10)
        return self.head(torch.cat([mean, peak, scalars], 1))[:, 0]


def flips(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th (0-7) of the in-plane flips and transposes of ``(N, C, D, H, W)``."""
    if k & 1:
        x = x.flip(3)
    if k & 2:
        x = x.flip(4)
    return x.transpose(3, 4) if k & 4 else x


def restore_scores(net: GroupRestorationNet, patches: np.ndarray, scalars: np.ndarray, standard: np.ndarray
                   ) -> np.ndarray:
    """Restored per-group scores from raw :class:`GroupPatches` arrays, averaged over the eight in-plane flips."""
    if len(standard) == 0:
        return np.zeros(0)
    middle, scaled = network_inputs(patches, scalars)
    net.eval()
    x, s = torch.from_numpy(middle.astype(np.float32)), torch.from_numpy(scaled)
    with torch.no_grad():
        delta = np.mean([net(flips(x, k), s).numpy() for k in range(8)], axis=0)
    return np.expm1(np.log1p(standard) + delta).clip(0)


# ------------------------------------------------------------------------------------------- the model's use
@dataclass(frozen=True)
class RestoredScore:
    """The restored Agatston (``None`` when not computed, with the ``reason``), the scan's edge sigma (mm) and
    one row per lesion group: its label, centroid (canonical voxel index), image score and restored score."""

    agatston: float | None
    edge_sigma_mm: float | None
    reason: str | None = None
    groups: list[dict[str, Any]] = field(default_factory=list)


def sidecar(weights_path: Path) -> dict[str, Any]:
    """The weights' sidecar JSON (``trained_range`` and the training record)."""
    return json.loads(sidecar_path(weights_path).read_text())


@lru_cache(maxsize=2)
def _network(weights_path: str, mtime: float) -> GroupRestorationNet:
    net = GroupRestorationNet()
    net.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
    return net.eval()


def outside_trained_range(trained_range: dict[str, list[float]], **measured: float) -> str | None:
    """Why the restoration does not apply (a measured parameter outside ``trained_range``), else ``None``."""
    for name, value in measured.items():
        low, high = trained_range[name]
        if not low <= value <= high:
            unit = " mm" if name.endswith("_mm") else ""
            return (f"{name.removesuffix('_mm').replace('_', ' ')} {value:.2f}{unit} outside the "
                    f"{low:.2f}-{high:.2f}{unit} it was trained on")
    return None


def restore_agatston(hu: np.ndarray, spacing_mm: tuple[float, float, float], thickness_mm: float,
                     lesion_mask: np.ndarray, weights_path: Path = DEFAULT_WEIGHTS) -> RestoredScore:
    """The restored Agatston of the voxels ``lesion_mask`` (>= 130 HU, canonical order) of a CT in HU.

    Without lesions it is 0 and the scan's sharpness is not measured (about 2 s of a 512 x 512 scan)."""
    trained_range = sidecar(weights_path)["trained_range"]
    scanner = {"slice_spacing_mm": spacing_mm[0], "slice_thickness_mm": thickness_mm,
               "pixel_spacing_mm": spacing_mm[1]}
    if not lesion_mask.any():
        reason = outside_trained_range(trained_range, **scanner)
        return RestoredScore(None if reason else 0.0, None, reason)
    try:
        sigma, _profiles = edge_spread_sigma_mm(hu, spacing_mm)
    except ValueError as error:
        return RestoredScore(None, None, f"sharpness not measurable: {error}")
    reason = outside_trained_range(trained_range, **scanner, edge_sigma_mm=sigma)
    if reason is not None:
        return RestoredScore(None, round(sigma, 3), reason)
    inputs = group_patches(hu, spacing_mm, thickness_mm, lesion_mask, sigma)
    path = Path(weights_path).resolve()
    with deterministic_torch():
        restored = restore_scores(_network(str(path), path.stat().st_mtime), inputs.patches, inputs.scalars,
                                  inputs.standard)
    groups = [{"group": gid, "centroid_index": centre, "image_agatston": round(float(s), 3),
               "restored_agatston": round(float(r), 3)}
              for gid, centre, s, r in zip(inputs.group_ids, inputs.centres, inputs.standard, restored, strict=True)]
    return RestoredScore(round(float(restored.sum()), 3), round(sigma, 3), None, groups)
