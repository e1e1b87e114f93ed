"""Loading pretrained weights into a task network: one home for the brain and the face models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from medhub.errors import InputError


def load_pretrained(net: nn.Module, checkpoint: str | Path) -> dict[str, Any]:
    """Copy the encoder (and decoder, when ``net`` has one) from a pretraining checkpoint into ``net``, checking
    every shape; a 3D U-Net's first convolution is inflated from one input channel to ``net``'s (the pretrained
    filter copied to each channel and divided by their number). Returns the checkpoint's sidecar."""
    from safetensors.torch import load_file

    checkpoint = Path(checkpoint)
    sidecar = json.loads(checkpoint.with_suffix(".json").read_text())
    weights = load_file(str(checkpoint))
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
