"""Bone on CT: every voxel at or above 250 HU. An example of a third-party medhub model package."""

from pathlib import Path

import numpy as np

from medhub.hub.model import FolderModel, Prediction
from medhub.io.volume import Volume

BONE_HU = 250


class BoneThreshold(FolderModel):
    folder = Path(__file__).parent

    def predict(self, volume: Volume) -> Prediction:
        labels = (volume.array >= BONE_HU).astype(np.uint8)
        voxel_ml = float(np.prod(volume.spacing)) / 1000.0
        return Prediction(labels=labels, values={"bone_volume_ml": float(labels.sum()) * voxel_ml})
