"""``medhub pretrain``, ``medhub finetune`` and ``medhub export-model``, for brain MRI (3D U-Net, :mod:`medhub.brain`)
and face photos (2D ViT, :mod:`medhub.face`). Kept light to import: no torch here."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console(soft_wrap=True)


def pretrain_command(
    data: Annotated[Path, typer.Option("--data", help="mri: sessions in the FOMO layout, ROOT/sub_*/ses_*/"
                                       "<seq>.nii.gz; photo: a folder of JPEG/PNG photos.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the checkpoint, log.csv and cache.")],
    modality: Annotated[str, typer.Option(help="mri (3D brain MRI, U-Net) or photo (face photos, ViT).")] = "mri",
    objective: Annotated[str, typer.Option(help="mae, contrastive or hybrid.")] = "mae",
    arch: Annotated[str, typer.Option(help="mri: tiny (CPU), unet_b (32 filters) or unet_xl (64); photo: tiny or "
                                      "small (ViT), hybrid (ResNet stem + ViT), resnet, resnet18 or resnet18_s32 "
                                      "(CNN).")] = "tiny",
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 1000,
    batch_size: Annotated[int | None, typer.Option(help="Samples per step, per process under torchrun (default: 2 "
                                                   "crops for mri, 64 photos).")] = None,
    crop: Annotated[int, typer.Option(help="mri: side of the cubic crops, voxels (1 mm).")] = 32,
    image_size: Annotated[int, typer.Option(help="photo: side of the face crop the ViT sees, pixels.")] = 112,
    no_detect: Annotated[bool, typer.Option("--no-detect", help="photo: the photos are face crops already (no "
                                            "detection; centre square, resized).")] = False,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW; warmup, then cosine).")] = 1e-3,
    warmup: Annotated[int, typer.Option(help="Warmup steps.")] = 50,
    mask_ratio: Annotated[float, typer.Option(help="MAE: share of cubes masked.")] = 0.6,
    mask_patch: Annotated[int | None, typer.Option(help="MAE: side of the masked cubes (mri, default 8 voxels) or "
                                                   "squares (photo, default the ViT patch), voxels or pixels.")
                          ] = None,
    mae_weight: Annotated[float, typer.Option(help="Hybrid: weight of the MAE loss (the rest is contrastive).")
                          ] = 0.5,
    cross_sequence: Annotated[bool, typer.Option("--cross-sequence", help="Contrastive: two sequences of one "
                                                 "session are a positive pair.")] = False,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = 200,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    cache: Annotated[Path | None, typer.Option(help="Preprocessed-session cache (default OUTPUT/cache).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the checkpoint in OUTPUT.")] = False,
) -> None:
    """Pretrain a backbone without labels (MAE, contrastive or hybrid); under torchrun on every GPU."""
    from medhub.errors import InputError

    if modality not in ("mri", "photo"):
        raise InputError(None, f"--modality {modality}: choose mri or photo", code="bad-option")
    from medhub.learn.trainer import TrainingConfig

    config = TrainingConfig(steps=steps, lr=lr, warmup_steps=warmup, checkpoint_every=checkpoint_every, seed=seed)
    try:
        if modality == "mri":
            from medhub.brain.pretraining import pretrain

            result = pretrain(data, output, objective=objective, arch=arch, crop=crop, batch_size=batch_size or 2,
                              config=config, cross_sequence=cross_sequence, mask_ratio=mask_ratio,
                              mask_patch=mask_patch or 8, mae_weight=mae_weight, cache=cache, resume=resume)
            what = "sessions"
        else:
            from medhub.face.pretraining import pretrain_photos

            result = pretrain_photos(data, output, objective=objective, arch=arch, image_size=image_size,
                                     batch_size=batch_size or 64, config=config, mask_ratio=mask_ratio,
                                     mask_patch=mask_patch, mae_weight=mae_weight,
                                     crop_policy=None if no_detect else "default", cache=cache, resume=resume)
            what = "face photos"
    except ValueError as e:
        raise InputError(None, str(e), code="bad-option") from e
    history = result["history"]
    first = sum(r["loss"] for r in history[:10]) / max(1, len(history[:10]))
    last = sum(r["loss"] for r in history[-10:]) / max(1, len(history[-10:]))
    console.print(f"pretrained {arch} ({objective}) on {result['sessions']} {what} for {result['steps']} steps: "
                  f"loss {first:.4f} -> {last:.4f}; checkpoint {result['checkpoint']}", highlight=False)


def finetune_command(
    data: Annotated[Path, typer.Option("--data", help="Brain tasks: the finetuning layout, ROOT/preprocessed/sub_*/"
                                       "ses_1/ and ROOT/labels/sub_*/ses_1/{label.txt,seg.nii.gz}. Photo tasks: a CSV "
                                       "of photos (column image/file/path) with age, or time and event.")],
    task: Annotated[str, typer.Option(help="Brain: infarct, meningioma, brain-age or tumor. Photo: face-age or "
                                      "survival.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the finetuned checkpoint and results.")],
    checkpoint: Annotated[Path | None, typer.Option(help="A `medhub pretrain` checkpoint.safetensors, or an "
                                                    "installed model's id (e.g. face-age: start from its "
                                                    "encoder).")] = None,
    shots: Annotated[int, typer.Option(help="Labelled sessions to train on (the rest are evaluated).")] = 8,
    seed: Annotated[int, typer.Option(help="Seed of the shot sampling and the training.")] = 0,
    from_scratch: Annotated[bool, typer.Option("--from-scratch", help="Random weights, same budget: the "
                                               "supervised baseline.")] = False,
    arch: Annotated[str, typer.Option(help="With --from-scratch: tiny, unet_b or unet_xl; photo "
                                      "tasks: tiny, small, hybrid, resnet, resnet18 or resnet18_s32.")] = "tiny",
    steps: Annotated[int | None, typer.Option(help="Optimizer steps (stage 1 for face-age; default 200 for brain "
                                              "tasks, 2000 for photo tasks).")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (default 1e-3 brain, 5e-4 photo).")] = None,
    crop: Annotated[int, typer.Option(help="Segmentation: side of the training crops and sliding windows.")] = 32,
    batch_size: Annotated[int | None, typer.Option(help="Samples per step (default 2 brain, 64 photo).")] = None,
    cache: Annotated[Path | None, typer.Option(help="Preprocessed-session cache (default OUTPUT/cache).")] = None,
    images: Annotated[Path | None, typer.Option(help="Photo tasks: the folder relative photo paths start from "
                                                "(default: the table's folder or its images/).")] = None,
    stage2_steps: Annotated[int, typer.Option(help="face-age: steps of stage 2 (age-balanced resampling).")] = 600,
    stage2_lr: Annotated[float | None, typer.Option(help="face-age: peak learning rate of stage 2 (default 1e-4).")
                         ] = None,
    balance_power: Annotated[float | None, typer.Option(help="face-age: stage 2 draws a photo with weight 1 / "
                                                        "(photos in its 5-year bin) ** POWER; 1 (the default) "
                                                        "fully balanced, 0 as they occur.")] = None,
    balance_min_age: Annotated[float | None, typer.Option(help="face-age: stage 2 draws only photos of this age "
                                                          "(years) or older, for a model of adults.")] = None,
    age_column: Annotated[str, typer.Option(help="face-age: the age column (years).")] = "age",
    time_column: Annotated[str, typer.Option(help="survival: the follow-up time column.")] = "time",
    event_column: Annotated[str, typer.Option(help="survival: the event column (1 event, 0 censored).")] = "event",
    report_by: Annotated[str | None, typer.Option(help="Photo tasks: comma-separated columns to break the held-out "
                                                  "figures down by (e.g. race,gender).")] = None,
    holdout: Annotated[float, typer.Option(help="Photo tasks: share of photos held out for evaluation.")] = 0.15,
    no_detect: Annotated[bool, typer.Option("--no-detect", help="Photo tasks: the photos are face crops already.")
                         ] = False,
    descriptor_head: Annotated[bool, typer.Option("--descriptor-head", help="face-age: instead of a crop network, "
                                                  "train an MLP head on the face descriptors of dlib's frozen "
                                                  "face-recognition ResNet, drawn as stage 2 is (--steps, --lr); "
                                                  "export it together with crop network runs.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Photo tasks: continue each stage from its checkpoint in "
                                         "OUTPUT; a finished stage is not run again.")] = False,
) -> None:
    """Finetune a pretrained backbone: K labelled brain sessions (classification, regression, segmentation), or a
    table of face photos (face-age in two stages, survival with a Cox loss)."""
    from medhub.errors import InputError

    report_columns = tuple(c.strip() for c in (report_by or "").split(",") if c.strip())
    if descriptor_head:
        if task != "face-age":
            raise InputError(None, "--descriptor-head is for --task face-age", code="bad-option")
        from medhub.face.descriptors import finetune_descriptor_head
        from medhub.face.finetuning import PhotoFinetuneConfig

        stage2 = {"balance_power": balance_power, "balance_min_age": balance_min_age}
        head_config = PhotoFinetuneConfig(batch_size=batch_size or 128, steps=steps or 3000, lr=lr or 1e-3,
                                          holdout=holdout, seed=seed,
                                          **{k: v for k, v in stage2.items() if v is not None})
        result = finetune_descriptor_head(data, output, config=head_config, images=images, age_column=age_column,
                                          report_by=report_columns,
                                          crop_policy=None if no_detect else "default", cache=cache, resume=resume)
        overall = result["evaluation"]["overall"]
        console.print(f"finetuned a face-age descriptor head; held out: MAE {overall['mae']:.2f} y "
                      f"[{overall['mae_low']:.2f}, {overall['mae_high']:.2f}] on {overall['n']} photos; details in "
                      f"{output / 'evaluation.json'}", highlight=False)
        return
    if checkpoint is None and not from_scratch:
        raise InputError(None, "give --checkpoint, or --from-scratch for the supervised baseline", code="bad-option")
    if checkpoint is not None and not from_scratch:
        from medhub.learn.checkpoints import resolve_checkpoint

        checkpoint = resolve_checkpoint(checkpoint)
    if task in ("face-age", "survival"):
        from medhub.face.finetuning import PhotoFinetuneConfig, finetune_photos

        stage2 = {"stage2_lr": stage2_lr, "balance_power": balance_power, "balance_min_age": balance_min_age}
        photo_config = PhotoFinetuneConfig(task=task, arch=arch, batch_size=batch_size or 64, steps=steps or 2000,
                                           stage2_steps=stage2_steps, lr=lr or 5e-4, holdout=holdout, seed=seed,
                                           from_scratch=from_scratch,
                                           **{k: v for k, v in stage2.items() if v is not None})
        result = finetune_photos(data, output, checkpoint=None if from_scratch else checkpoint, config=photo_config,
                                 images=images, age_column=age_column, time_column=time_column,
                                 event_column=event_column, report_by=report_columns,
                                 crop_policy=None if no_detect else "default", cache=cache, resume=resume)
        evaluation = result["evaluation"]
        shown = (f"MAE {evaluation['overall']['mae']:.2f} y [{evaluation['overall']['mae_low']:.2f}, "
                 f"{evaluation['overall']['mae_high']:.2f}] on {evaluation['overall']['n']} photos"
                 if task == "face-age" else
                 f"C-index {evaluation['c_index']['c_index']:.3f} [{evaluation['c_index']['c_index_low']:.3f}, "
                 f"{evaluation['c_index']['c_index_high']:.3f}] on {evaluation['n']} photos")
        console.print(f"finetuned {task} ({'from scratch' if from_scratch else f'from {checkpoint}'}); held out: "
                      f"{shown}; details in {output / 'evaluation.json'}", highlight=False)
        return
    from medhub.brain.finetuning import FinetuneConfig, finetune
    from medhub.learn.trainer import TrainingConfig
    from medhub.learn.unet3d import preset

    steps = steps or 200
    config = FinetuneConfig(task=task, shots=shots, seed=seed, from_scratch=from_scratch, crop=crop,
                            batch_size=batch_size or 2)
    training = TrainingConfig(steps=steps, lr=lr or 1e-3, warmup_steps=min(20, steps // 5 + 1),
                              checkpoint_every=steps, seed=seed)
    try:
        result = finetune(checkpoint, data, output, config, arch_config=preset(arch), training=training, cache=cache)
    except ValueError as e:
        raise InputError(None, str(e), code="bad-option") from e
    summary = result["evaluation"]["summary"]
    shown = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items())
    origin = "from scratch" if from_scratch else f"from {checkpoint}"
    console.print(f"finetuned {task} {origin} on {shots} shots (seed {seed}); held out: {shown}", highlight=False)


def export_model_command(
    finetuned: Annotated[list[Path], typer.Argument(help="A `medhub finetune` output folder; several face-age "
                                                    "runs (one network, one held-out split) make one ensemble "
                                                    "that averages them.")],
    model_id: Annotated[str, typer.Option("--id", help="The model's id, e.g. my-brain-tumor.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The model folder to write.")],
    version: Annotated[str, typer.Option(help="The model's version (MAJOR.MINOR.PATCH).")] = "0.1.0",
    trained_on: Annotated[str | None, typer.Option(help="What the weights were trained on, plainly (default: the "
                                                    "training sessions' names).")] = None,
    fallback_detector: Annotated[str | None, typer.Option(help="Photo models: a second face detector tried when "
                                                           "the training one finds no face (dlib-hog).")] = None,
) -> None:
    """Turn a finetuned checkpoint into a hub model folder: card, sha256-checked weights, README. Run it with
    `medhub run FOLDER INPUT OUTPUT`."""
    import tempfile

    from medhub.errors import InputError
    from medhub.hub.export import read_finetuned_sidecar

    if read_finetuned_sidecar(finetuned[0]).get("modality") == "photo":
        from medhub.face.finetuning import combine_face_runs
        from medhub.face.hub import export_face_model

        with tempfile.TemporaryDirectory(prefix="medhub-ensemble-") as staging:
            run = finetuned[0]
            if len(finetuned) > 1:
                run = Path(staging)
                combine_face_runs(finetuned, run)
            card = export_face_model(run, output, model_id=model_id, version=version, trained_on=trained_on,
                                     fallback_detector=fallback_detector)
        what = "photos" if len(finetuned) == 1 else f"photos; an ensemble of {len(finetuned)} runs"
    elif len(finetuned) > 1:
        raise InputError(finetuned[1], "only face-age runs can be combined into one model", code="bad-option")
    elif fallback_detector:
        raise InputError(finetuned[0], "--fallback-detector is for photo models", code="bad-option")
    else:
        from medhub.brain.hub import export_model

        card = export_model(finetuned[0], output, model_id=model_id, version=version, trained_on=trained_on)
        what = "sequences " + ", ".join(s.name for s in card.inputs.sequences)
    console.print(f"exported {card.id} {card.version} ({card.task}; {what}) to {output}; run it with "
                  f"`medhub run {output} INPUT OUTPUT`", highlight=False)
