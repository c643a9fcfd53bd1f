"""The console's single-page app is served at /console/ (every console path falls back to its index.html),
its assets are same-origin files, it needs no inline script (the hub's CSP forbids it), and a hub whose
console is not built says how to build it instead of failing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from central.app import create_app
from central.hub import Hub
from central.web import routes as web


def test_root_redirects_to_console(client: TestClient) -> None:
    r = client.get("/", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/console"


def test_spa_and_assets(client: TestClient) -> None:
    if not (web.DIST / "index.html").exists():
        pytest.fail(web.BUILD_HINT)  # ./run install builds it; a missing build is a broken set-up
    pages = ("", "/", "/login", "/devices", "/registry", "/codes", "/video", "/dialer", "/audit", "/channel",
             "/iam", "/webhooks", "/bridge")
    first = None
    for page in pages:
        r = client.get("/console" + page)
        assert r.status_code == 200, page
        assert r.headers["content-type"].startswith("text/html") and r.headers["cache-control"] == "no-cache"
        first = first or r.text
        assert r.text == first, page  # one shell for every page: the app's router draws the page
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", r.text), page  # no inline script
        assert "unsafe-inline" not in r.headers["content-security-policy"]
    assets = re.findall(r'(?:src|href)="(/console/assets/[^"]+)"', first or "")
    assert any(a.endswith(".js") for a in assets) and any(a.endswith(".css") for a in assets), assets
    for a in assets:
        r = client.get(a)
        assert r.status_code == 200 and "immutable" in r.headers["cache-control"], a
    for bad in ("/console/../etc", "/console/a1b2", "/console/assets/nope.js", "/console/assets/..%2Findex.html"):
        assert client.get(bad).status_code == 404, bad


def test_pages_hold_no_data(client: TestClient) -> None:
    # The shell is the same for everyone; data comes only from the API with the caller's token.
    assert "/city" not in client.get("/console/devices").text


def test_web_info_is_public_and_names_the_zone(hub: Hub, client: TestClient) -> None:
    r = client.get("/api/v1/web/info")
    assert r.status_code == 200
    assert r.json() == {"time_zone": "Asia/Shanghai", "utc_offset_min": 480}  # the `timezone` setting's default
    hub.settings.timezone = "Europe/Berlin"
    assert client.get("/api/v1/web/info").json()["time_zone"] == "Europe/Berlin"


def test_unbuilt_console_says_how_to_build_it(hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(web, "DIST", tmp_path / "no-dist")
    with TestClient(create_app(hub=hub, start_bridge=False)) as c:
        r = c.get("/console/devices")
        assert r.status_code == 503 and "./run install" in r.text
        assert c.get("/healthz").status_code == 200  # the hub itself runs on
