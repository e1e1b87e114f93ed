"""Self-supervised pretraining on face photos: ``medhub pretrain --modality photo``.

The brain work's objectives (:class:`~medhub.learn.objectives.PretrainingNet`: masked-input reconstruction,
contrastive, hybrid) and training loop (:class:`~medhub.learn.trainer.Trainer`) on the 2D ViT
(:mod:`medhub.learn.vit2d`). Photos are found under a folder, cropped to their face once
(:class:`~medhub.face.data.CropCache`; photos without a face are counted and left out), and each step draws a
seeded batch: for MAE, an augmented crop and a mask of ``mask_patch`` squares (the ViT's patch by default); for
the contrastive objective, two strongly augmented views of each crop.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medhub.face.data import CropCache, augment, to_tensor
from medhub.learn.objectives import OBJECTIVES, PretrainingNet, cube_mask
from medhub.learn.trainer import Trainer, TrainingConfig, distributed
from medhub.learn.vit2d import vit_preset


@dataclass
class PhotoSampler:
    """The batch of each step, drawn from a generator seeded by (seed, rank, step): resumable exactly."""

    crops: np.ndarray
    batch_size: int = 64
    objective: str = "mae"
    mask_patch: int = 16
    mask_ratio: float = 0.6
    seed: int = 0

    def __call__(self, step: int) -> dict[str, torch.Tensor]:
        rank, _ = distributed()
        generator = torch.Generator().manual_seed(int(np.random.default_rng([self.seed, rank, step])
                                                      .integers(2**62)))
        pick = torch.randint(len(self.crops), (self.batch_size,), generator=generator).numpy()
        x = to_tensor(self.crops[pick])
        strength = 1.0 if self.objective == "mae" else 2.0
        batch = {"view_a": augment(x, generator, strength=strength)}
        batch["view_b"] = augment(x, generator, strength=strength) if self.objective != "mae" else batch["view_a"]
        batch["mask"] = cube_mask(tuple(x.shape[2:]), self.mask_patch, self.mask_ratio, generator)
        return batch


def pretrain_photos(data: str | Path, output: str | Path, *, objective: str = "mae", arch: str = "tiny",
                    image_size: int | None = None, batch_size: int = 64, config: TrainingConfig | None = None,
                    mask_ratio: float = 0.6, mask_patch: int | None = None, mae_weight: float = 0.5,
                    crop_policy: Any | None = "default", cache: str | Path | None = None, resume: bool = False,
                    progress: bool = True) -> dict[str, Any]:
    """Pretrain the ViT ``arch`` with ``objective`` on every photo under ``data``; return the checkpoint's sidecar.

    ``image_size`` (pixels a side) defaults to the preset's. ``crop_policy`` is a
    :class:`~medhub.face.detect.CropPolicy`, ``"default"`` (the default policy at ``image_size``) or ``None`` (the
    photos are face crops already).
    """
    from medhub.errors import InputError
    from medhub.face.detect import CropPolicy
    from medhub.io.photo import find_photos

    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose from {', '.join(OBJECTIVES)}")
    output = Path(output)
    config = config or TrainingConfig()
    net_config = vit_preset(arch, image_size=image_size)
    size = net_config.image_size
    policy = CropPolicy(size=size) if crop_policy == "default" else crop_policy
    photos = find_photos(data)
    crops = CropCache.build(photos, cache or output / "cache", policy=policy, size=size, progress=progress)
    if len(crops.crops) < 2:
        raise InputError(data, f"{len(crops.crops)} usable face photos of {len(photos)}; pretraining needs more",
                         code="bad-input")
    torch.manual_seed(config.seed)
    model = PretrainingNet(net_config)
    sampler = PhotoSampler(crops.crops, batch_size=batch_size, objective=objective,
                           mask_patch=mask_patch or net_config.patch, mask_ratio=mask_ratio, seed=config.seed)

    def step(net: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return net(objective, batch["view_a"], batch["view_b"], mask=batch["mask"], mae_weight=mae_weight)

    metadata = {"kind": "medhub-pretraining", "modality": "photo", "objective": objective, "arch": arch,
                "network": net_config.to_dict(), "batch_size": batch_size, "mask_ratio": mask_ratio,
                "mask_patch": sampler.mask_patch, "mae_weight": mae_weight,
                "crop_policy": None if policy is None else policy.__dict__, "photos": len(photos),
                "photos_used": len(crops.crops), "photos_failed": len(crops.failures),
                "data": str(Path(data).resolve())}
    trainer = Trainer(model, step, output, config=config, metadata=metadata, progress=progress)
    history = trainer.fit(sampler, resume=resume)
    return {**metadata, "sessions": len(crops.crops), "steps": trainer.done, "history": history,
            "checkpoint": str(trainer.checkpoint_path)}
