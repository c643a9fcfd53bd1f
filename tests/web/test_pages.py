"""The console's pages and assets are served, carry no data, and pass the hub's CSP (no inline script)."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient


def test_root_redirects_to_console(client: TestClient) -> None:
    r = client.get("/", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/console"


def test_shells_and_assets(client: TestClient) -> None:
    login = client.get("/console/login")
    assert login.status_code == 200 and 'id="login-form"' in login.text
    for page in ("", "/devices", "/registry", "/codes", "/video", "/dialer", "/audit", "/channel", "/iam", "/bridge"):
        r = client.get("/console" + page)
        assert r.status_code == 200, page
        assert 'src="/console/static/pages.js"' in r.text
        # The CSP forbids inline script: every <script> must load a same-origin file.
        assert not re.search(r"<script>(?!</script>)", r.text), page
        assert "script-src" not in r.headers["content-security-policy"] or "unsafe-inline" not in \
            r.headers["content-security-policy"]
    assert client.get("/console/../etc").status_code == 404
    assert client.get("/console/a1b2").status_code == 404
    for asset in ("console.js", "pages.js", "console.css"):
        assert client.get(f"/console/static/{asset}").status_code == 200


def test_pages_hold_no_data(client: TestClient) -> None:
    # The shell is the same for everyone; data comes only from the API with the caller's token.
    r = client.get("/console/devices")
    assert "/city" not in r.text
