"""``medhub pretrain``, ``medhub finetune`` and ``medhub export-model`` (brain MRI now). Kept light to import: no
torch here."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console(soft_wrap=True)


def pretrain_command(
    data: Annotated[Path, typer.Option("--data", help="Sessions in the FOMO layout: ROOT/sub_*/ses_*/<seq>.nii.gz.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the checkpoint, log.csv and cache.")],
    modality: Annotated[str, typer.Option(help="mri (3D brain MRI).")] = "mri",
    objective: Annotated[str, typer.Option(help="mae, contrastive or hybrid.")] = "mae",
    arch: Annotated[str, typer.Option(help="tiny (CPU), unet_b (32 filters) or unet_xl (64).")] = "tiny",
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 1000,
    batch_size: Annotated[int, typer.Option(help="Crops per step (per process under torchrun).")] = 2,
    crop: Annotated[int, typer.Option(help="Side of the cubic crops, voxels (1 mm).")] = 32,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW; warmup, then cosine).")] = 1e-3,
    warmup: Annotated[int, typer.Option(help="Warmup steps.")] = 50,
    mask_ratio: Annotated[float, typer.Option(help="MAE: share of cubes masked.")] = 0.6,
    mask_patch: Annotated[int, typer.Option(help="MAE: side of the masked cubes, voxels.")] = 8,
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

    if modality != "mri":
        raise InputError(None, f"--modality {modality}: only mri is available", code="bad-option")
    from medhub.brain.pretraining import pretrain
    from medhub.learn.trainer import TrainingConfig

    config = TrainingConfig(steps=steps, lr=lr, warmup_steps=warmup, checkpoint_every=checkpoint_every, seed=seed)
    try:
        result = pretrain(data, output, objective=objective, arch=arch, crop=crop, batch_size=batch_size,
                          config=config, cross_sequence=cross_sequence, mask_ratio=mask_ratio,
                          mask_patch=mask_patch, mae_weight=mae_weight, cache=cache, resume=resume)
    except ValueError as e:
        raise InputError(None, str(e), code="bad-option") from e
    history = result["history"]
    first = sum(r["loss"] for r in history[:10]) / max(1, len(history[:10]))
    last = sum(r["loss"] for r in history[-10:]) / max(1, len(history[-10:]))
    console.print(f"pretrained {arch} ({objective}) on {result['sessions']} sessions for {result['steps']} steps: "
                  f"loss {first:.4f} -> {last:.4f}; checkpoint {result['checkpoint']}", highlight=False)


def finetune_command(
    data: Annotated[Path, typer.Option("--data", help="Finetuning layout: ROOT/preprocessed/sub_*/ses_1/ and "
                                       "ROOT/labels/sub_*/ses_1/{label.txt,seg.nii.gz}.")],
    task: Annotated[str, typer.Option(help="infarct, meningioma, brain-age or tumor.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the finetuned checkpoint and results.")],
    checkpoint: Annotated[Path | None, typer.Option(help="A `medhub pretrain` checkpoint.safetensors.")] = None,
    shots: Annotated[int, typer.Option(help="Labelled sessions to train on (the rest are evaluated).")] = 8,
    seed: Annotated[int, typer.Option(help="Seed of the shot sampling and the training.")] = 0,
    from_scratch: Annotated[bool, typer.Option("--from-scratch", help="Random weights, same budget: the "
                                               "supervised baseline.")] = False,
    arch: Annotated[str, typer.Option(help="With --from-scratch: tiny, unet_b or unet_xl.")] = "tiny",
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 200,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 1e-3,
    crop: Annotated[int, typer.Option(help="Segmentation: side of the training crops and sliding windows.")] = 32,
    batch_size: Annotated[int, typer.Option(help="Samples per step.")] = 2,
    cache: Annotated[Path | None, typer.Option(help="Preprocessed-session cache (default OUTPUT/cache).")] = None,
) -> None:
    """Finetune a pretrained backbone on K labelled sessions (classification, regression or segmentation)."""
    from medhub.brain.finetuning import FinetuneConfig, finetune
    from medhub.errors import InputError
    from medhub.learn.trainer import TrainingConfig
    from medhub.learn.unet3d import preset

    if checkpoint is None and not from_scratch:
        raise InputError(None, "give --checkpoint, or --from-scratch for the supervised baseline", code="bad-option")
    config = FinetuneConfig(task=task, shots=shots, seed=seed, from_scratch=from_scratch, crop=crop,
                            batch_size=batch_size)
    training = TrainingConfig(steps=steps, lr=lr, warmup_steps=min(20, steps // 5 + 1), checkpoint_every=steps,
                              seed=seed)
    try:
        result = finetune(checkpoint, data, output, config, arch_config=preset(arch), training=training, cache=cache)
    except ValueError as e:
        raise InputError(None, str(e), code="bad-option") from e
    summary = result["evaluation"]["summary"]
    shown = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items())
    origin = "from scratch" if from_scratch else f"from {checkpoint}"
    console.print(f"finetuned {task} {origin} on {shots} shots (seed {seed}); held out: {shown}", highlight=False)


def export_model_command(
    finetuned: Annotated[Path, typer.Argument(help="A `medhub finetune` output folder.")],
    model_id: Annotated[str, typer.Option("--id", help="The model's id, e.g. my-brain-tumor.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The model folder to write.")],
    version: Annotated[str, typer.Option(help="The model's version (MAJOR.MINOR.PATCH).")] = "0.1.0",
    trained_on: Annotated[str | None, typer.Option(help="What the weights were trained on, plainly (default: the "
                                                    "training sessions' names).")] = None,
) -> None:
    """Turn a finetuned checkpoint into a hub model folder: card, sha256-checked weights, README. Run it with
    `medhub run FOLDER INPUT OUTPUT`."""
    from medhub.brain.hub import export_model

    card = export_model(finetuned, output, model_id=model_id, version=version, trained_on=trained_on)
    names = ", ".join(s.name for s in card.inputs.sequences)
    console.print(f"exported {card.id} {card.version} ({card.task}; sequences {names}) to {output}; run it with "
                  f"`medhub run {output} INPUT OUTPUT`", highlight=False)
