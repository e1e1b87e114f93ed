"""`medhub batch` and `medhub release`: faults isolated, kill -9 survived, nothing run twice, releases checksummed."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from medhub.cohort.batch import run_batch
from medhub.cohort.manifest import read_manifest
from medhub.cohort.release import CHECKSUMS_NAME, release, verify_checksums
from medhub.cohort.store import ResultsStore
from medhub.errors import InputError, MedhubError
from tests.cohort.conftest import CORRUPT, CRASH, N_CASES, SLEEP, make_cohort, write_case
from tests.conftest import run_cli

#: Seconds a case may run. Real cases take well under a second (a few on a machine loaded by other test
#: processes); the SLEEP case would take 10 minutes.
TIMEOUT_S = 20


def _store_rows(output: Path, run_id: int = 1) -> dict[str, dict]:
    """Rows of a run, read as an outside observer would while the batch runs (read-only connection)."""
    path = output / "batch.sqlite"
    if not path.exists():
        return {}
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    db.row_factory = sqlite3.Row
    try:
        return {r["case_id"]: dict(r) for r in db.execute("SELECT * FROM cases WHERE run_id = ?", (run_id,))}
    except sqlite3.OperationalError:  # the coordinator has not created its tables yet
        return {}
    finally:
        db.close()


def _log(path: Path) -> list[tuple[str, str, int]]:
    if not path.exists():
        return []
    return [(event, uid, int(pid)) for event, uid, pid in (line.split() for line in path.read_text().splitlines())]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purpose
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("backend", ["local", "ray"])
def test_kill_9_mid_run_then_rerun_gives_17_ok_3_failed_and_runs_nothing_twice(backend, faulty_site, tmp_path):
    cohort = make_cohort(tmp_path / "in")
    output, log = tmp_path / "out", tmp_path / "executions.log"
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(faulty_site), "MEDHUB_FAULTY_LOG": str(log)}
    command = [sys.executable, "-m", "medhub", "batch", "faulty-threshold", "--input", str(cohort), "--output",
               str(output), "--workers", "2", "--timeout", str(TIMEOUT_S), "--backend", backend]

    # 1. Start the batch and kill -9 its coordinator while the hanging case is running.
    batch = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    hung = f"case-{SLEEP:02d}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and batch.poll() is None:
        rows = _store_rows(output)
        if rows.get(hung, {}).get("status") == "running":
            break
        time.sleep(0.1)
    assert batch.poll() is None, batch.communicate()
    batch.send_signal(signal.SIGKILL)
    batch.wait()
    before = _store_rows(output)
    final_before = {case: row for case, row in before.items() if row["status"] in ("ok", "failed")}
    assert len(final_before) >= 8, before  # cases 0-11 were handed out before case 12
    assert before[hung]["status"] == "running"
    lines_before = len(_log(log))

    # The killed coordinator's workers die with it: none can finish a case behind the resumed run's back.
    worker_pids = {pid for _, _, pid in _log(log)}
    give_up = time.monotonic() + 20
    while any(_alive(pid) for pid in worker_pids) and time.monotonic() < give_up:
        time.sleep(0.2)
    assert not [pid for pid in worker_pids if _alive(pid)]

    # 2. The same command again finishes the run.
    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 1, resumed.stderr  # 1: some cases failed
    rows = _store_rows(output)
    assert Counter(r["status"] for r in rows.values()) == {"ok": N_CASES - 3, "failed": 3}
    reasons = {case: r["reason_code"] for case, r in rows.items() if r["status"] == "failed"}
    assert reasons == {f"case-{CORRUPT:02d}": "truncated", f"case-{CRASH:02d}": "worker-crashed",
                       hung: "timeout"}
    assert "worker process died" in rows[f"case-{CRASH:02d}"]["message"]
    assert "IM0004.dcm" in rows[f"case-{CORRUPT:02d}"]["message"]
    assert "17 ok, 3 failed of 20" in resumed.stdout

    # 3. Nothing that had finished ran again: not in the store, not in the model's own execution log.
    for case, row in final_before.items():
        assert (rows[case]["attempts"], rows[case]["finished_utc"]) == (1, row["finished_utc"]), case
    uid_of = {r["series_instance_uid"]: case for case, r in rows.items()}
    started_after = {uid_of[uid] for event, uid, _ in _log(log)[lines_before:] if event == "start"}
    assert not started_after & set(final_before)
    assert hung in started_after  # the interrupted case did run again
    with ResultsStore.open_existing(output) as store:
        attempts = store.attempts(store.current_run())
    completed = Counter(a["case_id"] for a in attempts if a["status"] in ("ok", "failed"))
    assert completed == dict.fromkeys(rows, 1)  # every case completed exactly once
    assert {a["status"] for a in attempts} - {"ok", "failed"} == {"interrupted"}  # killed mid-case, then rerun

    # 4. No partial output: exactly one complete folder per successful case, no staging left over.
    run_dir = output / "run-1"
    assert not [p.name for p in run_dir.iterdir() if p.name.startswith(".")]
    case_dirs = {p.name for p in run_dir.iterdir() if p.is_dir()}
    assert case_dirs == {case for case, r in rows.items() if r["status"] == "ok"}
    for case in case_dirs:
        assert {"seg.dcm", "sr.dcm", "results.json"} <= {p.name for p in (run_dir / case).iterdir()}

    # 5. The release validates against its own checksums.
    released = run_cli("release", str(output), "--to", str(tmp_path / "release"))
    assert released.returncode == 0, released.stderr
    assert verify_checksums(tmp_path / "release") == []
    if shutil.which("sha256sum"):
        check = subprocess.run(["sha256sum", "--quiet", "-c", CHECKSUMS_NAME], cwd=tmp_path / "release",
                               capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr


# -- one behaviour per test, through the Python API on the local pool ------------------------------------------

def test_a_case_whose_output_cannot_be_written_is_recorded_and_the_others_finish(faulty_model, tmp_path):
    write_case(tmp_path / "in" / "case-a", 1)
    # A legal folder name whose hidden staging name (".<name>.XXXXXXXX.partial") exceeds the 255-byte limit.
    write_case(tmp_path / "in" / ("x" * 245), 2)
    write_case(tmp_path / "in" / "case-c", 3)

    summary = run_batch(faulty_model, tmp_path / "out", input_root=tmp_path / "in", workers=2)

    assert (summary.ok, summary.failed) == (2, 1)
    assert summary.failures_by_reason == {"output-not-writable": 1}
    row = _store_rows(tmp_path / "out")["x" * 245]
    assert "cannot write output" in row["message"] and "too long" in row["message"].lower()


def test_a_batch_over_a_folder_of_symlinks_to_four_series_runs_four_cases(faulty_model, tmp_path):
    archive = tmp_path / "archive"
    for index in range(4):
        write_case(archive / f"series-{index}", index)
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    for index in range(4):
        (cohort / f"patient-{index}").symlink_to(archive / f"series-{index}", target_is_directory=True)
    (cohort / "patient-0-again").symlink_to(archive / "series-0", target_is_directory=True)
    (cohort / "patient-9").symlink_to(archive / "series-9", target_is_directory=True)  # dangling
    (cohort / "zz-loop").symlink_to(cohort, target_is_directory=True)

    summary = run_batch(faulty_model, tmp_path / "out", input_root=cohort, workers=2)

    assert (summary.total, summary.ok, summary.failed) == (4, 4, 0)
    assert sorted(_store_rows(tmp_path / "out")) == [f"patient-{k}" for k in range(4)]
    assert summary.warnings[:3] == [
        f"1 dangling symbolic link skipped: {cohort}/patient-9 -> {archive}/series-9",
        f"1 duplicate path skipped (same real folder or file as one already found): {cohort}/patient-0-again = "
        f"{cohort}/patient-0",
        f"1 symbolic link loop not followed: {cohort}/zz-loop -> {cohort}",
    ]


def test_a_different_model_version_is_refused_unless_new_run(faulty_model, tmp_path):
    write_case(tmp_path / "in" / "case-a", 1)
    write_case(tmp_path / "in" / "case-b", 2)
    run_batch(faulty_model, tmp_path / "out", input_root=tmp_path / "in", workers=1)
    with sqlite3.connect(tmp_path / "out" / "batch.sqlite") as db:  # as if run 1 came from an older release
        db.execute("UPDATE runs SET model_version = '0.0.9', weights_sha256 = 'abc'")

    with pytest.raises(MedhubError) as refused:
        run_batch(faulty_model, tmp_path / "out", input_root=tmp_path / "in", workers=1)
    assert refused.value.code == "model-changed" and "--new-run" in refused.value.message

    summary = run_batch(faulty_model, tmp_path / "out", input_root=tmp_path / "in", workers=1, new_run=True)
    assert (summary.run_id, summary.ok, summary.ran_now) == (2, 2, 2)
    assert summary.output == tmp_path / "out" / "run-2"
    old = _store_rows(tmp_path / "out", run_id=1)
    assert {r["model_version"] for r in old.values()} == {"0.1.0"} and len(old) == 2  # run 1 is kept as it was
    assert (tmp_path / "out" / "run-1" / "case-a" / "seg.dcm").is_file()
    # The same command again (--new-run included, as after a crash) resumes run 2 rather than starting run 3.
    again = run_batch(faulty_model, tmp_path / "out", input_root=tmp_path / "in", workers=1, new_run=True)
    assert (again.run_id, again.ran_now, again.already_final) == (2, 0, 2)


def test_the_cli_refusal_is_one_line_with_exit_code_2(faulty_site, tmp_path):
    env = {"PYTHONPATH": str(faulty_site)}
    proc = run_cli("batch", "faulty-threshold", "--output", str(tmp_path / "out"), env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: give --input ROOT or --manifest CSV"


def test_finished_cases_are_skipped_and_retry_failed_reruns_only_failures(faulty_model, tmp_path):
    good = write_case(tmp_path / "in" / "case-a", 1)
    broken = write_case(tmp_path / "in" / "case-b", 2)
    intact = broken[3].read_bytes()
    broken[3].write_bytes(intact[:-500])
    first = run_batch(faulty_model, tmp_path / "out", input_root=tmp_path / "in", workers=1)
    assert (first.ok, first.failed) == (1, 1)

    broken[3].write_bytes(intact)  # the data manager fixes the file
    again = run_batch(faulty_model, tmp_path / "out", input_root=tmp_path / "in", workers=1)
    assert (again.ran_now, again.already_final, again.failed) == (0, 2, 1)  # failures are final until asked

    retried = run_batch(faulty_model, tmp_path / "out", input_root=tmp_path / "in", workers=1, retry_failed=True)
    assert (retried.ran_now, retried.ok, retried.failed) == (1, 2, 0)
    rows = _store_rows(tmp_path / "out")
    assert (rows["case-a"]["attempts"], rows["case-b"]["attempts"]) == (1, 2)
    assert good[0].exists()


def test_resume_removes_staging_folders_left_by_a_killed_run(faulty_model, tmp_path):
    write_case(tmp_path / "in" / "case-a", 1)
    run_dir = tmp_path / "out" / "run-1"
    run_batch(faulty_model, tmp_path / "out", input_root=tmp_path / "in", workers=1)
    (run_dir / ".case-a.k3j4h5g6.partial").mkdir()  # what a worker killed mid-write leaves
    (run_dir / ".case-a.k3j4h5g6.partial" / "seg.dcm").write_bytes(b"half")
    (run_dir / ".case-a.old-1234").mkdir()  # a replaced folder not yet deleted

    run_batch(faulty_model, tmp_path / "out", input_root=tmp_path / "in", workers=1)

    assert sorted(p.name for p in run_dir.iterdir()) == ["case-a", "results.csv", "run.json"]


def test_a_second_coordinator_on_the_same_output_is_refused(faulty_model, tmp_path):
    write_case(tmp_path / "in" / "case-a", 1)
    (tmp_path / "out").mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); "
                               "fcntl.lockf(f, fcntl.LOCK_EX); f.write('pid 4242'); f.flush(); print('ok', "
                               "flush=True); time.sleep(60)", str(tmp_path / "out" / ".batch.lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ok"
        with pytest.raises(MedhubError) as busy:
            run_batch(faulty_model, tmp_path / "out", input_root=tmp_path / "in", workers=1)
        assert busy.value.code == "busy" and "pid 4242" in busy.value.message
    finally:
        holder.kill()
        holder.wait()


def test_manifest_rows_by_path_and_by_uid_and_a_missing_one(faulty_model, tmp_path):
    write_case(tmp_path / "root" / "a", 1)
    paths_b = write_case(tmp_path / "root" / "b", 2)
    write_case(tmp_path / "root" / "c", 3)
    from pydicom import dcmread

    uid_b = dcmread(paths_b[0], stop_before_pixels=True).SeriesInstanceUID
    manifest = tmp_path / "cohort.csv"
    manifest.write_text(f"path,series_instance_uid\na,\n,{uid_b}\nnot-there,\n,1.2.3.4.999\n")

    sources = read_manifest(manifest, tmp_path / "root")
    assert [s.case_id for s in sources] == ["a", "b", "not-there", "1.2.3.4.999"]
    summary = run_batch(faulty_model, tmp_path / "out", manifest=manifest, input_root=tmp_path / "root",
                        workers=2)

    assert (summary.total, summary.ok, summary.failed) == (4, 2, 2)
    rows = _store_rows(tmp_path / "out")
    assert rows["a"]["patient_id"] == "P001" and rows["b"]["series_instance_uid"] == uid_b
    assert rows["not-there"]["reason_code"] == "not-found"
    assert rows["1.2.3.4.999"]["reason_code"] == "not-found" and rows["1.2.3.4.999"]["worker"] == "coordinator"


def test_a_malformed_manifest_is_refused_as_a_whole(tmp_path):
    manifest = tmp_path / "cohort.csv"
    manifest.write_text("patient,age\nP1,60\n")
    with pytest.raises(InputError, match="needs a 'path' or 'series_instance_uid' column"):
        read_manifest(manifest)
    manifest.write_text("path,case_id\na,same\nb,same\n")
    with pytest.raises(InputError, match="occurs more than once"):
        read_manifest(manifest)


def test_release_layout_tables_dictionary_summary_and_reproducible_sample(faulty_model, tmp_path):
    for index in range(6):
        write_case(tmp_path / "in" / f"case-{index}", index)
    broken = write_case(tmp_path / "in" / "case-broken", 9)
    broken[2].write_bytes(broken[2].read_bytes()[:-500])
    run_batch(faulty_model, tmp_path / "out", input_root=tmp_path / "in", workers=2)

    full = release(tmp_path / "out", tmp_path / "rel")
    assert (full.scans, full.patients, full.ok, full.failed) == (7, 7, 6, 1)
    assert verify_checksums(tmp_path / "rel") == []
    with (tmp_path / "rel" / "metadata.csv").open() as handle:
        table = list(csv.DictReader(handle))
    row = next(r for r in table if r["patient_id"] == "P002")
    assert row["agatston"] == "150.0" and row["risk_category"] == "100-399"
    assert (tmp_path / "rel" / row["seg_file"]).is_file() and (tmp_path / "rel" / row["sr_file"]).is_file()
    assert row["seg_file"] == f"scans/P002/{row['study_instance_uid']}/{row['series_instance_uid']}/seg.dcm"
    import pyarrow.parquet as pq

    parquet = pq.read_table(tmp_path / "rel" / "metadata.parquet")
    assert parquet.num_rows == 7 and parquet.column_names == list(table[0])
    assert parquet.schema.field("agatston").metadata[b"unit"] == b"{score}"
    with (tmp_path / "rel" / "data_dictionary.csv").open() as handle:
        dictionary = {r["column"]: r for r in csv.DictReader(handle)}
    assert set(dictionary) == set(table[0]) and dictionary["peak_rss_mib"]["unit"] == "MiB"
    assert "0 / 1-99 / 100-399 / >=400" in (tmp_path / "rel" / "data_dictionary.md").read_text()
    # the model's per-scan tables, concatenated over the successful scans with their identifiers
    dense = pq.read_table(tmp_path / "rel" / "dense_slices.parquet").to_pylist()
    per_case = {}
    for case_id in {r["case_id"] for r in table if r["status"] == "ok"}:
        with (tmp_path / "out" / "run-1" / case_id / "dense_slices.csv").open() as handle:
            per_case[case_id] = sum(int(r["voxels"]) for r in csv.DictReader(handle))
    assert {r["case_id"] for r in dense} <= set(per_case) and all(isinstance(r["voxels"], float) for r in dense)
    assert {c: sum(r["voxels"] for r in dense if r["case_id"] == c) for c in per_case} == per_case
    assert all(r["series_instance_uid"] for r in dense)
    assert "`dense_slices.parquet`" in (tmp_path / "rel" / "data_dictionary.md").read_text()
    import json

    summary = json.loads((tmp_path / "rel" / "summary.json").read_text())
    assert summary["scans_per_risk_category"] == {"0": 2, "1-99": 2, "100-399": 1, ">=400": 1}
    assert summary["failures_by_reason"] == {"truncated": 1}

    first = release(tmp_path / "out", tmp_path / "s1", sample=3, seed=7)
    release(tmp_path / "out", tmp_path / "s2", sample=3, seed=7)
    assert first.patients == 3
    assert (tmp_path / "s1" / "metadata.csv").read_text() == (tmp_path / "s2" / "metadata.csv").read_text()
    assert verify_checksums(tmp_path / "s1") == []
    with pytest.raises(MedhubError, match="release folder exists"):
        release(tmp_path / "out", tmp_path / "s1")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind
