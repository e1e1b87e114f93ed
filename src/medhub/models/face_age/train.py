"""Train and export ``face-age`` on the real UTKFace crops in ``../shared/data/utkface``.

    python -m medhub.models.face_age.train [--work /tmp/face] [--pretrain-steps 2000] [--steps 1200]
        [--stage2-steps 400] [--finetuned RUN]

1. ``medhub pretrain --modality photo --objective mae`` on every UTKFace photo (labels unused): ViT-tiny, 112 px
   face crops from OpenCV's Haar detector (margin 0.1, eyes levelled), batch 64, 60 % of 16-px patches masked.
2. ``medhub finetune --task face-age``: 15 % of the photos held out (stratified by age decade, seed 0); stage 1 on
   the rest drawn uniformly, stage 2 age-balanced (5-year bins) at a fifth of the learning rate; L1 on age / 100.
3. The weights are stored as int8 per output channel (a quarter of the size, under the project's 5 MB limit;
   ``medhub.learn.checkpoints.quantize_int8``) and exported into this folder with ``medhub export-model``;
   then ``python scripts/make_reference.py face-age`` rebuilds the reference.

``--finetuned RUN`` skips 1-2 and exports an existing finetuning run.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

FOLDER = Path(__file__).resolve().parent
UTKFACE = FOLDER.parents[3].parent / "shared" / "data" / "utkface"
VERSION = "0.1.0"


def _quantized_copy(run: Path, target: Path) -> Path:
    from safetensors.torch import load_file, save_file

    from medhub.learn.checkpoints import quantize_int8

    target.mkdir(parents=True, exist_ok=True)
    save_file(quantize_int8(load_file(str(run / "checkpoint.safetensors"))), str(target / "checkpoint.safetensors"))
    shutil.copy2(run / "checkpoint.json", target / "checkpoint.json")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/face"))
    parser.add_argument("--pretrain-steps", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--stage2-steps", type=int, default=400)
    parser.add_argument("--finetuned", type=Path)
    args = parser.parse_args()
    run = args.finetuned
    if run is None:
        from medhub.face.finetuning import PhotoFinetuneConfig, finetune_photos
        from medhub.face.pretraining import pretrain_photos
        from medhub.learn.trainer import TrainingConfig

        pretrained = pretrain_photos(UTKFACE / "images", args.work / "pretrain", objective="mae",
                                     config=TrainingConfig(steps=args.pretrain_steps, lr=1e-3, warmup_steps=50),
                                     cache=args.work / "cache")
        run = args.work / "age"
        finetune_photos(UTKFACE / "labels.csv", run, checkpoint=pretrained["checkpoint"],
                        config=PhotoFinetuneConfig(steps=args.steps, stage2_steps=args.stage2_steps),
                        report_by=("race", "gender"), cache=args.work / "cache")
    evaluation = json.loads((run / "checkpoint.json").read_text())["evaluation"]
    overall, adults = evaluation["overall"], evaluation["adults_20_plus"]
    held = (f"MAE {overall['mae']:.2f} years [95 % CI {overall['mae_low']:.2f}, {overall['mae_high']:.2f}] on "
            f"{overall['n']} held-out UTKFace photos; adults 20+: {adults['mae']:.2f} [{adults['mae_low']:.2f}, "
            f"{adults['mae_high']:.2f}] (n {adults['n']}); by decade, race and sex in README.md")
    from medhub.face.hub import export_face_model

    card = export_face_model(
        _quantized_copy(run, args.work / "age-int8"), FOLDER, model_id="face-age", version=VERSION,
        name="FaceAge",
        trained_on=("UTKFace (Zhang et al., 2017; real face crops, ages 1-116, median 22, from the web), the "
                    "aligned 200 x 200 crops in ../shared/data/utkface: MAE pretraining on all of them, age "
                    "finetuning on 85 % (the other 15 % held out). Not trained on clinical photographs."),
        card={
            "title": "Apparent age from a face photo",
            "description": (
                "Finds the face (OpenCV Haar cascade, most certain face, margin 0.1 of the box, eyes levelled), "
                "crops it to 112 x 112 and reads the age with a ViT-tiny (192 wide, 6 blocks, convolutional stem) "
                "pretrained as a masked autoencoder on the same photos and finetuned in two stages (uniform, "
                "then age-balanced), as FAHR-FaceAge trains. Averages the face and its mirror image."),
            "evaluation": held,
            "limitations": (
                "Trained on about 7,200 web photos, mostly young (median 22 years) and mostly frontal: errors "
                "grow with age and the old are read younger (see the by-decade table in README.md). UTKFace's "
                "race labels are coarse and imbalanced; check the by-race table before using it on a population. "
                "A photo where the detector finds no face fails with no-face. Apparent age is not a health "
                "measure by itself; this is not the FAHR-FaceAge model and has not been validated on patients."),
            "intended_use": "Research on face photographs (apparent-age estimation). Not for clinical use.",
            "reference": {"input": "reference/input", "expected": "reference/expected",
                          "tolerances": "reference/tolerances.yaml"},
        })
    _write_heldout_list(run)
    print(f"exported {card.id} {card.version}: {held}")


def _write_heldout_list(run: Path) -> None:
    """The held-out photos (UTKFace file name, age, sex, race) for ``benchmarks/face_age_heldout.py``."""
    import pandas as pd

    held = pd.read_csv(run / "evaluation.csv")
    labels = pd.read_csv(UTKFACE / "labels.csv").set_index("file")
    names = held["image"].map(lambda p: Path(p).name)
    table = labels.loc[names].reset_index()[["file", "age", "gender", "race"]]
    table.to_csv(FOLDER.parents[3] / "benchmarks" / "face_age_heldout.csv", index=False)


if __name__ == "__main__":
    main()
