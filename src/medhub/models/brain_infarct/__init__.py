"""``brain-infarct``: infarct probability on DWI, ADC and FLAIR (trained on generated brains)."""

from pathlib import Path

from medhub.brain.hub import BrainTaskModel


class BrainInfarct(BrainTaskModel):
    """A finetuned 3D U-Net exported by ``medhub export-model``; README.md beside this file tells its story."""

    folder = Path(__file__).parent


__all__ = ["BrainInfarct"]
