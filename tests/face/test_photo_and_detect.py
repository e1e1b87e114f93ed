"""Reading photos and finding faces: real pictures (scikit-image's astronaut, UTKFace crops), clear failures."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from skimage import data

from medhub.errors import InputError
from medhub.face.detect import CropPolicy, NoFaceError, crop_face, detect_faces, iou
from medhub.io.photo import find_photos, is_photo, read_photo


def test_read_photo_is_rgb_and_applies_exif_orientation(tmp_path):
    pixels = data.astronaut()[:300, :200]  # 300 rows, 200 columns
    grey = tmp_path / "grey.png"
    Image.fromarray(pixels[..., 0]).save(grey)
    assert read_photo(grey).shape == (300, 200, 3)
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    Image.fromarray(pixels).save(rotated, exif=exif, quality=95)
    upright = read_photo(rotated)
    assert upright.shape == (200, 300, 3)
    # The viewer's top-left is the stored picture's bottom-left.
    assert np.abs(upright[0, 0].astype(int) - pixels[-1, 0].astype(int)).max() < 40


@pytest.mark.parametrize("content, code", [(b"not a picture at all", "unreadable"), (None, "truncated"),
                                           ("missing", "not-found")])
def test_bad_photos_fail_with_the_file_and_reason(tmp_path, content, code):
    path = tmp_path / "bad.jpg"
    if content is None:
        Image.fromarray(data.astronaut()).save(path, quality=90)
        path.write_bytes(path.read_bytes()[:5000])
    elif content != "missing":
        path.write_bytes(content)
    with pytest.raises(InputError) as error:
        read_photo(path)
    assert error.value.code == code and str(path) in str(error.value)


def test_find_photos_takes_jpeg_and_png_only(tmp_path):
    for name in ("a.JPG", "b.png", "sub/c.jpeg", "notes.txt"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in find_photos(tmp_path)] == ["a.JPG", "b.png", "c.jpeg"]
    assert is_photo("x.Png") and not is_photo("x.dcm")


def test_astronaut_face_is_found_aligned_and_cropped():
    image = data.astronaut()
    faces = detect_faces(image)
    assert faces, "OpenCV's bundled cascade finds the astronaut's face"
    best = faces[0]
    # Eileen Collins' face in skimage's astronaut photo: about x 180-270, y 70-165.
    truth = type(best)(180, 70, 270, 165)
    assert iou(best, truth) > 0.6
    assert best.eyes is not None and best.eyes[0][0] < best.eyes[1][0]
    crop = crop_face(image, CropPolicy(size=160))
    assert crop.image.shape == (160, 160, 3) and crop.image.dtype == np.uint8
    assert abs(crop.angle) < 5
    # The affine maps the face centre to the crop centre.
    centre = crop.affine @ np.array([*best.center, 1.0])
    assert np.allclose(centre, 80, atol=1)


@pytest.mark.parametrize("tilt", [12, -12])
def test_a_tilted_face_is_levelled_by_its_eyes(tilt):
    from scipy.ndimage import rotate

    tilted = rotate(data.astronaut(), tilt, reshape=False, mode="nearest")  # counter-clockwise on screen
    crop = crop_face(tilted)
    assert crop.box.eyes is not None
    # The crop turns back by about the tilt (the eye cascade's centres are good to a few degrees; the
    # astronaut's own head is tilted by about 2°).
    assert np.sign(crop.angle) == -np.sign(tilt) and 6 < abs(crop.angle) < 18


def test_a_fallback_detector_crops_the_face_the_first_one_misses_framed_as_the_first_would(shared_data):
    from medhub.face.detect import reframe

    # A real UTKFace chip (32-year-old woman) in which OpenCV's cascade finds no face and dlib's HOG detector does.
    chip = read_photo(shared_data / "utkface" / "images" / "32_1_2_20170109135928794.jpg.chip.jpg")
    with pytest.raises(NoFaceError):
        crop_face(chip, CropPolicy(), where="chip.jpg")
    crop = crop_face(chip, CropPolicy(fallback="dlib-hog"))
    assert crop.detector == "dlib-hog" and crop.to_dict()["detector"] == "dlib-hog"
    # Where both find a face, dlib's box reframed lands on the cascade's own.
    astronaut = data.astronaut()
    haar, hog = detect_faces(astronaut, "opencv-haar")[0], detect_faces(astronaut, "dlib-hog")[0]
    assert iou(reframe(hog, "dlib-hog", "opencv-haar"), haar) > max(0.8, iou(hog, haar))
    assert crop_face(astronaut, CropPolicy(fallback="dlib-hog")).detector == "opencv-haar"  # only a fallback


def test_no_face_is_a_per_image_error_naming_the_photo():
    blank = np.full((240, 320, 3), 128, np.uint8)
    with pytest.raises(NoFaceError) as error:
        crop_face(blank, where="blank.png")
    assert error.value.code == "no-face" and str(error.value).startswith("blank.png: no face found")
    with pytest.raises(NoFaceError, match="opencv-haar or dlib-hog"):
        crop_face(blank, CropPolicy(fallback="dlib-hog"), where="blank.png")


@pytest.mark.parametrize("detector", ["opencv-haar", "skimage-lbp", "dlib-hog"])
def test_bundled_detectors_find_real_utkface_chips(shared_data, detector):
    import pandas as pd

    folder = shared_data / "utkface"
    labels = pd.read_csv(folder / "labels.csv").iloc[::400]
    found = [bool(detect_faces(read_photo(folder / "images" / f), detector, eyes=False)) for f in labels["file"]]
    assert np.mean(found) >= 0.85


def test_face_descriptors_match_the_same_face_and_tell_faces_apart(shared_data):
    """dlib's face-recognition descriptors (what face-age's descriptor head reads): the same face rescaled or
    mirrored stays within dlib's same-person distance (0.6), two different people do not, and a run repeats."""
    from medhub.face.descriptors import DESCRIPTOR_SIZE, photo_descriptor

    folder = shared_data / "utkface" / "images"
    first, second = (read_photo(folder / name) for name in sorted(p.name for p in folder.glob("3*_0_0_*"))[:2])
    policy = CropPolicy()
    d = photo_descriptor(first, policy)
    assert d.shape == (DESCRIPTOR_SIZE,) and d.dtype == np.float32
    assert np.array_equal(d, photo_descriptor(first, policy))
    bigger = np.asarray(Image.fromarray(first).resize((300, 300), Image.BICUBIC))
    for same in (bigger, first[:, ::-1]):
        assert np.linalg.norm(photo_descriptor(np.ascontiguousarray(same), policy) - d) < 0.6
    assert np.linalg.norm(photo_descriptor(second, policy) - d) > 0.6
