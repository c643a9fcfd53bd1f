"""Packaging by role: an edge box installs citybrain[edge] from requirements/edge.txt and nothing of the hub's.

The test venv has every role installed, so "without the hub's packages" is checked in fresh subprocesses: one
imports every edge module and reports what got loaded; the others run the `citybrain` CLI (or import the hub)
with every module that the role's lock does not install made unimportable (a meta-path finder raising
ModuleNotFoundError, which is what a missing package does)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.scanner.trust_store import TrustStore
from tests.scanner.helpers import City, scanner_config
from tests.scanner.images import frame_with

ROOT = Path(__file__).resolve().parents[2]
REQS = ROOT / "requirements"
ROLES = ("edge", "hub", "dialer", "test")
OWN = {"citybrain", "edge", "protocol", "central"}  # this project's packages (an editable install)
# Named in the issue or plainly hub-only; the edge must load none of them (nor central, the hub's code).
HUB_ONLY = {"fastapi", "starlette", "uvicorn", "sqlalchemy", "alembic", "psycopg", "pydantic_settings", "pjsua2",
            "vosk", "pocketsphinx", "pyttsx3", "argon2", "jinja2", "httpx", "openpyxl", "qrcode", "central"}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked(role: str) -> dict[str, str]:
    """{distribution: version} pinned in requirements/<role>.txt."""
    pins = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)", (REQS / f"{role}.txt").read_text(), re.M)
    return {norm(n): v for n, v in pins}


def extra_requirements(extra: str) -> set[str]:
    """Distribution names that `citybrain[extra]` asks for directly (core included, self-references followed)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names: set[str] = set()
    todo, seen = [extra], set()
    for req in project["dependencies"]:
        names.add(norm(re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0]))
    while todo:
        e = todo.pop()
        seen.add(e)
        for req in project["optional-dependencies"][e]:
            m = re.fullmatch(r"citybrain\[([a-z,]+)\]", req)
            if m:
                todo.extend(x for x in m.group(1).split(",") if x not in seen)
            else:
                names.add(norm(re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0]))
    return names


def not_in_lock(role: str = "edge") -> set[str]:
    """Top-level modules installed here whose distributions the role's lock does not hold (this project's own
    aside: `pip install citybrain[edge]` installs central/ too, only not its packages)."""
    pins = set(locked(role))
    return {mod for mod, dists in packages_distributions().items()
            if mod not in OWN and not any(norm(d) in pins for d in dists)}


@pytest.mark.parametrize("role", ROLES)
def test_lock_holds_every_direct_requirement_at_the_tested_version(role: str) -> None:
    """A requirement added to pyproject.toml without `./run lock` would be missing from the venv (citybrain
    installs with --no-deps); a role lock resolved outside the test lock would run untested versions."""
    pins = locked(role)
    assert extra_requirements(role) - set(pins) == set(), f"run ./run lock: requirements/{role}.txt is stale"
    assert {"pip", "setuptools"} <= set(pins)  # the installer and the build backend are pinned too
    tested = locked("test")
    assert {n: v for n, v in pins.items() if tested.get(n) != v} == {}


def test_every_pin_is_hashed() -> None:
    """pip --require-hashes refuses a lock with an unhashed line; check it here, not on a fresh machine."""
    for role in ROLES:
        blocks = re.split(r"\n(?=[A-Za-z0-9])", (REQS / f"{role}.txt").read_text())
        for block in blocks:
            if block.startswith("#"):
                continue
            assert "--hash=sha256:" in block, (role, block.splitlines()[0])


def test_edge_lock_has_no_hub_packages() -> None:
    assert set(locked("edge")) & {"fastapi", "starlette", "uvicorn", "sqlalchemy", "alembic", "psycopg",
                                  "pydantic-settings", "pjsua2-python", "vosk", "pocketsphinx", "pyttsx3"} == set()
    assert {"fastapi", "sqlalchemy"} <= set(locked("hub")) and "pjsua2-python" not in locked("hub")
    assert {"pjsua2-python", "vosk"} <= set(locked("dialer"))


NOT_INSTALLED = """
import sys
BLOCKED = set(sys.argv[1].split(",")) - {""}
class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, NotInstalled())
sys.argv = ["citybrain", *sys.argv[2:]]
"""
IMPORT_ALL_EDGE = """
import importlib, json, pkgutil
before = set(sys.modules)
import edge, edge.cli, protocol.cli
for m in pkgutil.walk_packages(edge.__path__, "edge."):
    importlib.import_module(m.name)
# What edge code imports lazily: both QR decoders and the ONNX runtime.
import onnxruntime, pyzbar.pyzbar, zxingcpp
print(json.dumps(sorted({m.split(".")[0] for m in set(sys.modules) - before})))
"""
CLI = """
import runpy
runpy.run_module("citybrain.cli", run_name="__main__")
"""


def as_installed(code: str, *args: str | Path, blocked: set[str] | None = None) -> subprocess.CompletedProcess[str]:
    """Python `code` (sys.argv = ["citybrain", *args]) as on a box with one role installed: every module the
    edge lock lacks (or those `blocked`) unimportable."""
    block = ",".join(sorted(not_in_lock() if blocked is None else blocked))
    return subprocess.run([sys.executable, "-c", NOT_INSTALLED + code, block, *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def edge_only(*args: str | Path, blocked: set[str] | None = None) -> subprocess.CompletedProcess[str]:
    """`citybrain ARGS` on an edge box."""
    return as_installed(CLI, *args, blocked=blocked)


def test_edge_modules_load_no_hub_package() -> None:
    # Here, with every role installed: importing all of edge/ loads none of the hub's packages...
    r = as_installed(IMPORT_ALL_EDGE, blocked=set())
    assert r.returncode == 0, r.stderr[-2000:]
    loaded = set(json.loads(r.stdout.strip().splitlines()[-1]))
    assert {"cv2", "paho", "edge", "protocol"} <= loaded
    assert loaded & HUB_ONLY == set()
    # ...and it needs nothing the edge lock lacks (an optional import, e.g. paho's of PySocks, just fails).
    r = as_installed(IMPORT_ALL_EDGE)
    assert r.returncode == 0, r.stderr[-2000:]


def test_blocker_really_blocks() -> None:
    blocked = not_in_lock()
    assert {"fastapi", "sqlalchemy", "pydantic_settings", "pjsua2", "vosk"} <= blocked
    assert not {"central", "edge", "protocol", "cv2", "typer", "pydantic", "yaml"} & blocked
    r = edge_only("hub", "serve")
    assert r.returncode == 2 and "citybrain[hub]" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]


def test_edge_cli_without_hub_packages(tmp_path: Path) -> None:
    # Help lists every group, the hub one saying it is not installed.
    r = edge_only("--help")
    assert r.returncode == 0 and "edge" in r.stdout and "Not installed" in r.stdout, r.stderr[-2000:]
    r = edge_only("firmware", "validate", ROOT / "firmware_configs/scanner.example.yaml")
    assert r.returncode == 0 and "ok (scanner" in r.stdout, r.stderr[-2000:]
    r = edge_only("protocol", "schema", "--out", tmp_path / "schemas")
    assert r.returncode == 0 and any((tmp_path / "schemas").iterdir()), r.stderr[-2000:]

    # Offline verification, from a payload and from an image (zxing-cpp decodes it).
    city = City()
    cfg = scanner_config(tmp_path, city, decoder="zxing")
    store = TrustStore(city.root.public, tmp_path / "scanner")
    store.apply(city.trust_list(1))
    store.apply(city.revocations(1))
    store.close()
    code = city.code()
    r = edge_only("edge", "verify", "--payload", code.text, "--config", cfg)
    assert r.returncode == 0 and json.loads(r.stdout)["verdict"] == "valid", r.stderr[-2000:]
    img = tmp_path / "one.png"
    cv2.imwrite(str(img), frame_with([code.text]))
    r = edge_only("edge", "verify", img, "--config", cfg)
    assert r.returncode == 0 and json.loads(r.stdout)["serial"] == code.serial, r.stderr[-2000:]

    # A recording through a camera pipeline (OpenCV, the classical detector).
    clip = tmp_path / "clip.avi"
    w = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    for i in range(20):
        w.write(np.full((240, 320, 3), i * 10, np.uint8))
    w.release()
    r = edge_only("edge", "analyse", clip, "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["summary"]["frames"] == 20


def test_hub_says_so_when_its_code_is_absent() -> None:
    """The edge image ships no central/ at all: `citybrain hub` is the same one line and exit 2."""
    r = edge_only("hub", "migrate", blocked={"central"})
    assert r.returncode == 2 and "no module 'central'" in r.stderr and "Traceback" not in r.stderr, r.stderr


IMPORT_ALL_HUB = """
import importlib, pkgutil
import central, citybrain.cli
# The SIP engine process alone needs the dialer role (pjsua2, vosk, pocketsphinx, pyttsx3, numpy).
ENGINE = {"central.dialer." + m for m in ("engine", "sip", "asr", "tts", "audio")}
for m in pkgutil.walk_packages(central.__path__, "central."):
    if m.name not in ENGINE and ".alembic" not in m.name:
        importlib.import_module(m.name)
from central.app import create_app
"""


def test_hub_runs_without_the_dialer_packages() -> None:
    """citybrain[hub] serves the dialer's routes and tasks; only `citybrain hub dialer run` needs [dialer]."""
    blocked = not_in_lock("hub")
    assert {"pjsua2", "vosk", "pocketsphinx", "pyttsx3", "cv2", "onnxruntime"} <= blocked
    r = as_installed(IMPORT_ALL_HUB, blocked=blocked)
    assert r.returncode == 0, r.stderr[-2000:]
    r = as_installed(CLI, "hub", "--help", blocked=blocked)
    assert r.returncode == 0 and "dialer" in r.stdout, r.stderr[-2000:]
