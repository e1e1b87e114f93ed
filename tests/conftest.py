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
