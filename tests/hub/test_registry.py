"""A third-party model package, installed with pip, runs through the same `medhub run`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medhub.errors import ModelError
from medhub.hub.registry import available_models, get_model
from medhub.synth.dicom_series import write_series
from tests.conftest import pip_install_test_package, run_cli


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    """The example plugin, really installed by pip into its own site folder."""
    site = pip_install_test_package(tmp_path_factory, "plugin")
    assert list(site.glob("medhub_bone_threshold-*.dist-info"))
    return site


def test_plugin_is_listed_and_runs_with_the_same_command(plugin_site, tmp_path):
    env = {"PYTHONPATH": str(plugin_site)}
    listing = run_cli("models", env=env)
    assert listing.returncode == 0
    assert "bone-threshold" in listing.stdout and "medhub-bone-threshold" in listing.stdout

    array = np.full((10, 24, 24), -1000, dtype=np.int16)
    array[:, 8:16, 8:16] = 900
    affine = np.array([[0, 0, 1.0, 0], [0, 1.0, 0, 0], [2.5, 0, 0, 0], [0, 0, 0, 1]])
    write_series(array, affine, tmp_path / "in")
    proc = run_cli("run", "bone-threshold", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                   env=env)
    assert proc.returncode == 0, proc.stderr
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    case = record["cases"][0]
    assert record["model"]["id"] == "bone-threshold"
    # 10 slices x 8 x 8 voxels of 2.5 x 1 x 1 mm = 1.6 ml
    assert case["values"]["bone_volume_ml"] == pytest.approx(1.6)
    assert (tmp_path / "out" / case["case_id"] / "seg.dcm").is_file()


def test_builtin_models_need_no_plugin():
    assert available_models()["lung-ct"] == "built-in"


def test_unknown_model_error_names_known_ones():
    with pytest.raises(ModelError) as e:
        get_model("nope")
    assert e.value.code == "unknown-model" and "lung-ct" in e.value.message


def _imported_modules(*args: str) -> set[str]:
    """Top-level modules a fresh ``medhub ARGS`` process imports (from ``python -X importtime``)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "medhub", *args], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line.split("|")[-1] for line in proc.stderr.splitlines() if line.startswith("import time:")]
    return {line.strip().split(".")[0] for line in lines[1:]}  # the first line is the header


@pytest.mark.parametrize("args", [("--help",), ("models",), ("info", "cac")], ids=" ".join)
def test_listing_and_help_do_not_import_torch(args):
    modules = _imported_modules(*args)
    assert "medhub" in modules  # the measurement sees our own imports
    assert "torch" not in modules


def test_a_builtin_card_read_without_the_model_is_the_models_card():
    from medhub.hub.registry import BUILTIN_MODELS, get_card

    for model_id in BUILTIN_MODELS:
        assert get_card(model_id) == get_model(model_id).card
