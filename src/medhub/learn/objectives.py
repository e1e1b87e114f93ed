"""Self-supervised pretraining objectives on a shared backbone: MAE, contrastive, and their hybrid.

One model (:class:`PretrainingNet`) carries all three, one flag apart, on either backbone: the 3D U-Net of brain
MRI (:class:`~medhub.learn.unet3d.UNet3DConfig`) or the 2D ViT of photos (:class:`~medhub.learn.vit2d.ViT2DConfig`).
A backbone is an encoder with ``pooled(output)`` and ``feature_dim``, and a decoder from the encoder's output back
to the input's size:

* **MAE** (masked autoencoding for CNNs, as in the FOMO25 baseline's AMAES; SimMIM for the ViT): random cubes of
  the input (:func:`cube_mask`, ``patch`` voxels or pixels a side, a ``ratio`` of them; squares in 2D, the ViT's
  patch being the natural side) are set to 0, and the encoder-decoder reconstructs the input; the loss is the mean
  squared error over the masked voxels only. Masking the input rather than dropping tokens keeps one objective for
  both backbones.
* **Contrastive** (SimCLR): two augmented views of a volume (or, with cross-sequence positives, two sequences of one
  session) go through the encoder, global average pooling and a projection MLP; MONAI's ``ContrastiveLoss``
  (NT-Xent) pulls each pair together and pushes the other samples of the batch away.
* **Hybrid**: ``mae_weight x MAE + (1 - mae_weight) x contrastive``, the MAE on the first view.

Tensors are ``(N, C, D, H, W)`` (3D) or ``(N, C, H, W)`` (2D); spatial sizes must be multiples of the network's
``size_multiple`` (3D) or equal the ViT's ``image_size`` (2D).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from medhub.learn.unet3d import Decoder, Encoder, UNet3DConfig
from medhub.learn.vit2d import PixelDecoder, ViT2DConfig, ViTEncoder

Objective = Literal["mae", "contrastive", "hybrid"]
OBJECTIVES: tuple[str, ...] = ("mae", "contrastive", "hybrid")


def cube_mask(shape: tuple[int, ...], patch: int, ratio: float, generator: torch.Generator | None = None,
              device: torch.device | str = "cpu") -> torch.Tensor:
    """A boolean mask over ``shape`` (2D or 3D) that is true on ``round(ratio x cubes)`` of the ``patch``-sided
    cubes (squares in 2D) tiling it, chosen at random; a partial cube at an edge is a cube too."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio must be within [0, 1], got {ratio}")
    grid = tuple(-(-n // patch) for n in shape)
    count = math.prod(grid)
    chosen = torch.randperm(count, generator=generator)[: round(ratio * count)]
    cubes = torch.zeros(count, dtype=torch.bool)
    cubes[chosen] = True
    full = cubes.view(grid)
    for axis in range(len(shape)):
        full = full.repeat_interleave(patch, axis)
    return full[tuple(slice(0, n) for n in shape)].to(device)


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the voxels where ``mask`` (broadcast over batch and channels) is true."""
    weight = mask.expand_as(target).to(prediction.dtype)
    return ((prediction - target) ** 2 * weight).sum() / weight.sum().clamp_min(1.0)


class PretrainingNet(nn.Module):
    """Encoder + decoder + reconstruction head (MAE) + projection head (contrastive) on one configuration.

    After pretraining, ``encoder`` (and ``decoder``) are what finetuning loads; the heads are left behind.
    """

    def __init__(self, config: UNet3DConfig | ViT2DConfig, *, projection_dim: int = 128,
                 temperature: float = 0.1) -> None:
        super().__init__()
        from monai.losses import ContrastiveLoss

        self.config = config
        self.encoder: Encoder | ViTEncoder
        if isinstance(config, ViT2DConfig):
            self.encoder = ViTEncoder(config)
            self.decoder: nn.Module = PixelDecoder(config)
            self.reconstruction: nn.Module = nn.Identity()  # the pixel decoder already predicts pixels
        else:
            self.encoder = Encoder(config)
            self.decoder = Decoder(config)
            self.reconstruction = nn.Conv3d(config.base_channels, config.in_channels, 1)
        width = self.encoder.feature_dim
        self.projection = nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True),
                                        nn.Linear(width, projection_dim))
        self.contrastive_loss = ContrastiveLoss(temperature=temperature)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.reconstruction(self.decoder(self.encoder(x)))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The projection of the encoder's pooled features: one vector per sample."""
        return self.projection(self.encoder.pooled(self.encoder(x)))

    def mae_loss(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_mse(self.reconstruct(x.masked_fill(mask, 0.0)), x, mask)

    def nt_xent(self, view_a: torch.Tensor, view_b: torch.Tensor) -> torch.Tensor:
        if view_a.shape[0] < 2:
            raise ValueError("the contrastive objective needs at least 2 samples per batch (the others are the "
                             "negatives)")
        return self.contrastive_loss(F.normalize(self.embed(view_a), dim=1), F.normalize(self.embed(view_b), dim=1))

    def forward(self, objective: Objective, view_a: torch.Tensor, view_b: torch.Tensor | None = None, *,
                mask: torch.Tensor | None = None, mae_weight: float = 0.5) -> dict[str, torch.Tensor]:
        """The losses of one batch (:meth:`loss`); the forward pass, so that DDP synchronises its gradients."""
        return self.loss(objective, view_a, view_b, mask=mask, mae_weight=mae_weight)

    def loss(self, objective: Objective, view_a: torch.Tensor, view_b: torch.Tensor | None = None, *,
             mask: torch.Tensor | None = None, mae_weight: float = 0.5) -> dict[str, torch.Tensor]:
        """``{"loss": …, "mae": …, "contrastive": …}`` for one batch (the parts the objective uses)."""
        parts: dict[str, torch.Tensor] = {}
        if objective in ("mae", "hybrid"):
            if mask is None:
                raise ValueError("the MAE objective needs a mask (cube_mask)")
            parts["mae"] = self.mae_loss(view_a, mask)
        if objective in ("contrastive", "hybrid"):
            if view_b is None:
                raise ValueError("the contrastive objective needs two views")
            parts["contrastive"] = self.nt_xent(view_a, view_b)
        if objective == "mae":
            parts["loss"] = parts["mae"]
        elif objective == "contrastive":
            parts["loss"] = parts["contrastive"]
        elif objective == "hybrid":
            parts["loss"] = mae_weight * parts["mae"] + (1 - mae_weight) * parts["contrastive"]
        else:
            raise ValueError(f"unknown objective {objective!r}; choose from {', '.join(OBJECTIVES)}")
        return parts
