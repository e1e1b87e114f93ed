"""The ``cac`` model: heart, coronary calcium lesions, scores.

Pipeline on a :class:`~medhub.io.volume.Volume` (HU, LPS):

1. lungs (``lung-ct``'s classical segmentation), then the heart between them (:mod:`.heart`); no heart in the
   field of view is a refusal ("heart not found"), never a score of 0;
2. contrast check: a median blood pool above :data:`CONTRAST_BLOOD_POOL_HU` is refused;
3. metal (stents, wires, valves) inside the heart region is flagged, listed and masked out;
4. coronary calcium inside the dilated heart region by the 3D U-Net (:mod:`.lesions`);
5. scores with :func:`medhub.cac.scoring.score_calcium` in the "mapped" convention (lesion mask ∩ >= 130 HU,
   2D 8-connected lesions, minimum area 1 mm², Δz = real slice spacing).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from medhub.cac.scoring import ScoringConvention, score_calcium
from medhub.errors import InputError
from medhub.hub.model import FolderModel, Prediction
from medhub.io.volume import Volume
from medhub.models.cac.heart import heart_region, segment_heart
from medhub.models.cac.lesions import segment_calcium

HEART_LABEL, CALCIUM_LABEL = 1, 2

#: Median blood-pool HU above which a scan counts as contrast-enhanced (non-contrast blood is about 30-50 HU).
CONTRAST_BLOOD_POOL_HU = 150.0

#: Voxels at or above this HU inside the heart region are metal (stents, wires, prosthetic valves): dense
#: calcium stays below about 1,500 HU on CT, metal is far above.
METAL_HU = 2000.0

#: mg hydroxyapatite per cm³ per HU; a typical 120 kVp value, used when no calibration phantom is scanned.
DEFAULT_CALIBRATION_MG_CM3_PER_HU = 0.743

#: How far around the heart the lesion search reaches (coronaries run on the heart's surface).
HEART_MARGIN_MM = 5.0


class CAC(FolderModel):
    folder = Path(__file__).parent
    convention = ScoringConvention(mode="mapped")

    def predict(self, volume: Volume) -> Prediction:
        hu = volume.array
        spacing = volume.spacing
        heart = segment_heart(hu, spacing, volume.direction)
        if not heart.found:
            raise InputError(None, heart.reason or "heart not found", code="heart-not-found")
        if heart.blood_pool_hu is not None and heart.blood_pool_hu > CONTRAST_BLOOD_POOL_HU:
            raise InputError(None, f"contrast-enhanced: median blood pool {heart.blood_pool_hu:.0f} HU > "
                             f"{CONTRAST_BLOOD_POOL_HU:.0f} HU; calcium scoring needs non-contrast CT",
                             code="contrast")
        warnings = []
        if heart.coverage != "full":
            warnings.append(f"heart only partly in the field of view ({heart.coverage}); calcium outside it is "
                            "not scored")

        region = heart_region(heart.mask, spacing, margin_mm=HEART_MARGIN_MM)
        metal_mask, metal = find_metal(hu, region, spacing)
        for item in metal:
            warnings.append(f"metal (stent?) of {item['volume_mm3']:.0f} mm³, peak {item['peak_hu']:.0f} HU at "
                            f"slices {item['first_slice']}-{item['last_slice']}: excluded from the score")
        lesions = segment_calcium(hu, spacing, region & ~metal_mask, self.weights_path).astype(bool)
        score = score_calcium(hu, spacing, lesions, self.convention, affine=volume.affine,
                              calibration_factor=DEFAULT_CALIBRATION_MG_CM3_PER_HU,
                              nominal_slice_thickness_mm=volume.meta.get("nominal_slice_thickness_mm"))

        labels = np.zeros(hu.shape, dtype=np.uint8)
        labels[heart.mask] = HEART_LABEL
        labels[lesions & (hu >= self.convention.threshold_hu)] = CALCIUM_LABEL
        values: dict[str, float | str] = {
            "agatston": round(score.agatston, 3),
            "volume_mm3": round(score.volume_mm3, 3),
            "mass_mg": round(score.mass_mg, 3) if score.mass_mg is not None else 0.0,
            "lesion_count": float(score.n_lesions),
            "risk_category": score.category,
            "heart_volume_ml": round(heart.volume_ml, 1),
            "scoring_convention": score.convention.describe(),
        }
        return Prediction(
            labels=labels, values=values, warnings=warnings,
            extra={"score": score.to_dict(), "metal": metal, "heart": {"coverage": heart.coverage,
                   "blood_pool_hu": heart.blood_pool_hu, **heart.info}},
        )


def find_metal(hu: np.ndarray, region: np.ndarray, spacing_mm: tuple[float, float, float]
               ) -> tuple[np.ndarray, list[dict]]:
    """Metal inside ``region``: voxels >= :data:`METAL_HU`, grown by one voxel to take in their blooming.

    Returns the mask to exclude and one JSON-ready record per metal object (slice range, volume, peak HU).
    """
    core = (hu >= METAL_HU) & region
    if not core.any():
        return np.zeros(hu.shape, dtype=bool), []
    grown = ndi.binary_dilation(core, structure=ndi.generate_binary_structure(3, 1)) & (hu >= 130)
    components, _ = ndi.label(grown, structure=np.ones((3, 3, 3), bool))
    voxel_mm3 = float(np.prod(spacing_mm))
    records = []
    for index, box in enumerate(ndi.find_objects(components), start=1):
        part = components[box] == index
        records.append({
            "first_slice": int(box[0].start), "last_slice": int(box[0].stop - 1),
            "volume_mm3": round(float(part.sum()) * voxel_mm3, 1),
            "peak_hu": float(hu[box][part].max()),
        })
    return grown, records
