import json
import shutil
from pathlib import Path

import pytest

from medhub.errors import VerificationError
from medhub.hub.registry import get_model
from medhub.hub.verify import verify_model
from medhub.models.lung_ct import LungCT
from tests.conftest import run_cli


def _copy_of_lung_ct(tmp_path: Path) -> LungCT:
    folder = tmp_path / "lung_ct"
    shutil.copytree(get_model("lung-ct").folder, folder)

    class Copy(LungCT):
        pass

    Copy.folder = folder
    return Copy()


def test_lung_ct_reproduces_its_reference():
    report = verify_model("lung-ct")
    assert report.passed, [c for c in report.checks if not c.passed]
    names = {c.name for c in report.checks}
    assert {"dice Right lung", "dice Left lung", "SEG segment codes", "SEG referenced series",
            "SEG frame count", "total_lung_volume_ml"} <= names
    assert report.runtime_s > 0 and report.peak_rss_mib > 0


def test_verify_fails_when_the_expected_values_differ(tmp_path):
    model = _copy_of_lung_ct(tmp_path)
    values_path = model.folder / "reference" / "expected" / "values.json"
    values = json.loads(values_path.read_text())
    values["total_lung_volume_ml"] *= 1.10
    values_path.write_text(json.dumps(values))
    report = verify_model(model)
    assert not report.passed
    assert [c.name for c in report.checks if not c.passed] == ["total_lung_volume_ml"]


def test_verify_without_reference_data_is_an_error(tmp_path):
    model = _copy_of_lung_ct(tmp_path)
    shutil.rmtree(model.folder / "reference" / "expected")
    with pytest.raises(VerificationError):
        verify_model(model)


def test_cli_verify_all_prints_a_table():
    proc = run_cli("verify", "--all")
    assert proc.returncode == 0, proc.stderr
    assert "verify lung-ct" in proc.stdout and "PASS" in proc.stdout
