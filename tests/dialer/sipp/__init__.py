"""SIPp peers for the engine tests: a scenario from this folder run as a UAS on loopback, with every SIP
message traced (`-trace_msg`), so a test counts at the peer what reached it: which numbers were called,
when each leg started and ended, how many legs were up at once."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).parent
ROOT = HERE.parents[2]
_STAMP = re.compile(r"^-{20,} (\d{4}-\d\d-\d\d\s+\d\d:\d\d:\d\d\.\d+)", re.M)


def free_port() -> int:
    """A port free for UDP and TCP on loopback (a TCP peer listens on the port a UDP probe found)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            try:
                t.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


@dataclass
class Leg:
    call_id: str
    number: str
    start: float
    end: float | None
    invite: str


class Peer:
    """`sipp -sf <scenario>` as a UAS on 127.0.0.1 (over UDP, or TCP with transport="t1"); `legs()` reads its
    message trace. `@NAME@` in the scenario is replaced by the keyword argument `name`."""

    def __init__(self, work: Path, scenario: str, transport: str = "u1", **subst: Any) -> None:
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        xml = (HERE / scenario).read_text()
        for k, v in subst.items():
            xml = xml.replace(f"@{k.upper()}@", str(v))
        self.xml = work / scenario
        self.xml.write_text(xml)
        self.port = free_port()
        self.trace = work / f"{self.xml.stem}-messages.log"
        self.proc = subprocess.Popen(
            ["sipp", "-sf", str(self.xml), "-t", transport, "-i", "127.0.0.1", "-p", str(self.port),
             "-mp", str(free_port()), "-nostdin", "-trace_msg", "-message_file", str(self.trace), "-max_socket", "200"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work)

    def messages(self) -> list[tuple[float, str, str]]:
        """(time, direction 'sent'|'received', message text) of every traced message, in order."""
        text = self.trace.read_text(errors="replace") if self.trace.exists() else ""
        parts = _STAMP.split(text)
        out = []
        for stamp, body in zip(parts[1::2], parts[2::2], strict=False):
            t = datetime.strptime(stamp.split()[0] + " " + stamp.split()[1], "%Y-%m-%d %H:%M:%S.%f").timestamp()
            head, _, msg = body.partition("\n\n")
            out.append((t, "sent" if "sent" in head else "received", msg.strip()))
        return out

    def legs(self) -> list[Leg]:
        """One leg per Call-ID that INVITEd this peer: its number, first INVITE, and the first BYE either side
        sent (None while it is up)."""
        legs: dict[str, Leg] = {}
        for t, _d, msg in self.messages():
            m = re.search(r"^Call-ID:\s*(\S+)", msg, re.M | re.I)
            if not m:
                continue
            cid = m.group(1)
            if msg.startswith("INVITE ") and cid not in legs:
                num = re.match(r"INVITE sip:([^@;>]+)@", msg)
                legs[cid] = Leg(cid, num.group(1) if num else "?", t, None, msg)
            elif msg.startswith("BYE ") and cid in legs and legs[cid].end is None:
                legs[cid].end = t
        return list(legs.values())

    def requests(self, method: str) -> list[str]:
        return [m for _t, d, m in self.messages() if d == "received" and m.startswith(method + " ")]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # only the sipp this test started
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def peak(legs: list[Leg], until: float) -> int:
    """Most legs up at once (a leg still up counts until `until`)."""
    ev = sorted([(lg.start, 1) for lg in legs] + [(lg.end or until, -1) for lg in legs], key=lambda e: (e[0], e[1]))
    n = best = 0
    for _t, d in ev:
        n += d
        best = max(best, n)
    return best


def overlapping_legs_per_number(legs: list[Leg], until: float) -> dict[str, int]:
    """For each number, the most of its legs that were up at once (never more than 1, or one contact had
    two live legs)."""
    by: dict[str, list[Leg]] = {}
    for lg in legs:
        by.setdefault(lg.number, []).append(lg)
    return {n: peak(ls, until) for n, ls in by.items()}


def settings_file(hub: Any, path: Path) -> Path:
    """Hub settings for an engine subprocess: the same store and data_dir as the test's hub."""
    path.write_text(yaml.safe_dump({"data_dir": str(hub.settings.data_dir), "mqtt": {"enabled": False},
                                    "database_url": hub.settings.store_url}))
    return path


def engine(settings: Path, port: int, *args: str, log: Path, uri: str | None = None) -> subprocess.Popen[str]:
    """`citybrain hub dialer run` as a subprocess dialling the peer on `port`, or `uri` (a --uri-template),
    with stderr to `log`."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", "from central.dialer.cli import app; app()", "run", "--settings", str(settings),
         "--uri-template", uri or f"sip:{{phone}}@127.0.0.1:{port}", "--ring-timeout", "5", *args],
        env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"), text=True)


def wait_for(cond: Any, timeout: float, what: str, every: float = 0.1) -> Any:
    """Poll `cond()` until it is truthy (returns it) or fail after `timeout` s naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
