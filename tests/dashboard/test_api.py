"""The dashboard's API over every kind of results folder: tables, viewer, compare, security, anonymization."""

from __future__ import annotations

import http.client
import json
import os

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from medhub.dashboard.app import create_app
from medhub.errors import InputError
from tests.conftest import run_cli
from tests.dashboard.conftest import Server, folder_state


def _client(folder, anonymize=False) -> TestClient:
    return TestClient(create_app(folder, anonymize=anonymize))


def test_a_run_folder_overview_table_case_and_slices(run_folder):
    client = _client(run_folder)
    overview = client.get("/api/overview").json()
    assert (overview["kind"], overview["total"], overview["statuses"]) == ("run", 2, {"ok": 2})
    assert overview["model"]["id"] == "lung-ct"
    page = client.get("/api/cases", params={"sort": "value:total_lung_volume_ml", "desc": True}).json()
    volumes = [r["values"]["total_lung_volume_ml"] for r in page["rows"]]
    assert page["total"] == 2 and volumes == sorted(volumes, reverse=True)
    case_id = page["rows"][0]["case_id"]
    detail = client.get(f"/api/cases/{case_id}").json()
    assert detail["card"]["id"] == "lung-ct" and detail["provenance"]["model"]["id"] == "lung-ct"
    assert {d["name"] for d in detail["downloads"]} >= {"seg.dcm", "sr.dcm", "results.json"}
    meta = client.get(f"/api/cases/{case_id}/image").json()
    assert meta["slices"] == 40 and meta["has_image"]
    # the segments come from the SEG, in its recommended display colours (lung-ct's card: 220,80,80 and 70,120,230)
    assert [(s["name"], s["color"]) for s in meta["segments"]["prediction"]] == [
        ("Right lung", [220, 80, 80]), ("Left lung", [70, 120, 230])]
    k = meta["labelled_slices"][len(meta["labelled_slices"]) // 2]
    with_overlay = client.get(f"/api/cases/{case_id}/slice/{k}.png", params={"window": "lung"})
    without = client.get(f"/api/cases/{case_id}/slice/{k}.png", params={"window": "lung", "labels": ""})
    assert with_overlay.headers["content-type"] == "image/png"
    a = np.asarray(Image.open(__import__("io").BytesIO(with_overlay.content)))
    b = np.asarray(Image.open(__import__("io").BytesIO(without.content)))
    assert a.shape == (512, 512, 3) and (a != b).any()
    assert (b[..., 0] == b[..., 1]).all()  # no overlay: grey levels only
    assert client.get(f"/api/cases/{case_id}/slice/999.png").status_code == 400
    assert client.get("/api/cases/no-such-case").status_code == 404
    for path in (d["url"] for d in detail["downloads"]):
        assert client.get(path).status_code == 200


def test_a_batch_folder_pages_sorts_filters_and_counts_failures(batch_folder):
    client = _client(batch_folder)
    overview = client.get("/api/overview").json()
    assert overview["kind"] == "batch" and overview["total"] == 8
    assert overview["statuses"] == {"ok": 7, "failed": 1}
    assert sum(overview["failures_by_reason"].values()) == 1
    assert sum(overview["risk_categories"].values()) == 7 and sum(
        b["count"] for b in overview["agatston_histogram"]) == 7
    first = client.get("/api/cases", params={"limit": 3, "sort": "agatston", "desc": True}).json()
    assert first["total"] == 8 and len(first["rows"]) == 3
    scores = [r["agatston"] for r in first["rows"]]
    assert scores == sorted(scores, reverse=True)
    second = client.get("/api/cases", params={"limit": 3, "offset": 3, "sort": "agatston", "desc": True}).json()
    assert not {r["case_id"] for r in first["rows"]} & {r["case_id"] for r in second["rows"]}
    failed = client.get("/api/cases", params={"status": "failed"}).json()
    assert [r["case_id"] for r in failed["rows"]] == ["case-03"]
    assert client.get("/api/cases", params={"q": "case-0"}).json()["total"] == 8
    assert client.get("/api/cases", params={"q": "nothing-like-this"}).json()["total"] == 0
    assert client.get("/api/cases", params={"sort": "drop table"}).status_code == 400
    ok_case = client.get("/api/cases", params={"status": "ok", "limit": 1}).json()["rows"][0]
    assert {d["name"] for d in ok_case["downloads"]} >= {"seg.dcm", "sr.dcm"}
    meta = client.get(f"/api/cases/{ok_case['case_id']}/image").json()
    assert meta["has_image"] and meta["slices"] == 6


def test_a_release_folder_is_browsable_without_its_images(release_folder):
    client = _client(release_folder)
    overview = client.get("/api/overview").json()
    assert overview["kind"] == "release" and overview["total"] == 8
    ok_case = client.get("/api/cases", params={"status": "ok", "limit": 1}).json()["rows"][0]
    assert ok_case["downloads"] and all(d["url"].startswith("/files/scans/") for d in ok_case["downloads"])
    meta = client.get(f"/api/cases/{ok_case['case_id']}/image").json()
    assert meta["slices"] == 6 and not meta["has_image"]  # the SEG on its own geometry, over black
    assert client.get(f"/api/cases/{ok_case['case_id']}/slice/2.png").status_code == 200


def test_a_compare_folder_shows_both_sources_of_a_case(compare_folder):
    client = _client(compare_folder)
    data = client.get("/api/compare").json()
    assert [p for p in data["pairs"]] == [["lung-ct", "truth"]]
    assert any(r["metric"] == "dice" for r in data["summary"])
    cases = client.get("/api/cases").json()["rows"]
    matched = [r for r in cases if r["status"] == "ok"]
    assert [r["case_id"] for r in matched] == ["ct-a"]
    meta = client.get("/api/cases/ct-a/image").json()
    assert meta["sources"] == ["lung-ct", "truth"]
    assert [s["color"] for s in meta["segments"]["truth"]] == [[60, 220, 220], [250, 200, 60]]
    k = meta["labelled_slices"][len(meta["labelled_slices"]) // 2]
    left = client.get(f"/api/cases/ct-a/slice/{k}.png", params={"source": "lung-ct"}).content
    right = client.get(f"/api/cases/ct-a/slice/{k}.png", params={"source": "truth"}).content
    assert left != right
    assert client.get("/api/cases/ct-a/slice/1.png", params={"source": "nope"}).status_code == 400


def _raw_get(port: int, path: str) -> tuple[int, bytes]:
    """A GET of exactly ``path``: no client-side normalisation of '..' or percent-escapes."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.putrequest("GET", path, skip_accept_encoding=True)
    connection.endheaders()
    response = connection.getresponse()
    return response.status, response.read()


def test_files_are_served_only_from_inside_the_folder(run_folder, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("outside")
    escape = run_folder / "escape-link"
    escape.symlink_to(secret)
    try:
        with Server(run_folder) as server:
            case = next(p.name for p in run_folder.iterdir() if (p / "results.json").is_file())
            assert _raw_get(server.port, f"/files/{case}/results.json")[0] == 200
            attempts = [
                "/files/../secret.txt", f"/files/{case}/../../secret.txt", "/files/%2e%2e/secret.txt",
                "/files/%2E%2E%2Fsecret.txt", "/files/%252e%252e/secret.txt", "/files/..%2fsecret.txt",
                f"/files/{secret}", f"/files//{secret}", "/files/escape-link", "/files/%2fetc%2fpasswd",
                "/files/....//secret.txt", "/files/.%2e/secret.txt", "/files/..\\secret.txt", "/files/",
            ]
            for path in attempts:
                status, body = _raw_get(server.port, path)
                assert status in (400, 404), (path, status)
                assert b"outside" not in body and b"root:" not in body, path
    finally:
        escape.unlink()


def test_the_dashboard_never_writes_into_the_folder(batch_folder, run_folder, compare_folder, release_folder):
    for folder in (batch_folder, run_folder, compare_folder, release_folder):
        before = folder_state(folder)
        client = _client(folder)
        client.get("/api/overview")
        rows = client.get("/api/cases", params={"limit": 500}).json()["rows"]
        for row in rows[:3]:
            client.get(f"/api/cases/{row['case_id']}")
            meta = client.get(f"/api/cases/{row['case_id']}/image")
            if meta.status_code == 200:
                client.get(f"/api/cases/{row['case_id']}/slice/0.png")
            for link in row["downloads"]:
                client.get(link["url"])
        assert folder_state(folder) == before, folder


def test_anonymize_hides_patient_names_ids_and_birth_dates_everywhere(run_folder, batch_folder):
    import pydicom

    for folder, secrets in ((run_folder, [b"PAT-SECRET-A", b"Doe^Alice", b"PAT-SECRET-B"]),
                            (batch_folder, [b"P000", b"P001", b"P003"])):
        client = _client(folder, anonymize=True)
        bodies = [client.get("/api/overview").content]
        page = client.get("/api/cases", params={"limit": 500})
        bodies.append(page.content)
        for row in page.json()["rows"]:
            assert row["case_id"].startswith("case-") and "patient_id" not in row
            bodies.append(client.get(f"/api/cases/{row['case_id']}").content)
            bodies.append(client.get(f"/api/cases/{row['case_id']}/image").content)
            for link in row["downloads"]:
                response = client.get(link["url"])
                assert response.status_code == 200
                bodies.append(response.content)
                if link["name"].endswith(".dcm"):
                    ds = pydicom.dcmread(__import__("io").BytesIO(response.content))
                    assert str(ds.PatientName) == "" and str(ds.PatientID) == ""
        for body in bodies:
            for secret in secrets:
                assert secret not in body, (folder.name, secret)
        assert client.get("/api/cases", params={"q": "SECRET"}).json()["total"] == 0  # no probing by search


def test_the_cli_binds_loopback_and_says_so(run_folder):
    import subprocess
    import sys

    from tests.dashboard.conftest import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "medhub", "dashboard", str(run_folder), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert f"at http://127.0.0.1:{port}/" in line and "bound to 127.0.0.1: only this machine" in line
        for _ in range(100):
            try:
                assert json.loads(_raw_get(port, "/api/overview")[1])["kind"] == "run"
                break
            except (ConnectionError, OSError):
                __import__("time").sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_folder_that_is_not_a_result_is_refused_in_one_line(tmp_path):
    with pytest.raises(InputError, match="not a medhub run, batch, release, compare, evaluation or survival folder"):
        create_app(tmp_path)
    proc = run_cli("dashboard", str(tmp_path))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert os.listdir(tmp_path) == []


def test_an_evaluation_folder_serves_its_leaderboard_and_per_case_rows(evaluation_folder):
    client = _client(evaluation_folder)
    overview = client.get("/api/overview").json()
    assert overview["kind"] == "evaluation" and overview["total"] == 8
    assert overview["failures_by_reason"] == {"missing": 1}
    board = overview["evaluation"]["leaderboard"]
    assert [r["submission"] for r in board] == ["close", "far"]
    assert board[0]["t3_mae"] == pytest.approx(2.0) and board[0]["t3_mae_ci_low"] <= 2.0
    page = client.get("/api/cases", params={"sort": "status"}).json()
    assert {r["case_id"].split(" / ")[0] for r in page["rows"]} == {"close", "far"}


def test_a_survival_folder_serves_its_cox_table_groups_and_km_plot(survival_folder):
    client = _client(survival_folder)
    overview = client.get("/api/overview").json()
    assert overview["kind"] == "survival" and overview["total"] == 4
    survival = overview["survival"]
    record = json.loads((survival_folder / "survival.json").read_text())
    assert survival["concordance"] == record["concordance"]
    assert [r["term"] for r in survival["cox"]] == ["prio", "age", "fin"]
    assert client.get(survival["km_plot"]).content[:4] == b"\x89PNG"
    rows = {r["case_id"]: r["values"] for r in client.get("/api/cases").json()["rows"]}
    assert set(rows) == {"Q1", "Q2", "Q3", "Q4"} and rows["Q1"]["hr"] == 1.0
    assert rows["Q4"]["hr"] > rows["Q1"]["hr"] and rows["Q4"]["events"] == 40
