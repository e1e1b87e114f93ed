"""`medhub finetune`: one pretrained checkpoint serves classification, regression and segmentation."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from medhub.brain.cache import cache_sessions
from medhub.brain.finetuning import (
    TASKS,
    FinetuneConfig,
    TaskNet,
    evaluate,
    finetune,
    load_finetuned,
    select_shots,
)
from medhub.brain.layout import find_sessions
from medhub.brain.pretraining import pretrain
from medhub.hub.card import load_card, sha256_file
from medhub.learn.checkpoints import load_pretrained
from medhub.learn.trainer import TrainingConfig
from medhub.learn.unet3d import preset
from medhub.synth.brain import make_brain, write_session, write_task_dataset
from tests.conftest import run_cli

QUICK = TrainingConfig(steps=6, lr=1e-3, warmup_steps=2, checkpoint_every=6)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    for n in range(3):
        write_session(root / "data", f"{n}", "1", make_brain(200 + n, resolution_mm=2.0, sequences=("t1",)))
    pretrain(root / "data", root / "out", objective="mae", crop=16, config=QUICK, progress=False)
    return root / "out" / "checkpoint.safetensors"


def _task_data(root, task: str, n: int):
    return write_task_dataset(root, task, TASKS[task].sequences, n, first_seed=300, resolution_mm=2.0)


def held_out_of(run, data, task):
    """The sessions a finetuning run did not train on."""
    trained = set(json.loads((run / "finetuned.json").read_text())["train_sessions"])
    sessions = cache_sessions(find_sessions(data), run / "cache", sequences=TASKS[task].sequences, progress=False)
    return [s for s in sessions if s.key not in trained]


def test_the_pretrained_encoder_is_loaded_and_its_first_convolution_inflated(checkpoint):
    net = TaskNet(preset("tiny", in_channels=3, out_channels=2), TASKS["infarct"])
    load_pretrained(net, checkpoint)
    from safetensors.torch import load_file

    weights = load_file(str(checkpoint))
    first = net.encoder.blocks[0][0].weight
    assert torch.allclose(first.sum(dim=1, keepdim=True), weights["encoder.blocks.0.0.weight"])
    assert torch.equal(net.encoder.blocks[1][0].weight, weights["encoder.blocks.1.0.weight"])


@pytest.mark.parametrize("task, metric", [("infarct", "auc"), ("brain-age", "mae"), ("meningioma", "dice_mean")])
def test_finetuning_each_task_kind_from_one_checkpoint(checkpoint, tmp_path, task, metric):
    data = _task_data(tmp_path / "data", task, 4)
    config = FinetuneConfig(task=task, shots=3, seed=1, crop=32)
    result = finetune(checkpoint, data, tmp_path / "out", config, training=QUICK, progress=False)
    summary = result["evaluation"]["summary"]
    assert summary["n"] == 1 and metric in summary
    assert result["pretrained"] == str(checkpoint) and result["pretraining"]["objective"] == "mae"
    assert json.loads((tmp_path / "out" / "finetuned.json").read_text())["steps"] == 6
    assert np.isfinite(result["final_loss"])
    net, settings = load_finetuned(tmp_path / "out")
    assert settings == config and net.task == TASKS[task]
    again = evaluate(net, held_out_of(tmp_path / "out", data, task), settings)["summary"]
    assert again == summary  # the saved network is the one that was evaluated


def test_from_scratch_is_the_same_network_without_pretraining(tmp_path):
    data = _task_data(tmp_path / "data", "infarct", 4)
    config = FinetuneConfig(task="infarct", shots=2, seed=0, from_scratch=True)
    result = finetune(None, data, tmp_path / "out", config, arch_config=preset("tiny"), training=QUICK,
                      progress=False)
    assert result["pretrained"] is None and result["evaluation"]["summary"]["n"] == 2


def test_shots_are_seeded_and_balanced_between_classes(tmp_path):
    from medhub.brain.cache import CachedSession

    sessions = [CachedSession(f"s{i}", tmp_path, ("t1",), str(i % 2), False) for i in range(10)]
    train, rest = select_shots(sessions, TASKS["infarct"], 4, seed=3)
    assert sorted(s.label for s in train) == ["0", "0", "1", "1"] and len(rest) == 6
    assert select_shots(sessions, TASKS["infarct"], 4, seed=3)[0] == train
    assert select_shots(sessions, TASKS["infarct"], 4, seed=4)[0] != train


def test_the_cli_refuses_a_missing_checkpoint_in_one_line(tmp_path):
    proc = run_cli("finetune", "--data", str(tmp_path), "--task", "infarct", "--output", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: give --checkpoint, or --from-scratch for the supervised baseline"


def test_a_checkpoint_becomes_a_hub_model_in_one_command_and_runs(checkpoint, tmp_path):
    """pretrain -> finetune -> `medhub export-model` -> `medhub run FOLDER`: the whole path a user takes."""
    data = _task_data(tmp_path / "data", "meningioma", 3)
    finetune(checkpoint, data, tmp_path / "finetuned", FinetuneConfig(task="meningioma", shots=2, crop=16),
             training=QUICK, progress=False)

    proc = run_cli("export-model", str(tmp_path / "finetuned"), "--id", "my-mass", "--output", str(tmp_path / "m"))

    assert proc.returncode == 0, proc.stderr
    card = load_card(tmp_path / "m" / "card.yaml")
    assert card.id == "my-mass" and card.task == "segmentation"
    assert [s.name for s in card.inputs.sequences] == list(TASKS["meningioma"].sequences)
    assert card.weights.sha256 == sha256_file(tmp_path / "m" / "weights" / "checkpoint.safetensors")
    assert "mae pretraining checkpoint" in card.description and "sub_000" in card.training_data
    session = tmp_path / "data" / "preprocessed" / "sub_002" / "ses_1"
    proc = run_cli("run", str(tmp_path / "m"), "-i", str(session), "-o", str(tmp_path / "out"),
                   "--outputs", "nifti,json")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    [result_file] = (tmp_path / "out").glob("*/results.json")
    record = json.loads(result_file.read_text())
    assert record["model"]["id"] == "my-mass" and "mass_volume_ml" in record["case"]["values"]
    labels = nib.load(result_file.parent / "labels.nii.gz")
    assert labels.shape == nib.load(session / "flair.nii.gz").shape

    (tmp_path / "m" / "weights" / "checkpoint.safetensors").write_bytes(b"tampered")
    proc = run_cli("run", str(tmp_path / "m"), "-i", str(session), "-o", str(tmp_path / "out2"))
    assert proc.returncode != 0 and "sha256" in proc.stderr and "Traceback" not in proc.stderr
