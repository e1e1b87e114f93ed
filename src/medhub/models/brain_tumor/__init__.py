"""``brain-tumor``: whole brain tumour on FLAIR + post-contrast T1 (trained on three real BraTS cases)."""

from pathlib import Path

from medhub.brain.hub import BrainTaskModel


class BrainTumor(BrainTaskModel):
    """A finetuned 3D U-Net exported by ``medhub export-model``; README.md beside this file tells its story."""

    folder = Path(__file__).parent


__all__ = ["BrainTumor"]
