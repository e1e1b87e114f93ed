"""The ``cac`` model: heart, coronary calcium lesions, scores.

Pipeline on a :class:`~medhub.io.volume.Volume` (HU, LPS), viewed in canonical orientation
(:mod:`medhub.io.orientation`) so that the same anatomy gives the same result whatever the file's axis order:

1. lungs (``lung-ct``'s classical segmentation), then the heart between them (:mod:`.heart`); no heart in the
   field of view is a refusal ("heart not found"), never a score of 0;
2. contrast check: a median blood pool above :data:`CONTRAST_BLOOD_POOL_HU` is refused;
3. metal (stents, wires, valves) inside the heart region is flagged, listed and masked out;
4. coronary calcium inside the dilated heart region by the 3D U-Net (:mod:`.lesions`; a lesion mostly outside the
   heart mask itself needs a confident network), each lesion cut slice by slice at its half-maximum HU to undo the
   PSF's spread of dense calcium; lesions touching lung are dropped (pulmonary), and so are specks that noise
   alone explains (under 4 mm² and under 4.5 noise SDs above the heart's soft tissue);
5. scores with :func:`medhub.cac.scoring.score_calcium` in the "mapped" convention (lesion mask ∩ >= 130 HU,
   2D 8-connected lesions, minimum area 1 mm², Δz = real slice spacing);
6. beside it, a research estimate of the blur-free score (:mod:`.restoration`, value ``agatston_restored``),
   only for scans like those it was trained on; the risk category stays the image-based one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from medhub.cac.scoring import Lesion, ScoringConvention, score_calcium
from medhub.errors import InputError
from medhub.hub.model import FolderModel, Prediction, Table
from medhub.io.orientation import canonical_volume, undo_canonical
from medhub.io.volume import Volume
from medhub.masks import crop_box
from medhub.models.cac.heart import heart_region, segment_heart
from medhub.models.cac.lesions import (
    drop_lung_contact,
    drop_noise_like,
    half_maximum_footprint,
    segment_calcium,
    soft_tissue_noise,
)
from medhub.models.cac.restoration import restore_agatston

HEART_LABEL, CALCIUM_LABEL = 1, 2

#: How the voxel indices in ``Prediction.extra`` (lesion slices and centroids) count: in the canonical order, which
#: is the stored order of a standard axial DICOM series. The LPS millimetre positions hold whatever the order.
INDEX_ORDER = ("canonical (medhub.io.orientation): slice from the feet up, row from anterior, column from the "
               "patient's right")

#: Median blood-pool HU above which a scan counts as contrast-enhanced (non-contrast blood is about 30-50 HU).
CONTRAST_BLOOD_POOL_HU = 150.0

#: Voxels at or above this HU inside the heart region are metal (stents, wires, prosthetic valves): dense calcium
#: stays below about 1,500 HU on CT, while a stent's thin struts, blurred by a clinical kernel's PSF, still peak at
#: 1,700-2,500 HU (measured on the generated stent phantoms; a 2,000 HU cut missed a third of them).
METAL_HU = 1500.0
#: Voxels around metal taken in with it: its blooming (PSF and beam hardening) spreads about two voxels.
METAL_BLOOM_VOXELS = 2

#: mg hydroxyapatite per cm³ per HU; a typical 120 kVp value, used when no calibration phantom is scanned.
DEFAULT_CALIBRATION_MG_CM3_PER_HU = 0.743

#: How far around the heart mask the lesion search reaches. Coronaries run on the heart's surface, but the classical
#: heart mask falls short of the heart's base and of the aortic root (left main) by up to 9 mm on the phantoms; the
#: lesion network was trained on regions 3-12 mm around the heart.
HEART_MARGIN_MM = 10.0


class CAC(FolderModel):
    folder = Path(__file__).parent
    convention = ScoringConvention(mode="mapped")

    def predict(self, volume: Volume) -> Prediction:
        # Every step sees the scan in canonical order (axis 0 the axial slices, feet first; rows anterior to
        # posterior; columns right to left), whatever order the file stored it in: the network was trained in that
        # order and Agatston lesions are axial. A RAS NIfTI of LIDC 0987 scored 72 instead of 108 without it.
        volume, orientation = canonical_volume(volume)
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
        tissue_hu, noise_sd = soft_tissue_noise(hu, heart.mask)
        lesions = half_maximum_footprint(hu, segment_calcium(hu, spacing, region & ~metal_mask, self.weights_path,
                                                          heart_mask=heart.mask, soft_tissue_hu=tissue_hu))
        lesions, dropped = drop_lung_contact(hu, lesions, spacing)
        lesions, noise_like = drop_noise_like(hu, lesions, spacing, tissue_hu, noise_sd)
        dropped += noise_like
        score = score_calcium(hu, spacing, lesions, self.convention, affine=volume.affine,
                              calibration_factor=DEFAULT_CALIBRATION_MG_CM3_PER_HU,
                              nominal_slice_thickness_mm=volume.meta.get("nominal_slice_thickness_mm"))

        calcium = lesions & (hu >= self.convention.threshold_hu)
        thickness = volume.meta.get("nominal_slice_thickness_mm") or spacing[0]
        restored = restore_agatston(hu, spacing, float(thickness), calcium)
        if restored.reason is not None:
            warnings.append(f"restored Agatston (research estimate) not computed: {restored.reason}")

        labels = heart.mask.astype(np.uint8) * np.uint8(HEART_LABEL)
        box = crop_box(lesions, (0, 0, 0))
        if box is not None:
            labels[box][calcium[box]] = CALCIUM_LABEL
        labels = np.ascontiguousarray(undo_canonical(labels, orientation))  # back to the file's order
        values: dict[str, float | str] = {
            "agatston": round(score.agatston, 3),
            "volume_mm3": round(score.volume_mm3, 3),
            "mass_mg": round(score.mass_mg, 3) if score.mass_mg is not None else 0.0,
            "lesion_count": float(score.n_lesions),
            "risk_category": score.category,
            "heart_volume_ml": round(heart.volume_ml, 1),
            "scoring_convention": score.convention.describe(),
        }
        if restored.agatston is not None:
            values["agatston_restored"] = restored.agatston
        return Prediction(
            labels=labels, values=values, warnings=warnings,
            extra={"index_order": INDEX_ORDER, "score": score.to_dict(), "metal": metal, "dropped_lesions": dropped,
                   "heart": {"coverage": heart.coverage, "blood_pool_hu": heart.blood_pool_hu,
                             "soft_tissue_hu": round(tissue_hu, 1) if np.isfinite(tissue_hu) else None,
                             "noise_sd_hu": round(noise_sd, 1) if np.isfinite(noise_sd) else None,
                             **heart.info},
                   "restoration": {"agatston": restored.agatston, "edge_sigma_mm": restored.edge_sigma_mm,
                                   "reason": restored.reason, "groups": restored.groups}},
            tables={"lesions": Table(Lesion.COLUMNS, [lesion.to_dict() for lesion in score.lesions])},
        )


def find_metal(hu: np.ndarray, region: np.ndarray, spacing_mm: tuple[float, float, float]
               ) -> tuple[np.ndarray, list[dict]]:
    """Metal inside ``region``: voxels >= :data:`METAL_HU`, grown by :data:`METAL_BLOOM_VOXELS` to take in their
    blooming, together with the whole ``>= 130 HU`` lesion (26-connected) they lie in: struts that blur leaves under
    the metal level belong to the same stent, and the issue excludes a stent's lesion whole. Dense cortical bone
    reaches the same HU; an object that is part of bone (:func:`is_part_of_bone`) is not metal.

    Returns the mask to exclude and one JSON-ready record per metal object (slice range, volume, peak HU).
    """
    grown = np.zeros(hu.shape, dtype=bool)
    within = crop_box(region, (METAL_BLOOM_VOXELS,) * 3)  # work on the region's box, not the whole scan
    if within is None:
        return grown, []
    offset = [b.start for b in within]
    core = (hu[within] >= METAL_HU) & region[within]
    if not core.any():
        return grown, []
    calcified = hu[within] >= 130
    lesions, _ = ndi.label(calcified, structure=np.ones((3, 3, 3), bool))
    holding_metal = np.isin(lesions, np.unique(lesions[core]))
    candidates = (ndi.binary_dilation(core, structure=ndi.generate_binary_structure(3, 1),
                                      iterations=METAL_BLOOM_VOXELS) & calcified) | holding_metal
    components, _ = ndi.label(candidates, structure=np.ones((3, 3, 3), bool))
    voxel_mm3 = float(np.prod(spacing_mm))
    records = []
    for index, local in enumerate(ndi.find_objects(components), start=1):
        box = tuple(slice(b.start + o, b.stop + o) for b, o in zip(local, offset, strict=True))
        if is_part_of_bone(hu, box, spacing_mm):
            continue
        part = components[local] == index
        grown[box] |= part
        records.append({
            "first_slice": int(box[0].start), "last_slice": int(box[0].stop - 1),
            "volume_mm3": round(float(part.sum()) * voxel_mm3, 1),
            "peak_hu": float(hu[box][part].max()),
        })
    return grown, records


#: Bone is a connected >= BONE_HU structure bigger than BONE_MIN_MM3 (a stent's struts and blooming stay under
#: about 1 cm³) or one that runs out of a BONE_CONTEXT_MM box around the object (ribs, spine, sternum).
BONE_HU, BONE_MIN_MM3, BONE_CONTEXT_MM = 200.0, 3000.0, 20.0


def is_part_of_bone(hu: np.ndarray, box: tuple[slice, ...], spacing_mm: tuple[float, float, float]) -> bool:
    """Whether the dense object in ``box`` (index slices) belongs to bone rather than to a device."""
    pad = [int(np.ceil(BONE_CONTEXT_MM / s)) for s in spacing_mm]
    context = tuple(slice(max(b.start - p, 0), min(b.stop + p, n)) for b, p, n in zip(box, pad, hu.shape,
                                                                                     strict=True))
    dense, _ = ndi.label(hu[context] >= BONE_HU, structure=np.ones((3, 3, 3), bool))
    inner = tuple(slice(b.start - c.start, b.stop - c.start) for b, c in zip(box, context, strict=True))
    ids = np.unique(dense[inner])
    ids = ids[ids > 0]
    if not len(ids):
        return False
    structure = np.isin(dense, ids)
    touches_edge = any(
        (structure.take(0, axis=a).any() and context[a].start > 0)
        or (structure.take(-1, axis=a).any() and context[a].stop < hu.shape[a])
        for a in range(3)
    )
    return touches_edge or float(structure.sum()) * float(np.prod(spacing_mm)) > BONE_MIN_MM3
