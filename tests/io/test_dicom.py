"""Tests of the DICOM input layer on generated series and on the real (damaged) Siemens example."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file
from pydicom.pixels.decoders.base import Decoder
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from medhub.errors import InputError, MissingDecoderError
from medhub.io.dicom import (
    GeometryReport,
    check_decoder,
    read_dicom_volume,
    required_decoder_package,
    scan_dicom,
)
from medhub.io.orientation import canonical_affine
from medhub.synth.dicom_series import write_series
from tests.conftest import SHARED_DATA

SHARED_EXAMPLE = SHARED_DATA / "ct_siemens_example" / "dicom"


def phantom(slices: int = 20, rows: int = 64, columns: int = 64, seed: int = 0) -> np.ndarray:
    """HU-like test volume: air, a water cylinder, a bone rod and noise (int16)."""
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(np.arange(slices), np.arange(rows), np.arange(columns), indexing="ij")
    volume = np.full((slices, rows, columns), -1000.0)
    volume[(j - rows / 2) ** 2 + (i - columns / 2) ** 2 < (rows / 3) ** 2] = 20
    rod = (j - rows / 2) ** 2 + (i - columns / 3) ** 2 < 16
    volume[rod] = (900 + 10 * k)[rod]  # changes along the slices, so slice order matters
    volume += rng.normal(0, 15, volume.shape)
    return np.clip(np.rint(volume), -1024, 3071).astype(np.int16)


def axial_affine(spacing: tuple[float, float, float] = (2.5, 0.8, 0.8), origin=(-30.0, -40.0, -100.0)):
    return canonical_affine(spacing, origin)


def oblique_affine(tilt_deg: float = 0.0) -> np.ndarray:
    """An oblique (rotated) grid; with ``tilt_deg`` the slice step leans inside the column direction."""
    a, b = np.radians(20), np.radians(-12)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    rotation = rz @ rx
    row_cosine, column_cosine = rotation[:, 0], rotation[:, 1]
    normal = np.cross(row_cosine, column_cosine)
    affine = np.eye(4)
    affine[:3, 2] = row_cosine * 0.7
    affine[:3, 1] = column_cosine * 0.9
    affine[:3, 0] = 2.0 * (normal + np.tan(np.radians(tilt_deg)) * column_cosine)
    affine[:3, 3] = [-20.5, 13.25, 40.0]
    return affine


@pytest.fixture(scope="module")
def ct() -> np.ndarray:
    return phantom()


@pytest.fixture(scope="module")
def plain_series(tmp_path_factory, ct) -> Path:
    folder = tmp_path_factory.mktemp("plain")
    write_series(ct, axial_affine(), folder)
    return folder


# ----------------------------------------------------------------------------------------------- discovery


def test_discovery_odd_names_nested_and_non_dicom(tmp_path, ct):
    paths = write_series(ct[:6], axial_affine(), tmp_path / "src", file_names="numbered")
    odd = ["no extension", "image.txt", "sub dir/ü.bin", "deep/a/b/c.jpg", ".hidden", "x.dcm.bak"]
    for path, name in zip(paths, odd, strict=True):
        target = tmp_path / "tree" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    (tmp_path / "tree" / "README.txt").write_text("not dicom")
    (tmp_path / "tree" / "empty").write_bytes(b"")
    (tmp_path / "tree" / "deep" / "noise.dat").write_bytes(bytes(range(256)) * 3)
    (tmp_path / "tree" / "fake.dcm").write_bytes(b"\x00" * 128 + b"NOPE" + b"\x00" * 50)

    result = scan_dicom(tmp_path / "tree")

    assert result.non_dicom_files == 4
    assert result.unreadable == []
    assert len(result.series) == 1
    assert len(result.series[0].files) == 6
    assert np.array_equal(result.series[0].load().array, ct[:6])


def test_preamble_less_file_is_accepted(tmp_path, ct):
    [path] = write_series(ct[:1], axial_affine(), tmp_path / "src", transfer_syntax=ImplicitVRLittleEndian)
    ds = pydicom.dcmread(path)
    del ds.file_meta
    ds.preamble = None
    raw = tmp_path / "tree" / "raw"
    raw.parent.mkdir()
    ds.save_as(raw, enforce_file_format=False, implicit_vr=True, little_endian=True)
    assert raw.read_bytes()[:2] == b"\x08\x00"  # starts straight with group 0008

    result = scan_dicom(raw.parent)

    assert result.non_dicom_files == 0
    assert np.array_equal(result.series[0].load().array, ct[:1])


def test_single_file_missing_path_and_empty_folder(tmp_path, plain_series, ct):
    one = sorted(plain_series.iterdir())[0]
    result = scan_dicom(one)
    assert len(result.series) == 1 and len(result.series[0].files) == 1

    with pytest.raises(InputError) as error:
        scan_dicom(tmp_path / "nope")
    assert "nope" in str(error.value)

    (tmp_path / "empty").mkdir()
    assert scan_dicom(tmp_path / "empty").series == []
    with pytest.raises(InputError, match="no DICOM image series"):
        read_dicom_volume(tmp_path / "empty")


def test_progress_is_reported(plain_series):
    calls = []
    scan_dicom(plain_series, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (20, 20)


# ----------------------------------------------------------------------------------------------- grouping


def test_two_series_in_one_folder_are_grouped(tmp_path, ct):
    write_series(ct, axial_affine(), tmp_path, seed=1, series_description="first")
    write_series(ct[:10] + 5, axial_affine(), tmp_path, seed=2, series_description="second")

    result = scan_dicom(tmp_path)

    assert sorted(len(s.files) for s in result.series) == [10, 20]
    by_description = {s.description: s for s in result.series}
    assert np.array_equal(by_description["second"].load().array, ct[:10] + 5)
    with pytest.raises(InputError) as error:
        read_dicom_volume(tmp_path)
    assert error.value.code == "multiple-series"


def test_mixed_orientation_and_size_are_split(tmp_path, ct):
    uid = "1.2.826.0.1.3680043.8.498.1"
    sagittal = np.eye(4)
    sagittal[:3, 0], sagittal[:3, 1], sagittal[:3, 2] = [2, 0, 0], [0, 0, -0.8], [0, 0.8, 0]
    write_series(ct[:8], axial_affine(), tmp_path / "a", series_uid=uid, seed=1)
    write_series(ct[:5], sagittal, tmp_path / "b", series_uid=uid, seed=2)
    write_series(ct[:4, :32, :48], axial_affine(), tmp_path / "c", series_uid=uid, seed=3)

    result = scan_dicom(tmp_path)

    assert sorted(len(s.files) for s in result.series) == [4, 5, 8]
    assert all(s.uid == uid for s in result.series)
    assert all(any("split" in w for w in s.warnings) for s in result.series)
    shapes = sorted(s.load().shape for s in result.series)
    assert shapes == [(4, 32, 48), (5, 64, 64), (8, 64, 64)]


def test_non_image_objects_are_skipped_not_grouped(tmp_path, ct):
    paths = write_series(ct[:3], axial_affine(), tmp_path)
    ds = pydicom.dcmread(paths[0])
    ds.Modality = "SEG"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    ds.save_as(tmp_path / "seg.dcm")

    result = scan_dicom(tmp_path)

    assert result.skipped == [(tmp_path / "seg.dcm", "not an image slice (Modality SEG)")]
    assert len(result.series) == 1 and len(result.series[0].files) == 3


def test_empty_series_uids_group_by_frame_of_reference(tmp_path, ct):
    write_series(ct[:6], axial_affine(), tmp_path, seed=1, frame_of_reference_uid="1.2.3.1")
    write_series(ct[:7], axial_affine(), tmp_path, seed=2, frame_of_reference_uid="1.2.3.2")
    for path in tmp_path.iterdir():
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = ""
        ds.save_as(path)

    result = scan_dicom(tmp_path)

    assert sorted(len(s.files) for s in result.series) == [6, 7]
    assert len({s.uid for s in result.series}) == 2


# ----------------------------------------------------------------------------------------------- geometry


def test_shuffled_files_are_sorted_along_the_normal(tmp_path, ct):
    paths = write_series(ct, oblique_affine(), tmp_path / "src", file_names="numbered")
    order = list(range(len(paths)))
    random.Random(3).shuffle(order)
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    for new_index, old in enumerate(order):
        ds = pydicom.dcmread(paths[old])
        ds.InstanceNumber = new_index + 1  # instance numbers must not be trusted either
        ds.save_as(shuffled / f"{new_index:03d}")

    volume = read_dicom_volume(shuffled)

    assert np.array_equal(volume.array, ct)
    assert np.allclose(volume.affine, oblique_affine(), atol=1e-4)
    assert volume.meta["geometry"]["is_regular"]


def test_duplicate_positions_are_refused(tmp_path, ct):
    affine = axial_affine()
    positions = affine[:3, 3] + np.arange(6)[:, None] * affine[:3, 0]
    positions[3] = positions[2]
    write_series(ct[:6], affine, tmp_path, slice_positions=positions)

    [series] = scan_dicom(tmp_path).series

    assert series.geometry.has_duplicates
    with pytest.raises(InputError) as error:
        series.load()
    assert error.value.code == "duplicate-slices"


def test_gap_is_reported_not_refused(tmp_path, ct):
    paths = write_series(ct, axial_affine(), tmp_path, file_names="numbered")
    paths[10].unlink()

    [series] = scan_dicom(tmp_path).series
    volume = series.load()

    assert series.geometry.has_gap and series.geometry.gaps == [(9, pytest.approx(5.0))]
    assert any("gap of 5.00 mm" in line for line in series.geometry.messages())
    assert volume.shape == (19, 64, 64)
    assert volume.spacing[0] == pytest.approx(2.5)  # median spacing; the runner refuses using meta
    assert volume.meta["geometry"]["has_gap"] and not volume.meta["geometry"]["is_regular"]


def test_gap_threshold_is_one_and_a_half_times_the_median(tmp_path, ct):
    affine = axial_affine()
    steps = np.full(9, 2.5)
    steps[4] = 2.5 * 1.4  # non-uniform, not a gap
    positions = affine[:3, 3] + np.concatenate([[0], np.cumsum(steps)])[:, None] * np.array([0, 0, 1.0])
    write_series(ct[:10], affine, tmp_path, slice_positions=positions)

    geometry = scan_dicom(tmp_path).series[0].geometry

    assert geometry.non_uniform and not geometry.has_gap
    assert geometry.max_spacing_deviation_mm == pytest.approx(1.0)
    assert any("non-uniform" in line for line in geometry.messages())


def test_small_jitter_counts_as_uniform():
    positions = np.array([[0, 0, 2.5 * k + (0.001 if k % 2 else 0)] for k in range(10)], dtype=float)
    from medhub.io.dicom import _analyse_geometry

    report, step = _analyse_geometry(positions, np.array([0, 0, 1.0]), 2.5)
    assert isinstance(report, GeometryReport)
    assert not report.non_uniform and not report.thickness_differs and report.messages() == []
    assert step == pytest.approx([0, 0, 2.5], abs=1e-3)


def test_gantry_tilt_angle_and_affine(tmp_path, ct):
    affine = oblique_affine(tilt_deg=15.0)
    write_series(ct, affine, tmp_path)

    [series] = scan_dicom(tmp_path).series
    volume = series.load()

    assert series.geometry.tilt_deg == pytest.approx(15.0, abs=0.01)
    assert series.geometry.has_tilt and any("tilt of 15.00" in m for m in series.geometry.messages())
    assert np.allclose(volume.affine, affine, atol=1e-4)  # slices stay exactly where the headers put them
    assert series.geometry.slice_spacing_mm == pytest.approx(2.0)


def test_affine_matches_simpleitk(tmp_path, ct):
    write_series(ct, oblique_affine(), tmp_path)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path)))
    image = reader.Execute()

    volume = read_dicom_volume(tmp_path)

    assert np.allclose(volume.origin, image.GetOrigin(), atol=1e-4)
    assert np.allclose(volume.spacing, image.GetSpacing()[::-1], atol=1e-4)
    itk_direction = np.asarray(image.GetDirection()).reshape(3, 3)
    assert np.allclose(volume.direction, itk_direction[:, ::-1], atol=1e-5)
    assert np.array_equal(volume.array, sitk.GetArrayFromImage(image))


# ----------------------------------------------------------------------------------------------- decoding


@pytest.mark.parametrize(
    "syntax",
    [
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        DeflatedExplicitVRLittleEndian,
        RLELossless,
        JPEG2000Lossless,
        JPEGLSLossless,
    ],
    ids=lambda uid: uid.name,
)
def test_every_transfer_syntax_gives_the_same_hu(tmp_path, ct, syntax):
    write_series(ct, axial_affine(), tmp_path, transfer_syntax=syntax)

    volume = read_dicom_volume(tmp_path)

    assert volume.meta["transfer_syntax"] == syntax
    assert volume.array.dtype == np.int16
    assert np.array_equal(volume.array, ct)


# Syntaxes that imagecodecs decodes (medhub.io.codecs.FAST_CODECS) and, for contrast, ones left to pydicom. Lossy
# streams are made by recompressing a lossless series with pydicom's encoders and these options.
_LOSSY_OPTIONS = {JPEGLSNearLossless: {"jls_error": 3}, JPEG2000: {"j2k_cr": [15]}}
_FAST = (JPEG2000Lossless, JPEG2000, JPEGLSLossless, JPEGLSNearLossless, JPEGLossless, JPEGLosslessSV1)
_NOT_FAST = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, RLELossless)


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned-12bit", "signed-16bit"])
@pytest.mark.parametrize("syntax", _FAST + _NOT_FAST, ids=lambda uid: uid.name)
def test_decoded_pixels_are_the_ones_pydicom_gives_in_every_syntax(tmp_path, ct, syntax, signed, monkeypatch):
    """The imagecodecs path gives exactly the pixels of the pydicom-only path that medhub used before it."""
    intercept = 0 if signed else None  # intercept 0 leaves negative stored values: PixelRepresentation 1
    if syntax in _LOSSY_OPTIONS:
        paths = write_series(ct, axial_affine(), tmp_path, rescale_intercept=intercept)
        for path in paths:
            ds = pydicom.dcmread(path)
            try:
                ds.compress(syntax, generate_instance_uid=False, **_LOSSY_OPTIONS[syntax])
            except (ValueError, RuntimeError) as e:
                pytest.skip(f"pydicom cannot encode this case: {e}")
            ds.save_as(path)
    else:
        paths = write_series(ct, axial_affine(), tmp_path, transfer_syntax=syntax, rescale_intercept=intercept)
    assert pydicom.dcmread(paths[0]).PixelRepresentation == int(signed)
    import medhub.io.dicom as dicom_module

    calls = []

    def spy(*args):
        calls.append(real_decode(*args))
        return calls[-1]

    real_decode = dicom_module.decode_frame_into
    monkeypatch.setattr(dicom_module, "decode_frame_into", spy)
    fast = read_dicom_volume(tmp_path).array
    monkeypatch.setattr(dicom_module, "FAST_CODECS", {})
    pydicom_only = read_dicom_volume(tmp_path).array

    assert calls == ([True] * len(ct) if syntax in _FAST else [])
    assert fast.dtype == pydicom_only.dtype == np.int16
    assert np.array_equal(fast, pydicom_only)
    if syntax not in _LOSSY_OPTIONS:
        assert np.array_equal(fast, ct)


def test_a_stream_the_fast_path_does_not_take_falls_back_to_pydicom(tmp_path, ct, monkeypatch):
    """A codestream whose precision differs from BitsStored is decoded by pydicom, with its corrections."""
    paths = write_series(ct[:3], axial_affine(), tmp_path, transfer_syntax=JPEG2000Lossless)
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.BitsStored, ds.HighBit = 13, 12  # the codestream says 12
        ds.save_as(path)
    import medhub.io.dicom as dicom_module

    fast = read_dicom_volume(tmp_path).array
    monkeypatch.setattr(dicom_module, "FAST_CODECS", {})
    assert np.array_equal(fast, read_dicom_volume(tmp_path).array)
    assert np.array_equal(fast, ct[:3])


def test_signed_storage_and_float_rescale(tmp_path, ct):
    write_series(ct[:5], axial_affine(), tmp_path / "signed", rescale_intercept=0)
    assert pydicom.dcmread(next((tmp_path / "signed").iterdir())).PixelRepresentation == 1
    assert np.array_equal(read_dicom_volume(tmp_path / "signed").array, ct[:5])

    paths = write_series(ct[:5], axial_affine(), tmp_path / "float")
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.RescaleSlope = "0.5"
        ds.save_as(path)
    volume = read_dicom_volume(tmp_path / "float")
    assert volume.array.dtype == np.float32
    assert np.allclose(volume.array, (ct[:5].astype(np.float32) + 1024) * 0.5 - 1024)


def test_mr_small_in_every_syntax_matches_the_uncompressed_file(tmp_path):
    names = [
        "MR_small.dcm",
        "MR_small_implicit.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
    ]
    arrays = []
    for name in names:
        folder = tmp_path / name
        folder.mkdir()
        shutil.copy(get_testdata_file(name), folder / "x")
        arrays.append(read_dicom_volume(folder).array)
    for array in arrays[1:]:
        assert np.array_equal(array, arrays[0])


def test_jpeg_extended_decodes(tmp_path):
    # pydicom has no JPEG encoder, so this uses its JPEG test files (no geometry: give them one).
    ds = pydicom.dcmread(get_testdata_file("JPGExtended.dcm"))
    expected = ds.pixel_array
    ds.ImagePositionPatient = [0, 0, 0]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.save_as(tmp_path / "x")

    volume = read_dicom_volume(tmp_path)

    assert np.array_equal(volume.array[0], expected)


def test_enhanced_multiframe_equals_single_frame(tmp_path, ct):
    affine = oblique_affine()
    write_series(ct, affine, tmp_path / "single")
    [path] = write_series(ct, affine, tmp_path / "enhanced", enhanced=True)
    assert pydicom.dcmread(path).NumberOfFrames == 20

    single = read_dicom_volume(tmp_path / "single")
    enhanced = read_dicom_volume(tmp_path / "enhanced")

    assert np.array_equal(enhanced.array, single.array)
    assert np.allclose(enhanced.affine, single.affine, atol=1e-6)
    assert enhanced.source.frame_numbers == list(range(1, 21))
    assert len(enhanced.source.headers) == 20 and enhanced.source.headers[0] is enhanced.source.headers[-1]
    assert single.source.frame_numbers is None


def test_enhanced_frames_out_of_order_are_sorted(tmp_path, ct):
    affine = axial_affine()
    positions = affine[:3, 3] + np.arange(20)[::-1, None] * affine[:3, 0]
    write_series(ct, affine, tmp_path, enhanced=True, slice_positions=positions, transfer_syntax=RLELossless)

    volume = read_dicom_volume(tmp_path)

    assert np.array_equal(volume.array, ct[::-1])
    assert volume.source.frame_numbers == list(range(20, 0, -1))


def test_truncated_file_names_the_file(tmp_path, ct):
    paths = write_series(ct, axial_affine(), tmp_path, file_names="numbered")
    data = paths[7].read_bytes()
    paths[7].write_bytes(data[: len(data) - 3000])

    with pytest.raises(InputError) as error:
        read_dicom_volume(tmp_path)

    assert error.value.code == "truncated"
    assert "IM0008.dcm" in str(error.value)


def test_truncated_compressed_file_is_an_input_error(tmp_path, ct):
    paths = write_series(ct[:4], axial_affine(), tmp_path, transfer_syntax=JPEG2000Lossless)
    data = paths[2].read_bytes()
    paths[2].write_bytes(data[: len(data) // 2])

    with pytest.raises(InputError) as error:
        read_dicom_volume(tmp_path)

    assert error.value.code in ("truncated", "corrupt")
    assert paths[2].name in str(error.value)


def test_corrupt_header_is_listed_as_unreadable(tmp_path, ct):
    paths = write_series(ct[:4], axial_affine(), tmp_path)
    paths[0].write_bytes(paths[0].read_bytes()[:700])  # cut inside the header

    result = scan_dicom(tmp_path)

    assert [p for p, _ in result.unreadable] == [paths[0]]
    assert len(result.series[0].files) == 3


def test_missing_decoder_names_the_package(tmp_path, ct, monkeypatch):
    paths = write_series(ct[:3], axial_affine(), tmp_path, transfer_syntax=JPEG2000Lossless)
    monkeypatch.setattr(Decoder, "is_available", property(lambda self: False))

    with pytest.raises(MissingDecoderError) as error:
        read_dicom_volume(tmp_path)

    message = str(error.value)
    assert error.value.code == "missing-decoder"
    assert "pip install pylibjpeg pylibjpeg-openjpeg" in message
    assert "1.2.840.10008.1.2.4.90" in message and paths[0].name in message


def test_transfer_syntax_unknown_to_pydicom_is_a_missing_decoder():
    assert required_decoder_package(JPEGLSLossless) == "pyjpegls"
    with pytest.raises(MissingDecoderError, match="has no decoder in pydicom"):
        check_decoder("1.2.840.10008.1.2.4.110", "x.dcm")  # JPEG XL


# ----------------------------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def siemens():
    if not SHARED_EXAMPLE.is_dir():
        pytest.skip("shared/data/ct_siemens_example is not available")
    return SHARED_EXAMPLE


def test_real_example_thickness_differs_from_spacing(siemens):
    [series] = scan_dicom(siemens).series
    volume = series.load()

    assert volume.shape == (20, 512, 512)
    assert volume.array.dtype == np.int16 and volume.array.min() >= -1024
    assert volume.spacing == pytest.approx((2.0, 0.9765625, 0.9765625))
    assert volume.meta["slice_spacing_mm"] == pytest.approx(2.0)
    assert volume.meta["nominal_slice_thickness_mm"] == pytest.approx(3.0)
    assert volume.meta["geometry"]["thickness_differs"]
    assert volume.meta["transfer_syntax"] == JPEG2000Lossless
    # HU as pydicom computes them for one slice
    ds = pydicom.dcmread(series.files[5])
    assert np.array_equal(volume.array[5], ds.pixel_array.astype(np.int32) + int(ds.RescaleIntercept))


def test_real_example_surrogate_uids(siemens):
    first, second = scan_dicom(siemens).series, scan_dicom(siemens).series
    assert len(first) == 1
    series = first[0]

    assert series.surrogate_uids == second[0].surrogate_uids  # deterministic across scans
    assert series.uid == series.surrogate_uids["SeriesInstanceUID"] == second[0].uid
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID"):
        assert series.surrogate_uids[keyword]
    lines = [w for w in series.warnings if "surrogate" in w]
    assert lines == [
        f"series {series.uid}: 20 files lack Study/Series/SOP Instance UIDs and SOPClassUID; "
        "using deterministic surrogates (recorded in run.json)"
    ]
    for index, (path, header) in enumerate(zip(series.files, series.headers, strict=True)):
        assert header.SOPInstanceUID == header.file_meta.MediaStorageSOPInstanceUID
        assert series.surrogate_uids[f"SOPInstanceUID[{index}]"] == header.SOPInstanceUID
        assert header.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
        assert header.StudyInstanceUID and header.SeriesInstanceUID == series.uid
        assert pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID == ""  # files untouched
    volume = series.load()
    assert volume.source.series_instance_uid == series.uid
    assert volume.source.surrogate_uids == series.surrogate_uids


# ----------------------------------------------------------------------------------------------- writer


def test_writer_is_deterministic_and_omits_type2(tmp_path, ct):
    first = write_series(ct[:3], axial_affine(), tmp_path / "a", transfer_syntax=RLELossless, omit_type2=True)
    second = write_series(ct[:3], axial_affine(), tmp_path / "b", transfer_syntax=RLELossless, omit_type2=True)

    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
    ds = pydicom.dcmread(first[0])
    assert "PatientBirthDate" not in ds and "AccessionNumber" not in ds and "StudyTime" not in ds
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2" and ds.Modality == "CT" and ds.KVP == 120
