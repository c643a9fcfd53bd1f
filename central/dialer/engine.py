"""The SIP engine process (`citybrain hub dialer run`): takes due contacts of running tasks from the hub's
store, calls them with pjsua2, plays TTS prompts, records the callee, cuts each answer with an energy
endpointer, recognises it (thread pool; ASR never touches pjsua2), drives the dialog state machine and
writes one CDR per attempt. Everything pjsua2 happens on this process's main thread.

Outcomes are facts: a call is `completed` (or its end node's outcome) only when the dialog reached an end
node and every prompt on the way played to its end before the callee hung up; otherwise `early_hangup`
(with the node), `prompt_failed` (a prompt TTS cannot say) or `audio_missing` (a recording that is not
there). Prompts are synthesised and recordings checked before dialling, so a broken template dials nobody.

Engines that die: each engine has a unique id (persisted in its work_dir, see `resolve_engine_id`),
reports itself to `dialer_engines` every `heartbeat_s`, renews the lease of every contact it is calling,
and releases contacts whose lease ran out (their engine died) as `engine_lost`, for one re-dial. The
lease outlives the SIP session timer, so the dead engine's leg is gone before the contact is re-dialled.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import time
import uuid
import wave
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import numpy as np

from central.dialer import service as svc
from central.dialer.asr import MIN_CONFIDENCE, Recogniser, Recognisers, make_recognisers
from central.dialer.audio import Endpointer, GrowingWav, frame_rms, wav_duration
from central.dialer.dialog import Dialog, Prompt, Step, render
from central.dialer.sip import Player, Recorder, RobotCall, SipConfig, SipStack
from central.dialer.templates import Template
from central.dialer.tts import Tts
from central.hub import Hub

log = logging.getLogger("citybrain.dialer.engine")
Clock = Callable[[], datetime]


class ShiftedClock:
    """Wall time moved to start at `start`: lets a test or a rehearsal run "at 08:59:58" (picklable)."""

    def __init__(self, start: datetime) -> None:
        self.offset = start.astimezone(UTC) - datetime.now(UTC)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


@dataclass
class EngineConfig:
    uri_template: str = "sip:{phone}@127.0.0.1:5060"
    sip: SipConfig = field(default_factory=SipConfig)
    ring_timeout_s: float = 30.0
    max_call_s: float = 300.0
    asr_backend: str = "pocketsphinx"
    asr_model_dir: Path | None = None
    asr_models: dict[str, Path] = field(default_factory=dict)  # language -> vosk model directory
    asr_min_confidence: float = MIN_CONFIDENCE
    asr_workers: int = 2
    tts_wpm: int = 160
    work_dir: Path = Path("var/hub/dialer")  # recordings/ of live calls, and tts-cache/
    record: bool = True
    speech_threshold: float = 200.0
    end_silence_ms: int = 600
    engine_id: str | None = None  # None: this work_dir's persisted id (a fresh one if it is in use)
    workers: int = 1  # engine processes sharing the campaign (calls/s is split between them)
    # A claimed contact's lease: renewed every heartbeat while its call is up; once it has run out, any
    # live engine releases the contact (engine_lost). Must outlive an orphaned leg: longer than the SIP
    # session expiry (sip.session_expires_s), which is checked at start.
    lease_s: float = 120.0
    heartbeat_s: float = 5.0  # report to dialer_engines, renew leases, release expired ones

    def __post_init__(self) -> None:
        if self.heartbeat_s <= 0 or self.lease_s < 3 * self.heartbeat_s:
            raise ValueError("lease_s: at least three heartbeats (heartbeat_s), so one late beat loses nothing")
        if self.sip.session_expires_s and self.lease_s <= self.sip.session_expires_s:
            raise ValueError(f"lease_s: {self.lease_s:g} s must exceed the SIP session expiry "
                             f"({self.sip.session_expires_s} s), or an orphaned leg may outlive it")


class AudioMissing(RuntimeError):
    pass


def audio_file(audio: str) -> Path:
    """A node's recording as a readable 16-bit WAV file, or AudioMissing saying why not."""
    path = Path(audio)
    try:
        with wave.open(str(path), "rb") as w:
            if w.getsampwidth() != 2 or w.getnframes() == 0:
                raise AudioMissing(f"{audio}: not a 16-bit PCM WAV with samples")
    except (OSError, EOFError, wave.Error) as e:
        raise AudioMissing(f"{audio}: {e}") from e
    return path


def resolve_engine_id(work_dir: Path, given: str | None = None) -> tuple[str, IO[str]]:
    """This engine's id and the open lock file that holds it for the process's lifetime.

    Given an id, it is locked as is (a second engine on this host with the same id is refused). Without
    one, the engine takes the first free slot of work_dir/engine-ids/ (`slot-N.lock`, an exclusive flock)
    and that slot's persisted id (`slot-N.id`, made once: `<host>-<8 hex>`): a restarted engine keeps its
    id, and two engines started at once with defaults never share one."""
    d = work_dir / "engine-ids"
    d.mkdir(parents=True, exist_ok=True)
    if given:
        f = open(d / f"{given}.lock", "a+")  # noqa: SIM115  held open: the lock lives with the process
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            f.close()
            raise RuntimeError(f"engine_id: {given!r} is in use by another engine on this host") from e
        return given, f
    for n in range(1024):
        f = open(d / f"slot-{n}.lock", "a+")  # noqa: SIM115
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            continue
        idf = d / f"slot-{n}.id"
        if not idf.exists():
            host = "".join(ch for ch in socket.gethostname().split(".")[0] if ch.isalnum() or ch == "-")[:24]
            tmp = idf.with_suffix(".tmp")
            tmp.write_text(f"{host or 'engine'}-{uuid.uuid4().hex[:8]}\n")
            tmp.replace(idf)
        return idf.read_text().strip(), f
    raise RuntimeError("engine_id: no free engine slot in " + str(d))


class CallSession:
    """One attempt: the SIP call plus its dialog, driven by `tick()` from the engine loop."""

    def __init__(self, engine: Engine, contact: dict[str, Any], task: dict[str, Any], now: datetime) -> None:
        self.e = engine
        self.contact = contact
        self.task = task
        # no model for the template's language: DTMF only (speech is never guessed into an answer)
        self.rec = engine.asr.for_language(task["template"].language)
        self.dialog = Dialog(task["template"], contact["vars"], today=now.date(), dtmf_only=self.rec is None)
        self.started = now
        self.answered: datetime | None = None
        self.state = "dialing"
        self.step: Step | None = None
        self.player: Player | None = None
        self.play_t0 = 0.0
        self.play_until = 0.0
        self.barge_after = 0.0  # DTMF may cut the prompt short only once the question itself is playing
        self.spans: list[tuple[float, float, str]] = []  # (start, end, node) of each prompt, monotonic
        self.recorder: Recorder | None = None
        self.tail: GrowingWav | None = None
        self.ep: Endpointer | None = None
        self.buf: list[np.ndarray] = []
        self.listen_deadline = 0.0
        self.speech_deadline = 0.0
        self.asr: Future[str] | None = None
        self.asr_texts: list[str] = []
        self.hangup_sent = False
        self.outcome: str | None = None  # why the engine ended the call (no_answer, timeout, cancelled ...)
        self.failure: tuple[str, str] | None = None  # (prompt_failed | audio_missing, reason)
        self.reached_end = False  # the end node's prompts played to their end
        self.reason: str | None = None
        self.end_node: str | None = None
        uri = engine.cfg.uri_template.format(phone=contact["phone"])
        self.call: RobotCall = engine.sip.dial(uri)
        self.t0 = time.monotonic()

    # --- helpers ---
    def _node_of(self, p: Prompt) -> str:
        """The node a prompt belongs to (a step strings several nodes' prompts: say nodes, then the ask)."""
        for n in self.dialog.template.nodes:
            if (p.audio and n.audio == p.audio) or (not p.audio and n.prompt
                                                    and render(n.prompt, self.dialog.variables) == p.text):
                return n.id
        return self.dialog.node_id  # a retry prompt: the node being asked

    def _play(self, step: Step) -> None:
        lang, voice = self.dialog.template.language, self.dialog.template.voice
        self._stop_player()
        self.step = step
        try:
            files = [self.e.prompt_file(p, lang, voice) for p in step.prompts]
        except AudioMissing as e:
            self._fail("audio_missing", str(e))
            return
        except Exception as e:  # noqa: BLE001  TTS failed (empty text, espeak error): the call cannot go on
            self._fail("prompt_failed", f"{type(e).__name__}: {e}")
            return
        now = time.monotonic()
        self.spans, t = [], now
        for p, f in zip(step.prompts, files, strict=True):
            d = wav_duration(f)
            self.spans.append((t, t + d, self._node_of(p)))
            t += d
        self.play_t0 = now
        self.play_until = t + 0.15 if files else now
        self.barge_after = self.spans[-1][0] if self.spans else now
        if files:
            self.player = Player(files, self.call.audio())
        self.state = "playing"

    def _fail(self, outcome: str, reason: str) -> None:
        log.warning("contact %s: %s: %s", self.contact["id"], outcome, reason)
        self.failure = (outcome, reason)
        self._hangup(outcome)

    def _stop_player(self) -> None:
        if self.player is not None:
            self.player.stop()
            self.player = None

    def _listen(self) -> None:
        assert self.step and self.step.listen and self.tail
        # Keep only the last 1 s recorded during the prompt: a quick answer that starts as the prompt
        # fades out (or while the loop lags under load) is still heard; older audio is dropped.
        early = self.tail.read_new()[-self.e.cfg.sip.clock_rate:]
        self.ep = Endpointer(threshold=self.e.cfg.speech_threshold, end_silence_ms=self.e.cfg.end_silence_ms)
        self.buf = [early]
        self.ep.feed(frame_rms(early, self.e.cfg.sip.clock_rate))
        now = time.monotonic()
        self.listen_deadline = now + self.step.listen.timeout_s
        self.speech_deadline = now + self.step.listen.timeout_s + self.step.listen.max_speech_s
        self.state = "listening"

    def _apply(self, step: Step) -> None:
        self._play(step)

    def _hangup(self, outcome: str) -> None:
        self.outcome = self.outcome or outcome
        if not self.hangup_sent:
            self.hangup_sent = True
            self.e.sip.hangup(self.call)
        self.state = "ending"

    def where(self, now_mono: float) -> tuple[str, str]:
        """(node, what the callee was hearing or doing) at `now_mono`: for an early hang-up's reason."""
        if self.state == "playing" and self.spans:
            for start, end, node in self.spans:
                if now_mono < end:
                    return node, f"{max(0.0, now_mono - start):.1f} s into its {end - start:.1f} s prompt"
            return self.spans[-1][2], "as its prompt ended"
        if self.state in ("listening", "recognising"):
            return self.dialog.node_id, "while the robot waited for an answer"
        return self.dialog.node_id or self.dialog.template.start, "before the first prompt"

    # --- the loop body ---
    def tick(self, now_mono: float) -> bool:
        """Advance; returns True once the call is over (the CDR can be written)."""
        c = self.call
        if c.disconnected:
            if (self.state == "playing" and self.step and self.step.end and self.spans
                    and now_mono >= self.spans[-1][1]):
                self.reached_end = True  # the goodbye had played when the callee hung up first
            elif self.answered is not None and not self.hangup_sent and self.reason is None:
                node, what = self.where(now_mono)
                self.reason = f"callee hung up at node {node}, {what}"
                self.end_node = node
            return True
        if self.state == "dialing":
            if c.confirmed and c.media_ready:
                self.answered = self.e.clock()
                # Always recorded: answer windows are cut from this file; with record=False it is
                # deleted when the call ends instead of being kept for the CDR.
                name = f"task{self.task['id']}-c{self.contact['id']}-a{self.contact['attempt']}.wav"
                self.recorder = Recorder(self.e.cfg.work_dir / "recordings" / name, c.audio())
                self.tail = GrowingWav(self.recorder.path)
                self._apply(self.dialog.start())
            elif now_mono - self.t0 > self.e.cfg.ring_timeout_s:
                self._hangup("no_answer")
            return False
        if now_mono - self.t0 > self.e.cfg.max_call_s:
            self._hangup("timeout")
            return False
        if self.state == "playing":
            listen = self.step.listen if self.step else None
            if listen and c.dtmf and now_mono >= self.barge_after:
                # DTMF barge-in: the caller may key an answer while the question plays (not during a notice
                # before it: that must be heard to its end)
                self._stop_player()
                self._apply(self.dialog.feed("dtmf", c.dtmf.popleft()))
            elif now_mono >= self.play_until:
                self._stop_player()
                if self.step and self.step.end:
                    self.reached_end = True  # every prompt of the path played to its end
                    self._hangup(self.step.end)
                elif listen:
                    c.dtmf.clear()
                    self._listen()
        elif self.state == "listening":
            assert self.ep and self.tail and self.step and self.step.listen
            if c.dtmf:
                self._apply(self.dialog.feed("dtmf", c.dtmf.popleft()))
                return False
            new = self.tail.read_new()
            if len(new):
                self.buf.append(new)
                self.ep.feed(frame_rms(new, self.e.cfg.sip.clock_rate))
            if self.rec is not None and (self.ep.done or (self.ep.speaking and now_mono > self.speech_deadline)):
                samples = np.concatenate(self.buf) if self.buf else np.zeros(0, dtype=np.int16)
                rate = self.e.cfg.sip.clock_rate
                n = rate * 20 // 1000
                start = max(0, (self.ep.started_at or 0) - 10) * n  # keep 200 ms of lead-in
                end = (self.ep.ended_at + 10) * n if self.ep.ended_at is not None else len(samples)
                self.asr = self.e.pool.submit(self.rec.recognise, samples[start:end], rate,
                                              self.step.listen.phrases)
                self.state = "recognising"
            elif (self.rec is None or (not self.ep.speaking and self.ep.started_at is None)) \
                    and now_mono > self.listen_deadline:  # DTMF only: speech is nothing, wait for a key
                self._apply(self.dialog.feed("silence"))
        elif self.state == "recognising":
            assert self.asr is not None
            if self.asr.done():
                try:
                    text = self.asr.result()
                except Exception:  # noqa: BLE001  a recogniser crash is a no-match, not a dead call
                    log.exception("ASR failed")
                    text = ""
                self.asr_texts.append(text)
                self.asr = None
                self._apply(self.dialog.feed("asr", text))
        return False

    def cdr(self, now: datetime) -> dict[str, Any]:
        c = self.call
        reason = self.reason
        end_node = self.end_node
        if self.answered is None:
            outcome = self.outcome if self.outcome == "no_answer" else _sip_outcome(c.status)
            status = f"{c.status} {c.reason}".strip() if c.status else None
            if self.outcome == "no_answer":  # the ring timeout ended it: the 487 only answers our CANCEL
                status = f"no answer within {self.e.cfg.ring_timeout_s:g} s" + (f" ({status})" if status else "")
            reason = reason or status
        elif self.failure is not None:
            outcome, reason = self.failure
            end_node = self.dialog.node_id
        elif self.reached_end:
            outcome = (self.step.end if self.step else None) or "completed"  # the end node's outcome
            end_node = self.dialog.node_id
        elif self.outcome is not None:  # the engine ended it: timeout, cancelled, engine_stopped, failed ...
            outcome = self.outcome
            end_node = self.dialog.node_id
            reason = reason or f"ended by the engine ({self.outcome}) at node {self.dialog.node_id}"
        else:  # the callee hung up before the dialog reached its end
            outcome = "early_hangup"
            end_node = end_node or self.dialog.node_id
            reason = reason or f"callee hung up at node {end_node}"
        return {
            "engine": self.e.engine_id, "started_at": svc.iso(self.started),
            "answered_at": svc.iso(self.answered) if self.answered else None, "ended_at": svc.iso(now),
            "sip_status": c.status, "outcome": outcome, "reason": reason, "end_node": end_node,
            "answers": self.dialog.answers,
            "asr_text": " | ".join(self.asr_texts), "transcript": self.dialog.transcript,
            "recording": None,  # set by Engine._finish once the WAV is closed and in the media store
            "duration_s": round((now - self.answered).total_seconds(), 2) if self.answered else 0.0,
        }

    def release(self) -> Path | None:
        """Stop the call's media; returns the finished recording to keep (None: none, or record=False)."""
        self._stop_player()
        path = self.recorder.path if self.recorder else None
        self.recorder = None  # dropping the pjsua2 recorder closes the WAV and fixes its header
        if path is not None and not self.e.cfg.record:
            path.unlink(missing_ok=True)
            return None
        return path


def _sip_outcome(status: int) -> str:
    if status in (486, 600):
        return "busy"
    if status in (408, 480, 487):
        return "no_answer"
    return "failed"


class Engine:
    def __init__(self, hub: Hub, cfg: EngineConfig, clock: Clock | None = None,
                 recogniser: Recogniser | Recognisers | None = None) -> None:
        self.hub = hub
        self.cfg = cfg
        self.clock: Clock = clock or (lambda: datetime.now(UTC))
        cfg.work_dir.mkdir(parents=True, exist_ok=True)
        self.engine_id, self._id_lock = resolve_engine_id(cfg.work_dir, cfg.engine_id)
        self.host, self.pid = socket.gethostname(), os.getpid()
        svc.claim_engine_id(hub, self.engine_id, self.host, self.pid)
        self.started_at = svc.iso(datetime.now(UTC))
        self.tts = Tts(cfg.work_dir / "tts-cache", cfg.sip.clock_rate, cfg.tts_wpm)
        self.asr = recogniser if isinstance(recogniser, Recognisers) else \
            Recognisers({recogniser.language: recogniser}) if recogniser is not None else \
            make_recognisers(cfg.asr_backend, cfg.asr_models, cfg.asr_min_confidence, cfg.asr_model_dir)
        self.pool = ThreadPoolExecutor(max_workers=cfg.asr_workers, thread_name_prefix="asr")
        self.sip = SipStack(cfg.sip)
        self.sessions: list[CallSession] = []
        self.next_dial: dict[int, float] = {}
        self.stats = {"dialled": 0, "cdrs": 0, "not_dialled": 0, "released": 0}
        self._last_sched = 0.0
        self._last_idle_check = 0.0
        self._last_beat = 0.0
        self._last_reg_try = time.monotonic()
        self._reg_seen: tuple[str, int, str] = ("", 0, "")
        self._capacity = 0  # calls all live engines hold together, refreshed every heartbeat
        self._live = 0  # live engines (any host), refreshed every heartbeat: calls/s is split between them
        self._capacity_warned: set[int] = set()
        log.info("engine %s: up to %d calls (pjsua2 PJSUA_MAX_CALLS), lease %g s, session expiry %s s",
                 self.engine_id, self.sip.max_calls, cfg.lease_s, cfg.sip.session_expires_s or "off")

    # --- prompts ---
    def prompt_file(self, p: Prompt, language: str, voice: str | None) -> Path:
        """The WAV to play for a prompt: its recording (checked), else the TTS of its text."""
        return audio_file(p.audio) if p.audio else self.tts.wav(p.text, language, voice)

    def preflight(self, template: Template, variables: dict[str, Any]) -> tuple[str, str] | None:
        """Synthesise every prompt this contact may hear and check every recording before dialling:
        (outcome, reason) when one cannot be played, so a broken template rings nobody. The prompts are the
        dialog's own (recordings resolved in the template's store, key hints where speech is not heard)."""
        lang, voice = template.language, template.voice
        d = Dialog(template, variables, dtmf_only=self.asr.for_language(lang) is None)
        for n in template.nodes:
            for p in d.every_prompt(n):
                if p.audio:
                    try:
                        audio_file(p.audio)
                    except AudioMissing as e:
                        name = n.audio or p.text
                        return "audio_missing", f"node {n.id}: recording {name}: {e}"
                    continue
                try:
                    self.tts.wav(p.text, lang, voice)
                except Exception as e:  # noqa: BLE001  any TTS failure means this prompt cannot be said
                    return "prompt_failed", f"node {n.id}: {type(e).__name__}: {e}"
        return None

    # --- scheduling ---
    def schedule(self) -> None:
        now = self.clock()
        if not self.sip.may_dial:
            return  # the trunk refused or has not yet accepted our registration: dial nobody on it
        for task in svc.running_tasks(self.hub):
            tid = task["id"]
            sched = task["schedule"]
            mine = sum(1 for s in self.sessions if s.task["id"] == tid)
            if sched.max_concurrent > self._capacity and tid not in self._capacity_warned and self._capacity:
                self._capacity_warned.add(tid)
                log.warning("task %s: max_concurrent %d but the live engines hold %d calls together (this one "
                            "%d: the pjsua2 wheel's PJSUA_MAX_CALLS); start more engines, --workers or "
                            "--max-workers to serve it", tid, sched.max_concurrent, self._capacity,
                            self.sip.max_calls)
            # task-wide, across engine processes: a first look to skip a full task; claim_due counts the
            # free slots again inside its claim transaction, which is what makes the limit hold
            try:
                active = svc.active_calls(self.hub, tid)
            except Exception:  # noqa: BLE001  a store hiccup skips this task for one tick
                log.exception("task %s: active call count failed", tid)
                continue
            room = min(sched.max_concurrent - active, self.sip.max_calls - len(self.sessions))
            mono = time.monotonic()
            # each of the N engine processes takes its share: N is what this engine was started with, or
            # more once more engines report (a supervisor's added workers, other hosts)
            cps = sched.calls_per_second / max(self.cfg.workers, self._live)
            allowance = self.next_dial.get(tid, mono)
            n = min(room, int((mono - allowance) * cps) + 1) if mono >= allowance else 0
            try:
                contacts = svc.claim_due(self.hub, task, now, n, self.engine_id, self.cfg.lease_s) if n > 0 else []
            except Exception:  # noqa: BLE001  nothing the store hands the engine may stop it
                log.exception("task %s: claim failed", tid)
                continue
            for contact in contacts:
                self.next_dial[tid] = max(allowance, mono - 1.0) + 1.0 / cps
                allowance = self.next_dial[tid]
                self._start(contact, task, now)
            if not contacts and mine == 0 and active == 0:
                try:
                    svc.maybe_complete(self.hub, tid, now)  # queues its task.completed webhook
                except Exception:  # noqa: BLE001
                    log.exception("task %s: completion check failed", tid)
        # Cancelled tasks: hang up their calls now; paused ones just stop taking new contacts.
        live = {s.task["id"] for s in self.sessions if not s.hangup_sent}
        statuses = svc.task_statuses(self.hub, live) if live else {}  # one query per tick, not one per call
        for s in self.sessions:
            if not s.hangup_sent and statuses.get(s.task["id"]) == "cancelled":
                s._hangup("cancelled")

    def _start(self, contact: dict[str, Any], task: dict[str, Any], now: datetime) -> None:
        """Dial a claimed contact, unless one of its prompts cannot be played (then it is not dialled)."""
        base = {"engine": self.engine_id, "started_at": svc.iso(now), "ended_at": svc.iso(now), "sip_status": 0}
        try:
            bad = self.preflight(task["template"], contact["vars"])
        except Exception as e:  # noqa: BLE001
            bad = ("prompt_failed", f"{type(e).__name__}: {e}")
        if bad is not None:
            log.warning("contact %s not dialled: %s: %s", contact["id"], *bad)
            self.stats["not_dialled"] += 1
            self._record(contact["id"], {**base, "outcome": bad[0], "reason": bad[1][:500]})
            return
        if len(self.sessions) >= self.sip.max_calls:  # never reachable (room counts it); pjsua would abort
            log.error("contact %s: engine full (%d calls)", contact["id"], self.sip.max_calls)
            self._record(contact["id"], {**base, "outcome": "failed", "reason": "engine full"})
            return
        try:
            self.sessions.append(CallSession(self, contact, task, now))
            self.stats["dialled"] += 1
        except Exception as e:  # noqa: BLE001  a bad URI/number must not stop the campaign
            reason = e.info() if hasattr(e, "info") else str(e)
            log.warning("dial failed for contact %s: %s", contact["id"], reason)
            self._record(contact["id"], {**base, "outcome": "failed", "reason": reason[:500]})

    def _record(self, contact_id: int, cdr: dict[str, Any]) -> None:
        """finish_attempt, guarded: if it raises (a stored schedule that no longer parses, a store error),
        the contact is closed as failed with the reason instead of the engine dying with every call."""
        now = self.clock()
        try:
            svc.finish_attempt(self.hub, contact_id, cdr, now)
            return
        except Exception as e:  # noqa: BLE001
            log.exception("contact %s: finishing the attempt failed", contact_id)
            cdr = {**cdr, "reason": f"{cdr.get('reason') or ''}; not finished: {type(e).__name__}: {e}"[:500]}
        try:
            svc.fail_contact(self.hub, contact_id, cdr, now)
        except Exception:  # noqa: BLE001  the lease runs out and another engine releases it
            log.exception("contact %s: could not be marked failed either", contact_id)

    def _finish(self, s: CallSession) -> None:
        now = self.clock()
        try:
            cdr = s.cdr(now)
        except Exception as e:  # noqa: BLE001
            log.exception("contact %s: CDR failed", s.contact["id"])
            cdr = {"engine": self.engine_id, "started_at": svc.iso(s.started), "ended_at": svc.iso(now),
                   "sip_status": 0, "outcome": "failed", "reason": f"CDR failed: {e}"[:500]}
        try:
            kept = s.release()
            if kept is not None:  # work_dir holds it only while the call is live: the CDR gets a media key
                cdr["recording"] = svc.store_recording(self.hub, kept, s.answered or s.started)
        except Exception:  # noqa: BLE001  a lost recording must not lose the CDR
            log.exception("contact %s: recording not kept", s.contact["id"])
        self._record(s.contact["id"], cdr)
        self.stats["cdrs"] += 1  # its contact.finished / task.completed webhooks were queued with it

    # --- heartbeat: report, renew leases, release dead engines' contacts, registration ---
    def _report(self, state: str = "running") -> None:
        reg_state, reg_status, reg_error = self.sip.registration
        svc.report_engine(self.hub, {
            "id": self.engine_id, "host": self.host, "pid": self.pid, "state": state,
            "started_at": self.started_at, "capacity": self.sip.max_calls if state == "running" else 0,
            "calls": len(self.sessions), "trunk": self.cfg.sip.registrar, "reg_state": reg_state,
            "reg_status": reg_status or None, "reg_error": reg_error or None})

    def heartbeat(self) -> None:
        reg = self.sip.registration
        if reg != self._reg_seen:
            self._reg_seen = reg
            if reg[0] == "failed":
                log.error("engine %s: trunk %s refused registration: %s; not dialling on it until it "
                          "registers", self.engine_id, self.cfg.sip.registrar, reg[2])
            elif reg[0] == "registered":
                log.warning("engine %s: registered to %s", self.engine_id, self.cfg.sip.registrar)
        mono = time.monotonic()
        if reg[0] == "failed" and mono - self._last_reg_try >= self.cfg.sip.reg_retry_s:
            self._last_reg_try = mono
            self.sip.reregister()
        for what, fn in (("report", self._report), ("leases", self._renew), ("release", self._release)):
            try:
                fn()
            except Exception:  # noqa: BLE001  a store hiccup: the next beat tries again
                log.exception("heartbeat %s failed", what)
        try:
            self._live, self._capacity = svc.live_engines(self.hub, max(svc.ENGINE_STALE_S,
                                                                         3 * self.cfg.heartbeat_s))
        except Exception:  # noqa: BLE001
            log.exception("engine capacity failed")

    def _renew(self) -> None:
        ids = [s.contact["id"] for s in self.sessions if not s.hangup_sent]
        for s in self.sessions:
            if s.contact["id"] in svc.renew_leases(self.hub, self.engine_id, ids, self.cfg.lease_s):
                log.error("contact %s: lease lost (released by another engine); hanging up", s.contact["id"])
                s._hangup("lease_lost")

    def _release(self) -> None:
        n = svc.release_lost(self.hub, self.clock(), self.engine_id)
        if n:
            self.stats["released"] += n

    def step(self) -> None:
        self.sip.poll(10)
        mono = time.monotonic()
        if mono - self._last_beat >= self.cfg.heartbeat_s:
            self._last_beat = mono
            self.heartbeat()
        if mono - self._last_sched >= 0.1:
            self._last_sched = mono
            try:
                self.schedule()
            except Exception:  # noqa: BLE001  nothing the store hands the engine may stop it
                log.exception("scheduling failed")
        for s in list(self.sessions):
            try:
                over = s.tick(mono)
            except Exception:  # noqa: BLE001  one broken call must not take the others down
                log.exception("call session failed")
                s._hangup("failed")
                over = s.call.disconnected
            if over:
                self.sessions.remove(s)
                self._finish(s)

    def idle(self) -> bool:
        if self.sessions:
            return False
        mono = time.monotonic()  # the loop turns every ~10 ms: ask the store at the scheduler's pace
        if mono - self._last_idle_check < 0.1:
            return False
        self._last_idle_check = mono
        return not svc.any_active_task(self.hub)

    def run(self, until: Callable[[], bool] | None = None, exit_when_idle: bool = False,
            max_runtime_s: float | None = None) -> None:
        t_end = time.monotonic() + max_runtime_s if max_runtime_s else None
        try:
            self.heartbeat()  # report at once: capacity and id are visible before the first call
            self._last_beat = time.monotonic()
            while True:
                self.step()
                if until and until():
                    break
                if exit_when_idle and self.idle():
                    break
                if t_end and time.monotonic() > t_end:
                    break
        finally:
            self.close()

    def _drain(self) -> None:
        for s in self.sessions:
            s._hangup("engine_stopped")
        deadline = time.monotonic() + 2
        while self.sessions and time.monotonic() < deadline:
            self.sip.poll(10)
            for s in list(self.sessions):
                if s.call.disconnected:
                    self.sessions.remove(s)
                    self._finish(s)
        for s in self.sessions:  # never confirmed a BYE: still write their CDRs
            self._finish(s)
        self.sessions.clear()

    def close(self) -> None:
        self._drain()  # in its own frame: no loop variable may keep a pjsua2 Call alive past libDestroy
        import gc

        gc.collect()
        try:
            self._report("stopped")
        except Exception:  # noqa: BLE001
            log.exception("could not report the engine stopped")
        self.sip.close()
        self.pool.shutdown(wait=True)
        self._id_lock.close()
