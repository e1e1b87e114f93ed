"""Results folders of every kind for the dashboard tests: a run, a batch (with a failure), its release, a compare."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from medhub.synth.chest import make_chest_phantom
from medhub.synth.dicom_series import write_series
from tests.cohort.conftest import faulty_model, faulty_site, make_cohort  # noqa: F401 - fixtures used here

TRUTH_YAML = """name: truth
labels:
  2: {name: Right lung, type: {value: "39607008", scheme: SCT, meaning: Lung},
      modifier: {value: "24028007", scheme: SCT, meaning: Right}, color_rgb: [250, 200, 60]}
  1: {name: Left lung, type: {value: "39607008", scheme: SCT, meaning: Lung},
      modifier: {value: "7771000", scheme: SCT, meaning: Left}, color_rgb: [60, 220, 220]}
"""


def folder_state(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``folder`` with its size and modification time: equal before and after means untouched."""
    state = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            info = path.lstat()
            state[str(path.relative_to(folder))] = (info.st_size, info.st_mtime_ns)
    return state


@pytest.fixture(scope="session")
def chest_data(tmp_path_factory) -> Path:
    """Two chest phantoms as DICOM series, and the true lungs of the first as a label map with a mapping."""
    root = tmp_path_factory.mktemp("dashboard-chest")
    phantom = make_chest_phantom(shape=(40, 96, 96), spacing=(6.0, 3.5, 3.5), seed=5)
    write_series(phantom.hu, phantom.affine, root / "data" / "ct-a", seed=21, patient_id="PAT-SECRET-A",
                 patient_name="Doe^Alice")
    other = make_chest_phantom(shape=(40, 96, 96), spacing=(6.0, 3.5, 3.5), seed=6)
    write_series(other.hu, other.affine, root / "data" / "ct-b", seed=22, patient_id="PAT-SECRET-B",
                 patient_name="Doe^Bob")
    from medhub.io.dicom import read_dicom_volume
    from medhub.io.nifti import write_volume

    truth = np.zeros_like(phantom.labels)
    truth[phantom.labels == 1], truth[phantom.labels == 2] = 2, 1
    (root / "truth").mkdir()
    write_volume(read_dicom_volume(root / "data" / "ct-a"), root / "truth" / "ct-a.nii.gz", array=truth)
    (root / "truth" / "labels.yaml").write_text(TRUTH_YAML)
    return root


@pytest.fixture(scope="session")
def run_folder(chest_data, tmp_path_factory) -> Path:
    from medhub.hub.runner import run

    out = tmp_path_factory.mktemp("dashboard-run") / "out"
    run("lung-ct", chest_data / "data", out)
    return out


@pytest.fixture(scope="session")
def compare_folder(chest_data, tmp_path_factory) -> Path:
    from medhub.compare.comparison import run_comparison

    out = tmp_path_factory.mktemp("dashboard-compare") / "out"
    run_comparison(["lung-ct"], chest_data / "data", out, reference=str(chest_data / "truth"))
    return out


@pytest.fixture(scope="session")
def batch_folder(faulty_site, tmp_path_factory) -> Path:  # noqa: F811 - the imported fixture
    """A finished batch of the faulty test model on 8 small cases, one of them truncated (a failure)."""
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("dashboard-batch")
    make_cohort(root / "in", n=8, faults=False)
    victim = sorted((root / "in" / "case-03").iterdir())[2]
    victim.write_bytes(victim.read_bytes()[:-400])
    env = {**os.environ, "PYTHONPATH": str(faulty_site)}
    subprocess.run([sys.executable, "-m", "medhub", "batch", "faulty-threshold", "--input", str(root / "in"),
                    "--output", str(root / "out"), "--workers", "1"], env=env, capture_output=True, timeout=300)
    return root / "out"


@pytest.fixture(scope="session")
def release_folder(batch_folder, tmp_path_factory) -> Path:
    from medhub.cohort.release import release

    target = tmp_path_factory.mktemp("dashboard-release") / "rel"
    release(batch_folder, target)
    return target


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """The dashboard app under uvicorn in a thread, on a free loopback port."""

    def __init__(self, folder: Path, anonymize: bool = False) -> None:
        import uvicorn

        from medhub.dashboard.app import create_app

        self.port = free_port()
        config = uvicorn.Config(create_app(folder, anonymize=anonymize), host="127.0.0.1", port=self.port,
                                log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the dashboard did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="session")
def evaluation_folder(tmp_path_factory) -> Path:
    """`medhub evaluate` of two prediction folders on four generated brain-age cases (one prediction missing)."""
    from medhub.challenge.evaluate import evaluate, load_truth, write_evaluation
    from medhub.challenge.submissions import FolderSubmission
    from medhub.challenge.tasks import FOMO25
    from medhub.synth.brain import write_task_dataset

    root = tmp_path_factory.mktemp("dashboard-evaluation")
    write_task_dataset(root / "truth" / "t3", "brain-age", ("t1", "t2"), 4, first_seed=930, resolution_mm=2.0)
    for name, shift in (("close", 2.0), ("far", 15.0)):
        (root / name / "t3").mkdir(parents=True)
        for n, case in enumerate(load_truth(root / "truth", FOMO25.task("t3"))):
            if not (name == "far" and n == 0):
                (root / name / "t3" / f"{case.case_id}.txt").write_text(f"{case.label + shift * (-1) ** n}\n")
    submissions = [FolderSubmission(name=n, folder=root / n) for n in ("close", "far")]
    evaluation = evaluate(FOMO25, submissions, root / "truth", root / "out", n_resamples=300)
    write_evaluation(evaluation, root / "out")
    return root / "out"


@pytest.fixture(scope="session")
def survival_folder(tmp_path_factory) -> Path:
    """`medhub survival` of lifelines' Rossi recidivism data: prior convictions as the score, by quartile."""
    from lifelines.datasets import load_rossi

    from tests.conftest import run_cli

    root = tmp_path_factory.mktemp("dashboard-survival")
    load_rossi().to_csv(root / "rossi.csv", index=False)
    done = run_cli("survival", str(root / "rossi.csv"), "--time", "week", "--event", "arrest", "--score", "prio",
                   "--covariates", "age,fin", "--resamples", "200", "-o", str(root / "out"))
    assert done.returncode == 0, done.stderr
    return root / "out"
