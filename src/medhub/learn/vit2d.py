"""The face models' backbones: a small 2D Vision Transformer, and its ResNet-stemmed variants.

Design choices, stated once:

* Images are ``(N, C, H, W)`` float tensors, square, ``image_size`` pixels a side (a multiple of ``patch``); a
  token is one ``patch`` x ``patch`` square, in row-major order (top-left first).
* **Stem**: ``"conv"`` (default) is a stack of stride-2 3x3 convolutions down to one vector per patch, as in "Early
  convolutions help transformers see better" (Xiao et al., 2021): with a few thousand photos a plain ViT learns
  slowly, a convolutional stem much faster. ``"resnet"`` goes further, as the original ViT paper's hybrid does
  (Dosovitskiy et al., 2021): a ResNet-18-like stem (7x7 convolution, max pooling, then two MONAI
  :class:`~monai.networks.nets.resnet.ResNetBlock` per stage, batch norm) down to one vector per patch, with
  transformer blocks on its token map (``hybrid``) or none (``resnet``). On the UTKFace faces, at 2 CPU cores'
  budget, this inductive bias is worth more than anything else we tried (``benchmarks/RESULTS.md``). ``"patch"``
  is the classic single strided convolution. MONAI's ``ViT`` has only the latter; its transformer blocks
  (:class:`monai.networks.blocks.TransformerBlock`) are used as they are.
* Learned position embeddings; no class token: the pooled feature is the mean of the final tokens, which suits
  :class:`~medhub.learn.objectives.PretrainingNet` (one ``pool`` for every backbone) and the regression heads.
* :class:`PixelDecoder` predicts each token's patch pixels with one linear layer (SimMIM's light decoder), so the
  masked-input reconstruction objective of the 3D U-Net works unchanged on this backbone.
* Presets (:data:`VIT_PRESETS`): ``tiny`` (192 wide, 6 blocks, 3 heads: trains on 2 CPU cores), ``small``
  (384, 12, 6), ``hybrid`` (a ResNet stem of 32, 64 and 128 channels, then 256 wide, 4 blocks, 4 heads),
  ``resnet`` (the same stem and no transformer blocks: a CNN behind the same token interface, so the objectives,
  heads and saliency work on it unchanged), ``resnet18`` (``resnet`` with a fourth stage, 256 wide, on the
  7 x 7 grid: a half-width ResNet-18) and ``resnet18_s32`` (the half-width ResNet-18 at its own strides: stages
  of 32, 64, 128 and 256 channels down to 32-px cells, a 4 x 4 grid of 128-px crops, projected to 512).
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import torch
from torch import nn


@dataclass(frozen=True)
class ViT2DConfig:
    """Hyper-parameters of a :class:`ViTEncoder` (sizes in pixels)."""

    image_size: int = 112
    patch: int = 16
    in_channels: int = 3
    hidden: int = 192
    depth: int = 6
    heads: int = 3
    mlp_ratio: float = 4.0
    stem: Literal["conv", "resnet", "patch"] = "conv"
    #: ``"resnet"`` stem only: end with a stage of two residual blocks ``hidden`` wide on the patch grid (the
    #: layout of a half-width ResNet-18) instead of a 1x1 projection to ``hidden``.
    resnet_top_stage: bool = False
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.image_size % self.patch:
            raise ValueError(f"image size {self.image_size} is not a multiple of the patch {self.patch}")
        if self.stem != "patch" and self.patch & (self.patch - 1):
            raise ValueError(f"a convolutional stem needs a power-of-two patch, got {self.patch}")
        if self.stem == "resnet" and self.patch < 8:
            raise ValueError(f"a ResNet stem needs a patch of 8 pixels or more, got {self.patch}")

    @property
    def grid(self) -> int:
        """Tokens per side."""
        return self.image_size // self.patch

    @property
    def spatial_dims(self) -> int:
        return 2

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "vit2d", **asdict(self)}

    def describe(self) -> str:
        """The network in a few words, for model cards."""
        if self.stem == "resnet" and self.depth == 0:
            stages = self.patch.bit_length() - 2 + self.resnet_top_stage
            layout = "half-width ResNet-18 layout" if stages == 4 else f"{stages} stages"
            return f"a 2D ResNet ({layout}, to {self.patch}-px cells, {self.hidden} features; no transformer)"
        return f"a 2D ViT ({self.hidden} wide, {self.depth} blocks, {self.stem} stem)"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ViT2DConfig:
        return cls(**{k: v for k, v in data.items() if k != "kind"})


VIT_PRESETS: dict[str, ViT2DConfig] = {
    "tiny": ViT2DConfig(hidden=192, depth=6, heads=3),
    "small": ViT2DConfig(hidden=384, depth=12, heads=6),
    "hybrid": ViT2DConfig(hidden=256, depth=4, heads=4, stem="resnet"),
    "resnet": ViT2DConfig(hidden=256, depth=0, heads=4, stem="resnet"),
    "resnet18": ViT2DConfig(hidden=256, depth=0, heads=4, stem="resnet", resnet_top_stage=True),
    "resnet18_s32": ViT2DConfig(image_size=128, patch=32, hidden=512, depth=0, heads=8, stem="resnet"),
}


def vit_preset(name: str, **overrides: Any) -> ViT2DConfig:
    """A preset of :data:`VIT_PRESETS` with fields overridden (e.g. ``image_size``); a ``None`` keeps the preset's."""
    if name not in VIT_PRESETS:
        raise ValueError(f"unknown ViT preset {name!r}; choose from {', '.join(VIT_PRESETS)}")
    return replace(VIT_PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})


def _conv_stem(config: ViT2DConfig) -> nn.Sequential:
    steps = config.patch.bit_length() - 1
    widths = [config.in_channels] + [max(24, config.hidden >> (steps - i)) for i in range(1, steps)]
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(widths):
        layers += [nn.Conv2d(a, b, 3, stride=2, padding=1, bias=False), nn.GroupNorm(min(8, b), b), nn.GELU()]
    layers.append(nn.Conv2d(widths[-1], config.hidden, 3, stride=2, padding=1))
    return nn.Sequential(*layers)


def _resnet_stem(config: ViT2DConfig) -> nn.Sequential:
    """Stride 4 (7x7 convolution, max pooling), then stages of two residual blocks, each further stage halving
    the map, down to stride ``patch``; widths ``hidden / 2**k`` up to ``hidden / 2``; then a 1x1 projection to
    ``hidden`` or, with ``resnet_top_stage``, a last stage ``hidden`` wide on the patch grid."""
    from monai.networks.nets.resnet import ResNetBlock

    stages = config.patch.bit_length() - 3
    widths = [max(16, config.hidden >> (stages + 1 - i)) for i in range(stages + 1)]
    layers: list[nn.Module] = [nn.Conv2d(config.in_channels, widths[0], 7, stride=2, padding=3, bias=False),
                               nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1)]
    strides = [1] + [2] * stages + ([1] if config.resnet_top_stage else [])
    widths += [config.hidden] if config.resnet_top_stage else []
    for i, (width, stride) in enumerate(zip(widths, strides, strict=True)):
        before = widths[max(0, i - 1)]
        shortcut = None if (stride, before) == (1, width) else nn.Sequential(
            nn.Conv2d(before, width, 1, stride=stride, bias=False), nn.BatchNorm2d(width))
        layers += [ResNetBlock(before, width, spatial_dims=2, stride=stride, downsample=shortcut),
                   ResNetBlock(width, width, spatial_dims=2)]
    if not config.resnet_top_stage:
        layers.append(nn.Conv2d(widths[-1], config.hidden, 1))
    return nn.Sequential(*layers)


_STEMS = {"conv": _conv_stem, "resnet": _resnet_stem,
          "patch": lambda c: nn.Conv2d(c.in_channels, c.hidden, c.patch, stride=c.patch)}


class ViTEncoder(nn.Module):
    """Stem, position embedding, transformer blocks, final LayerNorm: ``(N, C, H, W) -> (N, tokens, hidden)``."""

    def __init__(self, config: ViT2DConfig) -> None:
        super().__init__()
        from monai.networks.blocks import TransformerBlock

        self.config = config
        self.stem = _STEMS[config.stem](config)
        self.position = nn.Parameter(torch.zeros(1, config.grid**2, config.hidden))
        nn.init.trunc_normal_(self.position, std=0.02)
        self.blocks = nn.ModuleList(
            TransformerBlock(config.hidden, int(config.hidden * config.mlp_ratio), config.heads,
                             dropout_rate=config.dropout, qkv_bias=True, use_flash_attention=True)
            for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.hidden)
        # The final tokens laid out as a (N, hidden, grid, grid) map pass through this no-op, so that map-based
        # attribution (Grad-CAM through Captum's layer hooks) can hold of them.
        self.token_map = nn.Identity()

    @property
    def feature_dim(self) -> int:
        return self.config.hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.stem(x).flatten(2).transpose(1, 2) + self.position
        for block in self.blocks:
            tokens = block(tokens)
        tokens = self.norm(tokens)
        n, _, width = tokens.shape
        side = self.config.grid
        mapped = self.token_map(tokens.transpose(1, 2).reshape(n, width, side, side))
        return mapped.flatten(2).transpose(1, 2)

    @staticmethod
    def pooled(tokens: torch.Tensor) -> torch.Tensor:
        """One vector per image: the mean token, ``(N, hidden)``."""
        return tokens.mean(dim=1)


class PixelDecoder(nn.Module):
    """Each token's ``patch`` x ``patch`` pixels by one linear layer, folded back into ``(N, C, H, W)``."""

    def __init__(self, config: ViT2DConfig) -> None:
        super().__init__()
        self.config = config
        self.linear = nn.Linear(config.hidden, config.patch**2 * config.in_channels)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        c, p, g = self.config.in_channels, self.config.patch, self.config.grid
        pixels = self.linear(tokens).view(-1, g, g, c, p, p)
        return pixels.permute(0, 3, 1, 4, 2, 5).reshape(-1, c, g * p, g * p)
