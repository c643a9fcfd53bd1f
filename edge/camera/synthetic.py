"""Synthetic street scenes for tests, the benchmark and demos (`url: "synthetic:fire"`): no assets needed.

Each scenario is a deterministic function of (frame index, fps): a textured street with a tint, plus the
phenomenon: a flickering fire-coloured region, a grey smoke plume that spreads, an object left on the
ground, a group of pedestrians gathering, or a global lighting change (the classic false alarm).
"""

from __future__ import annotations

from collections.abc import Iterator

import cv2
import numpy as np

SCENARIOS = ("empty", "lighting", "fire", "smoke", "litter", "crowd", "orange_sign", "walkers")


def street(w: int = 1280, h: int = 720, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 3] = (170, 150, 120)  # buildings band
    for i in range(12):  # facade blocks
        x0 = int(i * w / 12)
        c = tuple(int(v) for v in rng.integers(60, 160, 3))
        cv2.rectangle(img, (x0 + 4, 20), (x0 + int(w / 12) - 4, h // 3), c, -1)
        for wy in range(40, h // 3 - 20, 40):
            cv2.rectangle(img, (x0 + 15, wy), (x0 + 35, wy + 20), (60, 60, 70), -1)
    img[h // 3 :] = (95, 95, 98)  # asphalt
    for x in range(0, w, 160):  # lane dashes
        cv2.rectangle(img, (x, int(h * 0.62)), (x + 80, int(h * 0.62) + 8), (230, 230, 230), -1)
    noise = rng.normal(0, 4, (h, w, 3))
    return np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)


def _person(img: np.ndarray, x: int, y: int, hgt: int, phase: float, colour: tuple[int, int, int]) -> None:
    """A pedestrian silhouette with feet at (x, y): head, torso, arms and swinging legs."""
    hw = max(2, hgt // 8)
    cv2.circle(img, (x, y - hgt + hw), hw, (60, 80, 110), -1)
    cv2.rectangle(img, (x - hw, y - hgt + 2 * hw), (x + hw, y - hgt // 2), colour, -1)
    sw = int(np.sin(phase) * hw)
    cv2.line(img, (x - hw, y - hgt + 2 * hw), (x - hw - sw // 2, y - hgt // 2), colour, max(2, hw // 2))
    cv2.line(img, (x + hw, y - hgt + 2 * hw), (x + hw + sw // 2, y - hgt // 2), colour, max(2, hw // 2))
    leg = (40, 40, 50)
    cv2.line(img, (x - hw // 2, y - hgt // 2), (x - hw // 2 - sw, y), leg, max(2, hw // 2 + 1))
    cv2.line(img, (x + hw // 2, y - hgt // 2), (x + hw // 2 + sw, y), leg, max(2, hw // 2 + 1))


def frame(scenario: str, i: int, fps: float = 25.0, w: int = 1280, h: int = 720,
          base: np.ndarray | None = None) -> np.ndarray:
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario: {scenario!r} is not one of {', '.join(SCENARIOS)}")
    t = i / fps
    img = (base if base is not None else street(w, h)).copy()
    rng = np.random.default_rng(1000 + i)
    sx, sy = w / 1280, h / 720
    if scenario == "lighting":
        # Dusk/auto-exposure: brightness swings 100% -> 55% -> 100% over 8 s.
        g = 0.775 + 0.225 * np.cos(2 * np.pi * t / 8.0)
        img = np.clip(img.astype(np.float32) * g, 0, 255).astype(np.uint8)
    elif scenario == "fire" and t >= 1.0:
        cx, cy = int(900 * sx), int(520 * sy)
        for _ in range(14):  # flames: random flickering blobs of yellow/orange
            dx, dy = rng.integers(-45, 45), rng.integers(-70, 10)
            r = int(rng.integers(10, 28) * sx)
            col = (int(rng.integers(0, 60)), int(rng.integers(120, 220)), 255)
            cv2.circle(img, (cx + int(dx * sx), cy + int(dy * sy)), r, col, -1)
    elif scenario == "orange_sign":
        cv2.rectangle(img, (int(880 * sx), int(440 * sy)), (int(980 * sx), int(540 * sy)), (20, 140, 250), -1)
    elif scenario == "smoke" and t >= 1.0:
        # A grey plume growing from a point for 12 s, semi-transparent.
        grow = min(t - 1.0, 12.0) / 12.0
        rx, ry = int((30 + 170 * grow) * sx), int((25 + 120 * grow) * sy)
        overlay = img.copy()
        cv2.ellipse(overlay, (int(400 * sx), int(330 * sy)), (rx, ry), 0, 0, 360, (175, 175, 178), -1)
        img = cv2.addWeighted(overlay, 0.75, img, 0.25, 0)
    elif scenario == "litter" and t >= 2.0:
        # A bag dropped at t=2 s that stays; a walker passes by to show motion does not confuse it.
        cv2.ellipse(img, (int(640 * sx), int(600 * sy)), (int(26 * sx), int(18 * sy)), 0, 0, 360,
                    (140, 40, 30), -1)
    if scenario in ("crowd", "walkers"):
        n = 8 if scenario == "crowd" else 2
        for k in range(n):
            # Crowd: people walk in and then mill around the square; walkers just cross the frame.
            if scenario == "crowd":
                gx = 180 + (k % 4) * 260 + int(12 * np.sin(t * 1.3 + k))
                gy = 470 + (k // 4) * 230
                x = int(gx * min(1.0, t / 2.0) + (-60) * (1 - min(1.0, t / 2.0)))
            else:
                x = int((k * 400 + t * 120) % 1400) - 60
                gy = 650
            _person(img, int(x * sx), int(gy * sy), int(230 * sy), t * 6 + k, (int(90 + 15 * k) % 200, 70, 60))
    return img


def clip(scenario: str, seconds: float, fps: float = 25.0, w: int = 1280, h: int = 720
         ) -> Iterator[tuple[float, np.ndarray]]:
    base = street(w, h)
    for i in range(int(seconds * fps)):
        yield i / fps, frame(scenario, i, fps, w, h, base)


def write_video(path: str, scenario: str, seconds: float, fps: float = 25.0, w: int = 640, h: int = 360,
                fourcc: str = "MJPG") -> str:
    vw = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    if not vw.isOpened():
        raise RuntimeError(f"cannot open VideoWriter for {path} ({fourcc})")
    for _, f in clip(scenario, seconds, fps, w, h):
        vw.write(f)
    vw.release()
    return path
