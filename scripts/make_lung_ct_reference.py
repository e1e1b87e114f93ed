"""Build lung-ct's reference case (also the `medhub demo` input) from ../shared/data.

Input: LIDC-IDRI case 0187 (TCIA, CC BY 3.0) as resampled to 3 mm by DeepCAC, written as a JPEG 2000 lossless DICOM CT
series. Expected outputs: the SEG and values that this version of lung-ct produces on it; `medhub verify lung-ct`
then checks that a fresh install reproduces them within `tolerances.yaml`.

Run from the repository root: `python scripts/make_lung_ct_reference.py`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from pydicom.uid import JPEG2000Lossless

from medhub.hub.registry import get_model
from medhub.hub.runner import run
from medhub.io.nifti import read_volume
from medhub.synth.dicom_series import write_series

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO.parent / "shared" / "data" / "lidc_chest_ct" / "0187_ct_3mm.nrrd"
MODEL_DIR = REPO / "src" / "medhub" / "models" / "lung_ct"
REFERENCE = MODEL_DIR / "reference"


def main() -> None:
    volume = read_volume(SOURCE)
    input_dir = REFERENCE / "input"
    expected_dir = REFERENCE / "expected"
    for folder in (input_dir, expected_dir):
        shutil.rmtree(folder, ignore_errors=True)
    write_series(
        volume.array, volume.affine, input_dir, transfer_syntax=JPEG2000Lossless, seed=187,
        patient_name="LIDC-IDRI-0187^", patient_id="LIDC-IDRI-0187",
        study_description="LIDC-IDRI-0187 chest CT (DeepCAC 3 mm resampling)",
        series_description="Chest CT 3 mm", file_names="numbered",
    )
    with tempfile.TemporaryDirectory() as tmp:
        report = run(get_model("lung-ct"), input_dir, tmp, outputs=("seg", "json"))
        result = report.results[0]
        if not result.ok:
            raise SystemExit(f"lung-ct failed on its reference input: {result.message}")
        expected_dir.mkdir(parents=True)
        shutil.copy(result.outputs["seg"], expected_dir / "seg.dcm")
        values = {k: round(v, 3) for k, v in result.values.items()}
        (expected_dir / "values.json").write_text(json.dumps(values, indent=2) + "\n")
    print(f"reference written to {REFERENCE}: {values}")


if __name__ == "__main__":
    main()
