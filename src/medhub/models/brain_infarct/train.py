"""Train and export ``brain-infarct`` on generated brains (``medhub.synth.brain``).

    python -m medhub.models.brain_infarct.train [--sessions 48] [--steps 400] [--checkpoint CKPT]

Generates ``--sessions`` 1 mm sessions (DWI b1000, ADC, FLAIR; every other one with an infarct in a middle cerebral
artery territory; every second one the thick-slice "clinical" variant), runs ``medhub finetune --task infarct`` on
all but eight (cross-entropy on the whole brain at 2 mm), scores the eight held out, and exports into this folder
with ``medhub export-model``. Then ``python scripts/make_reference.py brain-infarct`` rebuilds the reference case.
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
    with tempfile.TemporaryDirectory(prefix="medhub-train-brain-infarct-") as work:
        data = write_task_dataset(Path(work) / "data", "infarct", TASKS["infarct"].sequences, args.sessions,
                                  first_seed=20_000, out_of_domain=0.5)
        card = train_and_export(
            FOLDER, data, work, task="infarct", model_id="brain-infarct", version=VERSION,
            shots=args.sessions - HELD_OUT, steps=args.steps, checkpoint=args.checkpoint,
            trained_on=f"{args.sessions - HELD_OUT} GENERATED brain MRI sessions (medhub.synth.brain, seeds from "
                       "20000: the MNI152 template deformed, pseudo-sequences, half with an infarct, half thick-"
                       f"slice); {origin}, {args.steps} steps on 2 CPU cores. No patient data.",
            card={
                "name": "BrainInfarct",
                "description": (
                    "Gives the probability that a session (DWI b1000, ADC and FLAIR) shows a brain infarct, and "
                    "'present' or 'absent' at 0.5. A tiny 3D U-Net encoder with a pooled head sees the whole "
                    "brain at 2 mm after the same preprocessing as in training (RAS, crop, z-normalization, 1 mm, "
                    "then 2 mm blocks)."),
                "intended_use": (
                    "Plumbing and demonstration: how a finetuned brain classifier runs on the hub, DICOM in and "
                    "SR out. Its figures on generated brains say nothing about patients. Not for clinical use."),
                "limitations": (
                    "Trained only on generated brains whose infarcts are bright-on-DWI, dark-on-ADC shapes in "
                    "one vascular territory: it has never seen a real infarct, a real scanner or a mimic "
                    "(abscess, tumour, artefact). Its probability is not calibrated on real data."),
                "reference": {"input": "reference/input", "expected": "reference/expected"},
            })
    print(f"exported {card.id} {card.version} to {FOLDER}; {card.evaluation}")


if __name__ == "__main__":
    main()
