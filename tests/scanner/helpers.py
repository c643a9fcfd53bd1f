"""A test city: root key, department keys, signed trust/revocation lists and codes built with
protocol.citycode.build (until the hub's issuing API is used directly)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from edge.config import DeviceConfig
from edge.link import Link
from edge.scanner.agent import run
from protocol import citycode, signing
from protocol.trust import RevocationList, TrustedKey, TrustList

GUIDE = "https://code.city.example/c"


@dataclass
class City:
    root: signing.PrivateKey = field(default_factory=signing.generate)
    dept: signing.PrivateKey = field(default_factory=signing.generate)
    serial_no: int = 0

    def trusted(self, key: signing.PrivateKey, dept: str = "HEALTH", systems: list[str] | None = None) -> TrustedKey:
        now = datetime.now(UTC)
        return TrustedKey(kid=key.kid, alg=key.alg, pub=signing.b64e(key.public_raw), dept=dept,
                          code_systems=systems if systems is not None else ["HC"],
                          not_before=now - timedelta(days=30), not_after=now + timedelta(days=365))

    def trust_list(self, version: int = 1, keys: list[TrustedKey] | None = None,
                   signer: signing.PrivateKey | None = None) -> TrustList:
        tl = TrustList(version=version, keys=keys if keys is not None else [self.trusted(self.dept)])
        tl.sign(signer or self.root)
        return tl

    def revocations(self, version: int, serials: list[str] = (), identities: list[str] = (),  # type: ignore[assignment]
                    signer: signing.PrivateKey | None = None) -> RevocationList:
        rl = RevocationList(version=version, serials=list(serials), identities=list(identities))
        rl.sign(signer or self.root)
        return rl

    def code(self, key: signing.PrivateKey | None = None, *, attribute: str = "SY0", code_system: str = "HC",
             issued_at: int | None = None, lifetime_s: int = 3600, serial: str | None = None,
             identity_id: str = "P3101ABC0001X") -> citycode.CityCode:
        self.serial_no += 1
        t = int(time.time()) - 60 if issued_at is None else issued_at
        return citycode.build(key=key or self.dept, guide_url=GUIDE, code_system=code_system, auth_id="A7K2",
                              attribute=attribute, identity_id=identity_id,
                              serial=serial or f"SN{self.serial_no:08d}", issued_at=t,
                              expires_at=t + lifetime_s, dept_data="PASS")

    def root_dict(self) -> dict[str, str]:
        return self.root.public.to_dict()


def scanner_config(tmp_path: Path, city: City, **scanner: object) -> Path:
    """A scanner device config file (YAML-compatible JSON) pointing at tmp_path for its data."""
    import json

    cfg = {
        "site": "gate1", "device": "term1", "kind": "scanner",
        "mqtt": {"host": "127.0.0.1", "port": 1883, "username": "gate1.term1", "password": "x"},
        "outbox": {"path": str(tmp_path / "outbox.db")},
        "scanner": {"city_root_key": city.root_dict(), "data_dir": str(tmp_path / "scanner"), **scanner},
    }
    path = tmp_path / "device.json"
    path.write_text(json.dumps(cfg))
    return path


@contextmanager
def running_terminal(cfg: DeviceConfig) -> Iterator[tuple[Link, Callable[[], dict[str, Any]]]]:
    """A scan terminal: its agent on a thread over a started link that has connected. Yields the link and
    a reader of the agent's stats; stops both on the way out."""
    link = Link(cfg).start()
    stop = threading.Event()
    t = threading.Thread(target=run, args=(cfg, link, stop), daemon=True)
    t.start()
    try:
        assert link.wait_connected(10)
        yield link, lambda: link.stats_provider() if link.stats_provider else {}
    finally:
        stop.set()
        t.join(10)
        link.stop()
