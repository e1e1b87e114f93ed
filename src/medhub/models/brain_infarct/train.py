"""Train and export ``brain-infarct`` on generated brains (``medhub.synth.brain``).

    python -m medhub.models.brain_infarct.train [--sessions 48] [--steps 400] [--checkpoint CKPT]

Generates ``--sessions`` 1 mm sessions (DWI b1000, ADC, FLAIR; every other one with an infarct in a middle cerebral
artery territory; every second one the thick-slice "clinical" variant), runs ``medhub finetune --task infarct`` on
all but eight (cross-entropy on the whole brain at 2 mm), scores the eight held out, and exports into this folder
with ``medhub export-model`` (:func:`medhub.brain.hub.train_on_generated_brains`). Then ``python
scripts/make_reference.py brain-infarct`` rebuilds the reference case.
"""

from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).resolve().parent
VERSION = "0.1.0"


def main() -> None:
    from medhub.brain.hub import train_on_generated_brains

    card = train_on_generated_brains(
        FOLDER, __doc__, task="infarct", model_id="brain-infarct", version=VERSION, first_seed=20_000,
        what="the MNI152 template deformed, pseudo-sequences, every other one with an infarct in a middle cerebral "
             "artery territory",
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
