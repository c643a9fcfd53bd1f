"""Fixtures for console tests: the hub served by a real uvicorn on a free loopback port (in a thread), and
a headless Debian Chromium driven through chromedriver."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from central.hub import Hub
from tests.helpers import serve

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


class LiveHub:
    def __init__(self, hub: Hub, url: str) -> None:
        self.hub, self.url = hub, url


@pytest.fixture
def live(hub: Hub) -> Iterator[LiveHub]:
    with serve(hub) as url:
        yield LiveHub(hub, url)


def _chromium(profile: Path, size: str) -> Any:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        # `./run test` installs them; a missing browser is a broken set-up, not a reason to pass quietly.
        pytest.fail("Debian chromium + chromedriver are not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", f"--window-size={size}", f"--user-data-dir={profile}"):
        opts.add_argument(arg)
    # the page's console messages (errors fail the console tests)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    drv.set_page_load_timeout(30)
    return drv


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    drv = _chromium(tmp_path / "chrome-profile", "1280,900")
    try:
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(tmp_path / "chrome-profile", ignore_errors=True)


@pytest.fixture(scope="module")
def console_browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One Chromium for a whole module of console journeys, at the console's smallest supported screen
    (1366x768 inner size). Each test's hub has its own port, so its origin's storage is its own."""
    profile = tmp_path_factory.mktemp("chrome-profile")
    drv = _chromium(profile, "1366,768")
    # --window-size is the outer size in some builds: make the page itself 1366x768
    drv.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                        {"width": 1366, "height": 768, "deviceScaleFactor": 1, "mobile": False})
    try:
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)
