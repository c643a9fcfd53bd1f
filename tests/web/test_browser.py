"""A real headless Chromium (one per module, 1366x768) against a real uvicorn hub serving the built console
(central/web/dist). Journeys: a district admin signs in (wrong password first), sees only their district,
provisions a device and downloads its config, approves a registry usage application, works a video case
(full-size snapshot, map), switches to Chinese, and the audit page shows only district rows in the hub's
time zone; a city admin approves and issues codes; a city admin creates a user, a role binding and a call
task with a CSV list; webhook deliveries are replayed. Every page visited is also checked for text that
leaked from code (`[object`, `undefined`, `NaN`), console errors and sideways scrolling; screenshots go to
the test's tmp dir (paths printed)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import sqlalchemy as sa

from central.devices import store as devices_store
from central.web import routes as web
from protocol.messages import CameraStatus, Heartbeat
from tests.helpers import auth, token_for
from tests.web.conftest import LiveHub

A, B = "/city/district-a", "/city/district-b"
PASSWORD = "Harbour-Lights-2024"
TIMEOUT = 30  # generous: the machine may be busy; every wait polls a condition
LEAKS = ("[object", "undefined", "NaN")


@pytest.fixture(autouse=True)
def _built() -> None:
    if not (web.DIST / "index.html").exists():
        pytest.fail(web.BUILD_HINT)  # ./run install builds it; a missing build is a broken set-up


def wait(drv: Any, css: str, timeout: float = TIMEOUT) -> Any:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(drv, timeout).until(ec.presence_of_element_located((By.CSS_SELECTOR, css)))


def wait_until(drv: Any, fn: Any, timeout: float = TIMEOUT) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(drv, timeout).until(lambda d: fn(d))


class Console:
    """The console in the shared browser: opening pages, and the checks every page must pass."""

    def __init__(self, drv: Any, live: LiveHub, shots: Path) -> None:
        self.drv, self.live, self.shots = drv, live, shots
        shots.mkdir(parents=True, exist_ok=True)
        self.n = 0
        drv.get_log("browser")  # what an earlier test left in the log is not this test's

    def open(self, path: str, page: str) -> None:
        self.drv.get(self.live.url + path)
        self.ready(page)

    def ready(self, page: str) -> None:
        wait(self.drv, f"body[data-page='{page}'][data-ready='1']")

    def click_menu(self, page: str) -> None:
        from selenium.webdriver.common.by import By

        self.drv.find_element(By.ID, "menu-" + page).click()
        self.ready(page)

    def check(self, name: str, allow: tuple[str, ...] = ()) -> Path:
        """No leaked code text, no console error (but the `allow`ed, e.g. an expected 401), no sideways
        scroll; then a screenshot."""
        from selenium.webdriver.common.by import By

        drv = self.drv
        text = drv.find_element(By.TAG_NAME, "body").text
        for leak in LEAKS:
            assert leak not in text, (name, leak, text[max(0, text.find(leak) - 200):text.find(leak) + 200])
        errors = [e["message"] for e in drv.get_log("browser") if e["level"] == "SEVERE"
                  and not any(a in e["message"] for a in allow)]
        assert errors == [], (name, errors)
        sw, cw, iw = drv.execute_script("const e = document.documentElement;"
                                        "return [e.scrollWidth, e.clientWidth, window.innerWidth]")
        assert iw == 1366 and sw <= cw, (name, "scrolls sideways", sw, cw, iw)
        self.n += 1
        shot = self.shots / f"{self.n:02d}-{name}.png"
        drv.save_screenshot(str(shot))
        print(f"screenshot {shot}")
        return shot

    def login(self, username: str, password: str = PASSWORD) -> None:
        from selenium.webdriver.common.by import By

        wait(self.drv, "#login-form")
        self.drv.find_element(By.ID, "username").send_keys(username)
        self.drv.find_element(By.ID, "password").send_keys(password)
        self.drv.find_element(By.ID, "login-btn").click()

    def logout(self) -> None:
        from selenium.webdriver.common.by import By

        self.drv.find_element(By.ID, "logout").click()
        wait_until(self.drv, lambda d: "/console/login" in d.current_url)

    def flash(self, contains: str) -> None:
        from selenium.webdriver.common.by import By

        wait_until(self.drv, lambda d: any(contains in e.text for e in d.find_elements(By.CSS_SELECTOR, ".flash")))

    def pick(self, select_id: str, text: str) -> None:
        """Choose the option showing `text` in an Element Plus select (its list opens in a popper)."""
        from selenium.webdriver.common.by import By

        self.drv.find_element(By.ID, select_id).click()

        def option(d: Any) -> Any:
            return next((o for o in d.find_elements(By.CSS_SELECTOR, ".el-select-dropdown__item")
                         if o.is_displayed() and text in o.text), None)

        wait_until(self.drv, option).click()

    def downloads(self, tmp_path: Path) -> Path:
        d = tmp_path / "downloads"
        d.mkdir(exist_ok=True)
        self.drv.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(d)})
        return d


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
    app_id = r.json()["id"]
    # The case's camera has a position: the case is drawn on the map.
    city = auth(token_for(hub, "root-admin", "city_admin", "/city"))
    r = httpx.put(f"{live.url}/api/v1/video/cameras/site-a/cam-a1/c1", headers=city,
                  json={"lat": 31.2304, "lon": 121.4737, "neighbours": []})
    assert r.status_code == 200, r.text
    return {"registry_app": app_id, "cases": video_cases(hub)}


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


@pytest.mark.timeout(240)
def test_district_admin_in_browser(live: LiveHub, console_browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    # the hub's zone is the `timezone` setting (default Asia/Shanghai; GET /api/v1/web/info), the browser's UTC
    ids = seed(live)
    drv = console_browser
    ui = Console(drv, live, tmp_path / "shots")

    # No session: the console sends the browser to the login page.
    drv.get(live.url + "/")
    wait_until(drv, lambda d: "/console/login" in d.current_url)
    ui.ready("login")
    ui.login("admin-a", "not-the-password")
    wait_until(drv, lambda d: d.find_element(By.ID, "login-error").text)
    assert "wrong username or password" in drv.find_element(By.ID, "login-error").text
    ui.check("login-failed", allow=("/api/v1/iam/login - Failed to load resource: the server responded with a "
                                    "status of 401",))

    # (clear() would not tell Vue the field changed: select and type over it, as a person does)
    from selenium.webdriver.common.keys import Keys

    drv.find_element(By.ID, "password").send_keys(Keys.CONTROL, "a")
    drv.find_element(By.ID, "password").send_keys(PASSWORD)
    drv.find_element(By.ID, "login-btn").click()
    ui.ready("home")
    assert drv.find_element(By.ID, "home-orgs").text == A
    menu = [e.get_attribute("id") for e in drv.find_elements(By.CSS_SELECTOR, "#menu [id^='menu-']")]
    assert {"menu-home", "menu-devices", "menu-registry", "menu-audit"} <= set(menu), menu
    assert "Asia/Shanghai" in drv.find_element(By.ID, "hub-zone").text
    ui.check("home")

    # Devices: district A's camera only, with what its heartbeat says of each camera.
    ui.click_menu("devices")
    rows = drv.find_elements(By.CSS_SELECTOR, "#devices tbody tr")
    assert [r.get_attribute("data-id") for r in rows] == ["site-a/cam-a1"]
    assert "offline" in rows[0].text
    lane = rows[0].find_element(By.CSS_SELECTOR, ".cam[data-cam='lane']")
    assert lane.get_attribute("data-state") == "reconnecting" and "down 42 s" in lane.text, lane.text
    assert "5.0 fps" in rows[0].find_element(By.CSS_SELECTOR, ".cam[data-cam='gate']").text
    assert "scan-b1" not in drv.page_source
    assert drv.find_elements(By.CSS_SELECTOR, "#main .chart svg")  # devices by kind (ECharts, SVG)
    ui.check("devices")

    # Provision a camera in district A and download its config: the edge reads it as is.
    downloads = ui.downloads(tmp_path)
    drv.find_element(By.ID, "prov-site").send_keys("site-a2")
    drv.find_element(By.ID, "prov-name").send_keys("Gate A2 camera")
    drv.find_element(By.ID, "prov-device").send_keys("cam-a2")
    drv.find_element(By.ID, "prov-org").send_keys(A)
    drv.find_element(By.CSS_SELECTOR, "#provision-form button[type='submit']").click()
    wait(drv, "#provisioned[data-id='site-a2/cam-a2']")
    wait(drv, "#devices tbody tr[data-id='site-a2/cam-a2']")
    drv.find_element(By.ID, "config-download").click()
    got = downloads / "site-a2-cam-a2.json"
    wait_until(drv, lambda d: got.exists() and got.stat().st_size > 0)
    from edge.config import load_config

    cfg = wait_until(drv, lambda d: _config(got, load_config))
    assert (cfg.site, cfg.device, cfg.kind) == ("site-a2", "cam-a2", "camera") and cfg.mqtt.password
    ui.check("device-provisioned")

    # Registry: approve district B's usage application of district A's identifiers.
    ui.open("/console/registry", "registry")
    row = wait(drv, f"#reg-apps-table tr[data-id='{ids['registry_app']}'][data-status='pending']")
    row.find_element(By.CSS_SELECTOR, "button.approve").click()
    wait(drv, f"#reg-apps-table tr[data-id='{ids['registry_app']}'][data-status='approved']")
    ui.check("registry-approved")
    with live.hub.store.read() as db:
        status = db.run(sa.text("SELECT status, decided_by FROM registry_applications WHERE id = :id"),
                        {"id": ids["registry_app"]}).one()
    assert tuple(status) == ("approved", "admin-a")

    case_workflow(ui, live, ids["cases"])

    # Audit: the approval is there, every row lies in district A, times are the hub's (Asia/Shanghai).
    ui.open("/console/audit", "audit")
    rows = drv.find_elements(By.CSS_SELECTOR, "#audit tbody tr")
    orgs = {r.get_attribute("data-org") for r in rows}
    assert rows and all(o == A or o.startswith(A + "/") for o in orgs), orgs
    assert "registry.application.approved" in drv.find_element(By.ID, "audit").text
    seq = int(rows[0].get_attribute("data-seq"))
    with live.hub.store.read() as db:
        ts = db.scalar(sa.text("SELECT ts FROM iam_audit WHERE seq = :s"), {"s": seq})
    shown = rows[0].find_elements(By.TAG_NAME, "td")[1].text
    expect = datetime.fromisoformat(ts.replace("Z", "+00:00")).astimezone(ZoneInfo("Asia/Shanghai"))
    assert shown == expect.strftime("%Y-%m-%d %H:%M:%S"), (shown, ts)
    drv.find_element(By.ID, "audit-verify-btn").click()
    wait_until(drv, lambda d: "intact" in d.find_element(By.ID, "audit-verify").text)
    ui.check("audit")

    # zh-CN: the menu and Element Plus speak Chinese, and the choice stays for this user after a reload.
    drv.find_element(By.CSS_SELECTOR, "#lang-switch [data-lang='zh']").click()
    wait_until(drv, lambda d: d.find_element(By.ID, "menu-devices").text == "设备")
    drv.refresh()
    ui.ready("audit")
    assert drv.find_element(By.ID, "menu-devices").text == "设备"
    assert drv.find_element(By.ID, "audit-verify-btn").text == "校验哈希链"
    assert drv.find_element(By.CSS_SELECTOR, "#audit thead th:nth-child(2)").text == "时间"
    ui.check("audit-zh")
    drv.find_element(By.CSS_SELECTOR, "#lang-switch [data-lang='en']").click()
    wait_until(drv, lambda d: d.find_element(By.ID, "menu-devices").text == "Devices")

    # The other pages draw without an error for this role (an absent capability says so instead).
    for other, allow in (("dialer", ()), ("channel", ()), ("iam", ()), ("codes", ()), ("webhooks", ()),
                         ("bridge", ()), ("registry?id=P310101000001X", ("status of 400", "status of 404"))):
        ui.open("/console/" + other, other.split("?")[0])
        errors = [e.text for e in drv.find_elements(By.CSS_SELECTOR, "#content .error")]
        assert errors == [] or other.startswith("registry"), (other, errors)
        ui.check(other.split("?")[0] + ("-entity" if "?" in other else ""), allow=allow)

    # Sign out ends the session server-side: the old token no longer works.
    token = drv.execute_script("return sessionStorage.getItem('cb_token')")
    ui.logout()
    assert httpx.get(f"{live.url}/api/v1/iam/me", headers=auth(token)).status_code == 401
    assert len(list(ui.shots.glob("*.png"))) >= 10


def _config(path: Path, load: Any) -> Any:
    try:
        return load(path)
    except Exception:  # still being written by the browser
        return None


def case_workflow(ui: Console, live: LiveHub, cases: dict[str, int]) -> None:
    from selenium.webdriver.common.by import By

    drv = ui.drv
    ui.open("/console/video", "video")
    listed = [r.get_attribute("data-id") for r in drv.find_elements(By.CSS_SELECTOR, "#video-table tbody tr")]
    assert listed == [str(cases["site-a"])], listed  # district B's case is not shown
    # the case is on the map (Leaflet, no tiles): one marker
    assert len(drv.find_elements(By.CSS_SELECTOR, "#video-map path.leaflet-interactive")) == 1
    ui.check("video")
    drv.find_element(By.CSS_SELECTOR, f"#video-table tr[data-id='{cases['site-a']}'] a.case-link").click()
    ui.ready("video")
    wait(drv, "#case[data-status='new']")
    snap = wait(drv, "#case .snaps img")
    assert snap.get_attribute("src").startswith("data:image/jpeg;base64,")
    assert drv.execute_script("return arguments[0].naturalWidth", snap) == 96  # a real decoded JPEG
    ui.check("case-new")
    snap.click()  # the full-size snapshot
    full = wait(drv, "#snapshot-full")
    wait_until(drv, lambda d: full.is_displayed() and d.execute_script("return arguments[0].naturalWidth", full) == 96)
    ui.check("case-snapshot-full")
    drv.find_element(By.CSS_SELECTOR, ".el-dialog__headerbtn").click()
    wait_until(drv, lambda d: not full.is_displayed())
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
    ui.check("case-resolved")
    with live.hub.store.read() as db:
        row = db.run(sa.text("SELECT status, department FROM video_cases WHERE id = :id"),
                     {"id": cases["site-a"]}).one()
    assert tuple(row) == ("resolved", "fire-brigade")


@pytest.mark.timeout(180)
def test_city_admin_codes_in_browser(live: LiveHub, console_browser: Any, tmp_path: Path) -> None:
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

    drv = console_browser
    ui = Console(drv, live, tmp_path / "shots")
    drv.get(live.url + "/console/login?next=/console/codes")
    ui.login("mayor-office")
    ui.ready("codes")
    bad_row = drv.find_element(By.CSS_SELECTOR, f"#code-apps-table tr[data-id='{bad['id']}']")
    assert len(bad_row.find_elements(By.CSS_SELECTOR, ".check.failed")) == 2  # no duty, no sharing commitment
    assert "not among HEALTH's duties" in bad_row.text
    good_row = drv.find_element(By.CSS_SELECTOR, f"#code-apps-table tr[data-id='{good['id']}']")
    assert len(good_row.find_elements(By.CSS_SELECTOR, ".check.pass")) == 3
    assert len(drv.find_elements(By.CSS_SELECTOR, "#code-supervision .chart svg")) == 2  # supervision charts
    ui.check("codes")
    good_row.find_element(By.CSS_SELECTOR, ".code-system input").send_keys("HC")
    good_row.find_element(By.CSS_SELECTOR, "button.approve").click()
    wait(drv, f"#code-apps-table tr[data-id='{good['id']}'][data-status='approved']")

    # Issue from the console, then the QR shown in the page decodes to the issued code.
    drv.find_element(By.ID, "issue-app").send_keys(str(good["id"]))
    drv.find_element(By.ID, "issue-identity").send_keys(person)
    drv.find_element(By.CSS_SELECTOR, "#issue-form button[type='submit']").click()
    card = wait(drv, "#issued .code-card")
    src = card.find_element(By.CSS_SELECTOR, "img.qr").get_attribute("src")
    (sym,) = zbar_decode(
        Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))), symbols=[ZBarSymbol.QRCODE]
    )
    serial = card.get_attribute("data-serial")
    assert serial and serial in sym.data.decode()
    # Looking the serial up fetches the QR through the authenticated image endpoint.
    drv.find_element(By.ID, "lookup-serial").send_keys(serial)
    drv.find_element(By.CSS_SELECTOR, "#lookup-form button[type='submit']").click()
    wait_until(drv, lambda d: len(d.find_elements(By.CSS_SELECTOR, f"#issued .code-card[data-serial='{serial}']")) == 2)
    ui.check("issued")
    first = drv.find_elements(By.CSS_SELECTOR, "#issued .code-card img.qr")[0]
    assert first.get_attribute("src").startswith("data:image/png;base64,")

    # The supervision CSV export works from the console (it fetches with the session's bearer token).
    downloads = ui.downloads(tmp_path)
    drv.find_element(By.ID, "supervision-csv").click()
    got = downloads / "supervision.csv"
    wait_until(drv, lambda d: got.exists() and got.stat().st_size > 0)
    header = got.read_text(encoding="utf-8-sig").splitlines()[0]
    assert "dept" in header.lower() and "scene" in header.lower(), header
    ui.logout()


@pytest.mark.timeout(180)
def test_city_admin_creates_user_binding_and_call_task(live: LiveHub, console_browser: Any, tmp_path: Path) -> None:
    """Users & access: a new user and a role binding for them; call tasks: a new task from a built-in
    template, and its CSV call list imported with the refused rows listed by row and column; then the new
    user's first sign-in (password change) shows only the pages their role allows."""
    from selenium.webdriver.common.by import By

    hub = live.hub
    iam = hub.services["iam"]
    iam.ensure_org_chain(A)
    uid = iam.create_user(None, "city-ops", PASSWORD, "/city", must_change=False)
    iam.grant_root(uid, "city_admin", "/city")
    drv = console_browser
    ui = Console(drv, live, tmp_path / "shots")
    drv.get(live.url + "/console/login?next=/console/iam")
    ui.login("city-ops")
    ui.ready("iam")
    ui.check("iam")

    drv.find_element(By.ID, "user-name").send_keys("clerk-a")
    drv.find_element(By.ID, "user-password").send_keys("Initial-Pass-2024")
    ui.pick("user-org", A)
    drv.find_element(By.CSS_SELECTOR, "#user-form button[type='submit']").click()
    wait(drv, "#users tbody tr[data-username='clerk-a']")
    ui.pick("binding-user", "clerk-a")
    ui.pick("binding-role", "street_operator")
    ui.pick("binding-org", A)
    drv.find_element(By.CSS_SELECTOR, "#binding-form button[type='submit']").click()
    wait_until(drv, lambda d: "clerk-a" in d.find_element(By.ID, "bindings").text)
    ui.check("iam-created")
    with hub.store.read() as db:
        got = db.run(sa.text("SELECT org, must_change FROM iam_users WHERE username = 'clerk-a'")).one()
    assert got[0] == A and got[1]

    ui.click_menu("dialer")
    drv.find_element(By.ID, "task-name").send_keys("Flood notice")
    ui.pick("task-template", "(notice v")
    drv.find_element(By.CSS_SELECTOR, "#task-form button[type='submit']").click()
    wait(drv, "#contacts-form")
    listing = tmp_path / "contacts.csv"
    listing.write_text("phone,name\n13800138000,Li Lei\nnot-a-phone,Han Meimei\n13900139000,Wang Fang\n",
                       encoding="utf-8")
    drv.find_element(By.ID, "contacts-file").send_keys(str(listing))
    drv.find_element(By.CSS_SELECTOR, "#contacts-form button[type='submit']").click()
    result = wait(drv, "#contacts-result")
    assert result.get_attribute("data-imported") == "2"
    refused = drv.find_elements(By.CSS_SELECTOR, "#contacts-errors tbody tr")
    assert [(r.get_attribute("data-row"), r.get_attribute("data-field")) for r in refused] == [("3", "phone")]
    ui.check("dialer-task-created")
    with hub.store.read() as db:
        n = db.scalar(sa.text("SELECT count(*) FROM dialer_tasks WHERE name = 'Flood notice'"))
    assert n == 1
    ui.logout()

    # The new user signs in, must change the initial password first, and gets the menu of their role only.
    ui.login("clerk-a", "Initial-Pass-2024")
    wait(drv, "#change-form")
    drv.find_element(By.ID, "new-password").send_keys("Clerk-Street-Lamps-2025")
    drv.find_element(By.ID, "change-btn").click()
    ui.ready("home")
    menu = {e.get_attribute("id") for e in drv.find_elements(By.CSS_SELECTOR, "#menu [id^='menu-']")}
    assert {"menu-video", "menu-dialer", "menu-devices"} <= menu and not {"menu-audit", "menu-iam"} & menu, menu
    assert drv.find_element(By.ID, "home-orgs").text == A
    ui.check("clerk-home")
    ui.logout()


def test_webhook_deliveries_replayed_from_the_console(live: LiveHub, console_browser: Any, tmp_path: Path) -> None:
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

    drv = console_browser
    ui = Console(drv, live, tmp_path / "shots")
    drv.get(live.url + "/console/login?next=/console/webhooks")
    ui.login("hooks-admin")
    ui.ready("webhooks")
    assert "menu-webhooks" in [e.get_attribute("id") for e in drv.find_elements(By.CSS_SELECTOR, "#menu [id^='menu-']")]
    drv.find_element(By.CSS_SELECTOR, "#deliveries-filter button[data-status='dead']").click()
    row = wait(drv, f"#deliveries-box[data-status='dead'] #deliveries tbody tr[data-id='{did}'][data-status='dead']")
    assert "case.dispatched" in row.text and "video.case:1" in row.text
    ui.check("webhooks-dead")
    row.find_element(By.CSS_SELECTOR, "button.replay").click()
    ui.flash("queued again")
    # the dead filter no longer shows it; the outbox has it pending again under the same webhook-id
    wait_until(drv, lambda d: not d.find_elements(By.CSS_SELECTOR, f"#deliveries tbody tr[data-id='{did}']"))
    with hub.store.read() as db:
        again = db.first(sa.text("SELECT msg_id, status, attempts FROM webhooks_deliveries WHERE id = :i"), {"i": did})
        replays = db.scalar(sa.text("SELECT count(*) FROM iam_audit WHERE action = 'webhooks.replay'"))
    # tries start over (the hub's sender may already have made the first new one, refused again)
    assert again is not None and again["msg_id"] == mid and again["status"] in ("pending", "delivering")
    assert again["attempts"] <= 1 and replays == 1
    ui.logout()
