"""Runs and configures the project's own mosquitto: per-device passwords + ACL, optional TLS listener.

Used by the demo, `citybrain hub broker`, and the tests (a real broker on 127.0.0.1)."""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"

Access = Literal["read", "write", "readwrite"]
Rule = tuple[Access, str]  # (access, topic filter), as one `topic <access> <filter>` line of a mosquitto ACL

# The ACL rules as data, rendered into mosquitto's acl_file (`acl_text`) and evaluated for EMQX's HTTP
# authorization hook (`allows`): one definition, so the two brokers cannot drift apart. Per user, because
# mosquitto patterns know only %u/%c and usernames are "site.device", not topic levels.
HUB_RULES: list[Rule] = [("readwrite", "city/v1/#")]


def device_rules(site: str, device: str) -> list[Rule]:
    """A device writes only under its own prefix and reads its commands, receipts and the city lists."""
    p = f"city/v1/{site}/{device}"
    return [
        ("write", f"{p}/status"), ("write", f"{p}/hb"), ("write", f"{p}/event/+"), ("write", f"{p}/scan"),
        ("write", f"{p}/ack"), ("read", f"{p}/cmd"), ("read", f"{p}/receipt"),
        ("read", "city/v1/trust"), ("read", "city/v1/revocations"),
    ]


def acl_text(username: str, rules: list[Rule]) -> str:
    return f"user {username}\n" + "".join(f"topic {access} {topic}\n" for access, topic in rules)


HUB_ACL = acl_text("{hub}", HUB_RULES)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def device_acl(username: str, site: str, device: str) -> str:
    return acl_text(username, device_rules(site, device))


def _filter_within(sub: list[str], acl: list[str]) -> bool:
    """Every topic `sub` matches is matched by `acl` (levels already split). A publish topic has no
    wildcards, so this is plain matching for it; for a subscription a wildcard in `sub` must be covered by
    one in `acl` at that level."""
    for i, a in enumerate(acl):
        if a == "#":
            return True
        if i >= len(sub):
            return False
        s = sub[i]
        if s == "#" or (s == "+" and a != "+") or (a != "+" and a != s):
            return False
    return len(sub) == len(acl)


def allows(rules: list[Rule], action: Literal["publish", "subscribe"], topic: str) -> bool:
    """Whether `rules` let a client publish to `topic` (write) or subscribe to the filter `topic` (read).
    EMQX asks once per SUBSCRIBE and then delivers whatever matches, so a filter must lie within a read
    rule. (mosquitto grants any filter and checks each message it would deliver against the read rules
    instead: the same messages arrive; tests/spine/test_broker_hooks.py checks both.) A `$`-topic never
    matches a filter starting with a wildcard (MQTT 4.7.2); a publish topic holding a wildcard is no topic."""
    need = "write" if action == "publish" else "read"
    levels = topic.split("/")
    if not topic or (action == "publish" and any(lv in ("+", "#") for lv in levels)):
        return False
    for access, pattern in rules:
        if access not in (need, "readwrite"):
            continue
        acl = pattern.split("/")
        if topic.startswith("$") and acl[0] in ("+", "#"):
            continue
        if _filter_within(levels, acl):
            return True
    return False


def hash_password(passwd_file: Path, username: str, password: str) -> None:
    """Add/replace a user in a mosquitto password file with mosquitto_passwd (its own PBKDF2-SHA512)."""
    passwd_file.parent.mkdir(parents=True, exist_ok=True)
    if not passwd_file.exists():
        passwd_file.touch(mode=0o600)
    subprocess.run([MOSQUITTO_PASSWD, "-b", str(passwd_file), username, password], check=True,
                   capture_output=True)


def set_user(passwd_file: Path, acl_file: Path, username: str, password: str, acl: str) -> None:
    """Give `username` a password and exactly the ACL block `acl` (replacing any block it had)."""
    hash_password(passwd_file, username, password)
    text = acl_file.read_text() if acl_file.exists() else ""
    blocks = [b for b in text.split("\n\n") if b.strip() and not b.startswith(f"user {username}\n")]
    blocks.append(acl.strip() + "\n")
    acl_file.write_text("\n".join(b.strip() + "\n" for b in blocks))


def refresh_acl(acl_file: Path, acls: dict[str, str]) -> bool:
    """Rewrite the ACL block of each user in `acls` that already has one to the given text (the current
    template), leaving every other block alone; True when the file changed. Devices provisioned by an older
    build thus gain topics added to the contract since (e.g. their receipt topic) without re-provisioning."""
    if not acl_file.exists():
        return False
    text = acl_file.read_text()
    out: list[str] = []
    for b in (b for b in text.split("\n\n") if b.strip()):
        first = b.strip().split("\n", 1)[0]
        user = first[5:] if first.startswith("user ") else None
        out.append(acls[user] if user in acls else b)
    new = "\n".join(b.strip() + "\n" for b in out)
    if new == text:
        return False
    acl_file.write_text(new)
    return True


def remove_password(passwd_file: Path, username: str) -> None:
    if passwd_file.exists():
        subprocess.run([MOSQUITTO_PASSWD, "-D", str(passwd_file), username], check=False, capture_output=True)


def remove_user(passwd_file: Path, acl_file: Path, username: str) -> None:
    """Drop `username`'s password and ACL block (its next connect is refused after a reload)."""
    remove_password(passwd_file, username)
    if acl_file.exists():
        text = acl_file.read_text()
        blocks = [b for b in text.split("\n\n") if b.strip() and not b.strip().startswith(f"user {username}\n")]
        acl_file.write_text("\n".join(b.strip() + "\n" for b in blocks))


@dataclass
class BrokerConfig:
    dir: Path
    port: int = field(default_factory=free_port)
    tls_port: int | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    anonymous: bool = False
    persistence: bool = True

    @property
    def conf(self) -> Path:
        return self.dir / "mosquitto.conf"

    @property
    def passwd(self) -> Path:
        return self.dir / "passwd"

    @property
    def acl(self) -> Path:
        return self.dir / "acl"

    @property
    def pid_file(self) -> Path:
        return self.dir / "mosquitto.pid"

    def write(self) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "data").mkdir(exist_ok=True)
        if not self.passwd.exists():
            self.passwd.touch(mode=0o600)
        if not self.acl.exists():
            self.acl.write_text("")
        lines = [
            # Started as root, mosquitto would switch to user "mosquitto" and lose access to our files.
            f"user {getpass.getuser()}",
            f"pid_file {self.pid_file}",
            "per_listener_settings false",
            f"allow_anonymous {'true' if self.anonymous else 'false'}",
        ]
        if not self.anonymous:
            lines += [f"password_file {self.passwd}", f"acl_file {self.acl}"]
        lines += [
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.dir / 'data'}/",
            "autosave_interval 5",
            # The hub's persistent session must hold what arrives while it is down.
            "max_queued_messages 2000000",
            "max_queued_bytes 0",
            "max_inflight_messages 0",
            "max_packet_size 67108864",  # retained revocation lists of ~1M serials are tens of MB
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "connection_messages true",
            f"listener {self.port} 127.0.0.1",
        ]
        if self.tls_port and self.cert_file and self.key_file and self.ca_file:
            lines += [
                f"listener {self.tls_port} 127.0.0.1",
                f"cafile {self.ca_file}",
                f"certfile {self.cert_file}",
                f"keyfile {self.key_file}",
                "tls_version tlsv1.2",
            ]
        self.conf.write_text("\n".join(lines) + "\n")
        return self.conf

    def add_user(self, username: str, password: str, acl: str) -> None:
        set_user(self.passwd, self.acl, username, password, acl)


class Broker:
    """A mosquitto process we own."""

    def __init__(self, cfg: BrokerConfig) -> None:
        self.cfg = cfg
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> Broker:
        self.cfg.write()
        log = open(self.cfg.dir / "mosquitto.log", "ab")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.cfg.conf)], stdout=log, stderr=log)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: see {self.cfg.dir / 'mosquitto.log'}")
            try:
                with socket.create_connection(("127.0.0.1", self.cfg.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not open its port")

    def reload(self) -> None:
        """SIGHUP: mosquitto re-reads the password and ACL files without dropping clients."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGHUP)

    def stop(self, kill: bool = False) -> None:
        if self.proc and self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


def reload_pid_file(pid_file: Path) -> bool:
    """Signal a running mosquitto (by pid file) to reload passwords/ACL; False if none is running."""
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, signal.SIGHUP)
        return True
    except (OSError, ValueError):
        return False
