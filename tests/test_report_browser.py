"""report.html in a real browser: headless Chromium (Debian's chromium and chromium-driver) opens it
from file:// with no network, logs no console error, shows every image and draws a page that is not
blank. Skipped when selenium, chromium or chromedriver is missing.

Set VAELAB_REPORT_SCREENSHOT=FILE.png to keep the screenshot the test takes, and VAELAB_CHROMIUM /
VAELAB_CHROMEDRIVER to use a browser and driver installed elsewhere.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_report import fake_inputs
from vaelab.report import write_report

CHROMIUM = Path(os.environ.get("VAELAB_CHROMIUM", "/usr/bin/chromium"))  # elsewhere than Debian's paths
CHROMEDRIVER = Path(os.environ.get("VAELAB_CHROMEDRIVER", "/usr/bin/chromedriver"))
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,1000"]


@pytest.fixture
def browser(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    for program in (CHROMIUM, CHROMEDRIVER):
        if not program.is_file():
            pytest.skip(f"{program} is absent (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)  # with the driver's path below: no Selenium Manager, no download
    for flag in [*FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = webdriver.ChromeService(executable_path=str(CHROMEDRIVER), log_output=str(tmp_path / "driver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def test_the_report_opens_offline_with_every_image_and_no_console_error(tmp_path, browser):
    out_dir = tmp_path / "compare"
    summary, results = fake_inputs(out_dir)
    html_path, _ = write_report(out_dir, summary, results)
    browser.get(html_path.as_uri())
    assert browser.title == summary["title"]
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []
    sizes = browser.execute_script(
        "return Array.from(document.images, image => [image.complete, image.naturalWidth, image.naturalHeight]);")
    assert len(sizes) == len(summary["figures"])
    assert all(complete and width > 0 and height > 0 for complete, width, height in sizes), sizes
    screenshot = _full_page_screenshot(browser, tmp_path / "screenshot.png")
    keep = os.environ.get("VAELAB_REPORT_SCREENSHOT")
    if keep:
        shutil.copyfile(screenshot, keep)
    with Image.open(screenshot) as picture:
        colours = np.asarray(picture.convert("RGB")).reshape(-1, 3)
    assert len(np.unique(colours, axis=0)) > 100  # text, table and figures, not one blank colour


def _full_page_screenshot(driver, path: Path) -> Path:
    """A PNG of the whole page at path: the window is grown to the document's height first."""
    height = driver.execute_script("return document.documentElement.scrollHeight;")
    driver.set_window_size(1280, min(int(height) + 120, 8000))
    path.write_bytes(driver.get_screenshot_as_png())
    return path
