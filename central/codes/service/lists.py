"""Lists: the trust list (department keys and the code systems each may sign) and the revocation list,
both signed by the city root, versioned in codes_lists and published retained over MQTT."""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from typing import Any

from central.codes import store
from central.codes.service.common import NO_SYSTEM, Part, dt, now_iso
from protocol import topics
from protocol.trust import RevocationList, TrustedKey, TrustList

log = logging.getLogger("citybrain.codes")


class ListsPart(Part):
    def build_trust(self) -> TrustList:
        with self.hub.store.read() as db:
            systems = store.approved_systems_by_dept(db)
            rows = store.all_keys(db)
        keys = [
            TrustedKey(
                kid=r["kid"],
                alg=r["alg"],
                pub=r["pub"],
                dept=r["dept_id"],
                code_systems=systems.get(r["dept_id"]) or [NO_SYSTEM],
                not_before=dt(r["not_before"]),
                not_after=dt(r["not_after"]),
            )
            for r in rows
        ]  # revoked keys stay listed so devices say "revoked", not "unknown-key"
        return TrustList(version=1, keys=keys)

    def build_revocations(self) -> RevocationList:
        # Expired codes fail offline anyway: leave them out to keep the retained list small.
        with self.hub.store.read() as db:
            serials, idents, kids = store.revocations(db, int(time.time()))
        return RevocationList(version=1, serials=serials, identities=idents, kids=kids)

    def _publish(self, kind: str, lst: TrustList | RevocationList) -> int:
        root = self.root  # type: ignore[attr-defined]

        def signed(version: int) -> str:
            lst.version = version
            lst.issued_at = datetime.now(UTC)
            lst.sign(root)
            return lst.model_dump_json()

        with self._lock, self.hub.store.tx() as db:
            version, body = store.append_list(db, kind, signed, now_iso())
        topic = topics.TRUST if kind == "trust" else topics.REVOCATIONS
        try:
            self.hub.publish(topic, body, qos=1, retain=True)
        except Exception as e:  # the list is stored; the bridge/next publish retries delivery
            log.warning("publish %s v%d failed: %s", kind, version, e)
        return version

    def publish_trust(self) -> int:
        return self._publish("trust", self.build_trust())

    def publish_revocations(self) -> int:
        return self._publish("revocations", self.build_revocations())

    def fill_device_config(self, cfg: dict[str, Any]) -> None:
        """Hook `devices.config`: a new scan terminal pins the city root public key."""
        if cfg.get("kind") == "scanner":
            # No URL allow-list is frozen into the config: the hub refuses to sign a code with an unfiled
            # URL, and filings change after provisioning. Operators may still set allowed_url_prefixes.
            cfg.setdefault("scanner", {})["city_root_key"] = self.root.public.to_dict()  # type: ignore[attr-defined]

    def republish_lists(self) -> None:
        """Hook `bridge.connected`: re-assert the latest retained lists (a broker may have lost them).
        Devices ignore a version they already hold, so this is harmless when nothing was lost."""
        if self.current("trust") is None:
            self.publish_trust()  # a fresh hub: publish version 1 so terminals can start syncing
        if self.current("revocations") is None:
            self.publish_revocations()
        for kind, topic in (("trust", topics.TRUST), ("revocations", topics.REVOCATIONS)):
            with self.hub.store.read() as db:
                body = store.latest_list(db, kind)
            if body:
                self.hub.publish(topic, body, qos=1, retain=True)

    def current(self, kind: str) -> dict[str, Any] | None:
        with self.hub.store.read() as db:
            body = store.latest_list(db, kind)
        return json.loads(body) if body else None
