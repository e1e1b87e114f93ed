"""Face detectors whose models ship in PyPI wheels, on the real UTKFace crops.

    python benchmarks/face_detectors.py [--photos 1000] [--seed 0]

For each detector in :data:`medhub.face.detect.DETECTORS` that is installed here:

* **chips, raw**: share of UTKFace chips (200 x 200, the face filling the picture) with a face found as they are;
* **chips, padded**: the same with medhub's replicated border (``pad=0.25``), the setting the crop policy uses;
  also by age decade and by UTKFace's race code (0 White, 1 Black, 2 Asian, 3 Indian, 4 Others);
* **in a scene**: each chip shrunk to 60-140 px and pasted at a random place into a 480 x 360 crop of
  scikit-image's bundled photographs (coffee, chelsea, rocket, ...). A hit is the most certain box whose centre lies
  in the middle half of the pasted chip; a false alarm is any other box;
* milliseconds per photo (one core, padded chips).

The peer is OpenCV's Haar cascade (medhub's default); the last column is each detector's time / Haar's.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd

from medhub.face.detect import available_detectors, detect_faces
from medhub.io.photo import read_photo

UTK = Path(__file__).resolve().parents[2] / "shared" / "data" / "utkface"
RACES = {0: "White", 1: "Black", 2: "Asian", 3: "Indian", 4: "Others"}


def backgrounds() -> list[np.ndarray]:
    from skimage import data, transform

    out = []
    for name in ("coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina"):
        image = getattr(data, name)()
        out.append((transform.resize(image, (360, 480), anti_aliasing=True) * 255).astype(np.uint8))
    return out


def scene(chip: np.ndarray, background: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, tuple]:
    from PIL import Image

    side = int(rng.integers(60, 141))
    small = np.asarray(Image.fromarray(chip).resize((side, side), Image.Resampling.BOX))
    x0, y0 = int(rng.integers(0, 480 - side)), int(rng.integers(0, 360 - side))
    canvas = background.copy()
    canvas[y0:y0 + side, x0:x0 + side] = small
    return canvas, (x0, y0, side)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import cv2

    cv2.setNumThreads(1)
    labels = pd.read_csv(UTK / "labels.csv")
    rng = np.random.default_rng(args.seed)
    sample = labels.iloc[np.sort(rng.choice(len(labels), min(args.photos, len(labels)), replace=False))]
    chips = [read_photo(UTK / "images" / f) for f in sample["file"]]
    scenes = [scene(c, backgrounds()[i % 6], rng) for i, c in enumerate(chips)]
    decades = np.minimum(sample["age"].to_numpy() // 10 * 10, 80)
    races = sample["race"].map(RACES).to_numpy()
    rows, by_group = [], {}
    for name in available_detectors():
        raw = np.array([bool(detect_faces(c, name, pad=0, eyes=False)) for c in chips])
        start = time.perf_counter()
        padded = np.array([bool(detect_faces(c, name, eyes=False)) for c in chips])
        ms = (time.perf_counter() - start) / len(chips) * 1000
        hits, false_alarms = 0, 0
        for canvas, (x0, y0, side) in scenes:
            boxes = detect_faces(canvas, name, pad=0, eyes=False, min_face=0.12)
            inside = [b for b in boxes if x0 + side / 4 <= b.center[0] <= x0 + 3 * side / 4
                      and y0 + side / 4 <= b.center[1] <= y0 + 3 * side / 4]
            hits += bool(inside)
            false_alarms += len(boxes) - len(inside)
        rows.append({"detector": name, "chips raw %": 100 * raw.mean(), "chips padded %": 100 * padded.mean(),
                     "in a scene %": 100 * hits / len(scenes), "false alarms / scene": false_alarms / len(scenes),
                     "ms / photo": ms})
        by_group[name] = {**{f"{d}s" if d < 80 else "80+": 100 * padded[decades == d].mean()
                             for d in sorted(set(decades))},
                          **{r: 100 * padded[races == r].mean() for r in RACES.values()}}
    table = pd.DataFrame(rows)
    table["time / opencv-haar"] = table["ms / photo"] / float(table.loc[table.detector == "opencv-haar",
                                                                        "ms / photo"].iloc[0])
    print(f"{len(chips)} UTKFace chips, seed {args.seed}; {platform.processor() or platform.machine()}, 1 thread")
    print(table.to_markdown(index=False, floatfmt=".2f"))
    print("\npadded detection % by age decade and race")
    print(pd.DataFrame(by_group).T.to_markdown(floatfmt=".1f"))
    counts = {**{f"{d}s" if d < 80 else "80+": int((decades == d).sum()) for d in sorted(set(decades))},
              **{r: int((races == r).sum()) for r in RACES.values()}}
    print("n:", counts)


if __name__ == "__main__":
    main()
