"""Fixtures for the cohort tests: a pip-installed test model with injectable faults, and a small cohort."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medhub.synth.dicom_series import write_series
from tests.conftest import pip_install_test_package

#: The 20-case cohort of the issue's "done when": which case carries which fault.
CORRUPT, CRASH, SLEEP = 3, 7, 12
N_CASES = 20


@pytest.fixture(scope="session")
def faulty_site(tmp_path_factory) -> Path:
    """tests/data/faulty_plugin, really installed by pip into its own site folder (as a third party would)."""
    site = pip_install_test_package(tmp_path_factory, "faulty_plugin")
    return site


@pytest.fixture
def faulty_model(faulty_site, monkeypatch):
    """Make the faulty model importable in this process (and, through PYTHONPATH, in its workers)."""
    monkeypatch.syspath_prepend(str(faulty_site))
    monkeypatch.setenv("PYTHONPATH", str(faulty_site))
    from medhub.hub.registry import get_model

    get_model.cache_clear()
    yield "faulty-threshold"
    get_model.cache_clear()


def dense_voxels(index: int) -> int:
    """Dense (>= 130 HU) voxels of case ``index``; 2.5 mm³ each, so scores of 0, 25, 150 and 500."""
    return (0, 10, 60, 200)[index % 4]


def write_case(folder: Path, index: int, description: str = "Synthetic series") -> list[Path]:
    """Case ``index``: a 6-slice 24×24 CT series of patient P<index>, in ``folder``."""
    array = np.full((6, 24, 24), -800, dtype=np.int16)
    array.reshape(-1)[: dense_voxels(index)] = 300
    affine = np.array([[0, 0, 1.0, 0], [0, 1.0, 0, 0], [2.5, 0, 0, 0], [0, 0, 0, 1]])
    return write_series(array, affine, folder, seed=1000 + index, patient_id=f"P{index:03d}",
                        series_description=description, file_names="numbered")


def make_cohort(root: Path, n: int = N_CASES, faults: bool = True) -> Path:
    """``root/case-NN/``: ``n`` cases; with ``faults``, one corrupt, one that crashes and one that hangs."""
    for index in range(n):
        description = {CRASH: "CRASH me", SLEEP: "SLEEP forever"}.get(index, "Synthetic series") if faults else (
            "Synthetic series")
        paths = write_case(root / f"case-{index:02d}", index, description)
        if faults and index == CORRUPT:
            data = paths[3].read_bytes()
            paths[3].write_bytes(data[: len(data) - 500])  # pixel data cut short: headers still read
    return root
