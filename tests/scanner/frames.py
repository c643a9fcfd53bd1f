"""Camera-like 1280x720 frames of a city code for decoder tests and bench/scanner_decode.py: a printed QR
(error-correction level M or Q) placed on a plain or cluttered background, then tilted (perspective),
blurred (motion), glared, occluded, shrunk, darkened and JPEG-compressed, all from one seeded RNG."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import qrcode
from qrcode.constants import ERROR_CORRECT_M, ERROR_CORRECT_Q

W, H = 1280, 720
CONDITIONS = ("clean", "tilt", "blur", "glare", "occlusion", "small", "lowlight")


def qr_tile(text: str, level: str = "Q", box: int = 8) -> np.ndarray:
    """The printed code, quiet zone included (what the hub renders, before scaling)."""
    qr = qrcode.QRCode(error_correction=ERROR_CORRECT_Q if level == "Q" else ERROR_CORRECT_M, box_size=box, border=4)
    qr.add_data(text, optimize=20)
    qr.make(fit=True)
    return np.array(qr.make_image(fill_color="black", back_color="white").convert("L"), dtype=np.uint8)


@dataclass(frozen=True)
class Shot:
    condition: str
    seed: int
    frame: np.ndarray
    code_box: tuple[int, int, int, int]  # x, y, w, h of the code's symbol area in the frame (before tilt)


def _background(rng: np.random.Generator, plain: bool) -> np.ndarray:
    if plain:
        return np.full((H, W), int(rng.integers(150, 215)), np.uint8)
    bg = rng.integers(60, 200, (H // 40 + 1, W // 40 + 1)).astype(np.uint8)
    bg = cv2.resize(bg, (W, H), interpolation=cv2.INTER_NEAREST)
    for _ in range(12):  # clutter: text-like bars and boxes
        x, y = int(rng.integers(0, W - 100)), int(rng.integers(0, H - 40))
        cv2.rectangle(bg, (x, y), (x + int(rng.integers(20, 200)), y + int(rng.integers(4, 40))),
                      int(rng.integers(0, 255)), -1)
    return bg


def shot(text: str, condition: str, seed: int, level: str = "Q", severity: float = 1.0,
         side_px: int | None = None, printed: np.ndarray | None = None) -> Shot:
    """One frame. `severity` scales the condition (1.0: the strength the issue's figures were measured at);
    `side_px` forces the printed code's side (quiet zone included) in pixels; `printed` is the code's
    image as rendered elsewhere (e.g. the hub's PNG) instead of one made here."""
    rng = np.random.default_rng(seed * 7919 + CONDITIONS.index(condition))
    tile = qr_tile(text, level) if printed is None else printed
    # "small": a code spanning 14 % of the frame's height (100 px, ~1.5 px per module) on a plain
    # background, where a frame-wide percentile stretch amplifies only the background's noise.
    side = int(H * 0.14) if condition == "small" else min(int(H * float(rng.uniform(0.5, 0.67))), H - 40)
    side = side_px or side
    tile = cv2.resize(tile, (side, side), interpolation=cv2.INTER_AREA)
    frame = _background(rng, plain=condition in ("small", "clean"))
    x, y = int(rng.integers(20, W - side - 20)), int(rng.integers(20, H - side - 20))
    frame[y:y + side, x:x + side] = tile
    box = (x, y, side, side)
    if condition == "tilt":  # the code turned ~45 degrees away from the camera plus some roll
        k = 0.5 * severity
        src = np.float32([[x, y], [x + side, y], [x + side, y + side], [x, y + side]])
        sh = side * k / 2
        dst = np.float32([[x, y + sh * 0.4], [x + side * (1 - k / 2), y], [x + side * (1 - k / 2), y + side],
                          [x, y + side - sh * 0.4]])
        m = cv2.getPerspectiveTransform(src, dst)
        roll = cv2.getRotationMatrix2D((x + side / 2, y + side / 2), float(rng.uniform(-20, 20)), 1.0)
        m = np.vstack([roll, [0, 0, 1]]) @ m
        frame = cv2.warpPerspective(frame, m, (W, H), borderValue=int(frame[0, 0]))
    elif condition == "blur":  # hand or walking motion: a 9 px line kernel at a random angle
        n = max(3, int(round(9 * severity)))
        kern = np.zeros((n, n), np.float32)
        kern[n // 2, :] = 1.0 / n
        kern = cv2.warpAffine(kern, cv2.getRotationMatrix2D((n / 2 - 0.5, n / 2 - 0.5),
                                                            float(rng.uniform(0, 180)), 1.0), (n, n))
        frame = cv2.filter2D(frame, -1, kern / max(kern.sum(), 1e-6))
    elif condition == "glare":  # a specular blob saturating part of the symbol (laminated door plate)
        cx, cy = x + int(rng.uniform(0.25, 0.75) * side), y + int(rng.uniform(0.25, 0.75) * side)
        r = int(side * 0.20 * severity)
        yy, xx = np.mgrid[0:H, 0:W]
        d2 = ((xx - cx) ** 2 + (yy - cy) ** 2) / float(r * r)
        glow = np.clip(1.4 - d2, 0, 1) ** 0.7
        frame = np.clip(frame.astype(np.float32) + glow * 255, 0, 255).astype(np.uint8)
    elif condition == "occlusion":  # a finger, a sticker or a crack over ~12 % of the symbol
        frac_area = 0.12 * severity
        ow = int(side * float(rng.uniform(0.25, 0.45)))
        oh = int(side * side * frac_area / ow)
        ox = x + int(rng.integers(side // 8, max(side // 8 + 1, side - ow - side // 8)))
        oy = y + int(rng.integers(side // 8, max(side // 8 + 1, side - oh - side // 8)))
        cv2.rectangle(frame, (ox, oy), (ox + ow, oy + oh), int(rng.integers(40, 120)), -1)
    elif condition == "lowlight":  # dusk: grey levels squeezed into ~20..80 with sensor noise
        frame = (20 + frame.astype(np.float32) * float(rng.uniform(0.2, 0.25)) * severity).astype(np.float32)
        frame = frame + rng.normal(0, 3, frame.shape)
        frame = np.clip(frame, 0, 255).astype(np.uint8)
    if condition != "lowlight":
        frame = np.clip(frame.astype(np.float32) + rng.normal(0, 2.5, frame.shape), 0, 255).astype(np.uint8)
    ok, jpg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(60, 90))])
    assert ok
    return Shot(condition, seed, cv2.imdecode(jpg, cv2.IMREAD_GRAYSCALE), box)
