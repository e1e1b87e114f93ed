"""The dashboard in a real browser: Debian's headless Chromium driven by selenium through chromedriver.

Screenshots of each step are saved in ``test-artifacts/dashboard/`` (git-ignored). `make test` installs chromium
and chromium-driver; where no browser can be installed these tests skip and say why.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.dashboard.conftest import Server

ARTIFACTS = REPO / "test-artifacts" / "dashboard"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="Debian chromium and chromium-driver are not installed (make tools installs "
                                       "them; apt-get install chromium chromium-driver)")


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _wait(driver, condition, timeout: float = 20):
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # The page re-renders its views: an element found a moment ago may be gone; look again.
    ignored = (NoSuchElementException, StaleElementReferenceException)
    return WebDriverWait(driver, timeout, ignored_exceptions=ignored).until(condition)


def _shot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def _image_loaded(driver, element_id: str, previous: str | None = None):
    def check(d):
        element = d.find_element("id", element_id)
        src = element.get_attribute("src")
        complete = d.execute_script("const i = arguments[0]; return i.complete && i.naturalWidth > 0;", element)
        return src if complete and src != previous else False
    return _wait(driver, check)


def test_overview_table_filter_case_overlay_and_slice_scrolling(browser, batch_folder):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    with Server(batch_folder) as server:
        browser.get(server.url + "/#/")
        _wait(browser, lambda d: d.find_element(By.ID, "count-total").text == "8")
        assert browser.find_element(By.ID, "count-failed").text == "1"
        assert browser.find_element(By.ID, "histogram").is_displayed()
        _shot(browser, "overview")

        browser.find_element(By.ID, "nav-cases").click()
        _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "tr.case-row")) == 8)
        browser.find_element(By.ID, "case-filter").send_keys("case-05")
        _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "tr.case-row")) == 1)
        assert browser.find_element(By.ID, "page-info").text == "1–1 of 1"
        _shot(browser, "cases-filtered")
        browser.find_element(By.ID, "case-filter").send_keys(Keys.CONTROL, "a", Keys.DELETE)
        _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "tr.case-row")) == 8)
        header = browser.find_element(By.CSS_SELECTOR, "th[data-sort='agatston']")
        header.click()
        _wait(browser, lambda d: "▲" in d.find_element(By.CSS_SELECTOR, "th[data-sort='agatston']").text)
        browser.find_element(By.CSS_SELECTOR, "th[data-sort='agatston']").click()
        _wait(browser, lambda d: "▼" in d.find_element(By.CSS_SELECTOR, "th[data-sort='agatston']").text)
        first = browser.find_element(By.CSS_SELECTOR, "tr.case-row")
        assert first.get_attribute("data-case") in ("case-03", "case-07")  # the densest (case-03 failed: last)

        browser.find_element(By.CSS_SELECTOR, "tr.case-row[data-case='case-07']").click()
        _wait(browser, lambda d: d.find_element(By.ID, "case-title").text == "case-07")
        src = _image_loaded(browser, "slice-image")
        label = browser.find_element(By.ID, "slice-label").text
        _shot(browser, "case-viewer")

        toggle = browser.find_element(By.CSS_SELECTOR, ".overlay-toggle")
        toggle.click()  # the overlay off: the image is requested without its label
        src_off = _image_loaded(browser, "slice-image", src)
        assert "labels=&" in src_off or src_off.endswith("labels=")
        toggle.click()

        image = browser.find_element(By.ID, "slice-image")
        image.send_keys(Keys.ARROW_UP)
        _wait(browser, lambda d: d.find_element(By.ID, "slice-label").text != label)
        after_key = browser.find_element(By.ID, "slice-label").text
        browser.execute_script("arguments[0].dispatchEvent(new WheelEvent('wheel', {deltaY: 120, bubbles: true, "
                               "cancelable: true}))", image)
        _wait(browser, lambda d: d.find_element(By.ID, "slice-label").text != after_key)
        browser.find_element(By.CSS_SELECTOR, ".window-btn[data-window='bone']").click()
        _wait(browser, lambda d: "window=bone" in d.find_element(By.ID, "slice-image").get_attribute("src"))
        _image_loaded(browser, "slice-image")
        _shot(browser, "case-viewer-scrolled")
        downloads = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#downloads a")]
        assert "seg.dcm" in downloads


def test_compare_view_shows_two_sources_side_by_side(browser, compare_folder):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    with Server(compare_folder) as server:
        browser.get(server.url + "/#/")
        _wait(browser, lambda d: not d.find_element(By.ID, "nav-compare").get_attribute("hidden"))
        browser.find_element(By.ID, "nav-compare").click()
        _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#compare-summary tr")) > 1)
        left = _image_loaded(browser, "compare-left")
        right = _image_loaded(browser, "compare-right")
        assert "source=lung-ct" in left and "source=truth" in right
        assert browser.find_element(By.ID, "right-caption").text == "truth"
        slider = browser.find_element(By.ID, "compare-slider")
        browser.execute_script("arguments[0].value = 5; arguments[0].dispatchEvent(new Event('input'))", slider)
        _wait(browser, lambda d: "/slice/5.png" in d.find_element(By.ID, "compare-left").get_attribute("src"))
        Select(browser.find_element(By.ID, "left-source")).select_by_visible_text("truth")
        _wait(browser, lambda d: "source=truth" in d.find_element(By.ID, "compare-left").get_attribute("src"))
        browser.execute_script("arguments[0].value = 20; arguments[0].dispatchEvent(new Event('input'))", slider)
        Select(browser.find_element(By.ID, "left-source")).select_by_visible_text("lung-ct")
        _image_loaded(browser, "compare-left")
        _image_loaded(browser, "compare-right")
        _shot(browser, "compare")


def test_an_evaluation_folder_shows_its_leaderboard_with_cis_and_its_cases(browser, evaluation_folder):
    from selenium.webdriver.common.by import By

    with Server(evaluation_folder) as server:
        browser.get(server.url + "/#/")
        _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#leaderboard tr")) == 3)
        rows = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#leaderboard tr")]
        assert rows[1].startswith("1 close") and "[" in rows[1]  # a CI beside the value
        _shot(browser, "evaluation-leaderboard")
        browser.get(server.url + "/#/cases")
        _wait(browser, lambda d: "missing" in d.find_element(By.TAG_NAME, "body").text)
        _shot(browser, "evaluation-cases")


def test_a_survival_folder_shows_its_c_index_cox_table_and_km_plot(browser, survival_folder):
    from selenium.webdriver.common.by import By

    with Server(survival_folder) as server:
        browser.get(server.url + "/#/")
        _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#cox tr")) == 4)
        assert "C-index 0.5" in browser.find_element(By.ID, "c-index").text
        _image_loaded(browser, "km")
        _shot(browser, "survival")
