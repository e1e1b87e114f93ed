"""``medhub pretrain``: self-supervised pretraining (brain MRI now). Kept light to import: no torch here."""

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
