"""Screenshots of the dashboard's views for the README, taken in headless Chromium.

    python scripts/dashboard_screenshots.py --batch BATCH_DIR --run RUN_DIR --compare COMPARE_DIR --out docs/

Each folder is served with ``medhub dashboard`` on a free port; the views are the overview and the case table of
the batch, the viewer on the run's first case, and the compare view.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait


def serve(folder: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "medhub", "dashboard", str(folder), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(url + "/api/overview", timeout=5)
            return proc, url
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"dashboard on {folder} did not start")


def settle(driver: webdriver.Chrome, ready: str) -> None:
    WebDriverWait(driver, 60).until(lambda d: d.find_elements("css selector", ready))
    WebDriverWait(driver, 60).until(lambda d: d.execute_script(
        "return [...document.images].every(i => i.complete && i.naturalWidth > 0)"))
    time.sleep(0.3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=Path, required=True)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--compare", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args()
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1280,1000", "--hide-scrollbars"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    shots = [(args.batch, "/#/", "#histogram", "dashboard-overview"),
             (args.batch, "/#/cases", "tr.case-row", "dashboard-cases"),
             (args.run, None, "#slice-image", "dashboard-case"),
             (args.compare, "/#/compare", "#compare-right", "dashboard-compare")]
    try:
        for folder, path, ready, name in shots:
            proc, url = serve(folder)
            try:
                if path is None:
                    import json

                    first = json.loads(urllib.request.urlopen(url + "/api/cases?limit=1").read())["rows"][0]
                    path = f"/#/case/{first['case_id']}"
                driver.get(url + path)
                settle(driver, ready)
                driver.save_screenshot(str(args.out / f"{name}.png"))
                print(args.out / f"{name}.png")
            finally:
                proc.terminate()
                proc.wait(timeout=10)
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
