"""Registry service: common."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import ValidationError

from central.problems import HubError
from central.registry import store
from central.registry.ids import (
    IdError,
    normalize_id,
)
from central.registry.models import (
    EntityIn,
    iso,
)

if TYPE_CHECKING:
    from central.hub import Hub
    from central.store import Db

log = logging.getLogger("citybrain.registry")



EXT_KIND = {"person": "id_card", "enterprise": "uscc", "object": "registry.source", "place": "registry.source"}
MAX_DEPTH = 64
# one encoder instance: json.dumps with non-default options builds a new encoder on every call
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def _dumps(obj: Any) -> str:
    return _JSON.encode(obj)


# ---------------------------------------------------------------- errors and actors

class RegistryError(HubError, ValueError):
    status = 400

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}", field=field)
        self.message = message

    def to_dict(self) -> dict[str, str]:
        return {"field": self.field, "error": self.message}


class NotFound(RegistryError):
    status = 404


class Forbidden(RegistryError):
    status = 403


class Conflict(RegistryError):
    status = 409


class Actor(Protocol):
    """What the registry needs of an iam Principal (or of a system actor such as the CLI or MQTT)."""

    @property
    def name(self) -> str: ...

    def allowed(self, perm: str, org_path: str) -> bool: ...

    def scopes(self, perm: str) -> list[str]: ...


def under(org: str, scope: str) -> bool:
    return scope == "/" or org == scope or org.startswith(scope.rstrip("/") + "/")


@dataclass
class SystemActor:
    """An actor without a login (CLI run by an operator on the hub host, MQTT push): everything under
    `root`. The audit log names it."""

    name: str
    root: str = "/"

    def allowed(self, perm: str, org_path: str) -> bool:
        return under(org_path, self.root)

    def scopes(self, perm: str) -> list[str]:
        return [self.root]


def _now() -> str:
    return iso(datetime.now(UTC)) or ""


def _audit(db: Db, actor: Actor, action: str, target: str | None, org: str | None,
           detail: dict[str, Any] | None = None) -> None:
    from central.iam.audit import record

    record(db, actor=actor.name, action=action, target=target, org=org, detail=detail or {})


def _deny(hub: Hub, actor: Actor, perm: str, org: str, target: str | None, field: str,
          missing: RegistryError | None = None) -> RegistryError:
    """Audit the denial (its own transaction unless already in one) and return the error to raise: for
    an object outside what the actor may read, `missing` (the answer a missing object gets), so nothing
    about it leaks; else a 403 that names only the permission, never the object's org."""
    with hub.store.tx() as db:
        _audit(db, actor, "registry.denied", target, org, {"perm": perm})
    if missing is not None and actor.scopes(perm) and not actor.allowed("registry.read", org):
        return missing
    return Forbidden(field, f"{perm} not granted here")


def _cipher(hub: Hub) -> Any:
    from central.iam.pii import pii_cipher

    return pii_cipher(hub)



def _validation_error(e: ValidationError) -> RegistryError:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "body"
    return RegistryError(loc, err["msg"])



def ext_index(cipher: Any, etype: str, key: str | None) -> str | None:
    if key is None:
        return None
    if EXT_KIND[etype] == "registry.source":
        # the PII index normalises away dashes and spaces; system keys are case/dash-sensitive, so hex them
        key = key.encode().hex()
    return cipher.blind_index(EXT_KIND[etype], key)


_validate_entity = EntityIn.__pydantic_validator__.validate_python  # model_validate minus its Python wrapper


def _parse(raw: dict[str, Any] | EntityIn) -> EntityIn:
    if isinstance(raw, EntityIn):
        return raw.model_copy()
    try:
        return _validate_entity(raw)  # type: ignore[no-any-return]
    except ValidationError as e:
        raise _validation_error(e) from None



def _org_or_404(hub: Hub, eid: str, field: str) -> str:
    with hub.store.read() as db:
        org = store.org_of(db, eid)
    if org is None:
        raise NotFound(field, f"{eid} is not registered")
    return org


def _audit_tx(hub: Hub, actor: Actor, action: str, target: str | None, org: str | None,
              detail: dict[str, Any] | None = None) -> None:
    """Audit a read: joins the caller's transaction if there is one, else commits on its own."""
    with hub.store.tx() as db:
        _audit(db, actor, action, target, org, detail)


def _id_arg(value: str, field: str = "id") -> str:
    try:
        return normalize_id(value)
    except IdError as e:
        raise RegistryError(field, str(e)) from None


