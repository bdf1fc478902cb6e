"""Headless Chromium for the browser suites (``pytest -m browser``): one driver per test module.

Needs Debian's ``chromium`` + ``chromium-driver`` and ``selenium`` (a dev extra); a machine without them fails
with the command that installs them (``.ci/run`` does).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator

import pytest

HEADLESS_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,1000")


@pytest.fixture(scope="module")
def driver() -> Iterator:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    if not chromium or not chromedriver:
        pytest.fail("Chromium is not installed: the leaderboard browser tests need Debian's chromium and "
                    "chromium-driver (apt-get update && apt-get install -y chromium chromium-driver); "
                    ".ci/run installs them")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is not installed: pip install -e '.[dev]' (or pip install selenium)")
    profile = tempfile.mkdtemp(prefix="vqbench-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in HEADLESS_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(chromedriver), options=options)
    drv.set_page_load_timeout(60)
    try:
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)


def severe_console(driver) -> list[str]:
    """The SEVERE entries of the browser console since the last call (script errors, failed loads)."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
