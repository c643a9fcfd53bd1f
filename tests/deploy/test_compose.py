"""docker/compose.yaml parses, names only files that exist, and its configs agree with the code (no Docker
engine here): edge configs validate, hub settings load, mosquitto is TLS-only with auth, and the ACL example
is exactly what the hub writes for a device."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from central.broker import HUB_ACL, device_acl
from central.settings import load_settings
from edge.config import DeviceConfig

DOCKER = Path(__file__).resolve().parents[2] / "docker"


def compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_services_and_files_exist() -> None:
    c = compose()
    assert {"mosquitto", "hub", "camera-gateway", "scan-terminal"} <= set(c["services"])
    declared = set(c.get("volumes") or {})
    for name, svc in c["services"].items():
        assert "healthcheck" in svc and svc["healthcheck"]["test"], f"{name}: no health check"
        if "build" in svc:
            ctx = (DOCKER / svc["build"]["context"]).resolve()
            assert ctx.is_dir(), name
            assert (ctx / svc["build"]["dockerfile"]).is_file(), f"{name}: {svc['build']['dockerfile']}"
        for v in svc.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith((".", "/")):
                assert (DOCKER / src).exists(), f"{name}: bind mount {src} does not exist"
            else:
                assert src in declared, f"{name}: volume {src} is not declared"
        for dep in svc.get("depends_on", {}):
            assert dep in c["services"], f"{name} depends on unknown {dep}"
    # Durable state lives on named volumes: the hub's store and each device's outbox.
    mounts = {n: [v.split(":")[1] for v in s.get("volumes", [])] for n, s in c["services"].items()}
    assert "/var/lib/citybrain" in mounts["hub"]
    assert "/var/lib/citybrain-edge" in mounts["camera-gateway"]
    assert "/var/lib/citybrain-edge" in mounts["scan-terminal"]


def test_dockerfiles_copy_only_existing_paths() -> None:
    root = DOCKER.parent
    for df in ("Dockerfile.hub", "Dockerfile.edge"):
        text = (DOCKER / df).read_text()
        assert "HEALTHCHECK" in text
        args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))  # COPY requirements/${ROLE}.txt: the default
        for line in text.splitlines():
            if line.startswith("COPY ") and not line.startswith("COPY --from="):  # --from: a build stage's file
                for src in line.split()[1:-1]:
                    for name, default in args.items():
                        src = src.replace(f"${{{name}}}", default)
                    assert (root / src).exists(), f"{df}: COPY {src} missing"


def test_images_install_their_role_from_its_lock() -> None:
    """Each image installs one role's hashed lock, then citybrain without dependencies; the edge's has no hub
    code at all."""
    edge = (DOCKER / "Dockerfile.edge").read_text()
    assert "--require-hashes -r requirements/edge.txt" in edge and "COPY central" not in edge
    hub = (DOCKER / "Dockerfile.hub").read_text()
    assert "ARG ROLE=hub" in hub and "--require-hashes -r requirements/${ROLE}.txt" in hub
    assert (DOCKER.parent / "requirements/dialer.txt").is_file()  # --build-arg ROLE=dialer
    for text in (edge, hub):
        assert "pip install --no-cache-dir --no-deps --no-build-isolation ." in text
        assert not re.search(r"pip install (?!.*(--require-hashes|--no-deps))", text)


def test_configs_agree_with_code() -> None:
    c = compose()
    for svc, kind in (("camera-gateway", "camera"), ("scan-terminal", "scanner")):
        vols = c["services"][svc]["volumes"]
        src = next(v.split(":")[0] for v in vols if v.endswith("/etc/citybrain/device.yaml:ro"))
        cfg = DeviceConfig.model_validate(yaml.safe_load((DOCKER / src).read_text()))
        assert cfg.kind == kind and cfg.mqtt.tls and cfg.mqtt.host == "mosquitto"
        assert str(cfg.outbox.path).startswith("/var/lib/citybrain-edge/")  # on the outbox volume
        assert c["services"][svc]["command"][0] == kind
    s = load_settings(DOCKER / "hub.yaml")
    assert s.mqtt.host == "mosquitto" and s.mqtt.ca_file and s.mqtt.tls_port == 8883
    assert str(s.database).startswith("/var/lib/citybrain/")


def test_mosquitto_tls_only_with_acl() -> None:
    conf = (DOCKER / "mosquitto" / "mosquitto.conf").read_text()
    directives = [ln.split(None, 1) for ln in conf.splitlines() if ln.strip() and not ln.startswith("#")]
    d = {k: v for k, v in directives}
    assert d["allow_anonymous"] == "false"
    assert [v for k, v in directives if k == "listener"] == ["8883"]  # no plain-text listener
    for key in ("cafile", "certfile", "keyfile", "password_file", "acl_file"):
        assert key in d
    mounted = [v.split(":")[1] for v in compose()["services"]["mosquitto"]["volumes"]]
    for key in ("cafile", "password_file", "acl_file"):
        assert any(d[key].startswith(m.rstrip("/") + "/") or d[key] == m for m in mounted), key


def test_acl_example_is_what_the_hub_writes() -> None:
    acl = (DOCKER / "mosquitto" / "acl.example").read_text()
    assert HUB_ACL.format(hub="hub") in acl
    for user in re.findall(r"^user (\S+)$", acl, re.M):
        if user in ("hub", "health"):
            continue
        site, device = user.split(".")
        assert device_acl(user, site, device) in acl, user
        block = acl.split(f"user {user}\n")[1].split("\n\n")[0]
        for line in block.splitlines():
            _, mode, topic = line.split()
            own = topic.startswith(f"city/v1/{site}/{device}/")
            assert own or (mode == "read" and topic in ("city/v1/trust", "city/v1/revocations")), line
