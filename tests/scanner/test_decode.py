"""Decoding real PNG files made with `qrcode`: rotation, low contrast, two codes, a blank frame, with both
decoders restricted to QR; plus directories and an OpenCV capture of a video file."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.scanner.decode import DecodeError, decode_path, iter_frames, load_image, make_decoder
from tests.scanner.helpers import City
from tests.scanner.images import frame_with, low_contrast, qr_gray, rotate

DECODERS = ["pyzbar", "zxing"]


@pytest.fixture(scope="module")
def texts() -> list[str]:
    city = City()
    return [city.code().text, city.code(attribute="DH1").text]


def save(path: Path, img: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), img)
    return path


@pytest.mark.parametrize("name", DECODERS)
@pytest.mark.parametrize("degrees", [0, 30, 90, 135])
def test_rotated(name: str, degrees: int, texts: list[str], tmp_path: Path) -> None:
    p = save(tmp_path / "rot.png", rotate(qr_gray(texts[0]), degrees))
    [(_, found)] = decode_path(make_decoder(name), p)
    assert [d.text for d in found] == [texts[0]]


@pytest.mark.parametrize("name", DECODERS)
def test_low_contrast(name: str, texts: list[str], tmp_path: Path) -> None:
    # Black..white squeezed into 120..140 with sensor noise: zxing alone fails without the stretch.
    img = low_contrast(frame_with([texts[0]], noise=2.0), 120, 140)
    assert float(img.max()) - float(img.min()) < 40
    p = save(tmp_path / "faint.png", img)
    [(_, found)] = decode_path(make_decoder(name), p)
    assert [d.text for d in found] == [texts[0]]


@pytest.mark.parametrize("name", DECODERS)
def test_two_codes_in_one_frame(name: str, texts: list[str], tmp_path: Path) -> None:
    p = save(tmp_path / "two.png", frame_with(texts, size=(480, 800), box=3, noise=4))
    [(_, found)] = decode_path(make_decoder(name), p)
    assert sorted(d.text for d in found) == sorted(texts)
    assert all(len(d.points) >= 4 for d in found)


@pytest.mark.parametrize("name", DECODERS)
def test_blank_and_noise_frames_have_none(name: str, tmp_path: Path) -> None:
    dec = make_decoder(name)
    assert dec.decode(np.full((480, 640), 255, np.uint8)) == []
    assert dec.decode(frame_with([], noise=20)) == []


def test_colour_frame_and_directory(texts: list[str], tmp_path: Path) -> None:
    d = tmp_path / "imgs"
    d.mkdir()
    save(d / "a.png", cv2.cvtColor(qr_gray(texts[0]), cv2.COLOR_GRAY2BGR))
    save(d / "b.jpg", frame_with([texts[1]]))
    save(d / "c.png", frame_with([]))
    (d / "notes.txt").write_text("not an image")
    res = decode_path(make_decoder("zxing"), d)
    assert [(p.name, [x.text for x in f]) for p, f in res] == [("a.png", [texts[0]]), ("b.jpg", [texts[1]]),
                                                               ("c.png", [])]


def test_bad_sources_raise_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DecodeError, match="does not exist"):
        load_image(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DecodeError, match="not a readable image"):
        load_image(tmp_path / "bad.png")
    with pytest.raises(ValueError, match="scanner.decoder"):
        make_decoder("zbar")  # type: ignore[arg-type]
    with pytest.raises(DecodeError, match="cannot open"):
        list(iter_frames(str(tmp_path / "missing.avi")))


def test_video_capture_source(texts: list[str], tmp_path: Path) -> None:
    """The OpenCV capture path (same as a device index / stream URL) on a real MJPG video file."""
    path = tmp_path / "clip.avi"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (640, 480))
    assert w.isOpened()
    for i in range(6):
        frame = frame_with([texts[0]] if i >= 3 else [], noise=3)
        w.write(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
    w.release()
    dec = make_decoder("zxing")
    found = [[d.text for d in dec.decode(f)] for _, f in iter_frames(str(path))]
    assert found == [[], [], [], [texts[0]], [texts[0]], [texts[0]]]


@pytest.mark.parametrize("name", DECODERS)
def test_inverted_code(name: str, texts: list[str], tmp_path: Path) -> None:
    """Light-on-dark (a dark-mode phone screen): found by a single-image decode and by the inverted pass
    a live loop runs on every other frame, not by the plain pass."""
    img = cv2.bitwise_not(frame_with([texts[0]], noise=3))
    dec = make_decoder(name)
    [(_, found)] = decode_path(dec, save(tmp_path / "inv.png", img))
    assert [d.text for d in found] == [texts[0]]
    assert [d.text for d in dec.decode(img, inverted=True)] == [texts[0]]
    assert dec.decode(img, inverted=False) == []


def test_stream_url_source(texts: list[str], tmp_path: Path) -> None:
    """A stream URL (HTTP, served from loopback) through OpenCV/FFmpeg; a live source is reopened when it
    ends, so the loop runs until stop is set."""
    import functools
    import http.server
    import threading

    from central.broker import free_port

    path = tmp_path / "cam.avi"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (640, 480))
    for _ in range(4):
        w.write(cv2.cvtColor(frame_with([texts[1]], noise=3), cv2.COLOR_GRAY2BGR))
    w.release()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    stop = threading.Event()
    dec = make_decoder("pyzbar")
    seen, frames = [], 0
    try:
        for _, frame in iter_frames(f"http://127.0.0.1:{srv.server_address[1]}/cam.avi", stop, max_fps=1000,
                                    reconnect_s=0.1):
            frames += 1
            seen += [d.text for d in dec.decode(frame)]
            if frames >= 6:  # more frames than the file holds: the source was reopened
                stop.set()
    finally:
        srv.shutdown()
    assert frames == 6 and set(seen) == {texts[1]}


# ---- field conditions (tests/scanner/frames.py; the rates themselves: bench/scanner_decode.py) ----------

# A v2-shaped payload of the usual length (a real one carries a fresh signature, which would make the
# frames differ between runs); the decoders only care about its length and character classes.
FIELD_TEXT = ("https://code.city-hub.example.gov.cn/c/2.HC.A0001.SY0.P3101010123456789K/GATE-12-NORTH."
              "K7Q2M9PZ4R8WXNCF.ED149E129FCF8558."
              + "".join(str(d) for d in np.random.default_rng(14).integers(0, 10, 174)))


def test_default_decoder_is_zxing() -> None:
    from edge.scanner.config import ScannerSection

    assert ScannerSection().decoder == "zxing" and make_decoder().name == "zxing"


def test_small_code_on_plain_background() -> None:
    """A code spanning 14 % of the frame height on a plain wall: the old up-front percentile stretch saw
    only the background and amplified its noise (0 of these decoded); now every one does."""
    from tests.scanner.frames import shot

    dec = make_decoder("zxing")
    frames = [shot(FIELD_TEXT, "small", s).frame for s in range(6)]
    assert [[d.text for d in dec.decode(f)] for f in frames] == [[FIELD_TEXT]] * 6


def test_binarizer_fallbacks_recover_blurred_frames() -> None:
    """12 px motion blur: zxing's other binarizers, tried only when the default one found nothing, read
    frames the default alone misses; a frame the default reads costs one pass as before."""
    from tests.scanner.frames import shot

    frames = [shot(FIELD_TEXT, "blur", s, severity=1.3).frame for s in range(10)]
    plain, chained = make_decoder("zxing", fallbacks=False), make_decoder("zxing")
    alone = sum(bool(plain.decode(f, inverted=False)) for f in frames)
    with_fallbacks = [chained.decode(f, inverted=False) for f in frames]
    assert all(d.text == FIELD_TEXT for found in with_fallbacks for d in found)
    assert sum(map(bool, with_fallbacks)) >= alone + 3, (alone, sum(map(bool, with_fallbacks)))


def test_hub_rendered_codes_survive_occlusion() -> None:
    """~12 % of the symbol covered (a finger, a sticker): the hub's own PNG (now level Q) still reads, where
    the same payload at the old level M does not."""
    import base64

    from central.codes.routes import qr_image
    from tests.scanner.frames import shot

    png = base64.b64decode(qr_image(FIELD_TEXT, "png")["png_b64"])
    printed = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
    dec = make_decoder("zxing")
    hub = sum(bool(dec.decode(shot(FIELD_TEXT, "occlusion", s, printed=printed).frame)) for s in range(6))
    m = sum(bool(dec.decode(shot(FIELD_TEXT, "occlusion", s, "M").frame)) for s in range(6))
    assert hub >= 5 and m <= 1, (hub, m)


# ---- unreadable inputs ------------------------------------------------------------------------------------

def bad_images(d: Path, good: np.ndarray) -> dict[str, str]:
    """Files that are no image, each with what its reason must say."""
    ok, png = cv2.imencode(".png", good)
    assert ok
    (d / "0-empty.png").write_bytes(b"")
    (d / "1-truncated.png").write_bytes(png.tobytes()[: len(png) // 3])
    (d / "2-text.jpg").write_bytes(b"GIF89a not really")
    return {"0-empty.png": "empty", "1-truncated.png": "not a readable image", "2-text.jpg": "not a readable image"}


def test_unreadable_files_get_their_own_error(texts: list[str], tmp_path: Path) -> None:
    from edge.scanner.decode import UnreadableImage

    bad = bad_images(tmp_path, qr_gray(texts[0]))
    for name, why in bad.items():
        with pytest.raises(UnreadableImage, match=why):
            load_image(tmp_path / name)
    save(tmp_path / "3-good.png", frame_with([texts[1]]))
    res = decode_path(make_decoder("zxing"), tmp_path)
    assert [p.name for p, _ in res] == [*bad, "3-good.png"]
    for (p, found), why in zip(res, [*bad.values(), None], strict=True):
        if why is None:
            assert [d.text for d in found] == [texts[1]]  # type: ignore[union-attr]
        else:
            assert isinstance(found, UnreadableImage) and why in str(found) and p.name in str(found)
