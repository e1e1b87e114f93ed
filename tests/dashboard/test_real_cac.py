"""The issue's acceptance on real data: the dashboard serves a `cac` batch, its release and a compare folder.

The batch runs `cac` on the two real LIDC chest CTs (NRRD), on its own reference series (LIDC 0987 as DICOM, so
there is a SEG) and on a real abdominal CT, which it refuses ("heart not found"): a failure to count.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from medhub.dashboard.app import create_app
from tests.conftest import REPO, run_cli


@pytest.fixture(scope="module")
def cac_folders(shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("cac-dashboard")
    cohort = root / "cohort"
    cohort.mkdir()
    lidc = shared_data / "lidc_chest_ct"
    for case in ("0187", "0987"):
        (cohort / f"{case}_ct_3mm.nrrd").symlink_to(lidc / f"{case}_ct_3mm.nrrd")
    (cohort / "0987-dicom").symlink_to(REPO / "src" / "medhub" / "models" / "cac" / "reference" / "input",
                                       target_is_directory=True)
    (cohort / "abdomen.nii.gz").symlink_to(shared_data / "ct_siemens_example" / "ct_3mm.nii.gz")
    batch = run_cli("batch", "cac", "--input", str(cohort), "--output", str(root / "batch"), "--workers", "2")
    assert batch.returncode == 1, batch.stderr  # one case is refused
    release = run_cli("release", str(root / "batch"), "--to", str(root / "release"))
    assert release.returncode == 0, release.stderr
    data = root / "data"
    data.mkdir()
    for case in ("0187", "0987"):
        (data / f"{case}_ct_3mm.nrrd").symlink_to(lidc / f"{case}_ct_3mm.nrrd")
    (root / "deepcac.yaml").write_text(f"""name: deepcac
files: {lidc}/*_labels_3mm.nrrd
labels:
  1: {{name: Heart, type: {{value: "80891009", scheme: SCT, meaning: Heart}}}}
""")
    compare = run_cli("compare", "--source", "cac", "--reference", str(root / "deepcac.yaml"), "--input", str(data),
                      "--output", str(root / "compare"), "--case-pattern", r"^(\d+)_")
    assert compare.returncode == 0, compare.stderr
    return root


def test_the_dashboard_serves_a_cac_batch_its_release_and_a_compare_folder(cac_folders):
    batch = TestClient(create_app(cac_folders / "batch"))
    overview = batch.get("/api/overview").json()
    assert overview["kind"] == "batch" and overview["statuses"] == {"ok": 3, "failed": 1}
    assert overview["failures_by_reason"] == {"heart-not-found": 1}
    assert sum(overview["risk_categories"].values()) == 3
    rows = batch.get("/api/cases", params={"sort": "agatston", "desc": True}).json()["rows"]
    assert rows[0]["agatston"] > 0 and rows[0]["risk_category"] != "0"
    dicom_case = next(r for r in rows if r["case_id"] == "0987-dicom")
    assert {d["name"] for d in dicom_case["downloads"]} >= {"seg.dcm", "sr.dcm"}
    meta = batch.get("/api/cases/0987-dicom/image").json()
    assert meta["has_image"] and [s["name"] for s in meta["segments"]["prediction"]] == [
        "Heart", "Coronary artery calcium"]
    k = meta["labelled_slices"][len(meta["labelled_slices"]) // 2]
    assert batch.get(f"/api/cases/0987-dicom/slice/{k}.png").headers["content-type"] == "image/png"

    release = TestClient(create_app(cac_folders / "release"))
    assert release.get("/api/overview").json()["total"] == 4
    assert release.get("/api/cases/0987-dicom/image").json()["slices"] > 0

    compare = TestClient(create_app(cac_folders / "compare"))
    summary = compare.get("/api/compare").json()["summary"]
    heart = [r for r in summary if r["segment_name"] == "Heart" and r["metric"] == "dice"]
    assert heart and heart[0]["mean"] >= 0.85
    assert compare.get("/api/cases/0187_ct_3mm/image").json()["sources"] == ["cac", "deepcac"]
