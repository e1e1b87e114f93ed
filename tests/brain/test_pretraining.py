"""`medhub pretrain --modality mri`: a tiny backbone pretrained end to end on generated brains, each objective."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medhub.brain.cache import cache_sessions
from medhub.brain.layout import find_sessions
from medhub.brain.pretraining import CropSampler, pretrain
from medhub.learn.trainer import TrainingConfig
from medhub.synth.brain import make_brain, write_session
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def fomo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("fomo") / "pretrain"
    for n in range(4):
        write_session(root, f"{n:03d}", "1", make_brain(100 + n, resolution_mm=2.0, sequences=("t1", "flair")))
    return root


def test_mae_pretraining_lowers_its_loss_and_writes_a_checkpoint(fomo_root, tmp_path):
    from safetensors.torch import load_file

    from medhub.learn.objectives import PretrainingNet
    from medhub.learn.unet3d import preset

    config = TrainingConfig(steps=40, lr=3e-3, warmup_steps=5, checkpoint_every=20, seed=0)
    result = pretrain(fomo_root, tmp_path / "mae", objective="mae", arch="tiny", crop=32, batch_size=2,
                      config=config, cache=tmp_path / "cache", progress=False)
    assert len(result["history"]) == 40 and all(np.isfinite(r["loss"]) for r in result["history"])
    # the loss of single training batches is noisy (crops differ); on fixed probe batches it must fall
    sessions = cache_sessions(find_sessions(fomo_root), tmp_path / "cache", progress=False)
    probes = [CropSampler(sessions, crop=32, batch_size=2, seed=99)(10_000 + i) for i in range(6)]

    def probe_loss(net: PretrainingNet) -> float:
        with torch.no_grad():
            return float(np.mean([net.mae_loss(b["view_a"], b["mask"]).item() for b in probes]))

    torch.manual_seed(0)
    initial = PretrainingNet(preset("tiny", in_channels=1, out_channels=1))
    before = probe_loss(initial)
    initial.load_state_dict(load_file(str(tmp_path / "mae" / "checkpoint.safetensors")))
    assert probe_loss(initial) < 0.8 * before
    sidecar = json.loads((tmp_path / "mae" / "checkpoint.json").read_text())
    assert sidecar["objective"] == "mae" and sidecar["network"]["base_channels"] == 8 and sidecar["step"] == 40
    weights = load_file(str(tmp_path / "mae" / "checkpoint.safetensors"))
    assert any(k.startswith("encoder.") for k in weights) and any(k.startswith("decoder.") for k in weights)


@pytest.mark.parametrize("objective, cross", [("contrastive", False), ("hybrid", True)])
def test_contrastive_and_hybrid_run_on_the_same_backbone(fomo_root, tmp_path, objective, cross):
    config = TrainingConfig(steps=6, lr=1e-3, warmup_steps=2, checkpoint_every=6)
    result = pretrain(fomo_root, tmp_path / objective, objective=objective, crop=16, batch_size=3,
                      config=config, cross_sequence=cross, cache=tmp_path / "cache", progress=False)
    assert {"loss", "contrastive"} <= set(result["history"][-1])
    assert all(np.isfinite(row["loss"]) for row in result["history"])


def test_the_sampler_is_a_function_of_the_step(fomo_root, tmp_path):
    sessions = cache_sessions(find_sessions(fomo_root), tmp_path / "cache", progress=False)
    sampler = CropSampler(sessions, crop=16, batch_size=2, objective="hybrid", cross_sequence=True, seed=5)
    a, b, again = sampler(3), sampler(4), sampler(3)
    assert all(torch.equal(a[k], again[k]) for k in a) and not torch.equal(a["view_a"], b["view_a"])
    assert a["view_a"].shape == (2, 1, 16, 16, 16) and a["mask"].shape == (16, 16, 16)


def test_the_cli_pretrains_resumes_and_refuses_bad_options(fomo_root, tmp_path):
    out = tmp_path / "cli"
    common = ["pretrain", "--modality", "mri", "--data", str(fomo_root), "--output", str(out), "--crop", "16",
              "--objective", "mae", "--checkpoint-every", "4"]
    first = run_cli(*common, "--steps", "4")
    assert first.returncode == 0, first.stderr
    assert "pretrained tiny (mae) on 4 sessions for 4 steps" in first.stdout
    resumed = run_cli(*common, "--steps", "6", "--resume")
    assert resumed.returncode == 0 and "for 6 steps" in resumed.stdout
    bad = run_cli("pretrain", "--data", str(fomo_root), "--output", str(tmp_path / "bad"), "--crop", "20")
    assert bad.returncode == 2 and bad.stderr.startswith("error: crop 20 must be a multiple of 8")
