"""Calcium scoring on hand-built volumes whose scores are computed by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medhub.cac.cli import cac_app
from medhub.cac.scoring import (
    ScoringConvention,
    agatston_weight,
    calibration_factor,
    risk_category,
    score_calcium,
    score_volume,
)
from medhub.errors import InputError
from medhub.io.nifti import write_volume
from medhub.io.orientation import canonical_affine, reoriented
from medhub.io.volume import Volume
from tests.conftest import SHARED_DATA

LIDC = SHARED_DATA / "lidc_chest_ct"


def blank(shape=(4, 12, 12)) -> np.ndarray:
    return np.full(shape, -50.0)


def everywhere(hu: np.ndarray) -> np.ndarray:
    return np.ones(hu.shape, dtype=bool)


def test_square_over_two_slices_exact_agatston():
    hu = blank()
    hu[1:3, 2:5, 2:5] = 250
    result = score_calcium(hu, (1.5, 0.5, 0.5), everywhere(hu))
    # per slice: 9 px × 0.25 mm² = 2.25 mm², weight 2, Δz/3 = 0.5 -> 2.25; two slices.
    assert result.agatston == pytest.approx(4.5, abs=1e-6)
    assert result.volume_mm3 == pytest.approx(18 * 1.5 * 0.25, abs=1e-6)
    assert result.n_lesions == 2
    assert [lesion.slice_range for lesion in result.lesions] == [(1, 1), (2, 2)]
    assert result.lesions[0].centroid_index == (1.0, 3.0, 3.0)
    assert result.mass_mg is None
    assert result.category == "1-99"


@pytest.mark.parametrize(("peak", "weight"), [(129, 0), (129.9, 0), (130, 1), (199, 1), (199.9, 1), (200, 2),
                                              (299, 2), (300, 3), (399, 3), (400, 4), (1500, 4)])
def test_weight_bin_edges(peak, weight):
    assert agatston_weight(peak) == weight
    hu = blank()
    hu[1, 2:6, 2:6] = 140
    hu[1, 3, 3] = peak  # the peak sets the weight; a sub-threshold peak is not part of the lesion
    result = score_calcium(hu, (3.0, 1.0, 1.0), everywhere(hu))
    expected_weight = max(weight, 1)
    area = 16 if peak >= 130 else 15
    assert result.agatston == pytest.approx(area * expected_weight, abs=1e-6)


def test_minimum_area_inclusive():
    hu = blank()
    hu[1, 2:4, 2:4] = 300  # 4 px × 0.25 mm² = 1.0 mm² exactly: counted
    hu[2, 2:4, 2] = 300  # 2 px = 0.5 mm²: dropped
    hu[2, 8, 8:11] = 300  # 3 px = 0.75 mm²: dropped
    result = score_calcium(hu, (3.0, 0.5, 0.5), everywhere(hu))
    assert result.n_lesions == 1
    assert result.agatston == pytest.approx(1.0 * 3, abs=1e-6)
    # A float pixel area must not push an exact 1 mm² lesion below the minimum: 100 px × 0.1 × 0.1 mm.
    hu = blank((1, 20, 20))
    hu[0, :10, :10] = 250
    assert score_calcium(hu, (3.0, 0.1, 0.1), everywhere(hu)).n_lesions == 1
    assert score_calcium(hu[:, :10, :9], (3.0, 0.1, 0.1), everywhere(hu[:, :10, :9])).n_lesions == 0


def test_minimum_area_in_pixels():
    hu = blank()
    hu[1, 2:4, 2:4] = 300
    hu[2, 2:5, 2] = 300
    px = ScoringConvention(min_area_mm2=None, min_area_px=3)
    assert score_calcium(hu, (3.0, 0.5, 0.5), everywhere(hu), px).n_lesions == 2
    both = ScoringConvention(min_area_mm2=1.0, min_area_px=3)
    assert score_calcium(hu, (3.0, 0.5, 0.5), everywhere(hu), both).n_lesions == 1


def test_diagonal_neighbours_8_versus_4_connected():
    hu = blank()
    for n in range(4):
        hu[1, 2 + n, 2 + n] = 250  # a diagonal line of 4 px
    spacing = (3.0, 0.5, 0.5)
    eight = score_calcium(hu, spacing, everywhere(hu), ScoringConvention(connectivity="8"))
    assert eight.n_lesions == 1
    assert eight.agatston == pytest.approx(4 * 0.25 * 2, abs=1e-6)
    # 4-connected: four 1-px lesions of 0.25 mm² each, all under the 1 mm² minimum.
    four = score_calcium(hu, spacing, everywhere(hu), ScoringConvention(connectivity="4"))
    assert four.n_lesions == 0 and four.agatston == 0.0
    four_no_minimum = score_calcium(hu, spacing, everywhere(hu), ScoringConvention(connectivity="4", min_area_mm2=None))
    assert four_no_minimum.n_lesions == 4
    assert four_no_minimum.agatston == pytest.approx(eight.agatston, abs=1e-6)


def test_3d_lesion_across_slices_with_different_peaks():
    hu = blank()
    hu[1, 2:4, 2:4] = 150  # peak 150 -> weight 1
    hu[2, 2:4, 2:4] = 450  # peak 450 -> weight 4
    hu[3, 3, 3] = 150  # 1 px, under 1 mm² on its own
    spacing = (3.0, 1.0, 1.0)
    flat = score_calcium(hu, spacing, everywhere(hu))
    assert flat.agatston == pytest.approx(4 * 1 + 4 * 4 + 1 * 1, abs=1e-6)
    assert flat.n_lesions == 3
    three_d = score_calcium(hu, spacing, everywhere(hu), ScoringConvention(connectivity="3d"))
    # One lesion, weight from the 3D peak (450 -> 4) on all 9 px.
    assert three_d.n_lesions == 1
    lesion = three_d.lesions[0]
    assert (lesion.slice_range, lesion.peak_hu, lesion.weight, lesion.area_mm2) == ((1, 3), 450.0, 4, 9.0)
    assert three_d.agatston == pytest.approx(9 * 4, abs=1e-6)
    # The minimum area applies to the largest cross-section: a 3D lesion of 1-px sections is dropped.
    sparse = blank()
    sparse[0:4, 5, 5] = 400
    fine = (3.0, 0.5, 0.5)  # 0.25 mm² per pixel
    assert score_calcium(sparse, fine, everywhere(sparse), ScoringConvention(connectivity="3d")).n_lesions == 0
    kept = ScoringConvention(connectivity="3d6", min_area_mm2=None)
    assert score_calcium(sparse, fine, everywhere(sparse), kept).agatston == pytest.approx(4 * 0.25 * 4, abs=1e-6)


def test_delta_z_normalisation_uses_spacing():
    hu = blank()
    hu[1, 2:5, 2:5] = 350
    at_3 = score_calcium(hu, (3.0, 1.0, 1.0), everywhere(hu)).agatston
    at_1 = score_calcium(hu, (1.0, 1.0, 1.0), everywhere(hu)).agatston
    assert at_3 == pytest.approx(9 * 3, abs=1e-6)
    assert at_1 == pytest.approx(at_3 / 3, abs=1e-6)


def test_thickness_is_recorded_never_used():
    hu = blank()
    hu[1, 2:5, 2:5] = 350
    ct = Volume(array=hu, affine=canonical_affine((1.5, 1.0, 1.0)), modality="CT",
                meta={"nominal_slice_thickness_mm": 3.0})
    result = score_volume(ct, ct.with_array(everywhere(hu).astype(np.uint8)))
    assert result.slice_spacing_mm == 1.5
    assert result.nominal_slice_thickness_mm == 3.0
    assert result.agatston == pytest.approx(9 * 3 * 0.5, abs=1e-6)


def test_volume_scoring_is_axial_whatever_the_storage_order():
    hu = blank((4, 12, 12))
    hu[1, 2:5, 2:7] = 350  # 15 px on one slice, and a 2-slice lesion
    hu[1:3, 8:10, 8:10] = 250
    ct = Volume(array=hu, affine=canonical_affine((1.5, 0.5, 0.5)), modality="CT")
    expected = score_volume(ct, ct.with_array(everywhere(hu).astype(np.uint8)))
    sagittal = reoriented(ct, ((2, 0, 1), (False, True, False)))
    mask = sagittal.with_array(everywhere(sagittal.array).astype(np.uint8))
    result = score_volume(sagittal, mask)
    assert result.agatston == pytest.approx(expected.agatston) == pytest.approx((15 * 3 + 2 * 4 * 2) * 0.25 * 0.5)
    assert [les.centroid_lps_mm for les in result.lesions] == [les.centroid_lps_mm for les in expected.lesions]


def modes_case() -> tuple[np.ndarray, np.ndarray]:
    """A predicted lesion (mask) of 2×5 px: two 2×2 calcified ends (300 HU) joined by a 2-px 100 HU bridge,
    with spacing 1 mm (1 px = 1 mm²) and a 5 mm² minimum area."""
    hu = blank((1, 8, 8))
    hu[0, 2:4, 1:3] = 300
    hu[0, 2:4, 3] = 100
    hu[0, 2:4, 4:6] = 300
    mask = np.zeros(hu.shape, dtype=np.uint8)
    mask[0, 2:4, 1:6] = 1
    return hu, mask


@pytest.mark.parametrize(("mode", "expected", "n_lesions"), [("roi", 0.0, 0), ("mapped", 8 * 3.0, 1),
                                                             ("lesion", 10 * 3.0, 1)])
def test_modes_on_the_same_data(mode, expected, n_lesions):
    hu, mask = modes_case()
    convention = ScoringConvention(mode=mode, min_area_mm2=5.0)
    result = score_calcium(hu, (3.0, 1.0, 1.0), mask, convention)
    # roi: two separate 4 mm² lesions, both under 5 mm². mapped: one predicted lesion, its 8 calcified px.
    # lesion (DeepCAC): all 10 mask px count, weight from the 300 HU peak.
    assert result.agatston == pytest.approx(expected, abs=1e-6)
    assert result.n_lesions == n_lesions


def test_lesion_mode_drops_a_lesion_whose_peak_is_under_threshold():
    hu = blank()
    hu[1, 2:5, 2:5] = 120
    mask = np.zeros(hu.shape, dtype=bool)
    mask[1, 2:5, 2:5] = True
    assert score_calcium(hu, (3.0, 1.0, 1.0), mask, ScoringConvention(mode="lesion")).agatston == 0.0


def test_deepcac_convention():
    hu = blank()
    hu[1, 2:4, 2:4] = 220  # 4 px: kept (DeepCAC drops objects of <= 3 px)
    hu[1, 8, 8:11] = 500  # 3 px: dropped
    mask = hu > 0
    result = score_calcium(hu, (3.0, 0.5, 0.5), mask, ScoringConvention.deepcac())
    assert result.agatston == pytest.approx(4 * 0.25 * 2, abs=1e-6)
    assert result.category == "1-100"


def test_mass_with_calibration_rod():
    hu = blank()
    hu[1, 2:4, 2:4] = 400
    hu[1, 2, 2] = 600
    spacing = (2.0, 0.5, 0.5)  # voxel 0.5 mm³
    # rod: 200 mg/cm³ reads 250 HU -> c = 0.8 mg/cm³/HU; Σ HU × mm³ = (3 × 400 + 600) × 0.5 = 900 HU·mm³.
    result = score_calcium(hu, spacing, everywhere(hu), rod_hu=250.0, rod_density_mg_cm3=200.0)
    assert calibration_factor(250.0, 200.0) == pytest.approx(0.8)
    assert result.calibration_factor == pytest.approx(0.8)
    assert result.mass_mg == pytest.approx(0.8 * 900 / 1000, abs=1e-9)
    assert result.lesions[0].mass_mg == pytest.approx(result.mass_mg, abs=1e-12)
    direct = score_calcium(hu, spacing, everywhere(hu), calibration_factor=0.8)
    assert direct.mass_mg == pytest.approx(result.mass_mg, abs=1e-12)
    with pytest.raises(ValueError, match="not both"):
        score_calcium(hu, spacing, everywhere(hu), calibration_factor=0.8, rod_hu=250.0, rod_density_mg_cm3=200.0)


@pytest.mark.parametrize(("score", "standard", "deepcac"), [
    (0.0, "0", "0"), (1e-9, "1-99", "1-100"), (0.5, "1-99", "1-100"), (1.0, "1-99", "1-100"),
    (99.5, "1-99", "1-100"), (99.999, "1-99", "1-100"), (100.0, "100-399", "1-100"), (100.001, "100-399", "101-300"),
    (300.0, "100-399", "101-300"), (300.5, "100-399", ">300"), (399.99, "100-399", ">300"), (400.0, ">=400", ">300"),
    (5000.0, ">=400", ">300"),
])
def test_risk_category_boundaries(score, standard, deepcac):
    assert risk_category(score) == standard
    assert risk_category(score, "deepcac") == deepcac


def test_risk_category_refuses_negative_and_unknown_scheme():
    with pytest.raises(ValueError):
        risk_category(-1.0)
    with pytest.raises(ValueError):
        risk_category(1.0, "other")


def test_labelled_mask_labels_and_affine_centroid():
    hu = blank()
    hu[1, 2:4, 2:4] = 300
    hu[2, 6:8, 6:8] = 300
    mask = np.zeros(hu.shape, dtype=np.int16)
    mask[1, 1:5, 1:5] = 1
    mask[2, 5:9, 5:9] = 2
    affine = np.eye(4)
    affine[:3, :3] = np.diag([3.0, 1.0, 1.0])
    affine[:3, 3] = (10.0, 20.0, 30.0)
    result = score_calcium(hu, (3.0, 1.0, 1.0), mask, labels=[2], affine=affine)
    assert result.n_lesions == 1
    lesion = result.lesions[0]
    assert lesion.mask_label == 2
    assert lesion.centroid_index == (2.0, 6.5, 6.5)
    assert lesion.centroid_lps_mm == pytest.approx((16.0, 26.5, 36.5))
    assert [les.mask_label for les in score_calcium(hu, (3.0, 1.0, 1.0), mask).lesions] == [1, 2]


def test_mask_grid_mismatch_is_refused_in_one_line():
    ct = Volume(array=blank(), affine=np.diag([3.0, 1.0, 1.0, 1.0]), modality="CT")
    shifted = np.diag([3.0, 1.0, 1.0, 1.0])
    shifted[:3, 3] = (0.0, 0.0, 0.5)
    with pytest.raises(InputError) as caught:
        score_volume(ct, Volume(array=np.ones(ct.shape, np.uint8), affine=shifted), mask_name="mask.nii.gz")
    assert caught.value.code == "grid-mismatch"
    assert "\n" not in str(caught.value)
    assert str(caught.value).startswith("mask.nii.gz: mask grid 4×12×12")
    with pytest.raises(InputError, match="does not match"):
        score_calcium(blank(), (3.0, 1.0, 1.0), np.ones((4, 12, 11), bool))


def test_deterministic():
    rng = np.random.default_rng(7)
    hu = rng.normal(100, 150, (6, 40, 40))
    first = score_calcium(hu, (1.5, 0.7, 0.7), everywhere(hu), calibration_factor=0.75).to_dict()
    second = score_calcium(hu.copy(), (1.5, 0.7, 0.7), everywhere(hu), calibration_factor=0.75).to_dict()
    assert json.dumps(first) == json.dumps(second)
    assert first["n_lesions"] > 0


def write_pair(tmp_path: Path, mask_affine: np.ndarray | None = None) -> tuple[Path, Path]:
    hu = blank((3, 10, 10)).astype(np.int16)
    hu[1, 2:5, 2:5] = 250
    affine = canonical_affine((3.0, 0.5, 0.5))
    ct = Volume(array=hu, affine=affine, modality="CT")
    mask = np.zeros(hu.shape, np.uint8)
    mask[1, 1:6, 1:6] = 1
    ct_path = write_volume(ct, tmp_path / "ct.nii.gz")
    mask_volume = Volume(array=mask, affine=affine if mask_affine is None else mask_affine)
    mask_path = write_volume(mask_volume, tmp_path / "mask.nii.gz")
    return ct_path, mask_path


def test_cli_score_end_to_end(tmp_path):
    ct_path, mask_path = write_pair(tmp_path)
    csv_path = tmp_path / "lesions.csv"
    runner = CliRunner()
    result = runner.invoke(cac_app, ["score", str(ct_path), "--mask", str(mask_path), "--json",
                                     "--lesions-csv", str(csv_path)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["agatston"] == pytest.approx(9 * 0.25 * 2, abs=1e-6)
    assert data["n_lesions"] == 1
    assert "area_mm2" in csv_path.read_text().splitlines()[0]
    table = runner.invoke(cac_app, ["score", str(ct_path), "--mask", str(mask_path)])
    assert table.exit_code == 0 and "Agatston" in table.output


def test_cli_score_refuses_mask_on_another_grid(tmp_path):
    ct_path, mask_path = write_pair(tmp_path, mask_affine=canonical_affine((3.0, 1.0, 1.0)))
    result = CliRunner().invoke(cac_app, ["score", str(ct_path), "--mask", str(mask_path)])
    assert isinstance(result.exception, InputError)
    assert result.exception.code == "grid-mismatch"


def test_cli_score_refuses_folder_with_two_volumes(tmp_path):
    ct_path, _ = write_pair(tmp_path)
    result = CliRunner().invoke(cac_app, ["score", str(tmp_path), "--mask", str(ct_path)])
    assert isinstance(result.exception, InputError)
    assert "2 series or volume files" in str(result.exception)


@pytest.mark.skipif(not (LIDC / "0987_ct_3mm.nrrd").exists(), reason="shared LIDC data absent")
def test_real_lidc_case():
    runner = CliRunner()
    args = ["score", str(LIDC / "0987_ct_3mm.nrrd"), "--mask", str(LIDC / "0987_labels_3mm.nrrd"), "--json"]
    lesion = json.loads(runner.invoke(cac_app, [*args, "--mode", "lesion", "--label", "3"]).output)
    # 4 calcium voxels of 9 mm² at 3 mm: partial volume keeps this below DeepCAC's full-resolution 127.8.
    assert lesion["agatston"] == pytest.approx(108.0, abs=1e-6)
    assert lesion["category"] == "100-399"
    assert all(row["mask_label"] == 3 for row in lesion["lesions"])
    heart = json.loads(runner.invoke(cac_app, [*args, "--mode", "roi", "--label", "1"]).output)
    assert heart["agatston"] == 0.0
