"""Real QR images for the scanner tests and the benchmark, drawn with `qrcode` and edited with OpenCV."""

from __future__ import annotations

import cv2
import numpy as np
import qrcode
from qrcode.constants import ERROR_CORRECT_M


def qr_gray(text: str, box: int = 4, border: int = 4) -> np.ndarray:
    qr = qrcode.QRCode(error_correction=ERROR_CORRECT_M, box_size=box, border=border)
    qr.add_data(text)
    qr.make(fit=True)
    img = qr.make_image(fill_color="black", back_color="white").convert("L")
    return np.array(img, dtype=np.uint8)


def place(canvas: np.ndarray, tile: np.ndarray, x: int, y: int) -> np.ndarray:
    h, w = tile.shape[:2]
    canvas[y:y + h, x:x + w] = tile
    return canvas


def frame_with(texts: list[str], size: tuple[int, int] = (480, 640), box: int = 4, bg: int = 200,
               noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """A grey frame with the codes side by side, optional Gaussian sensor noise."""
    h, w = size
    canvas = np.full((h, w), bg, dtype=np.uint8)
    x = 20
    for t in texts:
        tile = qr_gray(t, box=box)
        place(canvas, tile, x, max(0, (h - tile.shape[0]) // 2))
        x += tile.shape[1] + 20
    if noise:
        rng = np.random.default_rng(seed)
        canvas = np.clip(canvas.astype(np.float32) + rng.normal(0, noise, canvas.shape), 0, 255).astype(np.uint8)
    return canvas


def rotate(img: np.ndarray, degrees: float, bg: int = 255) -> np.ndarray:
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    cos, sin = abs(m[0, 0]), abs(m[0, 1])
    nw, nh = int(h * sin + w * cos), int(h * cos + w * sin)
    m[0, 2] += nw / 2 - w / 2
    m[1, 2] += nh / 2 - h / 2
    return cv2.warpAffine(img, m, (nw, nh), borderValue=bg)


def low_contrast(img: np.ndarray, lo: int = 110, hi: int = 150) -> np.ndarray:
    """Squeeze black..white into lo..hi (a faded print under bad light)."""
    return (lo + (img.astype(np.float32) / 255.0) * (hi - lo)).astype(np.uint8)
