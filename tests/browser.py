"""Headless Chromium for the tests that look at a page: skips where Debian's chromium and
chromium-driver are not installed (.ci/run installs them)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest


def chrome(tmp_path: Path, window: str = "1400,1000"):
    """A headless Chromium WebDriver (quit it when done), or a skip."""
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--window-size={window}", f"--user-data-dir={tmp_path / 'chrome-profile'}"):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)


def open_page(page: Path, tmp_path: Path) -> dict:
    """A page opened from disk (file://): its section titles (h2) and, per <img>,
    [id, complete, naturalWidth] (naturalWidth is 0 for an image that did not decode)."""
    driver = chrome(tmp_path)
    try:
        driver.get(Path(page).resolve().as_uri())
        return {"titles": driver.execute_script(
                    "return Array.from(document.querySelectorAll('h2')).map(h => h.textContent)"),
                "images": driver.execute_script(
                    "return Array.from(document.images).map(i => [i.id, i.complete, i.naturalWidth])")}
    finally:
        driver.quit()
