"""Who may connect to the broker and what they may do there, behind one interface.

Provisioning gives a device a password and the ACL of `central.broker.device_rules`; where that lands is the
broker's business (setting `mqtt.auth_backend`):

- `mosquitto`: mosquitto's password and ACL files (`mqtt.passwd_file`, `mqtt.acl_file`), then SIGHUP
  through `mqtt.pid_file`: what the hub always did.
- `hooks`: nothing is written anywhere but the hub's database. The broker (EMQX 5) asks the hub on every
  connect (HTTP authentication) and publish/subscribe (HTTP authorization), and `BrokerHooks` answers
  from the device's row and the same rules mosquitto's ACL file is rendered from.

Either way the device's password hash is stored on its row in the provisioning transaction, so a city can
move from mosquitto to EMQX without re-provisioning its devices."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from central import broker
from central.devices import store

if TYPE_CHECKING:
    from central.hub import Hub
    from central.settings import MqttSettings

Result = Literal["allow", "deny"]
Action = Literal["publish", "subscribe"]

# mosquitto_passwd's PBKDF2-SHA512 format ($7$<iterations>$<salt>$<hash>, base64). Device passwords are 192
# random bits, out of reach of guessing at any iteration count; the count only has to keep a reconnect
# storm of thousands of devices cheap for the hub that checks each one (~0.5 ms here).
ITERATIONS = 1000
_SALT_BYTES = 12


def hash_password(password: str, iterations: int = ITERATIONS) -> str:
    salt = secrets.token_bytes(_SALT_BYTES)
    dk = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, 64)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(dk).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """`stored` in mosquitto_passwd's formats: $7$ (PBKDF2-SHA512, 2.0) or $6$ (salted SHA-512, 1.x; a hash
    copied from an old password file). Anything else never matches."""
    parts = stored.split("$")
    try:
        if len(parts) == 5 and parts[1] == "7":
            iterations, salt, want = int(parts[2]), base64.b64decode(parts[3]), base64.b64decode(parts[4])
            if not 1 <= iterations <= 1_000_000:
                return False
            got = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, len(want))
        elif len(parts) == 4 and parts[1] == "6":
            salt, want = base64.b64decode(parts[2]), base64.b64decode(parts[3])
            got = hashlib.sha512(password.encode() + salt).digest()
        else:
            return False
    except ValueError:  # bad base64 or iteration count: a corrupt entry denies, it does not fail
        return False
    return hmac.compare_digest(got, want)


_DUMMY_HASH = hash_password(secrets.token_urlsafe(24))


@dataclass(frozen=True)
class Account:
    """A device's broker account: the username it connects with and whose prefix it owns."""

    username: str
    site: str
    device: str


class BrokerAuth(Protocol):
    """Where device credentials and ACLs go when devices are provisioned."""

    def set_device(self, username: str, password: str, site: str, device: str) -> None:
        """Give `username` this password and the device ACL of `site`/`device` (replacing what it had)."""
        ...

    def remove_device(self, username: str) -> None:
        """The account connects no more (what is connected stays until the broker drops it)."""
        ...

    def refresh(self, accounts: Iterable[Account]) -> bool:
        """Bring these accounts' ACLs up to the current rules; True when the broker's view changed."""
        ...

    def password_hashes(self) -> dict[str, str]:
        """username -> password hash the broker holds outside the hub's database (to adopt onto rows)."""
        ...


class MosquittoFiles:
    """mosquitto's password and ACL files, reloaded by SIGHUP. Without both files set nothing is written
    (a hub whose broker is managed by hand)."""

    def __init__(self, passwd_file: Path | None, acl_file: Path | None, pid_file: Path | None) -> None:
        self.passwd_file, self.acl_file, self.pid_file = passwd_file, acl_file, pid_file

    def _reload(self) -> None:
        if self.pid_file is not None:
            broker.reload_pid_file(self.pid_file)

    def set_device(self, username: str, password: str, site: str, device: str) -> None:
        if self.passwd_file is None or self.acl_file is None:
            return
        broker.set_user(self.passwd_file, self.acl_file, username, password, broker.device_acl(username, site, device))
        self._reload()

    def remove_device(self, username: str) -> None:
        if self.passwd_file is None or self.acl_file is None:
            return
        broker.remove_user(self.passwd_file, self.acl_file, username)
        self._reload()

    def refresh(self, accounts: Iterable[Account]) -> bool:
        if self.acl_file is None:
            return False
        acls = {a.username: broker.device_acl(a.username, a.site, a.device) for a in accounts}
        changed = broker.refresh_acl(self.acl_file, acls)
        if changed:
            self._reload()
        return changed

    def password_hashes(self) -> dict[str, str]:
        if self.passwd_file is None or not self.passwd_file.exists():
            return {}
        out = {}
        for line in self.passwd_file.read_text().splitlines():
            user, sep, h = line.partition(":")
            if sep and h:
                out[user] = h.strip()
        return out


class BrokerHooks:
    """EMQX asks, the hub answers: nothing to write at provisioning (the row holds the hash), nothing to
    refresh (the rules are evaluated per request, always the current ones)."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def set_device(self, username: str, password: str, site: str, device: str) -> None:
        return None

    def remove_device(self, username: str) -> None:
        return None

    def refresh(self, accounts: Iterable[Account]) -> bool:
        return False

    def password_hashes(self) -> dict[str, str]:
        return {}

    def secret_ok(self, given: str | None) -> bool:
        """The shared secret EMQX sends (`mqtt.hook_secret`), compared in constant time; no secret set: the
        hooks are off and nothing passes."""
        want = self.hub.settings.mqtt.hook_secret
        return want is not None and given is not None and hmac.compare_digest(given.encode(), want.encode())

    def _device(self, username: str) -> Account | None:
        """The active device behind a broker username ("site.device", see service.broker_username)."""
        site, dot, device = username.partition(".")
        if not dot:
            return None
        with self.hub.store.read() as db:
            row = store.get(db, f"{site}/{device}")
        if row is None or row["username"] != username or row.get("revoked"):
            return None
        return Account(username, row["site"], row["device"])

    def authenticate(self, username: str, password: str) -> tuple[Result, bool]:
        """(result, is_superuser) for a CONNECT. The hub's own user (every hub node and bridge member) by
        `mqtt.password`; a device by the hash on its row, unless revoked. Nobody is a superuser: the hub's
        rights come from the same rules as in mosquitto's ACL."""
        m = self.hub.settings.mqtt
        if username == m.username:
            ok = bool(m.password) and hmac.compare_digest(password.encode(), m.password.encode())
            return ("allow" if ok else "deny"), False
        site, dot, device = username.partition(".")
        row = None
        if dot:
            with self.hub.store.read() as db:
                row = store.get(db, f"{site}/{device}")
        stored = row.get("password_hash") if row is not None and row["username"] == username else None
        # An unknown user costs one hash too, so timing does not tell which usernames exist.
        ok = verify_password(password, stored or _DUMMY_HASH) and stored is not None
        return ("allow" if ok and row is not None and not row.get("revoked") else "deny"), False

    def authorize(self, username: str, action: Action, topic: str) -> Result:
        """Publish/subscribe by the rules mosquitto's ACL file is written from (`central.broker`). A shared
        subscription is judged by its real filter, as EMQX itself does before it asks."""
        if action == "subscribe" and topic.startswith("$share/"):
            parts = topic.split("/", 2)
            topic = parts[2] if len(parts) == 3 else ""
        if username == self.hub.settings.mqtt.username:
            rules = broker.HUB_RULES
        else:
            acct = self._device(username)
            if acct is None:
                return "deny"
            rules = broker.device_rules(acct.site, acct.device)
        return "allow" if broker.allows(rules, action, topic) else "deny"


def for_settings(hub: Hub, m: MqttSettings) -> BrokerAuth:
    """The backend `mqtt.auth_backend` names."""
    if m.auth_backend == "hooks":
        return BrokerHooks(hub)
    return MosquittoFiles(m.passwd_file, m.acl_file, m.pid_file)
