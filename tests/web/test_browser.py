"""A real headless Chromium against a real uvicorn hub: a district admin signs in through the console
(wrong password first), sees only their district, approves a registry usage application, and the audit
page shows only district rows. Screenshots go to the test's tmp dir."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import auth, token_for
from tests.web.conftest import LiveHub

A, B = "/city/district-a", "/city/district-b"
PASSWORD = "Harbour-Lights-2024"


def wait(drv: Any, css: str, timeout: float = 15) -> Any:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(drv, timeout).until(ec.presence_of_element_located((By.CSS_SELECTOR, css)))


def wait_until(drv: Any, fn: Any, timeout: float = 15) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(drv, timeout).until(lambda d: fn(d))


def page(drv: Any, live: LiveHub, path: str) -> None:
    drv.get(live.url + path)
    wait(drv, "body[data-ready='1']")


def seed(live: LiveHub) -> dict[str, Any]:
    hub = live.hub
    iam = hub.services["iam"]
    for org in (A, B):
        iam.ensure_org_chain(org)
    uid = iam.create_user(None, "admin-a", PASSWORD, A, must_change=False)
    iam.grant_root(uid, "district_admin", A)
    devs = hub.services["devices"]
    devs.provision("site-a", "camera", "Gate A camera", "cam-a1", A)
    devs.provision("site-b", "scanner", "Market B scanner", "scan-b1", B)
    # District B asks to use district A's identifiers: district A's admin decides.
    b = auth(token_for(hub, "admin-b", "district_admin", B))
    now = datetime.now(UTC)
    r = httpx.post(f"{live.url}/api/v1/registry/applications", headers=b, json={
        "applicant_org": B, "owner_org": A, "purpose": "street cleaning rota", "fields": ["name", "address"],
        "valid_from": now.isoformat(), "valid_to": (now + timedelta(days=30)).isoformat()})
    assert r.status_code == 201, r.text
    return {"registry_app": r.json()["id"]}


@pytest.mark.timeout(120)
def test_district_admin_in_browser(live: LiveHub, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    ids = seed(live)
    shots = tmp_path / "shots"
    shots.mkdir()
    drv = browser

    # No session: the console sends the browser to the login page.
    drv.get(live.url + "/")
    wait_until(drv, lambda d: "/console/login" in d.current_url)
    wait(drv, "#login-form")
    drv.find_element(By.ID, "username").send_keys("admin-a")
    drv.find_element(By.ID, "password").send_keys("not-the-password")
    drv.find_element(By.ID, "login-btn").click()
    wait_until(drv, lambda d: d.find_element(By.ID, "login-error").text)
    assert "wrong username or password" in drv.find_element(By.ID, "login-error").text
    drv.save_screenshot(str(shots / "01-login-failed.png"))

    drv.find_element(By.ID, "password").clear()
    drv.find_element(By.ID, "password").send_keys(PASSWORD)
    drv.find_element(By.ID, "login-btn").click()
    wait(drv, "body[data-page='home'][data-ready='1']")
    assert drv.find_element(By.ID, "home-orgs").text == A
    menu = [a.get_attribute("id") for a in drv.find_elements(By.CSS_SELECTOR, "#menu a")]
    assert {"menu-home", "menu-devices", "menu-registry", "menu-audit"} <= set(menu), menu
    drv.save_screenshot(str(shots / "02-home.png"))

    # Devices: district A's camera only.
    drv.find_element(By.ID, "menu-devices").click()
    wait(drv, "body[data-page='devices'][data-ready='1']")
    rows = drv.find_elements(By.CSS_SELECTOR, "#devices tbody tr")
    assert [r.get_attribute("data-id") for r in rows] == ["site-a/cam-a1"]
    assert "offline" in rows[0].text
    assert "scan-b1" not in drv.page_source
    drv.save_screenshot(str(shots / "03-devices.png"))

    # Registry: approve district B's usage application of district A's identifiers.
    page(drv, live, "/console/registry")
    row = wait(drv, f"#reg-apps-table tr[data-id='{ids['registry_app']}'][data-status='pending']")
    row.find_element(By.CSS_SELECTOR, "button.approve").click()
    wait(drv, f"#reg-apps-table tr[data-id='{ids['registry_app']}'][data-status='approved']")
    drv.save_screenshot(str(shots / "04-registry-approved.png"))
    status = live.hub.store.conn.execute("SELECT status, decided_by FROM registry_applications WHERE id = ?",
                                         (ids["registry_app"],)).fetchone()
    assert tuple(status) == ("approved", "admin-a")

    # Audit: the approval is there, and every row lies in district A.
    page(drv, live, "/console/audit")
    rows = drv.find_elements(By.CSS_SELECTOR, "#audit tbody tr")
    orgs = {r.get_attribute("data-org") for r in rows}
    assert rows and all(o == A or o.startswith(A + "/") for o in orgs), orgs
    assert "registry.application.approved" in drv.find_element(By.ID, "audit").text
    drv.find_element(By.ID, "audit-verify-btn").click()
    wait_until(drv, lambda d: d.find_element(By.ID, "audit-verify").text)
    assert "intact" in drv.find_element(By.ID, "audit-verify").text
    drv.save_screenshot(str(shots / "05-audit.png"))

    # Sign out ends the session server-side: the old token no longer works.
    token = drv.execute_script("return sessionStorage.getItem('cb_token')")
    drv.find_element(By.ID, "logout").click()
    wait_until(drv, lambda d: "/console/login" in d.current_url)
    assert httpx.get(f"{live.url}/api/v1/iam/me", headers=auth(token)).status_code == 401
    assert len(list(shots.glob("*.png"))) == 5
