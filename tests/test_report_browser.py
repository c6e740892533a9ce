"""The HTML report in a real browser: headless Chromium (Debian's package) driven by Selenium.

Skipped when no Chromium or chromedriver is installed, except under ``CI=true``
(``.ci/run``, which installs both), where a missing browser fails the run.  Screenshots are written under pytest's ``tmp_path`` and, when
``DIFFUSION_CAM_ARTIFACTS`` names a folder, there too.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from diffusion_cam.report import token_data_uri
from diffusion_cam.report import write_pictures

from test_visualize import make_explanation  # tests/ is on sys.path (pytest rootdir import mode)

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--no-first-run", "--window-size=1280,1400")


def _find(*names: str) -> str | None:
    return next((p for p in map(shutil.which, names) if p), None)


def _require_browser() -> tuple[str, str]:
    """Chromium's and chromedriver's paths; a skip when either is missing, a failure under CI=true."""
    chromium = _find("chromium", "chromium-browser", "google-chrome")
    driver_path = _find("chromedriver")
    if chromium is None or driver_path is None:
        missing = " and ".join(n for n, p in (("chromium", chromium), ("chromedriver", driver_path)) if p is None)
        reason = f"no {missing} installed (Debian: apt-get install chromium chromium-driver)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}; CI must run the browser tests, not skip them")
        pytest.skip(reason)
    return chromium, driver_path


def test_a_missing_browser_fails_under_ci_and_skips_elsewhere(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no chromium and chromedriver installed"):
        _require_browser()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        _require_browser()


@pytest.fixture(scope="module")
def browser():
    chromium, driver_path = _require_browser()
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium must never fetch a driver or a browser
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="dc-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _open(driver, path: Path, scripted: bool = True) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(path.resolve().as_uri())
    if scripted:  # the report's script marks the page ready once its handlers are in place
        WebDriverWait(driver, 10).until(lambda d: d.find_element("tag name", "body").get_attribute("data-ready") == "true")


def _screenshot(driver, tmp_path: Path, name: str) -> Path:
    shot = tmp_path / name
    assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 0
    target = os.environ.get("DIFFUSION_CAM_ARTIFACTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(target) / name)
    return shot


def _errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def test_clicking_words_shows_their_maps(browser, tmp_path):
    exp = make_explanation(("a", "red", "circle", "and", "blue", "square"), steps=[3, 0, 1, 5, 2, 4])
    write_pictures(exp, tmp_path / "out")
    _open(browser, tmp_path / "out" / "report.html")
    img = browser.find_element("id", "dc-map")
    caption = browser.find_element("id", "dc-caption-word")
    detail = browser.find_element("id", "dc-caption-detail")

    shown = []
    for word, row in (("circle", 2), ("blue", 4)):
        browser.find_element("css selector", f'button.chip[data-row="{row}"]').click()
        src = img.get_attribute("src")
        assert src == token_data_uri(exp, row), f"the map shown after clicking {word!r} is not {word!r}'s"
        assert caption.text == word
        assert f"committed at step {exp.steps[row]}" in detail.text and "score" in detail.text
        pressed = browser.find_element("css selector", 'button.chip[aria-pressed="true"]')
        assert pressed.text == word
        shown.append(src)
    assert shown[0] != shown[1]
    _screenshot(browser, tmp_path, "report_click_words.png")

    # the denoising slider: step 0 committed "red" (row 1); the next step "circle"
    browser.find_element("id", "dc-prev").click()
    browser.find_element("id", "dc-prev").click()
    browser.find_element("id", "dc-prev").click()
    assert img.get_attribute("src") == token_data_uri(exp, 1) and caption.text == "red"
    browser.find_element("id", "dc-next").click()
    assert img.get_attribute("src") == token_data_uri(exp, 2) and caption.text == "circle"
    masked = browser.find_elements("css selector", "#dc-step-answer .chip.masked")
    assert len(masked) == len(exp) - 2  # two words committed so far
    # the raw-map toggle swaps in the map before refinement
    browser.find_element("id", "dc-raw").click()
    assert img.get_attribute("src") == token_data_uri(exp, 2, raw=True)
    assert _errors(browser) == []


def test_script_in_prompt_renders_as_text(browser, tmp_path):
    from selenium.common.exceptions import NoAlertPresentException

    prompt = "<script>alert(1)</script>"
    exp = make_explanation(("<img src=x onerror=alert(2)>", "circle"), prompt=prompt)
    write_pictures(exp, tmp_path / "out")
    _open(browser, tmp_path / "out" / "report.html")
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018 (accessing it raises when there is no dialog)
    shown = browser.find_element("id", "dc-prompt")
    assert shown.is_displayed() and shown.text == prompt
    first = browser.find_element("css selector", 'button.chip[data-row="0"]')
    assert first.text == "<img src=x onerror=alert(2)>"
    first.click()
    assert browser.find_element("id", "dc-caption-word").text == "<img src=x onerror=alert(2)>"
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018
    assert browser.execute_script("return document.querySelectorAll('script').length") == 2
    _screenshot(browser, tmp_path, "report_script_prompt.png")
    assert _errors(browser) == []


def test_benchmark_report_renders(browser, tmp_path):
    from diffusion_cam.bench_report import bench_report

    exp = make_explanation()
    exp.save(tmp_path / "items" / "x")
    records = [{"method": m, "item": f"s{i}", "metrics": {"f3": 0.1 * i + (0.3 if m == "diffusion-cam" else 0)},
                "explanation": str(tmp_path / "items" / "x"), "token": i % len(exp)}
               for m in ("diffusion-cam", "<gradcam>") for i in range(4)]
    path = bench_report(records, tmp_path / "bench")
    _open(browser, path, scripted=False)
    assert browser.find_element("tag name", "h1").text == "diffusion-cam benchmark"
    assert [e.text for e in browser.find_elements("css selector", "table tr td:first-child")][:2] == \
        ["diffusion-cam", "<gradcam>"]
    assert len(browser.find_elements("css selector", ".chart svg rect")) == 2
    cards = browser.find_elements("css selector", ".card img")
    assert len(cards) == 2 * (3 + 1) and all(c.get_property("naturalWidth") > 0 for c in cards)
    _screenshot(browser, tmp_path, "bench_report.png")
    assert _errors(browser) == []
