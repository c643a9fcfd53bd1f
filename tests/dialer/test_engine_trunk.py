"""Trunk registration (issue 20, point 6), over real SIP on loopback: a registrar (SIPp) that answers 403
to REGISTER. The engine registers under the configured domain (not sip:robot@127.0.0.1), logs the
refusal with its status, reports it in /api/v1/dialer/engines, and dials nobody on that trunk."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from central.dialer import service as svc
from central.dialer.templates import Template
from central.hub import Hub
from tests.dialer.sipp import Peer, engine, settings_file, wait_for
from tests.helpers import auth, token_for

ORG = "/city/district-a"


@pytest.mark.slow
def test_a_refused_registration_is_logged_shown_and_dials_nobody(hub: Hub, client: TestClient,
                                                                  tmp_path: Path) -> None:
    tpl = Template.model_validate({"key": "trunk", "name": "trunk", "language": "en", "start": "bye", "nodes": [
        {"id": "bye", "kind": "end", "prompt": "Hello and goodbye.", "outcome": "completed"}]})
    svc.save_template(hub, tpl, ORG, "alice")
    sched = svc.Schedule(windows=[{"start": "09:00", "end": "12:00"}])
    tid = svc.create_task(hub, svc.TaskIn(name="t", org=ORG, template_key="trunk", schedule=sched), "alice")
    svc.import_contacts(hub, tid, "l.csv", b"phone\n13800000001\n", "alice")
    svc.change_state(hub, tid, "start", "alice")
    registrar = Peer(tmp_path / "reg", "registrar_403.xml")
    log = tmp_path / "engine.log"
    trunk = f"sip:127.0.0.1:{registrar.port}"
    try:  # calls would go to the registrar's port too: any INVITE shows in its trace
        proc = engine(settings_file(hub, tmp_path / "s.yaml"), registrar.port, "--registrar", trunk,
                      "--domain", "city.example", "--realm", "city.example", "--username", "robot",
                      "--password", "secret", "--heartbeat", "0.5", "--clock-start", "2025-03-10T09:00:05+08:00",
                      "--max-runtime", "60", "--engine-id", "trunk-engine", log=log)
        try:
            wait_for(lambda: any(e["reg_state"] == "failed" for e in svc.engines(hub)), 40,
                     "the engine to report the refused registration")
            r = client.get("/api/v1/dialer/engines", headers=auth(token_for(hub, "ann", role="district_admin",
                                                                            org=ORG)))
            assert r.status_code == 200, r.text
            (e,) = r.json()["engines"]
            assert (e["id"], e["live"], e["trunk"], e["reg_state"], e["reg_status"]) == (
                "trunk-engine", True, trunk, "failed", 403)
            assert e["reg_error"].startswith("403") and e["capacity"] == 4
            assert r.json()["capacity"] == 4
            assert client.get("/api/v1/dialer/engines").status_code == 401
        finally:
            proc.terminate()  # only the engine this test started
            proc.wait(timeout=30)
    finally:
        registrar.stop()
    (reg,) = registrar.requests("REGISTER")[:1]
    assert re.search(r"^To:.*sip:robot@city\.example", reg, re.M)  # the AOR carries the configured domain
    assert registrar.requests("INVITE") == []  # refused trunk: nobody dialled
    assert svc.progress(hub, tid)["pending"] == 1 and svc.cdrs(hub, tid) == []
    assert "403" in log.read_text() and "refused registration" in log.read_text()
