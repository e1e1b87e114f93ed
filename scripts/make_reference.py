"""Build a model's reference case for `medhub verify` (the lung-ct one is also the `medhub demo` input).

The CT models' reference input is a real LIDC-IDRI chest CT (TCIA, CC BY 3.0) as resampled to 3 mm by DeepCAC,
taken from ../shared/data and written as a JPEG 2000 lossless DICOM CT series inside the model's folder. The brain
models' is a generated session (medhub.synth.brain, 2 mm; real BraTS scans may not be redistributed) written as a
DICOM MR study, one JPEG 2000 lossless series per sequence, named as a scanner would. The face models' is
scikit-image's bundled astronaut photograph (NASA, public domain) as a JPEG. The expected outputs
are the SEG and values that the current model version produces on it; `medhub verify` then checks that a fresh
install reproduces them within the model's `reference/tolerances.yaml`.

Run from the repository root: `python scripts/make_reference.py lung-ct` (or `cac`, `brain-tumor`, `brain-infarct`,
`brain-age`, `face-age`).
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
#: brain model id -> keyword arguments of the generated brain used as its reference input.
BRAINS = {"brain-tumor": {"seed": 7001, "mass": True, "infarct": False},
          "brain-infarct": {"seed": 7002, "mass": False, "infarct": True},
          "brain-age": {"seed": 7003, "mass": False, "infarct": False, "age": 71.0}}
#: photo model ids (reference input: scikit-image's astronaut).
PHOTOS = ("face-age",)


def _write_lidc_input(model_id: str, input_dir: Path) -> None:
    case = SOURCES[model_id]
    volume = read_volume(LIDC / f"{case}_ct_3mm.nrrd")
    write_series(
        volume.array, volume.affine, input_dir, transfer_syntax=JPEG2000Lossless, seed=int(case),
        patient_name=f"LIDC-IDRI-{case}^", patient_id=f"LIDC-IDRI-{case}",
        study_description=f"LIDC-IDRI-{case} chest CT (DeepCAC 3 mm resampling)",
        series_description="Chest CT 3 mm", file_names="numbered",
    )


def _write_brain_input(model_id: str, input_dir: Path, sequences: list[str]) -> None:
    from medhub.synth.brain import make_brain, write_dicom_session

    kwargs = dict(BRAINS[model_id])
    seed = kwargs.pop("seed")
    brain = make_brain(seed, resolution_mm=2.0, sequences=tuple(sequences), **kwargs)
    write_dicom_session(input_dir, brain, seed=seed % 100, transfer_syntax=JPEG2000Lossless,
                        patient_id=f"MEDHUB-SYNTH-{model_id.upper()}")


def _write_photo_input(input_dir: Path) -> None:
    from PIL import Image
    from skimage import data

    input_dir.mkdir(parents=True)
    Image.fromarray(data.astronaut()).save(input_dir / "astronaut.jpg", quality=92)


def build_reference(model_id: str) -> dict:
    model = get_model(model_id)
    reference = Path(model.folder) / "reference"
    input_dir, expected_dir = reference / "input", reference / "expected"
    for folder in (input_dir, expected_dir):
        shutil.rmtree(folder, ignore_errors=True)
    if model_id in PHOTOS:
        _write_photo_input(input_dir)
    elif model_id in BRAINS:
        _write_brain_input(model_id, input_dir, [s.name for s in model.card.inputs.sequences])
    else:
        _write_lidc_input(model_id, input_dir)
    with tempfile.TemporaryDirectory() as tmp:
        outputs = ("json",) if model_id in PHOTOS else ("seg", "json")
        result = run(model, input_dir, tmp, outputs=outputs).results[0]
        if not result.ok:
            raise SystemExit(f"{model_id} failed on its reference input: {result.message}")
        expected_dir.mkdir(parents=True)
        if "seg" in result.outputs:
            shutil.copy(result.outputs["seg"], expected_dir / "seg.dcm")
    values = {k: round(v, 3) if isinstance(v, float) else v for k, v in result.values.items()}
    (expected_dir / "values.json").write_text(json.dumps(values, indent=2) + "\n")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", choices=sorted({*SOURCES, *BRAINS, *PHOTOS}))
    args = parser.parse_args()
    print(f"{args.model} reference: {build_reference(args.model)}")


if __name__ == "__main__":
    main()
