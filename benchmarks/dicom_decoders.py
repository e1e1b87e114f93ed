"""Benchmark: which decoder reads compressed CT slices fastest on this machine, and which releases the GIL.

Run ``python benchmarks/dicom_decoders.py [--slices 40]`` (``pip install -e .[bench]`` adds python-gdcm). The
slices are real: the JPEG 2000 CT in ``shared/data/ct_siemens_example`` (repeated to ``--slices`` files), and
the same pixels written again as JPEG-LS and as lossless JPEG (SV1). Without ``../shared`` a generated CT is
used. Each candidate decodes every file, with one thread and with two (a thread pool over files); a
candidate that releases the GIL gets faster with two. Candidates not installed are skipped.

* ``pydicom + pylibjpeg/pyjpegls``: ``pydicom.pixels.pixel_array`` with the plugin medhub used before;
* ``pydicom + gdcm``: the same with python-gdcm;
* ``imagecodecs (medhub)``: ``medhub.io.codecs``, what ``read_dicom_volume`` now uses;
* ``SimpleITK (GDCM)``: ``SimpleITK.ReadImage`` per file, the reader of the peer benchmark.

Every candidate's pixels are compared with pydicom's; a mismatch is printed in the table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import JPEG2000Lossless, JPEGLosslessSV1, JPEGLSLossless

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dicom_load import SHARED_EXAMPLE, machine

SYNTAXES = {JPEG2000Lossless: "pylibjpeg", JPEGLSLossless: "pyjpegls", JPEGLosslessSV1: "pylibjpeg"}
HU_CANDIDATE = "SimpleITK (GDCM) ReadImage"


def write_inputs(folder: Path, slices: int) -> dict[str, list[Path]]:
    """``slices`` files per syntax, written from the real CT when it is here (else a generated one)."""
    from medhub.io.dicom import read_dicom_volume
    from medhub.synth.dicom_series import write_series

    if SHARED_EXAMPLE.is_dir():
        volume = read_dicom_volume(SHARED_EXAMPLE)
        array, affine = volume.array, volume.affine
    else:
        rng = np.random.default_rng(0)
        array = np.clip(rng.normal(40, 300, (20, 512, 512)), -1024, 3071).astype(np.int16)
        affine = np.diag([2.0, 0.7, 0.7, 1.0])
    array = np.concatenate([array] * -(-slices // len(array)))[:slices]
    affine = affine.copy()
    files = {}
    for syntax in SYNTAXES:
        files[syntax] = write_series(array, affine, folder / syntax, transfer_syntax=syntax, file_names="numbered")
    return files


def _candidates() -> dict[str, Callable[[Path, str], np.ndarray]]:
    from pydicom.pixels import pixel_array

    from medhub.io.codecs import decode_frame_into, read_single_frame
    from medhub.io.dicom import _read_header

    def with_plugin(plugin: str | None) -> Callable[[Path, str], np.ndarray]:
        return lambda path, syntax: pixel_array(path, decoding_plugin=plugin or SYNTAXES[syntax])

    def with_imagecodecs(path: Path, syntax: str) -> np.ndarray:
        _, ds, offset = _read_header(path)
        out = np.empty((ds.Rows, ds.Columns), np.uint16 if ds.PixelRepresentation == 0 else np.int16)
        if not decode_frame_into(read_single_frame(path, offset), syntax, out, ds.BitsStored):
            raise RuntimeError("not taken by the fast path")
        return out

    found = {"pydicom + pylibjpeg/pyjpegls": with_plugin(None), "imagecodecs (medhub)": with_imagecodecs}
    try:
        import gdcm  # noqa: F401

        found["pydicom + gdcm (python-gdcm)"] = with_plugin("gdcm")
    except ImportError:
        print("python-gdcm not installed: skipped (pip install -e .[bench])", file=sys.stderr)
    import SimpleITK as sitk

    # SimpleITK applies the rescale: its values are HU, compared as such.
    found[HU_CANDIDATE] = lambda path, syntax: sitk.GetArrayFromImage(sitk.ReadImage(str(path)))[0]
    return found


def _time(decode: Callable[[Path, str], np.ndarray], files: list[Path], syntax: str, threads: int,
          repeats: int) -> tuple[float, list[np.ndarray]]:
    decode(files[0], syntax)  # warm-up: lazy imports, page cache
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            arrays = list(pool.map(lambda p: decode(p, syntax), files))
        times.append(time.perf_counter() - start)
    return statistics.median(times) / len(files) * 1000, arrays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    candidates = _candidates()
    with tempfile.TemporaryDirectory() as tmp:
        inputs = write_inputs(Path(tmp), args.slices)
        source = "real JPEG 2000 CT" if SHARED_EXAMPLE.is_dir() else "generated CT"
        print(f"Machine: {machine()}; {args.slices} slices of 512x512 ({source}); median of {args.repeats}; "
              f"ms per slice\n")
        print("| syntax | decoder | 1 thread | 2 threads | 1 / 2 threads | pixels as pydicom |")
        print("|---|---|---:|---:|---:|---|")
        for syntax, files in inputs.items():
            datasets = [pydicom.dcmread(p) for p in files]
            stored = [ds.pixel_array.astype(np.int32) for ds in datasets]
            hu = [a * int(ds.RescaleSlope) + int(ds.RescaleIntercept) for a, ds in zip(stored, datasets, strict=True)]
            for name, decode in candidates.items():
                try:
                    one, arrays = _time(decode, files, syntax, 1, args.repeats)
                    two, _ = _time(decode, files, syntax, 2, args.repeats)
                except Exception as e:  # a candidate without a decoder for this syntax
                    print(f"| {syntax.name} | {name} | failed: {str(e)[:60]} | | | |")
                    continue
                reference = hu if name == HU_CANDIDATE else stored
                same = all(np.array_equal(a.astype(np.int32), r) for a, r in zip(arrays, reference, strict=True))
                print(f"| {syntax.name} | {name} | {one:.1f} | {two:.1f} | {one / two:.2f}x | "
                      f"{'identical' if same else 'DIFFERENT'} |")


if __name__ == "__main__":
    main()
