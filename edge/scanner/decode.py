"""QR decoding for the scan terminal: pyzbar (libzbar0) or zxing-cpp, both restricted to the QR format.

Restricting the symbology is what keeps a frame cheap: a decoder that also hunts for EAN, Code128 and
PDF417 spends most of its time on frames with no QR code at all. Frames come from an image file, a
directory of images, a numpy array, or an OpenCV capture (device index, video file or stream URL).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import cv2
import numpy as np

DecoderName = Literal["pyzbar", "zxing"]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
# Below this grey-level spread a frame counts as low contrast and gets stretched before decoding.
_LOW_CONTRAST_SPREAD = 96


class DecodeError(ValueError):
    """A source that cannot be read (missing file, not an image, camera that does not open)."""


@dataclass(frozen=True)
class Decoded:
    text: str
    decoder: DecoderName
    # Corner points in pixel coordinates (for overlays / picking the code nearest the centre).
    points: tuple[tuple[int, int], ...] = ()


class Decoder(Protocol):
    name: DecoderName

    def decode(self, frame: np.ndarray, inverted: bool | None = None) -> list[Decoded]: ...


def to_gray(frame: np.ndarray) -> np.ndarray:
    """Both decoders binarize a single channel anyway; converting once here avoids doing it per decoder."""
    if frame.ndim == 2:
        gray = frame
    elif frame.ndim == 3 and frame.shape[2] == 3:
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    elif frame.ndim == 3 and frame.shape[2] == 4:
        gray = cv2.cvtColor(frame, cv2.COLOR_BGRA2GRAY)
    elif frame.ndim == 3 and frame.shape[2] == 1:
        gray = frame[:, :, 0]
    else:
        raise DecodeError(f"frame: unsupported shape {frame.shape}")
    if gray.dtype != np.uint8:
        raise DecodeError(f"frame: dtype must be uint8, got {gray.dtype}")
    return np.ascontiguousarray(gray)


def stretch_contrast(gray: np.ndarray) -> np.ndarray | None:
    """A min-max stretch when the frame uses little of the grey range (washed-out print, dim screen).

    Percentiles on a 4x-subsampled view make it robust to a few noisy pixels while staying ~0.1 ms."""
    sample = gray[::4, ::4]
    lo, hi = np.percentile(sample, (1, 99))
    if hi - lo >= _LOW_CONTRAST_SPREAD or hi - lo < 4:
        return None
    scale = 255.0 / float(hi - lo)
    return cv2.convertScaleAbs(gray, alpha=scale, beta=-float(lo) * scale)


def prepare(frame: np.ndarray) -> np.ndarray:
    """Grey, and stretched up front when washed out: one decoder pass per frame, never a retry, so a
    frame with no code costs the same as one with a code."""
    gray = to_gray(frame)
    stretched = stretch_contrast(gray)
    return gray if stretched is None else stretched


def _decode(run: Callable[[np.ndarray], list[Decoded]], frame: np.ndarray,
            inverted: bool | None) -> list[Decoded]:
    """Light-on-dark codes (dark-mode phone screens) need an inverted pass, which costs as much as the
    normal one. inverted=None (a single image): normal pass, inverted pass only if nothing was found.
    False/True: one pass as is / inverted; a live loop alternates, so an inverted code is found within two
    frames while each frame costs one pass."""
    gray = prepare(frame)
    if inverted is None:
        return _dedupe(run(gray) or run(cv2.bitwise_not(gray)))
    return _dedupe(run(cv2.bitwise_not(gray) if inverted else gray))


def _dedupe(found: list[Decoded]) -> list[Decoded]:
    seen: set[str] = set()
    out: list[Decoded] = []
    for d in found:
        if d.text not in seen:
            seen.add(d.text)
            out.append(d)
    return out


class PyzbarDecoder:
    name: DecoderName = "pyzbar"

    def __init__(self) -> None:
        from pyzbar import pyzbar

        self._pyzbar = pyzbar
        self._symbols = [pyzbar.ZBarSymbol.QRCODE]

    def _run(self, gray: np.ndarray) -> list[Decoded]:
        out = []
        for r in self._pyzbar.decode(gray, symbols=self._symbols):
            try:
                text = r.data.decode("utf-8")
            except UnicodeDecodeError:
                text = r.data.decode("latin-1")
            out.append(Decoded(text, "pyzbar", tuple((int(p.x), int(p.y)) for p in r.polygon)))
        return out

    def decode(self, frame: np.ndarray, inverted: bool | None = None) -> list[Decoded]:
        return _decode(self._run, frame, inverted)


class ZxingDecoder:
    name: DecoderName = "zxing"

    def __init__(self) -> None:
        import zxingcpp

        self._zx = zxingcpp
        self._formats = zxingcpp.BarcodeFormat.QRCode

    def _run(self, gray: np.ndarray) -> list[Decoded]:
        # try_downscale stays on: it is what finds a code that fills most of a large frame. Inversion is
        # ours (see _decode), so zxing's own try_invert pass, which doubles every frame, is off.
        results = self._zx.read_barcodes(gray, formats=self._formats, try_invert=False)
        out = []
        for r in results:
            p = r.position
            pts = ((p.top_left.x, p.top_left.y), (p.top_right.x, p.top_right.y),
                   (p.bottom_right.x, p.bottom_right.y), (p.bottom_left.x, p.bottom_left.y))
            out.append(Decoded(r.text, "zxing", pts))
        return out

    def decode(self, frame: np.ndarray, inverted: bool | None = None) -> list[Decoded]:
        return _decode(self._run, frame, inverted)


def make_decoder(name: DecoderName) -> Decoder:
    if name == "pyzbar":
        return PyzbarDecoder()
    if name == "zxing":
        return ZxingDecoder()
    raise ValueError(f"scanner.decoder: unknown decoder {name!r} (pyzbar | zxing)")


def load_image(path: Path) -> np.ndarray:
    """Read an image file as greyscale; a clear error instead of OpenCV's silent None."""
    if not path.is_file():
        raise DecodeError(f"image: {path} does not exist or is not a file")
    # imdecode on the bytes handles non-ASCII paths that imread mishandles on some platforms.
    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise DecodeError(f"image: {path} is not a readable image")
    return img


def iter_image_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise DecodeError(f"source: {directory} is not a directory")
    return sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def decode_path(decoder: Decoder, path: Path) -> list[tuple[Path, list[Decoded]]]:
    """Decode one image file, or every image in a directory (sorted by name)."""
    files = iter_image_files(path) if path.is_dir() else [path]
    return [(f, decoder.decode(load_image(f))) for f in files]


def _is_capture_source(source: str) -> bool:
    return source.isdigit() or "://" in source or Path(source).suffix.lower() in {
        ".mp4", ".avi", ".mkv", ".mov", ".mjpg", ".mjpeg", ".webm"}


def iter_frames(source: str, stop: object | None = None, max_fps: float = 15.0,
                reconnect_s: float = 2.0) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (label, frame) from a device index, stream URL / video file, image directory or image file.

    A live capture that drops is reopened after `reconnect_s` (a handheld's USB camera can brown out);
    a video file or a directory ends when exhausted. `stop` is anything with is_set() (threading.Event).
    """
    def stopped() -> bool:
        return bool(stop is not None and stop.is_set())  # type: ignore[attr-defined]

    if not _is_capture_source(source):
        path = Path(source)
        for f in iter_image_files(path) if path.is_dir() else [path]:
            if stopped():
                return
            yield str(f), load_image(f)
        return
    live = source.isdigit() or source.split("://", 1)[0].lower() in {"rtsp", "rtsps", "http", "https", "udp",
                                                                       "tcp", "rtmp"}
    period = 1.0 / max_fps if max_fps > 0 else 0.0
    while not stopped():
        cap = cv2.VideoCapture(int(source)) if source.isdigit() else cv2.VideoCapture(source)
        if not cap.isOpened():
            cap.release()
            if not live:
                raise DecodeError(f"source: cannot open {source!r}")
            if stop is not None:
                stop.wait(reconnect_s)  # type: ignore[attr-defined]
            else:
                time.sleep(reconnect_s)
            continue
        try:
            n = 0
            next_t = time.monotonic()
            while not stopped():
                ok, frame = cap.read()
                if not ok:
                    break
                if live and period:
                    # Drop frames rather than queue them: a verdict on a stale frame is useless.
                    now = time.monotonic()
                    if now < next_t:
                        continue
                    next_t = now + period
                yield f"{source}#{n}", frame
                n += 1
        finally:
            cap.release()
        if not live:
            return
