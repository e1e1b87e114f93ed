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
