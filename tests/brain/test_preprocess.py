"""Brain preprocessing: RAS, foreground crop, z-normalization, 1 mm; and the inverse back onto the input grid."""

from __future__ import annotations

import numpy as np
import pytest

from medhub.brain.preprocess import background_value, preprocess, to_ras
from medhub.synth.brain import make_brain


def _world(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """RAS world coordinates (mm) of every voxel centre, shape (*shape, 3)."""
    index = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), axis=-1).astype(np.float64)
    return index @ affine[:3, :3].T + affine[:3, 3]


def _sphere(affine, shape, centre, radius):
    return np.linalg.norm(_world(affine, shape) - centre, axis=-1) <= radius


def test_a_1mm_lps_session_is_flipped_and_cropped_and_its_inverse_is_exact():
    brain = make_brain(1, resolution_mm=1.0, sequences=("t1", "flair"))
    # store it LPS (x and y reversed), as DICOM-minded tools do
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:3, 3] = [brain.sequences["t1"].shape[0] - 1, brain.sequences["t1"].shape[1] - 1, 0]
    affine = brain.affine @ flip
    lps = {name: (image[::-1, ::-1, :], affine) for name, image in brain.sequences.items()}

    _, record = preprocess(lps)

    ras_t1, ras_affine = to_ras(lps["t1"][0], affine)
    assert np.allclose(ras_affine, brain.affine) and np.array_equal(ras_t1, brain.sequences["t1"])
    assert np.allclose(np.asarray(record.affine)[:3, :3], np.eye(3))  # 1 mm RAS
    assert record.shape == tuple(b - a for a, b in record.box)  # already 1 mm: the box, not resampled
    # a mask on the input grid goes to the preprocessed grid and back unchanged
    mask = _sphere(affine, record.input_shape, centre=np.array([10.0, -20.0, 15.0]), radius=25.0)
    there = record.from_input_grid(mask.astype(np.uint8))
    assert np.array_equal(record.to_input_grid(there).astype(bool), mask)
    assert there.sum() == mask.sum()


def test_a_thick_slice_session_is_resampled_to_1mm_and_a_mask_lands_where_it_belongs():
    brain = make_brain(2, resolution_mm=1.0, out_of_domain=True, sequences=("flair", "dwi_b1000"))
    session = {name: (image, brain.affine) for name, image in brain.sequences.items()}
    arrays, record = preprocess(session)
    out_affine = np.asarray(record.affine)
    assert np.allclose(np.linalg.norm(out_affine[:3, :3], axis=0), 1.0)
    assert all(a.shape == record.shape for a in arrays.values())
    # a sphere defined in world mm, drawn on the preprocessed grid, comes back as the same sphere on the input
    # grid: exactly, for every input voxel further than half a preprocessed voxel diagonal from its surface
    centre, radius = np.array([5.0, -10.0, 20.0]), 30.0
    predicted = _sphere(out_affine, record.shape, centre, radius).astype(np.uint8)
    back = record.to_input_grid(predicted).astype(bool)
    distance = np.linalg.norm(_world(brain.affine, record.input_shape) - centre, axis=-1)
    clear = np.abs(distance - radius) > np.sqrt(3) / 2
    assert np.array_equal(back[clear], (distance <= radius)[clear])
    assert back.sum() > 0 and back.shape == brain.sequences["flair"].shape


def test_zscores_inside_the_foreground_and_zero_outside():
    brain = make_brain(3, resolution_mm=2.0, sequences=("t2",))
    padded = np.pad(brain.sequences["t2"], 4)  # a margin of background around the whole volume
    affine = brain.affine.copy()
    affine[:3, 3] -= affine[:3, :3] @ np.full(3, 4.0)
    arrays, record = preprocess({"t2": (padded, affine)})
    t2 = arrays["t2"]
    inside = record.from_input_grid(np.pad(brain.brain_mask, 4).astype(np.uint8)).astype(bool)
    assert abs(float(t2[inside].mean())) < 0.1 and 0.8 < float(t2[inside].std()) < 1.2
    assert np.count_nonzero(t2[~inside]) < 0.1 * t2.size
    assert all(start >= 4 for start, _ in record.box)  # the margin was cropped


def test_sequences_on_different_grids_are_refused():
    a = np.ones((4, 4, 4), np.float32)
    with pytest.raises(ValueError, match="another grid"):
        preprocess({"t1": (a, np.eye(4)), "flair": (a, np.diag([2.0, 1, 1, 1]))})


def test_brats_background_is_its_negative_constant_and_the_crop_is_the_brain(shared_data):
    import nibabel as nib

    case = shared_data / "brain_mri_brats" / "brats_2013_pat0001_1"
    flair = nib.load(case / "Flair_subtrMeanDivStd.nii.gz")
    mask = np.asarray(nib.load(case / "brainmask.nii.gz").dataobj) > 0.5
    array = np.asarray(flair.dataobj, np.float32)
    assert background_value(array) < -2
    arrays, record = preprocess({"flair": (array, flair.affine)})
    ras_mask, _ = to_ras(mask, flair.affine)
    from scipy import ndimage as ndi

    box = ndi.find_objects(ras_mask.astype(np.uint8))[0]
    assert all(abs(b[0] - s.start) <= 1 and abs(b[1] - s.stop) <= 1 for b, s in zip(record.box, box, strict=True))
    assert np.isfinite(arrays["flair"]).all()
