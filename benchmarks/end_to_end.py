"""End to end: `medhub run lung-ct` on a generated 512×512×300 chest CT DICOM series.

Reports wall seconds and peak RSS of the `medhub run` process, and the per-stage timings from its run.json.
The phantom series is generated once and cached in the folder given by --cache (default: a temp folder).

    python benchmarks/end_to_end.py [--slices 300] [--cache /tmp/medhub-bench]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from medhub.synth.chest import make_chest_phantom
from medhub.synth.dicom_series import write_series


def make_series(folder: Path, slices: int) -> Path:
    series = folder / f"chest_{slices}"
    if series.is_dir() and len(list(series.iterdir())) == slices:
        return series
    t = time.perf_counter()
    phantom = make_chest_phantom(shape=(slices, 512, 512), spacing=(1.0, 0.7, 0.7), noise_sd=20.0, seed=7)
    write_series(phantom.hu, phantom.affine, series, seed=7)
    print(f"generated {slices}-slice phantom series in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    return series


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "medhub-bench")
    args = parser.parse_args()
    series = make_series(args.cache, args.slices)

    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "medhub", "run", "lung-ct", "--input", str(series), "--output", out,
                   "--outputs", "seg,sr,json"]
        subprocess.run(command, check=True, capture_output=True)  # warm the page cache and imports
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        seconds = time.perf_counter() - start
        # RUSAGE_CHILDREN keeps the largest peak of any waited-for child: both runs are the same work.
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        case = json.loads((Path(out) / "run.json").read_text())["cases"][0]

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    print(f"machine: {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"medhub run lung-ct, 512x512x{args.slices} uncompressed CT series -> SEG + SR + JSON")
    print(f"  wall time  {seconds:6.2f} s (whole process, imports included)")
    print(f"  peak RSS   {peak_mib:6.0f} MiB")
    print(f"  stages     {case['timings_s']}")
    print(f"  values     {case['values']}")


if __name__ == "__main__":
    main()
