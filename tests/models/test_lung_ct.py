"""lung-ct: the classical lung segmentation on phantoms and on real CT (no mocks)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pytest

from medhub.hub.card import load_card
from medhub.io.orientation import reoriented, undo_canonical
from medhub.io.volume import Volume
from medhub.metrics.segmentation import dice
from medhub.models.lung_ct import LungCT
from medhub.models.lung_ct.segment import segment_lungs
from medhub.synth.chest import make_chest_phantom
from tests.conftest import SHARED_DATA

DATA = SHARED_DATA
LIDC = DATA / "lidc_chest_ct"
SIEMENS = DATA / "ct_siemens_example"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is not present")
    return path


@cache
def _model() -> LungCT:
    return LungCT()


@cache
def _read(path: str) -> Volume:
    from medhub.io.nifti import read_volume

    return read_volume(_need(Path(path)), modality="CT")


@cache
def _predict(path: str):
    return _model().predict(_read(path))


def _lps_centroid_x(volume: Volume, mask: np.ndarray) -> float:
    idx = np.argwhere(mask).mean(axis=0)
    return float((volume.affine @ np.append(idx, 1.0))[0])


def _superior_index_order(volume: Volume) -> np.ndarray:
    """Slice indices (array axis 0) ordered from the patient's feet to the head."""
    n = volume.shape[0]
    return np.arange(n) if volume.affine[2, 0] > 0 else np.arange(n)[::-1]


# ------------------------------------------------------------------------------------------------- card
def test_card_validates_with_coded_segments_and_values():
    card = load_card(Path(LungCT.folder) / "card.yaml")
    assert card.id == "lung-ct" and card.version == "1.0.0" and card.weights is None and not card.needs_weights
    right, left = card.segment(1), card.segment(2)
    assert right.type.value == left.type.value == "39607008"
    assert (right.modifier.value, left.modifier.value) == ("24028007", "7771000")
    assert {v.name for v in card.outputs.values} == {
        "right_lung_volume_ml", "left_lung_volume_ml", "total_lung_volume_ml"}


# ------------------------------------------------------------------------------------------------- phantoms
@pytest.mark.parametrize(
    "shape, spacing, seed",
    [((64, 128, 128), (5.0, 2.5, 2.5), 0),  # coarse, used as is
     ((40, 384, 384), (7.5, 0.9, 0.9), 3)],  # fine in-plane: downsampled, refined at full resolution
)
def test_phantomdice(shape, spacing, seed):
    ph = make_chest_phantom(shape=shape, spacing=spacing, noise_sd=20.0, seed=seed)
    vol = Volume(ph.hu, ph.affine, modality="CT")
    pred = _model().predict(vol)
    for label in (1, 2):
        assert dice(pred.labels == label, ph.labels == label) >= 0.95
    voxel_ml = np.prod(spacing) / 1000
    assert pred.values["right_lung_volume_ml"] == pytest.approx(np.count_nonzero(pred.labels == 1) * voxel_ml, abs=0.1)
    # the phantom's lungs meet at the anterior junction line, so one air component had to be split in two
    assert any(c["is_lung"] and 0.3 < c["left_share"] < 0.7 for c in pred.extra["air_components"])
    # the stomach and bowel gas of the phantom are never lung
    gas = ph.masks["stomach_gas"] | ph.masks["bowel_gas"]
    assert not np.any(pred.labels[gas])


def test_phantom_is_deterministic_and_right_is_patient_right():
    a = make_chest_phantom(shape=(32, 96, 96), spacing=(10.0, 3.5, 3.5), seed=5)
    b = make_chest_phantom(shape=(32, 96, 96), spacing=(10.0, 3.5, 3.5), seed=5)
    assert np.array_equal(a.hu, b.hu) and np.array_equal(a.labels, b.labels)
    vol = Volume(a.hu, a.affine)
    assert _lps_centroid_x(vol, a.labels == 1) < 0 < _lps_centroid_x(vol, a.labels == 2)
    assert a.hu.dtype == np.int16 and a.labels.dtype == np.uint8


def test_phantom_flip_invariance():
    ph = make_chest_phantom(shape=(48, 128, 128), spacing=(6.0, 2.5, 2.5), seed=2)
    vol = Volume(ph.hu, ph.affine)
    base = _model().predict(vol).labels
    for perm, flips in (((0, 1, 2), (True, False, True)), ((2, 1, 0), (False, True, False))):
        other = _model().predict(reoriented(vol, (perm, flips))).labels
        assert np.array_equal(undo_canonical(other, (perm, flips)), base)


# ------------------------------------------------------------------------------------------------- real CT
@pytest.mark.parametrize("case, right_ml, left_ml", [("0187", (3700, 4600), (3200, 4000)),
                                                     ("0987", (2900, 3700), (2500, 3200))])
def test_lidc_chest(case, right_ml, left_ml):
    vol = _read(str(LIDC / f"{case}_ct_3mm.nrrd"))
    pred = _predict(str(LIDC / f"{case}_ct_3mm.nrrd"))
    assert right_ml[0] <= pred.values["right_lung_volume_ml"] <= right_ml[1]
    assert left_ml[0] <= pred.values["left_lung_volume_ml"] <= left_ml[1]
    assert pred.extra["airway_found"]
    # right lung on the patient's right (LPS: smaller x)
    assert _lps_centroid_x(vol, pred.labels == 1) + 60 < _lps_centroid_x(vol, pred.labels == 2)
    # the lungs do not overlap DeepCAC's heart (allow a boundary voxel layer: < 0.3 % of the heart)
    heart = _read(str(LIDC / f"{case}_labels_3mm.nrrd")).array == 1
    assert np.count_nonzero(heart & (pred.labels > 0)) < 0.003 * np.count_nonzero(heart)
    # the lung mask is parenchyma, not gas: almost nothing below -950 HU
    lung = pred.labels > 0
    assert np.mean(vol.array[lung] < -950) < 0.02


def test_lidc_deterministic_and_orientation_invariant():
    path = str(LIDC / "0987_ct_3mm.nrrd")
    vol = _read(path)
    base = _predict(path).labels
    again = segment_lungs(vol.array, vol.spacing, vol.direction)
    assert np.array_equal(again, base)
    perm, flips = (0, 1, 2), (True, True, True)
    other = _model().predict(reoriented(vol, (perm, flips))).labels
    assert np.array_equal(undo_canonical(other, (perm, flips)), base)


def test_lower_chest_keeps_lung_bases_and_rejects_abdominal_gas():
    """30 slices from the lung bases to the kidneys (RAS NIfTI), with more bowel/stomach gas than lung.

    Checked on overlays: the lung crescents fill the top 12 slices (right 73 ml, left 43 ml); the stomach and
    colon gas (~200 ml below -950 HU) run through the whole crop and must stay out of the masks.
    """
    path = str(SIEMENS / "ct_3mm_lower_chest.nii.gz")
    vol = _read(path)
    pred = _predict(path)
    assert 55 <= pred.values["right_lung_volume_ml"] <= 95
    assert 30 <= pred.values["left_lung_volume_ml"] <= 60
    lung = pred.labels > 0
    feet_to_head = _superior_index_order(vol)
    assert not lung[feet_to_head[:16]].any()  # nothing in the lower 16 slices (48 mm)
    assert lung[feet_to_head[-1]].sum() > 400  # the top slice is mostly lung crescents
    gas = vol.array < -950
    assert np.count_nonzero(gas) * 0.027 > 150  # the distractor is there ...
    assert np.count_nonzero(gas & lung) * 0.027 < 2.0  # ... and not in the lungs
    assert _lps_centroid_x(vol, pred.labels == 1) < _lps_centroid_x(vol, pred.labels == 2)


def test_abdomen_has_only_the_lung_bases():
    path = str(SIEMENS / "ct_3mm.nii.gz")
    vol = _read(path)
    pred = _predict(path)
    assert pred.values["total_lung_volume_ml"] <= 150
    lung = pred.labels > 0
    feet_to_head = _superior_index_order(vol)
    assert not lung[feet_to_head[:90]].any()  # abdomen and pelvis: no lung at all
    assert np.count_nonzero((vol.array < -950) & lung) * 0.027 < 2.0


def test_dicom_upper_abdomen_runs_and_finds_little_or_no_lung():
    dicom = pytest.importorskip("medhub.io.dicom")
    vol = dicom.read_dicom_volume(_need(SIEMENS / "dicom"))
    pred = _model().predict(vol)
    assert pred.labels.shape == vol.shape and pred.labels.dtype == np.uint8
    assert pred.values["total_lung_volume_ml"] < 30


def test_gas_pocket_joined_to_a_lung_base_is_detached_but_a_bulla_stays():
    from medhub.models.lung_ct.segment import detach_gas

    rng = np.random.default_rng(1)
    hu = np.full((30, 40, 40), 30.0)  # soft tissue
    hu[12:30, 5:35, 5:35] = -850 + rng.normal(0, 30, size=(18, 30, 30))  # lung above
    hu[2:10, 10:30, 10:30] = -1000  # stomach gas below, wrapped in tissue
    hu[10:12, 19:21, 19:21] = -700  # a partial-volume bridge through the diaphragm
    hu[20:25, 15:20, 15:20] = -1000  # a bulla inside the lung
    component = hu < -400
    cleaned, notes = detach_gas(component, hu, (3.0, 3.0, 3.0))
    assert len(notes) == 1
    assert not cleaned[2:10].any()  # the stomach gas is gone
    assert cleaned[20:25, 15:20, 15:20].all()  # the bulla stays
    assert np.count_nonzero(component[12:] & ~cleaned[12:]) < 50


def test_lower_chest_lung_joined_to_gut_gas_by_a_thin_bridge():
    """Imitate a diaphragm lost in the partial volume: a 3x3-voxel bridge of -750 HU from the left lung base to
    the nearest large gas pocket inside the body. The left lung must keep its volume and take no gas."""
    from scipy import ndimage as ndi

    path = str(SIEMENS / "ct_3mm_lower_chest.nii.gz")
    vol = _read(path)
    base = _predict(path)
    gas_lab, _ = ndi.label((vol.array < -950) & (base.labels == 0))
    sizes = np.bincount(gas_lab.ravel())
    sizes[0] = 0
    outside = np.unique(np.concatenate([gas_lab[0].ravel(), gas_lab[-1].ravel(), gas_lab[:, 0].ravel(),
                                        gas_lab[:, :, 0].ravel(), gas_lab[:, -1].ravel(), gas_lab[:, :, -1].ravel()]))
    sizes[outside] = 0  # air around the patient
    gas = gas_lab == sizes.argmax()
    left = base.labels == 2
    dist, nearest = ndi.distance_transform_edt(~left, return_indices=True)
    p = np.argwhere(gas)[np.argmin(dist[gas])]
    q = nearest[:, p[0], p[1], p[2]]
    assert dist[tuple(p)] < 8  # a gas pocket right under the left lung base
    hu = vol.array.copy()
    for t in np.linspace(0.0, 1.0, 40):
        k, j, i = np.round(p + (q - p) * t).astype(int)
        hu[k, j - 1:j + 2, i - 1:i + 2] = -750
    pred = _model().predict(vol.with_array(hu))
    assert abs(pred.values["left_lung_volume_ml"] - base.values["left_lung_volume_ml"]) < 5
    assert abs(pred.values["right_lung_volume_ml"] - base.values["right_lung_volume_ml"]) < 1
    assert np.count_nonzero(gas & (pred.labels > 0)) == 0


@pytest.mark.parametrize("from_fraction", [0.6, 0.0])
def test_lidc_with_simulated_emphysema_keeps_the_lungs(from_fraction):
    """Severe emphysema (parenchyma at about -985 HU) in the upper 40 % or in all of both lungs of LIDC 0987:
    the gas-pocket step must not cut it out of the lungs."""
    path = str(LIDC / "0987_ct_3mm.nrrd")
    vol = _read(path)
    base = _predict(path)
    hu = vol.array.astype(np.float32)
    lung = base.labels > 0
    zs = np.nonzero(lung.any(axis=(1, 2)))[0]
    sel = lung & (hu < -750)
    sel[: int(zs[0] + from_fraction * (zs[-1] - zs[0]))] = False
    hu[sel] = -985 + np.random.default_rng(0).normal(0, 12, int(sel.sum()))
    pred = _model().predict(vol.with_array(hu.astype(np.int16)))
    for name in ("right_lung_volume_ml", "left_lung_volume_ml"):
        assert pred.values[name] == pytest.approx(base.values[name], rel=0.03)
