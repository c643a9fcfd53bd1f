"""Outcomes are facts (issue 20), over real SIP on loopback: the engine process (CLI) calls a SIPp UAS.
A callee who hangs up during the notice is `early_hangup` at that node, not `completed`; a prompt that
renders empty is `prompt_failed` and a missing recording `audio_missing`, both found before dialling, so
those callees are never rung. Every outcome has its reason in the CDR and the export."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from central.dialer import service as svc
from central.dialer.templates import Template
from central.hub import Hub
from tests.dialer.sipp import Peer, engine, free_port, settings_file
from tests.dialer.test_voice_recordings import tone_wav

ORG = "/city/district-a"
NOTICE = ("The water supply in your district will be interrupted tomorrow from nine in the morning "
          "until five in the afternoon. Please store enough water.")


def _task(hub: Hub, key: str, nodes: list[dict], csv: str) -> int:
    tpl = Template.model_validate({"key": key, "name": key, "language": "en", "start": nodes[0]["id"],
                                   "nodes": nodes})
    svc.save_template(hub, tpl, ORG, "alice")
    sched = svc.Schedule(windows=[{"start": "09:00", "end": "12:00"}], max_concurrent=4, calls_per_second=5,
                         max_attempts=2, retry_delay_s={"busy": 1})  # early_hangup not named: not retried
    tid = svc.create_task(hub, svc.TaskIn(name=key, org=ORG, template_key=key, schedule=sched), "alice")
    assert svc.import_contacts(hub, tid, "l.csv", csv.encode(), "alice")["errors"] == []
    svc.change_state(hub, tid, "start", "alice")
    return tid


@pytest.mark.slow
def test_early_hangup_empty_prompt_and_missing_audio_are_their_own_outcomes(hub: Hub, tmp_path: Path) -> None:
    notice = _task(hub, "facts-notice", [
        {"id": "notice", "kind": "say", "prompt": "Hello {name}. {notice}", "next": "bye"},
        {"id": "bye", "kind": "end", "prompt": "Thank you, goodbye.", "outcome": "completed"}],
        f"phone,name,notice\n13800000001,Ann,{NOTICE}\n13990000002,Bob,{NOTICE}\n")  # 1399...: BYE after 1.5 s
    empty = _task(hub, "facts-empty", [
        {"id": "notice", "kind": "say", "prompt": "{notice}", "next": "bye"},
        {"id": "bye", "kind": "end", "prompt": "Goodbye.", "outcome": "completed"}],
        "phone,name,notice\n13800000003,Cat,\n")  # the notice column is empty: nothing to say
    # a recording in the template's own store, named by the template, then gone from disk when the call is due
    rec_nodes = [{"id": "notice", "kind": "say", "prompt": "Water notice.", "next": "bye"},
                 {"id": "bye", "kind": "end", "prompt": "Goodbye.", "outcome": "completed"}]
    svc.save_template(hub, Template.model_validate({"key": "facts-audio", "name": "facts-audio", "language": "en",
                                                    "start": "notice", "nodes": rec_nodes}), ORG, "alice")
    entry = svc.put_recording(hub, "facts-audio", "notice-rec", None, tone_wav(), ORG, "alice")
    audio = _task(hub, "facts-audio", [{**rec_nodes[0], "audio": "notice-rec"}, rec_nodes[1]],
                  "phone,name\n13800000004,Dan\n")
    gone = svc.media(hub).path(entry["key"])
    gone.unlink()
    # and one whose recording is there: played to the callee over SIP, then the call completes
    svc.save_template(hub, Template.model_validate({"key": "facts-rec", "name": "facts-rec", "language": "en",
                                                    "start": "notice", "nodes": rec_nodes}), ORG, "alice")
    svc.put_recording(hub, "facts-rec", "notice-rec", None, tone_wav(seconds=3.0), ORG, "alice")
    played = _task(hub, "facts-rec", [{**rec_nodes[0], "audio": "notice-rec"}, rec_nodes[1]],
                   "phone,name\n13800000005,Eve\n")

    peer = Peer(tmp_path / "peer", "uas.xml", hold_ms=30000)
    log = tmp_path / "engine.log"
    rtp = free_port() & ~1  # RTP from this port on, 40 ports at most
    try:
        proc = engine(settings_file(hub, tmp_path / "s.yaml"), peer.port, "--clock-start",
                      "2025-03-10T09:00:05+08:00", "--exit-when-idle", "--max-runtime", "90",
                      "--rtp-port", str(rtp), "--rtp-port-range", "40", log=log)
        assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        peer.stop()

    cdrs = {c["phone_masked"]: c for t in (notice, empty, audio) for c in svc.cdrs(hub, t)}
    print(log.read_text()[-3000:], {k: (c["outcome"], c["reason"]) for k, c in cdrs.items()})  # on failure
    assert len(cdrs) == 4 and sum(len(svc.cdrs(hub, t)) for t in (notice, empty, audio)) == 4  # none retried
    ok, early, bad_prompt, bad_audio = (cdrs[f"138****000{i}"] if i != 2 else cdrs["139****0002"]
                                        for i in (1, 2, 3, 4))
    assert (ok["outcome"], ok["reason"], ok["end_node"]) == ("completed", None, "bye")
    assert ok["duration_s"] > 5  # the whole notice and the goodbye were played
    assert early["outcome"] == "early_hangup" and early["end_node"] == "notice"
    assert early["answered_at"] and "callee hung up at node notice" in early["reason"]
    assert bad_prompt["outcome"] == "prompt_failed" and "node notice" in bad_prompt["reason"]
    assert "empty prompt" in bad_prompt["reason"] and bad_prompt["answered_at"] is None
    assert bad_audio["outcome"] == "audio_missing" and str(gone) in bad_audio["reason"]
    (rec,) = svc.cdrs(hub, played)
    assert (rec["outcome"], rec["end_node"]) == ("completed", "bye") and rec["duration_s"] >= 3.0
    # the two broken templates rang nobody: only the notice's and the recording's callees reached the peer
    assert sorted(lg.number for lg in peer.legs()) == ["13800000001", "13800000005", "13990000002"]
    # every INVITE asks for RFC 4028 session timers (the trunk ends a dead engine's leg)
    assert all("Session-Expires: 90" in lg.invite for lg in peer.legs())
    ports = [int(re.search(r"^m=audio (\d+)", lg.invite, re.M).group(1)) for lg in peer.legs()]  # type: ignore[union-attr]
    assert all(rtp <= p < rtp + 40 for p in ports), (rtp, ports)  # the configured RTP port range

    assert svc.progress(hub, notice)["completed"] == 1
    rows = svc.export_csv(hub, notice).splitlines()
    assert rows[0].endswith(",reason")
    assert any(r.startswith("3,139****0002,Bob,done,early_hangup,1,") and "node notice" in r for r in rows)
    assert svc.export_csv(hub, empty).splitlines()[1].startswith("2,138****0003,Cat,failed,prompt_failed,1,")
    assert svc.export_csv(hub, audio).splitlines()[1].startswith("2,138****0004,Dan,failed,audio_missing,1,")
    for t in (notice, empty, audio):
        assert svc.task_status(hub, t) == "completed"
