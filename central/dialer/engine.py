"""The SIP engine process (`citybrain hub dialer run`): takes due contacts of running tasks from the hub's
store, calls them with pjsua2, plays TTS prompts, records the callee, cuts each answer with an energy
endpointer, recognises it (thread pool; ASR never touches pjsua2), drives the dialog state machine and
writes one CDR per attempt. Everything pjsua2 happens on this process's main thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from central.dialer import service as svc
from central.dialer.asr import MIN_CONFIDENCE, Recogniser, Recognisers, make_recognisers
from central.dialer.audio import Endpointer, GrowingWav, frame_rms, wav_duration
from central.dialer.dialog import Dialog, Step
from central.dialer.sip import Player, Recorder, RobotCall, SipConfig, SipStack
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
    engine_id: str = "engine-1"
    workers: int = 1  # engine processes sharing the campaign (calls/s is split between them)


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
        self.play_until = 0.0
        self.recorder: Recorder | None = None
        self.tail: GrowingWav | None = None
        self.ep: Endpointer | None = None
        self.buf: list[np.ndarray] = []
        self.listen_deadline = 0.0
        self.speech_deadline = 0.0
        self.asr: Future[str] | None = None
        self.asr_texts: list[str] = []
        self.hangup_sent = False
        self.outcome: str | None = None
        uri = engine.cfg.uri_template.format(phone=contact["phone"])
        self.call: RobotCall = engine.sip.dial(uri)
        self.t0 = time.monotonic()

    # --- helpers ---
    def _play(self, step: Step) -> None:
        lang, voice = self.dialog.template.language, self.dialog.template.voice
        files = [Path(p.audio) if p.audio else self.e.tts.wav(p.text, lang, voice) for p in step.prompts]
        self._stop_player()
        self.step = step
        if files:
            self.player = Player(files, self.call.audio())
            self.play_until = time.monotonic() + sum(wav_duration(f) for f in files) + 0.15
        else:
            self.play_until = time.monotonic()
        self.state = "playing"

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

    # --- the loop body ---
    def tick(self, now_mono: float) -> bool:
        """Advance; returns True once the call is over (the CDR can be written)."""
        c = self.call
        if c.disconnected:
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
            if listen and c.dtmf:  # DTMF barge-in: the caller may key an answer before the prompt ends
                self._stop_player()
                self._apply(self.dialog.feed("dtmf", c.dtmf.popleft()))
            elif now_mono >= self.play_until:
                self._stop_player()
                if self.step and self.step.end:
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
        if self.answered is None:
            outcome = self.outcome if self.outcome == "no_answer" else _sip_outcome(c.status)
        else:
            outcome = self.dialog.outcome or self.outcome or "hangup"  # callee hung up mid-dialog
        return {
            "engine": self.e.cfg.engine_id, "started_at": svc.iso(self.started),
            "answered_at": svc.iso(self.answered) if self.answered else None, "ended_at": svc.iso(now),
            "sip_status": c.status, "outcome": outcome, "answers": self.dialog.answers,
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
        self.tts = Tts(cfg.work_dir / "tts-cache", cfg.sip.clock_rate, cfg.tts_wpm)
        self.asr = recogniser if isinstance(recogniser, Recognisers) else \
            Recognisers({recogniser.language: recogniser}) if recogniser is not None else \
            make_recognisers(cfg.asr_backend, cfg.asr_models, cfg.asr_min_confidence, cfg.asr_model_dir)
        self.pool = ThreadPoolExecutor(max_workers=cfg.asr_workers, thread_name_prefix="asr")
        self.sip = SipStack(cfg.sip)
        self.sessions: list[CallSession] = []
        self.next_dial: dict[int, float] = {}
        self.stats = {"dialled": 0, "cdrs": 0}
        self._last_sched = 0.0
        self._last_idle_check = 0.0

    def schedule(self) -> None:
        now = self.clock()
        for task in svc.running_tasks(self.hub):
            tid = task["id"]
            sched = task["schedule"]
            mine = sum(1 for s in self.sessions if s.task["id"] == tid)
            # task-wide, across engine processes: a first look to skip a full task; claim_due counts the
            # free slots again inside its claim transaction, which is what makes the limit hold
            active = svc.active_calls(self.hub, tid)
            room = min(sched.max_concurrent - active, self.sip.max_calls - len(self.sessions))
            mono = time.monotonic()
            cps = sched.calls_per_second / self.cfg.workers  # each of N engine processes takes its share
            allowance = self.next_dial.get(tid, mono)
            n = min(room, int((mono - allowance) * cps) + 1) if mono >= allowance else 0
            contacts = svc.claim_due(self.hub, task, now, n, self.cfg.engine_id) if n > 0 else []
            for contact in contacts:
                self.next_dial[tid] = max(allowance, mono - 1.0) + 1.0 / cps
                allowance = self.next_dial[tid]
                try:
                    self.sessions.append(CallSession(self, contact, task, now))
                    self.stats["dialled"] += 1
                except Exception as e:  # noqa: BLE001  a bad URI/number must not stop the campaign
                    reason = e.info() if hasattr(e, "info") else str(e)
                    log.warning("dial failed for contact %s: %s", contact["id"], reason)
                    svc.finish_attempt(self.hub, contact["id"], {
                        "engine": self.cfg.engine_id, "started_at": svc.iso(now), "ended_at": svc.iso(now),
                        "sip_status": 0, "outcome": "failed", "asr_text": reason[:200]}, now)
            if not contacts and mine == 0 and active == 0:
                svc.maybe_complete(self.hub, tid, now)  # queues its task.completed webhook
        # Cancelled tasks: hang up their calls now; paused ones just stop taking new contacts.
        live = {s.task["id"] for s in self.sessions if not s.hangup_sent}
        statuses = svc.task_statuses(self.hub, live) if live else {}  # one query per tick, not one per call
        for s in self.sessions:
            if not s.hangup_sent and statuses.get(s.task["id"]) == "cancelled":
                s._hangup("cancelled")

    def _finish(self, s: CallSession) -> None:
        now = self.clock()
        cdr = s.cdr(now)
        kept = s.release()
        if kept is not None:  # work_dir holds it only while the call is live: the CDR gets a media key
            cdr["recording"] = svc.store_recording(self.hub, kept, s.answered or s.started)
        svc.finish_attempt(self.hub, s.contact["id"], cdr, now)
        self.stats["cdrs"] += 1  # its contact.finished / task.completed webhooks were queued with it

    def step(self) -> None:
        self.sip.poll(10)
        mono = time.monotonic()
        if mono - self._last_sched >= 0.1:
            self._last_sched = mono
            self.schedule()
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
        released = svc.release_stale(self.hub, self.clock(), self.cfg.engine_id)
        if released:
            log.warning("released %d contacts left 'calling' by a previous engine", released)
        t_end = time.monotonic() + max_runtime_s if max_runtime_s else None
        try:
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
        self.sip.close()
        self.pool.shutdown(wait=True)

