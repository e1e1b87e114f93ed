"""`medhub run cac` end to end on a generated 512×512×300 chest phantom, on one CPU core.

The issue's budget is 10 s per scan on 1 core (`OMP_NUM_THREADS=1`), towards NLST scale (about 128k scans in under
6 hours on one 64-core node). Two measures, each in a subprocess with OMP/MKL/torch threads pinned to 1 and its CPU
affinity set to one core, file cache warm:

* **one-off CLI**: `medhub run cac` as a fresh process (three times after one untimed run), so Python start-up,
  imports (torch alone is 2-3 s) and every library's first-call set-up are included; wall time and peak RSS of
  the process.
* **per scan in a running worker**: the same `medhub.hub.runner.run` call repeated in one process after one untimed
  scan; this is what each scan costs in `medhub batch`, where a worker process handles many scans.

    python benchmarks/cac_speed.py [--cache /tmp/medhub-bench]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from medhub.synth.cac_phantom import make_cac_phantom, write_cac_phantom

BUDGET_S = 10.0


def phantom_series(cache: Path) -> Path:
    """The benchmark scan, generated once into ``cache``. Generation runs in a child process: a forked child
    inherits its parent's peak RSS on Linux, so a 2.7 GB phantom generator in this process would be reported as
    the model's peak."""
    folder = cache / "cac_512x512x300"
    if not (folder / "dicom").is_dir():
        subprocess.run([sys.executable, __file__, "--make-phantom", str(folder)], check=True)
    return folder / "dicom"


def make_phantom(folder: Path) -> None:
    phantom = make_cac_phantom(1_000_001, shape=(300, 512, 512), spacing=(1.0, 0.7, 0.7), noise_sd=20.0,
                               blur_mm=0.7, n_plaques=6)
    write_cac_phantom(phantom, folder, nifti=False)


def worker_loop(series: Path, repeats: int) -> None:
    """Run the model ``1 + repeats`` times in this process and print the timed runs as JSON (internal mode)."""
    from medhub.hub.registry import get_model
    from medhub.hub.runner import run

    model = get_model("cac")
    runs = []
    for i in range(1 + repeats):
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            report = run(model, series, out, outputs=["seg", "sr", "json"])
            seconds = time.perf_counter() - start
        if i:  # the first scan pays the one-time set-up
            runs.append({"seconds": seconds, "stages": report.results[0].timings_s})
    print(json.dumps({"runs": runs, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "medhub-bench")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed one-off processes, and timed scans in the running worker")
    parser.add_argument("--worker-loop", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--make-phantom", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make_phantom:
        make_phantom(args.make_phantom)
        return
    if args.worker_loop:
        worker_loop(args.worker_loop, args.repeats)
        return
    series = phantom_series(args.cache)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as out:
        command = ["taskset", "-c", "0", sys.executable, "-m", "medhub", "run", "cac", "--input", str(series),
                   "--output", out, "--outputs", "seg,sr,json"]
        subprocess.run(command, check=True, capture_output=True, env=env)  # file cache warm
        runs = []
        for _ in range(args.repeats):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True, env=env)
            seconds = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            record = json.loads((Path(out) / "run.json").read_text())
            # the process's own peak from its run record: RUSAGE_CHILDREN holds the largest child's, which can be
            # the phantom generator's
            runs.append({"seconds": seconds, "user": after.ru_utime - before.ru_utime,
                         "system": after.ru_stime - before.ru_stime, "peak_mib": record["peak_rss_mib"],
                         "case": record["cases"][0]})
    times = [r["seconds"] for r in runs]
    print(f"medhub run cac, 512x512x300 phantom, 1 core, {len(runs)} fresh processes: "
          f"{' / '.join(f'{t:.1f}' for t in times)} s wall, peak RSS {max(r['peak_mib'] for r in runs):.0f} MiB")
    # on a shared or oversubscribed machine (CPU steal) the wall time overstates the cost; CPU time does not
    print("CPU time: " + " / ".join(f"{r['user'] + r['system']:.1f} s (user {r['user']:.1f}, system "
                                    f"{r['system']:.1f})" for r in runs))
    print(f"stages: {[r['case']['timings_s'] for r in runs]}")
    print(f"ratio to the 10 s budget: {sorted(times)[len(times) // 2] / BUDGET_S:.2f}x median, "
          f"{max(times) / BUDGET_S:.2f}x slowest (below 1 meets it)")
    print(f"values: {runs[0]['case']['values']}")

    loop = subprocess.run(["taskset", "-c", "0", sys.executable, __file__, "--worker-loop", str(series),
                           "--repeats", str(args.repeats)], check=True, capture_output=True, env=env, text=True)
    warm = json.loads(loop.stdout.strip().splitlines()[-1])
    times = [r["seconds"] for r in warm["runs"]]
    print(f"per scan in a running worker, 1 core: {' / '.join(f'{t:.1f}' for t in times)} s, "
          f"peak RSS {warm['peak_rss_mib']:.0f} MiB")
    print(f"stages: {[r['stages'] for r in warm['runs']]}")
    print(f"ratio to the 10 s budget: {max(times) / BUDGET_S:.2f}x (slowest of {len(times)})")


if __name__ == "__main__":
    main()
