"""Device provisioning and status. Provisioning registers the device, gives it broker credentials and an
ACL entry that lets it publish only under `city/v1/{site}/{device}/...`, and returns a ready config."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol, get_args

from central.devices import brokerauth, store
from central.hub import Hub
from central.iam.principal import under
from central.metrics import Sample
from central.problems import HubError
from central.store import Db, utcnow
from protocol import messages, topics

Kind = Literal["camera", "scanner"]


class DeviceError(HubError, ValueError):
    def __init__(self, field: str, msg: str, status: int = 422) -> None:
        super().__init__(f"{field}: {msg}", status=status, field=field)


class Provisioner(Protocol):
    """What provisioning needs of an iam Principal (None: an operator on the hub host, e.g. the CLI)."""

    @property
    def name(self) -> str: ...

    def allowed(self, perm: str, org_path: str) -> bool: ...


def slug(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_-]+", "-", name.strip()).strip("-").lower()
    return s[:48] or "dev"


def broker_username(site: str, device: str) -> str:
    return f"{site}.{device}"


class DeviceService:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.broker_auth = brokerauth.for_settings(hub, hub.settings.mqtt)
        # The EMQX hook endpoints answer from this whichever backend provisions (they refuse every call
        # until mqtt.hook_secret is set), so a city can run both brokers while it moves.
        self.hooks = brokerauth.BrokerHooks(hub)

    def site_orgs(self, site: str) -> list[str]:
        """Who owns `site`: the org that claimed it by provisioning first, and the org video maps it to
        (its devices' events open cases there). Empty for a site nobody holds yet."""
        with self.hub.store.read() as db:
            return list(dict.fromkeys(o for o in (store.site_claim(db, site), store.video_site_org(db, site)) if o))

    def topic_org(self, topic: str) -> str | None:
        """The org a message on `topic` belongs to: its device's org, else its site's; None for topics of
        no known device or site (only city-wide readers may see those)."""
        parts = topic.split("/")
        if len(parts) < 4 or parts[0] != "city" or parts[1] != "v1":
            return None
        with self.hub.store.read() as db:
            d = store.get(db, f"{parts[2]}/{parts[3]}")
        if d is not None:
            return str(d["org_path"])
        owners = self.site_orgs(parts[2])
        return owners[0] if owners else None

    def provision(
        self, site: str, kind: Kind, name: str, device: str | None = None, org_path: str | None = None,
        actor: Provisioner | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Returns (device row, device config dict). The password exists only in the returned config.
        A site belongs to one org: the first provisioning claims it for `org_path`; later ones need
        `devices.write` over the site's org (`actor` None = the hub's operator) and put the device inside
        it. `org_path` defaults to the site's org (or /city for a new site)."""
        if not topics.valid_id(site):
            raise DeviceError("site", "letters, digits, '-' and '_' only (1-64)")
        owners = self.site_orgs(site)
        if actor is not None and any(not actor.allowed("devices.write", o) for o in owners):
            # Say nothing about whose site it is.
            raise DeviceError("site", "belongs to another org; only that org's admins provision devices on it", 403)
        org_path = org_path or (owners[0] if owners else "/city")
        if actor is not None and not actor.allowed("devices.write", org_path):
            raise DeviceError("org_path", "outside your scope", 403)
        if any(not under(org_path, o) for o in owners):
            raise DeviceError("org_path", "must lie inside the org the site belongs to")
        if kind not in ("camera", "scanner"):
            raise DeviceError("kind", "must be camera or scanner")
        device = device or f"{kind[:3]}-{slug(name)}-{secrets.token_hex(2)}"
        if not topics.valid_id(device):
            raise DeviceError("device", "letters, digits, '-' and '_' only (1-64)")
        device_id = f"{site}/{device}"
        with self.hub.store.read() as db:
            exists = store.get(db, device_id) is not None
        if exists:
            raise DeviceError("device", f"{device_id} already exists")
        username = broker_username(site, device)
        password = secrets.token_urlsafe(24)
        row = {
            "id": device_id, "site": site, "device": device, "kind": kind, "name": name, "org_path": org_path,
            "username": username, "created_at": utcnow(), "status": "unknown",
            "password_hash": brokerauth.hash_password(password),
        }
        with self.hub.store.tx() as db:
            store.insert(db, row)
            store.claim_site(db, site, org_path, actor.name if actor else "operator", row["created_at"])
            self._audit(db, "devices.provision", device_id, org_path,
                        {"kind": kind, "name": name, "actor": actor.name if actor else "operator"})
        self.broker_auth.set_device(username, password, site, device)
        cfg = self.device_config(row, password)
        return row, cfg

    def _audit(self, db: Any, action: str, target: str, org: str, detail: dict[str, Any]) -> None:
        try:
            from central.iam.audit import record
        except ImportError:  # iam not installed in this build
            return
        record(db, actor="system", action=action, target=target, org=org, detail=detail)

    def refresh_broker_acl(self) -> bool:
        """At hub start: bring every provisioned device's ACL up to the current contract (mosquitto: rewrite
        its blocks and reload when anything changed), and adopt onto their rows the password hashes of
        devices provisioned before the rows kept them (from mosquitto's password file)."""
        if known := self.broker_auth.password_hashes():
            with self.hub.store.tx() as db:
                for r in store.without_password_hash(db):
                    if r["username"] in known:
                        store.set_password_hash(db, r["id"], known[r["username"]])
                        self._audit(db, "devices.password_hash_adopted", r["id"], r["org_path"],
                                    {"from": "mosquitto password file"})
        return self.broker_auth.refresh(self._accounts())

    def _accounts(self) -> Iterator[brokerauth.Account]:
        """Every device's broker account, read when first iterated (the hooks backend never does)."""
        with self.hub.store.read() as db:
            rows = store.list_devices(db, None)
        for r in rows:
            yield brokerauth.Account(r["username"], r["site"], r["device"])

    def device_config(self, row: dict[str, Any], password: str) -> dict[str, Any]:
        m = self.hub.settings.mqtt
        use_tls = m.tls_port is not None and m.ca_file is not None
        cfg: dict[str, Any] = {
            "schema_version": 1,
            "site": row["site"],
            "device": row["device"],
            "kind": row["kind"],
            "name": row["name"],
            "mqtt": {
                "host": m.host,
                "port": m.tls_port if use_tls else m.port,
                "username": row["username"],
                "password": password,
                "tls": use_tls,
                **({"ca_file": str(m.ca_file)} if use_tls else {}),
            },
            "outbox": {"path": f"var/edge/{row['site']}-{row['device']}/outbox.db"},
            "heartbeat_s": 15,
        }
        # Capabilities fill their section (e.g. codes pins the city root key for scanners).
        self.hub.hooks.emit("devices.config", cfg)
        return cfg

    def list(self, org_prefixes: list[str] | None) -> list[dict[str, Any]]:
        now = datetime.now(UTC)
        stale = timedelta(seconds=self.hub.settings.device_offline_after_s)
        out = []
        with self.hub.store.read() as db:
            rows = store.list_devices(db, org_prefixes)
        for r in rows:
            out.append(self.view(r, now, stale))
        return out

    def is_active(self, device_id: str) -> bool:
        """Provisioned and not revoked (the bridge accepts messages only from such a device)."""
        with self.hub.store.read() as db:
            row = store.get(db, device_id)
        return row is not None and not row.get("revoked")

    def on_reported(self, db: Any, now: str, statuses: list[tuple[str, str]], heartbeats: dict[str, Any],
                    acks: list[Any]) -> None:
        """Hook `devices.reported`, inside the bridge's write transaction: what devices said about
        themselves (online/offline, heartbeat, command acks) lands in devices' own tables."""
        for device_id, state in statuses:
            store.set_status(db, device_id, state, now)
        for device_id, hb in heartbeats.items():
            store.set_heartbeat(db, device_id, now, hb.model_dump_json(), hb.queue_depth, hb.queue_dropped)
        for a in acks:
            store.ack_command(db, a.cmd_id, now, a.ok, a.detail)

    def get(self, device_id: str) -> dict[str, Any] | None:
        with self.hub.store.read() as db:
            r = store.get(db, device_id)
        if r is None:
            return None
        return self.view(r, datetime.now(UTC), timedelta(seconds=self.hub.settings.device_offline_after_s))

    @staticmethod
    def view(r: dict[str, Any], now: datetime, stale: timedelta) -> dict[str, Any]:
        last_hb = datetime.fromisoformat(r["last_hb_at"]) if r.get("last_hb_at") else None
        # Online = the broker says so (retained status / last will) and heartbeats are not overdue.
        online = r.get("status") == "online" and (last_hb is None or now - last_hb <= stale)
        return {
            "id": r["id"], "site": r["site"], "device": r["device"], "kind": r["kind"], "name": r["name"],
            "org_path": r["org_path"], "state": "online" if online else "offline",
            "status": r.get("status"), "status_at": r.get("status_at"), "last_heartbeat_at": r.get("last_hb_at"),
            "queue_depth": r.get("queue_depth") or 0, "queue_dropped": r.get("queue_dropped") or 0,
            "heartbeat": json.loads(r["hb"]) if r.get("hb") else None,
        }

    def events(self, device_id: str, limit: int = 50) -> list[dict[str, Any]]:
        with self.hub.store.read() as db:
            rows = store.recent_events(db, device_id, limit)
        for r in rows:
            r["payload"] = json.loads(r["payload"])
        return rows

    def send_command(self, device_id: str, action: str, args: dict[str, Any], actor: str) -> dict[str, Any]:
        with self.hub.store.read() as db:
            r = store.get(db, device_id)
        if r is None:
            raise DeviceError("device_id", f"unknown device {device_id}")
        cmd = messages.Cmd(action=action, args=args)  # type: ignore[arg-type]
        with self.hub.store.tx() as db:
            store.record_command(db, {"cmd_id": cmd.cmd_id, "device_id": device_id, "action": action,
                                      "args": json.dumps(args), "sent_at": utcnow()})
            self._audit(db, "devices.command", device_id, r["org_path"], {"action": action, "actor": actor})
        self.hub.publish(topics.cmd(r["site"], r["device"]), cmd.model_dump_json(), qos=1)
        return {"cmd_id": cmd.cmd_id}


def metric_samples(hub: Hub, db: Db) -> list[Sample]:
    """Devices and online devices per kind, and the outbox depth they last reported (what the edge still
    holds unconfirmed: a growing sum means the hub is not keeping up or a site is cut off)."""
    since = (datetime.now(UTC) - timedelta(seconds=hub.settings.device_offline_after_s)).isoformat()
    out = []
    rows = {r["kind"]: r for r in store.fleet_figures(db, since)}
    for kind in get_args(Kind):  # every kind, zero when none: a dashboard shows 0, not "no data"
        r = rows.get(kind) or {"n": 0, "online": 0, "depth": 0, "depth_max": 0}
        k = {"kind": kind}
        out += [Sample("devices", "Provisioned devices (not revoked)", r["n"], k),
                Sample("devices_online", "Devices online: connected and heard from recently", r["online"] or 0, k),
                Sample("device_outbox_depth", "Sum of the outbox depths devices last reported", r["depth"], k),
                Sample("device_outbox_depth_max", "Largest outbox depth a device last reported", r["depth_max"], k)]
    return out


def setup(hub: Hub) -> None:
    svc = DeviceService(hub)
    hub.services["devices"] = svc
    hub.hooks.on("hub.started", svc.refresh_broker_acl)
    hub.hooks.on("devices.reported", svc.on_reported)
    hub.metrics.source("devices", lambda db: metric_samples(hub, db))
