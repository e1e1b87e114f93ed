"""Build a model's reference case for `medhub verify` (the lung-ct one is also the `medhub demo` input).

Each reference input is a real LIDC-IDRI chest CT (TCIA, CC BY 3.0) as resampled to 3 mm by DeepCAC, taken from
../shared/data and written as a JPEG 2000 lossless DICOM CT series inside the model's folder. The expected outputs
are the SEG and values that the current model version produces on it; `medhub verify` then checks that a fresh
install reproduces them within the model's `reference/tolerances.yaml`.

Run from the repository root: `python scripts/make_reference.py lung-ct` (or `cac`).
"""

from __future__ import annotations

import argparse
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
LIDC = REPO.parent / "shared" / "data" / "lidc_chest_ct"

#: model id -> LIDC case used as its reference input.
SOURCES = {"lung-ct": "0187", "cac": "0987"}


def build_reference(model_id: str) -> dict:
    case = SOURCES[model_id]
    model = get_model(model_id)
    reference = Path(model.folder) / "reference"
    input_dir, expected_dir = reference / "input", reference / "expected"
    for folder in (input_dir, expected_dir):
        shutil.rmtree(folder, ignore_errors=True)
    volume = read_volume(LIDC / f"{case}_ct_3mm.nrrd")
    write_series(
        volume.array, volume.affine, input_dir, transfer_syntax=JPEG2000Lossless, seed=int(case),
        patient_name=f"LIDC-IDRI-{case}^", patient_id=f"LIDC-IDRI-{case}",
        study_description=f"LIDC-IDRI-{case} chest CT (DeepCAC 3 mm resampling)",
        series_description="Chest CT 3 mm", file_names="numbered",
    )
    with tempfile.TemporaryDirectory() as tmp:
        result = run(model, input_dir, tmp, outputs=("seg", "json")).results[0]
        if not result.ok:
            raise SystemExit(f"{model_id} failed on its reference input: {result.message}")
        expected_dir.mkdir(parents=True)
        shutil.copy(result.outputs["seg"], expected_dir / "seg.dcm")
    values = {k: round(v, 3) if isinstance(v, float) else v for k, v in result.values.items()}
    (expected_dir / "values.json").write_text(json.dumps(values, indent=2) + "\n")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", choices=sorted(SOURCES))
    args = parser.parse_args()
    print(f"{args.model} reference: {build_reference(args.model)}")


if __name__ == "__main__":
    main()
