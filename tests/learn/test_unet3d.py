"""The 3D U-Net of medhub.learn.unet3d (the brain models' backbone): shapes, separable parts, padding, config."""

from __future__ import annotations

import pytest
import torch

from medhub.learn.unet3d import Decoder, Encoder, UNet3D, UNet3DConfig, pad_to_multiple


@pytest.mark.parametrize("norm", ["none", "instance", "group"])
def test_unet_shapes_and_separable_parts(norm: str) -> None:
    config = UNet3DConfig(in_channels=2, out_channels=3, base_channels=4, depth=3, norm=norm)
    net = UNet3D(config).eval()
    x = torch.randn(1, 2, 16, 24, 32)
    with torch.no_grad():
        y = net(x)
        features = net.encoder(x)
    assert y.shape == (1, 3, 16, 24, 32)
    assert [f.shape[1] for f in features] == [4, 8, 16]
    assert [tuple(f.shape[2:]) for f in features] == [(16, 24, 32), (8, 12, 16), (4, 6, 8)]
    assert isinstance(net.encoder, Encoder) and isinstance(net.decoder, Decoder)
    assert net.decoder(features).shape == (1, 4, 16, 24, 32)
    # batch size 1 in training mode works (no batch norm)
    net.train()
    net(x).mean().backward()
    with pytest.raises(ValueError, match="multiple"):
        net(torch.randn(1, 2, 15, 24, 32))


def test_pad_to_multiple_and_config_roundtrip() -> None:
    x = torch.zeros(1, 1, 5, 8, 9)
    padded, shape = pad_to_multiple(x, 4)
    assert padded.shape == (1, 1, 8, 8, 12) and shape == (5, 8, 9)
    config = UNet3DConfig(base_channels=12, depth=4, norm="group")
    assert UNet3DConfig.from_dict({**config.to_dict(), "unknown": 1}) == config
