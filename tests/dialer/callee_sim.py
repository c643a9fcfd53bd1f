"""Callee simulator: a second pjsua2 endpoint in its own process (python tests/dialer/callee_sim.py SCRIPT).

Per dialled number (the To user part) it answers, rejects busy (486; optionally only the first N times)
or rings forever. When answering it waits for the robot's prompt to end (energy endpointer on the
robot's audio), then performs the next turn: play an espeak-ng WAV, send an RFC 2833 digit, or stay
silent. Prints "READY <port>" once listening; appends JSON lines of what happened to the script's log.
"""

from __future__ import annotations

import json
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

from central.dialer.audio import Endpointer, GrowingWav, frame_rms
from central.dialer.sip import Player, Recorder, RobotCall, SipConfig, SipStack


class Leg:
    def __init__(self, stack: SipStack, call: RobotCall, phone: str, spec: dict[str, Any], work: Path,
                 n: int) -> None:
        self.stack, self.call, self.phone, self.spec, self.work, self.n = stack, call, phone, spec, work, n
        self.turns = list(spec.get("turns", []))
        self.rec: Recorder | None = None
        self.tail: GrowingWav | None = None
        self.ep = Endpointer(end_silence_ms=1500)  # a loaded machine may pause the robot mid-prompt
        self.player: Player | None = None
        self.busy_until = 0.0

    def tick(self) -> None:
        c = self.call
        if not (c.confirmed and c.media_ready) or c.disconnected:
            return
        if self.rec is None:
            self.rec = Recorder(self.work / f"callee-{self.phone}-{self.n}.wav", c.audio())
            self.tail = GrowingWav(self.rec.path)
        assert self.tail is not None
        new = self.tail.read_new()
        if time.monotonic() < self.busy_until:
            return  # our own turn is still playing
        self.ep.feed(frame_rms(new, 16000))
        if self.ep.done and self.turns:
            turn = self.turns.pop(0)
            log(phone=self.phone, event="turn", turn=turn)
            if "say" in turn:
                from central.dialer.audio import wav_duration

                self.player = Player([Path(turn["say"])], c.audio())
                self.busy_until = time.monotonic() + wav_duration(Path(turn["say"])) + 0.1
            elif "dtmf" in turn:
                self.stack.send_dtmf(c, turn["dtmf"])
                self.busy_until = time.monotonic() + 0.3
            self.tail.read_new()
            self.ep = Endpointer(end_silence_ms=1500)  # a loaded machine may pause the robot mid-prompt


LOG: Path | None = None


def log(**kw: Any) -> None:
    if LOG:
        with LOG.open("a") as f:
            f.write(json.dumps({"t": time.time(), **kw}) + "\n")


def main(script_path: str) -> None:
    global LOG
    script = json.loads(Path(script_path).read_text())
    LOG = Path(script["log"])
    work = Path(script["work"])
    tls = script.get("tls") or {}  # {"cert": ..., "key": ...}: listen on TLS with this certificate
    stack = SipStack(SipConfig(port=0, username="callee", codecs=script.get("codecs", ["G722/16000/1", "PCMU/8000/1"]),
                               transport="tls" if tls else "udp", tls_cert_file=tls.get("cert"),
                               tls_key_file=tls.get("key"), tls_verify=False))
    stop = False

    def _stop(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    print(f"READY {stack.port}", flush=True)
    legs: list[Leg] = []
    leg = call = None
    seen: dict[str, int] = {}
    while not stop:
        stack.poll(10)
        while (call := stack.accept()) is not None:
            to = call.getInfo().localUri
            m = re.search(r"sip:([^@>]+)@", to)
            phone = m.group(1) if m else "?"
            seen[phone] = seen.get(phone, 0) + 1
            spec = script["numbers"].get(phone, {"mode": "busy"})
            mode = spec.get("mode", "answer")
            if mode == "answer" and seen[phone] <= spec.get("busy_first", 0):
                mode = "busy"
            log(phone=phone, event="incoming", n=seen[phone], mode=mode)
            if mode == "busy":
                stack.answer(call, 486)
            elif mode == "ring":
                stack.answer(call, 180)
            else:
                stack.answer(call, 200)
            legs.append(Leg(stack, call, phone, spec, work, seen[phone]))
        for leg in list(legs):
            leg.tick()
            if leg.call.disconnected:
                log(phone=leg.phone, event="ended", status=leg.call.status)
                legs.remove(leg)
                leg.rec = None
                leg.player = None
    del leg, call  # a live pjsua2 Call after libDestroy aborts the process
    legs.clear()
    import gc

    gc.collect()
    stack.close()


if __name__ == "__main__":
    main(sys.argv[1])
