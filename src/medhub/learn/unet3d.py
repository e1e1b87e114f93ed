"""A small, reusable 3D U-Net.

Design choices, stated once:

* The network is split into an :class:`Encoder` (returns the feature map of every level, finest first) and a
  :class:`Decoder` (takes that list and returns features at full resolution), glued by :class:`UNet3D` with a 1x1x1
  output head. The encoder can be used on its own (e.g. as a feature extractor for another task) through
  :attr:`UNet3D.encoder` or by building an :class:`Encoder` directly.
* Normalisation is configurable: ``"instance"`` (per-sample, per-channel), ``"group"`` (per-sample channel groups)
  or ``"none"``. No batch normalisation anywhere: every choice behaves the same at batch size 1, in training and in
  evaluation mode. With ``"none"`` the network is a plain stack of convolutions, so its output at a voxel does not
  depend on how large the input crop is (apart from within the receptive field of the borders), which makes tiled
  inference exact.
* Presets (:data:`PRESETS`): ``tiny`` for CPU, ``unet_b`` (32 base filters) and ``unet_xl`` (64), as in the FOMO25
  baseline. Task heads sit on top of the same encoder: the decoder and a 1x1x1 convolution for segmentation (and
  for reconstruction in masked-autoencoder pretraining), :class:`PooledHead` (global average pooling of the
  bottleneck, then a linear layer) for classification and regression. So one pretrained checkpoint serves every
  task kind.
* Each level is two 3x3x3 convolutions with LeakyReLU; down-sampling is a stride-2 max pool, up-sampling a
  stride-2 transposed convolution followed by concatenation with the skip connection. Input sizes must therefore
  be divisible by ``2 ** (depth - 1)`` in every axis; :func:`pad_to_multiple` helps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

NormKind = Literal["instance", "group", "none"]


@dataclass(frozen=True)
class UNet3DConfig:
    """Hyper-parameters of a :class:`UNet3D`.

    Parameters
    ----------
    in_channels:
        Number of input channels.
    out_channels:
        Number of output channels (logits; no activation is applied).
    base_channels:
        Channels at the finest level; each coarser level doubles them.
    depth:
        Number of resolution levels (``depth - 1`` down-samplings).
    norm:
        ``"instance"``, ``"group"`` or ``"none"``.
    groups:
        Number of groups for group normalisation (capped at the channel count).
    negative_slope:
        LeakyReLU slope.
    """

    in_channels: int = 1
    out_channels: int = 1
    base_channels: int = 8
    depth: int = 3
    norm: NormKind = "none"
    groups: int = 4
    negative_slope: float = 0.01

    def channels(self) -> list[int]:
        """Feature channels of each level, finest first."""
        return [self.base_channels * 2**level for level in range(self.depth)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UNet3DConfig:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


#: Named configurations; ``in_channels`` / ``out_channels`` are set per task with :func:`preset`.
PRESETS: dict[str, UNet3DConfig] = {
    "tiny": UNet3DConfig(base_channels=8, depth=4, norm="instance"),
    "unet_b": UNet3DConfig(base_channels=32, depth=5, norm="instance"),
    "unet_xl": UNet3DConfig(base_channels=64, depth=5, norm="instance"),
}


def preset(name: str, **overrides: Any) -> UNet3DConfig:
    """The :data:`PRESETS` configuration ``name`` with ``overrides`` (e.g. ``in_channels=2``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown architecture {name!r}; choose from {', '.join(PRESETS)}")
    return UNet3DConfig(**{**PRESETS[name].to_dict(), **overrides})


def _norm(kind: NormKind, channels: int, groups: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(min(groups, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; use 'instance', 'group' or 'none'")


class ConvBlock(nn.Sequential):
    """Two 3x3x3 convolutions, each followed by normalisation and LeakyReLU."""

    def __init__(self, in_channels: int, out_channels: int, norm: NormKind = "none", groups: int = 4,
                 negative_slope: float = 0.01) -> None:
        bias = norm == "none"
        super().__init__(
            nn.Conv3d(in_channels, out_channels, 3, padding=1, bias=bias),
            _norm(norm, out_channels, groups),
            nn.LeakyReLU(negative_slope, inplace=True),
            nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=bias),
            _norm(norm, out_channels, groups),
            nn.LeakyReLU(negative_slope, inplace=True),
        )


class Encoder(nn.Module):
    """Contracting path: one :class:`ConvBlock` per level, max pooling between levels.

    ``forward`` returns the list of level outputs, finest (full resolution) first, coarsest (the bottleneck) last.
    """

    def __init__(self, config: UNet3DConfig) -> None:
        super().__init__()
        self.config = config
        chans = config.channels()
        blocks = []
        previous = config.in_channels
        for c in chans:
            blocks.append(ConvBlock(previous, c, config.norm, config.groups, config.negative_slope))
            previous = c
        self.blocks = nn.ModuleList(blocks)
        self.pool = nn.MaxPool3d(2)

    @property
    def out_channels(self) -> list[int]:
        return self.config.channels()

    @property
    def feature_dim(self) -> int:
        """Length of :meth:`pooled`'s vectors: the bottleneck's channels."""
        return self.config.channels()[-1]

    @staticmethod
    def pooled(features: list[torch.Tensor]) -> torch.Tensor:
        """One vector per sample: the bottleneck averaged over space, ``(N, channels)``."""
        return features[-1].mean(dim=tuple(range(2, features[-1].ndim)))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features: list[torch.Tensor] = []
        for i, block in enumerate(self.blocks):
            if i > 0:
                x = self.pool(x)
            x = block(x)
            features.append(x)
        return features


class Decoder(nn.Module):
    """Expanding path: transposed-convolution up-sampling, skip concatenation, :class:`ConvBlock`."""

    def __init__(self, config: UNet3DConfig) -> None:
        super().__init__()
        self.config = config
        chans = config.channels()
        ups, blocks = [], []
        for level in range(config.depth - 1, 0, -1):
            ups.append(nn.ConvTranspose3d(chans[level], chans[level - 1], 2, stride=2))
            blocks.append(ConvBlock(2 * chans[level - 1], chans[level - 1], config.norm, config.groups,
                                    config.negative_slope))
        self.ups = nn.ModuleList(ups)
        self.blocks = nn.ModuleList(blocks)

    @property
    def out_channels(self) -> int:
        return self.config.base_channels

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for up, block, skip in zip(self.ups, self.blocks, reversed(features[:-1]), strict=True):
            x = block(torch.cat([up(x), skip], dim=1))
        return x


class UNet3D(nn.Module):
    """Encoder + decoder + 1x1x1 head returning logits of shape ``(N, out_channels, D, H, W)``."""

    def __init__(self, config: UNet3DConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        if config is None:
            config = UNet3DConfig(**overrides)
        elif overrides:
            config = UNet3DConfig(**{**config.to_dict(), **overrides})
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.head = nn.Conv3d(config.base_channels, config.out_channels, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming initialisation suited to LeakyReLU; zero biases."""
        for m in self.modules():
            if isinstance(m, nn.Conv3d | nn.ConvTranspose3d):
                nn.init.kaiming_normal_(m.weight, a=self.config.negative_slope, nonlinearity="leaky_relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @property
    def size_multiple(self) -> int:
        """Every spatial input size must be a multiple of this."""
        return 2 ** (self.config.depth - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.size_multiple
        if any(s % m for s in x.shape[2:]):
            raise ValueError(f"spatial size {tuple(x.shape[2:])} is not a multiple of {m}; see pad_to_multiple")
        return self.head(self.decoder(self.encoder(x)))

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class PooledHead(nn.Module):
    """Classification or regression from an encoder's output: its ``pooled`` vector (by default an
    :class:`Encoder`'s bottleneck averaged over space; a ViT passes its mean token), dropout, then a linear layer to
    ``out_features`` logits or values."""

    def __init__(self, in_channels: int, out_features: int, dropout: float = 0.0,
                 pooled: Callable[[Any], torch.Tensor] = Encoder.pooled) -> None:
        super().__init__()
        self.pooled = pooled
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(in_channels, out_features)

    def forward(self, features: Any) -> torch.Tensor:
        return self.linear(self.dropout(self.pooled(features)))


def pad_to_multiple(x: torch.Tensor, multiple: int, value: float = 0.0) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Pad the last three axes of ``x`` at their end to multiples of ``multiple``.

    Returns the padded tensor and the original spatial shape, to crop the output back with
    ``y[..., :d, :h, :w]``.
    """
    shape = tuple(int(s) for s in x.shape[-3:])
    pads: list[int] = []
    for s in reversed(shape):
        pads += [0, (-s) % multiple]
    if any(pads):
        x = F.pad(x, pads, value=value)
    return x, shape
