"""Calcium candidates, their classifier, plaque insertion and the lymph-node distractors of the phantoms."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medhub.errors import InputError
from medhub.models.cac.candidates import FEATURES, find_candidates
from medhub.models.cac.classifier import CLASSES, CandidateClassifier, calibration_report

SPACING = (1.0, 0.8, 0.8)


def _scan() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 100 x 96 x 96 block of soft tissue (40 HU) with a heart ball, a 400 HU plaque on its surface, a 160 HU
    speck inside it and a 700 HU bar (bone) running along z far beyond the region at the back."""
    hu = np.full((100, 96, 96), 40, np.int16)
    z, y, x = np.indices(hu.shape)
    heart = ((z - 50) * 1.0) ** 2 + ((y - 48) * 0.8) ** 2 + ((x - 48) * 0.8) ** 2 <= 22.0 ** 2
    hu[48:51, 20:23, 47:50] = 400  # plaque: 3 slices of 3 x 3 pixels at the heart's front edge
    hu[50, 48, 48] = 160  # speck
    hu[:, 88:92, 40:56] = 700  # bone bar
    region = np.zeros(hu.shape, bool)
    region[25:75, 5:92, 5:92] = True
    return hu, heart, region


def test_every_component_above_130_hu_in_the_region_is_a_candidate_with_its_features() -> None:
    hu, heart, region = _scan()
    candidates = find_candidates(hu, SPACING, region, heart, soft_tissue_hu=40.0, noise_sd=10.0)
    table = candidates.table
    assert len(candidates) == 3 and list(table.columns[: len(FEATURES)]) == list(FEATURES)
    plaque = table[table["peak_hu"] == 400].iloc[0]
    assert plaque["volume_mm3"] == pytest.approx(27 * 0.64)
    assert plaque["max_area_mm2"] == pytest.approx(9 * 0.64)
    assert plaque["z_extent_mm"] == pytest.approx(3.0)
    assert plaque["peak_sd"] == pytest.approx((400 - 40) / 10.0)
    assert plaque["dense_structure_open"] == 0.0 and plaque["shell_soft_fraction"] == 1.0
    speck = table[table["peak_hu"] == 160].iloc[0]
    assert speck["heart_fraction"] == 1.0 and speck["heart_depth_mm"] > 15.0
    assert speck["axis_distance"] < plaque["axis_distance"]  # the speck sits near the heart's centre
    bone = table[table["peak_hu"] == 700].iloc[0]
    assert bone["dense_structure_open"] == 1.0 and bone["heart_depth_mm"] < 0
    # the label map and the table agree: candidate i is row i - 1
    mask = candidates.mask(table["peak_hu"].to_numpy() == 400)
    assert mask.sum() == 27 and (hu[mask] == 400).all()
    assert candidates.full_labels()[50, 48, 48] == table.index[table["peak_hu"] == 160][0] + 1


def test_no_candidate_when_nothing_reaches_130_hu() -> None:
    hu, heart, region = _scan()
    hu[hu >= 130] = 100
    candidates = find_candidates(hu, SPACING, region, heart)
    assert len(candidates) == 0 and not candidates.mask(np.zeros(0, bool)).any()


def _examples(n: int, seed: int) -> pd.DataFrame:
    """Separable examples: coronary ones small and in fat on the heart's surface, the others not."""
    rng = np.random.default_rng(seed)
    classes = rng.choice(CLASSES, size=n, p=[0.3, 0.2, 0.2, 0.3])
    frame = pd.DataFrame(rng.normal(size=(n, len(FEATURES))), columns=list(FEATURES))
    frame.loc[classes == "coronary", "shell_fat_fraction"] += 5.0
    frame.loc[classes == "aortic", "rel_z"] += 5.0
    frame.loc[classes == "valve", "axis_distance"] -= 5.0
    frame["class"] = classes
    frame["scan"] = np.arange(n) // 10
    return frame


def test_classifier_learns_calibrates_and_round_trips(tmp_path: Path) -> None:
    train, test = _examples(600, 0), _examples(300, 1)
    sources = np.where(train["scan"] % 2, "phantom", "real")
    model = CandidateClassifier(rounds=60).fit(train, train["class"], train["scan"], sources=sources)
    assert model.record["out_of_fold"]["recall"] > 0.9 and model.record["out_of_fold"]["precision"] > 0.9
    assert set(model.record["out_of_fold_by_source"]) == {"phantom", "real"}
    decisions = model.predict(test)
    truth = (test["class"] == "coronary").to_numpy()
    assert ((decisions["accepted"].to_numpy() == truth).mean()) > 0.95
    assert decisions["p_coronary"].between(0, 1).all()
    rejected = decisions[~decisions["accepted"]]
    assert (rejected["kind"].to_numpy() == test.loc[rejected.index, "class"].to_numpy()).mean() > 0.9
    assert rejected["reason"].str.startswith("not coronary (p ").all()
    path = model.save(tmp_path / "classifier.txt.gz")
    assert (tmp_path / "classifier.json").exists()
    assert path.read_bytes() == model.save(tmp_path / "again.txt.gz").read_bytes()  # same model, same bytes
    again = CandidateClassifier.load(path)
    assert again.members == len(again.boosters) == model.members == 5
    pd.testing.assert_frame_equal(again.predict(test), decisions)
    assert model.predict(test.iloc[:0]).empty


def test_candidates_on_the_descending_aortas_wall_are_aortic_whatever_their_probability() -> None:
    from medhub.models.cac.classifier import AORTIC_WALL_MM

    train, test = _examples(600, 0), _examples(300, 1)
    model = CandidateClassifier(rounds=60).fit(train, train["class"], train["scan"])
    coronary = test[test["class"] == "coronary"].copy()
    before = model.predict(coronary)
    assert before["accepted"].mean() > 0.9
    coronary["heart_fraction"] = 0.2
    coronary["aorta_distance_mm"] = np.where(np.arange(len(coronary)) % 2, -1.0, AORTIC_WALL_MM + 10.0)
    on_wall = coronary["aorta_distance_mm"].to_numpy() <= AORTIC_WALL_MM
    after = model.predict(coronary)
    assert not after["accepted"][on_wall].any() and (after["kind"][on_wall] == "aortic").all()
    assert after["reason"][on_wall].str.contains("descending aorta's wall").all()
    # off the wall the probability decides as before (the outside-heart threshold applies)
    assert after["p_coronary"].equals(before["p_coronary"])
    # inside the heart mask, or with no aorta found (NaN), the rule does not apply
    coronary["heart_fraction"], coronary["aorta_distance_mm"] = 0.9, -1.0
    assert model.predict(coronary)["accepted"].equals(before["accepted"])
    coronary["heart_fraction"], coronary["aorta_distance_mm"] = 0.2, np.nan
    assert not model.predict(coronary)["kind"].eq("aortic").all()


def test_classifier_refuses_a_model_trained_on_other_features(tmp_path: Path) -> None:
    import json

    train = _examples(200, 0)
    path = CandidateClassifier(rounds=5, folds=2).fit(train, train["class"], train["scan"]).save(tmp_path / "c.txt")
    sidecar = json.loads(path.with_suffix(".json").read_text())
    sidecar["features"] = sidecar["features"][:-1]
    path.with_suffix(".json").write_text(json.dumps(sidecar))
    with pytest.raises(ValueError, match="trained on features"):
        CandidateClassifier.load(path)


def test_calibration_report_of_a_perfect_and_a_useless_score() -> None:
    truth = np.array([1, 1, 0, 0, 1, 0], float)
    perfect = calibration_report(truth, truth)
    assert perfect == {"brier": 0.0, "ece": 0.0, "precision": 1.0, "recall": 1.0}
    useless = calibration_report(np.full(6, 0.5), truth)
    assert useless["brier"] == 0.25 and useless["ece"] == 0.0 and useless["precision"] == 0.5


def test_errors_cross_process_boundaries_whole() -> None:
    error = pickle.loads(pickle.dumps(InputError("scan.nrrd", "heart not found", code="heart-not-found")))
    assert str(error) == "scan.nrrd: heart not found" and error.code == "heart-not-found"


def test_inserted_plaque_lands_at_its_site_with_the_scanners_blur() -> None:
    from medhub.synth.plaque_insertion import insert_plaques

    hu = np.full((20, 20, 20), -100, np.int16)  # fat
    inserted = insert_plaques(hu, (3.0, 3.0, 3.0), [np.array([10, 10, 10])], np.random.default_rng(0),
                              vessel=False)
    footprint = inserted.footprints[0]
    assert footprint[10, 10, 10] and footprint.sum() < 9 ** 3
    block = np.zeros(hu.shape, bool)
    block[6:15, 6:15, 6:15] = True  # HALF_BOX = 4 voxels each side of the site
    assert (inserted.hu[~block] == -100).all() and not (footprint & ~block).any()
    peak = inserted.hu.max()
    assert -100 < peak <= inserted.plaques[0]["plaque_hu"]  # a 3 mm voxel holds only part of the plaque
    again = insert_plaques(hu, (3.0, 3.0, 3.0), [np.array([10, 10, 10])], np.random.default_rng(0), vessel=False)
    assert np.array_equal(again.hu, inserted.hu)


def test_outside_pericardium_sites_lie_in_tissue_outside_the_heart_clear_of_lung_and_bone() -> None:
    from scipy import ndimage as ndi

    from medhub.models.cac.train_classifier import OUTSIDE_HU, OUTSIDE_MM, outside_pericardium_sites

    spacing = (3.0, 3.0, 3.0)
    z, y, x = np.mgrid[:40, :40, :40]
    hu = np.full((40, 40, 40), 40, np.int16)  # soft tissue
    hu[:, :, :6] = -800  # lung along one side
    hu[:, 30:, :] = 700  # bone along another
    heart = (z - 20) ** 2 + (y - 18) ** 2 + (x - 20) ** 2 <= 6 ** 2
    sites = outside_pericardium_sites(hu, heart, hu >= 130, spacing)
    assert len(sites)
    distance = ndi.distance_transform_edt(~heart, sampling=spacing)[tuple(sites.T)]
    assert distance.min() >= OUTSIDE_MM[0] and distance.max() <= OUTSIDE_MM[1]
    values = hu[tuple(sites.T)]
    assert values.min() >= OUTSIDE_HU[0] and values.max() <= OUTSIDE_HU[1]
    assert sites[:, 2].min() * 3.0 >= 6 * 3.0 + 6.0 and sites[:, 1].max() * 3.0 <= 29 * 3.0 - 6.0
    assert len(outside_pericardium_sites(hu, np.zeros_like(heart), hu >= 130, spacing)) == 0


def _chest_slab(aorta_centre: tuple[int, int] = (33, 26), aorta_radius_vox: float = 4.0
                ) -> tuple[np.ndarray, np.ndarray]:
    """A 20-slice 3 mm slab in the canonical view: lung everywhere, a heart (soft tissue) in front, a vertebral
    body (700 HU) behind it on the midline, and the descending aorta (40 HU) in front of the body, to its left
    (larger column: columns run from the patient's right)."""
    hu = np.full((20, 60, 50), -800, np.int16)
    _, y, x = np.mgrid[:20, :60, :50]
    heart = (y - 18) ** 2 + (x - 22) ** 2 <= 9 ** 2
    hu[heart] = 40
    hu[(y - 46) ** 2 + (x - 22) ** 2 <= 5 ** 2] = 700
    hu[(y - aorta_centre[0]) ** 2 + (x - aorta_centre[1]) ** 2 <= aorta_radius_vox ** 2] = 40
    return hu, heart


def test_descending_aorta_is_found_by_its_shape_beside_the_spine() -> None:
    from medhub.models.cac.aorta import descending_aorta
    from medhub.models.cac.train_classifier import AORTIC_NEAR_MM, aortic_wall_sites

    spacing = (3.0, 3.0, 3.0)
    hu, heart = _chest_slab()
    found = descending_aorta(hu, heart, spacing)
    assert found is not None
    centres, radius = found
    assert sorted(centres) == list(range(20))
    assert all(abs(r - 33) <= 1 and abs(c - 26) <= 1 for r, c in centres.values())
    assert 10.5 <= radius <= 15.0  # 4 voxels = 12 mm, give or take the disk's pixel edge
    sites = aortic_wall_sites(hu, heart, spacing)
    assert len(sites)
    # on the wall: 1.5 mm inside the outer edge, and near the heart
    from_centre = np.hypot((sites[:, 1] - 33) * 3.0, (sites[:, 2] - 26) * 3.0)
    assert np.all(np.abs(from_centre - (radius - 1.5)) <= 3.0)
    from scipy import ndimage as ndi

    outside = ndi.distance_transform_edt(~heart, sampling=spacing)[tuple(sites.T)]
    assert outside.max() <= AORTIC_NEAR_MM
    # no tube of aortic size (a 3 mm vessel only): not found, so nothing is inserted
    thin, heart = _chest_slab(aorta_radius_vox=1.0)
    assert descending_aorta(thin, heart, spacing) is None
    assert len(aortic_wall_sites(thin, heart, spacing)) == 0


def test_aorta_distance_feature_is_zero_on_the_aortic_wall_and_unknown_off_its_track() -> None:
    from medhub.models.cac.candidates import FAR_MM, AortaTrack

    spacing = (3.0, 3.0, 3.0)
    hu, heart = _chest_slab()
    track = AortaTrack.of(hu, heart, spacing)
    assert len(track.slice_mm) == 20
    # the slab's aorta: centre row 33, column 26, radius 4 voxels (12 mm)
    on_wall = track.distance_mm(np.array([10, 33 - 4, 26]), spacing)
    assert abs(on_wall) <= 3.0
    assert track.distance_mm(np.array([10, 33, 26]), spacing) < -8.0  # inside: negative
    assert track.distance_mm(np.array([10, 2, 2]), spacing) == FAR_MM  # capped
    assert np.isnan(track.distance_mm(np.array([25, 33, 26]), spacing))  # beyond the tracked slices
    # a finer grid finds the same aorta (it is searched on a grid of about AORTA_GRID_MM)
    fine = AortaTrack.of(np.repeat(hu, 3, axis=0), np.repeat(heart, 3, axis=0), (1.0, 3.0, 3.0))
    assert abs(fine.distance_mm(np.array([30, 29, 26]), (1.0, 3.0, 3.0)) - on_wall) <= 3.0
    none = AortaTrack.of(*_chest_slab(aorta_radius_vox=1.0), spacing)
    assert np.isnan(none.distance_mm(np.array([10, 33, 26]), spacing))


@pytest.mark.skipif(not (Path(__file__).resolve().parents[2].parent / "shared" / "data" / "lidc_chest_ct").is_dir(),
                    reason="../shared/data/lidc_chest_ct is absent")
def test_descending_aorta_of_the_real_lidc_scans_is_a_tube_of_aortic_size() -> None:
    from medhub.io.nifti import read_volume
    from medhub.models.cac.aorta import descending_aorta
    from medhub.models.cac.train_classifier import LIDC, LIDC_CASES

    for case in LIDC_CASES:
        volume = read_volume(LIDC / f"{case}_ct_3mm.nrrd")
        heart = read_volume(LIDC / f"{case}_labels_3mm.nrrd").array == 1
        found = descending_aorta(volume.array.astype(np.float32), heart, volume.spacing)
        assert found is not None, case
        centres, radius = found
        assert 9.0 <= radius <= 16.0, (case, radius)  # an adult descending aorta: 20-30 mm across
        assert len(centres) >= 0.8 * heart.any(axis=(1, 2)).sum(), case
        # behind the heart, and its lumen holds blood or soft tissue, never lung or bone
        heart_row = np.argwhere(heart).mean(axis=0)[1]
        for k, (r, c) in centres.items():
            assert r > heart_row, (case, k)
            assert -60 <= volume.array[k, round(r), round(c)] <= 120, (case, k)


def test_phantom_nodes_and_granulomas_are_extra_non_coronary_calcium_outside_the_heart() -> None:
    from medhub.synth.cac_phantom import OTHER_CALCIUM, make_cac_phantom

    kwargs = {"shape": (60, 192, 192), "spacing": (2.0, 1.2, 1.2), "n_plaques": 2}
    plain, with_nodes = make_cac_phantom(3, **kwargs), make_cac_phantom(3, nodes=True, **kwargs)
    nodes = [p for p in with_nodes.truth["plaques"] if p["kind"] in ("node", "granuloma")]
    assert nodes and not any(p["kind"] == "node" for p in plain.truth["plaques"])
    for node in nodes:
        voxels = tuple(np.asarray(node["voxels"]).T)
        assert not with_nodes.heart_mask[voxels].any() and (with_nodes.labels[voxels] == OTHER_CALCIUM).all()
    # everything else stays where it was
    assert [p for p in with_nodes.truth["plaques"] if p not in nodes] == plain.truth["plaques"]
    assert with_nodes.truth["totals"] == plain.truth["totals"]



def test_train_classifier_command_defaults_are_the_training_functions() -> None:
    """The CLI spells its defaults out (importing the trainer would slow start-up); they must not drift."""
    import inspect

    from medhub.cac.cli import train_classifier_command
    from medhub.models.cac.train_classifier import train

    command = inspect.signature(train_classifier_command).parameters
    function = inspect.signature(train).parameters
    shared = sorted(set(command) & set(function))
    assert {"members", "phantoms", "lidc_trials", "seed", "workers", "out"} <= set(shared)
    for name in shared:
        assert command[name].default == function[name].default, name


def test_insertion_sites_lie_in_epicardial_fat_near_the_heart_and_clear_of_calcium():
    from medhub.synth.plaque_insertion import insertion_sites

    shape = (40, 40, 40)
    hu = np.full(shape, 40, np.int16)  # heart soft tissue ...
    hu[:, :, 24:] = -100  # ... next to a slab of fat
    hu[20, 20, 36] = 700  # calcium already in the fat: no site within 9 mm of it
    sites = insertion_sites(hu.astype(np.float32), np.ones(shape, bool), hu >= 200, (1.5, 1.5, 1.5))
    assert len(sites) and np.all(hu[tuple(sites.T)] == -100)
    assert sites[:, 2].max() <= 24 + 4  # within 6 mm (4 voxels of 1.5 mm) of the soft tissue
    assert np.all(np.linalg.norm((sites - [20, 20, 36]) * 1.5, axis=1) > 9.0)
