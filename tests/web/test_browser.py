"""A real headless Chromium against a real uvicorn hub: a district admin signs in through the console
(wrong password first), sees only their district, approves a registry usage application, and the audit
page shows only district rows. Screenshots go to the test's tmp dir."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from central.devices import store as devices_store
from protocol.messages import CameraStatus, Heartbeat
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
    # Its last heartbeat: one camera streaming, one whose RTSP stream dropped.
    hb = Heartbeat(uptime_s=60, queue_depth=0, cameras=[
        CameraStatus(id="gate", state="live", fps_in=25, fps_analysed=5, cpu_percent=12.5),
        CameraStatus(id="lane", state="reconnecting", reconnects=3, down_s=42, last_error="read timeout")])
    with hub.store.tx() as db:
        devices_store.set_heartbeat(db, "site-a/cam-a1", datetime.now(UTC).isoformat(), hb.model_dump_json(), 0, 0)
    devs.provision("site-b", "scanner", "Market B scanner", "scan-b1", B)
    # District B asks to use district A's identifiers: district A's admin decides.
    b = auth(token_for(hub, "admin-b", "district_admin", B))
    now = datetime.now(UTC)
    r = httpx.post(f"{live.url}/api/v1/registry/applications", headers=b, json={
        "applicant_org": B, "owner_org": A, "purpose": "street cleaning rota", "fields": ["name", "address"],
        "valid_from": now.isoformat(), "valid_to": (now + timedelta(days=30)).isoformat()})
    assert r.status_code == 201, r.text
    out: dict[str, Any] = {"registry_app": r.json()["id"]}
    if "video" in hub.services or _has("central.video.service"):
        out["cases"] = video_cases(hub)
    return out


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def jpeg() -> str:
    import base64
    import io

    from PIL import Image, ImageDraw

    img = Image.new("RGB", (96, 64), (40, 40, 40))
    ImageDraw.Draw(img).rectangle((30, 20, 60, 50), fill=(230, 120, 20))  # a "fire" blob
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return base64.b64encode(buf.getvalue()).decode()


def video_cases(hub: Any) -> dict[str, int]:
    """One fire case at a district-A site, one at a district-B site, as the bridge would ingest them."""
    from central.video.service import service_of
    from protocol.messages import Event

    svc = service_of(hub)
    svc.set_site("site-a", A, "test")
    svc.set_site("site-b", B, "test")
    ids = {}
    for site, dev in (("site-a", "cam-a1"), ("site-b", "cam-b1")):
        with hub.store.tx() as db:
            ids[site] = svc.ingest(db, site, dev, Event(kind="fire", camera="c1", score=0.9, snapshot_jpeg_b64=jpeg()))
    return ids


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
    lane = rows[0].find_element(By.CSS_SELECTOR, ".cam[data-cam='lane']")
    assert lane.get_attribute("data-state") == "reconnecting" and "down 42 s" in lane.text, lane.text
    assert "5.0 fps" in rows[0].find_element(By.CSS_SELECTOR, ".cam[data-cam='gate']").text
    assert "scan-b1" not in drv.page_source
    drv.save_screenshot(str(shots / "03-devices.png"))

    # Registry: approve district B's usage application of district A's identifiers.
    page(drv, live, "/console/registry")
    row = wait(drv, f"#reg-apps-table tr[data-id='{ids['registry_app']}'][data-status='pending']")
    row.find_element(By.CSS_SELECTOR, "button.approve").click()
    wait(drv, f"#reg-apps-table tr[data-id='{ids['registry_app']}'][data-status='approved']")
    drv.save_screenshot(str(shots / "04-registry-approved.png"))
    with live.hub.store.read() as db:
        status = db.run(sa.text("SELECT status, decided_by FROM registry_applications WHERE id = :id"),
                        {"id": ids["registry_app"]}).one()
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

    if "cases" in ids:
        case_workflow(drv, live, ids["cases"], shots)

    # The other pages draw without an error for this role (an absent capability says so instead).
    for other in ("dialer", "channel", "iam", "codes", "registry?id=P310101000001X"):
        page(drv, live, "/console/" + other)
        errors = [e.text for e in drv.find_elements(By.CSS_SELECTOR, "#content .error")]
        assert errors == [] or other.startswith("registry"), (other, errors)

    # Sign out ends the session server-side: the old token no longer works.
    token = drv.execute_script("return sessionStorage.getItem('cb_token')")
    drv.find_element(By.ID, "logout").click()
    wait_until(drv, lambda d: "/console/login" in d.current_url)
    assert httpx.get(f"{live.url}/api/v1/iam/me", headers=auth(token)).status_code == 401
    assert len(list(shots.glob("*.png"))) >= 5


def case_workflow(drv: Any, live: LiveHub, cases: dict[str, int], shots: Path) -> None:
    from selenium.webdriver.common.by import By

    page(drv, live, "/console/video")
    listed = [r.get_attribute("data-id") for r in drv.find_elements(By.CSS_SELECTOR, "#video-table tbody tr")]
    assert listed == [str(cases["site-a"])], listed  # district B's case is not shown
    drv.find_element(By.CSS_SELECTOR, f"#video-table tr[data-id='{cases['site-a']}'] a.case-link").click()
    wait(drv, "body[data-page='video'][data-ready='1']")
    wait(drv, "#case[data-status='new']")
    snap = wait(drv, "#case .snaps img")
    assert snap.get_attribute("src").startswith("data:image/jpeg;base64,")
    assert drv.execute_script("return arguments[0].naturalWidth", snap) == 96  # a real decoded JPEG
    drv.save_screenshot(str(shots / "06-case-new.png"))
    for label, then in (("Confirm", "reviewed"), ("Dispatch", "dispatched"), ("Acknowledge", "acknowledged"),
                        ("Resolve", "resolved")):
        if label == "Confirm":
            drv.find_element(By.ID, "case-reason").send_keys("flames visible on camera")
        if label == "Dispatch":
            drv.find_element(By.ID, "case-dept").send_keys("fire-brigade")
        drv.find_element(By.CSS_SELECTOR, f"#case button.wf[data-label='{label}']").click()
        wait(drv, f"#case[data-status='{then}']")
    hist = drv.find_element(By.ID, "case-history").text
    for step in ("review", "dispatch", "acknowledge", "resolve"):
        assert f"video.case.{step}" in hist
    drv.save_screenshot(str(shots / "07-case-resolved.png"))
    with live.hub.store.read() as db:
        row = db.run(sa.text("SELECT status, department FROM video_cases WHERE id = :id"),
                     {"id": cases["site-a"]}).one()
    assert tuple(row) == ("resolved", "fire-brigade")


@pytest.mark.timeout(120)
def test_city_admin_codes_in_browser(live: LiveHub, browser: Any, tmp_path: Path) -> None:
    """The code applications page shows the three checks; approval is a city-level act; an issued code's QR
    image shown in the page decodes back to the code."""
    import base64
    import io

    from PIL import Image
    from pyzbar.pyzbar import ZBarSymbol
    from pyzbar.pyzbar import decode as zbar_decode
    from selenium.webdriver.common.by import By

    from tests.codes.conftest import register_entity

    hub = live.hub
    iam = hub.services["iam"]
    iam.ensure_org_chain("/city/health")
    uid = iam.create_user(None, "mayor-office", PASSWORD, "/city", must_change=False)
    iam.grant_root(uid, "city_admin", "/city")
    admin = auth(token_for(hub, "root-admin", "city_admin", "/city"))
    issuer = auth(token_for(hub, "nurse", "department_issuer", "/city/health"))
    post = lambda path, h, body: httpx.post(live.url + path, headers=h, json=body)  # noqa: E731
    assert post("/api/v1/codes/departments", admin, {"id": "HEALTH", "name": "Health", "org": "/city/health"}
                ).status_code == 201
    csv_body = "dept_id,scene_type,description\nHEALTH,clinic.pass,duty\n"
    assert httpx.post(live.url + "/api/v1/codes/duties", headers={**admin, "Content-Type": "text/csv"},
                      content=csv_body).status_code == 200
    app = {"dept_id": "HEALTH", "scene_name": "Clinic pass", "scene_type": "clinic.pass", "code_type": "static",
           "entity_type": "person", "purpose": "entry", "validity": "Y"}
    good = post("/api/v1/codes/applications", issuer, {**app, "share_commitment": True}).json()
    bad = post("/api/v1/codes/applications", issuer, {**app, "share_commitment": False, "scene_type": "bus.pass"}
               ).json()
    person = register_entity(hub)

    shots = tmp_path / "shots"
    shots.mkdir()
    drv = browser
    drv.get(live.url + "/console/login?next=/console/codes")
    wait(drv, "#login-form")
    drv.find_element(By.ID, "username").send_keys("mayor-office")
    drv.find_element(By.ID, "password").send_keys(PASSWORD)
    drv.find_element(By.ID, "login-btn").click()
    wait(drv, "body[data-page='codes'][data-ready='1']")
    bad_row = drv.find_element(By.CSS_SELECTOR, f"#code-apps-table tr[data-id='{bad['id']}']")
    assert len(bad_row.find_elements(By.CSS_SELECTOR, ".check.failed")) == 2  # no duty, no sharing commitment
    assert "not among HEALTH's duties" in bad_row.text
    good_row = drv.find_element(By.CSS_SELECTOR, f"#code-apps-table tr[data-id='{good['id']}']")
    assert len(good_row.find_elements(By.CSS_SELECTOR, ".check.pass")) == 3
    assert drv.find_element(By.CSS_SELECTOR, "#code-supervision svg.chart")  # supervision charts drawn
    drv.save_screenshot(str(shots / "01-codes.png"))
    good_row.find_element(By.CSS_SELECTOR, "input.code-system").send_keys("HC")
    good_row.find_element(By.CSS_SELECTOR, "button.approve").click()
    wait(drv, f"#code-apps-table tr[data-id='{good['id']}'][data-status='approved']")

    # Issue from the console, then the QR shown in the page decodes to the issued code.
    drv.find_element(By.ID, "issue-app").send_keys(str(good["id"]))
    drv.find_element(By.ID, "issue-identity").send_keys(person)
    drv.find_element(By.CSS_SELECTOR, "#issue-form button").click()
    card = wait(drv, "#issued .code-card")
    src = card.find_element(By.CSS_SELECTOR, "img.qr").get_attribute("src")
    (sym,) = zbar_decode(
        Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))), symbols=[ZBarSymbol.QRCODE]
    )
    serial = card.get_attribute("data-serial")
    assert serial and serial in sym.data.decode()
    # Looking the serial up fetches the QR through the authenticated image endpoint.
    drv.find_element(By.ID, "lookup-serial").send_keys(serial)
    drv.find_element(By.CSS_SELECTOR, "#lookup-form button").click()
    wait_until(drv, lambda d: len(d.find_elements(By.CSS_SELECTOR, f"#issued .code-card[data-serial='{serial}']")) == 2)
    drv.save_screenshot(str(shots / "02-issued.png"))
    first = drv.find_elements(By.CSS_SELECTOR, "#issued .code-card img.qr")[0]
    assert first.get_attribute("src").startswith("data:image/png;base64,")

    # The supervision CSV export works from the console (it fetches with the session's bearer token).
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    drv.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    drv.find_element(By.ID, "supervision-csv").click()
    got = downloads / "supervision.csv"
    wait_until(drv, lambda d: got.exists() and got.stat().st_size > 0)
    header = got.read_text(encoding="utf-8-sig").splitlines()[0]
    assert "dept" in header.lower() and "scene" in header.lower(), header


def test_webhook_deliveries_replayed_from_the_console(live: LiveHub, browser: Any) -> None:
    """The webhooks page lists every capability's deliveries in the caller's scope; a dead one is replayed
    from it (same webhook-id, back to pending, audited)."""
    import time

    from selenium.webdriver.common.by import By

    from central.webhooks import service as wh

    hub = live.hub
    iam = hub.services["iam"]
    iam.ensure_org_chain("/city/district-a")
    uid = iam.create_user(None, "hooks-admin", PASSWORD, "/city", must_change=False)
    iam.grant_root(uid, "city_admin", "/city")
    # Nobody listens on port 1: every try is refused. Due far ahead, so the hub's own sender never races
    # the tries below; after max_attempts it is dead.
    t0 = time.time() + 10**6
    target = wh.Target("video.route:9", "/city/district-a", "http://127.0.0.1:1/hook", wh.new_secret())
    with hub.store.tx() as db:
        mid = wh.enqueue(db, "case.dispatched", {"case": 1}, target, ref="video.case:1", now=t0)
    svc = wh.service_of(hub)
    for k in range(hub.settings.webhooks.max_attempts):
        svc.deliver_due(now=t0 + k * 10**5)
    with hub.store.read() as db:
        got = db.first(sa.text("SELECT id, status FROM webhooks_deliveries WHERE msg_id = :m"), {"m": mid})
    assert got is not None and got["status"] == "dead"
    did = got["id"]

    drv = browser
    drv.get(live.url + "/console/login?next=/console/webhooks")
    wait(drv, "#login-form")
    drv.find_element(By.ID, "username").send_keys("hooks-admin")
    drv.find_element(By.ID, "password").send_keys(PASSWORD)
    drv.find_element(By.ID, "login-btn").click()
    wait(drv, "body[data-page='webhooks'][data-ready='1']")
    assert "menu-webhooks" in [a.get_attribute("id") for a in drv.find_elements(By.CSS_SELECTOR, "#menu a")]
    drv.find_element(By.CSS_SELECTOR, "#deliveries-filter button[data-status='dead']").click()
    row = wait(drv, f"#deliveries-box[data-status='dead'] #deliveries tbody tr[data-id='{did}'][data-status='dead']")
    assert "case.dispatched" in row.text and "video.case:1" in row.text
    row.find_element(By.CSS_SELECTOR, "button.replay").click()
    wait_until(drv, lambda d: "queued again" in d.find_element(By.CSS_SELECTOR, ".flash").text)
    # the dead filter no longer shows it; the outbox has it pending again under the same webhook-id
    wait_until(drv, lambda d: not d.find_elements(By.CSS_SELECTOR, f"#deliveries tbody tr[data-id='{did}']"))
    with hub.store.read() as db:
        again = db.first(sa.text("SELECT msg_id, status, attempts FROM webhooks_deliveries WHERE id = :i"), {"i": did})
        replays = db.scalar(sa.text("SELECT count(*) FROM iam_audit WHERE action = 'webhooks.replay'"))
    # tries start over (the hub's sender may already have made the first new one, refused again)
    assert again is not None and again["msg_id"] == mid and again["status"] in ("pending", "delivering")
    assert again["attempts"] <= 1 and replays == 1
