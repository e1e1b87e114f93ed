"""Shared fixtures: where the real data lives, and small generated inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the clone (CI has it; a user's machine may not)."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None):
    """Run the real ``medhub`` console entry point in a subprocess; return the CompletedProcess."""
    import os
    import subprocess
    import sys

    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run([sys.executable, "-m", "medhub", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=600)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def pip_install_test_package(tmp_path_factory, folder: str) -> Path:
    """Install ``tests/data/<folder>`` with pip into a site folder of its own (as a third party would); return it."""
    import shutil
    import subprocess
    import sys

    work = tmp_path_factory.mktemp(folder)
    source = work / "src"
    shutil.copytree(REPO / "tests" / "data" / folder, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    site = work / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(site), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return site
