"""Build the legacy fixture database hub_v13 with the OLD hub code.

!!! Runs against commit c14b63e's code (the hand-written SQLite store), NOT the current code. !!!
Run it from a checkout / worktree of c14b63e:

    cd <checkout of c14b63e> && .venv/bin/python make_hub_v13.py --data-dir /tmp/hub_v13 [--seed /tmp/legacydemo/hub]

--seed: a data dir whose hub.db, keys/ and audit/ are copied in first (the fixture was made from the
demo hub that `citybrain` demo built with the same commit; without it the script starts empty).
Then every capability gets a little data through the HTTP API (FastAPI TestClient, MQTT disabled), the
bridge's ingest path (Bridge.ingest on hand-made MQTT messages, no broker) and, for dialer CDRs, the
service calls the SIP engine makes (claim_due / finish_attempt). Afterwards:

    sqlite3 /tmp/hub_v13/hub.db .dump > hub_v13.sql ; cp -r /tmp/hub_v13/keys keys
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import shutil
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path.cwd()))  # the old checkout's root (central/, protocol/)

from fastapi.testclient import TestClient  # noqa: E402

from central.app import build_hub, create_app  # noqa: E402
from central.hub import Hub  # noqa: E402
from central.registry.ids import id_card_check, uscc_check  # noqa: E402
from central.settings import MqttSettings, Settings  # noqa: E402

PASSWORD = "Xihu-Initial-2025!"


def token_for(hub: Hub, username: str, role: str = "city_admin", org: str = "/city") -> str:
    """As tests/helpers.py: a session token for `username` holding `role` over `org`."""
    from central.iam.service import service_of

    svc = service_of(hub)
    svc.ensure_org_chain(org)
    user = svc.user(username)
    with hub.store.tx() as db:
        uid = user["id"] if user else svc._insert_user(db, username, org, "!no-password", must_change=False)
    have = hub.store.db.conn.execute(
        "SELECT 1 FROM iam_bindings WHERE user_id = ? AND role = ? AND org = ? AND revoked_at IS NULL",
        (uid, role, org)).fetchone()
    if not have:
        svc.grant_root(uid, role, org)
    return svc.new_session(uid)


def id_card(n: int, region: str = "330106", birth: str = "19900101") -> str:
    body = f"{region}{birth}{n % 1000:03d}"
    return body + id_card_check(body)


def uscc(n: int, region: str = "330106") -> str:
    body = f"91{region}{n:09d}"
    return body + uscc_check(body)


class Api:
    def __init__(self, c: TestClient, token: str | None = None, headers: dict[str, str] | None = None) -> None:
        self.c = c
        self.h = headers if headers is not None else {"Authorization": f"Bearer {token}"}

    def call(self, method: str, path: str, want: int | None = None, **kw: Any) -> Any:
        extra = kw.pop("headers", {})
        r = self.c.request(method, "/api/v1" + path, headers={**self.h, **extra}, **kw)
        if (want is not None and r.status_code != want) or (want is None and r.status_code >= 300):
            raise SystemExit(f"{method} {path} -> {r.status_code}: {r.text[:500]}")
        ct = r.headers.get("content-type", "")
        return r.json() if ct.startswith("application/json") else r.text

    def get(self, path: str, **kw: Any) -> Any:
        return self.call("GET", path, **kw)

    def post(self, path: str, json: Any = None, **kw: Any) -> Any:
        return self.call("POST", path, json=json, **kw)

    def put(self, path: str, json: Any = None, **kw: Any) -> Any:
        return self.call("PUT", path, json=json, **kw)

    def patch(self, path: str, json: Any = None, **kw: Any) -> Any:
        return self.call("PATCH", path, json=json, **kw)


def jpeg(color: tuple[int, int, int]) -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (64, 48), (40, 40, 40))
    ImageDraw.Draw(img).rectangle((20, 12, 44, 36), fill=color)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=60)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--seed", type=Path, default=None, help="data dir to start from (hub.db, keys/, audit/)")
    a = ap.parse_args()
    d: Path = a.data_dir
    if d.exists():
        raise SystemExit(f"{d} exists: give a fresh directory")
    d.mkdir(parents=True)
    if a.seed:
        shutil.copy2(a.seed / "hub.db", d / "hub.db")
        for sub in ("keys", "audit"):
            if (a.seed / sub).is_dir():
                shutil.copytree(a.seed / sub, d / sub)
    settings = Settings(data_dir=d, mqtt=MqttSettings(enabled=False), public_url="http://127.0.0.1:18480")
    hub = build_hub(settings)
    with TestClient(create_app(hub=hub, start_bridge=False)) as c:
        populate(hub, c)
    hub.close()
    print("built", d / "hub.db")


def populate(hub: Hub, c: TestClient) -> None:
    admin = Api(c, token_for(hub, "cityadmin", "city_admin", "/city"))

    # ---- iam: orgs, a second (real) user with PII, a binding, a custom role, an API key, logins --------
    admin.post("/iam/orgs", {"parent": "/city", "slug": "district-a", "name": "西湖区"}, want=201)
    admin.post("/iam/orgs", {"parent": "/city", "slug": "district-b", "name": "上城区"}, want=201)
    admin.post("/iam/orgs", {"parent": "/city/district-a", "slug": "fire", "name": "西湖区消防大队"}, want=201)
    admin.post("/iam/orgs", {"parent": "/city", "slug": "social", "name": "市民政局"}, want=201)
    admin.post("/iam/users", {"username": "wang.fang", "password": PASSWORD, "org": "/city/district-a",
                              "phone": "13900001111", "id_card": id_card(7)}, want=201)
    admin.post("/iam/bindings", {"username": "wang.fang", "role": "district_admin", "org": "/city/district-a"},
               want=201)
    c.post("/api/v1/iam/login", json={"username": "wang.fang", "password": "wrong-password-1"})  # a failure
    c.post("/api/v1/iam/login", json={"username": "no.such.user", "password": "wrong-password-2"})  # ghost
    r = c.post("/api/v1/iam/login", json={"username": "wang.fang", "password": PASSWORD})
    assert r.status_code == 200, r.text
    admin.post("/iam/roles", {"name": "channel_terminal", "description": "门禁终端",
                              "patterns": ["channel.grant"]}, want=201)
    gate_key = admin.post("/iam/apikeys", {"name": "gate-1", "role": "channel_terminal", "org": "/city/social"},
                          want=201)["key"]

    # ---- registry: the four entity types (Chinese names, addresses), links, an alias, an application --
    ra = Api(c, token_for(hub, "admin-a", "district_admin", "/city/district-a"))
    rb = Api(c, token_for(hub, "admin-b", "district_admin", "/city/district-b"))
    fire = Api(c, token_for(hub, "fire-clerk", "district_admin", "/city/district-a/fire"))
    bld = ra.post("/registry/entities", {"type": "place", "region": "330106", "name": "文三大厦 Wensan Tower",
                                         "address": "浙江省杭州市西湖区文三路100号",
                                         "lat": 30.2799, "lon": 120.1400, "valid_from": "2020-01-01"}, want=201)
    ent = ra.post("/registry/entities", {"type": "enterprise", "region": "330106", "name": "杭州西湖物业管理有限公司",
                                         "address": "杭州市西湖区文三路100号3楼", "external_key": uscc(1)},
                  want=201)
    per = ra.post("/registry/entities", {"type": "person", "region": "330106", "name": "张三",
                                         "address": "杭州市西湖区文三路100号1单元502室",
                                         "external_key": id_card(1), "phone": "13812345678"}, want=201)
    per2 = ra.post("/registry/entities", {"type": "person", "region": "330106", "name": "李四",
                                          "external_key": id_card(2), "phone": "13812340002"}, want=201)
    per3 = ra.post("/registry/entities", {"type": "person", "region": "330106", "name": "周九",
                                          "external_key": id_card(3)}, want=201)
    hyd = ra.post("/registry/entities", {
        "type": "object", "region": "330106", "name": "消防栓 F1-01",
        "address": "文三大厦一楼东侧", "external_key": "fire-system:HYD-F1-01",
        "links": [{"rel": "contained_in", "target": bld["id"]}, {"rel": "managed_by", "target": ent["id"]}],
        "grid": "wtmkq8v1", "valid_from": "2024-01-01", "valid_to": "2030-01-01",
        "attrs": {"kind": "hydrant", "pressure_mpa": 0.35}}, want=201)
    ra.post("/registry/links", {"src": bld["id"], "rel": "owned_by", "dst": ent["id"]}, want=201)
    ra.post("/registry/links", {"src": hyd["id"], "rel": "operated_by", "dst": per2["id"]}, want=201)
    ra.patch(f"/registry/entities/{bld['id']}", {"name": "文三大厦 (Wensan Tower)"})
    fire.post("/registry/aliases", {"local_id": "HYD-0001", "base_id": hyd["id"]}, want=201)
    pushed = ra.post("/registry/push", {"source": "fire-system", "records": [
        {"type": "object", "region": "330106", "name": "灭火器 E2-07", "external_key": "fire-system:EXT-E2-07",
         "links": [{"rel": "contained_in", "target": bld["id"]}, {"rel": "owned_by", "target": ent["id"]}]}]})
    assert pushed["created"] == 1, pushed
    appl = rb.post("/registry/applications", {"owner_org": "/city/district-a", "purpose": "上城区消防检查规划",
                                              "fields": ["name", "grid"], "valid_from": "2020-01-01T00:00:00Z",
                                              "valid_to": "2099-01-01T00:00:00Z"}, want=201)
    ra.post(f"/registry/applications/{appl['id']}/approve", {"reason": "同意 2025 年度计划"})
    rb.get(f"/registry/entities/{hyd['id']}")  # a granted read (audited)
    ra.get(f"/registry/entities/{per['id']}")  # own read incl. PII (audited)

    # ---- codes: department, duty, approved application, keys, codes, revocation, URL filing ----------
    admin.post("/codes/departments", {"id": "SOCIAL", "name": "民政局 Social affairs", "org": "/city/social",
                                      "webhook_url": "http://127.0.0.1:9/codes-hook"}, want=201)
    admin.post("/codes/duties", headers={"Content-Type": "text/csv"},
               content="dept_id,scene_type,description\nSOCIAL,elder.care,养老服务核验\n".encode())
    clerk = Api(c, token_for(hub, "social-clerk", "department_issuer", "/city/social"))
    app = clerk.post("/codes/applications", {
        "dept_id": "SOCIAL", "scene_name": "养老服务码", "scene_type": "elder.care", "code_type": "static",
        "entity_type": "person", "purpose": "老人进入养老服务中心", "share_commitment": True, "validity": "Y"},
        want=201)
    admin.post(f"/codes/applications/{app['id']}/decision", {"approve": True, "code_system": "HC"})
    admin.post("/codes/departments/SOCIAL/keys/rotate")
    codes = [clerk.post("/codes/issue", {"application_id": app["id"], "identity_id": eid, "image": "none",
                                         "dept_data": f"ward-{i}"}, want=201)
             for i, eid in enumerate([per["id"], per2["id"], per["id"]])]
    clerk.post("/codes/revoke", {"serial": codes[2]["serial"], "reason": "卡片遗失 lost"})
    clerk.post("/codes/issue", {"application_id": app["id"], "identity_id": per3["id"], "image": "none"}, want=201)
    admin.post("/codes/revoke", {"identity_id": per3["id"], "reason": "人员已迁出 moved away"})
    appkey = clerk.post(f"/codes/applications/{app['id']}/appkeys", {"name": "养老中心闸机系统"}, want=201)
    Api(c, headers={"X-App-Key": appkey["key"]}).post("/codes/verify", {"text": codes[0]["text"]})
    clerk.post("/codes/verify", {"text": codes[2]["text"]})
    from central.codes.service import service_of as codes_of

    codes_of(hub).flush_stats()  # online-verify counters are written every few seconds
    url = clerk.post("/codes/urls", {"dept_id": "SOCIAL", "url": "https://social.hz.example.gov/c"}, want=201)
    admin.post(f"/codes/urls/{url['id']}/decision", {"approve": True, "reason": "已备案"})
    admin.put("/codes/rules", {"dept_data_max": admin.get("/codes/rules")["dept_data_max"]})

    # ---- devices: a camera gateway and a scanner on a new site, a command ------------------------------
    cam = admin.post("/devices", {"site": "wensan", "kind": "camera", "name": "文三路口摄像机", "device": "cam-01",
                                  "org_path": "/city/district-a"}, want=201)
    admin.post("/devices", {"site": "wensan", "kind": "scanner", "name": "养老中心扫码终端", "device": "scan-01",
                            "org_path": "/city/district-a"}, want=201)
    admin.post("/devices/wensan/cam-01/commands", {"action": "ping"}, want=202)
    admin.post("/devices/wensan/cam-01/commands", {"action": "config", "args": {"fps": 5}}, want=202)
    assert cam["device"]["id"] == "wensan/cam-01"

    # ---- video admin: site org, cameras with positions and neighbours, a disposal route --------------
    admin.put("/video/sites/wensan", {"org_path": "/city/district-a"})
    admin.put("/video/cameras/wensan/cam-01/north", {"lat": 30.2801, "lon": 120.1402, "neighbours": ["cam-01/south"]})
    admin.put("/video/cameras/wensan/cam-01/south", {"lat": 30.2795, "lon": 120.1398, "neighbours": ["cam-01/north"]})
    admin.post("/video/routes", {"org_prefix": "/city/district-a", "kind": "fire", "department": "FIRE",
                                 "mqtt": True, "ack_sla_min": 10, "resolve_sla_min": 120}, want=201)

    # ---- bridge: what the devices send, through the bridge's own ingest (no broker) ----------------
    ingest_device_messages(hub, codes)

    # ---- video: dispose the cases the fire events opened ---------------------------------------------
    cases = admin.get("/video/cases", params={"site": "wensan"})["items"]
    fire_case = next(x for x in cases if x["kind"] == "fire")
    admin.post(f"/video/cases/{fire_case['id']}/review", {"verdict": "confirmed", "reason": "现场确认冒烟"})
    admin.post(f"/video/cases/{fire_case['id']}/dispatch", {"department": "FIRE"})
    admin.post(f"/video/cases/{fire_case['id']}/acknowledge")
    admin.post(f"/video/cases/{fire_case['id']}/resolve", {"note": "已处置，误燃垃圾桶"})
    other = next((x for x in cases if x["kind"] != "fire"), None)
    if other:
        admin.post(f"/video/cases/{other['id']}/review", {"verdict": "false_positive", "reason": "阴影误报"})

    # ---- dialer: a template copy, a task, contacts, do-not-call, CDRs as the engine records them -----
    da = ra
    da.post("/dialer/templates/satisfaction/copy", {"new_key": "sat-xihu", "org": "/city/district-a"}, want=201)
    task = da.post("/dialer/tasks", {"name": "物业满意度回访 2025Q1", "org": "/city/district-a",
                                     "template_key": "sat-xihu",
                                     "schedule": {"windows": [{"start": "00:00", "end": "23:59"}],
                                                  "retry_delay_s": {"busy": 60}}}, want=201)
    csv_body = ("手机号,姓名,备注\n13800138001,王五,一单元\n13800138002,赵六,二单元\n"
                "13800138003,钱七,三单元\n13800138004,孙八,四单元\n")
    da.post(f"/dialer/tasks/{task['id']}/contacts",
            files={"file": ("名单.csv", csv_body.encode(), "text/csv")})
    da.post("/dialer/dnc", {"phone": "13800138004", "org": "/city/district-a", "reason": "本人要求"}, want=201)
    da.post(f"/dialer/tasks/{task['id']}/start")
    make_cdrs(hub, task["id"])

    # ---- channel: the codes scene marked as a channel scene, one grant via the gate's API key -------
    from central.channel.service import wg_keypair

    _priv, gw_pub = wg_keypair()
    admin.post("/channel/scenes", {"application_id": app["id"], "service_name": "养老档案服务",
                                   "service_addr": "10.60.1.10", "service_port": 443, "ttl_s": 600,
                                   "gateway_public_key": gw_pub, "endpoint": "gw.social.city.example:51820",
                                   "terminals": ["apikey:gate-1"]}, want=201)
    Api(c, headers={"X-API-Key": gate_key}).post("/channel/grants", {"text": codes[1]["text"]}, want=201)

    # ---- audit: verify before leaving ----------------------------------------------------------------
    v = admin.get("/iam/audit/verify")
    print("audit verify:", json.dumps(v, ensure_ascii=False)[:400])
    assert v["ok"], v


def ingest_device_messages(hub: Hub, codes: list[dict[str, Any]]) -> None:
    from central.bridge.service import Bridge, Incoming
    from central.video.service import service_of as video_of
    from protocol import messages, topics

    b = Bridge(hub)
    b.publish = hub.publish  # type: ignore[method-assign]  # receipts go to the hub's (logging) publisher
    t0 = datetime.now(UTC) - timedelta(minutes=10)
    snap = base64.b64encode(jpeg((230, 120, 20))).decode()
    fire_start = messages.Event(kind="fire", camera="north", zone="lobby", phase="start", incident_id="inc-wensan-1",
                                ts=t0, score=0.91, count=1, snapshot_jpeg_b64=snap, lat=30.2801, lon=120.1402,
                                boxes=[messages.Box(x=0.3, y=0.25, w=0.4, h=0.5, label="fire", score=0.91)])
    fire_upd = messages.Event(kind="fire", camera="north", zone="lobby", phase="update", incident_id="inc-wensan-1",
                              ts=t0 + timedelta(seconds=30), score=0.87, count=1)  # no snapshot
    litter = messages.Event(kind="litter", camera="south", phase="instant", ts=t0 + timedelta(seconds=45),
                            score=0.6, count=2, attrs={"note": "垃圾堆放"})
    serial = [x["serial"] for x in codes]
    scan = messages.ScanBatch(records=[
        messages.ScanRecord(serial=serial[0], code_system="HC", dept="SOCIAL", verdict="valid", reason="ok",
                            ts=t0 + timedelta(seconds=60), location="养老中心东门"),
        messages.ScanRecord(serial=serial[2], code_system="HC", dept="SOCIAL", verdict="revoked",
                            reason=f"serial: code {serial[2]} revoked", ts=t0 + timedelta(seconds=61)),
        messages.ScanRecord(serial=None, verdict="malformed", reason="not a city code",
                            ts=t0 + timedelta(seconds=62))])
    hb = messages.Heartbeat(uptime_s=600.0, queue_depth=0, cpu_percent=12.5, model_version="yolo-fire-1")
    msgs = [
        (topics.status("wensan", "cam-01"), messages.Status(state="online", kind="camera", version="1.3.0")),
        (topics.status("wensan", "scan-01"), messages.Status(state="online", kind="scanner", version="1.3.0")),
        (topics.heartbeat("wensan", "cam-01"), hb),
        (topics.event("wensan", "cam-01", "fire"), fire_start),
        (topics.event("wensan", "cam-01", "fire"), fire_upd),
        (topics.event("wensan", "cam-01", "litter"), litter),
        (topics.scan("wensan", "scan-01"), scan),
    ]
    batch = [Incoming(topic=t, payload=m.model_dump_json().encode(), mid=i + 1, qos=1) for i, (t, m) in enumerate(msgs)]
    # Rejects: a device nobody provisioned, and a payload that is not JSON.
    batch.append(Incoming(topic=topics.event("ghost-site", "cam-9", "fire"),
                          payload=fire_upd.model_copy(update={"event_id": "ghostevent01"}).model_dump_json().encode(),
                          mid=90, qos=1))
    batch.append(Incoming(topic=topics.event("wensan", "cam-01", "fire"), payload=b"{not json", mid=91, qos=1))
    # An ack of the ping command the hub sent.
    cmd = hub.store.db.conn.execute("SELECT cmd_id FROM device_commands WHERE device_id = 'wensan/cam-01'"
                                    " ORDER BY rowid LIMIT 1").fetchone()
    if cmd:
        batch.append(Incoming(topic=topics.ack("wensan", "cam-01"),
                              payload=messages.Ack(cmd_id=cmd[0], ok=True, detail="pong").model_dump_json().encode(),
                              mid=92, qos=1))
    b.ingest(batch)
    video_of(hub).process_pending()


def make_cdrs(hub: Hub, task_id: int) -> None:
    """What the SIP engine records per call (central/dialer/engine.py), without SIP."""
    from central.dialer import service as svc

    task = next(t for t in svc.running_tasks(hub) if t["id"] == task_id)
    now = datetime.now(UTC)
    got = svc.claim_due(hub, task, now, 2)
    for i, contact in enumerate(got):
        start = now - timedelta(seconds=90 - i)
        if i == 0:
            cdr = {"engine": "engine-1", "started_at": svc.iso(start), "answered_at": svc.iso(start + timedelta(seconds=6)),
                   "ended_at": svc.iso(start + timedelta(seconds=70)), "sip_status": 200, "outcome": "completed",
                   # the shapes central/dialer/dialog.py records
                   "answers": {"score": {"intent": "score", "value": 5, "text": "", "dtmf": "5", "via": "dtmf"},
                               "comment": {"intent": "comment", "value": "物业服务很好", "text": "物业服务很好",
                                           "dtmf": "", "via": "asr"}},
                   "asr_text": "物业服务很好",
                   "transcript": [{"node": "score", "kind": "dtmf", "value": "5"},
                                  {"node": "comment", "kind": "asr", "value": "物业服务很好"}],
                   "duration_s": 64.0}
        else:
            cdr = {"engine": "engine-1", "started_at": svc.iso(start), "ended_at": svc.iso(start + timedelta(seconds=20)),
                   "sip_status": 486, "outcome": "busy"}
        svc.finish_attempt(hub, contact["id"], cdr, now)


if __name__ == "__main__":
    main()
