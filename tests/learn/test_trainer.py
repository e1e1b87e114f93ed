"""The shared training loop: schedule, checkpoints (safetensors + JSON), exact resume, CSV log."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from torch import nn

from medhub.learn.trainer import Trainer, TrainingConfig, learning_rate


def test_warmup_then_cosine_to_the_minimum():
    config = TrainingConfig(steps=100, lr=1e-3, min_lr=1e-5, warmup_steps=10)
    assert learning_rate(0, config) == pytest.approx(1e-4)
    assert learning_rate(9, config) == pytest.approx(1e-3)
    assert learning_rate(55, config) == pytest.approx((1e-3 + 1e-5) / 2)
    assert learning_rate(100, config) == pytest.approx(1e-5)
    rates = [learning_rate(s, config) for s in range(10, 100)]
    assert rates == sorted(rates, reverse=True)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.1), nn.ReLU(), nn.Linear(16, 1))


def _batch(step: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(step)
    x = torch.randn(8, 4, generator=generator)
    return {"x": x, "y": x.sum(dim=1, keepdim=True)}


def _step(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    mse = ((model(batch["x"]) - batch["y"]) ** 2).mean()
    return {"loss": mse, "mse": mse}


def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    config = TrainingConfig(steps=12, lr=1e-2, warmup_steps=2, checkpoint_every=5, seed=3)
    whole = Trainer(_model(), _step, tmp_path / "whole", config=config, progress=False)
    whole.fit(_batch)

    def interrupted(step: int):
        if step == 7:
            raise KeyboardInterrupt  # the machine goes away after the step-5 checkpoint and two more steps
        return _batch(step)

    first = Trainer(_model(), _step, tmp_path / "split", config=config, progress=False)
    with pytest.raises(KeyboardInterrupt):
        first.fit(interrupted)
    second = Trainer(_model(), _step, tmp_path / "split", config=config, progress=False)
    history = second.fit(_batch, resume=True)

    assert [row["step"] for row in history] == list(range(1, 13))  # steps 6 and 7 were redone from the checkpoint
    for a, b in zip(whole.model.state_dict().values(), second.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    sidecar = json.loads((tmp_path / "split" / "checkpoint.json").read_text())
    assert sidecar["step"] == 12 and sidecar["training"]["lr"] == 1e-2
    assert (tmp_path / "split" / "checkpoint.safetensors").is_file()
    for run in ("whole", "split"):
        with open(tmp_path / run / "log.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert [int(r["step"]) for r in rows] == list(range(1, 13)), run
    assert {"lr", "loss", "mse", "seconds"} <= set(rows[0])
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
