"""`citybrain hub demo`: the whole system on loopback — our mosquitto (passwords + ACL), the hub
(uvicorn + MQTT bridge), one camera gateway, one scan terminal, and the voice robot: a simulated callee
(`citybrain hub dialer callee`) and one dialer engine that calls the demo call task's contacts — until
Ctrl-C. The demo prints the call task's progress and each CDR as it is written."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from central.broker import HUB_ACL, Broker, BrokerConfig


def _seed_capabilities(hub: object, demo_dir: Path) -> list[str]:
    from central import capabilities

    lines: list[str] = []
    for cap, demo_mod in capabilities.modules("demo"):
        try:
            lines += demo_mod.seed(hub, demo_dir)
        except Exception as e:  # a capability's sample data must not stop the demo
            lines.append(f"[{cap}] demo seed failed: {type(e).__name__}: {e}")
    return lines


def _demo_cameras(demo_dir: Path) -> dict[str, object]:
    """A sample video file (synthetic fire scene, written once) and a live synthetic litter scene."""
    from edge.camera import synthetic

    video = demo_dir / "samples" / "fire.avi"
    if not video.exists():
        video.parent.mkdir(parents=True, exist_ok=True)
        synthetic.write_video(str(video), "fire", seconds=20, fps=10)
    ground = {"id": "ground", "polygon": [[0, 0.4], [1, 0.4], [1, 1], [0, 1]]}
    return {
        "cameras": [
            {"id": "north-gate", "url": str(video), "loop": True, "max_fps": 5, "zones": [ground]},
            {"id": "market-lane", "url": "synthetic:litter", "max_fps": 5, "zones": [ground]},
        ],
        "rules": {"litter": {"static_s": 20}, "lifecycle": {"cooldown_s": 60}},
    }


def _demo_scanner(demo_dir: Path) -> dict[str, object]:
    """The terminal scans a folder: drop city-code PNGs there (the codes demo seed puts samples in it)."""
    inbox = demo_dir / "scan-inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    return {"source": str(inbox)}


def _feed_scanner_when_synced(demo_dir: Path, store_url: str, timeout: float = 30.0) -> None:
    """Drop the sample code PNGs into the terminal's inbox once its heartbeat shows the synced lists, so
    the demo shows valid/revoked verdicts rather than unknown-key (which is what an unsynced terminal
    rightly says). Reads the heartbeat the hub process stores, through the devices store."""
    import json

    from central.devices import store as devices_store
    from central.store import Store

    samples = demo_dir / "samples" / "codes"
    if not samples.is_dir():
        return
    store = Store(store_url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with store.read() as db:
                rows = devices_store.list_devices(db, None)
            if any(r["kind"] == "scanner" and r.get("hb") and json.loads(r["hb"]).get("revocation_version")
                   for r in rows):
                break
            time.sleep(0.5)
    finally:
        store.close()
    inbox = demo_dir / "scan-inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    for png in sorted(samples.glob("*.png")):
        shutil.copy(png, inbox / png.name)


def _dialer_unavailable() -> str | None:
    """Why the dialer engine cannot run here, in words (None: it can)."""
    import importlib.util

    if importlib.util.find_spec("pjsua2") is None:
        return "pjsua2 is not installed here (the dialer role: pip install 'citybrain[dialer]')"
    return None


def _wait_ready(ready_file: Path, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> int | None:
    """The simulated callee's SIP port once it listens (it synthesises its speech first), or None when it
    exited or did not get there in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if ready_file.exists():
            return int(ready_file.read_text().strip())
        time.sleep(0.2)
    return None


class _CallWatch:
    """Follows the demo call task: a line per new CDR, a line when its progress changes, one when it ends."""

    def __init__(self, hub: Any, task_id: int) -> None:
        self.hub, self.task_id = hub, task_id
        self.cdrs = 0
        self.last: tuple[object, ...] | None = None
        self.done = False
        self.error: str | None = None

    def reason(self) -> dict[str, Any]:
        from central.dialer import service as svc

        return svc.state_reason(self.hub, self.task_id)

    def poll(self) -> list[str]:
        from central.dialer import service as svc

        if self.done:
            return []
        try:
            p = svc.progress(self.hub, self.task_id)
            new = svc.cdrs(self.hub, self.task_id)[self.cdrs:]
        except Exception as e:  # noqa: BLE001  e.g. a locked SQLite file: try again next round, say it once
            problem = f"Dialer:     cannot read call task {self.task_id} yet: {type(e).__name__}: {e}"
            lines = [problem] if problem != self.error else []
            self.error = problem
            return lines
        self.cdrs += len(new)
        lines = [self._cdr_line(c) for c in new]
        key = (p["status"], p["dialled"], p["answered"], p["finished_contacts"])
        self.done = p["status"] in ("completed", "cancelled")
        if key != self.last:
            self.last = key
            lines.append(f"Dialer:     call task {self.task_id} {p['status']}: {p['finished_contacts']}/{p['total']}"
                         f" contacts done (dialled {p['dialled']}, answered {p['answered']},"
                         f" completed {p['completed']}, failed {p['failed']})"
                         + (f"; CDRs: GET /api/v1/dialer/tasks/{self.task_id}/cdrs" if self.done else ""))
        return lines

    @staticmethod
    def _cdr_line(c: dict[str, Any]) -> str:
        answers = ", ".join(f"{q}={a.get('value')} (by {a.get('via')})" for q, a in (c["answers"] or {}).items())
        parts = [f"attempt {c['attempt']}", c["outcome"]]
        if c["sip_status"] and c["sip_status"] != 200:
            parts.append(f"SIP {c['sip_status']}")
        if c["duration_s"]:
            parts.append(f"{c['duration_s']:.1f} s")
        heard = "; ".join(f"{t.get('kind')} {t.get('value') or ''}".strip() for t in c["transcript"] or [])
        return (f"Call:       {c['phone_masked']} " + ", ".join(parts) + (f": {answers}" if answers else "")
                + (f" (heard: {heard})" if heard else "") + (f" — {c['reason']}" if c["reason"] else ""))


def _bootstrap_admin(hub: object, password: str) -> None:
    from central.iam.service import service_of

    svc = service_of(hub)  # type: ignore[arg-type]
    if svc.user("admin") is not None:
        return
    svc.ensure_org_chain("/city", actor="demo")
    uid = svc.create_user(None, "admin", password, "/city", must_change=True)
    svc.grant_root(uid, "city_admin", "/city", actor="demo")


def run_demo(demo_dir: Path, port: int, mqtt_port: int, fresh: bool, database_url: str | None = None) -> None:
    from central.app import build_hub
    from central.settings import load_settings

    if fresh and demo_dir.exists():
        shutil.rmtree(demo_dir)
    demo_dir.mkdir(parents=True, exist_ok=True)
    secrets_file = demo_dir / "secrets.yaml"
    sec = yaml.safe_load(secrets_file.read_text()) if secrets_file.exists() else {}
    sec.setdefault("hub_mqtt_password", secrets.token_urlsafe(16))
    # Meets the iam complexity rule (length, classes); the console asks for a new one at first login.
    sec.setdefault("admin_password", "Demo-" + secrets.token_urlsafe(9) + "-9a")
    secrets_file.write_text(yaml.safe_dump(sec))
    secrets_file.chmod(0o600)

    bcfg = BrokerConfig(dir=demo_dir / "broker", port=mqtt_port)
    bcfg.write()
    bcfg.add_user("hub", sec["hub_mqtt_password"], HUB_ACL.format(hub="hub"))
    broker = Broker(bcfg).start()

    settings_dict: dict[str, Any] = {
        "data_dir": str(demo_dir / "hub"),
        "port": port,
        "public_url": f"http://127.0.0.1:{port}",
        "mqtt": {
            "port": mqtt_port, "username": "hub", "password": sec["hub_mqtt_password"],
            "passwd_file": str(bcfg.passwd), "acl_file": str(bcfg.acl), "pid_file": str(bcfg.pid_file),
        },
    }
    if database_url:  # e.g. the URL `./run postgres` printed
        settings_dict["database_url"] = database_url
    hub_cfg = demo_dir / "hub.yaml"
    hub_cfg.write_text(yaml.safe_dump(settings_dict))
    hub_cfg.chmod(0o600)
    # Read back the way the hub process will (file < CITYBRAIN_* env < --port), so both see the same settings.
    settings = load_settings(hub_cfg, port=port)
    hub = build_hub(settings)
    _bootstrap_admin(hub, sec["admin_password"])
    from central.iam.service import service_of

    if service_of(hub).still_initial_password("admin", sec["admin_password"]):
        login = f"user 'admin', password '{sec['admin_password']}' (you will be asked to change it)"
    else:  # changed since: printing the first one would be a lie
        login = f"user 'admin' (password changed; forgot it? `citybrain hub reset-admin --config {hub_cfg}`)"
    lines = [
        f"Console:    http://127.0.0.1:{port}/  {login}",
        f"Hub:        http://127.0.0.1:{port}/  (API docs: http://127.0.0.1:{port}/docs)",
        f"Broker:     mqtt://127.0.0.1:{mqtt_port} (config {bcfg.conf}, ACL {bcfg.acl})",
        f"Watch MQTT: mosquitto_sub -h 127.0.0.1 -p {mqtt_port} -u hub -P '{sec['hub_mqtt_password']}'"
        " -t 'city/v1/#' -v",
    ]
    devices_dir = demo_dir / "devices"
    devices_dir.mkdir(exist_ok=True)
    configs: dict[str, Path] = {}
    for kind, name in (("camera", "demo-gate-camera"), ("scanner", "demo-scanner")):
        path = devices_dir / f"{kind}.yaml"
        if not path.exists():
            devices = hub.services["devices"]  # type: ignore[attr-defined]
            _row, cfg = devices.provision("demo-site", kind, name, device=name, org_path="/city")
            cfg["outbox"]["path"] = str(demo_dir / "edge" / f"{name}-outbox.db")
            cfg["heartbeat_s"] = 5
            if kind == "camera":
                cfg["camera"] = _demo_cameras(demo_dir)
            else:
                cfg["scanner"] = {**cfg.get("scanner", {}), **_demo_scanner(demo_dir)}
            path.write_text(yaml.safe_dump(cfg, sort_keys=False))
            path.chmod(0o600)
        configs[kind] = path
    lines += _seed_capabilities(hub, demo_dir)
    hub.close()
    dialer_dir = demo_dir / "dialer"
    call_task = json.loads((dialer_dir / "demo.json").read_text())["task_id"] if (
        dialer_dir / "demo.json").exists() else None
    broker.reload()

    exe = [sys.executable, "-m", "citybrain.cli"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    logs = demo_dir / "logs"
    logs.mkdir(exist_ok=True)
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    optional = {"callee", "dialer"}  # the voice robot's processes: if they end, the rest of the demo goes on
    watch: _CallWatch | None = None

    def spawn(name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = open(logs / f"{name}.log", "ab")
        proc = subprocess.Popen(exe + args, stdout=log, stderr=log, env=env, start_new_session=True)
        procs.append((name, proc))
        return proc

    # Whatever happens from here (Ctrl-C, a child exiting, an error of our own), the children and the
    # broker are stopped: a demo never leaves processes behind.
    try:
        spawn("hub", ["hub", "serve", "--config", str(hub_cfg), "--port", str(port)])  # demo --port: an option, highest
        dialer_off = _dialer_unavailable() if call_task is not None else "the dialer demo seed failed (above)"
        ready = dialer_dir / "callee.port"
        ready.unlink(missing_ok=True)
        callee = None if dialer_off else spawn("callee", [
            "hub", "dialer", "callee", str(dialer_dir / "callee.yaml"), "--ready-file", str(ready)])
        time.sleep(1.5)
        spawn("camera", ["edge", "camera", "--config", str(configs["camera"]), "--test-event"])
        spawn("scanner", ["edge", "scanner", "--config", str(configs["scanner"])])
        if callee is not None:
            sip_port = _wait_ready(ready, callee)
            if sip_port is None:
                dialer_off = (f"the simulated callee did not start (exit {callee.poll()}; see {logs / 'callee.log'})")
            else:
                spawn("dialer", ["hub", "dialer", "run", "--settings", str(hub_cfg), "--ring-timeout", "10",
                                 "--uri-template", f"sip:{{phone}}@127.0.0.1:{sip_port}"])
                lines.append(f"Callee:     simulated callee on sip:127.0.0.1:{sip_port} (script "
                             f"{dialer_dir / 'callee.yaml'}); one dialer engine calls it")
        _feed_scanner_when_synced(demo_dir, settings.store_url)
        if call_task is not None:
            watch = _CallWatch(build_hub(settings), call_task)
            if dialer_off:
                why = watch.reason()
                lines.append(f"Dialer:     engine not started: {dialer_off}; call task {call_task} waits "
                             f"(state_reason {why['code']}: {why['message']})")
                watch.done = True
        lines += [
            "Devices:    GET /api/v1/devices (camera + scanner online, heartbeats every 5 s, queue depth)",
            f"Logs:       {logs}/ (hub.log, camera.log, scanner.log, callee.log, dialer.log)",
            f"Configs:    {configs['camera']}  {configs['scanner']}",
        ]
        print("\n=== City Brain demo is running ===")
        for line in lines:
            print("  " + line)
        print("Press Ctrl-C to stop everything.\n", flush=True)

        stopping = False

        def _stop(signum: int, frame: object) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, _stop)
        signal.signal(signal.SIGTERM, _stop)
        ended: set[str] = set()
        while not stopping:
            for name, p in procs:
                if name in ended or p.poll() is None:
                    continue
                ended.add(name)
                print(f"{name} exited with {p.returncode}; see {logs / (name + '.log')}", flush=True)
                if name not in optional:
                    stopping = True
                elif watch is not None and not watch.done:
                    why = watch.reason()
                    print(f"Dialer:     call task {call_task}: state_reason {why['code']}: {why['message']}",
                          flush=True)
            for line in watch.poll() if watch is not None else []:
                print(line, flush=True)
            time.sleep(0.5)
        for line in watch.poll() if watch is not None else []:  # what happened since the last round
            print(line, flush=True)
    finally:
        for _name, p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for _name, p in reversed(procs):
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        if watch is not None:
            watch.hub.close()
        broker.stop()
        print("demo stopped cleanly", flush=True)
