"""API docs offline (issue 18.6): /docs (Swagger UI) and /redoc render in a real Chromium with every asset
served by the hub itself, nothing from another origin; /openapi.json is served where tools look for it."""

from __future__ import annotations

from typing import Any

import httpx
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.web.conftest import LiveHub

RESOURCES = "return performance.getEntriesByType('resource').map(e => e.name)"


def _foreign(browser: Any, origin: str) -> list[str]:
    return [u for u in browser.execute_script(RESOURCES) if not u.startswith(origin)]


def test_swagger_ui_renders_every_operation_from_the_hubs_own_assets(live: LiveHub, browser: Any) -> None:
    doc = httpx.get(f"{live.url}/api/v1/openapi.json", timeout=30).json()
    n_ops = sum(1 for item in doc["paths"].values() for m in item if m in ("get", "post", "put", "patch", "delete"))
    browser.get(f"{live.url}/docs")
    WebDriverWait(browser, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) >= n_ops)
    assert "City Brain hub" in browser.find_element(By.CSS_SELECTOR, ".info .title").text
    assert _foreign(browser, live.url) == []
    assert any(u.endswith("/docs/assets/swagger-ui-bundle.js") for u in browser.execute_script(RESOURCES))


def test_redoc_renders_from_the_hubs_own_assets(live: LiveHub, browser: Any) -> None:
    browser.get(f"{live.url}/redoc")
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".api-content h1"))
    assert "City Brain hub" in browser.find_element(By.CSS_SELECTOR, ".api-content h1").text
    # ReDoc's footer asks for its maker's logo from cdn.redoc.ly: the page's CSP refuses it (images from the
    # hub only), so nothing leaves the hub and the page is the same offline
    assert {u.split("?")[0] for u in _foreign(browser, live.url)} <= {"https://cdn.redoc.ly/redoc/logo-mini.svg"}
    csp = httpx.get(f"{live.url}/redoc", timeout=30).headers["content-security-policy"]
    assert "https:" not in csp and "img-src 'self' data:" in csp


def test_openapi_json_at_the_root_too(live: LiveHub) -> None:
    a = httpx.get(f"{live.url}/openapi.json", timeout=30)
    b = httpx.get(f"{live.url}/api/v1/openapi.json", timeout=30)
    assert a.status_code == 200 and a.json() == b.json()
    assert a.json()["paths"]
