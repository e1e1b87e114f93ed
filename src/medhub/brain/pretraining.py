"""Self-supervised pretraining on brain MRI sessions: ``medhub pretrain --modality mri``.

Sessions are found in the FOMO layout (:mod:`medhub.brain.layout`), preprocessed once into a cache
(:mod:`medhub.brain.cache`), then sampled as random cubic crops, one sequence per sample (as the FOMO25 baseline
does: every sequence is an unlabeled volume). :class:`CropSampler` gives the batch of each training step from a
generator seeded by the step, so a resumed run sees the batches the uninterrupted run would have seen. For the
contrastive objective the second view is the same crop augmented again (flips, intensity scale and shift, noise:
MONAI's random array transforms) or, with ``cross_sequence``, the same place in another sequence of the session.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medhub.brain.cache import CachedSession, cache_sessions
from medhub.brain.layout import find_sessions
from medhub.learn.objectives import OBJECTIVES, PretrainingNet, cube_mask
from medhub.learn.trainer import Trainer, TrainingConfig, distributed
from medhub.learn.unet3d import preset


@dataclass
class CropSampler:
    """Batches of random crops from cached sessions (see the module docstring)."""

    sessions: list[CachedSession]
    crop: int = 32
    batch_size: int = 2
    objective: str = "mae"
    cross_sequence: bool = False
    mask_patch: int = 8
    mask_ratio: float = 0.6
    seed: int = 0
    _arrays: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)

    def _session(self, index: int) -> dict[str, np.ndarray]:
        entry = self.sessions[index]
        if entry.key not in self._arrays:
            if len(self._arrays) > 64:  # a bounded in-memory cache; the npz files hold the rest
                self._arrays.pop(next(iter(self._arrays)))
            self._arrays[entry.key] = entry.load()[0]
        return self._arrays[entry.key]

    def _crop(self, array: np.ndarray, corner: np.ndarray) -> np.ndarray:
        padded = np.pad(array, [(0, max(0, self.crop - n)) for n in array.shape])
        return padded[tuple(slice(c, c + self.crop) for c in corner)]

    def __call__(self, step: int) -> dict[str, torch.Tensor]:
        rank, _ = distributed()
        rng = np.random.default_rng([self.seed, rank, step])
        view_a, view_b = [], []
        for _ in range(self.batch_size):
            arrays = self._session(int(rng.integers(len(self.sessions))))
            names = sorted(arrays)
            first = names[int(rng.integers(len(names)))]
            shape = arrays[first].shape
            corner = np.array([rng.integers(0, max(1, n - self.crop + 1)) for n in shape])
            a = self._crop(arrays[first], corner)
            if self.cross_sequence and len(names) > 1:
                other = [n for n in names if n != first][int(rng.integers(len(names) - 1))]
                b = self._crop(arrays[other], corner)
            else:
                b = a
            view_a.append(_augment(a, rng) if self.objective != "mae" else a)
            view_b.append(_augment(b, rng))
        batch = {"view_a": torch.from_numpy(np.stack(view_a)[:, None].copy()),
                 "view_b": torch.from_numpy(np.stack(view_b)[:, None].copy())}
        generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
        batch["mask"] = cube_mask((self.crop,) * 3, self.mask_patch, self.mask_ratio, generator)
        return batch


def _augment(array: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random flip per axis, intensity scale and shift, and Gaussian noise (MONAI's transforms, seeded)."""
    from monai.transforms import Compose, RandFlip, RandGaussianNoise, RandScaleIntensity, RandShiftIntensity

    transforms = Compose([RandFlip(prob=0.5, spatial_axis=0), RandFlip(prob=0.5, spatial_axis=1),
                          RandFlip(prob=0.5, spatial_axis=2), RandScaleIntensity(factors=0.2, prob=0.8),
                          RandShiftIntensity(offsets=0.2, prob=0.8), RandGaussianNoise(prob=0.5, std=0.1)])
    transforms.set_random_state(seed=int(rng.integers(2**31)))
    out = transforms(array[None])
    return np.asarray(out[0], dtype=np.float32)


def pretrain(data: str | Path, output: str | Path, *, objective: str = "mae", arch: str = "tiny", crop: int = 32,
             batch_size: int = 2, config: TrainingConfig | None = None, cross_sequence: bool = False,
             mask_ratio: float = 0.6, mask_patch: int = 8, mae_weight: float = 0.5, cache: str | Path | None = None,
             resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Pretrain ``arch`` with ``objective`` on every session under ``data``; return the checkpoint's sidecar."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose from {', '.join(OBJECTIVES)}")
    output = Path(output)
    config = config or TrainingConfig()
    sessions = cache_sessions(find_sessions(data), cache or output / "cache", progress=progress)
    net_config = preset(arch, in_channels=1, out_channels=1)
    multiple = 2 ** (net_config.depth - 1)
    if crop % multiple or crop % mask_patch:
        raise ValueError(f"crop {crop} must be a multiple of {multiple} ({arch}) and of the mask patch {mask_patch}")
    torch.manual_seed(config.seed)  # the initial weights too depend on the seed alone
    model = PretrainingNet(net_config)
    sampler = CropSampler(sessions, crop=crop, batch_size=batch_size, objective=objective,
                          cross_sequence=cross_sequence, mask_patch=mask_patch, mask_ratio=mask_ratio,
                          seed=config.seed)

    def step(net: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return net(objective, batch["view_a"], batch["view_b"], mask=batch["mask"], mae_weight=mae_weight)

    metadata = {"kind": "medhub-pretraining", "modality": "mri", "objective": objective, "arch": arch,
                "network": net_config.to_dict(), "crop": crop, "batch_size": batch_size,
                "cross_sequence": cross_sequence, "mask_ratio": mask_ratio, "mask_patch": mask_patch,
                "mae_weight": mae_weight, "sessions": len(sessions), "data": str(Path(data).resolve())}
    trainer = Trainer(model, step, output, config=config, metadata=metadata, progress=progress)
    history = trainer.fit(sampler, resume=resume)
    return {**metadata, "steps": trainer.done, "history": history, "checkpoint": str(trainer.checkpoint_path)}
