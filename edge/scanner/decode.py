"""QR decoding for the scan terminal: zxing-cpp (default) or pyzbar (libzbar0), both restricted to QR.

Restricting the symbology is what keeps a frame cheap: a decoder that also hunts for EAN, Code128 and
PDF417 spends most of its time on frames with no QR code at all. Frames come from an image file, a
directory of images, a numpy array, or an OpenCV capture (device index, video file or stream URL).

Per frame (and polarity) the decoder runs a short chain and stops at the first pass that finds a code:
the plain grey frame with zxing's default (local-average) binarizer; only if that failed, zxing's two
other binarizers (global histogram, fixed threshold), which recover tilted, blurred and glared frames
the local one misses; last, for a washed-out frame only, a contrast stretch. The stretch used to run on
every low-spread frame up front, which wrecked small codes on plain backgrounds (the frame's percentiles
are the background's, so the stretch amplified its noise to full range).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import cv2
import numpy as np

log = logging.getLogger(__name__)
DecoderName = Literal["pyzbar", "zxing"]
DEFAULT_DECODER: DecoderName = "zxing"
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
    """A min-max stretch when the whole frame uses little of the grey range (washed-out print, dim screen),
    else None. The range is the min/max of a blurred 4x-subsampled view: blurring drops single noisy pixels,
    and unlike percentiles the extremes keep a small code's dark modules inside the range (~0.2 ms)."""
    sample = cv2.blur(gray[::4, ::4], (3, 3))
    lo, hi = int(sample.min()), int(sample.max())
    if hi - lo >= _LOW_CONTRAST_SPREAD or hi - lo < 4:
        return None
    scale = 255.0 / float(hi - lo)
    return cv2.convertScaleAbs(gray, alpha=scale, beta=-float(lo) * scale)


def prepare(frame: np.ndarray) -> np.ndarray:
    """The grey frame every pass starts from (no stretch: see the module docstring)."""
    return to_gray(frame)


Pass = Callable[[np.ndarray], list[Decoded]]


def _chain(passes: list[Pass], gray: np.ndarray) -> list[Decoded]:
    """First pass that finds anything wins; the washed-out stretch runs last and only when needed."""
    for run in passes:
        found = run(gray)
        if found:
            return found
    stretched = stretch_contrast(gray)
    return passes[0](stretched) if stretched is not None else []


def _decode(passes: list[Pass], frame: np.ndarray, inverted: bool | None) -> list[Decoded]:
    """Light-on-dark codes (dark-mode phone screens) need an inverted pass, which costs as much as the
    normal one. inverted=None (a single image): normal chain, inverted chain only if nothing was found.
    False/True: one chain as is / inverted; a live loop alternates, so an inverted code is found within two
    frames while each frame costs one chain (one pass when the code reads at once)."""
    gray = prepare(frame)
    if inverted is None:
        return _dedupe(_chain(passes, gray) or _chain(passes, cv2.bitwise_not(gray)))
    return _dedupe(_chain(passes, cv2.bitwise_not(gray) if inverted else gray))


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
        return _decode([self._run], frame, inverted)


class ZxingDecoder:
    name: DecoderName = "zxing"

    def __init__(self, fallbacks: bool = True) -> None:
        import zxingcpp

        self._zx = zxingcpp
        self._formats = zxingcpp.BarcodeFormat.QRCode
        b = zxingcpp.Binarizer
        binarizers = [b.LocalAverage, b.GlobalHistogram, b.FixedThreshold] if fallbacks else [b.LocalAverage]
        self._passes: list[Pass] = [lambda g, bz=bz: self._run(g, bz) for bz in binarizers]

    def _run(self, gray: np.ndarray, binarizer: object) -> list[Decoded]:
        # try_downscale stays on: it is what finds a code that fills most of a large frame. Inversion is
        # ours (see _decode), so zxing's own try_invert pass, which doubles every frame, is off.
        results = self._zx.read_barcodes(gray, formats=self._formats, try_invert=False, binarizer=binarizer)
        out = []
        for r in results:
            p = r.position
            pts = ((p.top_left.x, p.top_left.y), (p.top_right.x, p.top_right.y),
                   (p.bottom_right.x, p.bottom_right.y), (p.bottom_left.x, p.bottom_left.y))
            out.append(Decoded(r.text, "zxing", pts))
        return out

    def decode(self, frame: np.ndarray, inverted: bool | None = None) -> list[Decoded]:
        return _decode(self._passes, frame, inverted)


def make_decoder(name: DecoderName = DEFAULT_DECODER, fallbacks: bool = True) -> Decoder:
    """`fallbacks`: zxing's other binarizers on frames its default one failed (off only to measure)."""
    if name == "pyzbar":
        return PyzbarDecoder()
    if name == "zxing":
        return ZxingDecoder(fallbacks)
    raise ValueError(f"scanner.decoder: unknown decoder {name!r} (pyzbar | zxing)")


class UnreadableImage(DecodeError):
    """An image file that exists but cannot be decoded (empty, truncated, not an image)."""


def load_image(path: Path) -> np.ndarray:
    """Read an image file as greyscale. Every failure is a DecodeError naming the file (UnreadableImage when
    the file is there but is no image): never OpenCV's silent None or its `!buf.empty()` exception."""
    if not path.is_file():
        raise DecodeError(f"image: {path} does not exist or is not a file")
    # imdecode on the bytes handles non-ASCII paths that imread mishandles on some platforms.
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as e:
        raise UnreadableImage(f"image: {path} cannot be read ({e.strerror or e})") from None
    if data.size == 0:
        raise UnreadableImage(f"image: {path} is empty (0 bytes)")
    try:
        img = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE)
    except cv2.error as e:  # OpenCV raises for some malformed inputs instead of returning None
        detail = str(e).strip().splitlines()[-1][:80]
        raise UnreadableImage(f"image: {path} is not a readable image ({detail})") from None
    if img is None or img.size == 0:
        raise UnreadableImage(f"image: {path} is not a readable image")
    return img


def iter_image_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise DecodeError(f"source: {directory} is not a directory")
    return sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def decode_file(decoder: Decoder, path: Path) -> list[Decoded]:
    """Decode one image file; any failure to read or decode it is an UnreadableImage naming the file (a
    decoder crashing on a crafted image must not take the terminal down)."""
    img = load_image(path)
    try:
        return decoder.decode(img)
    except DecodeError as e:
        raise UnreadableImage(f"image: {path}: {e}") from None
    except Exception as e:  # noqa: BLE001 - a native decoder's error on one input: report it, go on
        raise UnreadableImage(f"image: {path}: decoder failed ({type(e).__name__}: {str(e)[:80]})") from None


def decode_path(decoder: Decoder, path: Path) -> list[tuple[Path, list[Decoded] | DecodeError]]:
    """Decode one image file, or every image in a directory (sorted by name). A file that cannot be read
    gets its error in place of its codes, so one bad image never hides the others. A missing path (or a
    directory that cannot be listed) raises DecodeError."""
    if path.is_dir():
        files = iter_image_files(path)
    elif path.is_file():
        files = [path]
    else:
        raise DecodeError(f"image: {path} does not exist or is not a file")
    out: list[tuple[Path, list[Decoded] | DecodeError]] = []
    for f in files:
        try:
            out.append((f, decode_file(decoder, f)))
        except DecodeError as e:
            out.append((f, e))
    return out


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
            try:
                img = load_image(f)
            except UnreadableImage as e:
                if not path.is_dir():
                    raise
                log.warning("skipping %s", e)  # one bad file in a directory of frames: keep the others
                continue
            yield str(f), img
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
