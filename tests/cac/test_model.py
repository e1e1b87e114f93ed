"""The ``cac`` model end to end: real chest CT, refusals, metal, and its post-processing steps."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from medhub.errors import InputError
from medhub.io.orientation import reoriented
from medhub.io.volume import Volume
from medhub.models.cac.lesions import (
    drop_lung_contact,
    drop_noise_like,
    footprint_rule,
    half_maximum_footprint,
    scored_footprint,
    soft_tissue_noise,
)
from medhub.models.cac.model import CAC, CANDIDATE_COLUMNS, METAL_HU, find_metal, is_part_of_bone
from medhub.synth.cac_phantom import make_cac_phantom
from tests.conftest import SHARED_DATA, run_cli

LIDC = SHARED_DATA / "lidc_chest_ct"
needs_lidc = pytest.mark.skipif(not LIDC.is_dir(), reason="shared real data not available")


@cache
def _model() -> CAC:
    return CAC()


@pytest.mark.parametrize("seed", [5001, 5004])
def test_heavy_calcium_is_scored(seed: int) -> None:
    """Heavy calcifications only (longer and wider than the issue's plaques): cac 0.5.0 gave large dense plaques a
    network probability of 0 and scored these two at 431 of 879 and 30 of 252; 0.6.0 scores them at the truth."""
    from medhub.synth.cac_phantom import make_cac_phantom, random_phantom_params

    params = {**random_phantom_params(seed), "contrast": False, "n_plaques": 0, "large_plaques": True}
    phantom = make_cac_phantom(**params)
    truth = phantom.truth["totals"]["mapped_8_mm2"]
    values = _model().predict(Volume(phantom.hu, phantom.affine, modality="CT", meta={
        "nominal_slice_thickness_mm": phantom.slice_thickness_mm})).values
    assert truth["agatston"] > 200.0
    assert abs(values["agatston"] - truth["agatston"]) <= 0.1 * truth["agatston"]
    assert values["risk_category"] == truth["risk_standard"]


# ---------------------------------------------------------------------------------------------- real chest CT
@needs_lidc
@pytest.mark.parametrize("case, categories", [("0187", {"0"}), ("0987", {"1-99", "100-399"})])
def test_real_lidc_scores(case: str, categories: set[str]) -> None:
    from medhub.io.nifti import read_volume

    prediction = _model().predict(read_volume(LIDC / f"{case}_ct_3mm.nrrd"))
    assert prediction.values["risk_category"] in categories
    if case == "0187":
        # DeepCAC's reference is 0: every candidate (ribs, sternum, cartilage, the bright spot on the heart's lung
        # border) is judged and none is counted, each with its reason
        assert prediction.values["agatston"] == 0
        rows = prediction.tables["lesions"].rows
        assert rows and not any(row["counted"] for row in rows) and all(row["reason"] for row in rows)
    else:
        ref = read_volume(LIDC / f"{case}_labels_3mm.nrrd").array == 3
        found = prediction.labels == 2
        assert found.any() and (found & ref).sum() == found.sum()  # every voxel it scores is DeepCAC calcium
    assert not prediction.extra["metal"]  # cortical bone is not taken for a stent
    assert prediction.extra["lesion_footprint"] == "threshold"  # 3 mm pixels: no half-maximum cut
    # 3 mm voxels lie outside what the restoration was trained on: it says so instead of extrapolating
    assert "agatston_restored" not in prediction.values
    assert any(w.startswith("restored Agatston (research estimate) not computed: pixel spacing 3.00 mm outside")
               for w in prediction.warnings)


@needs_lidc
def test_real_lidc_scores_the_same_from_a_ras_file(tmp_path: Path) -> None:
    from medhub.io.nifti import read_volume, write_volume

    lps = read_volume(LIDC / "0987_ct_3mm.nrrd")
    ras = write_volume(reoriented(lps, ((0, 1, 2), (False, True, True))), tmp_path / "0987_ras.nii.gz")
    # cac 0.3.0, without the canonical view, saw a mirrored chest here: 72 (1-99) instead of its 108 then
    assert _model().predict(read_volume(ras)).values == _model().predict(lps).values


@needs_lidc
def test_real_lidc_lesions_survive_a_shift_of_the_whole_scan() -> None:
    from medhub.io.nifti import read_volume

    # 0.3.1 scored 0987 at 72-108 from -30 to +10 HU and 0 from +15 HU up: the network had learnt the phantoms'
    # one-HU-per-tissue; its soft-tissue window now follows the scan's own soft tissue
    volume = read_volume(LIDC / "0987_ct_3mm.nrrd")
    found = {shift: _model().predict(volume.with_array((volume.array + shift).astype(np.int16))).values
             for shift in (-20, 0, 20)}
    assert all(values["agatston"] > 0 for values in found.values())
    assert len({values["lesion_count"] for values in found.values()}) == 1


def test_run_writes_coded_referenced_seg_and_sr_and_a_lesion_table(tmp_path: Path) -> None:
    """``medhub run cac`` on its shipped reference series (LIDC 0987): every output of the issue, valid DICOM."""
    import csv

    import pydicom

    from medhub.hub.runner import run
    from tests.io.dicom_sources import dciodvfy_errors

    result = run(_model(), CAC.folder / "reference" / "input", tmp_path / "out").results[0]
    assert result.ok, result.message
    source = pydicom.dcmread(next((CAC.folder / "reference" / "input").iterdir()), stop_before_pixels=True)
    seg = pydicom.dcmread(result.outputs["seg"])
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    segments = {s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in seg.SegmentSequence}
    assert segments == {"80891009", "29483008"}  # SNOMED CT heart, calcified atheromatous plaque
    sr = pydicom.dcmread(result.outputs["sr"])
    concepts = {code.CodeValue for code in _concept_codes(sr.ContentSequence)}
    assert {"450360000", "122660", "122661"} <= concepts  # Agatston, volume, mass
    assert dciodvfy_errors(Path(result.outputs["seg"])) == [] and dciodvfy_errors(Path(result.outputs["sr"])) == []

    with open(result.outputs["lesions"], newline="") as f:
        rows = list(csv.DictReader(f))
    # one row per candidate, counted or not, with the classifier's probability and the reason for its decision
    assert tuple(rows[0]) == CANDIDATE_COLUMNS
    counted = [r for r in rows if r["counted"] == "True"]
    assert counted and all(float(r["p_coronary"]) >= 0.5 and r["accepted"] == "True" for r in counted)
    assert all(r["reason"] for r in rows if r["counted"] == "False")
    assert sum(float(r["agatston"]) for r in rows) == pytest.approx(result.values["agatston"])
    # what was judged non-coronary is reported as its own finding, under medhub's codes
    assert {"CAC-AORTIC", "CAC-VALVE"} <= concepts
    assert "aortic_calcium_agatston" in result.values and "valve_calcium_agatston" in result.values
    assert json.loads((tmp_path / "out" / "run.json").read_text())["model"]["version"] == _model().card.version


def test_restored_agatston_is_reported_beside_the_image_score_with_its_own_code(tmp_path: Path) -> None:
    """On a scan like those it was trained on, the SR carries the restored score under medhub's own code next to
    the image-based Agatston (SNOMED CT), and the per-group estimates add up to it."""
    import pydicom

    from medhub.hub.runner import run
    from medhub.synth.cac_phantom import random_phantom_params, write_cac_phantom
    from tests.io.dicom_sources import dciodvfy_errors

    phantom = make_cac_phantom(**{**random_phantom_params(5002), "contrast": False, "stent": False})
    write_cac_phantom(phantom, tmp_path / "phantom", nifti=False)
    result = run(_model(), tmp_path / "phantom" / "dicom", tmp_path / "out").results[0]
    assert result.ok, result.message
    assert result.values["agatston"] > 0 and result.values["agatston_restored"] > 0
    record = json.loads(Path(result.outputs["json"]).read_text())
    groups = record["extra"]["restoration"]["groups"]
    assert sum(g["restored_agatston"] for g in groups) == pytest.approx(result.values["agatston_restored"], abs=0.01)
    assert sum(g["image_agatston"] for g in groups) == pytest.approx(result.values["agatston"], abs=0.01)
    sr = pydicom.dcmread(result.outputs["sr"])
    codes = {(c.CodingSchemeDesignator, c.CodeValue) for c in _concept_codes(sr.ContentSequence)}
    assert {("SCT", "450360000"), ("99MEDHUB", "CAC-RESTORED")} <= codes
    assert [item.CodingSchemeDesignator for item in sr.CodingSchemeIdentificationSequence] == ["99MEDHUB"]
    assert dciodvfy_errors(Path(result.outputs["sr"])) == []


def _concept_codes(items) -> list:
    """Every ConceptNameCodeSequence item in an SR content tree."""
    found = []
    for item in items:
        found += list(item.get("ConceptNameCodeSequence", []))
        found += _concept_codes(item.get("ContentSequence", []))
    return found


def test_abdomen_without_heart_is_refused_not_scored(shared_data: Path, tmp_path: Path) -> None:
    done = run_cli("run", "cac", "--input", str(shared_data / "ct_siemens_example"), "--output", str(tmp_path / "out"))
    assert done.returncode != 0
    assert "heart not found" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    results = json.loads((tmp_path / "out" / "run.json").read_text())["cases"]
    assert results and all(r["status"] == "failed" and r["reason_code"] == "heart-not-found" for r in results)
    assert all(r["values"] == {} for r in results)  # never a silent 0


# ---------------------------------------------------------------------------------------------- phantoms
def _phantom_volume(**kw) -> tuple[Volume, object]:
    ph = make_cac_phantom(kw.pop("seed", 7), shape=(64, 340, 340), spacing=(2.5, 1.0, 1.0), noise_sd=20.0,
                          blur_mm=0.4, **kw)
    return Volume(ph.hu, ph.affine, modality="CT"), ph


def test_thick_slices_and_a_single_image_are_refused_with_the_reason(tmp_path: Path) -> None:
    import shutil

    from medhub.hub.runner import run
    from medhub.synth.cac_phantom import write_cac_phantom

    thick = make_cac_phantom(4, shape=(24, 128, 128), spacing=(6.0, 2.0, 2.0), n_plaques=1)
    series = write_cac_phantom(thick, tmp_path / "thick", nifti=False)["dicom"]
    single = tmp_path / "localizer"
    single.mkdir()
    shutil.copy(next(series.iterdir()), single)
    for folder, code, words in ((series, "bad-spacing", "slice spacing 6 mm"), (single, "too-few-slices", "1 slice")):
        result = run(_model(), folder, tmp_path / f"out-{code}").results[0]
        assert (result.status, result.reason_code) == ("failed", code) and words in result.message
        assert not (tmp_path / f"out-{code}" / result.case_id).exists()  # nothing half-written


def test_contrast_phantom_is_refused() -> None:
    volume, _ = _phantom_volume(contrast=True, n_plaques=2)
    with pytest.raises(InputError) as err:
        _model().predict(volume)
    assert err.value.code == "contrast" and "blood pool" in err.value.reason


def test_storage_order_does_not_change_the_result() -> None:
    # a RAS tool writes rows and columns reversed, some files are stored head first or as sagittal slices: same
    # anatomy, same answer (Agatston lesions stay axial)
    volume, _ = _phantom_volume(n_plaques=4, seed=5)
    expected = _model().predict(volume)
    assert expected.values["agatston"] > 0
    for perm, flips in (((0, 1, 2), (False, True, True)), ((2, 0, 1), (True, False, False))):
        stored = reoriented(volume, (perm, flips))
        prediction = _model().predict(stored)
        assert prediction.values == expected.values
        assert np.array_equal(prediction.labels, reoriented(volume.with_array(expected.labels), (perm, flips)).array)


def test_stent_is_flagged_and_excluded() -> None:
    volume, ph = _phantom_volume(stent=True, n_plaques=0, seed=3)
    assert (ph.labels == 4).any()
    prediction = _model().predict(volume)
    assert prediction.extra["metal"] and any("metal" in w for w in prediction.warnings)
    assert not ((prediction.labels == 2) & (ph.labels == 4)).any()


# ---------------------------------------------------------------------------------------------- steps
def _blurred_disc(radius_px: float, hu: float, background: float = -100.0, sigma_px: float = 0.8) -> tuple:
    yy, xx = np.mgrid[:41, :41]
    disc = (yy - 20) ** 2 + (xx - 20) ** 2 <= radius_px ** 2
    image = np.where(disc, hu, background).astype(np.float32)[None]
    return ndi.gaussian_filter(image, (0, sigma_px, sigma_px)), disc[None]


def test_half_maximum_footprint_undoes_the_blur_of_dense_calcium() -> None:
    image, disc = _blurred_disc(5.0, 800.0, sigma_px=1.0)
    above = image >= 130
    assert above.sum() > 1.2 * disc.sum()  # the PSF inflates the >= 130 HU area (measured: 101 vs 81 pixels)
    cut = half_maximum_footprint(image, above)
    assert abs(int(cut.sum()) - int(disc.sum())) <= 0.1 * disc.sum()


def test_half_maximum_footprint_never_goes_below_130_hu() -> None:
    image, _ = _blurred_disc(4.0, 180.0)
    above = image >= 130
    cut = half_maximum_footprint(image, above)
    assert np.array_equal(cut, above)


def test_half_maximum_footprint_cuts_each_slice_at_its_own_peak() -> None:
    # two plaques four slices apart, joined through the slices between by a thin bridge in the lesion mask
    hu = np.full((7, 20, 20), 40.0, np.float32)
    lesions = np.zeros(hu.shape, bool)
    lesions[1, 5:9, 5:9] = True
    hu[1, 5:9, 5:9] = 380.0
    lesions[5, 5:9, 5:9] = True
    hu[5, 5:9, 5:9] = 880.0
    lesions[1:6, 7, 8] = True  # bridge (soft tissue, but inside the network's mask)
    cut = half_maximum_footprint(hu, lesions)
    # a level from the joint 880 HU peak (460 HU) would remove the 380 HU plaque whole
    assert cut[1].sum() == 16 and cut[5].sum() == 16 and not cut[2:5].any()


def test_scored_footprint_cuts_on_fine_grids_and_keeps_every_130_hu_voxel_on_coarse_ones() -> None:
    image, _ = _blurred_disc(5.0, 800.0, sigma_px=1.0)
    above = image >= 130
    fine = scored_footprint(image, above, (1.0, 0.7, 0.7))
    assert np.array_equal(fine, half_maximum_footprint(image, above)) and fine.sum() < above.sum()
    # DeepCAC's 3 mm grid: its reference masks hold every >= 130 HU voxel of a lesion, so nothing is cut
    assert np.array_equal(scored_footprint(image, above, (3.0, 3.0, 3.0)), above)
    assert footprint_rule((1.0, 0.7, 0.7)) == "half-maximum" and footprint_rule((3.0, 3.0, 3.0)) == "threshold"
    assert not scored_footprint(image, np.ones_like(above), (3.0, 3.0, 3.0))[~above].any()


def test_lung_contact_drops_pulmonary_calcium_only() -> None:
    hu = np.full((5, 30, 60), -100.0, np.float32)  # epicardial fat
    hu[:, :, 30:] = -850.0  # lung on the right half
    lesions = np.zeros(hu.shape, bool)
    lesions[2, 14:16, 10:12] = True  # in fat
    lesions[2, 14:16, 31:33] = True  # on the lung border
    hu[lesions] = 400.0
    kept, dropped = drop_lung_contact(hu, lesions, (3.0, 0.7, 0.7))
    assert kept[2, 14, 10] and not kept[2, 14, 31]
    assert len(dropped) == 1 and dropped[0]["lung_fraction"] > 0.2


def test_noise_specks_are_dropped_plaques_are_kept() -> None:
    rng = np.random.default_rng(0)
    spacing = (1.0, 0.7, 0.7)
    hu = (40.0 + 25.0 * rng.standard_normal((6, 60, 60))).astype(np.float32)  # blood and myocardium, noise SD 25
    heart = np.ones(hu.shape, bool)
    tissue_hu, noise_sd = soft_tissue_noise(hu, heart)
    assert abs(tissue_hu - 40.0) < 2.0 and abs(noise_sd - 25.0) < 2.0
    lesions = np.zeros(hu.shape, bool)
    lesions[1, 10, 10:12] = True  # 1 mm², 135 HU: noise explains it
    lesions[3, 10, 40:42] = True  # 1 mm², 600 HU: too bright for noise
    lesions[5, 40:44, 20:24] = True  # 7.8 mm², 150 HU: too big for a speck
    hu[lesions] = 135.0
    hu[3, 10, 40:42] = 600.0
    hu[5, 40:44, 20:24] = 150.0
    kept, dropped = drop_noise_like(hu, lesions, spacing, tissue_hu, noise_sd)
    assert not kept[1].any() and kept[3, 10, 40] and kept[5, 41, 21]
    assert [(d["reason"], d["first_slice"], d["voxels"]) for d in dropped] == [("noise-like", 1, 2)]
    # without a noise estimate nothing is dropped
    assert drop_noise_like(hu, lesions, spacing, float("nan"), float("nan"))[0].sum() == lesions.sum()


def test_metal_versus_bone() -> None:
    hu = np.full((20, 60, 60), 40.0, np.float32)
    region = np.ones(hu.shape, bool)
    hu[5:15, 10:13, 10:13] = 2200.0  # a thin dense tube: a stent
    hu[2:18, 30:58, 30:58] = 400.0  # a vertebral body ...
    hu[8:10, 40:42, 40:42] = METAL_HU + 300.0  # ... with a dense cortical spot
    mask, records = find_metal(hu, region, (1.0, 0.7, 0.7))
    assert len(records) == 1 and (records[0]["first_slice"], records[0]["last_slice"]) == (5, 14)  # the tube
    assert mask[10, 11, 11] and not mask[9, 41, 41]
    assert is_part_of_bone(hu, (slice(8, 10), slice(40, 42), slice(40, 42)), (1.0, 0.7, 0.7))


def test_metal_takes_in_the_struts_that_blur_left_under_the_metal_level() -> None:
    hu = np.full((30, 40, 40), 40.0, np.float32)
    region = np.ones(hu.shape, bool)
    hu[5:25, 18:21, 18:21] = 1300.0  # a stent whose struts mostly stay under METAL_HU ...
    hu[10, 19, 19] = METAL_HU + 400.0  # ... with one voxel above it
    hu[5:8, 30:32, 30:32] = 600.0  # calcium apart from it
    mask, records = find_metal(hu, region, (1.0, 0.7, 0.7))
    assert len(records) == 1 and (records[0]["first_slice"], records[0]["last_slice"]) == (5, 24)
    assert mask[5:25, 18:21, 18:21].all() and not mask[5:8, 30:32, 30:32].any()
