"""Dialer load benchmark: N concurrent ~20 s scripted dialogs against a SIPp UAS (sip-tester) that
answers and sends RFC 2833 DTMF from its bundled pcap; 0 lost CDRs required; CPU per call reported.

Baseline (same run, same UAS): a bare pjsua2 caller process that only plays one WAV per call for the
same duration. Usage: python bench/dialer.py [--calls 100] [--cps 20]
Last stdout line: {"metric","value","unit","target","baseline","ratio"}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

UAS_XML = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="citybrain dialer uas">
  <recv request="INVITE" crlf="true"/>
  <send><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:[local_ip]:[local_port];transport=[transport]>
Content-Type: application/sdp
Content-Length: [len]

v=0
o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
s=-
c=IN IP[media_ip_type] [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 0 {dtmf_pt}
a=rtpmap:0 PCMU/8000
a=rtpmap:{dtmf_pt} telephone-event/8000
a=fmtp:{dtmf_pt} 0-15
]]></send>
  <recv request="ACK" optional="false" rrs="true"/>
  <pause milliseconds="{dtmf_after_ms}"/>
  <nop><action><exec play_pcap_audio="{pcap}"/></action></nop>
  <recv request="BYE"/>
  <send><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

]]></send>
</scenario>
"""

TEMPLATE = {
    "key": "bench-20s", "name": "bench", "language": "en", "start": "intro",
    "nodes": [
        {"id": "intro", "kind": "say", "next": "ask",
         "prompt": "Hello. This is the city service line calling about your recent request to the city."},
        {"id": "ask", "prompt": "Press one to confirm.", "timeout_s": 8,
         "answers": [{"intent": "yes", "dtmf": "1", "next": "info"}], "max_retries": 0, "on_fail": "info"},
        {"id": "info", "kind": "say", "next": "bye",
         "prompt": "Thank you. Your request has been recorded and a worker will visit within three days."},
        {"id": "bye", "kind": "end", "prompt": "Goodbye.", "outcome": "completed"},
    ],
}

BARE = r"""
import sys, time, gc
import pjsua2 as pj
n, uri, wav, hold = int(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])
cps = float(sys.argv[5])
ep = pj.Endpoint(); ep.libCreate()
c = pj.EpConfig(); c.uaConfig.threadCnt = 0; c.uaConfig.mainThreadOnly = True; c.uaConfig.maxCalls = n + 8
c.logConfig.level = 0; c.logConfig.consoleLevel = 0; c.medConfig.clockRate = 8000; c.medConfig.sndClockRate = 8000
c.medConfig.noVad = True; c.medConfig.ecTailLen = 0; c.medConfig.maxMediaPorts = 4 * n + 16
ep.libInit(c); tc = pj.TransportConfig(); tc.port = 0; tc.boundAddress = "127.0.0.1"
ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tc); ep.libStart(); ep.audDevManager().setNullDev()
class C(pj.Call):
    def __init__(s, a): super().__init__(a); s.ok = False; s.gone = False; s.player = None; s.t = 0
    def onCallState(s, p):
        ci = s.getInfo(); s.gone = ci.state == pj.PJSIP_INV_STATE_DISCONNECTED
    def onCallMediaState(s, p):
        ci = s.getInfo()
        for m in ci.media:
            if m.type == pj.PJMEDIA_TYPE_AUDIO and m.status == pj.PJSUA_CALL_MEDIA_ACTIVE and not s.ok:
                s.ok = True; s.t = time.monotonic()
acc = pj.Account(); ac = pj.AccountConfig(); ac.idUri = "sip:bare@127.0.0.1"; ac.regConfig.registerOnAdd = False
acc.create(ac)
calls = []; done = 0; peak = 0; nxt = time.monotonic()
while done < n:
    ep.libHandleEvents(10)
    now = time.monotonic()
    if len(calls) + done < n and now >= nxt:
        cl = C(acc)
        try:
            cl.makeCall(uri.format(phone=f"1390000{len(calls) + done:04d}"), pj.CallOpParam(True))
        except pj.Error as e:
            sys.exit(f"makeCall: {e.info()}")
        calls.append(cl); nxt = now + 1 / cps
    for cl in list(calls):
        if cl.ok and cl.player is None:
            cl.player = pj.AudioMediaPlayer(); cl.player.createPlayer(wav, pj.PJMEDIA_FILE_NO_LOOP)
            cl.player.startTransmit(cl.getAudioMedia(-1))
        if cl.ok and not cl.gone and now - cl.t > hold:
            cl.hangup(pj.CallOpParam()); cl.t = 1e18
        if cl.gone:
            calls.remove(cl); cl.player = None; done += 1
    peak = max(peak, sum(1 for cl in calls if cl.ok and not cl.gone))
cl = None; calls = []; gc.collect(); ep.libDestroy()
print(f"RESULT {peak} {done}", flush=True)
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


# SIPp replays its pcap bytes verbatim (telephone-event as PT 101), but pjsua offers telephone-event/8000
# on a dynamic PT that depends on the codec set: 120 with the engine's codec priorities, 121 with pjsua's
# defaults (the bare caller). A receiver drops events on a PT it did not offer, so each run replays a copy
# rewritten to the PT its caller offers (seen in the INVITEs with BENCH_DEBUG=1, which traces SIPp).
ROBOT_DTMF_PT = 120
BARE_DTMF_PT = 121


def pcap_with_payload_type(src: Path, dst: Path, pt: int) -> Path:
    """Copy a pcap (Ethernet/IPv4/UDP/RTP) with every RTP payload type set to `pt`, UDP checksum zeroed."""
    import struct

    data = bytearray(src.read_bytes())
    off = 24
    while off + 16 <= len(data):
        incl = struct.unpack_from("<I", data, off + 8)[0]
        pkt = off + 16
        ip = pkt + 14
        udp = ip + (data[ip] & 0x0F) * 4
        data[udp + 6 : udp + 8] = b"\0\0"  # "no checksum" is valid for UDP over IPv4
        rtp = udp + 8
        data[rtp + 1] = (data[rtp + 1] & 0x80) | pt
        off = pkt + incl
    dst.write_bytes(bytes(data))
    return dst


def start_uas(work: Path, dtmf_after_ms: int, dtmf_pt: int) -> tuple[subprocess.Popen[bytes], int]:
    pcap = pcap_with_payload_type(Path("/usr/share/sip-tester/dtmf_2833_1.pcap"), work / "dtmf_1.pcap", dtmf_pt)
    xml = work / "uas.xml"
    xml.write_text(UAS_XML.format(dtmf_after_ms=dtmf_after_ms, pcap=pcap, dtmf_pt=dtmf_pt))
    port = free_port()
    proc = subprocess.Popen(["sipp", "-sf", str(xml), "-i", "127.0.0.1", "-p", str(port), "-mp",
                             str(free_port()), "-nostdin", "-max_socket", "2000",
                             *(["-trace_msg"] if os.environ.get("BENCH_DEBUG") else [])],
                            cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return proc, port


def stop_uas(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()  # only the sipp process this script started
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()


def run_robot(work: Path, uas_port: int, calls: int, cps: float, workers: int) -> dict[str, float]:
    from central.app import build_hub
    from central.dialer import service as svc
    from central.dialer.templates import Template
    from central.settings import MqttSettings, Settings

    settings = Settings(data_dir=work / "hub", mqtt=MqttSettings(enabled=False))
    hub = build_hub(settings)
    svc.save_template(hub, Template.model_validate(TEMPLATE), "/city", "bench")
    sched = svc.Schedule(windows=[{"start": "00:00", "end": "23:59"}], max_concurrent=min(calls, 500),
                         calls_per_second=cps, max_attempts=1)
    tid = svc.create_task(hub, svc.TaskIn(name="bench", org="/city", template_key="bench-20s",
                                          schedule=sched), "bench")
    csv = "phone\n" + "".join(f"1380000{i:04d}\n" for i in range(calls))
    svc.import_contacts(hub, tid, "b.csv", csv.encode(), "bench")
    svc.change_state(hub, tid, "start", "bench")
    (work / "settings.yaml").write_text(json.dumps({"data_dir": str(work / "hub"), "mqtt": {"enabled": False}}))
    cpu0, t0 = children_cpu(), time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", "from central.dialer.cli import app; app()", "run", "--settings",
         str(work / "settings.yaml"), "--uri-template", f"sip:{{phone}}@127.0.0.1:{uas_port}",
         "--clock-rate", "8000", "--workers", str(workers), "--no-record", "--exit-when-idle",
         "--max-runtime", str(60 + calls / cps + 40)],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    wall, cpu = time.monotonic() - t0, children_cpu() - cpu0
    if proc.returncode != 0 or "Traceback" in proc.stderr:
        print(proc.stderr[-3000:], file=sys.stderr)
    rows = svc.cdrs(hub, tid)
    if os.environ.get("BENCH_DEBUG"):
        print("transcript:", rows[0].get("transcript"), rows[0].get("answers"))
    spans = [(datetime.fromisoformat(r["answered_at"]), datetime.fromisoformat(r["ended_at"])) for r in rows
             if r["answered_at"]]
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    peak = cur = 0
    for _, d in events:
        cur += d
        peak = max(peak, cur)
    completed = sum(1 for r in rows if r["outcome"] == "completed")
    dur = sum((b - a).total_seconds() for a, b in spans) / max(1, len(spans))
    from collections import Counter

    print("robot outcomes:", dict(Counter(r["outcome"] for r in rows)), dict(Counter(r["sip_status"] for r in rows)))
    return {"peak": peak, "cdrs": len(rows), "completed": completed, "lost": calls - len(rows), "wall_s": wall,
            "cpu_s": cpu, "cpu_per_call_s": cpu / max(1, len(rows)), "avg_call_s": dur,
            "dtmf_answered": sum(1 for r in rows if (r["answers"] or {}).get("ask", {}).get("via") == "dtmf")}


def run_bare(work: Path, uas_port: int, calls: int, cps: float, hold_s: float, workers: int) -> dict[str, float]:
    import numpy as np

    from central.dialer.audio import write_wav

    wav = work / "tone.wav"
    t = np.arange(int(8000 * hold_s)) / 8000
    write_wav(wav, (3000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16), 8000)
    (work / "bare.py").write_text(BARE)
    cpu0, t0 = children_cpu(), time.monotonic()
    share = [calls // workers + (1 if i < calls % workers else 0) for i in range(workers)]
    procs = [subprocess.Popen([sys.executable, str(work / "bare.py"), str(n), f"sip:{{phone}}@127.0.0.1:{uas_port}",
                               str(wav), str(hold_s), str(cps / workers)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for n in share if n]
    peak = done = 0
    for p in procs:
        out, err = p.communicate(timeout=120 + calls / cps + hold_s)
        line = next((x for x in out.splitlines() if x.startswith("RESULT")), None)
        if line is None:
            raise RuntimeError(f"bare caller failed (exit {p.returncode}): {err[-1500:]}")
        a, b = (int(x) for x in line.split()[1:3])
        peak, done = peak + a, done + b  # upper bound of the simultaneous peak (processes overlap)
    wall, cpu = time.monotonic() - t0, children_cpu() - cpu0
    return {"peak": peak, "done": done, "wall_s": wall, "cpu_s": cpu, "cpu_per_call_s": cpu / max(1, done)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=100)
    ap.add_argument("--cps", type=float, default=20.0)
    ap.add_argument("--workers", type=int, default=0, help="engine processes (default: calls / 4)")
    args = ap.parse_args()
    args.workers = args.workers or -(-args.calls // 4)  # the pjsua2 wheel holds 4 calls per Endpoint
    if shutil.which("sipp") is None:
        sys.exit("sipp (Debian package sip-tester) is required")
    with tempfile.TemporaryDirectory(prefix="dialer-bench-") as td:
        work = Path(os.environ.get("BENCH_DEBUG_DIR") or td)
        (work / "robot").mkdir()
        (work / "bare").mkdir()
        uas, port = start_uas(work / "robot", dtmf_after_ms=9500, dtmf_pt=ROBOT_DTMF_PT)
        try:
            robot = run_robot(work / "robot", port, args.calls, args.cps, args.workers)
        finally:
            stop_uas(uas)
        print(f"robot: {json.dumps({k: round(v, 3) for k, v in robot.items()})}")
        uas, port = start_uas(work / "bare", dtmf_after_ms=9500, dtmf_pt=BARE_DTMF_PT)
        try:
            bare = run_bare(work / "bare", port, args.calls, args.cps, hold_s=robot["avg_call_s"] or 20.0,
                            workers=args.workers)
        finally:
            stop_uas(uas)
        print(f"bare pjsua2 caller: {json.dumps({k: round(v, 3) for k, v in bare.items()})}")
        print(f"cpu per call: robot {robot['cpu_per_call_s']:.3f} s, bare {bare['cpu_per_call_s']:.3f} s "
              f"(x{robot['cpu_per_call_s'] / max(1e-9, bare['cpu_per_call_s']):.2f}); "
              f"avg call {robot['avg_call_s']:.1f} s; lost CDRs {robot['lost']}")
        value = robot["peak"] if robot["lost"] == 0 else 0
        print(json.dumps({"metric": "concurrent_calls_0_lost_cdrs", "value": value, "unit": "calls",
                          "target": 100, "baseline": bare["peak"],
                          "ratio": round(value / bare["peak"], 3) if bare["peak"] else None}))


if __name__ == "__main__":
    main()
