"""`citybrain edge analyse VIDEO [-c camera.yaml] [--json]`: replay a recording through one camera's pipeline.

As fast as the machine goes (no pacing), sampled at the camera's `max_fps` in clip time like the live agent,
so what an operator sees here is what the gateway would raise on that footage: every event (kind, phase,
time in the clip, score, count, boxes) and a summary (frames, fps, counts per kind). Used to tune zones
and thresholds on a recording before deploying. Exit 0 done, 2 unreadable video or bad config.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import cv2
import yaml
from pydantic import ValidationError

from edge.camera.config import CameraSection, CameraSource
from edge.camera.pipeline import CameraPipeline
from protocol.messages import Event


class UsageError(ValueError):
    pass


def load_section(path: Path | None) -> CameraSection:
    """A device config (kind: camera), a camera section, or one camera's settings (zones, max_fps, ...) with
    section settings (detectors, rules, ...) beside them."""
    if path is None:
        return CameraSection()
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, json.JSONDecodeError, yaml.YAMLError) as e:
        raise UsageError(f"{path}: {e}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: (root): expected a mapping")
    if "kind" in data:
        from edge.config import ConfigError, parse_config

        try:
            cfg = parse_config(data, str(path))
        except ConfigError as e:
            raise UsageError("; ".join(f"{path}: {err}" for err in e.errors)) from None
        if cfg.camera is None:
            raise UsageError(f"{path}: kind: this is a {cfg.kind} config, not camera")
        return cfg.camera
    if "cameras" not in data:  # one camera's settings (zones, max_fps...) beside section settings
        own = set(CameraSource.model_fields) - set(CameraSection.model_fields)
        cam = {"id": "clip", "url": "clip", **{k: v for k, v in data.items() if k in own}}
        data = {**{k: v for k, v in data.items() if k not in own}, "cameras": [cam]}
    try:
        return CameraSection.model_validate(data)
    except ValidationError as e:
        errs = [f"{path}: {'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in e.errors()]
        raise UsageError("; ".join(errs)) from None


@dataclass
class Replay:
    frames: int = 0
    analysed: int = 0
    seconds: float = 0.0  # clip time covered
    wall_s: float = 0.0
    events: list[tuple[float, Event]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        starts = Counter(e.kind for _, e in self.events if e.phase == "start")
        return {"frames": self.frames, "analysed": self.analysed, "clip_s": round(self.seconds, 2),
                "wall_s": round(self.wall_s, 3), "fps": round(self.frames / max(self.wall_s, 1e-9), 1),
                "events": len(self.events), "starts": dict(sorted(starts.items())),
                "phases": dict(sorted(Counter(e.phase for _, e in self.events).items()))}


def replay(video: str, section: CameraSection, camera: str | None = None, limit_s: float | None = None,
           on_event: Any = None) -> Replay:
    """Run the pipeline over a recorded file; `on_event(t, event)` is called as events happen."""
    cam = _camera(section, camera).model_copy(update={"url": video})
    cap = cv2.VideoCapture(video)
    if not cap.isOpened():
        raise UsageError(f"{video}: cannot open the video")
    fps = cap.get(cv2.CAP_PROP_FPS)
    fps = fps if 1 <= fps <= 240 else 25.0
    pipe = CameraPipeline(section, cam)
    out = Replay()
    min_dt, last = 1.0 / cam.max_fps, -1e18
    t0 = time.perf_counter()
    try:
        while cap.grab():  # grab every frame, decode to BGR only the ones analysed
            ts = out.frames / fps
            out.frames += 1
            if limit_s is not None and ts > limit_s:
                break
            if ts - last < min_dt * 0.999:
                continue
            ok, frame = cap.retrieve()
            if not ok:
                break
            last = ts
            out.analysed += 1
            for ev in pipe.process(frame, ts):
                out.events.append((ts, ev))
                if on_event is not None:
                    on_event(ts, ev)
    finally:
        cap.release()
    out.wall_s = time.perf_counter() - t0
    out.seconds = out.frames / fps
    if out.frames == 0:
        raise UsageError(f"{video}: no frame could be read")
    return out


def _camera(section: CameraSection, camera: str | None) -> CameraSource:
    if camera is not None:
        for c in section.cameras:
            if c.id == camera:
                return c
        raise UsageError(f"--camera: no camera {camera!r} in the config")
    return section.cameras[0] if section.cameras else CameraSource(id="clip", url="clip", realtime=False)


def event_dict(t: float, e: Event) -> dict[str, Any]:
    return {"t": round(t, 2), "kind": e.kind, "phase": e.phase, "zone": e.zone, "score": e.score,
            "count": e.count, "incident": e.incident_id, "backend": e.backend, "model_version": e.model_version,
            "boxes": [[round(b.x), round(b.y), round(b.w), round(b.h), round(b.score, 3)] for b in e.boxes]}


def _line(t: float, e: Event) -> str:
    boxes = " ".join(f"{b.x:.0f},{b.y:.0f},{b.w:.0f}x{b.h:.0f}" for b in e.boxes[:8])
    more = f" +{len(e.boxes) - 8}" if len(e.boxes) > 8 else ""
    return (f"{t:8.2f}s  {e.kind:<6} {e.phase:<6} zone={e.zone} score={e.score:.2f} count={e.count} "
            f"[{e.backend} {e.model_version}] {boxes}{more}")


def analyse_command(video: Path, config: Path | None, as_json: bool, camera: str | None = None,
                    out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr  # looked up per call (test runners swap them)
    try:
        section = load_section(config)
        if not video.is_file():
            raise UsageError(f"{video}: no such file")

        def show(t: float, e: Event) -> None:
            print(json.dumps(event_dict(t, e)) if as_json else _line(t, e), file=out, flush=True)

        r = replay(str(video), section, camera, on_event=show)
    except UsageError as e:
        print(str(e), file=err)
        return 2
    s = r.summary()
    if as_json:
        print(json.dumps({"summary": s}), file=out)
    else:
        print(f"{s['frames']} frames ({s['clip_s']} s of clip), {s['analysed']} analysed in {s['wall_s']} s "
              f"= {s['fps']} fps; {s['events']} event(s); starts per kind: "
              + (", ".join(f"{k} {n}" for k, n in s["starts"].items()) or "none"), file=out)
    return 0
