"""Generated brain sessions: deterministic, plausible contrasts, lesions where they belong, FOMO layout."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from medhub.synth.brain import SEQUENCES, load_atlas, make_brain, write_session

RES = 2.0  # mm: the tests run on the template averaged to 2 mm (about 1 s a brain)


def test_the_same_seed_gives_the_same_brain_and_another_seed_another():
    a, b = make_brain(7, resolution_mm=RES), make_brain(7, resolution_mm=RES)
    c = make_brain(8, resolution_mm=RES)
    assert all(np.array_equal(a.sequences[k], b.sequences[k]) for k in SEQUENCES)
    assert a.targets == b.targets and not np.array_equal(a.sequences["t1"], c.sequences["t1"])


def test_tissue_contrasts_follow_the_sequences():
    atlas = load_atlas(RES)
    brain = make_brain(1, infarct=False, mass=False, age=30, resolution_mm=RES)
    # tissue classes of the undeformed template are close enough after a few-mm deformation for a median
    wm, gm, csf = (atlas.wm > 0.9) & atlas.mask, (atlas.gm > 0.9) & atlas.mask, (atlas.csf > 0.9) & atlas.mask
    for name, order in (("t1", (wm, gm, csf)), ("flair", (gm, wm, csf)), ("t2", (csf, gm, wm)),
                        ("adc", (csf, gm, wm))):
        medians = [float(np.median(brain.sequences[name][m])) for m in order]
        assert medians == sorted(medians, reverse=True), name


def test_an_infarct_is_bright_on_dwi_dark_on_adc_in_one_hemisphere():
    brain = make_brain(3, infarct=True, mass=False, resolution_mm=RES)
    lesion = brain.infarct
    assert lesion is not None and lesion.sum() > 20 and ndi.label(lesion)[1] == 1
    ring = ndi.binary_dilation(lesion, iterations=3) & ~lesion & brain.brain_mask
    for name, brighter in (("dwi_b1000", True), ("adc", False), ("flair", True)):
        inside, around = np.median(brain.sequences[name][lesion]), np.median(brain.sequences[name][ring])
        assert (inside > 1.3 * around) if brighter else (inside < 0.8 * around), name
    x = np.argwhere(lesion)[:, 0]
    middle = brain.brain_mask.shape[0] / 2
    assert np.all(x > middle) or np.all(x < middle)  # one middle cerebral artery territory
    assert brain.targets == {"infarct": 1.0, "mass": 0.0, "age": brain.age}


def test_an_extra_axial_mass_sits_at_the_surface_and_pushes_the_brain():
    with_mass = make_brain(5, infarct=False, mass=True, resolution_mm=RES)
    atlas = load_atlas(RES)
    mass = with_mass.mass
    assert mass is not None and mass.sum() > 100
    assert (mass & ~atlas.mask).any() and (mass & atlas.mask).any()  # dural-based: straddles the brain's edge
    assert np.median(with_mass.sequences["flair"][mass]) > np.median(with_mass.sequences["flair"][
        with_mass.brain_mask & ~mass])


def test_age_drives_atrophy():
    young = make_brain(11, age=25, infarct=False, mass=False, resolution_mm=RES)
    old = make_brain(11, age=85, infarct=False, mass=False, resolution_mm=RES)
    # same deformation and noise draw: only the age differs; more CSF (dark on T1, bright on T2) when old
    inside = young.brain_mask & old.brain_mask
    assert old.sequences["t2"][inside].mean() > 1.05 * young.sequences["t2"][inside].mean()
    assert old.sequences["t1"][inside].mean() < 0.97 * young.sequences["t1"][inside].mean()


def test_the_out_of_domain_variant_has_thick_slices_and_a_matching_affine():
    brain = make_brain(2, resolution_mm=1.0, out_of_domain=True, sequences=("flair", "dwi_b1000"))
    assert np.allclose(np.linalg.norm(brain.affine[:3, :3], axis=0), (0.9, 0.9, 6.0))
    shape = brain.sequences["flair"].shape
    assert shape[2] == load_atlas(1.0).gm.shape[2] // 6
    assert brain.brain_mask.shape == shape and set(brain.sequences) == {"flair", "dwi_b1000"}


def test_sessions_are_written_in_the_fomo_layout(tmp_path):
    brain = make_brain(4, infarct=True, resolution_mm=RES, sequences=("t1", "flair"))
    folder = write_session(tmp_path / "pretrain", "0001", "1", brain)
    assert sorted(p.name for p in folder.iterdir()) == ["flair.nii.gz", "t1.nii.gz"]
    assert folder == tmp_path / "pretrain" / "sub_0001" / "ses_1"
    image = nib.load(folder / "flair.nii.gz")
    assert np.allclose(image.affine, brain.affine) and image.shape == brain.sequences["flair"].shape
    write_session(tmp_path / "finetune" / "preprocessed", "0001", "1", brain,
                  labels_root=tmp_path / "finetune" / "labels", label="infarct")
    assert (tmp_path / "finetune" / "labels" / "sub_0001" / "ses_1" / "label.txt").read_text() == "1\n"
    write_session(tmp_path / "seg" / "preprocessed", "0001", "1", brain, labels_root=tmp_path / "seg" / "labels",
                  label="seg")
    seg = nib.load(tmp_path / "seg" / "labels" / "sub_0001" / "ses_1" / "seg.nii.gz")
    assert np.array_equal(np.asarray(seg.dataobj) > 0, brain.infarct)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_every_seed_gives_finite_positive_images(seed):
    brain = make_brain(seed, resolution_mm=RES)
    for image in brain.sequences.values():
        assert np.all(np.isfinite(image)) and image.min() >= 0 and image[brain.brain_mask].mean() > 0.1
