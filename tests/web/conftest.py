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


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        # `./run test` installs them; a missing browser is a broken set-up, not a reason to pass quietly.
        pytest.fail("Debian chromium + chromedriver are not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=1280,900", f"--user-data-dir={tmp_path / 'chrome-profile'}"):
        opts.add_argument(arg)
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    drv.set_page_load_timeout(30)
    try:
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(tmp_path / "chrome-profile", ignore_errors=True)
