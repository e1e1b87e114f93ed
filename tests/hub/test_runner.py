"""The runner and the CLI on good and bad input: one-line errors, no partial output, provenance."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medhub.errors import InputError, OutputError
from medhub.hub.cases import discover_cases
from medhub.hub.runner import check_case, run
from medhub.synth.dicom_series import write_series
from tests.conftest import REPO, run_cli
from tests.io.dicom_sources import dciodvfy_errors

sys.path.insert(0, str(REPO / "tests" / "data" / "plugin"))
from medhub_bone_threshold import BoneThreshold

# (slice, row, column) -> LPS: axial slices 2 mm apart, 0.8 mm pixels.
AFFINE = np.array([[0, 0, 0.8, -12.0], [0, 0.8, 0, -12.0], [2.0, 0, 0, -100.0], [0, 0, 0, 1]])


def _ct(shape=(12, 32, 32)) -> np.ndarray:
    """A small CT-like volume: air, a water-dense body and a dense rod."""
    _, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]]
    radius2 = (y - shape[1] / 2) ** 2 + (x - shape[2] / 2) ** 2
    array = np.full(shape, -1000, dtype=np.int16)
    array[radius2 < (shape[1] / 2.5) ** 2] = 40
    array[radius2 < 16] = 700
    return array


def _series(folder: Path, **kwargs) -> list[Path]:
    return write_series(_ct(), AFFINE, folder, **kwargs)


@pytest.fixture(scope="module")
def bone() -> BoneThreshold:
    return BoneThreshold()


def _no_partial(output: Path) -> None:
    leftovers = [p.name for p in output.rglob("*") if ".partial" in p.name or p.name.endswith(".part")]
    assert leftovers == []


def test_run_writes_outputs_and_provenance(tmp_path, bone):
    _series(tmp_path / "in")
    report = run(bone, tmp_path / "in", tmp_path / "out")
    assert [r.status for r in report.results] == ["ok"]
    result = report.results[0]
    assert set(result.outputs) == {"seg", "sr", "nifti", "json", "png"}
    assert result.values["bone_volume_ml"] > 0
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["model"]["id"] == "bone-threshold" and record["model"]["version"] == "0.1.0"
    assert "weights_sha256" in record["model"]
    assert {"pydicom", "highdicom", "numpy"} <= set(record["packages"])
    case = record["cases"][0]
    assert case["input"]["series_instance_uid"] == report.results[0].input["series_instance_uid"]
    assert {"load", "predict", "write"} <= set(case["timings_s"])
    assert case["peak_rss_mib"] > 0 and record["host"]["cpu_count"] >= 1
    seg = pydicom.dcmread(result.outputs["seg"])
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == case["input"]["series_instance_uid"]
    _no_partial(tmp_path / "out")


def test_same_input_gives_byte_identical_seg_and_sr(tmp_path, bone):
    _series(tmp_path / "in")
    first = run(bone, tmp_path / "in", tmp_path / "a").results[0].outputs
    second = run(bone, tmp_path / "in", tmp_path / "b").results[0].outputs
    for kind in ("seg", "sr", "nifti"):
        assert Path(first[kind]).read_bytes() == Path(second[kind]).read_bytes(), kind


def test_mixed_series_are_handled_one_by_one(tmp_path, bone):
    _series(tmp_path / "in", seed=1, series_number=1)
    write_series(_ct() + 1000, AFFINE, tmp_path / "in", modality="MR", seed=2, series_number=2)
    report = run(bone, tmp_path / "in", tmp_path / "out")
    by_status = sorted((r.status, r.reason_code) for r in report.results)
    assert by_status == [("failed", "wrong-modality"), ("ok", None)]
    failed = report.failed[0]
    assert failed.message.startswith("series ") and "modality MR, bone-threshold needs CT" in failed.message
    assert not (tmp_path / "out" / failed.case_id).exists()


def test_gap_is_reported_and_card_decides(tmp_path, bone):
    files = _series(tmp_path / "in")
    files[5].unlink()
    case = discover_cases(tmp_path / "in").cases[0]
    assert case.series.geometry.has_gap
    check_case(bone.card, case)  # on_gap: continue (default)
    refusing = bone.card.model_copy(update={"inputs": bone.card.inputs.model_copy(update={"on_gap": "refuse"})})
    with pytest.raises(InputError) as e:
        check_case(refusing, case)
    assert e.value.code == "gap" and case.series.uid in e.value.message
    report = run(bone, tmp_path / "in", tmp_path / "out")
    assert report.results[0].ok
    assert any("gap" in line.lower() for line in report.results[0].input["geometry"])


def test_unwritable_output_is_refused_before_work(tmp_path, bone):
    _series(tmp_path / "in")
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    with pytest.raises(OutputError) as e:
        run(bone, tmp_path / "in", blocker / "out")
    assert str(blocker / "out") in e.value.message


def test_volume_file_input_with_absurd_spacing_is_refused(tmp_path, bone):
    from medhub.io.nifti import write_volume
    from medhub.io.volume import Volume

    write_volume(Volume(_ct(), np.diag([40.0, 0.8, 0.8, 1.0])), tmp_path / "thick.nii.gz")
    report = run(bone, tmp_path / "thick.nii.gz", tmp_path / "out")
    assert report.results[0].reason_code == "bad-spacing"
    assert "slice spacing 40 mm" in report.results[0].message


# --- the CLI: exit codes, one-line errors, no traceback -------------------------------------------------


def _one_line_error(proc, *needles: str) -> None:
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert errors, proc.stderr
    assert all(n in errors[0] for n in needles), errors[0]


def test_cli_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = run_cli("run", "lung-ct", "--input", str(tmp_path / "empty"), "--output", str(tmp_path / "out"))
    _one_line_error(proc, str(tmp_path / "empty"), "empty folder")
    assert proc.returncode == 2


def test_cli_only_non_dicom_files(tmp_path):
    folder = tmp_path / "junk"
    folder.mkdir()
    for name in ("notes.txt", "image.png", "README"):
        (folder / name).write_bytes(b"hello, not DICOM\n" * 20)
    proc = run_cli("run", "lung-ct", "--input", str(folder), "--output", str(tmp_path / "out"))
    _one_line_error(proc, str(folder), "3 non-DICOM files skipped")


def test_cli_truncated_file(tmp_path):
    files = _series(tmp_path / "in")
    data = files[3].read_bytes()
    files[3].write_bytes(data[: len(data) // 2])
    proc = run_cli("run", "lung-ct", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"))
    _one_line_error(proc, files[3].name)
    assert "truncated" in proc.stderr.lower() or "ends after" in proc.stderr
    assert not any(p.is_dir() for p in (tmp_path / "out").iterdir())
    _no_partial(tmp_path / "out")


def test_cli_mr_to_ct_model(tmp_path):
    write_series(_ct() + 1000, AFFINE, tmp_path / "mr", modality="MR")
    proc = run_cli("run", "lung-ct", "--input", str(tmp_path / "mr"), "--output", str(tmp_path / "out"))
    _one_line_error(proc, "series ", "modality MR, lung-ct needs CT")


def test_cli_unwritable_output(tmp_path):
    _series(tmp_path / "in")
    (tmp_path / "blocker").write_text("x")
    proc = run_cli("run", "lung-ct", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "blocker" / "o"))
    _one_line_error(proc, str(tmp_path / "blocker" / "o"), "not writable")
    assert proc.returncode == 2


def test_cli_debug_shows_traceback(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = run_cli("--debug", "run", "lung-ct", "--input", str(tmp_path / "empty"), "--output",
                   str(tmp_path / "out"))
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_cli_unknown_model_lists_known(tmp_path):
    proc = run_cli("run", "no-such-model", "--input", str(tmp_path), "--output", str(tmp_path / "o"))
    _one_line_error(proc, "no-such-model", "lung-ct")


def test_cli_models_info_schema_version():
    assert "lung-ct" in run_cli("models").stdout
    info = run_cli("info", "lung-ct")
    assert info.returncode == 0 and "39607008" in info.stdout
    schema = json.loads(run_cli("card-schema").stdout)
    assert schema["title"] == "ModelCard"
    assert run_cli("--version").stdout.startswith("medhub ")


def test_cli_transfer_syntax_without_decoder(tmp_path):
    """A process in which no JPEG 2000 decoder is available (pydicom reports every decoder as missing)."""
    from pydicom.uid import JPEG2000Lossless

    _series(tmp_path / "in", transfer_syntax=JPEG2000Lossless)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "from pydicom.pixels.decoders.base import Decoder\n"
        "Decoder.is_available = property(lambda self: False)\n"
    )
    proc = run_cli("run", "lung-ct", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                   env={"PYTHONPATH": str(site)})
    _one_line_error(proc, "JPEG 2000", "pip install", "pylibjpeg-openjpeg")


def test_damaged_real_series_end_to_end(shared_data, tmp_path):
    """The real Siemens series with empty Study/Series/SOP UIDs: surrogates recorded, SEG/SR valid."""
    report = run("lung-ct", shared_data / "ct_siemens_example" / "dicom", tmp_path / "out")
    result = report.results[0]
    assert result.ok, result.message
    surrogates = result.input["surrogate_uids"]
    assert {"StudyInstanceUID", "SeriesInstanceUID"} <= set(surrogates)
    assert sum("surrogate" in w for w in report.discovery_warnings) == 1
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["cases"][0]["input"]["surrogate_uids"] == surrogates
    seg = pydicom.dcmread(result.outputs["seg"])
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == surrogates["SeriesInstanceUID"]
    assert seg.StudyInstanceUID == surrogates["StudyInstanceUID"]
    for kind in ("seg", "sr"):
        assert dciodvfy_errors(Path(result.outputs[kind])) == [], kind


def test_every_weights_file_of_a_model_is_checked_before_a_run(tmp_path):
    """The card's ``extra_weights`` (cac's lesion and restoration networks) are checked like its main weights."""
    import shutil

    from medhub.errors import ModelError
    from medhub.hub.runner import check_model_runnable, provenance_record
    from medhub.models.cac.model import CAC

    shutil.copy(CAC.folder / "card.yaml", tmp_path / "card.yaml")
    shutil.copytree(CAC.folder / "weights", tmp_path / "weights")
    copy = type("CopiedCAC", (CAC,), {"folder": tmp_path})()
    assert check_model_runnable(copy) == copy.card.weights.sha256
    extras = provenance_record(copy, copy.card.weights.sha256)["model"]["extra_weights"]
    assert [e["sha256"] for e in extras] == [e.sha256 for e in copy.card.extra_weights]
    assert all(e["trained_on"] for e in extras)

    restoration = tmp_path / "weights" / "cac_restoration.pt"
    restoration.write_bytes(restoration.read_bytes() + b"changed")
    with pytest.raises(ModelError, match=r"cac_restoration\.pt has sha256") as changed:
        check_model_runnable(copy)
    assert changed.value.code == "weights-mismatch"
    restoration.unlink()
    with pytest.raises(ModelError, match=r"cac_restoration\.pt is missing"):
        check_model_runnable(copy)
