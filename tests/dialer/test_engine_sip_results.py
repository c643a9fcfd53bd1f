"""SIP results and trunk paths (issue 20, point 7), over real SIP on loopback: the engine process (CLI)
against SIPp peers. A callee that is busy (486), unavailable (503), rings out (180 then 480) or never
answers (180 until the robot's ring timeout CANCELs it, 487) gets the outcome the engine maps it to,
its SIP status, and retries by the task's retry_delay_s up to max_attempts, counted at the peer. A
registrar's 401 digest challenge is answered with the configured credentials (checked by SIPp's
verifyauth): right ones register and dial, wrong ones are logged, shown and dial nobody. An outbound
proxy's 407 challenge on INVITE is answered (the peer accepts only the digest the test computed from the
right credentials) and the call completes through it. Over TCP, the engine registers (401 digest) and a
call completes."""

from __future__ import annotations

import hashlib
import re
import secrets
import subprocess
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from central.dialer import service as svc
from central.dialer.templates import Template
from central.hub import Hub
from tests.dialer.sipp import Peer, engine, free_port, settings_file, wait_for
from tests.helpers import auth, token_for

ORG = "/city/district-a"
CLOCK = ("--clock-start", "2025-03-10T09:00:05+08:00")  # inside the task's window


def _task(hub: Hub, key: str, phones: list[str], start: bool = True, **schedule: object) -> int:
    tpl = Template.model_validate({"key": key, "name": key, "language": "en", "start": "bye", "nodes": [
        {"id": "bye", "kind": "end", "prompt": "Hello, this is the city. Goodbye.", "outcome": "completed"}]})
    svc.save_template(hub, tpl, ORG, "alice")
    sched = svc.Schedule(windows=[{"start": "09:00", "end": "12:00"}], calls_per_second=5, **schedule)
    tid = svc.create_task(hub, svc.TaskIn(name=key, org=ORG, template_key=key, schedule=sched), "alice")
    csv = "phone,name\n" + "".join(f"{p},P{i}\n" for i, p in enumerate(phones))
    assert svc.import_contacts(hub, tid, "l.csv", csv.encode(), "alice")["errors"] == []
    if start:
        svc.change_state(hub, tid, "start", "alice")
    return tid


def _run(proc: subprocess.Popen[str], log: Path, timeout: float = 150) -> None:
    """Wait for an --exit-when-idle engine; it must exit cleanly (its log on failure)."""
    try:
        assert proc.wait(timeout=timeout) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()  # only the engine this test started
            proc.wait(timeout=10)


def _header(msg: str, name: str) -> str:
    m = re.search(rf"^{name}:\s*(.*)$", msg, re.M | re.I)
    return m.group(1).strip() if m else ""


def _sent_by_port(msg: str) -> int:
    """The port in the top Via's sent-by: which engine (each on its own SIP port) sent a request."""
    m = re.search(r"^Via:\s*SIP/2\.0/\w+\s+[^:;\s]+:(\d+)", msg, re.M | re.I)
    return int(m.group(1)) if m else 0


def _final_sent(peer: Peer, call_id: str) -> list[str]:
    """Status lines of the final responses to REGISTER the peer sent in one Call-ID, in order."""
    return [m.splitlines()[0] for _t, d, m in peer.messages()
            if d == "sent" and m.startswith("SIP/2.0 ") and not m.startswith("SIP/2.0 1")
            and _header(m, "Call-ID") == call_id and " REGISTER" in _header(m, "CSeq")]


@pytest.mark.slow
def test_busy_unavailable_ring_out_and_no_answer_are_mapped_and_retried(hub: Hub, tmp_path: Path) -> None:
    busy, unavail, ringout, silent = "14860000001", "15030000002", "14800000003", "13800000004"
    # busy and no_answer are retried (after 2 s and 1 s), "failed" (the 503) is not named: final at once
    tid = _task(hub, "results", [busy, unavail, ringout, silent], max_concurrent=4, max_attempts=2,
                retry_delay_s={"busy": 2, "no_answer": 1})
    peer = Peer(tmp_path / "peer", "results.xml")
    log = tmp_path / "engine.log"
    try:  # ring timeout 3 s (the last --ring-timeout wins): the silent callee rings that long, twice
        _run(engine(settings_file(hub, tmp_path / "s.yaml"), peer.port, *CLOCK, "--ring-timeout", "3",
                    "--exit-when-idle", "--max-runtime", "120", log=log), log)
    finally:
        peer.stop()

    cdrs = svc.cdrs(hub, tid)
    print(log.read_text()[-3000:], [(c["phone_masked"], c["attempt"], c["outcome"], c["sip_status"],
                                     c["reason"]) for c in cdrs])  # shown on failure
    by: dict[str, list[dict]] = {}
    for c in cdrs:
        by.setdefault(c["phone_masked"], []).append(c)
    got = {k: [(c["attempt"], c["outcome"], c["sip_status"]) for c in v] for k, v in by.items()}
    assert got == {
        "148****0001": [(1, "busy", 486), (2, "busy", 486)],
        "150****0002": [(1, "failed", 503)],
        "148****0003": [(1, "no_answer", 480), (2, "no_answer", 480)],
        "138****0004": [(1, "no_answer", 487), (2, "no_answer", 487)],  # 487: the answer to the robot's CANCEL
    }
    assert all(c["answered_at"] is None and c["duration_s"] == 0 for c in cdrs)
    assert by["148****0001"][0]["reason"] == "486 Busy Here"
    assert by["150****0002"][0]["reason"] == "503 Service Unavailable"
    assert by["148****0003"][0]["reason"] == "480 Temporarily Unavailable"
    # the robot's ring timeout ended it, not the callee: the reason says so (the 487 answered its CANCEL)
    assert by["138****0004"][0]["reason"] == "no answer within 3 s (487 Request Terminated)"
    # each retry waited at least its outcome's delay after the attempt before it ended
    for phone, delay in (("148****0001", 2), ("148****0003", 1), ("138****0004", 1)):
        first, second = by[phone]
        assert datetime.fromisoformat(second["started_at"]) >= \
            datetime.fromisoformat(first["ended_at"]) + timedelta(seconds=delay), (phone, first, second)

    # counted at the peer: one INVITE dialog per attempt, none for a final contact
    legs = sorted(lg.number for lg in peer.legs())
    assert legs == sorted([busy, busy, unavail, ringout, ringout, silent, silent])
    cancels = peer.requests("CANCEL")
    assert {re.match(r"CANCEL sip:(\d+)@", m).group(1) for m in cancels} == {silent}  # type: ignore[union-attr]

    rows = svc.export_csv(hub, tid).splitlines()
    assert rows[0] == "row,phone,name,status,outcome,attempts,reason"
    assert rows[1:] == ["2,148****0001,P0,failed,busy,2,486 Busy Here",
                        "3,150****0002,P1,failed,failed,1,503 Service Unavailable",
                        "4,148****0003,P2,failed,no_answer,2,480 Temporarily Unavailable",
                        "5,138****0004,P3,failed,no_answer,2,no answer within 3 s (487 Request Terminated)"]
    assert svc.task_status(hub, tid) == "completed"


@pytest.mark.slow
def test_registrar_401_right_credentials_register_and_dial_wrong_ones_dial_nobody(
        hub: Hub, client: TestClient, tmp_path: Path) -> None:
    tid = _task(hub, "digest", ["13800000001", "13800000002"], start=False, max_concurrent=2, max_attempts=1)
    registrar = Peer(tmp_path / "reg", "registrar_401.xml", realm="city.example", user="robot", password="s3cret")
    callee = Peer(tmp_path / "callee", "uas.xml", hold_ms=30000)
    settings = settings_file(hub, tmp_path / "s.yaml")
    trunk = f"sip:127.0.0.1:{registrar.port}"
    ports = {"good": free_port(), "bad": free_port()}
    logs = {k: tmp_path / f"{k}.log" for k in ports}
    procs = {k: engine(settings, callee.port, "--registrar", trunk, "--domain", "city.example", "--realm",
                       "city.example", "--username", "robot", "--password", pw, "--sip-port", str(ports[k]),
                       "--engine-id", f"reg-{k}", "--heartbeat", "0.5", *CLOCK, "--max-runtime", "120",
                       log=logs[k])
             for k, pw in (("good", "s3cret"), ("bad", "wrong"))}
    try:
        def reported() -> dict[str, dict] | None:
            es = {e["id"]: e for e in svc.engines(hub)}
            ok = es.get("reg-good", {}).get("reg_state") == "registered" and \
                es.get("reg-bad", {}).get("reg_state") == "failed"
            return es if ok else None
        wait_for(reported, 60, "one engine registered and the other refused")
        r = client.get("/api/v1/dialer/engines", headers=auth(token_for(hub, "ann", role="district_admin",
                                                                        org=ORG)))
        assert r.status_code == 200, r.text
        es = {e["id"]: e for e in r.json()["engines"]}
        assert (es["reg-bad"]["live"], es["reg-bad"]["trunk"], es["reg-bad"]["reg_status"]) == (True, trunk, 401)
        assert es["reg-bad"]["reg_error"].startswith("401")
        assert (es["reg-good"]["reg_state"], es["reg-good"]["reg_status"], es["reg-good"]["reg_error"]) == (
            "registered", 200, None)
        svc.change_state(hub, tid, "start", "alice")  # only now is there anyone to dial
        wait_for(lambda: svc.task_status(hub, tid) == "completed", 90, "the task to complete")
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()  # only the engines this test started; SIGTERM is a clean stop
        for p in procs.values():
            p.wait(timeout=30)
        registrar.stop()
        callee.stop()

    cdrs = svc.cdrs(hub, tid)
    assert [(c["engine"], c["outcome"]) for c in cdrs] == [("reg-good", "completed")] * 2
    # every INVITE came from the registered engine: the refused one dialled nobody
    legs = callee.legs()
    assert sorted(lg.number for lg in legs) == ["13800000001", "13800000002"]
    assert {_sent_by_port(lg.invite) for lg in legs} == {ports["good"]}
    assert registrar.requests("INVITE") == []
    # at the registrar: each engine's REGISTER was challenged, then re-sent with its digest credentials
    for k, final in (("good", ["SIP/2.0 401 Unauthorized", "SIP/2.0 200 OK"]),
                     ("bad", ["SIP/2.0 401 Unauthorized", "SIP/2.0 401 Unauthorized"])):
        regs = [m for m in registrar.requests("REGISTER") if _sent_by_port(m) == ports[k]]
        assert len(regs) >= 2, (k, regs)
        first, second = regs[0], regs[1]
        assert not _header(first, "Authorization")
        creds = _header(second, "Authorization")
        assert creds.startswith("Digest ") and 'username="robot"' in creds and 'realm="city.example"' in creds
        assert re.search(r"^To:.*sip:robot@city\.example", second, re.M)
        assert _final_sent(registrar, _header(first, "Call-ID"))[:2] == final, k  # verifyauth's verdict
    bad_log = logs["bad"].read_text()
    assert "refused registration" in bad_log and "401" in bad_log
    assert "refused registration" not in logs["good"].read_text()


def _digest(user: str, realm: str, password: str, nonce: str, method: str, uri: str) -> str:
    """RFC 2617 digest response without qop (what the peer's challenge asks for)."""
    def h(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()  # SIP digest is MD5

    return h(f"{h(f'{user}:{realm}:{password}')}:{nonce}:{h(f'{method}:{uri}')}")


@pytest.mark.slow
def test_outbound_proxy_407_is_answered_and_the_call_completes_through_it(hub: Hub, tmp_path: Path) -> None:
    tid = _task(hub, "proxy", ["13800000001"], max_concurrent=1, max_attempts=1)
    # the Request-URI's host does not exist: the call can only reach the peer through the proxy
    ruri, realm, nonce = "sip:13800000001@trunk.invalid", "sbc.city.example", secrets.token_hex(8)
    proxy = Peer(tmp_path / "proxy", "proxy_407.xml", realm=realm, nonce=nonce,
                 response=_digest("robot", realm, "sbc-pw", nonce, "INVITE", ruri))
    log = tmp_path / "engine.log"
    try:  # realm left at "*": the credentials answer whichever realm challenges
        _run(engine(settings_file(hub, tmp_path / "s.yaml"), proxy.port, "--proxy",
                    f"sip:127.0.0.1:{proxy.port};lr", "--username", "robot", "--password", "sbc-pw", *CLOCK,
                    "--exit-when-idle", "--max-runtime", "90", log=log, uri="sip:{phone}@trunk.invalid"), log)
    finally:
        proxy.stop()
    (cdr,) = svc.cdrs(hub, tid)
    assert (cdr["outcome"], cdr["sip_status"], cdr["end_node"]) == ("completed", 200, "bye"), log.read_text()[-3000:]
    first, second = proxy.requests("INVITE")[:2]
    assert _header(first, "Call-ID") == _header(second, "Call-ID")  # the same call, re-sent with credentials
    for inv in (first, second):
        assert inv.startswith(f"INVITE {ruri} SIP/2.0")
        assert f"sip:127.0.0.1:{proxy.port};lr" in _header(inv, "Route")
    assert not _header(first, "Proxy-Authorization")
    creds = _header(second, "Proxy-Authorization")
    assert creds.startswith("Digest ") and 'username="robot"' in creds and f'realm="{realm}"' in creds
    sent = [m.splitlines()[0] for _t, d, m in proxy.messages() if d == "sent" and m.startswith("SIP/2.0")]
    assert sent[:2] == ["SIP/2.0 407 Proxy Authentication Required", "SIP/2.0 200 OK"]  # the digest matched
    assert proxy.requests("BYE")  # the robot hung up after its goodbye, through the proxy too


@pytest.mark.slow
def test_over_tcp_the_engine_registers_and_a_call_completes(hub: Hub, tmp_path: Path) -> None:
    tid = _task(hub, "tcp", ["13800000001"], max_concurrent=1, max_attempts=1)
    # both peers listen on TCP only: a REGISTER or INVITE sent over UDP reaches nobody
    registrar = Peer(tmp_path / "reg", "registrar_401.xml", transport="t1", realm="city.example", user="robot",
                     password="s3cret")
    peer = Peer(tmp_path / "peer", "uas.xml", transport="t1", hold_ms=30000)
    log = tmp_path / "engine.log"
    try:
        _run(engine(settings_file(hub, tmp_path / "s.yaml"), peer.port, "--transport", "tcp", "--registrar",
                    f"sip:127.0.0.1:{registrar.port}", "--username", "robot", "--password", "s3cret", *CLOCK,
                    "--exit-when-idle", "--max-runtime", "90", log=log), log)
    finally:
        registrar.stop()
        peer.stop()
    (cdr,) = svc.cdrs(hub, tid)
    assert (cdr["outcome"], cdr["sip_status"]) == ("completed", 200), log.read_text()[-3000:]
    regs = registrar.requests("REGISTER")
    assert len(regs) >= 2 and all(re.search(r"^Via:\s*SIP/2\.0/TCP ", m, re.M) for m in regs)
    assert 'username="robot"' in _header(regs[1], "Authorization")
    assert _final_sent(registrar, _header(regs[0], "Call-ID"))[:2] == ["SIP/2.0 401 Unauthorized", "SIP/2.0 200 OK"]
    (leg,) = peer.legs()
    assert re.search(r"^Via:\s*SIP/2\.0/TCP ", leg.invite, re.M) and leg.end is not None
