"""The brain models on the hub: brain-tumor, brain-infarct and brain-age, run as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medhub.hub.registry import get_card, get_model
from medhub.hub.runner import run
from medhub.io.nifti import read_volume
from medhub.metrics.segmentation import dice
from medhub.synth.brain import make_brain, write_dicom_session, write_session
from medhub.synth.dicom_series import write_series
from tests.conftest import run_cli
from tests.io.dicom_sources import dciodvfy_errors

BRAIN_MODELS = ("brain-tumor", "brain-infarct", "brain-age")


@pytest.mark.parametrize("model_id", BRAIN_MODELS)
def test_each_card_states_its_training_data_and_ships_checked_weights(model_id):
    card = get_card(model_id)
    assert card.needs_weights and card.weights is not None
    assert card.weights.trained_on and card.training_data
    assert ("BraTS" in card.training_data) if model_id == "brain-tumor" else ("GENERATED" in card.training_data)
    assert [w.file for w in card.extra_weights] == ["weights/checkpoint.json"]
    assert card.inputs.modality == "MR" and card.inputs.sequences
    assert all(s.series_description for s in card.inputs.sequences)


@pytest.mark.parametrize(("description", "sequence"), [
    ("AX T2 FLAIR", "flair"), ("Sag 3D FLAIR fs", "flair"), ("AX T1 MPRAGE POST GD", "t1c"), ("T1+C axial", "t1c"),
    ("t1_mprage_sag", "t1"), ("AX T2 TSE", "t2"), ("AX DWI b1000 TRACE", "dwi_b1000"), ("DWI_ADC", "adc"),
    ("ep2d_diff_3scan_trace_TRACEW", "dwi_b1000"), ("AX T2* GRE", "t2s"), ("SWI_Images", "t2s"),
])
def test_series_description_rules_pick_the_intended_sequence_only(description, sequence):
    from medhub.brain.hub import SERIES_RULES
    from medhub.hub.card import SequenceSpec

    matched = [name for name, rules in SERIES_RULES.items()
               if SequenceSpec(name=name, series_description=rules).matches(description)]
    assert matched == [sequence]


@pytest.fixture(scope="module")
def tumour_session(tmp_path_factory):
    """A generated 2 mm session with an extra-axial mass, as NIfTI (flair, t1c) in a session folder."""
    root = tmp_path_factory.mktemp("tumour")
    brain = make_brain(41, resolution_mm=2.0, sequences=("flair", "t1c", "t1"), mass=True, infarct=False)
    folder = write_session(root / "nifti", "41", "1", brain)
    return brain, folder


def test_brain_tumor_on_a_nifti_session_writes_a_mask_on_the_input_grid_and_the_same_twice(tumour_session, tmp_path):
    _, folder = tumour_session
    first = run("brain-tumor", folder, tmp_path / "a", outputs=("nifti", "json"))
    second = run("brain-tumor", folder, tmp_path / "b", outputs=("nifti", "json"))

    [result] = first.results
    assert result.ok, result.message
    assert set(result.input["inputs"]) == {"flair", "t1c"}  # the t1 in the folder is not an input
    labels = nib.load(result.outputs["nifti"])
    flair = nib.load(folder / "flair.nii.gz")
    assert labels.shape == flair.shape
    assert np.allclose(labels.affine, flair.affine, atol=1e-4)
    mask = np.asarray(labels.dataobj)
    voxel_ml = abs(np.linalg.det(flair.affine[:3, :3])) / 1000
    assert result.values["whole_tumor_volume_ml"] == pytest.approx(np.count_nonzero(mask) * voxel_ml, abs=0.01)
    assert second.results[0].values == result.values
    assert np.array_equal(np.asarray(nib.load(second.results[0].outputs["nifti"]).dataobj), mask)
    record = json.loads(Path(result.outputs["json"]).read_text())
    assert record["model"]["weights_sha256"] == get_card("brain-tumor").weights.sha256


def test_a_session_without_t1c_is_refused_in_one_line_naming_it(tumour_session, tmp_path):
    _, folder = tumour_session
    lone = tmp_path / "only-flair" / "ses_1"
    lone.mkdir(parents=True)
    (lone / "flair.nii.gz").write_bytes((folder / "flair.nii.gz").read_bytes())

    proc = run_cli("run", "brain-tumor", "-i", str(lone.parent), "-o", str(tmp_path / "out"))

    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    [line] = [line for line in (proc.stderr + proc.stdout).splitlines() if "missing sequence" in line]
    assert "t1c" in line and "brain-tumor" in line


@pytest.fixture(scope="module")
def brats_dicom_study(shared_data, tmp_path_factory):
    """A real BraTS case (FLAIR, T1c) written as a DICOM MR study, with its expert whole-tumour mask."""
    case = shared_data / "brain_mri_brats" / "brats_2013_pat0002_1"
    root = tmp_path_factory.mktemp("brats-dicom")
    study = "1.2.826.0.1.3680043.8.498.4242"
    for number, (file, description) in enumerate([("Flair_subtrMeanDivStd.nii.gz", "AX T2 FLAIR"),
                                                  ("T1c_subtrMeanDivStd.nii.gz", "AX T1 MPRAGE POST GD")], start=1):
        volume = read_volume(case / file)
        # the files hold z-scores; a scanner stores unsigned integers
        stored = np.clip(np.round(volume.array * 200 + 1000), 0, 4095) * (volume.array != volume.array[0, 0, 0])
        write_series(stored, volume.affine, root / f"series{number}", modality="MR", study_uid=study, seed=number,
                     series_number=number, series_description=description,
                     frame_of_reference_uid=f"{study}.1")
    truth = read_volume(case / "OTMultiClass.nii.gz")
    return root, truth


def test_brain_tumor_on_a_real_dicom_mr_study_writes_a_valid_seg_on_the_flair(brats_dicom_study, tmp_path):
    study, truth = brats_dicom_study

    [result] = run("brain-tumor", study, tmp_path / "out", outputs=("seg", "sr", "json")).results

    assert result.ok, result.message
    flair = result.input["inputs"]["flair"]
    assert flair["series_description"] == "AX T2 FLAIR"
    seg = pydicom.dcmread(result.outputs["seg"])
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == flair["series_instance_uid"]
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "108369006"
    assert dciodvfy_errors(result.outputs["seg"]) == []
    assert dciodvfy_errors(result.outputs["sr"]) == []
    from medhub.io.dicom import read_dicom_volume
    from medhub.io.seg import read_seg
    from medhub.masks import resample_grid

    flair_volume = read_dicom_volume(study / "series1")
    labels, _ = read_seg(result.outputs["seg"], reference=flair_volume)
    expert = resample_grid(truth.array > 0, truth.affine, flair_volume.affine, flair_volume.shape)
    # this case is one of the three the shipped weights were trained on: a check that the real path works
    # (DICOM in, preprocessing, inverse), not a held-out score
    assert dice(labels > 0, expert > 0) > 0.7


@pytest.mark.parametrize(("model_id", "kwargs", "sequences"), [
    ("brain-infarct", {"infarct": True, "mass": False}, ("dwi_b1000", "adc", "flair")),
    ("brain-age", {"age": 60.0, "infarct": False, "mass": False}, ("t1", "t2")),
])
def test_value_models_on_a_dicom_study_write_json_and_an_sr(model_id, kwargs, sequences, tmp_path):
    brain = make_brain(77, resolution_mm=2.0, sequences=sequences, **kwargs)
    write_dicom_session(tmp_path / "study", brain, seed=77)

    [result] = run(model_id, tmp_path / "study", tmp_path / "out", outputs=("sr", "json")).results

    assert result.ok, result.message
    names = [v.name for v in get_card(model_id).outputs.values]
    assert set(result.values) == set(names)
    if model_id == "brain-infarct":
        assert 0.0 <= result.values["infarct_probability"] <= 1.0
        assert result.values["infarct"] == ("present" if result.values["infarct_probability"] >= 0.5 else "absent")
    else:
        assert 0.0 < result.values["brain_age_years"] < 130.0
    sr = pydicom.dcmread(result.outputs["sr"])
    assert sr.Modality == "SR"
    assert dciodvfy_errors(result.outputs["sr"]) == []


def test_a_one_volume_input_is_refused_not_guessed(tmp_path):
    model = get_model("brain-age")
    from medhub.errors import MedhubError
    from medhub.io.volume import Volume

    with pytest.raises(MedhubError, match="named sequences"):
        model.predict(Volume(array=np.zeros((8, 8, 8), np.float32), affine=np.eye(4)))
