"""How `cac`'s heart mask relates to the heart it stands for, on real chest CT and on the phantoms.

The candidate classifier reads where a calcification sits in our heart mask (``heart_fraction``,
``heart_depth_mm``, the ``rel_*`` positions). It learns that relation on phantoms and on the two LIDC scans, and it
applies it to patients, so the mask must relate to the true heart the same way in all three. This script measures
that relation:

- **Real chest CT** (the shared LIDC scans, ``../shared/data/lidc_chest_ct``): our mask against DeepCAC's heart
  mask on its own 3 mm grid (the peer; it holds the pericardial sac with the epicardial fat).
- **Phantoms** (:func:`medhub.synth.cac_phantom.random_phantom_params`, training seeds from 7,000, no contrast, six
  plaques, varied coronary courses): our mask against the phantom's true heart (everything inside the pericardium),
  on the phantom's own grid and resampled to 3 mm as the classifier's training resamples half of them.

Per scan: Dice, volume ratio (ours / reference), how far our bottom and top slices lie from the reference's (mm,
positive = ours reaches further out), the mean in-plane distance (mm) of our voxels outside the reference from it,
and the coronary calcium lesions (DeepCAC's calcium mask; the phantom's coronary plaques) that lie mostly outside
our mask, by where: at our mask's bottom (its lowest 9 mm or below it), at its top (its highest 9 mm or above it),
or beside it.

Short fields of view: a calcium-scoring CT often starts near or below the carina, so the LIDC scans are also cut to
start :data:`CROP_TOPS_MM` from their carina (positive: above it) and measured the same way (default rule only).

Both rules for the heart below the liver junction (:data:`medhub.models.cac.heart.INFERIOR_RULES`) are measured:
the shipped ellipsoidal cap and the soft-tissue rule that follows the heart down.

    python benchmarks/cac_heart_mask.py [--phantoms 12] [--csv benchmarks/cac_heart_mask.csv]
"""

from __future__ import annotations

import argparse
import functools
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from medhub.io.nifti import read_volume, resample_isotropic
from medhub.io.orientation import apply_canonical, canonical_volume
from medhub.io.volume import Volume
from medhub.metrics.segmentation import dice
from medhub.models.cac.heart import INFERIOR_RULES, segment_heart

LIDC = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lidc_chest_ct"
CASES = ("0187", "0987")
FIRST_SEED = 7000
#: Where the cut LIDC scans start, in mm from their carina (positive: above it).
CROP_TOPS_MM = (30, 15, 6, 0, -9, -18)
#: A lesion outside our mask this close (mm) to its bottom or top slice, or beyond it, is counted there.
END_MM = 9.0


def _in_plane_distance(mask: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Per voxel, the in-plane distance (mm) to ``mask`` on its own slice (inf on a slice without it)."""
    out = np.full(mask.shape, np.inf, np.float32)
    for k in np.nonzero(mask.any(axis=(1, 2)))[0]:
        out[k] = ndi.distance_transform_edt(~mask[k], sampling=spacing[1:])
    return out


def relation(ours: np.ndarray, reference: np.ndarray, coronary: np.ndarray, spacing: tuple[float, float, float]
             ) -> dict[str, float]:
    """Our heart mask against a reference heart mask (canonical orientation: axis 0 from the feet up) and where the
    coronary lesions (26-connected components of ``coronary``) lie that are mostly outside ours."""
    z_ours = np.nonzero(ours.any(axis=(1, 2)))[0]
    z_ref = np.nonzero(reference.any(axis=(1, 2)))[0]
    extra = ours & ~reference
    lesions, n = ndi.label(coronary, np.ones((3, 3, 3), bool))
    near = round(END_MM / spacing[0])
    below = above = beside = 0
    for index, box in enumerate(ndi.find_objects(lesions), start=1):
        lesion = lesions[box] == index
        if ours[box][lesion].mean() >= 0.5:
            continue
        z = np.argwhere(lesion)[:, 0].mean() + box[0].start
        if z < z_ours[0] + near:
            below += 1
        elif z > z_ours[-1] - near:
            above += 1
        else:
            beside += 1
    return {
        "dice": dice(ours, reference),
        "volume_ratio": float(ours.sum() / max(reference.sum(), 1)),
        "bottom_beyond_mm": float((z_ref[0] - z_ours[0]) * spacing[0]),
        "top_beyond_mm": float((z_ours[-1] - z_ref[-1]) * spacing[0]),
        "extra_in_plane_mm": float(_in_plane_distance(reference, spacing)[extra].clip(max=60).mean())
        if extra.any() else 0.0,
        "coronary_lesions": n, "outside_below": below, "outside_above": above, "outside_beside": beside,
    }


def rule_rows(volume: Volume, truth: np.ndarray, coronary: np.ndarray, scan: str, grid: str) -> list[dict]:
    """One row per inferior rule: our heart on ``volume`` (any orientation) against ``truth``."""
    canonical, transform = canonical_volume(volume)
    truth, coronary = apply_canonical(truth, transform), apply_canonical(coronary, transform)
    hu = canonical.array.astype(np.float32)
    rows = []
    for rule in INFERIOR_RULES:
        heart = segment_heart(hu, canonical.spacing, canonical.direction, inferior=rule)
        found = relation(heart.mask, truth, coronary, canonical.spacing) if heart.found else {"dice": 0.0}
        rows.append({"scan": scan, "grid": grid, "rule": rule, **found})
    return rows


@functools.cache
def lidc_case(case: str) -> tuple[Volume, np.ndarray]:
    """A shared LIDC scan and DeepCAC's labels (1 heart, 3 coronary calcium), both canonical."""
    volume, transform = canonical_volume(read_volume(LIDC / f"{case}_ct_3mm.nrrd"))
    return volume, apply_canonical(read_volume(LIDC / f"{case}_labels_3mm.nrrd").array, transform)


def lidc_rows() -> list[dict]:
    rows = []
    for case in CASES:
        volume, labels = lidc_case(case)
        rows += rule_rows(volume, labels == 1, labels == 3, f"lidc {case}", "3 mm")
    return rows


def cropped_lidc_rows() -> list[dict]:
    """The LIDC scans cut to start at :data:`CROP_TOPS_MM` from their carina, against DeepCAC's heart there."""
    rows = []
    for case in CASES:
        volume, labels = lidc_case(case)
        hu = volume.array.astype(np.float32)
        carina = segment_heart(hu, volume.spacing, volume.direction).info["carina_slice"]
        for top_mm in CROP_TOPS_MM:
            top = carina + round(top_mm / volume.spacing[0]) + 1
            heart = segment_heart(hu[:top], volume.spacing, volume.direction)
            found = (relation(heart.mask, labels[:top] == 1, labels[:top] == 3, volume.spacing) if heart.found
                     else {"dice": 0.0})
            rows.append({"scan": f"lidc {case} from {top_mm:+d} mm", "grid": "3 mm", "rule": "soft-tissue",
                         "found": heart.found, "top_rule": heart.info.get("top_rule"), **found})
    return rows


def phantom_rows(seed: int) -> list[dict]:
    from medhub.synth.cac_phantom import CORONARY_CALCIUM, make_cac_phantom, random_phantom_params

    phantom = make_cac_phantom(**{**random_phantom_params(seed), "contrast": False, "n_plaques": 6,
                                  "coronary_variation": True})
    native = Volume(phantom.hu, phantom.affine, modality="CT")
    coronary = phantom.labels == CORONARY_CALCIUM
    resampled, (truth, lesions) = resample_isotropic(native, 3.0, [phantom.heart_mask, coronary])
    return (rule_rows(native, phantom.heart_mask, coronary, f"phantom {seed}", "native")
            + rule_rows(resampled, truth, lesions, f"phantom {seed}", "3 mm"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phantoms", type=int, default=12)
    parser.add_argument("--csv", type=Path, default=None)
    args = parser.parse_args(argv)
    start = time.time()
    rows = lidc_rows() if LIDC.is_dir() else []
    cropped = pd.DataFrame(cropped_lidc_rows() if LIDC.is_dir() else [])
    for seed in range(FIRST_SEED, FIRST_SEED + args.phantoms):
        rows += phantom_rows(seed)
    table = pd.DataFrame(rows)
    pd.set_option("display.width", 160)
    print(table.round(3).to_string(index=False))
    for (source, grid), rule in itertools.product((("lidc", "3 mm"), ("phantom", "native"), ("phantom", "3 mm")),
                                                  INFERIOR_RULES):
        part = table[table["scan"].str.startswith(source) & (table["grid"] == grid) & (table["rule"] == rule)]
        if not len(part):
            continue
        outside = part[["outside_below", "outside_above", "outside_beside"]].sum()
        print(f"{source} ({grid}, {len(part)} scans, {rule}): Dice {part['dice'].mean():.3f}, volume ratio "
              f"ours/reference {part['volume_ratio'].mean():.2f}, our bottom "
              f"{part['bottom_beyond_mm'].mean():+.1f} mm and top {part['top_beyond_mm'].mean():+.1f} mm beyond the "
              f"reference's, extra voxels "
              f"{part['extra_in_plane_mm'].mean():.1f} mm out in plane; coronary lesions mostly outside our mask "
              f"{int(outside.sum())} of {int(part['coronary_lesions'].sum())} (at the bottom "
              f"{outside['outside_below']}, at the top {outside['outside_above']}, beside {outside['outside_beside']})")
    if len(cropped):
        print(f"LIDC cut to start {min(CROP_TOPS_MM):+d}..{max(CROP_TOPS_MM):+d} mm from the carina "
              f"({len(cropped)} scans): heart found in {int(cropped['found'].sum())}, Dice "
              f"{cropped['dice'].min():.3f}-{cropped['dice'].max():.3f} (median {cropped['dice'].median():.3f})")
    print(f"{time.time() - start:.0f} s")
    if args.csv:
        pd.concat([table, cropped], ignore_index=True).to_csv(args.csv, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
