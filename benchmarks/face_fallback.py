"""The fallback face detector: how dlib's HOG boxes map onto OpenCV's Haar boxes, how many Haar misses it finds,
and whether face-age reads its reframed crops as well as the Haar crops it learnt from.

    python benchmarks/face_fallback.py [--every 5] [--limit N]

1. **Framing**: on the UTKFace chips (every ``--every``-th photo) where both detectors find the face, the Haar box's
   centre offset and side ratio relative to the dlib box (medians and SDs): the figures behind
   :data:`medhub.face.detect.BOX_FRAMING`.
2. **Rescue**: of those chips where Haar finds no face, the share dlib finds (all ages, and adults of 20+).
3. **Reading**: the shipped ``face-age`` on its held-out adults (``benchmarks/face_age_heldout.csv``), once as it
   runs (Haar) and once with the Haar face cascade switched off so that every face comes from the fallback
   (reframed dlib box): MAE of both on the photos both read, and the paired difference with a bootstrap CI.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
from pathlib import Path

import numpy as np
import pandas as pd

from medhub.errors import MedhubError
from medhub.face import detect
from medhub.hub.registry import get_model
from medhub.io.photo import Photo, read_photo

HERE = Path(__file__).resolve().parent
UTK = HERE.parents[1] / "shared" / "data" / "utkface"


def framing(labels: pd.DataFrame) -> tuple[np.ndarray, list[str], list[str]]:
    """Per chip found by both: (dx, dy, sx, sy) of the Haar box relative to the dlib box; and the chips Haar misses,
    with those dlib finds among them."""
    rows, missed, rescued = [], [], []
    for name in labels["file"]:
        image = read_photo(UTK / "images" / name)
        haar = detect.detect_faces(image, "opencv-haar", eyes=False)
        hog = detect.detect_faces(image, "dlib-hog", eyes=False)
        if haar and hog:
            h, d = haar[0], hog[0]
            rows.append(((h.center[0] - d.center[0]) / d.width, (h.center[1] - d.center[1]) / d.height,
                         h.width / d.width, h.height / d.height))
        elif not haar:
            missed.append(name)
            if hog:
                rescued.append(name)
    return np.array(rows), missed, rescued


def read_all(model, names: list[str]) -> np.ndarray:
    out = np.full(len(names), np.nan)
    for i, name in enumerate(names):
        with contextlib.suppress(MedhubError):  # a photo without a face stays NaN
            out[i] = model.predict(Photo(read_photo(UTK / "images" / name), name)).values["face_age_years"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--limit", type=int)
    args = parser.parse_args()
    labels = pd.read_csv(UTK / "labels.csv").iloc[:: args.every]
    rows, missed, rescued = framing(labels)
    median, sd = np.median(rows, 0), rows.std(0)
    print(f"{platform.processor() or platform.machine()}; {len(labels)} UTKFace chips (every {args.every}th)")
    print(f"framing of the Haar box on the dlib box, {len(rows)} chips found by both: dx {median[0]:+.3f} "
          f"(SD {sd[0]:.3f}), dy {median[1]:+.3f} ({sd[1]:.3f}), sx {median[2]:.3f} ({sd[2]:.3f}), sy {median[3]:.3f} "
          f"({sd[3]:.3f}); medhub uses {detect.BOX_FRAMING[('dlib-hog', 'opencv-haar')]}")
    age = {n: int(n.split("_")[0]) for n in missed}
    adults = [n for n in missed if age[n] >= 20]
    print(f"Haar found no face in {len(missed)}; dlib found {len(rescued)} of them; adults 20+: "
          f"{sum(n in rescued for n in adults)} of {len(adults)}")

    held = pd.read_csv(HERE / "face_age_heldout.csv")
    held = held[held["age"] >= 20].iloc[: args.limit]
    model = get_model("face-age")
    as_run = read_all(model, list(held["file"]))
    haar_faces = detect.DETECTORS["opencv-haar"]
    detect.DETECTORS["opencv-haar"] = lambda grey, min_size: []  # every face now comes from the fallback
    try:
        fallback = read_all(get_model("face-age"), list(held["file"]))
    finally:
        detect.DETECTORS["opencv-haar"] = haar_faces
    both = np.isfinite(as_run) & np.isfinite(fallback)
    ages = held["age"].to_numpy(float)[both]
    first, second = np.abs(as_run[both] - ages), np.abs(fallback[both] - ages)
    rng = np.random.default_rng(0)
    diffs = [(second[i] - first[i]).mean() for i in (rng.integers(0, len(ages), len(ages)) for _ in range(2000))]
    low, high = np.percentile(diffs, [2.5, 97.5])
    print(f"face-age {model.card.version} on {both.sum()} held-out adults read both ways (fallback alone found "
          f"{np.isfinite(fallback).sum()} of {len(held)}): MAE Haar {first.mean():.2f}, fallback (dlib reframed) "
          f"{second.mean():.2f}; difference {second.mean() - first.mean():+.2f} (95 % CI {low:+.2f} to {high:+.2f}); "
          f"fallback / Haar {second.mean() / first.mean():.2f}")


if __name__ == "__main__":
    main()
