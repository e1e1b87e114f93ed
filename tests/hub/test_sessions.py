"""Models of several named sequences: the runner finds them in NIfTI sessions and in DICOM studies, by the card."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medhub.hub.card import ModelCard
from medhub.hub.model import Prediction
from medhub.hub.runner import run
from medhub.io.nifti import read_volume
from medhub.synth.brain import make_brain, write_session
from medhub.synth.dicom_series import write_series
from tests.io.dicom_sources import dciodvfy_errors

CARD = {
    "id": "two-sequence-test", "name": "TwoSequenceTest", "version": "0.1.0", "title": "test model",
    "description": "Marks FLAIR-bright voxels; reports the mean DWI inside them.", "task": "segmentation",
    "inputs": {"modality": "MR", "body_part": "BRAIN", "min_slices": 8,
               "spacing_mm": {"in_plane_min": 0.5, "in_plane_max": 3.0, "slice_min": 0.5, "slice_max": 7.0},
               "sequences": ["flair", {"name": "dwi_b1000", "series_description": ["dwi.*1000", "trace"]},
                             {"name": "t2s", "required": False}]},
    "outputs": {"segments": [{"label": 1, "name": "Bright", "type": {"value": "52988006", "scheme": "SCT",
                                                                      "meaning": "Lesion"},
                              "category": {"value": "49755003", "scheme": "SCT",
                                           "meaning": "Morphologically Altered Structure"}}],
                "values": [{"name": "mean_dwi", "unit": "1", "concept": {"value": "373098007", "scheme": "SCT",
                                                                         "meaning": "Mean"}}]},
    "intended_use": "tests", "limitations": "none", "license": "Apache-2.0",
}


class TwoSequenceModel:
    card = ModelCard.model_validate(CARD)

    def __init__(self) -> None:
        self.seen: list[list[str]] = []

    def predict(self, inputs) -> Prediction:
        self.seen.append(list(inputs))
        flair, dwi = inputs["flair"], inputs["dwi_b1000"]
        assert flair.same_grid(dwi)  # the runner puts every sequence on the first one's grid
        bright = flair.array > np.percentile(flair.array, 97)
        return Prediction(labels=bright.astype(np.uint8), values={"mean_dwi": float(dwi.array[bright].mean())})


@pytest.fixture(scope="module")
def brains():
    return [make_brain(seed, resolution_mm=2.0, sequences=("flair", "dwi_b1000", "t2s", "t1")) for seed in (1, 2)]


def test_nifti_sessions_run_and_a_missing_sequence_is_refused_by_name(tmp_path, brains):
    write_session(tmp_path / "in", "01", "1", brains[0])
    lacking = make_brain(3, resolution_mm=2.0, sequences=("flair", "t1"))
    write_session(tmp_path / "in", "02", "1", lacking)
    model = TwoSequenceModel()

    report = run(model, tmp_path / "in", tmp_path / "out", outputs=["nifti", "json"])

    by_id = {r.case_id: r for r in report.results}
    assert set(by_id) == {"sub_01_ses_1", "sub_02_ses_1"}
    assert by_id["sub_01_ses_1"].ok and model.seen == [["flair", "dwi_b1000", "t2s"]]
    refused = by_id["sub_02_ses_1"]
    assert refused.reason_code == "missing-sequence"
    assert refused.message == (f"session {tmp_path / 'in' / 'sub_02' / 'ses_1'}: missing sequence dwi_b1000 "
                               "(two-sequence-test needs flair, dwi_b1000)")
    record = json.loads((tmp_path / "out" / "sub_01_ses_1" / "results.json").read_text())
    assert record["case"]["input"]["kind"] == "session"
    assert set(record["case"]["input"]["inputs"]) == {"flair", "dwi_b1000", "t2s"}


def test_a_dicom_study_maps_series_to_sequences_by_description_and_writes_a_seg(tmp_path, brains):
    brain = brains[1]
    study = "1.2.826.0.1.3680043.8.498.777"
    for number, (name, description) in enumerate([("t1", "AX T1 MPRAGE"), ("dwi_b1000", "AX DWI b1000 TRACE"),
                                                  ("flair", "AX T2 FLAIR")], start=1):
        nifti = tmp_path / f"{name}.nii.gz"  # through NIfTI: the DICOM order and LPS come from medhub's reader
        nib.save(nib.Nifti1Image(brain.sequences[name] * 1000, brain.affine), nifti)
        volume = read_volume(nifti)
        write_series(np.clip(volume.array, 0, 4000), volume.affine, tmp_path / "dicom" / f"s{number}", modality="MR",
                     study_uid=study, seed=number, series_description=description, series_number=number,
                     frame_of_reference_uid="1.2.826.0.1.3680043.8.498.778")
    model = TwoSequenceModel()

    report = run(model, tmp_path / "dicom", tmp_path / "out")

    [result] = report.results
    assert result.ok, result.message
    assert model.seen == [["flair", "dwi_b1000"]]  # the t1 series is not an input; t2s is optional
    inputs = result.input["inputs"]
    assert inputs["flair"]["series_description"] == "AX T2 FLAIR"
    assert inputs["dwi_b1000"]["series_description"] == "AX DWI b1000 TRACE"
    seg = pydicom.dcmread(result.outputs["seg"])
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == inputs["flair"]["series_instance_uid"]
    assert dciodvfy_errors(result.outputs["seg"]) == []
