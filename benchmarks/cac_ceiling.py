"""Where a perfect segmentation loses to the analytic truth: the area, the weight, or both.

For each phantom the true coronary plaque mask is scored on the noisy, blurred image four ways, all 8-connected with
lesions of at least 1 mm² (the model's convention), and each is compared with the analytic truth of the noise-free
geometry:

- **ceiling**: the mask ∩ ``>= 130 HU`` with the weight from the image's peak (what ``cac_phantoms.py`` calls the
  ceiling: a reader with a perfect segmentation);
- **true weight**: the same ``>= 130 HU`` area, weighted by the plaques' own (intrinsic) HU;
- **true footprint**: the whole plaque footprint (no 130 HU cut), weighted by the image's peak;
- **both true**: the footprint weighted by the intrinsic HU, which must equal the truth (a check of this script).

If only the weight were lost, "true weight" would pass where the ceiling fails, and likewise for the area. No model
runs here; the figures show what any method that scores the image can reach.

    python benchmarks/cac_ceiling.py [--n 80] [--first-seed 5000]

The seeds are validation seeds (training range, never trained on) unless ``--first-seed`` lies among the held-out
seeds. Contrast-enhanced phantoms are skipped (the model refuses them).
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
from cac_phantoms import TRUTH_CONVENTION, VALIDATION_FIRST_SEED, within_tolerance  # this script runs beside it

from medhub.cac.scoring import ScoringConvention, score_calcium
from medhub.synth.cac_phantom import HELD_OUT_SEEDS, make_cac_phantom, random_phantom_params

READINGS = ("ceiling", "true weight", "true footprint", "both true")


def intrinsic_coronary_hu(truth: dict, shape: tuple[int, int, int]) -> np.ndarray:
    """The coronary plaques' own HU (per slice, as the truth JSON lists it) on the phantom grid; 0 elsewhere."""
    out = np.zeros(shape, np.float32)
    for plaque in truth["plaques"]:
        if not plaque["is_coronary"]:
            continue
        voxels = np.asarray(plaque["voxels"])
        per_slice = dict(zip(plaque["slices"], plaque["hu_per_slice"], strict=True))
        out[voxels[:, 0], voxels[:, 1], voxels[:, 2]] = [per_slice[k] for k in voxels[:, 0]]
    return out


def readings(seed: int) -> dict[str, float] | None:
    """The analytic truth and the four readings of one phantom; ``None`` for a contrast-enhanced one."""
    params = random_phantom_params(seed, held_out=seed in HELD_OUT_SEEDS)
    if params["contrast"]:
        return None
    phantom = make_cac_phantom(**params)
    image = phantom.hu.astype(np.float32)
    intrinsic = intrinsic_coronary_hu(phantom.truth, image.shape)
    footprint = intrinsic > 0
    mapped, as_is = ScoringConvention(mode="mapped"), ScoringConvention(mode="lesion")
    spacing = phantom.spacing
    return {
        "truth": phantom.truth["totals"][TRUTH_CONVENTION]["agatston"],
        "ceiling": score_calcium(image, spacing, footprint, mapped).agatston,
        "true weight": score_calcium(intrinsic, spacing, footprint & (image >= mapped.threshold_hu), as_is).agatston,
        "true footprint": score_calcium(image, spacing, footprint, as_is).agatston,
        "both true": score_calcium(intrinsic, spacing, footprint, mapped).agatston,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=80, help="Number of seeds.")
    parser.add_argument("--first-seed", type=int, default=VALIDATION_FIRST_SEED)
    args = parser.parse_args()
    start = time.time()
    rows = []
    for seed in range(args.first_seed, args.first_seed + args.n):
        row = readings(seed)
        if row is not None:
            rows.append(row)
            print(f"seed {seed}: truth {row['truth']:8.1f}  "
                  + "  ".join(f"{name} {row[name]:8.1f}" for name in READINGS), flush=True)
    print(f"\n{len(rows)} non-contrast phantoms, seeds {args.first_seed}-{args.first_seed + args.n - 1}, "
          f"{platform.processor() or platform.machine()}, {time.time() - start:.0f} s")
    for name in READINGS:
        within = np.mean([within_tolerance(r[name], r["truth"]) for r in rows])
        ratios = [r[name] / r["truth"] for r in rows if r["truth"] > 0]
        print(f"{name:>15}: within ±10 %/±5 of the truth {within:.0%}  median score / truth {np.median(ratios):.3f}")


if __name__ == "__main__":
    main()
