"""A simulated callee (`citybrain hub dialer callee SCRIPT`): a pjsua2 SIP peer on loopback for demos, drills
and the end-to-end tests. Point an engine at it with `--uri-template sip:{phone}@127.0.0.1:<port>`.

Per dialled number (the To user part) it answers, rejects busy (486; optionally only the first N times) or
rings forever. When answering it waits for the robot's prompt to end (energy endpointer on the robot's
audio), then performs its next turn: say a text (synthesised once at start by the robot's own TTS,
central.dialer.tts), play a WAV, send an RFC 2833 digit, or stay silent. The script (YAML or JSON):

    numbers:
      "13800000001": {turns: [{say: 是的, lang: zh}, {dtmf: "1"}]}   # speech, then a key on the re-prompt
      "13800000002": {busy_first: 1, turns: [{dtmf: "1"}]}           # busy once, answers the retry
      "13800000003": {mode: ring}                                     # never answers
    default: {mode: busy}     # numbers not listed (default: busy)
    log: callee.jsonl         # JSON lines of what happened (default: none)
    work: callee/             # its recordings and synthesised speech

Prints "READY <port>" once listening (and writes the port to --ready-file). It must never die silently (a
drill reads its log to tell a broken callee from a broken robot): an error in one call is logged with its
traceback and that call hung up; repeated errors of the SIP loop itself, or any fatal one, end the process
with a `fatal` log line and exit status 1; faulthandler dumps a crash inside PJSIP to stderr.
"""

from __future__ import annotations

import gc
import json
import logging
import re
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger("citybrain.dialer.callee")
MODES = ("answer", "busy", "ring")
LANGUAGES = ("zh", "en")
END_SILENCE_MS = 1500  # the robot's prompt has ended: a loaded machine may pause the robot mid-prompt
MAX_LOOP_ERRORS = 50  # consecutive failures of the SIP loop itself before giving up (never spin silently)


class ScriptError(ValueError):
    """A bad script: the message starts with the field, e.g. `numbers.138...turns[0].dtmf: ...`."""


@dataclass
class Number:
    mode: str = "answer"
    busy_first: int = 0
    turns: list[dict[str, str]] = field(default_factory=list)  # {"wav": path} | {"dtmf": digits} | {}


@dataclass
class Script:
    numbers: dict[str, Number]
    default: Number
    log: Path | None = None
    work: Path = Path("callee")
    codecs: list[str] = field(default_factory=lambda: ["G722/16000/1", "PCMU/8000/1"])
    tls: dict[str, str] | None = None  # {"cert": PEM file, "key": PEM file}: listen on SIP over TLS


def _number(raw: object, where: str) -> tuple[Number, list[tuple[str, str, str]]]:
    """A Number, and the (where, text, lang) of its speech turns still to synthesise."""
    if not isinstance(raw, dict):
        raise ScriptError(f"{where}: a mapping (mode, busy_first, turns)")
    unknown = set(raw) - {"mode", "busy_first", "turns"}
    if unknown:
        raise ScriptError(f"{where}.{sorted(unknown)[0]}: unknown field")
    mode = raw.get("mode", "answer")
    if mode not in MODES:
        raise ScriptError(f"{where}.mode: one of {', '.join(MODES)}")
    busy_first = raw.get("busy_first", 0)
    if not isinstance(busy_first, int) or busy_first < 0:
        raise ScriptError(f"{where}.busy_first: a whole number >= 0")
    turns_raw = raw.get("turns", [])
    if not isinstance(turns_raw, list):
        raise ScriptError(f"{where}.turns: a list")
    turns: list[dict[str, str]] = []
    speech: list[tuple[str, str, str]] = []
    for i, t in enumerate(turns_raw):
        w = f"{where}.turns[{i}]"
        if not isinstance(t, dict) or len(set(t) - {"lang"}) > 1 or not set(t) <= {"say", "lang", "wav", "dtmf",
                                                                                       "silence"}:
            raise ScriptError(f"{w}: one of {{say: text, lang: zh|en}}, {{wav: file}}, {{dtmf: digits}}, "
                              "{silence: true}")
        if "say" in t:
            lang = t.get("lang", "zh")
            if lang not in LANGUAGES or not str(t["say"]).strip():
                raise ScriptError(f"{w}.{'lang' if lang not in LANGUAGES else 'say'}: "
                                  + (f"one of {', '.join(LANGUAGES)}" if lang not in LANGUAGES else "empty text"))
            speech.append((w, str(t["say"]), lang))
            turns.append({"say": str(t["say"]), "lang": lang})
        elif "wav" in t:
            if not Path(t["wav"]).is_file():
                raise ScriptError(f"{w}.wav: no such file {t['wav']}")
            turns.append({"wav": str(t["wav"])})
        elif "dtmf" in t:
            if not re.fullmatch(r"[0-9*#A-D]{1,16}", str(t["dtmf"])):
                raise ScriptError(f"{w}.dtmf: 1-16 of 0-9 * # A-D")
            turns.append({"dtmf": str(t["dtmf"])})
        else:
            turns.append({})  # silence: the robot hears nothing this turn
    return Number(mode, busy_first, turns), speech


def load_script(source: Path | dict[str, Any]) -> Script:
    """Parse and check a script (a file, YAML or JSON, or its mapping). Raises ScriptError naming the field."""
    if isinstance(source, Path):
        try:
            raw = yaml.safe_load(source.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as e:
            raise ScriptError(f"script: cannot read {source}: {e}") from e
    else:
        raw = source
    if not isinstance(raw, dict):
        raise ScriptError("script: a mapping with `numbers`")
    unknown = set(raw) - {"numbers", "default", "log", "work", "codecs", "tls"}
    if unknown:
        raise ScriptError(f"{sorted(unknown)[0]}: unknown field")
    numbers_raw = raw.get("numbers") or {}
    if not isinstance(numbers_raw, dict):
        raise ScriptError("numbers: a mapping of phone -> behaviour")
    numbers = {str(k): _number(v, f"numbers.{k}")[0] for k, v in numbers_raw.items()}
    default = _number(raw.get("default", {"mode": "busy"}), "default")[0]
    codecs = raw.get("codecs", ["G722/16000/1", "PCMU/8000/1"])
    if not isinstance(codecs, list) or not all(isinstance(c, str) for c in codecs):
        raise ScriptError("codecs: a list such as [G722/16000/1, PCMU/8000/1]")
    tls = raw.get("tls")
    if tls is not None:
        ok = isinstance(tls, dict) and set(tls) == {"cert", "key"} and all(isinstance(v, str) for v in tls.values())
        if not ok:
            raise ScriptError("tls: a mapping with `cert` and `key` (PEM files)")
        for k, v in tls.items():
            if not Path(v).is_file():
                raise ScriptError(f"tls.{k}: {v} is not a file")
    return Script(numbers, default, Path(raw["log"]) if raw.get("log") else None,
                  Path(raw.get("work") or "callee"), codecs, tls)


def synthesise(script: Script, rate_hz: int = 16000) -> None:
    """Turn every `say` into a `wav` with the robot's TTS (cached in work/tts), before the first call rings:
    synthesis during a call would stall the SIP loop."""
    from central.dialer.tts import Tts

    tts = Tts(script.work / "tts", rate_hz=rate_hz)
    for num in [*script.numbers.values(), script.default]:
        for t in num.turns:
            if "say" in t:
                t["wav"] = str(tts.wav(t.pop("say"), t.pop("lang")))


class EventLog:
    """JSON lines, one open-append-close per event, so what happened survives however the process ends."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, **kw: Any) -> None:
        line = json.dumps({"t": time.time(), **kw}, ensure_ascii=False)
        if kw.get("event") in ("error", "fatal"):
            print(f"callee: {line}", file=sys.stderr, flush=True)
        if self.path is None:
            return
        try:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(line + "\n")
        except OSError as e:  # a full disk must not kill the peer: say it where it can be seen
            print(f"callee: cannot write {self.path}: {e}; event {line}", file=sys.stderr, flush=True)


class Leg:
    """One incoming call and where its script is. Kept until the call is disconnected, even after an error
    (dropping a live pjsua2 Call from Python is how a peer crashes)."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self.phone, self.n, self.mode = "?", 0, "busy"
        self.turns: list[dict[str, str]] = []
        self.failed = False
        self.rec: Any = None
        self.tail: Any = None
        self.player: Any = None
        self.ep: Any = None
        self.busy_until = 0.0


class Callee:
    def __init__(self, script: Script, host: str = "127.0.0.1", port: int = 0) -> None:
        from central.dialer.sip import SipConfig, SipStack

        self.script = script
        self.log = EventLog(script.log)
        tls = script.tls or {}
        self.stack = SipStack(SipConfig(bind_host=host, port=port, username="callee", codecs=script.codecs,
                                        transport="tls" if tls else "udp", tls_cert_file=tls.get("cert"),
                                        tls_key_file=tls.get("key"), tls_verify=False))
        self.port = self.stack.port
        self.legs: list[Leg] = []
        self.seen: dict[str, int] = {}

    def _accept(self, leg: Leg) -> None:
        m = re.search(r"sip:([^@>]+)@", leg.call.getInfo().localUri)
        leg.phone = m.group(1) if m else "?"
        self.seen[leg.phone] = leg.n = self.seen.get(leg.phone, 0) + 1
        number = self.script.numbers.get(leg.phone, self.script.default)
        leg.mode = "busy" if number.mode == "answer" and leg.n <= number.busy_first else number.mode
        leg.turns = list(number.turns) if leg.mode == "answer" else []
        self.log(phone=leg.phone, event="incoming", n=leg.n, mode=leg.mode)
        self.stack.answer(leg.call, {"busy": 486, "ring": 180}.get(leg.mode, 200))

    def _tick(self, leg: Leg) -> None:
        from central.dialer.audio import Endpointer, GrowingWav, frame_rms, wav_duration
        from central.dialer.sip import Player, Recorder

        c = leg.call
        if leg.failed or leg.mode != "answer" or not (c.confirmed and c.media_ready) or c.disconnected:
            return
        if leg.rec is None:
            leg.rec = Recorder(self.script.work / f"callee-{leg.phone}-{leg.n}.wav", c.audio())
            leg.tail = GrowingWav(leg.rec.path)
            leg.ep = Endpointer(end_silence_ms=END_SILENCE_MS)
            self.log(phone=leg.phone, event="answered", n=leg.n)
        new = leg.tail.read_new()
        if time.monotonic() < leg.busy_until:
            return  # our own turn is still playing
        leg.ep.feed(frame_rms(new, 16000))
        if not (leg.ep.done and leg.turns):
            return
        turn = leg.turns.pop(0)
        self.log(phone=leg.phone, event="turn", turn=turn)
        if "wav" in turn:
            leg.player = Player([Path(turn["wav"])], c.audio())
            leg.busy_until = time.monotonic() + wav_duration(Path(turn["wav"])) + 0.1
        elif "dtmf" in turn:
            self.stack.send_dtmf(c, turn["dtmf"])
            leg.busy_until = time.monotonic() + 0.3
        leg.tail.read_new()  # what we heard while deciding is not the next prompt
        leg.ep = Endpointer(end_silence_ms=END_SILENCE_MS)

    def _drop(self, leg: Leg, **kw: Any) -> None:
        self.log(phone=leg.phone, event="ended", n=leg.n, status=leg.call.status, **kw)
        self.legs.remove(leg)
        leg.rec = leg.player = None  # pjsua2 media objects go with their call

    def step(self) -> None:
        """One pass of the SIP loop; an error in one call is logged with its traceback and hangs that call up."""
        self.stack.poll(10)
        while (call := self.stack.accept()) is not None:
            leg = Leg(call)
            self.legs.append(leg)
            self._guarded(leg, self._accept)
        for leg in list(self.legs):
            self._guarded(leg, self._tick)
            if leg.call.disconnected:
                self._drop(leg, **({"error": True} if leg.failed else {}))

    def _guarded(self, leg: Leg, action: Callable[[Leg], None]) -> None:
        try:
            action(leg)
        except Exception as e:  # noqa: BLE001  one bad call must not stop the peer, nor pass unnoticed
            leg.failed = True
            self.log(phone=leg.phone, event="error", where=action.__name__.strip("_"), n=leg.n,
                     error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
            self.stack.hangup(leg.call, 500)

    def run(self, stopping: Callable[[], bool]) -> int:
        """Serve until `stopping()`; 0, or 1 after MAX_LOOP_ERRORS consecutive failures of the loop."""
        errors = 0
        while not stopping():
            try:
                self.step()
                errors = 0
            except Exception as e:  # noqa: BLE001  logged, counted, never swallowed for good
                errors += 1
                self.log(event="error", where="loop", n=errors, error=f"{type(e).__name__}: {e}",
                         traceback=traceback.format_exc())
                if errors >= MAX_LOOP_ERRORS:
                    self.log(event="fatal", error=f"{errors} consecutive loop errors; giving up")
                    return 1
                time.sleep(0.05)  # do not spin on a persistent error
        return 0

    def close(self) -> None:
        for leg in list(self.legs):
            self._drop(leg, stopped=True)
        gc.collect()  # a live pjsua2 Call after libDestroy aborts the process
        self.stack.close()


def serve(script: Script, host: str = "127.0.0.1", port: int = 0, ready_file: Path | None = None,
          stopping: Callable[[], bool] = lambda: False,
          announce: Callable[[str], None] = lambda line: print(line, flush=True)) -> int:
    """Synthesise the speech, listen, announce `READY <port>`, serve until `stopping()`. Exit status: 0, or 1
    after a fatal error (logged as `fatal` with its traceback, and on stderr)."""
    events = EventLog(script.log)
    callee: Callee | None = None
    try:
        synthesise(script)
        callee = Callee(script, host, port)
        events(event="ready", port=callee.port)
        announce(f"READY {callee.port}")
        if ready_file is not None:
            tmp = ready_file.with_suffix(".tmp")
            tmp.write_text(f"{callee.port}\n")
            tmp.replace(ready_file)  # atomic: a reader never sees an empty file
        code = callee.run(stopping)
    except Exception as e:  # noqa: BLE001  logged with its traceback, then a non-zero exit
        events(event="fatal", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        code = 1
    finally:
        if callee is not None:
            callee.close()
    events(event="exit", code=code)
    return code
