"""Security baseline on the wire: headers, CORS off by default, body limit, TLS (HTTPS + mosquitto)."""

from __future__ import annotations

import ssl
import threading
import time
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient

from central.app import create_app
from central.broker import HUB_ACL, Broker, BrokerConfig, free_port
from central.iam.certs import generate
from tests.helpers import auth, token_for
from tests.iam.conftest import make_hub


def test_security_headers_and_no_cors_by_default(iclient: TestClient) -> None:
    r = iclient.get("/api/v1/iam/me", headers={"Origin": "https://evil.example"})
    assert r.status_code == 401
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["cache-control"] == "no-store"
    assert "access-control-allow-origin" not in r.headers
    pre = iclient.options("/api/v1/iam/login", headers={"Origin": "https://evil.example",
                                                         "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in pre.headers


def test_cors_only_for_listed_origins(tmp_path: Path) -> None:
    hub = make_hub(tmp_path, cors_origins=["https://console.city.example"])
    with TestClient(create_app(hub=hub, start_bridge=False)) as c:
        ok = c.options("/api/v1/iam/login", headers={"Origin": "https://console.city.example",
                                                      "Access-Control-Request-Method": "POST"})
        assert ok.headers["access-control-allow-origin"] == "https://console.city.example"
        bad = c.options("/api/v1/iam/login", headers={"Origin": "https://evil.example",
                                                       "Access-Control-Request-Method": "POST"})
        assert bad.headers.get("access-control-allow-origin") != "https://evil.example"
    hub.close()


def test_request_body_limit(tmp_path: Path) -> None:
    hub = make_hub(tmp_path, max_body_bytes=2048)
    tok = token_for(hub, "root", "city_admin", "/city")
    with TestClient(create_app(hub=hub, start_bridge=False)) as c:
        big = {"name": "r" * 10, "patterns": ["x.read"] * 400}
        r = c.post("/api/v1/iam/roles", headers=auth(tok), json=big)
        assert r.status_code == 413 and "body" in r.json()["detail"]

        def chunks():  # no Content-Length: counted while streaming
            for _ in range(10):
                yield b" " * 512

        r = c.post("/api/v1/iam/login", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert c.post("/api/v1/iam/roles", headers=auth(tok),
                      json={"name": "small", "patterns": ["x.read"]}).status_code == 201
    hub.close()


def test_gen_certs_serves_https(tmp_path: Path) -> None:
    import uvicorn

    paths = generate(tmp_path / "certs")
    hub = make_hub(tmp_path, tls_cert=paths.cert, tls_key=paths.key)
    port = free_port()
    cfg = uvicorn.Config(create_app(hub=hub, start_bridge=False), host="127.0.0.1", port=port, log_level="error",
                         ssl_certfile=str(hub.settings.security.tls_cert),
                         ssl_keyfile=str(hub.settings.security.tls_key))
    server = uvicorn.Server(cfg)
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    try:
        deadline = time.time() + 15
        while not server.started and time.time() < deadline:
            time.sleep(0.05)
        r = httpx.get(f"https://127.0.0.1:{port}/api/v1/iam/me", verify=ssl.create_default_context(
            cafile=str(paths.ca_cert)))
        assert r.status_code == 401
        assert "max-age" in r.headers["strict-transport-security"]
        with pytest.raises(httpx.ConnectError):  # an unknown CA is refused
            httpx.get(f"https://127.0.0.1:{port}/healthz", verify=True)
    finally:
        server.should_exit = True
        t.join(10)
        hub.close()


def test_mosquitto_tls_listener_with_generated_certs(tmp_path: Path) -> None:
    paths = generate(tmp_path / "certs")
    cfg = BrokerConfig(dir=tmp_path / "broker", tls_port=free_port(), ca_file=paths.ca_cert,
                       cert_file=paths.cert, key_file=paths.key)
    cfg.write()
    cfg.add_user("dev1", "dev1-Secret-pw", HUB_ACL.format(hub="dev1"))
    broker = Broker(cfg).start()
    try:
        def connect(password: str) -> int:
            got: list[int] = []
            done = threading.Event()
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-{password[:4]}")
            c.username_pw_set("dev1", password)
            c.tls_set(ca_certs=str(paths.ca_cert))

            def on_connect(_c, _u, _f, rc, _p=None) -> None:  # type: ignore[no-untyped-def]
                got.append(int(rc.value) if hasattr(rc, "value") else int(rc))
                done.set()

            c.on_connect = on_connect
            c.connect("127.0.0.1", cfg.tls_port, keepalive=10)  # type: ignore[arg-type]
            c.loop_start()
            done.wait(10)
            c.loop_stop()
            c.disconnect()
            return got[0] if got else -1

        assert connect("dev1-Secret-pw") == 0  # TLS handshake with our CA + per-device password
        assert connect("wrong-password") != 0
    finally:
        broker.stop()
