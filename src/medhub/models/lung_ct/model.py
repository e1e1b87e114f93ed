"""The ``lung-ct`` model: right and left lung on CT, with their volumes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medhub.hub.model import FolderModel, Prediction
from medhub.io.volume import Volume
from medhub.models.lung_ct.segment import LEFT, RIGHT, segment_lungs


class LungCT(FolderModel):
    """Classical lung segmentation (see :mod:`medhub.models.lung_ct.segment` and the README beside it).

    ``predict`` returns a uint8 label map on the input grid (1 = right lung, 2 = left lung, on the patient's
    sides, found from the volume's affine) and the values ``right_lung_volume_ml``, ``left_lung_volume_ml`` and
    ``total_lung_volume_ml``.
    """

    folder = Path(__file__).parent

    #: Below this a lung is reported as not found (ml).
    min_lung_ml = 5.0

    def predict(self, volume: Volume) -> Prediction:
        labels, info = segment_lungs(volume.array, volume.spacing, volume.direction, return_info=True)
        voxel_ml = abs(float(np.linalg.det(volume.affine[:3, :3]))) / 1000.0
        right = float(np.count_nonzero(labels == RIGHT)) * voxel_ml
        left = float(np.count_nonzero(labels == LEFT)) * voxel_ml
        warnings = []
        if right < self.min_lung_ml and left < self.min_lung_ml:
            warnings.append("no lung found (the scan may not cover the chest)")
        elif right < self.min_lung_ml or left < self.min_lung_ml:
            missing = "right" if right < self.min_lung_ml else "left"
            warnings.append(f"only one lung found: the {missing} lung is missing or under {self.min_lung_ml:g} ml")
        extra = {
            "airway_found": info["airway_found"],
            "airway_ml": round(info["airway_ml"], 1),
            "work_spacing_mm": [round(float(s), 3) for s in info["work_spacing_mm"]],
            "air_components": [
                {k: (round(v, 3) if isinstance(v, float) else v) for k, v in c.items()}
                for c in info["components"]
            ],
        }
        return Prediction(
            labels=labels,
            values={
                "right_lung_volume_ml": round(right, 1),
                "left_lung_volume_ml": round(left, 1),
                "total_lung_volume_ml": round(right + left, 1),
            },
            warnings=warnings,
            extra=extra,
        )
