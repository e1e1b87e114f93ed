"""The synthetic CAC phantom: determinism, files, analytic truth, noise, edge cases, anatomy."""

from __future__ import annotations

import json
import math

import numpy as np
import pydicom
import pytest
from scipy import ndimage as ndi

from medhub.synth.cac_phantom import (
    BIN_EDGE_HU,
    CONVENTIONS,
    CORONARY_CALCIUM,
    HELD_OUT_SEEDS,
    TRAIN_SEEDS,
    Calcification,
    CoronaryAnatomy,
    HeartGeometry,
    OffsetGrid,
    analytic_scores,
    aortic_root,
    coronary_paths,
    make_cac_phantom,
    phantom_truth,
    random_phantom_params,
    write_cac_phantom,
)

SMALL = dict(shape=(40, 128, 128), spacing=(3.0, 2.0, 2.0))
FINE = dict(shape=(40, 320, 320), spacing=(2.5, 0.5, 0.5))  # 0.5 mm pixels: 1 mm² is exactly 4 pixels


@pytest.fixture(scope="module")
def fine_edge():
    return make_cac_phantom(11, **FINE, n_plaques=4, edge_cases=True, stent=True)


def _coronary(ph):
    return [p for p in ph.truth["plaques"] if p["is_coronary"]]


def test_deterministic():
    a = make_cac_phantom(5, **SMALL, n_plaques=4, noise_sd=20.0, blur_mm=0.7, stent=True)
    b = make_cac_phantom(5, **SMALL, n_plaques=4, noise_sd=20.0, blur_mm=0.7, stent=True)
    assert np.array_equal(a.hu, b.hu) and np.array_equal(a.labels, b.labels)
    assert np.array_equal(a.heart_mask, b.heart_mask)
    assert json.dumps(a.truth, sort_keys=True) == json.dumps(b.truth, sort_keys=True)
    assert a.hu.dtype == np.int16 and a.labels.dtype == np.uint8 and a.heart_mask.dtype == bool
    c = make_cac_phantom(6, **SMALL, n_plaques=4)
    assert not np.array_equal(a.labels, c.labels)


def test_seed_sets_disjoint_and_params():
    assert not set(TRAIN_SEEDS) & set(HELD_OUT_SEEDS)
    p = random_phantom_params(HELD_OUT_SEEDS[0], held_out=True)
    assert 20 <= p["noise_sd"] <= 30 and 1.0 <= p["spacing"][0] <= 3.0 and p["distractors"]
    with pytest.raises(ValueError):
        random_phantom_params(HELD_OUT_SEEDS[0], held_out=False)
    draws = [random_phantom_params(s) for s in range(200)]
    zero = sum(d["n_plaques"] == 0 for d in draws) / len(draws)
    assert 0.1 < zero < 0.3
    assert any(d["stent"] for d in draws) and any(d["contrast"] for d in draws)


def test_files_written_and_readable(tmp_path):
    from medhub.hub.cases import discover_cases
    from medhub.io.nifti import read_volume

    ph = make_cac_phantom(3, shape=(12, 96, 96), spacing=(2.5, 2.0, 2.0), n_plaques=3, noise_sd=10.0,
                          slice_thickness_mm=3.0)
    paths = write_cac_phantom(ph, tmp_path)
    vol = discover_cases(paths["dicom"]).cases[0].load()
    assert np.array_equal(vol.array, ph.hu)
    assert np.allclose(vol.affine, ph.affine, atol=1e-4)
    assert np.array_equal(read_volume(paths["ct"]).array, ph.hu)
    assert np.array_equal(read_volume(paths["labels"]).array, ph.labels)
    assert np.array_equal(read_volume(paths["heart"]).array.astype(bool), ph.heart_mask)
    truth = json.loads(paths["truth"].read_text())
    assert truth["truth"]["totals"] == json.loads(json.dumps(ph.truth["totals"]))
    assert truth["params"]["seed"] == 3
    first = pydicom.dcmread(sorted(paths["dicom"].iterdir())[0])
    assert first.Modality == "CT" and str(first.KVP) == "120" and float(first.RescaleIntercept) == -1024.0


def test_overlapping_reconstruction_header(tmp_path):
    ph = make_cac_phantom(4, shape=(10, 64, 64), spacing=(1.5, 3.0, 3.0), slice_thickness_mm=3.0, n_plaques=0)
    write_cac_phantom(ph, tmp_path, nifti=False)
    ds = [pydicom.dcmread(p) for p in sorted((tmp_path / "dicom").iterdir())]
    z = sorted(float(d.ImagePositionPatient[2]) for d in ds)
    assert float(ds[0].SliceThickness) == 3.0
    assert np.allclose(np.diff(z), 1.5)
    assert ph.truth["slice_spacing_mm"] == 1.5 and ph.truth["slice_thickness_mm"] == 3.0


def _calc(id_, k_px, hu):
    return Calcification(id=id_, kind="coronary", artery="LAD",
                         voxels={k: np.array(px) for k, px in k_px.items()}, hu={k: hu[k] for k in k_px})


def test_truth_equals_hand_computation():
    grid = OffsetGrid((6, 40, 40), (3.0, 0.5, 0.5))
    square8 = [(r, c) for r in range(10, 12) for c in range(10, 14)]  # 8 px = 2 mm²
    block12 = [(20 + r, 20 + c) for r in range(3) for c in range(4)]  # 12 px = 3 mm²
    calcs = [
        _calc(1, {1: square8}, {1: 250.0}),  # 2 mm² x 2
        _calc(2, {3: block12, 4: block12}, {3: 165.0, 4: 450.0}),  # two slices, per-slice peaks 165 / 450
        _calc(3, {1: [(30 + i, 5 + i) for i in range(6)]}, {1: 350.0}),  # diagonal staircase, 1.5 mm²
        _calc(4, {1: [(30 + r, 30 + c) for r in range(2) for c in range(4)]}, {1: 129.0}),  # sub-130, 2 mm²
        _calc(5, {1: [(2, 30), (2, 31), (3, 30)]}, {1: 600.0}),  # 3 px = 0.75 mm², under the minimum
        _calc(6, {3: [(2, 2), (2, 3), (3, 2), (3, 3)], 4: [(2, 2), (2, 3), (3, 2), (3, 3)]},
              {3: 129.0, 4: 300.0}),  # 1 mm² per slice: a sub-130 slice under a 300 HU one
    ]
    t = phantom_truth(calcs, grid, 3.0, 0.743)["totals"]
    # 2D 8-connected roi: 2*2 + 3*1 + 3*4 + 1.5*3 + 1*3 = 26.5; sub-130 and 0.75 mm² lesions do not count
    assert t["roi_8_mm2"]["agatston"] == pytest.approx(26.5, abs=1e-9)
    assert t["roi_8_mm2"]["n_lesions"] == 5
    # 4-connected: the staircase is six 0.25 mm² lesions, all under the minimum
    assert t["roi_4_mm2"]["agatston"] == pytest.approx(22.0, abs=1e-9)
    # in pixels (>= 4 px, the same as 1 mm² at 0.5 mm): identical
    assert t["roi_8_px"]["agatston"] == pytest.approx(26.5, abs=1e-9)
    # 3D: lesion 2 takes its 3D peak (450 HU, weight 4) on both slices
    assert t["roi_3d_mm2"]["agatston"] == pytest.approx(2 * 2 + 3 * 4 + 3 * 4 + 1.5 * 3 + 1 * 3, abs=1e-9)
    # 3D lesion mode also counts lesion 6's 129 HU slice, at the 3D peak's weight 3
    assert t["lesion_3d_mm2"]["agatston"] == pytest.approx(2 * 2 + 3 * 4 + 3 * 4 + 1.5 * 3 + 2 * 3, abs=1e-9)
    # 2D lesion mode: the 129 HU lesions have weight 0, so it equals roi
    assert t["lesion_8_mm2"]["agatston"] == pytest.approx(26.5, abs=1e-9)
    # volume: counted voxels x 0.25 mm² x 3 mm; mass: 0.743 mg/cm³/HU x sum(HU x voxel mm³) / 1000
    vox = 8 + 12 + 12 + 6 + 4
    assert t["roi_8_mm2"]["volume_mm3"] == pytest.approx(vox * 0.75)
    mass = 0.743 * 0.75 * (8 * 250 + 12 * 165 + 12 * 450 + 6 * 350 + 4 * 300) / 1000.0
    assert t["roi_8_mm2"]["mass_mg"] == pytest.approx(mass)
    assert t["roi_8_mm2"]["risk_standard"] == "1-99" and t["roi_8_mm2"]["risk_deepcac"] == "1-100"
    # at 1.5 mm spacing Agatston's Δz scales the score by 1.5 / 3
    half = phantom_truth(calcs, OffsetGrid((6, 40, 40), (1.5, 0.5, 0.5)), 3.0, 0.743)["totals"]
    assert half["roi_8_mm2"]["agatston"] == pytest.approx(26.5 / 2, abs=1e-9)


def test_min_area_in_pixels_convention():
    # 0.7 mm pixels: 3 px = 1.47 mm² pass "mm2" but not ">= 4 px"; 1 mm² needs 3 px
    mask = np.zeros((1, 10, 10), bool)
    mask[0, 4, 4:7] = True
    hu = np.where(mask, 300.0, 0.0).astype(np.float32)
    mm2 = analytic_scores(hu, mask, (3.0, 0.7, 0.7), CONVENTIONS["roi_8_mm2"])
    px = analytic_scores(hu, mask, (3.0, 0.7, 0.7), CONVENTIONS["roi_8_px"])
    assert mm2["agatston"] == pytest.approx(3 * 0.49 * 3) and px["agatston"] == 0.0


def test_noise_sd_and_correlation():
    kw = dict(shape=(24, 128, 128), spacing=(3.0, 1.0, 1.0), n_plaques=0, distractors=False)
    clean = make_cac_phantom(2, **kw).hu.astype(np.float64)
    noisy = make_cac_phantom(2, **kw, noise_sd=25.0, noise_corr_mm=1.0).hu.astype(np.float64)
    white = make_cac_phantom(2, **kw, noise_sd=25.0, noise_corr_mm=0.0).hu.astype(np.float64)
    uniform = ndi.binary_erosion(np.abs(clean - 38.0) < 0.5, iterations=2)  # blood pool, away from edges
    assert uniform.sum() > 2000
    assert np.std(noisy[uniform]) == pytest.approx(25.0, rel=0.1)

    def lag1(img):
        n = img - clean
        return float(np.corrcoef(n[:, :, :-1].ravel(), n[:, :, 1:].ravel())[0, 1])

    assert lag1(noisy) > 0.4
    assert abs(lag1(white)) < 0.05


def test_edge_cases_present(fine_edge):
    ph = fine_edge
    by = {p["edge_case"]: p for p in _coronary(ph) if p["edge_case"]}
    assert by["min_area"]["pixels_per_slice"] == [4] and by["min_area"]["area_mm2_per_slice"] == [1.0]
    assert by["under_min_area"]["pixels_per_slice"] == [3]
    for v in BIN_EDGE_HU:
        assert by[f"bin_edge_{int(v)}"]["hu"] == v
    # the staircase: one 8-connected lesion, as many 4-connected lesions as pixels
    diag = np.asarray(by["diagonal"]["voxels"])
    assert len(set(diag[:, 0])) == 1 and len(diag) >= 2
    steps = np.abs(np.diff(diag[np.argsort(diag[:, 1])][:, 1:], axis=0))
    assert np.all(steps == 1)
    k = diag[0, 0]
    lab8, _ = ndi.label(ph.labels[k] == 2, np.ones((3, 3)))
    lab4, _ = ndi.label(ph.labels[k] == 2)
    assert len({lab8[r, c] for _, r, c in diag}) == 1
    assert len({lab4[r, c] for _, r, c in diag}) == len(diag)
    assert (lab8 == lab8[diag[0, 1], diag[0, 2]]).sum() == len(diag)
    peaks = by["per_slice_peak"]
    assert len(peaks["slices"]) == 3 and len(set(peaks["hu_per_slice"])) == 3
    sub = by["sub130_slice"]
    assert sub["hu_per_slice"] == [129.0, 300.0] and len(sub["slices"]) == 2
    # the ideal image holds exactly the truth voxels at exactly the truth HU
    for p in _coronary(ph):
        v = np.asarray(p["voxels"])
        assert np.all(ph.labels[v[:, 0], v[:, 1], v[:, 2]] == 2)
        per_slice = dict(zip(p["slices"], p["hu_per_slice"], strict=True))
        assert np.array_equal(ph.hu[v[:, 0], v[:, 1], v[:, 2]], [per_slice[k] for k in v[:, 0]])


def test_ideal_image_matches_labels(fine_edge):
    ph = fine_edge
    cor = ph.labels == 2
    values = {hv for p in _coronary(ph) for hv in p["hu_per_slice"]}
    assert set(np.unique(ph.hu[cor]).tolist()) <= values
    # inside the coronary scoring region, only plaque voxels reach 130 HU
    hot = (ph.hu >= 130) & ph.coronary_region
    assert np.array_equal(hot, cor & (ph.hu >= 130))
    assert sum(sum(p["pixels_per_slice"]) for p in _coronary(ph)) == int(cor.sum())


def test_stent_and_contrast():
    ph = make_cac_phantom(8, **SMALL, n_plaques=2, stent=True, contrast=True)
    assert ph.truth["flags"]["stent"] and ph.truth["flags"]["contrast"]
    assert (ph.labels == 4).any() and np.all(ph.hu[ph.labels == 4] == 2500)
    stent = [p for p in ph.truth["plaques"] if p["kind"] == "stent"]
    assert len(stent) == 1 and not stent[0]["is_coronary"]
    assert not (ph.coronary_region & (ph.labels == 4)).any()
    blood = ph.masks["blood_pool"]
    assert abs(np.median(ph.hu[blood]) - 300) < 5
    plain = make_cac_phantom(8, **SMALL, n_plaques=2)
    assert abs(np.median(plain.hu[plain.masks["blood_pool"]]) - 40) < 10


@pytest.mark.parametrize("seed,varied", [(0, False), (1, False), (2, False), (3, True), (4, True)])
def test_plaques_in_epicardial_fat_next_to_coronaries(seed, varied):
    ph = make_cac_phantom(seed, **SMALL, n_plaques=6, distractors=True, coronary_variation=varied)
    cor = ph.labels == 2
    assert cor.any()
    heart_dilated = ndi.binary_dilation(ph.heart_mask, iterations=2)
    assert np.all(heart_dilated[cor]) and np.all(ph.coronary_region[cor])
    assert not (ndi.binary_dilation(ph.masks["bone"]) & cor).any()
    # every plaque touches (or is within 2 voxels of) a coronary lumen
    near_lumen = ndi.binary_dilation(ph.masks["coronary_lumen"], iterations=2)
    for p in _coronary(ph):
        v = np.asarray(p["voxels"])
        assert near_lumen[v[:, 0], v[:, 1], v[:, 2]].any()
        assert not ph.masks["blood_pool"][v[:, 0], v[:, 1], v[:, 2]].any()
    # distractors are non-coronary calcium, outside the coronary scoring region
    other = ph.labels == 3
    assert other.any() and not (other & ph.coronary_region).any()
    kinds = {p["kind"] for p in ph.truth["plaques"] if not p["is_coronary"]}
    assert {"valve", "annulus"} <= kinds or {"aortic"} <= kinds


def test_varied_coronaries_run_deeper_in_their_grooves_and_branch():
    from scipy.spatial import cKDTree

    h = HeartGeometry.draw(np.random.default_rng(0))
    anatomy = CoronaryAnatomy(groove_mm=8.0, meander_mm=2.0, branches=True, detail_seed=1)
    deep = coronary_paths(h, aortic_root(h), 15.0, anatomy)
    shallow = coronary_paths(h, aortic_root(h), 15.0, anatomy, groove_scale=0.0)
    assert set(deep) == {"LM", "LAD", "LCX", "RCA", "D1", "OM1", "PDA"}
    for name in ("LCX", "RCA"):  # AV-groove vessels sink by up to the groove depth, never more
        sunk = cKDTree(shallow[name]).query(deep[name])[0]
        assert 4.0 < sunk.max() <= 8.0 + 0.5
    standard = coronary_paths(h, aortic_root(h), 15.0)
    assert set(standard) == {"LM", "LAD", "LCX", "RCA"}


def test_coronary_variation_changes_the_coronaries_and_nothing_else_of_the_chest():
    plain = make_cac_phantom(5, **SMALL, n_plaques=4)
    varied = make_cac_phantom(5, **SMALL, n_plaques=4, coronary_variation=True)
    assert plain.params["coronary_variation"] is False and varied.params["coronary_variation"] is True
    assert np.array_equal(plain.masks["bone"], varied.masks["bone"])
    assert np.array_equal(plain.masks["right_lung"], varied.masks["right_lung"])
    assert not np.array_equal(plain.masks["coronary_lumen"], varied.masks["coronary_lumen"])
    branched = {p["artery"] for s in range(6)
                for p in _coronary(make_cac_phantom(s, **SMALL, n_plaques=8, coronary_variation=True))}
    assert branched & {"D1", "OM1", "PDA"}


def test_base_fat_puts_fat_deep_in_the_heart_base_and_keeps_valve_calcium_out_of_it():
    kw = dict(shape=(60, 160, 160), spacing=(2.5, 1.0, 1.0), n_plaques=4)
    plain = make_cac_phantom(5, **kw)
    padded = make_cac_phantom(5, **kw, base_fat=True)
    assert padded.params["base_fat"] is True and np.array_equal(plain.masks["bone"], padded.masks["bone"])

    def deepest_fat_mm(ph):
        fat = (ph.hu > -150) & (ph.hu < -40) & ph.heart_mask
        return ndi.distance_transform_edt(ph.heart_mask, sampling=ph.spacing)[fat].max()

    assert deepest_fat_mm(padded) > deepest_fat_mm(plain) + 3.0
    for p in padded.truth["plaques"]:
        if p["kind"] in ("valve", "annulus"):
            v = np.asarray(p["voxels"])
            assert not (padded.coronary_region[v[:, 0], v[:, 1], v[:, 2]]).any()


def test_large_plaques_add_heavy_coronary_calcium_and_leave_the_rest_in_place():
    from medhub.synth.cac_phantom import LARGE_PLAQUE_AREA_MM2

    kw = dict(shape=(60, 160, 160), spacing=(1.5, 1.0, 1.0), n_plaques=3)
    plain = make_cac_phantom(7, **kw)
    heavy = make_cac_phantom(7, **kw, large_plaques=True)
    assert heavy.params["large_plaques"] is True
    standard = _coronary(plain)
    added = _coronary(heavy)[len(standard):]
    assert [p["voxels"] for p in _coronary(heavy)[:len(standard)]] == [p["voxels"] for p in standard]
    others = [[p["voxels"] for p in ph.truth["plaques"] if not p["is_coronary"]] for ph in (plain, heavy)]
    assert others[0] == others[1]  # distractors and stent where they were
    assert 1 <= len(added) <= 3
    for p in added:
        assert len(p["slices"]) >= 2 and p["hu"] >= 350.0
        assert np.mean(p["area_mm2_per_slice"]) >= 0.7 * LARGE_PLAQUE_AREA_MM2[0] - 1.0
    assert heavy.truth["totals"]["mapped_8_mm2"]["agatston"] > plain.truth["totals"]["mapped_8_mm2"]["agatston"]


def test_risk_categories_cover_conventions(fine_edge):
    t = fine_edge.truth["totals"]
    assert set(t) == set(CONVENTIONS)
    for v in t.values():
        assert v["risk_standard"] in ("0", "1-99", "100-399", ">=400")
        assert v["risk_deepcac"] in ("0", "1-100", "101-300", ">300")
        assert math.isfinite(v["agatston"]) and v["volume_mm3"] >= 0


@pytest.mark.parametrize("kw", [
    dict(shape=(40, 320, 320), spacing=(2.5, 0.5, 0.5)),
    dict(shape=(60, 160, 160), spacing=(1.5, 1.0, 1.0), slice_thickness_mm=3.0),
    dict(shape=(30, 128, 128), spacing=(3.0, 2.0, 2.0)),
])
def test_scorer_matches_truth_on_ideal_phantom(kw):
    scoring = pytest.importorskip("medhub.cac.scoring")
    ph = make_cac_phantom(21, **kw, n_plaques=6, edge_cases=True, stent=True,
                          coronary_variation=kw["spacing"][1] == 1.0)
    c = ph.params["calibration_factor"]
    lesion_mask = ph.labels == 2
    for name, conv in CONVENTIONS.items():
        mask = ph.coronary_region if conv.mode == "roi" else lesion_mask
        got = scoring.score_calcium(ph.hu, ph.spacing, mask, scoring.ScoringConvention(**conv.scoring_kwargs()),
                                    calibration_factor=c)
        want = ph.truth["totals"][name]
        assert got.agatston == pytest.approx(want["agatston"], abs=1e-6), name
        assert got.volume_mm3 == pytest.approx(want["volume_mm3"], abs=1e-6), name
        assert got.mass_mg == pytest.approx(want["mass_mg"], abs=1e-6), name
        assert got.n_lesions == want["n_lesions"], name
        assert scoring.risk_category(got.agatston, "standard") == want["risk_standard"]
        assert scoring.risk_category(got.agatston, "deepcac") == want["risk_deepcac"]


def test_phantom_command_writes_a_study_that_the_scorer_reproduces(tmp_path) -> None:
    """``medhub cac phantom`` then ``medhub cac score`` with the phantom's own plaque labels: noise-free and blur-free,
    the DICOM series scores its analytic truth."""
    from typer.testing import CliRunner

    from medhub.cac.cli import cac_app

    runner = CliRunner()
    made = runner.invoke(cac_app, ["phantom", str(tmp_path / "ph"), "--seed", "11", "--slices", "40", "--size", "160",
                                   "--slice-spacing", "3", "--pixel", "1.4", "--plaques", "4", "--no-nifti"])
    assert made.exit_code == 0, made.output
    assert not (tmp_path / "ph" / "ct.nii.gz").exists()
    truth = json.loads((tmp_path / "ph" / "truth.json").read_text())
    assert truth["params"]["shape"] == [40, 160, 160] and truth["params"]["spacing"] == [3.0, 1.4, 1.4]
    expected = truth["truth"]["totals"]["lesion_8_mm2"]
    assert expected["agatston"] > 0

    labels = tmp_path / "labels"
    again = runner.invoke(cac_app, ["phantom", str(labels), "--seed", "11", "--slices", "40", "--size", "160",
                                    "--slice-spacing", "3", "--pixel", "1.4", "--plaques", "4"])
    assert again.exit_code == 0, again.output
    assert json.loads((labels / "truth.json").read_text()) == truth  # same seed, same phantom
    scored = runner.invoke(cac_app, ["score", str(tmp_path / "ph" / "dicom"), "--mask", str(labels / "labels.nii.gz"),
                                     "--label", str(CORONARY_CALCIUM), "--mode", "lesion", "--json"])
    assert scored.exit_code == 0, scored.output
    assert json.loads(scored.output)["agatston"] == pytest.approx(expected["agatston"], abs=1e-6)
