"""Benchmark: the dashboard on a 10,000-case batch store, and a 512x512 slice with overlays.

    python benchmarks/dashboard_speed.py [--cases 10000] [--cache DIR]

1. Generates (once, cached) a batch store with ``--cases`` cases through the store's own API: a cac-like run
   with Agatston scores, risk categories and 3 % failures over five reasons.
2. Serves it with ``medhub dashboard`` (a subprocess) and loads the overview and the first page of the case table
   in headless Chromium (selenium): the time from navigation until the numbers, then the table rows, are on the
   page. Also the API answers alone (20 requests each, median and 95th percentile), and sorted/filtered pages.
3. Runs ``lung-ct`` on a generated 512 x 512 x 60 chest phantom and times slice PNGs with both lung overlays
   (first one, which reads the case, then 60 others).

The issue's budgets: overview and first page <= 2 s; a 512 x 512 slice with overlays <= 100 ms. Hosted
dashboards (MHub.ai, DeepCAC2) cannot run here, so each figure is printed as a ratio to its budget.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dicom_load import machine


def make_store(folder: Path, cases: int) -> Path:
    """A finished batch store of ``cases`` synthetic cac cases (no images: the table and overview are timed)."""
    from medhub.cohort.store import ResultsStore

    if (folder / "batch.sqlite").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    reasons = ["heart-not-found", "contrast", "gap", "truncated", "timeout"]
    store = ResultsStore.create_or_open(folder)
    run = store.start_run(model_id="cac", model_version="0.7.0", weights_sha256="0" * 64, medhub_version="bench",
                          source="generated", card={"id": "cac"}, provenance={})
    ids = [f"NLST-{100000 + n}" for n in range(cases)]
    store.add_cases(run, ({"case_id": i, "source_path": f"/data/{i}", "patient_id": i.split("-")[1],
                           "study_instance_uid": f"1.2.3.{n}", "series_instance_uid": f"1.2.3.{n}.1"}
                          for n, i in enumerate(ids)))
    for n, case_id in enumerate(ids):
        failed = rng.random() < 0.03
        score = 0.0 if rng.random() < 0.45 else round(rng.lognormvariate(4.0, 1.6), 1)
        category = "0" if score == 0 else "1-99" if score < 100 else "100-399" if score < 400 else ">=400"
        store.record_outcome(run, {
            "case_id": case_id, "status": "failed" if failed else "ok",
            "reason_code": rng.choice(reasons) if failed else None, "message": "generated failure" if failed else None,
            "identity": {"patient_id": case_id.split("-")[1], "study_instance_uid": f"1.2.3.{n}",
                         "series_instance_uid": f"1.2.3.{n}.1"},
            "input": {"path": f"/data/{case_id}"}, "outputs": {},
            "values": {} if failed else {"agatston": score, "risk_category": category, "volume_mm3": score * 0.8},
            "warnings": [], "timings_s": {"load": 0.3, "predict": 4.0, "write": 0.6}, "peak_rss_mib": 1200.0,
            "wall_s": 5.0, "cpu_s": 4.9, "output_dir": None, "worker": "bench", "finished_utc": "2026-12-04T00:00:00Z",
            "model_id": "cac", "model_version": "0.7.0"})
    store.close()
    return folder


def make_run(folder: Path) -> Path:
    """``lung-ct`` run on a generated 512 x 512 x 60 chest phantom (DICOM), for the slice timing."""
    from medhub.hub.runner import run
    from medhub.synth.chest import make_chest_phantom
    from medhub.synth.dicom_series import write_series

    out = folder / "run"
    if (out / "run.json").is_file():
        return out
    phantom = make_chest_phantom(shape=(60, 512, 512), spacing=(5.0, 0.7, 0.7), seed=3)
    write_series(phantom.hu, phantom.affine, folder / "data" / "chest", seed=3)
    run("lung-ct", folder / "data", out)
    return out


class Served:
    def __init__(self, folder: Path) -> None:
        from medhub.dashboard import cli  # noqa: F401 - fail here, not in the child, if it cannot import

        with __import__("socket").socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen([sys.executable, "-m", "medhub", "dashboard", str(folder), "--port",
                                      str(self.port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.url = f"http://127.0.0.1:{self.port}"
        for _ in range(300):
            try:
                urllib.request.urlopen(self.url + "/api/overview", timeout=5).read()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("dashboard did not start")

    def get(self, path: str) -> tuple[float, bytes]:
        start = time.perf_counter()
        body = urllib.request.urlopen(self.url + path, timeout=30).read()
        return time.perf_counter() - start, body

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def _stats(seconds: list[float]) -> str:
    ordered = sorted(seconds)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"median {statistics.median(seconds) * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms"


def browser_load_times(url: str) -> tuple[float, float]:
    """Seconds until the overview's numbers, then the first table page's rows, are shown in headless Chromium."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        start = time.perf_counter()
        driver.get(url + "/#/")
        WebDriverWait(driver, 60).until(lambda d: d.find_elements("id", "count-total"))
        overview = time.perf_counter() - start
        driver.get("about:blank")  # a fresh page load, not a hash change inside the loaded page
        start = time.perf_counter()
        driver.get(url + "/#/cases")
        WebDriverWait(driver, 60).until(lambda d: len(d.find_elements("css selector", "tr.case-row")) > 0)
        table = time.perf_counter() - start
        return overview, table
    finally:
        driver.quit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "medhub-bench-dashboard")
    args = parser.parse_args()
    start = time.perf_counter()
    store = make_store(args.cache / f"batch-{args.cases}", args.cases)
    print(f"store of {args.cases} cases ready ({time.perf_counter() - start:.1f} s)", file=sys.stderr)
    run_folder = make_run(args.cache)
    lines = [f"Machine: {machine()}; {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC", ""]

    server = Served(store)
    try:
        first_overview, _ = server.get("/api/overview")
        overview = [server.get("/api/overview")[0] for _ in range(20)]
        page = [server.get("/api/cases?limit=25")[0] for _ in range(20)]
        sorted_page = [server.get("/api/cases?limit=25&sort=agatston&desc=true&offset=5000")[0] for _ in range(20)]
        filtered = [server.get("/api/cases?limit=25&q=timeout&status=failed")[0] for _ in range(20)]
        total = json.loads(server.get("/api/cases?limit=1")[1])["total"]
        browser_overview, browser_table = browser_load_times(server.url)
    finally:
        server.close()
    lines += [f"**{total:,}-case batch store**", "",
              f"- in Chromium: overview shown after {browser_overview:.2f} s, first table page after "
              f"{browser_table:.2f} s (budget 2 s: **{max(browser_overview, browser_table) / 2:.2f}×** the budget)",
              f"- API /api/overview: first {first_overview * 1000:.0f} ms, then {_stats(overview)}",
              f"- API first page (25 rows): {_stats(page)}; sorted by Agatston at offset 5,000: {_stats(sorted_page)}; "
              f"text + status filter: {_stats(filtered)}", ""]

    server = Served(run_folder)
    try:
        case = json.loads(server.get("/api/cases")[1])["rows"][0]["case_id"]
        first_open, meta_body = server.get(f"/api/cases/{case}/image")  # reads the series and its labels
        meta = json.loads(meta_body)
        labelled = meta["labelled_slices"]
        _, body = server.get(f"/api/cases/{case}/slice/{labelled[len(labelled) // 2]}.png?window=lung")
        times = [server.get(f"/api/cases/{case}/slice/{k}.png?window=lung&labels=1,2")[0] for k in labelled]
    finally:
        server.close()
    median = statistics.median(times)
    lines += [f"**512 × 512 slices with both lung overlays** ({meta['slices']} slices, {len(times)} requested)", "",
              f"- opening the case (reads the series and its labels, once per case): {first_open * 1000:.0f} ms",
              f"- then: {_stats(times)} (budget 100 ms: **{median / 0.1:.2f}×** the budget); PNG "
              f"{len(body) / 1024:.0f} KiB", ""]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
