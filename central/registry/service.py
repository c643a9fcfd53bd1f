"""Registry rules: identifiers, registration (single, bulk, push), links, queries, search, usage
applications, aliases and the change feed. No HTTP types here; errors are `RegistryError`s naming the
field, which routes turn into 4xx and the importer into per-row errors.

Scope: every entity carries the org path of the department that registered it. An actor may read what
lies under its `registry.read` scopes, plus the owner orgs of approved, in-period usage applications
(projected to the granted fields, each such read audited).
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import sqlite_utils
from pydantic import ValidationError
from pydantic_core import to_json

from central import csvsafe
from central.registry.bulkwrite import (
    ENTITY_COLS,
    INSERT_LINK,
    RESUME,
    SKIPPED,
    UPSERT_SERIAL,
    Answer,
    BatchWriter,
    Rows,
    receive,
    send,
    write_rows,
)
from central.registry.ids import (
    TYPE_CODE,
    IdError,
    geohash_encode,
    make_id,
    normalize_id,
    validate_id_card,
    validate_uscc,
)
from central.registry.models import (
    BUSINESS,
    GRANTABLE,
    PHYSICAL,
    AliasIn,
    ApplicationIn,
    EntityIn,
    EntityPatch,
    PushIn,
    iso,
)

if TYPE_CHECKING:
    from central.hub import Hub

log = logging.getLogger("citybrain.registry")

EXT_KIND = {"person": "id_card", "enterprise": "uscc", "object": "registry.source", "place": "registry.source"}
MAX_DEPTH = 64
# one encoder instance: json.dumps with non-default options builds a new encoder on every call
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def _dumps(obj: Any) -> str:
    return _JSON.encode(obj)


# ---------------------------------------------------------------- errors and actors

class RegistryError(ValueError):
    status = 400

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
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


def org_clause(col: str, scopes: Iterable[str]) -> tuple[str, list[str]]:
    """SQL for "col lies under one of scopes"; a range test instead of LIKE so the org index is used and
    `_`/`%` in paths mean nothing special."""
    parts: list[str] = []
    args: list[str] = []
    for s in dict.fromkeys(scopes):
        if s == "/":
            return "1", []
        s = s.rstrip("/")
        parts.append(f"({col} = ? OR ({col} > ? AND {col} < ?))")
        args += [s, s + "/", s + "0"]  # '0' sorts right after '/'
    return ("(" + " OR ".join(parts) + ")" if parts else "0"), args


def _now() -> str:
    return iso(datetime.now(UTC)) or ""


def _audit(db: sqlite_utils.Database, actor: Actor, action: str, target: str | None, org: str | None,
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


# ---------------------------------------------------------------- change feed

def append_feed(db: sqlite_utils.Database, kind: str, entity_id: str | None, data: dict[str, Any],
                org: str | None = None) -> int:
    """Append one change record; returns its seq. Call inside the write's transaction.

    Exactly-once for a resuming reader: SQLite has one writer at a time, so seqs become visible in
    commit order and a reader that saw seq N can never later find a committed row below N."""
    if org is None and entity_id is not None:
        row = db.conn.execute("SELECT org FROM registry_entities WHERE id = ?", (entity_id,)).fetchone()
        org = row[0] if row else None
    cur = db.conn.execute(
        "INSERT INTO registry_feed (ts, kind, entity_id, org, data) VALUES (?, ?, ?, ?, ?)",
        (_now(), kind, entity_id, org, _dumps(data)),
    )
    return int(cur.lastrowid or 0)


def read_feed(hub: Hub, actor: Actor, after: int = 0, limit: int = 1000) -> tuple[list[dict[str, Any]], int]:
    """Records with seq > after, visible to the actor, oldest first; returns (items, next cursor)."""
    if after < 0 or not 1 <= limit <= 10000:
        raise RegistryError("limit" if after >= 0 else "after", "after must be >= 0, limit 1..10000")
    clause, args = org_clause("org", actor.scopes("registry.feed.read"))
    rows = hub.store.conn.execute(
        f"SELECT seq, ts, kind, entity_id, org, data FROM registry_feed WHERE seq > ? AND {clause}"
        " ORDER BY seq LIMIT ?",
        (after, *args, limit),
    ).fetchall()
    items = [
        {"seq": r[0], "ts": r[1], "kind": r[2], "entity_id": r[3], "org": r[4], "data": json.loads(r[5])}
        for r in rows
    ]
    return items, (items[-1]["seq"] if items else after)


def export_feed(hub: Hub, actor: Actor, after: int = 0, page: int = 5000) -> Iterator[str]:
    """The feed as JSONL lines from `after` to the current end (paged so memory stays flat)."""
    cursor = after
    while True:
        items, cursor = read_feed(hub, actor, cursor, page)
        for it in items:
            yield json.dumps(it, ensure_ascii=False, separators=(",", ":")) + "\n"
        if len(items) < page:
            return


FEED_CSV_COLUMNS = ("seq", "ts", "kind", "entity_id", "org", "name", "address", "data")


def export_feed_csv(hub: Hub, actor: Actor, after: int = 0, page: int = 5000) -> Iterator[str]:
    """The feed as CSV lines for a spreadsheet (header first): name and address in their own columns, the
    whole record as JSON in `data`. Cells go through csvsafe: a registered name such as `=HYPERLINK(...)`
    is shown as text, never run. (The JSONL feed is for machines and carries values verbatim.)"""
    yield csvsafe.format_row(FEED_CSV_COLUMNS)
    cursor = after
    while True:
        items, cursor = read_feed(hub, actor, cursor, page)
        for it in items:
            d = it["data"] if isinstance(it["data"], dict) else {}
            yield csvsafe.format_row([it["seq"], it["ts"], it["kind"], it["entity_id"], it["org"], d.get("name"),
                                      d.get("address"), json.dumps(it["data"], ensure_ascii=False)])
        if len(items) < page:
            return


# ---------------------------------------------------------------- registration

@dataclass
class ImportReport:
    total: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    ids: list[dict[str, Any]] = field(default_factory=list)  # per accepted row: {"row", "id", "created"}

    def to_dict(self, with_ids: bool = True) -> dict[str, Any]:
        d = {"total": self.total, "created": self.created, "updated": self.updated,
             "unchanged": self.unchanged, "rejected": len(self.errors), "errors": self.errors}
        if with_ids:
            d["ids"] = self.ids
        return d


def _validation_error(e: ValidationError) -> RegistryError:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "body"
    return RegistryError(loc, err["msg"])


def _check_entity(item: EntityIn) -> None:
    """Type-dependent rules (need no database)."""
    t = item.type
    if item.external_key is not None:
        try:
            if t == "person":
                item.external_key = validate_id_card(item.external_key)
            elif t == "enterprise":
                item.external_key = validate_uscc(item.external_key)
        except ValueError as e:
            raise RegistryError("external_key", str(e)) from None
    elif t in ("person", "enterprise"):
        lib = "ID-card number (population library)" if t == "person" else "unified social credit code"
        raise RegistryError("external_key", f"a {t} needs its {lib}")
    if item.phone is not None and t != "person":
        raise RegistryError("phone", "only a person has a phone")
    if (item.lat is None) != (item.lon is None):
        raise RegistryError("lat" if item.lat is None else "lon", "give lat and lon together")
    if item.lat is not None and item.lon is not None:
        if item.grid is not None:
            raise RegistryError("grid", "give grid or lat/lon, not both")
        item.grid = geohash_encode(item.lat, item.lon, 8)
        item.lat = item.lon = None  # folded into grid: a second check must not see both
    if t in ("person", "enterprise") and (item.grid or item.valid_from or item.valid_to):
        bad = "grid" if item.grid else "valid_from" if item.valid_from else "valid_to"
        raise RegistryError(bad, "only places and objects carry a spatio-temporal identifier")
    if item.valid_from and item.valid_to and iso(item.valid_to) <= iso(item.valid_from):  # type: ignore[operator]
        raise RegistryError("valid_to", "must be after valid_from")
    if item.links and t in ("person", "enterprise"):
        raise RegistryError("links", f"a {t} is a link target, not a source")
    if len(item.links) > 1:
        seen: dict[tuple[str, str], int] = {}
        for i, lk in enumerate(item.links):
            j = seen.setdefault((lk.rel, lk.target), i)
            if j != i:
                raise RegistryError(f"links.{i}", f"repeats links.{j} ({lk.rel} {lk.target})")
    if t == "object":
        rels = {lk.rel for lk in item.links}
        if rels.isdisjoint(PHYSICAL) or rels.isdisjoint(BUSINESS):
            missing = []
            if rels.isdisjoint(PHYSICAL):
                missing.append(f"a physical link ({'|'.join(PHYSICAL)}) to a parent object or place")
            if rels.isdisjoint(BUSINESS):
                missing.append(f"a business link ({'|'.join(BUSINESS)}) to an enterprise or person")
            raise RegistryError("links", "an object needs " + " and ".join(missing))


@dataclass
class _Batch:
    """Prepared rows of one chunk (`rows`, what the writer stores) and what the importer keeps about them."""

    rows: Rows
    ids: list[str]  # new base ids, in row order
    exts: list[str]  # blind indexes of the rows that have an external key
    alias_keys: list[tuple[str, str]]
    accepted: list[tuple[int, str]] = field(default_factory=list)  # (row, id), for the import report
    errors: list[dict[str, Any]] = field(default_factory=list)  # per-row errors (parsing and preparing)
    read: int = 0  # input rows the chunk consumed
    parsed: list[Parsed] = field(default_factory=list)
    parse_errors: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)


def _stored_serial(conn: sqlite3.Connection, key: tuple[str, str]) -> int:
    """The next unused serial for (type code, region) as stored."""
    r = conn.execute("SELECT next FROM registry_serials WHERE type_code = ? AND region = ?", key).fetchone()
    return r[0] if r else 1


class Registrar:
    """Validates rows against the database and the rows accepted before them, then writes them with one
    statement per table. A row is either fully prepared (id allocated, keys encrypted) or rejected with an
    error; nothing is written until `flush` (inside the caller's transaction) or, in a bulk import, until
    the writer process takes the batch (`take`)."""

    persist_serials = True  # the import's registrar reserves serial blocks up front instead

    def __init__(self, hub: Hub, db: sqlite_utils.Database, actor: Actor, default_org: str | None,
                 cipher: Any) -> None:
        self.hub, self.db, self.actor, self.default_org, self.cipher = hub, db, actor, default_org, cipher
        self.conn = db.conn
        self.pending: list[tuple[Any, ...]] = []  # queued entity rows (ENTITY_COLS order)
        self.feeds: list[tuple[Any, ...]] = []
        self.link_rows: list[tuple[Any, ...]] = []
        self.alias_rows: list[tuple[Any, ...]] = []
        self.counters: dict[tuple[str, str], int] = {}
        self.new_types: dict[str, str] = {}  # ids prepared (and not yet known to be stored) -> type
        self.type_cache: dict[str, str | None] = {}
        self.pending_ext: dict[str, str] = {}
        self.pending_alias: dict[tuple[str, str], str] = {}
        self.allowed_orgs: dict[str, bool] = {}
        self.target_cache: dict[str, str] = {}  # link target text -> normalised id
        # filled by prefetch(): a miss there is final for this chunk (see import_rows on concurrent writers)
        self.known_ext: dict[str, str] | None = None
        self.known_alias: dict[tuple[str, str], str] | None = None
        self.prefetch_orgs: set[str] = set()
        self.ts = _now()

    def prefetch(self, items: list[tuple[EntityIn, str | None]]) -> None:
        """Load, in a few IN-queries, the external keys and local ids a chunk refers to (a point query per
        row was most of the import time)."""
        bis = [bi for _, bi in items if bi]
        self.known_ext = {}
        for i in range(0, len(bis), 500):
            part = bis[i:i + 500]
            self.known_ext.update(self.conn.execute(
                f"SELECT ext_bi, id FROM registry_entities WHERE ext_bi IN ({','.join('?' * len(part))})", part))
        wanted: dict[str, set[str]] = {}
        default = self.default_org or ""
        for item, _ in items:
            org = item.org or default
            names = wanted.get(org)
            if names is None:
                names = wanted[org] = set()
            if item.local_id:
                names.add(item.local_id)
            for lk in item.links:
                if lk.target[0] == "@":
                    names.add(lk.target[1:])
        self.known_alias = {}
        for org, names in wanted.items():
            lst = sorted(names)
            for i in range(0, len(lst), 500):
                part = lst[i:i + 500]
                for local_id, base in self.conn.execute(
                    f"SELECT local_id, base_id FROM registry_aliases WHERE org = ? AND local_id IN"
                    f" ({','.join('?' * len(part))})", (org, *part)):
                    self.known_alias[(org, local_id)] = base
        self.prefetch_orgs = set(wanted)

    def resolve_org(self, item: EntityIn) -> str:
        org = item.org or self.default_org
        if org is None:
            scopes = self.actor.scopes("registry.write")
            if len(scopes) != 1:
                raise RegistryError("org", "say which org registers this (you may write in several or none)")
            org = scopes[0]
        if org == "/":  # a system actor's root is not a department: the record must say whose it is
            raise RegistryError("org", "say which department registers this (an org path such as /city/dept)")
        ok = self.allowed_orgs.get(org)
        if ok is None:
            ok = self.allowed_orgs[org] = self.actor.allowed("registry.write", org)
        if not ok:
            raise Forbidden("org", f"registry.write not granted for {org}")
        return org

    def _sees(self, eid: str) -> bool:
        """May the actor learn `eid` (it lies in the actor's read scope)? Only asked on a duplicate."""
        r = self.conn.execute("SELECT org FROM registry_entities WHERE id = ?", (eid,)).fetchone()
        return r is None or self.actor.allowed("registry.read", r[0])

    def entity_type(self, eid: str) -> str | None:
        if eid in self.new_types:
            return self.new_types[eid]
        if eid not in self.type_cache:
            r = self.conn.execute(
                "SELECT type FROM registry_entities WHERE id = ? AND status = 'active'", (eid,)
            ).fetchone()
            self.type_cache[eid] = r[0] if r else None
        return self.type_cache[eid]

    def alias_target(self, org: str, local_id: str) -> str | None:
        hit = self.pending_alias.get((org, local_id))
        if hit:
            return hit
        if self.known_alias is not None and org in self.prefetch_orgs:
            return self.known_alias.get((org, local_id))
        r = self.conn.execute(
            "SELECT base_id FROM registry_aliases WHERE org = ? AND local_id = ?", (org, local_id)
        ).fetchone()
        return r[0] if r else None

    def existing_by_ext(self, bi: str) -> str | None:
        if bi in self.pending_ext:
            return self.pending_ext[bi]
        if self.known_ext is not None:
            return self.known_ext.get(bi)
        r = self.conn.execute("SELECT id FROM registry_entities WHERE ext_bi = ?", (bi,)).fetchone()
        return r[0] if r else None

    def next_serial(self, key: tuple[str, str]) -> int:
        """The next serial for (type code, region); the caller holds the write lock."""
        n = self.counters.get(key)
        if n is None:
            n = self.counters[key] = _stored_serial(self.conn, key)
        return n

    def ext_index(self, item: EntityIn) -> str | None:
        return ext_index(self.cipher, item.type, item.external_key)

    def prepare(self, item: EntityIn, bi: str | None = None, checked: bool = False) -> str:
        """Check one row against the store and earlier rows; queue it; return its new base id."""
        if not checked:
            _check_entity(item)
        org = self.resolve_org(item)
        if bi is None:
            bi = self.ext_index(item)
        if bi is not None:
            dup = self.existing_by_ext(bi)
            if dup:
                raise Conflict("external_key", f"already registered as {dup}" if self._sees(dup)
                               else "already registered, outside your scope")
        if item.local_id is not None:
            hit = self.alias_target(org, item.local_id)
            if hit:
                raise Conflict("local_id", f"{item.local_id!r} already maps to {hit} in {org}")
        links: list[tuple[str, str, str]] = []
        for i, lk in enumerate(item.links):
            target = lk.target
            dst = self.target_cache.get(target)
            if dst is None:
                f = f"links.{i}.target"
                if target.startswith("@"):
                    dst = self.alias_target(org, target[1:])
                    if dst is None:
                        raise RegistryError(f, f"no local id {target[1:]!r} in {org}")
                else:
                    try:
                        dst = self.target_cache[target] = normalize_id(target)
                    except IdError as e:
                        raise RegistryError(f, str(e)) from None
            dtype = self.entity_type(dst)
            rel = lk.rel
            if dtype is None:
                raise NotFound(f"links.{i}.target", f"{dst} is not registered")
            if rel in PHYSICAL:
                cat = "physical"
                if dtype != "object" and dtype != "place":
                    raise RegistryError(f"links.{i}.target",
                                        f"{rel} needs a parent object or place, {dst} is a {dtype}")
            else:
                cat = "business"
                if dtype != "enterprise" and dtype != "person":
                    raise RegistryError(f"links.{i}.target",
                                        f"{rel} needs an enterprise or person, {dst} is a {dtype}")
            links.append((rel, dst, cat))
        # every check passed: allocate and queue (nothing above mutated batch state)
        etype, region = item.type, item.region
        key = (TYPE_CODE[etype], region)
        serial = self.next_serial(key)
        eid = make_id(etype, region, serial)
        self.counters[key] = serial + 1
        ext_enc = ext_masked = phone_enc = None
        ext_key = item.external_key
        if ext_key is not None:
            if etype == "person":
                from central.iam.pii import mask_id_card

                ext_enc = self.cipher.encrypt(ext_key)
                ext_masked = mask_id_card(ext_key)
            else:  # a USCC or a system key is public business data: keep it readable
                ext_masked = ext_key
        if item.phone is not None:
            phone_enc = self.cipher.encrypt(item.phone)
        attrs = item.attrs
        vf, vt = iso(item.valid_from), iso(item.valid_to)
        ext_kind = EXT_KIND[etype] if bi else None
        name, address, grid, local_id = item.name, item.address, item.grid, item.local_id
        who, ts = self.actor.name, self.ts
        self.pending.append((eid, etype, region, name, address, org, ext_kind, bi, ext_enc, ext_masked, phone_enc,
                             grid, vf, vt, _dumps(attrs) if attrs else "{}", "active", who, ts, ts))
        # the feed omits empty fields: it is most of the bulk write volume
        feed: dict[str, Any] = {"type": etype, "region": region, "name": name, "org": org}
        if address:
            feed["address"] = address
        if ext_kind:
            feed["ext_kind"] = ext_kind
        if ext_masked:
            feed["external_key"] = ext_masked
        if grid:
            feed["grid"] = grid
        if vf:
            feed["valid_from"] = vf
        if vt:
            feed["valid_to"] = vt
        if attrs:
            feed["attrs"] = attrs
        if local_id:
            feed["local_id"] = local_id
        if links:
            feed["links"] = [{"rel": r, "dst": d} for r, d, _ in links]
            self.link_rows.extend([(eid, rel, dst, cat, org, who, ts) for rel, dst, cat in links])
        if local_id is not None:
            self.alias_rows.append((org, local_id, eid, who, ts))
            self.pending_alias[(org, local_id)] = eid
        # pydantic-core's serializer: a third of json's cost, and feed data need no key order
        self.feeds.append((ts, eid, org, to_json(feed).decode()))
        self.new_types[eid] = etype
        if bi is not None:
            self.pending_ext[bi] = eid
        return eid

    def discard(self) -> None:
        """Drop the queued rows (the caller rolled back to before them): later rows must not find them."""
        b = self.take()
        self.forget(b.ids, b.exts, b.alias_keys)

    def forget(self, ids: Iterable[str], exts: Iterable[str], alias_keys: Iterable[tuple[str, str]]) -> None:
        """Stop answering for these prepared rows from memory: they were rolled back, or they are committed
        and the database now answers for them (a long import would otherwise hold every row's keys)."""
        for eid in ids:
            self.new_types.pop(eid, None)
        for bi in exts:
            self.pending_ext.pop(bi, None)
        for k in alias_keys:
            self.pending_alias.pop(k, None)

    def _clear(self) -> None:
        self.pending = []
        self.feeds = []
        self.link_rows = []
        self.alias_rows = []

    def take(self) -> _Batch:
        """Hand the queued rows over as one batch and start a new one."""
        b = self._batch()
        self._clear()
        return b

    def _batch(self) -> _Batch:
        p = self.pending
        rows = Rows(p, self.link_rows, self.alias_rows, self.feeds,
                    [(k[0], k[1], v) for k, v in self.counters.items()] if self.persist_serials else [])
        return _Batch(rows, [e[0] for e in p], [e[7] for e in p if e[7] is not None],
                      [(a[0], a[1]) for a in self.alias_rows])

    def flush(self) -> int:
        """Write every queued row (entity, FTS, links, alias, feed, serial counters). Inside a tx. On an
        error the rows stay queued, for `discard`."""
        if not self.pending:
            return 0
        b = self._batch()
        write_rows(self.conn, b.rows)
        self._clear()
        return len(b)


class _ImportRegistrar(Registrar):
    """The bulk import's registrar: it prepares chunk k+1 outside any transaction while the writer process
    stores chunk k, so it cannot read-and-bump serial counters under the write lock. It reserves blocks of
    serials instead (a short transaction of its own; the block doubles each time, so a 1M-row import
    reserves ~7 times) and gives back what it did not use when the import ends."""

    persist_serials = False

    def __init__(self, *a: Any, block: int) -> None:
        super().__init__(*a)
        self.block = block
        self.limits: dict[tuple[str, str], int] = {}

    def next_serial(self, key: tuple[str, str]) -> int:
        n = self.counters.get(key)
        if n is not None and n < self.limits[key]:
            return n
        size = self.block
        self.block = min(self.block * 2, 1 << 20)
        with self.hub.store.tx() as db:  # waits while the writer commits its chunk
            n = _stored_serial(db.conn, key)
            db.conn.execute(UPSERT_SERIAL, (*key, n + size))
        self.counters[key], self.limits[key] = n, n + size
        return n

    def release(self) -> None:
        """Give back the unused end of each block, unless somebody reserved after it."""
        if not self.limits:
            return
        with self.hub.store.tx() as db:
            db.conn.executemany(
                "UPDATE registry_serials SET next = ? WHERE type_code = ? AND region = ? AND next = ?",
                [(self.counters[k], *k, lim) for k, lim in self.limits.items()])
        self.limits.clear()


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


def register(hub: Hub, actor: Actor, raw: dict[str, Any] | EntityIn) -> dict[str, Any]:
    """Register one entity (API / console); raises RegistryError naming the field."""
    item = _parse(raw)
    cipher = _cipher(hub)
    try:
        with hub.store.tx() as db:
            reg = Registrar(hub, db, actor, None, cipher)
            eid = reg.prepare(item)
            reg.flush()
            _audit(db, actor, "registry.register", eid, _org_of(db, eid))
    except Forbidden as e:
        raise _deny(hub, actor, "registry.write", item.org or "?", None, e.field) from None
    return get_entity(hub, actor, eid)


def _org_of(db: sqlite_utils.Database, eid: str) -> str | None:
    r = db.conn.execute("SELECT org FROM registry_entities WHERE id = ?", (eid,)).fetchone()
    return r[0] if r else None


Progress = Callable[[int], None]


Parsed = tuple[int, EntityIn, str | None]
Row = tuple[int, dict[str, Any] | Exception]


def _parse_row(cipher: Any, line: int, raw: dict[str, Any] | Exception, parsed: list[Parsed],
               errors: list[dict[str, Any]]) -> None:
    """The database-free part of a row: shape, type rules, and the blind index (HMAC before the write lock,
    so it does not hold other writers up)."""
    try:
        if isinstance(raw, Exception):
            raise raw
        item = _parse(raw)
        _check_entity(item)
        parsed.append((line, item, ext_index(cipher, item.type, item.external_key)))
    except RegistryError as e:
        errors.append({"row": line, **e.to_dict()})
    except ValueError as e:  # the importer's FieldError names the column
        errors.append({"row": line, "field": getattr(e, "field", "row"), "error": str(e)})


class _Skipped(Exception):
    """The writer left a batch alone: it came after a failed one (see bulkwrite.serve)."""


def _as_error(answer: Answer) -> BaseException | None:
    """A writer's answer for a batch: None if it landed, else why not."""
    if answer is None:
        return None
    if tuple(answer) == SKIPPED:
        return _Skipped()
    return getattr(sqlite3, answer[0], sqlite3.Error)(answer[1])  # type: ignore[no-any-return]


class _LocalWriter:
    """Stores a batch right away in this thread: an import of one chunk has nothing to overlap with."""

    def __init__(self, hub: Hub, actor: Actor, org: str | None) -> None:
        self.writer = BatchWriter(hub.store, actor.name, org)
        self.answers: list[Answer] = []

    def resume(self) -> None:
        self.writer.resume()

    def write(self, b: _Batch) -> None:
        self.answers.append(self.writer.write(b.rows))

    def result(self) -> BaseException | None:
        return _as_error(self.answers.pop(0))

    def stop(self) -> None:
        pass


class _WriterProcess:
    """The writer stage of a multi-chunk import, as a child process (see `central.registry.bulkwrite`)."""

    def __init__(self, hub: Hub, actor: Actor, org: str | None) -> None:
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "central.registry.bulkwrite", str(Path(hub.store.path).resolve()),
             actor.name, org or ""], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self.broken: BaseException | None = None

    def write(self, b: _Batch) -> None:
        self._send(b.rows.wire())

    def resume(self) -> None:
        self._send(RESUME)

    def _send(self, frame: Any) -> None:
        assert self.proc.stdin is not None
        try:
            send(self.proc.stdin, frame)
        except OSError as e:  # it died: result() says so
            self.broken = e

    def result(self) -> BaseException | None:
        assert self.proc.stdout is not None
        try:
            answer = receive(self.proc.stdout)
        except EOFError:
            return RuntimeError(f"the registry import writer exited with {self.proc.wait()} ({self.broken})")
        return _as_error(answer)

    def stop(self) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.close()  # end of input: it finishes its checkpoint and exits
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _chunks(rows: Iterable[Row], chunk: int) -> Iterator[list[Row]]:
    it = iter(rows)
    while part := list(islice(it, chunk)):
        yield part


def import_rows(hub: Hub, actor: Actor, rows: Iterable[Row], *, org: str | None = None, chunk: int = 5000,
                progress: Progress | None = None) -> ImportReport:
    """Bulk registration, as a two-stage pipeline: this process parses and prepares chunk k+1 (per-row
    errors, ids, PII, links) while a writer process stores chunk k in one transaction (an import of one
    chunk is written in place). See `central.registry.bulkwrite` for why a process.

    Chunk k+1 is prepared on top of chunk k before k is committed: the registrar remembers k's ids, keys
    and local ids until the writer confirms the commit, then lets the database answer for them. Should a
    write still fail (a concurrent writer took an external key or a local id meanwhile), the writer rolls
    that chunk back, this process redoes it row by row under SAVEPOINTs (valid rows land, a bad row leaves
    nothing), and prepares the next chunk afresh. A failing row source raises after the chunks before it
    have landed."""
    if hub.store.conn.in_transaction:
        raise RuntimeError("import_rows commits chunk by chunk: call it outside a transaction")
    report = ImportReport()
    cipher = _cipher(hub)
    reg = _ImportRegistrar(hub, hub.store.db, actor, org, cipher, block=max(chunk, 1000))
    writer: _LocalWriter | _WriterProcess | None = None
    inflight: _Batch | None = None

    def prepare(parsed: list[Parsed], parse_errors: list[dict[str, Any]], n: int) -> _Batch:
        reg.ts = _now()
        reg.type_cache = {k: v for k, v in reg.type_cache.items() if v is not None}  # misses may be stale
        reg.prefetch([(item, bi) for _, item, bi in parsed])
        accepted: list[tuple[int, str]] = []
        errors = list(parse_errors)
        for line, item, bi in parsed:
            try:
                accepted.append((line, reg.prepare(item, bi, checked=True)))
            except RegistryError as e:
                errors.append({"row": line, **e.to_dict()})
        b = reg.take()
        b.accepted, b.errors, b.read, b.parsed, b.parse_errors = accepted, errors, n, parsed, parse_errors
        return b

    def settle() -> bool:
        """Wait for the in-flight batch; True if it landed as prepared."""
        nonlocal inflight
        b, inflight = inflight, None
        assert b is not None and writer is not None
        err = writer.result()
        reg.forget(b.ids, b.exts, b.alias_keys)  # stored (the database answers now) or rolled back
        if isinstance(err, sqlite3.IntegrityError):
            log.warning("bulk chunk failed (%s); redoing it row by row", err)
            report.errors.extend(b.parse_errors)  # the redo finds the other rows' errors again
            accepted = _rowwise(hub, actor, org, cipher, b.parsed, report)
        elif err is not None:
            raise err
        else:
            report.errors.extend(b.errors)
            accepted = b.accepted
        report.total += b.read
        report.created += len(accepted)
        report.ids.extend({"row": line, "id": eid, "created": True} for line, eid in accepted)
        if progress:
            progress(b.read)
        return err is None

    # No cyclic GC while importing: a chunk allocates ~10 container objects per row, and each gen-2 pass
    # rescans every live row, which made collection a quarter of the import's CPU. Rows form no cycles;
    # anything cyclic (tracebacks of per-row errors) is collected once the import ends.
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        for part in _chunks(rows, chunk):
            if writer is None:  # more chunks may follow: start the writer process now, it takes ~0.3 s
                # (an in-memory store exists in this process only: it is written in place)
                on_disk = str(hub.store.path) != ":memory:"
                writer = (_WriterProcess(hub, actor, org) if len(part) == chunk and on_disk
                          else _LocalWriter(hub, actor, org))
            parsed: list[Parsed] = []
            errors: list[dict[str, Any]] = []
            for line, raw in part:
                _parse_row(cipher, line, raw, parsed, errors)
            b = prepare(parsed, errors, len(part))
            del part
            writer.write(b)  # queued behind the batch in flight: the writer goes on to it without a gap
            if inflight is not None and not settle():
                # b was prepared on top of the chunk that failed, so the writer skipped it: prepare it again
                skipped = writer.result()
                assert isinstance(skipped, _Skipped), skipped
                reg.forget(b.ids, b.exts, b.alias_keys)
                b = prepare(b.parsed, b.parse_errors, b.read)
                writer.resume()
                writer.write(b)
            inflight = b
        if inflight is not None:
            settle()
    finally:
        try:
            if writer is not None:
                if inflight is not None:  # the row source failed: let the chunk already handed over land
                    with contextlib.suppress(BaseException):
                        settle()
                writer.stop()
        finally:
            reg.release()
            if gc_was_on:
                gc.enable()
    report.errors.sort(key=lambda x: x["row"])
    return report


def _rowwise(hub: Hub, actor: Actor, org: str | None, cipher: Any,
             parsed: list[tuple[int, EntityIn, str | None]], report: ImportReport) -> list[tuple[int, str]]:
    accepted: list[tuple[int, str]] = []
    with hub.store.tx() as db:
        reg = Registrar(hub, db, actor, org, cipher)
        for line, item, bi in parsed:
            db.conn.execute("SAVEPOINT registry_row")
            try:
                eid = reg.prepare(item, bi, checked=True)
                reg.flush()
            except (RegistryError, sqlite3.IntegrityError) as e:
                db.conn.execute("ROLLBACK TO registry_row")
                reg.discard()
                err = e.to_dict() if isinstance(e, RegistryError) else {"field": "row", "error": str(e)}
                report.errors.append({"row": line, **err})
            else:
                accepted.append((line, eid))
            db.conn.execute("RELEASE registry_row")
        if accepted:
            _audit(db, actor, "registry.import", None, org, {"rows": len(accepted)})
    return accepted


def push(hub: Hub, actor: Actor, body: PushIn | dict[str, Any]) -> ImportReport:
    """Real-time automatic registration: idempotent on the external key (a record already registered
    under that key is updated in place, or left alone when nothing changed). Row by row under
    SAVEPOINTs: pushes are small and may repeat a key inside one batch."""
    if not isinstance(body, PushIn):
        try:
            body = PushIn.model_validate(body)
        except ValidationError as e:
            raise _validation_error(e) from None
    report = ImportReport()
    cipher = _cipher(hub)
    with hub.store.tx() as db:
        reg = Registrar(hub, db, actor, body.org, cipher)
        for i, raw in enumerate(body.records):
            report.total += 1
            db.conn.execute("SAVEPOINT registry_push")
            try:
                item = _parse(raw)  # type: ignore[arg-type]
                if item.external_key is None:
                    raise RegistryError("external_key", "a pushed record needs its external key (idempotency)")
                _check_entity(item)
                bi = reg.ext_index(item)
                assert bi is not None
                existing = reg.existing_by_ext(bi)
                if existing:
                    changed = _update_from_push(db, reg, actor, existing, item)
                    report.ids.append({"row": i, "id": existing, "created": False})
                    if changed:
                        report.updated += 1
                    else:
                        report.unchanged += 1
                else:
                    eid = reg.prepare(item, bi, checked=True)
                    reg.flush()
                    report.created += 1
                    report.ids.append({"row": i, "id": eid, "created": True})
                    _audit(db, actor, "registry.push", eid, _org_of(db, eid), {"source": body.source})
            except (RegistryError, sqlite3.IntegrityError) as e:
                db.conn.execute("ROLLBACK TO registry_push")
                reg.discard()
                err = e.to_dict() if isinstance(e, RegistryError) else {"field": "row", "error": str(e)}
                report.errors.append({"row": i, **err})
            db.conn.execute("RELEASE registry_push")
    return report


def _update_from_push(db: sqlite_utils.Database, reg: Registrar, actor: Actor, eid: str,
                      item: EntityIn) -> bool:
    row = db.conn.execute(
        "SELECT org, type, name, address, grid, valid_from, valid_to, attrs FROM registry_entities WHERE id = ?",
        (eid,),
    ).fetchone()
    org, etype = row[0], row[1]
    if not reg.actor.allowed("registry.write", org):  # whose it is stays unsaid
        raise Forbidden("external_key", "already registered, outside your scope")
    if etype != item.type:
        raise Conflict("type", f"external key belongs to {eid}, a {etype}")
    new = {"name": item.name, "address": item.address, "grid": item.grid, "valid_from": iso(item.valid_from),
           "valid_to": iso(item.valid_to),
           "attrs": _dumps(item.attrs) if item.attrs else "{}"}
    old = dict(zip(("name", "address", "grid", "valid_from", "valid_to", "attrs"), row[2:], strict=True))
    changes = {k: v for k, v in new.items() if v != old[k]}
    if not changes:
        return False
    _apply_update(db, eid, org, changes, actor)
    return True


def _apply_update(db: sqlite_utils.Database, eid: str, org: str, changes: dict[str, Any], actor: Actor) -> None:
    c = db.conn
    fts = "name" in changes or "address" in changes
    if fts:  # external-content FTS: remove the old terms before the row changes
        c.execute(
            "INSERT INTO registry_entities_fts (registry_entities_fts, rowid, name, address)"
            " SELECT 'delete', rowid, name, address FROM registry_entities WHERE id = ?",
            (eid,),
        )
    sets = ", ".join(f"{k} = ?" for k in changes)
    c.execute(f"UPDATE registry_entities SET {sets}, updated_at = ? WHERE id = ?", (*changes.values(), _now(), eid))
    if fts:
        c.execute(
            "INSERT INTO registry_entities_fts (rowid, name, address)"
            " SELECT rowid, name, address FROM registry_entities WHERE id = ?",
            (eid,),
        )
    shown = {k: (json.loads(v) if k == "attrs" else v) for k, v in changes.items() if k != "phone_enc"}
    if "phone_enc" in changes:
        shown["phone"] = "(changed)"
    append_feed(db, "entity.update", eid, shown, org)
    _audit(db, actor, "registry.update", eid, org, {"fields": sorted(shown)})


def update(hub: Hub, actor: Actor, eid: str, patch: EntityPatch) -> dict[str, Any]:
    eid = _id_arg(eid)
    org = _org_or_404(hub, eid, "id")
    if not actor.allowed("registry.write", org):  # checked before the write tx: keep the denial's audit row
        raise _deny(hub, actor, "registry.write", org, eid, "id", NotFound("id", f"{eid} is not registered"))
    with hub.store.tx() as db:
        row = db.conn.execute(
            "SELECT org, type, valid_from, valid_to FROM registry_entities WHERE id = ?", (eid,)
        ).fetchone()
        etype = row[1]
        changes: dict[str, Any] = {}
        data = patch.model_dump(exclude_unset=True)
        if "phone" in data:
            if etype != "person":
                raise RegistryError("phone", "only a person has a phone")
            changes["phone_enc"] = _cipher(hub).encrypt(data.pop("phone")) if data["phone"] else None
        if ({"grid", "valid_from", "valid_to"} & data.keys()) and etype in ("person", "enterprise"):
            raise RegistryError("grid", "only places and objects carry a spatio-temporal identifier")
        for k in ("valid_from", "valid_to"):
            if k in data:
                data[k] = iso(data[k])
        vf = data.get("valid_from", row[2])
        vt = data.get("valid_to", row[3])
        if vf and vt and vt <= vf:
            raise RegistryError("valid_to", "must be after valid_from")
        if "attrs" in data:
            data["attrs"] = _dumps(data["attrs"] or {})
        if "name" in data and data["name"] is None:
            raise RegistryError("name", "cannot be removed")
        changes.update(data)
        if changes:
            _apply_update(db, eid, org, changes, actor)
        return _view(hub, actor, eid)


def _org_or_404(hub: Hub, eid: str, field: str) -> str:
    r = hub.store.conn.execute("SELECT org FROM registry_entities WHERE id = ?", (eid,)).fetchone()
    if r is None:
        raise NotFound(field, f"{eid} is not registered")
    return str(r[0])


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


# ---------------------------------------------------------------- reading, visibility, grants

@dataclass
class Visibility:
    own: list[str]
    grants: dict[str, tuple[int, set[str]]]  # owner org -> (application id, granted fields)

    def orgs(self) -> list[str]:
        return [*self.own, *self.grants]

    def access(self, org: str) -> tuple[str, set[str] | None, int | None]:
        """-> ("own", None, None) | ("grant", fields, app id) | ("none", ...)."""
        if any(under(org, s) for s in self.own):
            return "own", None, None
        for owner, (app_id, fields) in self.grants.items():
            if under(org, owner):
                return "grant", fields, app_id
        return "none", None, None


def visibility(hub: Hub, actor: Actor, db: sqlite_utils.Database | None = None) -> Visibility:
    own = actor.scopes("registry.read")
    grants: dict[str, tuple[int, set[str]]] = {}
    if own:
        clause, args = org_clause("applicant_org", own)
        now = _now()
        for app_id, owner, fields in (db or hub.store.db).conn.execute(
            f"SELECT id, owner_org, fields FROM registry_applications WHERE status = 'approved'"
            f" AND valid_from <= ? AND valid_to > ? AND {clause} ORDER BY id",
            (now, now, *args),
        ):
            prev = grants.get(owner)
            merged = set(json.loads(fields)) | (prev[1] if prev else set())
            grants[owner] = (prev[0] if prev else app_id, merged)
    return Visibility(own, grants)


def _entity_dict(r: sqlite3.Row | tuple[Any, ...]) -> dict[str, Any]:
    d = dict(zip(ENTITY_COLS, r, strict=True))
    d["attrs"] = json.loads(d["attrs"])
    if d["grid"] or d["valid_from"] or d["valid_to"]:
        d["spacetime_id"] = f"{d['grid'] or '-'}/{d['valid_from'] or '..'}/{d['valid_to'] or '..'}"
    return d


_PUBLIC = ("id", "type", "region", "org", "status")


def _present(hub: Hub, actor: Actor, d: dict[str, Any], mode: str, fields: set[str] | None) -> dict[str, Any]:
    ext_plain = None
    if mode == "own" and d["ext_kind"] == "id_card" and actor.allowed("pii.read", d["org"]):
        ext_plain = _cipher(hub).decrypt(d["ext_enc"])
        _audit_tx(hub, actor, "registry.pii_read", d["id"], d["org"], {"field": "external_key"})
    out = {
        "id": d["id"], "type": d["type"], "region": d["region"], "org": d["org"], "status": d["status"],
        "name": d["name"], "address": d["address"], "external_key_kind": d["ext_kind"],
        "external_key": ext_plain or d["ext_masked"], "grid": d["grid"], "valid_from": d["valid_from"],
        "valid_to": d["valid_to"], "spacetime_id": d.get("spacetime_id"), "attrs": d["attrs"],
        "has_phone": d["phone_enc"] is not None, "created_at": d["created_at"], "updated_at": d["updated_at"],
    }
    if mode == "grant":
        keep = set(_PUBLIC) | (fields or set())
        if "grid" in keep or "valid_from" in keep:
            keep.add("spacetime_id")
        out = {k: v for k, v in out.items() if k in keep}
        out["access"] = "grant"
    return out


def _view(hub: Hub, actor: Actor, eid: str, missing: RegistryError | None = None) -> dict[str, Any]:
    """The actor's view of `eid`. Outside its scope (and any grant) the entity answers exactly like a
    missing one (`missing`, default "<id> is not registered"): neither its org nor that it exists leaks."""
    missing = missing or NotFound("id", f"{eid} is not registered")
    r = hub.store.conn.execute(
        f"SELECT {', '.join(ENTITY_COLS)} FROM registry_entities WHERE id = ?", (eid,)
    ).fetchone()
    if r is None:
        raise missing
    d = _entity_dict(r)
    mode, fields, app_id = visibility(hub, actor).access(d["org"])
    if mode == "none":
        with hub.store.tx() as db:
            _audit(db, actor, "registry.denied", eid, d["org"], {"perm": "registry.read"})
        raise missing
    if mode == "grant":
        _audit_tx(hub, actor, "registry.grant_read", eid, d["org"], {"application": app_id})
    return _present(hub, actor, d, mode, fields)


def get_entity(hub: Hub, actor: Actor, eid: str) -> dict[str, Any]:
    """Lookup by id; a mistyped id fails on its check character before any query."""
    return _view(hub, actor, _id_arg(eid))


def lookup_external(hub: Hub, actor: Actor, etype: str, key: str) -> dict[str, Any]:
    """Find an entity by its external key via the blind index (the plaintext is never queried)."""
    if etype not in EXT_KIND:
        raise RegistryError("type", "must be person, enterprise, object or place")
    try:
        key = validate_id_card(key) if etype == "person" else validate_uscc(key) if etype == "enterprise" else key
    except ValueError as e:
        raise RegistryError("external_key", str(e)) from None
    bi = ext_index(_cipher(hub), etype, key)
    r = hub.store.conn.execute("SELECT id FROM registry_entities WHERE ext_bi = ?", (bi,)).fetchone()
    missing = NotFound("external_key", "no entity registered under this key")
    if r is None:
        raise missing
    return _view(hub, actor, r[0], missing)  # out of scope: the same answer, no base id, no org


def lookup(hub: Hub, eid: str) -> dict[str, Any] | None:
    """Internal lookup for other capabilities (codes): no scope, no PII; None when unknown/mistyped."""
    try:
        eid = normalize_id(eid)
    except IdError:
        return None
    r = hub.store.conn.execute(
        "SELECT id, type, region, name, org, status FROM registry_entities WHERE id = ?", (eid,)
    ).fetchone()
    return dict(zip(("id", "type", "region", "name", "org", "status"), r, strict=True)) if r else None


def search(hub: Hub, actor: Actor, q: str | None = None, *, type: str | None = None, region: str | None = None,
           grid: str | None = None, at: datetime | None = None, org: str | None = None, limit: int = 50,
           offset: int = 0) -> list[dict[str, Any]]:
    """Full-text (FTS5 trigram over name + address) and/or filters; only what the actor may see."""
    if type is not None and type not in EXT_KIND:
        raise RegistryError("type", "must be person, enterprise, object or place")
    if region is not None and not re.fullmatch(r"[0-9]{2}|[0-9]{4}|[0-9]{6}", region):
        raise RegistryError("region", "a 2/4/6-digit region code (prefix matches)")
    if not 1 <= limit <= 500 or offset < 0:
        raise RegistryError("limit", "limit 1..500, offset >= 0")
    vis = visibility(hub, actor)
    clause, args = org_clause("org", vis.orgs())
    where = [clause]
    params: dict[str, Any] = {f"o{i}": a for i, a in enumerate(args)}
    for i in range(len(args)):
        where[0] = where[0].replace("?", f":o{i}", 1)
    if type:
        where.append("type = :type")
        params["type"] = type
    if region:
        where.append("region >= :r0 AND region < :r1")
        params["r0"], params["r1"] = region, str(int(region) + 1).zfill(len(region))
    if grid:
        from central.registry.ids import validate_geohash

        try:
            g = validate_geohash(grid)
        except ValueError as e:
            raise RegistryError("grid", str(e)) from None
        where.append("grid >= :g0 AND grid < :g1")  # cell prefix = every smaller cell inside it
        params["g0"], params["g1"] = g, g + "~"
    if at is not None:
        where.append("valid_from <= :at AND (valid_to IS NULL OR valid_to > :at)")
        params["at"] = iso(at)
    if org:
        oc, oa = org_clause("org", [org])
        for i, a in enumerate(oa):
            oc = oc.replace("?", f":q{i}", 1)
            params[f"q{i}"] = a
        where.append(oc)
    cols = ", ".join(f"[registry_entities].{c}" for c in ENTITY_COLS)
    q = (q or "").strip()
    db = hub.store.db
    tokens = q.split()
    # trigram MATCH needs >= 3 chars per term; shorter terms (e.g. two CJK chars, "号") become LIKE filters
    # on the rows the long terms matched, or, with no long term at all, a LIKE scan in id order
    long_terms = [t for t in tokens if len(t) >= 3]
    for i, tok in enumerate(t for t in tokens if len(t) < 3):
        where.append(f"(name LIKE :t{i} OR address LIKE :t{i})")
        params[f"t{i}"] = f"%{tok}%"
    if long_terms:
        # newest first by FTS rowid: the match streams and LIMIT stops it early. bm25 rank would score every
        # match first (0.5 s for a term in 10% of 1M rows), so relevance ordering is not offered.
        rows = list(db["registry_entities"].search(
            " ".join(long_terms), columns=list(ENTITY_COLS), where=" AND ".join(where), where_args=params,
            limit=limit, offset=offset, quote=True, order_by='"registry_entities_fts".rowid DESC',
        ))
        found = [_entity_dict(tuple(r[c] for c in ENTITY_COLS)) for r in rows]
    else:
        sql = (f"SELECT {cols} FROM registry_entities WHERE {' AND '.join(where)}"
               f" ORDER BY id LIMIT {int(limit)} OFFSET {int(offset)}")
        found = [_entity_dict(r) for r in db.conn.execute(sql, params)]
    out = []
    granted: dict[int, int] = {}
    for d in found:
        mode, fields, app_id = vis.access(d["org"])
        out.append(_present(hub, actor, d, mode, fields) if mode == "grant" else _light(d))
        if app_id is not None:
            granted[app_id] = granted.get(app_id, 0) + 1
    if granted:
        with hub.store.tx() as wdb:
            for app_id, n in granted.items():
                _audit(wdb, actor, "registry.grant_read", None, None, {"application": app_id, "rows": n})
    return out


def _light(d: dict[str, Any]) -> dict[str, Any]:
    """List view: never decrypts (no per-row PII audit in searches)."""
    return {k: d.get(k) for k in ("id", "type", "region", "org", "status", "name", "address", "grid",
                                  "valid_from", "valid_to", "spacetime_id", "attrs")} | {
        "external_key_kind": d["ext_kind"], "external_key": d["ext_masked"]}


# ---------------------------------------------------------------- links and traversal

def add_link(hub: Hub, actor: Actor, src: str, rel: str, dst: str) -> dict[str, Any]:
    src, dst = _id_arg(src, "src"), _id_arg(dst, "dst")
    cat = "physical" if rel in PHYSICAL else "business" if rel in BUSINESS else None
    if cat is None:
        raise RegistryError("rel", f"one of {', '.join(PHYSICAL + BUSINESS)}")
    src_org = _org_or_404(hub, src, "src")
    if not actor.allowed("registry.write", src_org):
        raise _deny(hub, actor, "registry.write", src_org, src, "src", NotFound("src", f"{src} is not registered"))
    with hub.store.tx() as db:
        c = db.conn
        s = c.execute("SELECT type, org, rowid FROM registry_entities WHERE id = ?", (src,)).fetchone()
        d = c.execute("SELECT type, rowid FROM registry_entities WHERE id = ?", (dst,)).fetchone()
        if d is None:
            raise NotFound("dst", f"{dst} is not registered")
        if s[0] not in ("object", "place"):
            raise RegistryError("src", f"a {s[0]} is a link target, not a source")
        if cat == "physical" and d[0] not in ("object", "place"):
            raise RegistryError("dst", f"{rel} needs a parent object or place, {dst} is a {d[0]}")
        if cat == "business" and d[0] not in ("enterprise", "person"):
            raise RegistryError("dst", f"{rel} needs an enterprise or person, {dst} is a {d[0]}")
        if cat == "physical":
            if src == dst:
                raise Conflict("dst", "an entity cannot be its own parent")
            # walk up from the new parent: meeting src there means the link would close a loop
            hit = c.execute(
                "WITH RECURSIVE up(id) AS (SELECT ? UNION SELECT l.dst_rid FROM registry_links l"
                " JOIN up ON l.src_rid = up.id WHERE l.rel IN ('attached_to', 'belongs_to', 'contained_in'))"
                " SELECT 1 FROM up WHERE id = ?",
                (d[1], s[2]),
            ).fetchone()
            if hit:
                raise Conflict("dst", f"{dst} already lies under {src}: the link would make a cycle")
        try:
            cur = c.execute(INSERT_LINK, (src, rel, dst, cat, s[1], actor.name, _now(), s[2], d[1]))
        except sqlite3.IntegrityError:
            raise Conflict("rel", f"{src} {rel} {dst} already exists") from None
        link = {"id": cur.lastrowid, "src": src, "rel": rel, "dst": dst, "category": cat}
        append_feed(db, "link.create", src, link, s[1])
        _audit(db, actor, "registry.link", src, s[1], link)
        return link


def remove_link(hub: Hub, actor: Actor, link_id: int) -> dict[str, Any]:
    r = hub.store.conn.execute("SELECT src, org FROM registry_links WHERE id = ?", (link_id,)).fetchone()
    if r is None:
        raise NotFound("link_id", f"no link {link_id}")
    if not actor.allowed("registry.write", r[1]):
        raise _deny(hub, actor, "registry.write", r[1], r[0], "link_id", NotFound("link_id", f"no link {link_id}"))
    with hub.store.tx() as db:
        c = db.conn
        r = c.execute(
            "SELECT l.src, l.rel, l.dst, l.category, l.org, e.type FROM registry_links l"
            " JOIN registry_entities e ON e.id = l.src WHERE l.id = ?",
            (link_id,),
        ).fetchone()
        if r is None:
            raise NotFound("link_id", f"no link {link_id}")
        src, rel, dst, cat, org, stype = r
        if stype == "object":
            left = c.execute(
                "SELECT count(*) FROM registry_links WHERE src_rid = (SELECT src_rid FROM registry_links"
                " WHERE id = ?) AND category = ? AND id != ?",
                (link_id, cat, link_id),
            ).fetchone()[0]
            if left == 0:
                raise Conflict("link_id", f"{src} would lose its last {cat} link (an object needs one)")
        c.execute("DELETE FROM registry_links WHERE id = ?", (link_id,))
        link = {"id": link_id, "src": src, "rel": rel, "dst": dst, "category": cat}
        append_feed(db, "link.delete", src, link, org)
        _audit(db, actor, "registry.unlink", src, org, link)
        return link


def _depth(depth: int) -> int:
    if not 1 <= depth <= MAX_DEPTH:
        raise RegistryError("depth", f"1..{MAX_DEPTH}")
    return depth


_ORG_OF_ROW = itemgetter(3)


def _walk(hub: Hub, actor: Actor, eid: str, depth: int, limit: int, down: bool,
          type: str | None = None) -> dict[str, Any]:
    eid = _id_arg(eid)
    _depth(depth)
    if not 1 <= limit <= 100000:
        raise RegistryError("limit", "1..100000")
    rid = _visible_rid(hub, actor, eid)
    vis = visibility(hub, actor)
    clause, args = org_clause("e.org", vis.orgs())
    step, start = ("l.src_rid", "l.dst_rid") if down else ("l.dst_rid", "l.src_rid")
    # down: (dst_rid, category, src_rid) index; up: UNIQUE(src_rid, rel, dst_rid), so filter on rel there
    cat = "l.category = 'physical'" if down else f"l.rel IN ({', '.join(repr(r) for r in PHYSICAL)})"
    tclause = " AND e.type = ?" if type else ""
    # UNION ALL: no dedupe b-tree per step (a third of the walk's cost). Physical links are acyclic, so the
    # walk ends; the row cap bounds a DAG whose shared parents would repeat subtrees.
    cap = limit * 4 + 1000
    rows = hub.store.conn.execute(
        f"WITH RECURSIVE w(id, depth) AS (SELECT ?, 0 UNION ALL SELECT {step}, w.depth + 1"
        f" FROM registry_links l JOIN w ON {start} = w.id WHERE {cat} AND w.depth < ? LIMIT {cap}),"
        f" m AS (SELECT id, min(depth) AS d FROM w WHERE depth > 0 GROUP BY id)"
        f" SELECT e.id, e.type, e.name, e.org, m.d FROM m JOIN registry_entities e ON e.rowid = m.id"
        f" WHERE {clause}{tclause} ORDER BY m.d, e.id LIMIT ?",
        (rid, depth, *args, *([type] if type else []), limit),
    ).fetchall()
    show = _name_visibility(vis)
    # a walk returns thousands of rows from a handful of orgs: decide per org once, then build the items in
    # one comprehension (the per-row branch and call were a quarter of a 10k-row walk)
    orgs = set(map(_ORG_OF_ROW, rows))
    named = {org for org in orgs if show(org)}
    if named == orgs:
        items = [{"id": i, "type": t, "depth": d, "org": o, "name": n} for i, t, n, o, d in rows]
    else:
        items = [{"id": i, "type": t, "depth": d, "org": o, "name": n} if o in named
                 else {"id": i, "type": t, "depth": d, "org": o} for i, t, n, o, d in rows]
    return {"id": eid, "depth": depth, "items": items, "truncated": len(items) == limit}


def _visible_rid(hub: Hub, actor: Actor, eid: str) -> int:
    """The rowid that links refer to, of an entity that must exist and be visible to the actor."""
    get_entity(hub, actor, eid)
    return int(hub.store.conn.execute("SELECT rowid FROM registry_entities WHERE id = ?", (eid,)).fetchone()[0])


def _name_visibility(vis: Visibility) -> Callable[[str], bool]:
    """org -> may the name be shown; memoised because a walk returns thousands of rows from few orgs."""
    memo: dict[str, bool] = {}

    def show(org: str) -> bool:
        if org not in memo:
            mode, fields, _ = vis.access(org)
            memo[org] = mode == "own" or bool(fields and "name" in fields)
        return memo[org]

    return show


def ancestors(hub: Hub, actor: Actor, eid: str, depth: int = 16, limit: int = 1000) -> dict[str, Any]:
    return _walk(hub, actor, eid, depth, limit, down=False)


def descendants(hub: Hub, actor: Actor, eid: str, depth: int = 16, limit: int = 10000,
                type: str | None = None) -> dict[str, Any]:
    return _walk(hub, actor, eid, depth, limit, down=True, type=type)


def links_of(hub: Hub, actor: Actor, eid: str) -> dict[str, Any]:
    """Direct links both ways (outgoing: this entity's parents/owners; incoming: its children/holdings)."""
    eid = _id_arg(eid)
    rid = _visible_rid(hub, actor, eid)
    c = hub.store.conn
    cols = ("id", "src", "rel", "dst", "category")
    out = [dict(zip(cols, r, strict=True)) for r in c.execute(
        "SELECT id, src, rel, dst, category FROM registry_links WHERE src_rid = ? ORDER BY id", (rid,))]
    # Incoming links come from other departments' entities too: only those the actor may see.
    clause, args = org_clause("org", visibility(hub, actor).orgs())
    inc = [dict(zip(cols, r, strict=True)) for r in c.execute(
        f"SELECT id, src, rel, dst, category FROM registry_links WHERE dst_rid = ? AND {clause}"
        " ORDER BY id LIMIT 10000", (rid, *args))]
    return {"id": eid, "outgoing": out, "incoming": inc}


def linked(hub: Hub, actor: Actor, eid: str, depth: int = 2, limit: int = 10000) -> dict[str, Any]:
    """Everything a person or enterprise is linked to: the objects/places with a business link to it
    (depth 1) and, down to `depth`, what physically lies under those."""
    eid = _id_arg(eid)
    _depth(depth)
    rid = _visible_rid(hub, actor, eid)
    vis = visibility(hub, actor)
    clause, args = org_clause("e.org", vis.orgs())
    rows = hub.store.conn.execute(
        "WITH RECURSIVE w(id, depth, rel) AS ("
        " SELECT src_rid, 1, rel FROM registry_links WHERE dst_rid = ? AND category = 'business'"
        " UNION SELECT l.src_rid, w.depth + 1, l.rel FROM registry_links l JOIN w ON l.dst_rid = w.id"
        " WHERE l.category = 'physical' AND w.depth < ?)"
        f" SELECT e.id, e.type, e.name, e.org, min(w.depth) AS d, w.rel FROM w"
        f" JOIN registry_entities e ON e.rowid = w.id WHERE {clause} GROUP BY e.id ORDER BY d, e.id LIMIT ?",
        (rid, depth, *args, limit),
    ).fetchall()
    show = _name_visibility(vis)
    items = []
    for r in rows:
        item = {"id": r[0], "type": r[1], "depth": r[4], "via": r[5], "org": r[3]}
        if show(r[3]):
            item["name"] = r[2]
        items.append(item)
    return {"id": eid, "depth": depth, "items": items, "truncated": len(items) == limit}


# ---------------------------------------------------------------- aliases

def set_alias(hub: Hub, actor: Actor, body: AliasIn) -> dict[str, Any]:
    base = _id_arg(body.base_id, "base_id")
    org = body.org
    if org is None:
        scopes = actor.scopes("registry.write")
        if len(scopes) != 1:
            raise RegistryError("org", "say which department's local id this is")
        org = scopes[0]
    if not actor.allowed("registry.write", org):
        raise _deny(hub, actor, "registry.write", org, base, "org")
    with hub.store.tx() as db:
        if db.conn.execute("SELECT 1 FROM registry_entities WHERE id = ?", (base,)).fetchone() is None:
            raise NotFound("base_id", f"{base} is not registered")
        hit = db.conn.execute(
            "SELECT base_id FROM registry_aliases WHERE org = ? AND local_id = ?", (org, body.local_id)
        ).fetchone()
        if hit:
            if hit[0] == base:
                return {"org": org, "local_id": body.local_id, "base_id": base}
            raise Conflict("local_id", f"{body.local_id!r} already maps to {hit[0]} in {org}")
        db.conn.execute("INSERT INTO registry_aliases VALUES (?, ?, ?, ?, ?)",
                        (org, body.local_id, base, actor.name, _now()))
        alias = {"org": org, "local_id": body.local_id, "base_id": base}
        append_feed(db, "alias.set", base, alias, org)
        _audit(db, actor, "registry.alias", base, org, alias)
        return alias


def resolve_alias(hub: Hub, actor: Actor, org: str, local_id: str) -> dict[str, Any]:
    if not actor.allowed("registry.read", org):
        raise _deny(hub, actor, "registry.read", org, local_id, "org")
    r = hub.store.conn.execute(
        "SELECT base_id FROM registry_aliases WHERE org = ? AND local_id = ?", (org, local_id)
    ).fetchone()
    if r is None:
        raise NotFound("local_id", f"no local id {local_id!r} in {org}")
    return {"org": org, "local_id": local_id, "base_id": r[0]}


def aliases_of(hub: Hub, actor: Actor, eid: str) -> dict[str, Any]:
    """Base id -> the local ids departments in the actor's scope gave it (many-to-one, read backwards)."""
    eid = _id_arg(eid)
    clause, args = org_clause("org", actor.scopes("registry.read"))
    rows = hub.store.conn.execute(
        f"SELECT org, local_id FROM registry_aliases WHERE base_id = ? AND {clause} ORDER BY org, local_id",
        (eid, *args),
    ).fetchall()
    return {"base_id": eid, "aliases": [{"org": r[0], "local_id": r[1]} for r in rows]}


# ---------------------------------------------------------------- usage applications

_APP_COLS = ("id", "applicant", "applicant_org", "owner_org", "purpose", "fields", "valid_from", "valid_to",
             "status", "decided_by", "decided_at", "reason", "created_at")


def _app(row: tuple[Any, ...]) -> dict[str, Any]:
    d = dict(zip(_APP_COLS, row, strict=True))
    d["fields"] = json.loads(d["fields"])
    return d


def apply(hub: Hub, actor: Actor, body: ApplicationIn) -> dict[str, Any]:
    org = body.applicant_org
    if org is None:
        scopes = actor.scopes("registry.apply")
        if len(scopes) != 1:
            raise RegistryError("applicant_org", "say which department applies")
        org = scopes[0]
    if not actor.allowed("registry.apply", org):
        raise _deny(hub, actor, "registry.apply", org, None, "applicant_org")
    vf, vt = iso(body.valid_from), iso(body.valid_to)
    if vt <= vf:  # type: ignore[operator]
        raise RegistryError("valid_to", "must be after valid_from")
    if under(org, body.owner_org):
        raise RegistryError("owner_org", "is your own scope; no application needed")
    with hub.store.tx() as db:
        cur = db.conn.execute(
            "INSERT INTO registry_applications (applicant, applicant_org, owner_org, purpose, fields,"
            " valid_from, valid_to, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (actor.name, org, body.owner_org, body.purpose, json.dumps(sorted(set(body.fields))), vf, vt, _now()),
        )
        app_id = int(cur.lastrowid or 0)
        from central.iam.service import note_maker

        note_maker(db, f"registry.application:{app_id}", actor.name, "file")
        _audit(db, actor, "registry.apply", str(app_id), org,
               {"owner_org": body.owner_org, "fields": sorted(set(body.fields)), "purpose": body.purpose})
        return _app(db.conn.execute(
            f"SELECT {', '.join(_APP_COLS)} FROM registry_applications WHERE id = ?", (app_id,)).fetchone())


def application_owner(hub: Hub, app_id: int) -> str:
    r = hub.store.conn.execute("SELECT owner_org FROM registry_applications WHERE id = ?", (app_id,)).fetchone()
    if r is None:
        raise NotFound("application_id", f"no application {app_id}")
    return str(r[0])


def decide(hub: Hub, actor: Actor, app_id: int, approve: bool, reason: str | None = None) -> dict[str, Any]:
    owner = application_owner(hub, app_id)
    if not actor.allowed("registry.approve", owner):
        raise _deny(hub, actor, "registry.approve", owner, str(app_id), "application_id",
                    NotFound("application_id", f"no application {app_id}"))
    filer = hub.store.conn.execute("SELECT applicant FROM registry_applications WHERE id = ?", (app_id,)).fetchone()[0]
    from central.iam.service import maker_refusal

    why = maker_refusal(hub.store.db, f"registry.application:{app_id}", actor.name, filer=filer)
    if why:
        with hub.store.tx() as db:
            _audit(db, actor, "registry.denied", str(app_id), owner, {"why": "separation of duties"})
        raise Forbidden("application_id", why)
    with hub.store.tx() as db:
        status = db.conn.execute("SELECT status FROM registry_applications WHERE id = ?", (app_id,)).fetchone()[0]
        if status != "pending":
            raise Conflict("application_id", f"already {status}")
        new = "approved" if approve else "rejected"
        db.conn.execute(
            "UPDATE registry_applications SET status = ?, decided_by = ?, decided_at = ?, reason = ? WHERE id = ?",
            (new, actor.name, _now(), reason, app_id),
        )
        _audit(db, actor, f"registry.application.{new}", str(app_id), owner, {"reason": reason})
        return _app(db.conn.execute(
            f"SELECT {', '.join(_APP_COLS)} FROM registry_applications WHERE id = ?", (app_id,)).fetchone())


def list_applications(hub: Hub, actor: Actor, status: str | None = None) -> list[dict[str, Any]]:
    """Applications the actor made (applicant side) or may decide (owner side)."""
    a_clause, a_args = org_clause("applicant_org", actor.scopes("registry.apply") + actor.scopes("registry.read"))
    o_clause, o_args = org_clause("owner_org", actor.scopes("registry.approve"))
    sql = f"SELECT {', '.join(_APP_COLS)} FROM registry_applications WHERE ({a_clause} OR {o_clause})"
    args: list[Any] = [*a_args, *o_args]
    if status:
        sql += " AND status = ?"
        args.append(status)
    return [_app(r) for r in hub.store.conn.execute(sql + " ORDER BY id DESC LIMIT 500", args)]


# ---------------------------------------------------------------- MQTT push and wiring

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
        db.conn.execute(
            "INSERT INTO registry_rejects (ts, source, error, payload) VALUES (?, ?, ?, ?)",
            (_now(), source, error, payload[:4096].decode("utf-8", "replace")),
        )


class RegistryService:
    """hub.services["registry"]: what other capabilities call (codes: identity lookup, feed records)."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def lookup(self, eid: str) -> dict[str, Any] | None:
        return lookup(self.hub, eid)

    def append_feed(self, db: sqlite_utils.Database, kind: str, entity_id: str | None,
                    data: dict[str, Any], org: str | None = None) -> int:
        return append_feed(db, kind, entity_id, data, org)


def setup(hub: Hub) -> None:
    hub.services["registry"] = RegistryService(hub)
    hub.hooks.on("mqtt.registry_push", lambda payload: on_mqtt_push(hub, payload))


__all__ = ["GRANTABLE", "RegistryError", "SystemActor", "append_feed", "setup"]
