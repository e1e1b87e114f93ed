"""`medhub compare`: sources on one interface, matching by concept, metrics as the metrics module computes them."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medhub.compare.comparison import run_comparison
from medhub.compare.sources import Concept, SegFolderSource, case_name, parse_source
from medhub.errors import InputError
from medhub.hub.runner import run
from medhub.io.dicom import read_dicom_volume
from medhub.io.nifti import write_volume
from medhub.io.volume import Volume
from medhub.metrics.segmentation import segmentation_metrics
from medhub.synth.chest import make_chest_phantom
from medhub.synth.dicom_series import write_series
from tests.conftest import REPO, run_cli

# The truth's labels are numbered unlike lung-ct's (1 right, 2 left): matching must go by concept.
TRUTH_YAML = """name: truth
values: values.csv
labels:
  7: {name: Left lung, type: {value: "39607008", scheme: SCT, meaning: Lung},
      modifier: {value: "7771000", scheme: SCT, meaning: Left}}
  9: {name: Right lung, type: {value: "39607008", scheme: SCT, meaning: Lung},
      modifier: {value: "24028007", scheme: SCT, meaning: Right}}
  3: {name: Heart, type: {value: "80891009", scheme: SCT, meaning: Heart}}
"""


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def chest(tmp_path_factory):
    """A chest phantom as a DICOM series (``ct/``), its true lungs as a label map (``truth/``) and lung-ct's SEG
    of it (``segs/``), plus a second phantom with no truth, so that one case is unmatched."""
    root = tmp_path_factory.mktemp("chest")
    phantom = make_chest_phantom(shape=(40, 96, 96), spacing=(6.0, 3.5, 3.5), seed=5)
    write_series(phantom.hu, phantom.affine, root / "data" / "ct", seed=11, patient_id="CHEST-1")
    other = make_chest_phantom(shape=(40, 96, 96), spacing=(6.0, 3.5, 3.5), seed=6)
    write_series(other.hu, other.affine, root / "data" / "ct-other", seed=12, patient_id="CHEST-2")
    truth = np.zeros_like(phantom.labels)
    truth[phantom.labels == 1], truth[phantom.labels == 2] = 9, 7
    volume = read_dicom_volume(root / "data" / "ct")
    (root / "truth").mkdir()
    write_volume(volume, root / "truth" / "ct.nii.gz", array=truth)
    (root / "truth" / "labels.yaml").write_text(TRUTH_YAML)
    voxel_ml = float(np.prod(volume.spacing)) / 1000
    (root / "truth" / "values.csv").write_text(
        "case,right_lung_volume_ml,left_lung_volume_ml,note\n"
        f"ct,{(phantom.labels == 1).sum() * voxel_ml},{(phantom.labels == 2).sum() * voxel_ml},not a number\n")
    run("lung-ct", root / "data" / "ct", root / "lung-run", outputs=["seg"])
    (root / "segs").mkdir()
    (root / "segs" / "lung-ct-seg.dcm").write_bytes(next((root / "lung-run").glob("*/seg.dcm")).read_bytes())
    return root, phantom, volume


def test_sources_against_a_reference_match_by_concept_and_equal_the_metrics_module(chest, tmp_path):
    root, _phantom, _volume = chest
    result = run_comparison(["lung-ct", f"seg={root / 'segs'}"], root / "data", tmp_path,
                            reference=str(root / "truth"), tolerance_mm=3.0)

    rows = _read_csv(tmp_path / "metrics.csv")
    assert {(r["source"], r["reference"]) for r in rows} == {("lung-ct", "truth"), ("seg", "truth")}
    assert {r["segment_name"] for r in rows} == {"Right lung", "Left lung"}
    assert {r["case"] for r in rows} == {"ct"}
    lung_ct = json.loads((tmp_path / "sources" / "lung-ct" / "run.json").read_text())
    assert lung_ct["cases"][0]["status"] == "ok" and len(lung_ct["cases"]) == 2
    by_seg = {(r["source"], r["segment_name"], r["metric"]): float(r["value"]) for r in rows}
    right_dice = by_seg[("lung-ct", "Right lung", "dice")]
    # the SEG of lung-ct read back on the source grid (by SOP instance) is the same mask
    for metric in ("dice", "hd95_mm", "msd_mm", "nsd", "volume_difference_ml"):
        for segment in ("Right lung", "Left lung"):
            assert by_seg[("seg", segment, metric)] == pytest.approx(by_seg[("lung-ct", segment, metric)])
    assert right_dice >= 0.95
    # the truth's heart (label 3) is unused and lung-ct has no heart: listed, not dropped silently
    assert result.unmatched["cases_without_source"]["truth"] == ["ct-other"]
    assert result.unmatched["cases_without_source"]["lung-ct"] == []
    summary = _read_csv(tmp_path / "summary.csv")
    dice_summary = next(s for s in summary if s["source"] == "lung-ct" and s["segment_name"] == "Right lung"
                        and s["metric"] == "dice")
    assert float(dice_summary["n"]) == 1 and float(dice_summary["mean"]) == pytest.approx(right_dice)
    assert (tmp_path / "report.html").read_text().count("<img") >= 6
    # scalar outputs both sides report: per case the pair and its difference; per value the agreement
    values = _read_csv(tmp_path / "values.csv")
    assert {(v["source"], v["value"]) for v in values} == {("lung-ct", "right_lung_volume_ml"),
                                                          ("lung-ct", "left_lung_volume_ml")}
    for v in values:
        assert float(v["difference"]) == pytest.approx(float(v["pred"]) - float(v["ref"]))
        assert abs(float(v["difference"])) < 0.05 * float(v["ref"])
    agreement = _read_csv(tmp_path / "values_summary.csv")
    assert {a["value"] for a in agreement} == {"right_lung_volume_ml", "left_lung_volume_ml"}
    record = json.loads((tmp_path / "compare.json").read_text())
    assert record["sources"][0]["model_id"] == "lung-ct" and record["sources"][0]["weights_sha256"] is None
    assert record["reference"]["segments"] == {"3": "SCT:80891009", "7": "SCT:39607008+SCT:7771000",
                                               "9": "SCT:39607008+SCT:24028007"}


def test_metrics_in_the_csv_are_those_of_the_metrics_module(chest, tmp_path):
    root, phantom, _volume = chest
    run_comparison(["lung-ct"], root / "data", tmp_path, reference=str(root / "truth"), report=False)
    predicted = read_dicom_volume(root / "data" / "ct")  # the grid
    from medhub.io.nifti import read_volume

    labels = read_volume(tmp_path / "sources" / "lung-ct" / "ct" / "labels.nii.gz").array
    expected = segmentation_metrics(labels == 2, phantom.labels == 2, predicted.spacing)
    rows = {r["metric"]: float(r["value"]) for r in _read_csv(tmp_path / "metrics.csv")
            if r["segment_name"] == "Left lung"}
    for metric, value in rows.items():
        assert value == pytest.approx(expected[metric])


def test_a_model_run_is_reused_when_its_version_and_weights_are_unchanged(chest, tmp_path):
    root, *_ = chest
    first = run_comparison(["lung-ct", f"seg={root / 'segs'}"], root / "data", tmp_path, report=False)
    stamp = (tmp_path / "sources" / "lung-ct" / "run.json").stat().st_mtime_ns
    second = run_comparison(["lung-ct", f"seg={root / 'segs'}"], root / "data", tmp_path, report=False)
    assert not first.sources[0].reused and second.sources[0].reused
    assert (tmp_path / "sources" / "lung-ct" / "run.json").stat().st_mtime_ns == stamp
    assert first.rows == second.rows
    # pairwise without a reference: lung-ct against its own SEG is a perfect match
    assert {r["value"] for r in first.rows if r["metric"] == "dice"} == {1.0}


def test_a_seg_is_read_by_its_geometry_when_the_grid_is_not_its_source(chest):
    root, _phantom, volume = chest
    source = SegFolderSource([root / "segs" / "lung-ct-seg.dcm"], "seg", root / "segs")
    [case] = source.cases()
    by_instance, segments = source.labels(case, volume)
    plain_grid = Volume(np.zeros(volume.shape, np.int16), volume.affine)  # same grid, no DICOM source
    by_geometry, _ = source.labels(case, plain_grid)
    assert np.array_equal(by_instance, by_geometry)
    assert [s.concept.key for s in segments] == ["SCT:39607008+SCT:24028007", "SCT:39607008+SCT:7771000"]
    assert segments[0].color is not None


def test_concepts_case_names_and_source_errors(tmp_path):
    lung = Concept.from_codes(("39607008", "SCT", "Lung"), ("24028007", "SCT", "Right"))
    assert (lung.key, lung.name) == ("SCT:39607008+SCT:24028007", "Right lung")
    assert case_name("0187_labels_3mm.nrrd", r"^(\d+)_") == "0187"
    assert case_name("/x/0187_ct_3mm.nii.gz", None) == "0187_ct_3mm"
    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / "a.nii.gz").write_bytes(b"")
    with pytest.raises(InputError, match="mapping file"):
        parse_source(str(tmp_path / "maps"), data=tmp_path, output=tmp_path)
    (tmp_path / "maps" / "labels.yaml").write_text("labels: {1: {type: {value: x}}}")
    with pytest.raises(InputError, match="invalid label mapping"):
        parse_source(str(tmp_path / "maps"), data=tmp_path, output=tmp_path)
    proc = run_cli("compare", "--source", "no-such-model", "--source", "lung-ct", "-i", str(tmp_path), "-o",
                   str(tmp_path / "out"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: no-such-model: not a model id, a folder of predictions or a label "
                                   "mapping file")


# ----------------------------------------------------------------------------------------------- real data


def test_cac_heart_against_deepcac_on_the_two_real_lidc_chest_cts(shared_data, tmp_path):
    lidc = shared_data / "lidc_chest_ct"
    (tmp_path / "in").mkdir()
    for case in ("0187", "0987"):
        (tmp_path / "in" / f"{case}_ct_3mm.nrrd").symlink_to(lidc / f"{case}_ct_3mm.nrrd")
    mapping = tmp_path / "deepcac.yaml"
    mapping.write_text(f"""name: deepcac
files: {lidc}/*_labels_3mm.nrrd
labels:
  1: {{name: Heart, type: {{value: "80891009", scheme: SCT, meaning: Heart}}}}
  3: {{name: Coronary calcium, type: {{value: "29483008", scheme: SCT, meaning: Calcified atheromatous plaque}}}}
""")
    proc = run_cli("compare", "--source", "cac", "--reference", str(mapping), "--input", str(tmp_path / "in"),
                   "--output", str(tmp_path / "out"), "--case-pattern", r"^(\d+)_")
    assert proc.returncode == 0, proc.stderr
    rows = _read_csv(tmp_path / "out" / "metrics.csv")
    heart = {r["case"]: float(r["value"]) for r in rows if r["segment_name"] == "Heart" and r["metric"] == "dice"}
    assert set(heart) == {"0187_ct_3mm", "0987_ct_3mm"}
    assert min(heart.values()) >= 0.85  # the cac card's heart criterion
    # 0187 has no calcium in either: both empty, Dice 1 by convention. 0987 is in-sample for cac 0.8.0 (its real
    # plaques trained the candidate classifier), so only "found, and well" is a fair check, not a held-out figure.
    calcium = {r["case"]: float(r["value"]) for r in rows if r["segment_name"] == "Coronary calcium"
               and r["metric"] == "dice"}
    assert calcium["0187_ct_3mm"] == 1.0 and calcium["0987_ct_3mm"] >= 0.5
    assert (tmp_path / "out" / "summary.csv").is_file() and (tmp_path / "out" / "report.html").is_file()


def test_lung_ct_against_an_independent_simpleitk_segmentation_on_real_ct(shared_data, tmp_path):
    lidc = shared_data / "lidc_chest_ct"
    (tmp_path / "in").mkdir()
    for case in ("0187", "0987"):
        (tmp_path / "in" / f"{case}_ct_3mm.nrrd").symlink_to(lidc / f"{case}_ct_3mm.nrrd")
    subprocess.run([sys.executable, str(REPO / "scripts" / "simpleitk_lungs.py"), *sorted((tmp_path / "in").iterdir()),
                    "--out", str(tmp_path / "other")], check=True, capture_output=True)
    proc = run_cli("compare", "--source", "lung-ct", "--source", str(tmp_path / "other"), "--input",
                   str(tmp_path / "in"), "--output", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    rows = _read_csv(tmp_path / "out" / "metrics.csv")
    dice = [float(r["value"]) for r in rows if r["metric"] == "dice"]
    assert len(dice) == 4 and min(dice) > 0.9  # two methods, two lungs, two real scans
    assert (tmp_path / "out" / "report.html").is_file()
