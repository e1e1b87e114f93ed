"""Loading pretrained weights into a task network: one home for the brain and the face models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from medhub.errors import InputError, MedhubError
from medhub.io.files import sidecar_path


def resolve_checkpoint(checkpoint: str | Path) -> Path:
    """``checkpoint`` when it is a file, else the network checkpoint of the installed model with that id (e.g.
    ``face-age``, to finetune a new task from its encoder). A model without one is an error naming it."""
    path = Path(checkpoint)
    if path.is_file():
        return path
    from medhub.hub.registry import get_model

    try:
        weights = getattr(get_model(str(checkpoint)), "weights_path", None)
    except MedhubError as e:
        raise InputError(path, "neither a checkpoint file nor an installed model's id", code="not-found") from e
    if weights is None or not weights.is_file() or not sidecar_path(weights).is_file():
        raise InputError(path, "this model ships no network checkpoint to start from", code="bad-option")
    return weights


def load_pretrained(net: nn.Module, checkpoint: str | Path) -> dict[str, Any]:
    """Copy the encoder (and decoder, when ``net`` has one) from a pretraining checkpoint into ``net``, checking
    every shape; a 3D U-Net's first convolution is inflated from one input channel to ``net``'s (the pretrained
    filter copied to each channel and divided by their number). An int8 checkpoint (:func:`quantize_int8`, e.g.
    the shipped ``face-age``'s: its first network) is dequantized. Returns the checkpoint's sidecar."""
    from safetensors.torch import load_file

    checkpoint = Path(checkpoint)
    sidecar = json.loads(sidecar_path(checkpoint).read_text())
    weights = dequantize(load_file(str(checkpoint)))
    own = net.state_dict()
    first = "encoder.blocks.0.0.weight"
    loaded = 0
    for key, value in weights.items():
        if key in own and (key.startswith("encoder.") or (key.startswith("decoder.") and hasattr(net, "decoder"))):
            if key == first and value.shape[1] != own[key].shape[1]:
                value = value.repeat(1, own[key].shape[1], 1, 1, 1) / own[key].shape[1]
            if value.shape != own[key].shape:
                raise InputError(checkpoint, f"{key}: checkpoint shape {tuple(value.shape)} does not fit "
                                 f"{tuple(own[key].shape)}", code="checkpoint-mismatch")
            own[key] = value
            loaded += 1
    if loaded == 0:
        raise InputError(checkpoint, "holds no encoder weights", code="checkpoint-mismatch")
    net.load_state_dict(own)
    return sidecar


#: Key suffix of an int8-quantized tensor's per-output-channel scales.
SCALE_SUFFIX = ".int8_scale"


def quantize_int8(weights: dict[str, Any]) -> dict[str, Any]:
    """Tensors of two or more dimensions as symmetric int8 per output channel (first axis) plus float32 scales under
    ``key + SCALE_SUFFIX``; smaller tensors (biases, norms) as float16. A quarter of the float32 size, for shipping
    weights small; :func:`dequantize` restores float32."""
    import torch

    out: dict[str, Any] = {}
    for key, value in weights.items():
        value = value.float()
        if value.dim() >= 2:
            scale = value.abs().flatten(1).amax(1).clamp_min(1e-12) / 127
            shape = (-1,) + (1,) * (value.dim() - 1)
            out[key] = torch.round(value / scale.view(shape)).to(torch.int8)
            out[key + SCALE_SUFFIX] = scale
        else:
            out[key] = value.half()
    return out


def dequantize(weights: dict[str, Any]) -> dict[str, Any]:
    """Float32 tensors from :func:`quantize_int8`'s output (or from any plain checkpoint, unchanged but cast)."""
    out = {}
    for key, value in weights.items():
        if key.endswith(SCALE_SUFFIX):
            continue
        scale = weights.get(key + SCALE_SUFFIX)
        value = value.float()
        out[key] = value * scale.view((-1,) + (1,) * (value.dim() - 1)) if scale is not None else value
    return out
