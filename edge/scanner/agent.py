"""The scan-terminal loop: trust sync over MQTT, scanning from the configured source, scan log batches.

- Trust sync: subscribes to the retained `city/v1/trust` and `city/v1/revocations`; each arrival goes
  through the trust store (signed by the pinned root and newer, else refused and counted).
- Scanning: frames from a camera index / stream URL / video file, or a watched image directory (a
  handheld that drops captures there); every code found gets an offline verdict, and every dropped file
  that is no image (empty, truncated) gets an `unreadable` verdict with the reason: one bad input never
  stops the terminal.
- Scan log: every verdict becomes a ScanRecord; records are batched (size or age) into ScanBatch
  messages on the link's durable outbox, so scans made offline reach the hub once the broker is back.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edge.config import DeviceConfig
from edge.link import Link
from edge.scanner.decode import DecodeError, Decoder, decode_file, iter_frames, make_decoder
from edge.scanner.verify import Result, Verifier, data_dir_for
from protocol import topics
from protocol.messages import ScanBatch, ScanRecord

log = logging.getLogger("citybrain.edge.scanner")
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}


class ScannerAgent:
    """Everything the terminal does, minus the frame loop (so tests and a UI can feed it directly)."""

    def __init__(self, cfg: DeviceConfig, link: Link, verifier: Verifier | None = None,
                 on_result: Callable[[Result], None] | None = None) -> None:
        if cfg.scanner is None:
            raise ValueError("scanner: section missing from the device config")
        self.cfg = cfg
        self.section = cfg.scanner
        self.link = link
        self.verifier = verifier or Verifier.from_config(self.section, data_dir_for(cfg))
        self.decoder: Decoder = make_decoder(self.section.decoder)
        self.on_result = on_result
        self._lock = threading.Lock()
        self._pending: list[ScanRecord] = []
        self._pending_since = 0.0
        self._recent: dict[str, float] = {}
        self._frame_no = 0
        self._lists: queue.Queue[tuple[str, bytes] | None] = queue.Queue()
        self.counts: dict[str, int] = {}
        self.batches_sent = 0
        self.frames_failed = 0  # live frames a decoder raised on (counted, not logged as scans)

    # -- trust sync -------------------------------------------------------------------------------
    def subscribe(self) -> None:
        store = self.verifier.store
        self.link.subscribe(topics.TRUST, lambda raw: self._enqueue_list("trust", raw))
        self.link.subscribe(topics.REVOCATIONS, lambda raw: self._enqueue_list("revocations", raw))
        self.link.stats_provider = self.stats
        threading.Thread(target=self._apply_loop, name="scanner-trust", daemon=True).start()
        log.info("trust store: trust v%s, revocations v%s", store.trust_version, store.revocation_version)

    def _enqueue_list(self, kind: str, raw: bytes) -> None:
        # Runs on paho's network thread: a million-serial list takes seconds to check and index, so hand it
        # to the applier thread. Every arrival is applied in order (each refusal is counted and reported).
        self._lists.put((kind, raw))

    def _apply_loop(self) -> None:
        while True:
            item = self._lists.get()
            if item is None:
                return
            kind, raw = item
            ok, _ = self.verifier.store.apply_bytes(kind, raw)  # type: ignore[arg-type]
            if ok:
                log.info("%s list applied: %s", kind, self.stats())

    def stats(self) -> dict[str, int | float | str | None]:
        s = self.verifier.store.stats()
        s.update({f"scans_{k.replace('-', '_')}": v for k, v in dict(self.counts).items()})
        s["scan_batches"] = self.batches_sent
        if self.frames_failed:
            s["frames_failed"] = self.frames_failed
        return s

    # -- scanning ---------------------------------------------------------------------------------
    def handle_text(self, text: str, now: float | None = None) -> Result:
        """Verify one scanned payload and log it."""
        t = time.time() if now is None else now
        return self._log(self.verifier.verify(text, t))

    def handle_unreadable(self, reason: str) -> Result:
        """An input that could not be read at all (a file that is no image): its own verdict in the log."""
        return self._log(Result("unreadable", reason))

    def _log(self, res: Result) -> Result:
        self.counts[res.verdict] = self.counts.get(res.verdict, 0) + 1
        log.info("scan %s: %s (%s)", res.serial or "-", res.verdict, res.reason)
        with self._lock:
            if not self._pending:
                self._pending_since = time.monotonic()
            self._pending.append(res.record(self.section.location))
            full = len(self._pending) >= self.section.batch_max
        if full:
            self.flush()
        if self.on_result is not None:
            self.on_result(res)
        return res

    def handle_frame(self, frame: np.ndarray) -> list[Result]:
        """Decode a frame and verify each code not already seen within the repeat window."""
        now = time.monotonic()
        window = self.section.repeat_window_s
        out = []
        self._frame_no += 1
        # Alternate normal / inverted passes: one decoder chain per frame (see decode._decode).
        try:
            found = self.decoder.decode(frame, inverted=bool(self._frame_no % 2 == 0))
        except Exception as e:  # noqa: BLE001 - one bad frame (odd shape, decoder error) must not end the loop
            self.frames_failed += 1
            log.warning("frame %d not decodable: %s", self._frame_no, e)
            return out
        for d in found:
            last = self._recent.get(d.text)
            self._recent[d.text] = now
            if last is not None and now - last < window:
                continue  # the same code still held in front of the camera
            out.append(self.handle_text(d.text))
        if len(self._recent) > 1000:
            self._recent = {k: v for k, v in self._recent.items() if now - v < window}
        return out

    def flush(self, force: bool = True) -> int:
        """Move pending records to the outbox as one batch (if forced, full, or old enough)."""
        with self._lock:
            if not self._pending:
                return 0
            if not force and time.monotonic() - self._pending_since < self.section.batch_interval_s:
                return 0
            records, self._pending = self._pending, []
        self.link.publish_scan_batch(ScanBatch(records=records))
        self.batches_sent += 1
        return len(records)

    def close(self) -> None:
        self._lists.put(None)
        self.flush()
        self.verifier.close()


def _watch_directory(agent: ScannerAgent, directory: Path, stop: threading.Event, poll_s: float = 0.2,
                     settle_s: float = 1.0) -> None:
    """Verify each new image dropped into `directory` once, then move it to `directory/done/` so a restart
    does not log it again (if the move fails, e.g. a read-only mount, remember it in memory instead).

    A file that cannot be read is retried while it may still be being written (modified less than
    `settle_s` ago), then gets an `unreadable` verdict and is moved aside like any other."""
    done_dir = directory / "done"
    seen: set[tuple[str, int, int]] = set()
    while not stop.is_set():
        try:
            entries = sorted(directory.iterdir())
        except OSError as e:  # the mount went away: keep the terminal up and look again
            log.error("scanner.source: %s", e)
            entries = []
        for p in entries:
            if stop.is_set():
                break
            try:
                if p.suffix.lower() not in _IMAGE_SUFFIXES or not p.is_file():
                    continue
                st = p.stat()
            except OSError:
                continue
            key = (p.name, st.st_mtime_ns, st.st_size)
            if key in seen or time.time() - st.st_mtime < 0.05:  # skip a file still being written
                continue
            try:
                found = decode_file(agent.decoder, p)
            except DecodeError as e:
                if time.time() - st.st_mtime < settle_s:
                    continue  # maybe half-written: look again on a later poll
                agent.handle_unreadable(str(e))
                found = []
            try:
                for d in found:
                    agent.handle_text(d.text)
            except Exception:  # noqa: BLE001 - e.g. a full disk under the replay db: log, keep scanning
                log.exception("verifying codes of %s failed", p)
            try:
                done_dir.mkdir(exist_ok=True)
                p.replace(done_dir / p.name)
            except OSError:
                seen.add(key)
        agent.flush(force=False)
        stop.wait(poll_s)


def run(cfg: DeviceConfig, link: Link, stop: threading.Event) -> None:
    """Run the terminal until `stop` is set (edge.agent.run_agent calls this with a started link)."""
    if cfg.scanner is None or cfg.scanner.city_root_key is None:
        # Without the pinned root nothing can be verified. Stay online and say why in every heartbeat,
        # so the hub shows a misprovisioned terminal instead of a silent crash loop.
        msg = "scanner.city_root_key: not configured; cannot verify codes"
        log.error(msg)
        link.heartbeat_extra["scanner_error"] = msg
        stop.wait()
        return
    agent = ScannerAgent(cfg, link)
    agent.subscribe()
    source = agent.section.source
    try:
        try:
            if source is not None and Path(source).is_dir():
                _watch_directory(agent, Path(source), stop)
            elif source is not None:
                for _, frame in iter_frames(source, stop, max_fps=agent.section.max_fps):
                    agent.handle_frame(frame)
                    agent.flush(force=False)
        except DecodeError as e:
            log.error("scanner.source: %s", e)  # keep syncing trust: the terminal is still of use
        # No source (codes arrive via handle_text from a UI/keyboard wedge) or a finished video file:
        # keep syncing trust and flushing the log until told to stop.
        while not stop.wait(min(0.5, agent.section.batch_interval_s)):
            agent.flush(force=False)
    finally:
        agent.close()
