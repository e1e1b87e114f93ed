"""Train and export ``brain-age`` on generated brains (``medhub.synth.brain``).

    python -m medhub.models.brain_age.train [--sessions 48] [--steps 400] [--checkpoint CKPT]

Generates ``--sessions`` 1 mm sessions (T1, T2; ages 20-90 that drive atrophy; every second one the thick-slice
"clinical" variant), runs ``medhub finetune --task brain-age`` on all but eight (L1 on the whole brain at 2 mm),
scores the eight held out, and exports into this folder
with ``medhub export-model``. Then ``python scripts/make_reference.py brain-age`` rebuilds the reference case.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

FOLDER = Path(__file__).resolve().parent
VERSION = "0.1.0"
HELD_OUT = 8


def main() -> None:
    from medhub.brain.finetuning import TASKS
    from medhub.brain.hub import train_and_export
    from medhub.synth.brain import write_task_dataset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=48)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--checkpoint", type=Path)
    args = parser.parse_args()
    origin = f"finetuned from {args.checkpoint.name}" if args.checkpoint else "trained from random weights"
    with tempfile.TemporaryDirectory(prefix="medhub-train-brain-age-") as work:
        data = write_task_dataset(Path(work) / "data", "brain-age", TASKS["brain-age"].sequences, args.sessions,
                                  first_seed=30_000, out_of_domain=0.5)
        card = train_and_export(
            FOLDER, data, work, task="brain-age", model_id="brain-age", version=VERSION,
            shots=args.sessions - HELD_OUT, steps=args.steps, checkpoint=args.checkpoint,
            trained_on=f"{args.sessions - HELD_OUT} GENERATED brain MRI sessions (medhub.synth.brain, seeds from "
                       "30000: the MNI152 template deformed and atrophied by an age drawn in 20-90 years, pseudo-"
                       f"sequences, half thick-slice); {origin}, {args.steps} steps on 2 CPU cores. No patient data.",
            card={
                "name": "BrainAge",
                "description": (
                    "Estimates brain age in years from a T1 and a T2 series of one session. A tiny 3D U-Net "
                    "encoder with a pooled regression head sees the whole brain at 2 mm after the same "
                    "preprocessing as in training (RAS, crop, z-normalization, 1 mm, then 2 mm blocks)."),
                "intended_use": (
                    "Plumbing and demonstration: how a finetuned brain regressor runs on the hub, DICOM in and "
                    "SR out. Its figures on generated brains say nothing about patients. Not for clinical use."),
                "limitations": (
                    "Trained only on generated brains whose 'ageing' is a simple atrophy model (grey and white "
                    "matter shrinking into CSF): it has never seen a real brain, and its years are not a real "
                    "brain age. Outside 20-90 years it extrapolates."),
                "reference": {"input": "reference/input", "expected": "reference/expected"},
            })
    print(f"exported {card.id} {card.version} to {FOLDER}; {card.evaluation}")


if __name__ == "__main__":
    main()
