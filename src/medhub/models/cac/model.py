"""The ``cac`` model: heart, coronary calcium lesions, scores.

Pipeline on a :class:`~medhub.io.volume.Volume` (HU, LPS), viewed in canonical orientation
(:mod:`medhub.io.orientation`) so that the same anatomy gives the same result whatever the file's axis order:

1. lungs (``lung-ct``'s classical segmentation), then the heart between them (:mod:`.heart`); no heart in the
   field of view is a refusal ("heart not found"), never a score of 0;
2. contrast check: a median blood pool above :data:`CONTRAST_BLOOD_POOL_HU` is refused;
3. metal (stents, wires, valves) inside the heart region is flagged, listed and masked out;
4. coronary calcium inside the dilated heart region: every ``>= 130 HU`` candidate (:mod:`.candidates`) judged by
   the classifier (:mod:`.classifier`), each accepted lesion cut slice by slice at its half-maximum HU to undo the
   PSF's spread of dense calcium where the grid resolves it (:func:`.lesions.scored_footprint`); lesions touching
   lung are dropped (pulmonary), and so are specks that noise alone explains (under 4 mm² and under 4.5 noise SDs
   above the heart's soft tissue);
5. scores with :func:`medhub.cac.scoring.score_calcium` in the "mapped" convention (lesion mask ∩ >= 130 HU,
   2D 8-connected lesions, minimum area 1 mm², Δz = real slice spacing);
6. beside it, a research estimate of the blur-free score (:mod:`.restoration`, value ``agatston_restored``),
   only for scans like those it was trained on; the risk category stays the image-based one.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from medhub.cac.scoring import CalciumScore, ScoringConvention, score_calcium
from medhub.errors import InputError
from medhub.hub.model import FolderModel, Prediction, Table
from medhub.io.orientation import canonical_volume, undo_canonical
from medhub.io.volume import Volume
from medhub.masks import crop_box
from medhub.models.cac.candidates import Candidates, find_candidates
from medhub.models.cac.classifier import CandidateClassifier
from medhub.models.cac.heart import HeartResult, heart_region, segment_heart
from medhub.models.cac.lesions import (
    drop_lung_contact,
    drop_noise_like,
    footprint_rule,
    scored_footprint,
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

#: How far around the heart mask the candidate search reaches. Coronaries run on the heart's surface, but the
#: classical heart mask falls short of the heart's base and of the aortic root (left main) by up to 9 mm on the
#: phantoms.
HEART_MARGIN_MM = 10.0


class CAC(FolderModel):
    folder = Path(__file__).parent
    convention = ScoringConvention(mode="mapped")

    @property
    def classifier_path(self) -> Path:
        """The candidate classifier (the card's weights): every >= 130 HU component is judged by it (since 0.8.0)."""
        return self.folder / "weights" / "cac_candidates.txt.gz"

    def predict(self, volume: Volume) -> Prediction:
        # Every step sees the scan in canonical order (axis 0 the axial slices, feet first; rows anterior to
        # posterior; columns right to left), whatever order the file stored it in: the classifier was trained in
        # that order and Agatston lesions are axial. A RAS NIfTI of LIDC 0987 scored 72 instead of 108 without it.
        volume, orientation = canonical_volume(volume)
        hu = volume.array
        spacing = volume.spacing
        scan = prepare_scan(hu, spacing, volume.direction)
        heart, metal = scan.heart, scan.metal
        tissue_hu, noise_sd = scan.soft_tissue_hu, scan.noise_sd
        warnings = []
        if heart.coverage != "full":
            warnings.append(f"heart only partly in the field of view ({heart.coverage}); calcium outside it is "
                            "not scored")
        for item in metal:
            warnings.append(f"metal (stent?) of {item['volume_mm3']:.0f} mm³, peak {item['peak_hu']:.0f} HU at "
                            f"slices {item['first_slice']}-{item['last_slice']}: excluded from the score")
        findings: dict[str, float] = {}
        judged = judge_candidates(hu, spacing, scan, self.classifier_path)
        lesions, dropped, candidate_rows = judged.coronary, judged.dropped, judged.rows
        for kind, mask in judged.non_coronary.items():
            findings[f"{kind}_calcium_agatston"] = round(score_calcium(
                hu, spacing, mask, self.convention).agatston, 3) if mask.any() else 0.0
        score = score_calcium(hu, spacing, lesions, self.convention, affine=volume.affine,
                              calibration_factor=DEFAULT_CALIBRATION_MG_CM3_PER_HU,
                              nominal_slice_thickness_mm=volume.meta.get("nominal_slice_thickness_mm"))
        lesions = np.asarray(lesions) > 0  # the candidate path gives candidate ids, to score each

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
        values.update(findings)
        per_candidate = candidate_agatston(score)
        for row in candidate_rows:
            row["agatston"] = round(per_candidate.get(row["id"], 0.0), 3)
        table = Table(CANDIDATE_COLUMNS, [{**row, **lps_centroid(row, volume.affine)} for row in candidate_rows])
        return Prediction(
            labels=labels, values=values, warnings=warnings,
            extra={"index_order": INDEX_ORDER, "score": score.to_dict(), "lesion_footprint": footprint_rule(spacing),
                   "metal": metal, "dropped_lesions": dropped,
                   "heart": {"coverage": heart.coverage, "blood_pool_hu": heart.blood_pool_hu,
                             "soft_tissue_hu": round(tissue_hu, 1) if np.isfinite(tissue_hu) else None,
                             "noise_sd_hu": round(noise_sd, 1) if np.isfinite(noise_sd) else None,
                             **heart.info},
                   "restoration": {"agatston": restored.agatston, "edge_sigma_mm": restored.edge_sigma_mm,
                                   "reason": restored.reason, "groups": restored.groups}},
            tables={"lesions": table},
        )


@dataclass
class ScanContext:
    """What every lesion method starts from: the heart, its region (the heart grown by :data:`HEART_MARGIN_MM`),
    the metal found in it (mask and records) and the heart's soft-tissue level and noise SD (HU)."""

    heart: HeartResult
    region: np.ndarray
    metal_mask: np.ndarray
    metal: list[dict]
    soft_tissue_hu: float
    noise_sd: float

    def candidates(self, hu: np.ndarray, spacing: tuple[float, float, float]) -> Candidates:
        """The scan's calcium candidates (:func:`~.candidates.find_candidates`): in the region, metal excluded."""
        return find_candidates(hu, spacing, self.region & ~self.metal_mask, self.heart.mask,
                               soft_tissue_hu=self.soft_tissue_hu, noise_sd=self.noise_sd)


def prepare_scan(hu: np.ndarray, spacing: tuple[float, float, float], direction: np.ndarray) -> ScanContext:
    """Heart, region, contrast check, metal and noise of a canonical scan (see the module docstring, steps 1-3);
    raises :class:`~medhub.errors.InputError` when the heart is not found or the scan has contrast."""
    heart = segment_heart(hu, spacing, direction)
    if not heart.found:
        raise InputError(None, heart.reason or "heart not found", code="heart-not-found")
    if heart.blood_pool_hu is not None and heart.blood_pool_hu > CONTRAST_BLOOD_POOL_HU:
        raise InputError(None, f"contrast-enhanced: median blood pool {heart.blood_pool_hu:.0f} HU > "
                         f"{CONTRAST_BLOOD_POOL_HU:.0f} HU; calcium scoring needs non-contrast CT",
                         code="contrast")
    region = heart_region(heart.mask, spacing, margin_mm=HEART_MARGIN_MM)
    metal_mask, metal = find_metal(hu, region, spacing)
    tissue_hu, noise_sd = soft_tissue_noise(hu, heart.mask)
    return ScanContext(heart, region, metal_mask, metal, tissue_hu, noise_sd)


#: Columns of ``lesions.csv`` on the candidate path: one row per candidate, with its decision.
CANDIDATE_COLUMNS = (
    "id", "first_slice", "last_slice", "centroid_k", "centroid_j", "centroid_i", "centroid_x_mm", "centroid_y_mm",
    "centroid_z_mm", "volume_mm3", "max_area_mm2", "peak_hu", "heart_depth_mm", "p_coronary", "kind", "accepted",
    "counted", "reason", "agatston")


@dataclass
class JudgedCandidates:
    """The candidate path's result: ``coronary`` (int32 candidate ids on the scan's grid, where counted: the
    scored footprint, past the lung and noise rules), the non-coronary findings by kind (bool masks, cut the same way),
    the records of lesions the rules dropped, and one row per candidate (:data:`CANDIDATE_COLUMNS`, without the
    LPS centroid and the Agatston score, which the caller adds)."""

    coronary: np.ndarray
    non_coronary: dict[str, np.ndarray]
    dropped: list[dict]
    rows: list[dict]


#: Non-coronary kinds reported as findings of their own.
FINDING_KINDS = ("aortic", "valve")


def judge_candidates(hu: np.ndarray, spacing: tuple[float, float, float], scan: ScanContext,
                     classifier_path: Path) -> JudgedCandidates:
    """Every calcium candidate of the scan (:func:`~.candidates.find_candidates`), judged by the classifier
    (:mod:`.classifier`); the accepted ones keep their scored footprint (:func:`.lesions.scored_footprint`) and pass
    the lung and noise rules."""
    candidates = scan.candidates(hu, spacing)
    decisions = cached_classifier(classifier_path).predict(candidates.table)
    accepted = decisions["accepted"].to_numpy(bool) if len(decisions) else np.zeros(0, bool)
    footprint = scored_footprint(hu, candidates.mask(accepted), spacing)
    after_lung, dropped = drop_lung_contact(hu, footprint, spacing)
    counted, noise_like = drop_noise_like(hu, after_lung, spacing, scan.soft_tissue_hu, scan.noise_sd)
    non_coronary = {kind: scored_footprint(hu, candidates.mask(
        (~accepted) & (decisions["kind"].to_numpy() == kind)), spacing) if len(decisions) else np.zeros(hu.shape, bool)
        for kind in FINDING_KINDS}
    # counted voxels by candidate id; the half-maximum cut may take in a voxel next to its candidate
    ids = np.zeros(hu.shape, np.int32)
    box = candidates.box
    if counted.any():
        own = candidates.labels
        ids[box] = np.where(counted[box], np.where(own > 0, own, ndi.grey_dilation(own, size=(3, 3, 3))), 0)
    rows = []
    objects = ndi.find_objects(candidates.labels) if len(candidates) else []
    for i, (features, decision, where) in enumerate(zip(candidates.table.itertuples(index=False),
                                                        decisions.itertuples(index=False), objects, strict=True),
                                                    start=1):
        local = tuple(slice(w.start + b.start, w.stop + b.start) for w, b in zip(where, box, strict=True))
        own = candidates.labels[where] == i
        reason = decision.reason
        is_counted = bool(decision.accepted) and bool((ids[local][own] == i).any())
        if decision.accepted and not is_counted:
            reason = ("pulmonary: lung contact" if not after_lung[local][own].any() else "noise-like speck") \
                if footprint[local][own].any() else "nothing left at its half-maximum"
        rows.append({"id": i, "first_slice": features.first_slice, "last_slice": features.last_slice,
                     **dict(zip(("centroid_k", "centroid_j", "centroid_i"), features.centroid_index, strict=True)),
                     "volume_mm3": round(features.volume_mm3, 2), "max_area_mm2": round(features.max_area_mm2, 2),
                     "peak_hu": features.peak_hu, "heart_depth_mm": round(features.heart_depth_mm, 1),
                     "p_coronary": round(float(decision.p_coronary), 4), "kind": decision.kind,
                     "accepted": bool(decision.accepted), "counted": is_counted, "reason": reason})
    return JudgedCandidates(ids, non_coronary, dropped + noise_like, rows)


@lru_cache(maxsize=2)
def _classifier(path: str, mtime: float) -> CandidateClassifier:
    return CandidateClassifier.load(path)


def cached_classifier(path: Path) -> CandidateClassifier:
    """The classifier at ``path``, loaded once per process (per file version), as the restoration's network is."""
    path = Path(path).resolve()
    return _classifier(str(path), path.stat().st_mtime)


def candidate_agatston(score: CalciumScore) -> dict[int, float]:
    """Agatston points per candidate id, from a score computed on the candidate-id map."""
    out: dict[int, float] = {}
    for lesion in score.lesions:
        if lesion.mask_label:
            out[int(lesion.mask_label)] = out.get(int(lesion.mask_label), 0.0) + lesion.agatston
    return out


def lps_centroid(row: dict, affine: np.ndarray) -> dict[str, float]:
    """The row's canonical centroid index in LPS mm (``centroid_x_mm`` ...)."""
    point = np.asarray(affine, float) @ np.array([row["centroid_k"], row["centroid_j"], row["centroid_i"], 1.0])
    return {f"centroid_{axis}_mm": round(float(v), 2) for axis, v in zip("xyz", point[:3], strict=True)}


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
