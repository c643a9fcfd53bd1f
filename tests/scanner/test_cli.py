"""verify_command: one JSON line per code, exit 0/1/2, from a PNG, a directory or a raw payload."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest

from edge.scanner.cli import verify_command
from edge.scanner.trust_store import TrustStore
from tests.scanner.helpers import City, scanner_config
from tests.scanner.images import frame_with


@pytest.fixture
def setup(tmp_path: Path) -> tuple[City, Path]:
    city = City()
    cfg = scanner_config(tmp_path, city, decoder="zxing")
    store = TrustStore(city.root.public, tmp_path / "scanner")  # what a sync left on disk
    store.apply(city.trust_list(1))
    store.apply(city.revocations(1))
    store.close()
    return city, cfg


def lines(out: str) -> list[dict[str, object]]:
    return [json.loads(x) for x in out.strip().splitlines()]


def test_payload_valid_and_invalid(setup: tuple[City, Path], capsys: pytest.CaptureFixture[str]) -> None:
    city, cfg = setup
    code = city.code()
    assert verify_command(None, code.text, cfg) == 0
    [v] = lines(capsys.readouterr().out)
    assert v["verdict"] == "valid" and v["serial"] == code.serial and v["dept"] == "HEALTH"
    assert verify_command(None, code.text.replace("/PASS.", "/PAST."), cfg) == 1
    assert lines(capsys.readouterr().out)[0]["verdict"] == "bad-signature"


def test_image_with_two_codes_one_revoked(setup: tuple[City, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    city, cfg = setup
    good, bad = city.code(), city.code()
    TrustStore(city.root.public, tmp_path / "scanner").apply(city.revocations(2, serials=[bad.serial]))
    img = tmp_path / "two.png"
    cv2.imwrite(str(img), frame_with([good.text, bad.text], size=(480, 800), box=3))
    assert verify_command(img, None, cfg) == 1
    got = {x["serial"]: x["verdict"] for x in lines(capsys.readouterr().out)}
    assert got == {good.serial: "valid", bad.serial: "revoked"}
    one = tmp_path / "one.png"
    cv2.imwrite(str(one), frame_with([good.text]))
    assert verify_command(one, None, cfg) == 0


def test_blank_image_and_usage_errors(setup: tuple[City, Path], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    city, cfg = setup
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), frame_with([]))
    assert verify_command(blank, None, cfg) == 1
    assert lines(capsys.readouterr().out)[0]["verdict"] == "no-code"
    assert verify_command(None, None, cfg) == 2
    assert verify_command(blank, "x", cfg) == 2
    assert verify_command(tmp_path / "missing.png", None, cfg) == 2
    assert "missing.png" in capsys.readouterr().err
    bad_cfg = tmp_path / "bad.json"
    bad_cfg.write_text(cfg.read_text().replace('"alg": "ed25519"', '"alg": "rsa"'))
    assert verify_command(None, "x", bad_cfg) == 2
    assert "scanner.city_root_key" in capsys.readouterr().err


def test_citybrain_edge_verify_subprocess(setup: tuple[City, Path], tmp_path: Path) -> None:
    """The mounted command in a real process: `citybrain edge verify IMAGE --config FILE`."""
    import subprocess
    import sys

    city, cfg = setup
    code = city.code()
    img = tmp_path / "one.png"
    cv2.imwrite(str(img), frame_with([code.text]))
    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "-m", "citybrain.cli", "edge", "verify"]
    ok = subprocess.run([*cmd, str(img), "--config", str(cfg)], capture_output=True, text=True, cwd=root,
                        timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout.strip().splitlines()[-1])["serial"] == code.serial
    forged = code.text[:-1] + ("1" if code.text[-1] != "1" else "2")
    bad = subprocess.run([*cmd, "--payload", forged, "--config", str(cfg)], capture_output=True,
                         text=True, cwd=root, timeout=60)
    assert bad.returncode == 1 and json.loads(bad.stdout)["verdict"] == "bad-signature"
    usage = subprocess.run([*cmd, "--config", str(cfg)], capture_output=True, text=True, cwd=root, timeout=60)
    assert usage.returncode == 2
    # A zero-byte PNG (OpenCV's `!buf.empty()`): exit 2 and one line naming the file, no traceback.
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    unreadable = subprocess.run([*cmd, str(empty), "--config", str(cfg)], capture_output=True, text=True, cwd=root,
                                timeout=60)
    assert unreadable.returncode == 2, unreadable.stderr
    assert unreadable.stderr.strip().count("\n") == 0 and "empty.png" in unreadable.stderr
    assert "Traceback" not in unreadable.stderr
    assert json.loads(unreadable.stdout)["verdict"] == "unreadable"


def test_default_data_dir_is_beside_the_outbox(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edge.config import load_config
    from edge.scanner.verify import data_dir_for

    city = City()
    cfg = scanner_config(tmp_path, city)
    raw = json.loads(cfg.read_text())
    del raw["scanner"]["data_dir"]
    raw["outbox"]["path"] = str(tmp_path / "dev7" / "outbox.db")
    cfg.write_text(json.dumps(raw))
    assert data_dir_for(load_config(cfg)) == tmp_path / "dev7" / "scanner"
    store = TrustStore(city.root.public, tmp_path / "dev7" / "scanner")
    store.apply(city.trust_list(1))
    store.apply(city.revocations(1))
    store.close()
    assert verify_command(None, city.code().text, cfg) == 0


def test_folder_with_bad_images_verifies_the_rest(setup: tuple[City, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """One bad image no longer aborts the run: each file gets its line, unreadable ones their reason (also
    one stderr line each), and the exit status is 2 because some input could not be read."""
    from tests.scanner.test_decode import bad_images

    city, cfg = setup
    code = city.code()
    d = tmp_path / "imgs"
    d.mkdir()
    bad = bad_images(d, frame_with([code.text]))
    cv2.imwrite(str(d / "9-good.png"), frame_with([code.text]))
    assert verify_command(d, None, cfg) == 2
    captured = capsys.readouterr()
    out = lines(captured.out)
    assert [Path(str(x["source"])).name for x in out] == [*bad, "9-good.png"]
    assert [x["verdict"] for x in out] == ["unreadable"] * 3 + ["valid"]
    assert all(why in str(x["reason"]) for x, why in zip(out, bad.values(), strict=False))
    assert len(captured.err.strip().splitlines()) == 3 and "Traceback" not in captured.err
    # A single unreadable image: exit 2, one line; a folder of good images still exits 0.
    assert verify_command(d / "0-empty.png", None, cfg) == 2
    assert "0-empty.png" in capsys.readouterr().err
    (d / "0-empty.png").unlink()
    for name in bad:
        (d / name).unlink(missing_ok=True)
    assert verify_command(d, None, cfg) == 0
