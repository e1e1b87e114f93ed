"""Train and export ``brain-age`` on generated brains (``medhub.synth.brain``).

    python -m medhub.models.brain_age.train [--sessions 48] [--steps 400] [--checkpoint CKPT]

Generates ``--sessions`` 1 mm sessions (T1, T2; ages 20-90 that drive atrophy; every second one the thick-slice
"clinical" variant), runs ``medhub finetune --task brain-age`` on all but eight (L1 on the whole brain at 2 mm),
scores the eight held out, and exports into this folder with ``medhub export-model``
(:func:`medhub.brain.hub.train_on_generated_brains`). Then ``python scripts/make_reference.py brain-age`` rebuilds
the reference case.
"""

from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).resolve().parent
VERSION = "0.1.0"


def main() -> None:
    from medhub.brain.hub import train_on_generated_brains

    card = train_on_generated_brains(
        FOLDER, __doc__, task="brain-age", model_id="brain-age", version=VERSION, first_seed=30_000,
        what="the MNI152 template deformed and atrophied by an age drawn in 20-90 years, pseudo-sequences",
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
