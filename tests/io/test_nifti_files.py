import os

import numpy as np
import pytest
import SimpleITK as sitk

from medhub.errors import InputError, OutputError
from medhub.io.files import atomic_path, ensure_writable_dir
from medhub.io.nifti import read_volume, write_volume
from medhub.io.volume import Volume


def _oblique_volume(rng) -> Volume:
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([2.5, 0.8, 0.7])
    affine[:3, 3] = [-100.0, 20.0, 35.0]
    return Volume(rng.integers(-1000, 1500, size=(7, 9, 11)).astype(np.int16), affine, modality="CT")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_round_trip_keeps_values_and_lps_geometry(tmp_path, rng, suffix):
    volume = _oblique_volume(rng)
    path = write_volume(volume, tmp_path / f"ct{suffix}")
    back = read_volume(path)
    assert np.array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.affine, volume.affine, atol=1e-5)


def test_nifti_header_is_ras_on_disk(tmp_path, rng):
    """LPS->RAS happens once: the NIfTI on disk must carry the RAS version of our LPS affine."""
    import nibabel as nib

    volume = _oblique_volume(rng)
    path = write_volume(volume, tmp_path / "ct.nii.gz")
    ras = nib.load(path).affine
    # nibabel indexes (i=x=column, j=row, k=slice); ours is (slice, row, column).
    lps_from_nib = np.diag([-1, -1, 1, 1]) @ ras
    np.testing.assert_allclose(lps_from_nib[:3, [2, 1, 0]], volume.affine[:3, :3], atol=1e-4)
    np.testing.assert_allclose(lps_from_nib[:3, 3], volume.affine[:3, 3], atol=1e-4)


def test_voxel_to_patient_point_matches_simpleitk(tmp_path, rng):
    volume = _oblique_volume(rng)
    path = write_volume(volume, tmp_path / "ct.mha")
    image = sitk.ReadImage(str(path))
    k, j, i = 3, 5, 8
    ours = volume.affine @ np.array([k, j, i, 1.0])
    np.testing.assert_allclose(ours[:3], image.TransformIndexToPhysicalPoint((i, j, k)), atol=1e-4)


def test_unreadable_volume_is_one_line_error(tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a nifti at all")
    with pytest.raises(InputError) as e:
        read_volume(bad)
    assert str(bad) in e.value.message and "\n" not in e.value.message


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash mid-write")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_folder_is_output_error_non_root(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    with pytest.raises(OutputError):
        ensure_writable_dir(folder / "sub")


def test_output_folder_under_a_file_is_output_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError) as e:
        ensure_writable_dir(blocker / "out")
    assert str(blocker / "out") in e.value.message
