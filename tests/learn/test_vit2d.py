"""The 2D ViT backbone: shapes, the shared pretraining objectives on it, and the Cox loss against lifelines."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.networks.nets.resnet import ResNetBlock

from medhub.learn.losses import cox_partial_likelihood
from medhub.learn.objectives import PretrainingNet, cube_mask
from medhub.learn.vit2d import PixelDecoder, ViT2DConfig, ViTEncoder, vit_preset

SMALL = ViT2DConfig(image_size=32, patch=8, hidden=32, depth=2, heads=2)


def test_encoder_tokens_pooled_and_presets():
    encoder = ViTEncoder(SMALL)
    tokens = encoder(torch.randn(3, 3, 32, 32))
    assert tokens.shape == (3, 16, 32) and ViTEncoder.pooled(tokens).shape == (3, 32)
    assert vit_preset("small").hidden == 384 and vit_preset("tiny", image_size=160).grid == 10
    with pytest.raises(ValueError, match="multiple of the patch"):
        ViT2DConfig(image_size=100, patch=16)
    assert ViT2DConfig.from_dict(SMALL.to_dict()) == SMALL


def test_resnet_stem_gives_one_token_per_patch_and_learns_the_mae_objective():
    config = ViT2DConfig(image_size=32, patch=8, hidden=32, depth=1, heads=2, stem="resnet")
    encoder = ViTEncoder(config)
    assert encoder(torch.randn(2, 3, 32, 32)).shape == (2, 16, 32)
    for name in ("hybrid", "resnet18"):
        assert vit_preset(name).stem == "resnet" and ViTEncoder(vit_preset(name))(
            torch.randn(1, 3, 112, 112)).shape == (1, 49, 256)
    s32 = vit_preset("resnet18_s32")
    assert ViTEncoder(s32)(torch.randn(1, 3, 128, 128)).shape == (1, 16, 512)
    assert "half-width ResNet-18 layout, to 32-px cells" in s32.describe()
    assert "3 stages" in vit_preset("resnet").describe()
    top = ViTEncoder(ViT2DConfig(image_size=32, patch=8, hidden=32, depth=0, stem="resnet", resnet_top_stage=True))
    assert isinstance(top.stem[-1], ResNetBlock) and top(torch.randn(1, 3, 32, 32)).shape == (1, 16, 32)
    with pytest.raises(ValueError, match="patch of 8"):
        ViT2DConfig(image_size=32, patch=4, stem="resnet")
    torch.manual_seed(0)
    net = PretrainingNet(config)
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(8, 3, 32, 32, generator=generator).cumsum(-1).cumsum(-2) / 16
    mask = cube_mask((32, 32), 8, 0.5, generator)
    losses = []
    for _ in range(25):
        loss = net.loss("mae", images, mask=mask)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])


def test_pixel_decoder_puts_each_token_on_its_own_square():
    decoder = PixelDecoder(SMALL)
    with torch.no_grad():
        decoder.linear.weight.zero_()
        decoder.linear.bias.zero_()
        decoder.linear.weight[:, 0] = 1.0  # every pixel of a token's patch = the token's first feature
    tokens = torch.zeros(1, 16, 32)
    tokens[0, :, 0] = torch.arange(16.0)  # token k (row-major) holds k
    image = decoder(tokens)[0, 0]
    expected = torch.arange(16.0).view(4, 4).repeat_interleave(8, 0).repeat_interleave(8, 1)
    assert torch.equal(image, expected)


def test_square_masks_cover_the_ratio():
    mask = cube_mask((32, 32), 8, 0.5, torch.Generator().manual_seed(0))
    assert mask.shape == (32, 32) and mask.float().mean().item() == 0.5
    blocks = mask.view(4, 8, 4, 8).permute(0, 2, 1, 3).reshape(16, 64)
    assert bool(((blocks.all(1)) | (~blocks).all(1)).all())  # whole squares only


@pytest.mark.parametrize("objective", ["mae", "contrastive", "hybrid"])
def test_every_objective_learns_on_the_vit(objective):
    torch.manual_seed(0)
    net = PretrainingNet(SMALL)
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(8, 3, 32, 32, generator=generator).cumsum(-1).cumsum(-2) / 16  # smooth, learnable
    mask = cube_mask((32, 32), 8, 0.5, generator)
    losses = []
    for _ in range(25):
        parts = net.loss(objective, images, images + 0.05 * torch.randn_like(images), mask=mask)
        optimizer.zero_grad()
        parts["loss"].backward()
        optimizer.step()
        losses.append(float(parts["loss"].detach()))
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])


def test_cox_loss_gives_lifelines_coefficients_without_ties():
    from lifelines import CoxPHFitter
    from lifelines.datasets import load_rossi

    rossi = load_rossi()
    rossi["week"] = rossi["week"] + np.random.default_rng(0).uniform(0, 0.01, len(rossi))  # no ties: Efron = Breslow
    terms = ["fin", "age", "prio"]
    x = torch.tensor(rossi[terms].to_numpy(), dtype=torch.float64)
    time = torch.tensor(rossi["week"].to_numpy())
    event = torch.tensor(rossi["arrest"].to_numpy(), dtype=torch.float64)
    beta = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([beta], lr=1, max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-14,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = cox_partial_likelihood(x @ beta, time, event)
        loss.backward()
        return loss

    optimizer.step(closure)
    direct = CoxPHFitter().fit(rossi[["week", "arrest", *terms]], "week", "arrest").params_
    np.testing.assert_allclose(beta.detach().numpy(), direct[terms].to_numpy(), atol=1e-5)


def test_cox_loss_breslow_ties_and_no_events():
    risk = torch.tensor([0.5, -0.2, 1.0])
    time = torch.tensor([2.0, 2.0, 5.0])
    event = torch.tensor([1.0, 1.0, 0.0])
    denominator = np.log(np.exp(0.5) + np.exp(-0.2) + np.exp(1.0))  # both tied events share the full risk set
    expected = -((0.5 - denominator) + (-0.2 - denominator)) / 2
    assert float(cox_partial_likelihood(risk, time, event)) == pytest.approx(expected, abs=1e-6)
    assert float(cox_partial_likelihood(risk, time, torch.zeros(3))) == 0.0


def test_int8_weights_round_trip_within_half_a_step_per_channel():
    from medhub.learn.checkpoints import SCALE_SUFFIX, dequantize, quantize_int8

    weights = {"w": torch.randn(8, 5, 3, 3) * torch.arange(1, 9).view(8, 1, 1, 1), "b": torch.randn(8)}
    packed = quantize_int8(weights)
    assert packed["w"].dtype == torch.int8 and packed["b"].dtype == torch.float16
    restored = dequantize(packed)
    step = packed["w" + SCALE_SUFFIX].view(8, 1, 1, 1)
    assert ((restored["w"] - weights["w"]).abs() <= step / 2 + 1e-6).all()
    assert set(restored) == {"w", "b"}


def test_encoder_loads_from_an_int8_ensemble_checkpoint_as_its_first_members_floats(tmp_path):
    """The shipped face-age is such a checkpoint (its first network's file); survival finetuning may start from
    its encoder."""
    import json

    from safetensors.torch import save_file

    from medhub.face.finetuning import FaceEnsemble, FaceNet
    from medhub.learn.checkpoints import dequantize, load_pretrained, quantize_int8

    config = vit_preset("tiny", image_size=32)
    torch.manual_seed(0)
    ensemble = FaceEnsemble([FaceNet(config), FaceNet(config)])
    save_file(quantize_int8(ensemble.members[0].state_dict()), str(tmp_path / "checkpoint.safetensors"))
    (tmp_path / "checkpoint.json").write_text(json.dumps({"network": config.to_dict()}))
    net = FaceNet(config)
    load_pretrained(net, tmp_path / "checkpoint.safetensors")
    expected = dequantize(quantize_int8(ensemble.members[0].state_dict()))
    for key, value in net.state_dict().items():
        if key.startswith("encoder."):
            assert torch.equal(value, expected[key]), key
    first_weight = next(k for k in expected if k.startswith("encoder.") and expected[k].dim() >= 2)
    assert net.state_dict()[first_weight].abs().max() < 10  # scaled floats, not raw int8 steps
