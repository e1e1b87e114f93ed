"""Backbone presets and heads, and the pretraining objectives (MAE cube masking, NT-Xent, hybrid)."""

from __future__ import annotations

import math

import pytest
import torch

from medhub.learn.objectives import PretrainingNet, cube_mask, masked_mse
from medhub.learn.unet3d import PRESETS, Encoder, PooledHead, UNet3D, preset


def test_presets_have_the_fomo_widths_and_one_encoder_serves_every_head():
    assert (PRESETS["unet_b"].base_channels, PRESETS["unet_xl"].base_channels) == (32, 64)
    config = preset("tiny", in_channels=2, out_channels=3)
    segmenter = UNet3D(config)
    x = torch.randn(2, 2, 16, 16, 16)
    assert segmenter(x).shape == (2, 3, 16, 16, 16)
    head = PooledHead(config.channels()[-1], 5)
    assert head(segmenter.encoder(x)).shape == (2, 5)
    with pytest.raises(ValueError, match="unknown architecture"):
        preset("resnet")


def test_cube_masks_mask_the_requested_share_of_whole_cubes():
    generator = torch.Generator().manual_seed(0)
    mask = cube_mask((32, 32, 24), patch=8, ratio=0.6, generator=generator)
    cubes = mask.view(4, 8, 4, 8, 3, 8).permute(0, 2, 4, 1, 3, 5).reshape(48, -1)
    assert torch.all(cubes.all(dim=1) | ~cubes.any(dim=1))  # every cube all in or all out
    assert int(cubes.all(dim=1).sum()) == round(0.6 * 48)
    again = cube_mask((32, 32, 24), patch=8, ratio=0.6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(mask, again)
    assert cube_mask((10, 10, 10), patch=4, ratio=1.0).all()  # partial cubes at the edges count


def test_masked_mse_counts_only_masked_voxels():
    target = torch.zeros(1, 1, 4, 4, 4)
    prediction = torch.ones(1, 1, 4, 4, 4)
    mask = torch.zeros(4, 4, 4, dtype=torch.bool)
    mask[:2] = True
    prediction[0, 0, 2:] = 100.0  # unmasked errors do not count
    assert masked_mse(prediction, target, mask) == pytest.approx(1.0)


def test_nt_xent_is_monais_simclr_loss_and_prefers_matching_views():
    torch.manual_seed(0)
    net = PretrainingNet(preset("tiny", depth=3), temperature=0.5)
    x = torch.randn(4, 1, 16, 16, 16)
    same = net.nt_xent(x, x)
    different = net.nt_xent(x, torch.randn(4, 1, 16, 16, 16))
    assert same < different
    # the identical-views value, from the definition: each sample's positive has cosine 1
    z = torch.nn.functional.normalize(net.embed(x), dim=1)
    similarity = torch.cat([z, z]) @ torch.cat([z, z]).T
    logits = similarity / 0.5
    logits.fill_diagonal_(-math.inf)
    targets = torch.cat([torch.arange(4, 8), torch.arange(0, 4)])
    assert same.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, targets).item(), rel=1e-4)


@pytest.mark.parametrize("objective", ["mae", "contrastive", "hybrid"])
def test_each_objective_trains_on_one_backbone(objective):
    torch.manual_seed(0)
    net = PretrainingNet(preset("tiny", depth=3, base_channels=4))
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3)
    x = torch.randn(4, 1, 16, 16, 16).cumsum(dim=2) / 4  # smooth along one axis: predictable from its context
    mask = cube_mask((16, 16, 16), patch=4, ratio=0.5, generator=torch.Generator().manual_seed(1))
    losses = []
    for _ in range(25):
        parts = net.loss(objective, x, x.flip(-1), mask=mask, mae_weight=0.5)
        optimizer.zero_grad()
        parts["loss"].backward()
        optimizer.step()
        losses.append(parts["loss"].item())
    assert losses[-1] < 0.8 * losses[0]
    assert set(parts) == {"loss", *({"mae"} if objective != "contrastive" else set()),
                          *({"contrastive"} if objective != "mae" else set())}
    assert isinstance(net.encoder, Encoder)
