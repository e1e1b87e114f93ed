"""Benchmark: loading a DICOM series, medhub ``read_dicom_volume`` against SimpleITK and naive pydicom.

Run ``python benchmarks/dicom_load.py [--slices 300] [--syntaxes explicit,j2k,jls,ljpeg] [--folder DIR]``. It
writes (once, cached in ``--folder``, by default under the system temp folder) a 512×512×N int16 CT series in
each transfer syntax asked for (uncompressed Explicit VR Little Endian, JPEG 2000 lossless, JPEG-LS lossless,
lossless JPEG SV1), then times each reader in its own fresh subprocess, warm cache (one untimed warm-up read,
then ``--repeats`` timed reads):

* medhub: ``read_dicom_volume`` (scan + headers + sort + geometry checks + decode + rescale, int16 HU);
* SimpleITK: ``ImageSeriesReader`` with ``GetGDCMSeriesFileNames`` (sorting included);
* naive pydicom: ``dcmread`` every file, ``pixel_array``, sort by position, ``np.stack``, rescale.

Peak memory is the child's peak RSS (``ru_maxrss``) minus its RSS after imports (interpreter + libraries),
so it counts what reading costs. The same is done on the real JPEG 2000 example in ``shared/data`` when
present. Each section ends with the ratio SimpleITK time / medhub time (above 1: medhub is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

SHARED_EXAMPLE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ct_siemens_example" / "dicom"
METHODS = ("medhub", "simpleitk", "pydicom")
#: --syntaxes name -> (transfer syntax UID, label).
SYNTAXES = {
    "explicit": ("1.2.840.10008.1.2.1", "Uncompressed CT"),
    "j2k": ("1.2.840.10008.1.2.4.90", "JPEG 2000 lossless CT"),
    "jls": ("1.2.840.10008.1.2.4.80", "JPEG-LS lossless CT"),
    "ljpeg": ("1.2.840.10008.1.2.4.70", "Lossless JPEG (SV1) CT"),
}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _read_medhub(folder: Path) -> np.ndarray:
    from medhub.io.dicom import read_dicom_volume

    return read_dicom_volume(folder).array


def _read_simpleitk(folder: Path) -> np.ndarray:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    return sitk.GetArrayViewFromImage(image)  # a view: no extra copy is charged to SimpleITK


def _read_pydicom(folder: Path) -> np.ndarray:
    import pydicom

    datasets = [pydicom.dcmread(p) for p in sorted(folder.iterdir()) if p.is_file()]
    datasets.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    volume = np.stack([ds.pixel_array for ds in datasets]).astype(np.int16)
    volume *= np.int16(int(datasets[0].RescaleSlope))
    volume += np.int16(int(datasets[0].RescaleIntercept))
    return volume


def child(method: str, folder: Path, repeats: int) -> None:
    """Runs in a subprocess: import, measure the baseline, warm up, time; print one JSON line."""
    reader = {"medhub": _read_medhub, "simpleitk": _read_simpleitk, "pydicom": _read_pydicom}[method]
    if method == "simpleitk":
        import SimpleITK  # noqa: F401
    else:
        import pydicom  # noqa: F401

        if method == "medhub":
            import imagecodecs  # noqa: F401 - a decoder library, in the baseline like SimpleITK's

            import medhub.io.dicom  # noqa: F401
    baseline = _rss_mb()
    array = reader(folder)  # warm-up: page cache, lazy imports
    shape, dtype, nbytes = array.shape, str(array.dtype), array.nbytes
    del array
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        array = reader(folder)
        times.append(time.perf_counter() - start)
        del array
    print(
        json.dumps(
            {
                "method": method,
                "times": times,
                "shape": shape,
                "dtype": dtype,
                "nbytes": nbytes,
                "baseline_mb": baseline,
                "peak_mb": _rss_mb(),
            }
        )
    )


def ensure_series(folder: Path, slices: int, syntax: str = "explicit") -> Path:
    """Write the synthetic 512×512×``slices`` CT series in ``syntax`` (a ``SYNTAXES`` name) into ``folder``
    unless it is there."""
    from medhub.synth.dicom_series import write_series

    series = folder / (f"ct_512x512x{slices}" + ("" if syntax == "explicit" else f"_{syntax}"))
    if series.is_dir() and len(list(series.iterdir())) == slices:
        return series
    rng = np.random.default_rng(0)
    _, j, i = np.ogrid[:slices, :512, :512]
    body = ((j - 256) / 200.0) ** 2 + ((i - 256) / 160.0) ** 2 < 1
    array = np.where(body, 40, -1000) + rng.normal(0, 20, (slices, 512, 512))
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2] = [0, 0, 1.0], [0, 0.7, 0], [0.7, 0, 0]
    affine[:3, 3] = [-179.0, -179.0, -150.0]
    start = time.perf_counter()
    write_series(np.clip(array, -1024, 3071), affine, series, file_names="numbered", seed=7,
                 transfer_syntax=SYNTAXES[syntax][0])
    print(f"wrote {series} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return series


def run_child(method: str, folder: Path, repeats: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", method, "--path", str(folder), "--repeats", str(repeats)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(title: str, results: list[dict]) -> list[str]:
    by = {r["method"]: r for r in results}
    nbytes = by["medhub"]["nbytes"]
    lines = [
        f"**{title}** — volume {by['medhub']['shape']} {by['medhub']['dtype']}, {nbytes / 2**20:.0f} MiB",
        "",
        "| reader | median s | best s | peak RSS − baseline MiB | × volume bytes | output dtype |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        extra = r["peak_mb"] - r["baseline_mb"]
        lines.append(
            f"| {r['method']} | {statistics.median(r['times']):.3f} | {min(r['times']):.3f} | {extra:.0f} | "
            f"{extra * 2**20 / nbytes:.2f} | {r['dtype']} |"
        )
    medhub = statistics.median(by["medhub"]["times"])
    lines.append("")
    lines.append(
        f"SimpleITK / medhub time: {statistics.median(by['simpleitk']['times']) / medhub:.2f}×; "
        f"naive pydicom / medhub: {statistics.median(by['pydicom']['times']) / medhub:.2f}×"
    )
    return lines


def machine() -> str:
    model = ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "")
    except OSError:
        pass
    return f"{model or platform.processor()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()) / "medhub-bench-dicom")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--syntaxes", default=",".join(SYNTAXES), help="comma-separated: " + ", ".join(SYNTAXES))
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--generate", help=argparse.SUPPRESS)
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.path, args.repeats)
        return
    if args.generate:
        ensure_series(args.folder, args.slices, args.generate)
        return
    lines = [
        f"Machine: {machine()}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {args.repeats} timed reads each",
        "",
    ]
    for syntax in [name.strip() for name in args.syntaxes.split(",") if name.strip()]:
        # Generating needs GBs; done in the parent it would raise every child's ru_maxrss, which Linux carries
        # across fork + exec.
        command = [sys.executable, __file__, "--generate", syntax, "--folder", str(args.folder),
                   "--slices", str(args.slices)]
        subprocess.run(command, check=True)
        series = ensure_series(args.folder, args.slices, syntax)
        section = table(f"{SYNTAXES[syntax][1]}, {args.slices} slices (generated)",
                        [run_child(m, series, args.repeats) for m in METHODS])
        print("\n".join(section), file=sys.stderr)  # each section as soon as it is done
        lines += [*section, ""]
    if SHARED_EXAMPLE.is_dir():
        example = SHARED_EXAMPLE.resolve()
        results = [run_child(m, example, args.repeats) for m in METHODS]
        lines += table("Real JPEG 2000 lossless CT (shared/data/ct_siemens_example)", results)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
