"""Fixtures for console tests: the hub served by a real uvicorn on a free loopback port (in a thread), and
a headless Debian Chromium driven through chromedriver."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from central.hub import Hub
from tests.helpers import chromium, serve


class LiveHub:
    def __init__(self, hub: Hub, url: str) -> None:
        self.hub, self.url = hub, url


@pytest.fixture
def live(hub: Hub) -> Iterator[LiveHub]:
    with serve(hub) as url:
        yield LiveHub(hub, url)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    with chromium(tmp_path / "chrome-profile", 1280, 900) as drv:
        yield drv


@pytest.fixture(scope="module")
def console_browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One Chromium for a whole module of console journeys, at the console's smallest supported screen
    (1366x768 inner size). Each test's hub has its own port, so its origin's storage is its own."""
    with chromium(tmp_path_factory.mktemp("chrome-profile"), 1366, 768) as drv:
        # --window-size is the outer size in some builds: make the page itself 1366x768
        drv.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": 1366, "height": 768, "deviceScaleFactor": 1, "mobile": False})
        yield drv
