"""Draw ``docs/face-age-saliency.png``: the crop ``face-age`` reads, and its Integrated Gradients and Grad-CAM maps.

    python scripts/face_saliency_figure.py [--model face-age] [--out docs/face-age-saliency.png]

Runs the model through ``medhub run``'s own path (detection, crop, ``--saliency``) on its reference photo (the
scikit-image astronaut, NASA, public domain), once per saliency method, and puts the three pictures side by side.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from PIL import Image

from medhub.hub.registry import get_model
from medhub.hub.runner import run

ROOT = Path(__file__).resolve().parents[1]
TITLES = {"integrated-gradients": "Integrated Gradients", "grad-cam": "Grad-CAM"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="face-age")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "face-age-saliency.png")
    args = parser.parse_args()
    model = get_model(args.model)
    photo = model.folder / "reference" / "input"
    panels, value = [], None
    with tempfile.TemporaryDirectory() as work:
        for method in TITLES:
            model.saliency = method
            report = run(model, photo, Path(work) / method, outputs=("json", "png"))
            case = report.results[0]
            if case.status != "ok":
                raise SystemExit(f"{args.model} failed on {photo}: {case.message}")
            value = next(iter(case.values.values()))
            folder = Path(work) / method / case.case_id
            if not panels:
                panels.append((f"crop ({value:.0f} years)", Image.open(folder / "crop.png").copy()))
            panels.append((TITLES[method], Image.open(folder / "saliency.png").copy()))
    figure, axes = plt.subplots(1, len(panels), figsize=(2.75 * len(panels), 3.0), dpi=100)
    for axis, (title, picture) in zip(axes, panels, strict=True):
        axis.imshow(picture, interpolation="nearest")
        axis.set_title(title, fontsize=11)
        axis.axis("off")
    figure.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out)
    print(json.dumps({"figure": str(args.out), "value": value}))


if __name__ == "__main__":
    main()
