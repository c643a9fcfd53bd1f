"""Registry rules: identifiers, registration (single, bulk, push), links, queries, search, usage
applications, aliases and the change feed. No HTTP types and no SQL here (that is `central.registry.store`);
errors are `RegistryError`s naming the field, which routes turn into 4xx and the importer into per-row errors.

Scope: every entity carries the org path of the department that registered it. An actor may read what
lies under its `registry.read` scopes, plus the owner orgs of approved, in-period usage applications
(projected to the granted fields, each such read audited).

This package is the facade other code imports (`from central.registry import service`); the rules live in
one module per section: common (errors, actors), feed, register, importing (bulk), read, links, aliases,
applications.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from central.registry import store
from central.registry.ids import IdError, make_id, normalize_id, validate_id_card, validate_uscc
from central.registry.models import (
    BUSINESS,
    GRANTABLE,
    PHYSICAL,
    AliasIn,
    EntityIn,
    EntityPatch,
    PushIn,
    UsageApplicationIn,
)
from central.registry.service.aliases import aliases_of, resolve_alias, set_alias
from central.registry.service.applications import application_owner, apply, decide, list_applications
from central.registry.service.common import (
    EXT_KIND,
    MAX_DEPTH,
    Actor,
    Conflict,
    Forbidden,
    NotFound,
    RegistryError,
    SystemActor,
    _cipher,
    _deny,
    _id_arg,
    _now,
    _parse,
    ext_index,
    under,
)
from central.registry.service.feed import FEED_CSV_COLUMNS, append_feed, export_feed, export_feed_csv, read_feed
from central.registry.service.importing import import_rows
from central.registry.service.links import add_link, ancestors, descendants, linked, links_of, remove_link
from central.registry.service.read import Visibility, get_entity, lookup, lookup_external, search, visibility
from central.registry.service.register import (
    ImportReport,
    Registrar,
    _check_entity,
    _ImportRegistrar,
    push,
    register,
    update,
)
from central.registry.store import ENTITY_COLS

if TYPE_CHECKING:
    from central.hub import Hub
    from central.store import Db

log = logging.getLogger("citybrain.registry")


def on_mqtt_push(hub: Hub, payload: bytes) -> ImportReport | None:
    """The bridge hands us the raw payload of protocol.topics.REGISTRY_PUSH. Who may publish there is the
    broker ACL's business; a refused payload is kept in registry_rejects so it is not silently lost."""
    actor = SystemActor("mqtt:registry_push")
    try:
        body = json.loads(payload)
        if isinstance(body, dict) and "records" not in body:
            body = {"records": [body]}
        report = push(hub, actor, body)
    except (ValueError, RegistryError) as e:
        err = e.to_dict() if isinstance(e, RegistryError) else {"field": "payload", "error": str(e)}
        _reject(hub, "mqtt", json.dumps(err), payload)
        return None
    for e in report.errors:
        _reject(hub, "mqtt", json.dumps(e, ensure_ascii=False), payload)
    return report


def _reject(hub: Hub, source: str, error: str, payload: bytes) -> None:
    log.warning("registry push refused: %s", error)
    with hub.store.tx() as db:
        store.insert_reject(db, _now(), source, error, payload[:4096].decode("utf-8", "replace"))


class RegistryService:
    """hub.services["registry"]: what other capabilities call (codes: identity lookup, feed records)."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def lookup(self, eid: str) -> dict[str, Any] | None:
        return lookup(self.hub, eid)

    def append_feed(self, db: Db, kind: str, entity_id: str | None,
                    data: dict[str, Any], org: str | None = None) -> int:
        return append_feed(db, kind, entity_id, data, org)


def setup(hub: Hub) -> None:
    hub.services["registry"] = RegistryService(hub)
    hub.hooks.on("mqtt.registry_push", lambda payload: on_mqtt_push(hub, payload))


__all__ = [
    "BUSINESS", "PHYSICAL", "AliasIn", "UsageApplicationIn", "EntityIn", "EntityPatch", "PushIn", "make_id",
    "validate_id_card", "validate_uscc",
    "ENTITY_COLS", "EXT_KIND", "FEED_CSV_COLUMNS", "GRANTABLE", "MAX_DEPTH", "Actor", "Conflict", "Forbidden",
    "IdError", "ImportReport", "NotFound", "Registrar", "RegistryError", "RegistryService", "SystemActor",
    "Visibility", "_ImportRegistrar", "_check_entity", "_cipher", "_deny", "_id_arg", "_parse", "add_link",
    "aliases_of", "ancestors", "append_feed", "application_owner", "apply", "decide", "descendants",
    "export_feed", "export_feed_csv", "ext_index", "get_entity", "import_rows", "linked", "links_of",
    "list_applications", "lookup", "lookup_external", "normalize_id", "on_mqtt_push", "push", "read_feed", "register",
    "remove_link", "resolve_alias", "search", "set_alias", "setup", "under", "update", "visibility",
]
