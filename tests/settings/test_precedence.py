"""Hub settings resolve as documented: defaults < the file (`-c`, else $CITYBRAIN_CONFIG) < CITYBRAIN_*
environment < command-line options, nested values merging per field; a bad value names its field and
where it came from. Checked through load_settings (what every command uses), the real CLI (typer's
CliRunner) and a real `citybrain hub serve` process listening where the precedence says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from central.broker import free_port
from central.settings import SettingsError, load_settings
from tests.helpers import stop_processes

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k.upper().startswith("CITYBRAIN_"):
            monkeypatch.delenv(k)


def write(tmp_path: Path, data: object, name: str = "hub.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data) if name.endswith(".yaml") else json.dumps(data))
    return p


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write(tmp_path, {"port": 9000, "host": "0.0.0.0"})
    assert load_settings(cfg).port == 9000
    monkeypatch.setenv("CITYBRAIN_PORT", "7777")
    s = load_settings(cfg)
    assert (s.port, s.host) == (7777, "0.0.0.0")  # the file still sets what the environment does not


def test_nested_environment_overrides_one_nested_file_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write(tmp_path, {"mqtt": {"host": "broker.example", "port": 1884, "username": "hub-a"},
                           "security": {"crypto_profile": "gm", "lockout_failures": 7}}, "hub.json")
    monkeypatch.setenv("CITYBRAIN_MQTT__PORT", "1999")
    monkeypatch.setenv("CITYBRAIN_SECURITY__LOCKOUT_FAILURES", "3")
    s = load_settings(cfg)
    assert (s.mqtt.host, s.mqtt.port, s.mqtt.username) == ("broker.example", 1999, "hub-a")
    assert (s.security.crypto_profile, s.security.lockout_failures) == ("gm", 3)


def test_options_override_environment_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write(tmp_path, {"port": 9000, "host": "10.0.0.1"})
    monkeypatch.setenv("CITYBRAIN_PORT", "7777")
    monkeypatch.setenv("CITYBRAIN_HOST", "10.0.0.2")
    s = load_settings(cfg, port=8111, host=None)  # None: the option was not given
    assert (s.port, s.host) == (8111, "10.0.0.2")


def test_config_file_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write(tmp_path, {"port": 9000, "data_dir": str(tmp_path / "d")})
    monkeypatch.setenv("CITYBRAIN_CONFIG", str(cfg))
    monkeypatch.setenv("CITYBRAIN_PORT", "7777")
    s = load_settings()
    assert (s.port, s.data_dir) == (7777, tmp_path / "d")
    other = write(tmp_path, {"port": 9100}, "other.yaml")
    assert load_settings(other).data_dir != tmp_path / "d"  # -c beats $CITYBRAIN_CONFIG


def test_bad_values_name_the_field_and_the_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write(tmp_path, {"port": 70000, "mqtt": {"port": "x"}, "portt": 1, "security": {"crypto_profile": "rsa"}})
    monkeypatch.setenv("CITYBRAIN_SECURITY__LOCKOUT_MINUTES", "0")
    with pytest.raises(SettingsError) as e:
        load_settings(cfg)
    by_field = {p.split(":")[0]: p for p in e.value.problems}
    assert set(by_field) == {"port", "mqtt.port", "portt", "security.crypto_profile", "security.lockout_minutes"}
    assert "65535" in by_field["port"] and str(cfg) in by_field["port"]
    assert str(cfg) in by_field["mqtt.port"] and str(cfg) in by_field["portt"]
    assert "environment CITYBRAIN_SECURITY__LOCKOUT_MINUTES" in by_field["security.lockout_minutes"]
    with pytest.raises(SettingsError, match=r"^port: .*option --port"):
        load_settings(write(tmp_path, {}, "empty.yaml"), port=0)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="no such file"):
        load_settings(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- port\n- 9000\n")
    with pytest.raises(SettingsError, match="expected a mapping"):
        load_settings(tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("port: [\n")
    with pytest.raises(SettingsError, match="broken.yaml"):
        load_settings(tmp_path / "broken.yaml")


def test_cli_commands_resolve_the_same_way(tmp_path: Path) -> None:
    from central.cli import app

    cfg = write(tmp_path, {"data_dir": str(tmp_path / "from-file"), "mqtt": {"enabled": False}})
    runner = CliRunner()
    r = runner.invoke(app, ["migrate", "-c", str(cfg)], env={"CITYBRAIN_DATA_DIR": str(tmp_path / "from-env")})
    assert r.exit_code == 0, r.output
    assert str(tmp_path / "from-env" / "hub.db") in r.output
    assert (tmp_path / "from-env" / "hub.db").exists() and not (tmp_path / "from-file").exists()
    bad = write(tmp_path, {"data_dir": str(tmp_path / "x"), "mqtt": {"port": 70000}}, "bad.yaml")
    r = runner.invoke(app, ["migrate", "-c", str(bad)])
    assert r.exit_code == 2
    assert "settings: mqtt.port:" in r.output and str(bad) in r.output and "Traceback" not in r.output


def _get(url: str) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.loads(resp.read())
    except OSError:
        return None


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[object]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        full_env = {k: v for k, v in os.environ.items() if not k.upper().startswith("CITYBRAIN_")} | env
        full_env["PYTHONPATH"] = str(ROOT)  # this checkout's code, whatever the venv has installed
        p = subprocess.Popen([sys.executable, "-m", "citybrain.cli", "hub", "serve", "--no-bridge", *args],
                             cwd=tmp_path, env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(p)
        return p

    yield start
    stop_processes(procs)


def _wait_listening(proc: subprocess.Popen[bytes], port: int) -> dict[str, object]:
    deadline = time.monotonic() + 90  # generous: imports on a loaded 2-core machine
    while time.monotonic() < deadline:
        if (got := _get(f"http://127.0.0.1:{port}/healthz")) is not None:
            return got
        if proc.poll() is not None:
            raise AssertionError(f"hub exited {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        time.sleep(0.2)
    raise AssertionError(f"nothing listening on {port}")


def test_hub_serve_listens_where_the_precedence_says(tmp_path: Path, serve: object) -> None:
    """file `port: A` + CITYBRAIN_PORT=B: the hub listens on B; with `--port C` as well, on C."""
    file_port, env_port, cli_port, env_port2 = (free_port() for _ in range(4))
    cfg = write(tmp_path, {"port": file_port, "data_dir": str(tmp_path / "file-dir"), "mqtt": {"enabled": False}})
    env = {"CITYBRAIN_PORT": str(env_port), "CITYBRAIN_DATA_DIR": str(tmp_path / "env-dir")}
    by_env = serve(["-c", str(cfg)], env)  # type: ignore[operator]
    env2 = {**env, "CITYBRAIN_PORT": str(env_port2), "CITYBRAIN_DATA_DIR": str(tmp_path / "env-dir2")}
    by_cli = serve(["-c", str(cfg), "--port", str(cli_port)], env2)  # type: ignore[operator]
    health = _wait_listening(by_env, env_port)
    assert health["db"] == str(tmp_path / "env-dir" / "hub.db")
    health = _wait_listening(by_cli, cli_port)
    assert health["db"] == str(tmp_path / "env-dir2" / "hub.db")
    assert _get(f"http://127.0.0.1:{file_port}/healthz") is None
    assert _get(f"http://127.0.0.1:{env_port2}/healthz") is None


def test_every_subcommand_reports_a_bad_setting_in_one_line(tmp_path: Path) -> None:
    """The registry, iam, video and dialer groups load settings too: a bad value is exit 2, no traceback."""
    import subprocess
    import sys

    cfg = tmp_path / "bad.yaml"
    cfg.write_text("port: 70000\n")
    root = Path(__file__).resolve().parents[2]
    for args in (["hub", "registry", "export-feed", "--config", str(cfg)],
                 ["hub", "audit", "verify", "--config", str(cfg)]):
        r = subprocess.run([sys.executable, "-m", "citybrain.cli", *args], cwd=root, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 2, (args, r.returncode, r.stderr[-500:])
        assert "Traceback" not in r.stderr and "port" in r.stderr, (args, r.stderr[-500:])
