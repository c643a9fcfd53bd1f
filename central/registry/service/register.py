"""Registry service: register."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from pydantic_core import to_json

from central.registry import store
from central.registry.bulkwrite import (
    Rows,
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
    PHYSICAL,
    EntityIn,
    EntityPatch,
    PushIn,
    iso,
)
from central.registry.service.common import (
    EXT_KIND,
    Actor,
    Conflict,
    Forbidden,
    NotFound,
    RegistryError,
    _audit,
    _cipher,
    _deny,
    _dumps,
    _id_arg,
    _now,
    _org_or_404,
    _parse,
    _validation_error,
    ext_index,
)
from central.registry.service.feed import append_feed
from central.registry.service.read import _view, get_entity
from central.registry.store import bulk as store_bulk

if TYPE_CHECKING:
    from central.hub import Hub
    from central.store import Db

log = logging.getLogger("citybrain.registry")



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


class Registrar:
    """Validates rows against the database and the rows accepted before them, then writes them with one
    statement per table. A row is either fully prepared (id allocated, keys encrypted) or rejected with an
    error; nothing is written until `flush` (inside the caller's transaction) or, in a bulk import, until
    the writer process takes the batch (`take`)."""

    persist_serials = True  # the import's registrar reserves serial blocks up front instead

    def __init__(self, hub: Hub, db: Db, actor: Actor, default_org: str | None, cipher: Any) -> None:
        self.hub, self.db, self.actor, self.default_org, self.cipher = hub, db, actor, default_org, cipher
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
        self.known_ext = store.ids_by_ext(self.db, bis)
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
            for local_id, base in store.alias_targets(self.db, org, sorted(names)).items():
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
        org = store.org_of(self.db, eid)
        return org is None or self.actor.allowed("registry.read", org)

    def entity_type(self, eid: str) -> str | None:
        if eid in self.new_types:
            return self.new_types[eid]
        if eid not in self.type_cache:
            self.type_cache[eid] = store.active_type(self.db, eid)
        return self.type_cache[eid]

    def alias_target(self, org: str, local_id: str) -> str | None:
        hit = self.pending_alias.get((org, local_id))
        if hit:
            return hit
        if self.known_alias is not None and org in self.prefetch_orgs:
            return self.known_alias.get((org, local_id))
        return store.alias_target(self.db, org, local_id)

    def existing_by_ext(self, bi: str) -> str | None:
        if bi in self.pending_ext:
            return self.pending_ext[bi]
        if self.known_ext is not None:
            return self.known_ext.get(bi)
        return store.id_by_ext(self.db, bi)

    def next_serial(self, key: tuple[str, str]) -> int:
        """The next serial for (type code, region); the caller holds the write lock."""
        n = self.counters.get(key)
        if n is None:
            n = self.counters[key] = store.stored_serial(self.db, *key)
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
        store_bulk.write_rows(self.db, *b.rows.wire())
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
            n = store.reserve_serials(db, *key, size)
        self.counters[key], self.limits[key] = n, n + size
        return n

    def release(self) -> None:
        """Give back the unused end of each block, unless somebody reserved after it."""
        if not self.limits:
            return
        with self.hub.store.tx() as db:
            store.release_serials(db, [(self.counters[k], *k, lim) for k, lim in self.limits.items()])
        self.limits.clear()



def register(hub: Hub, actor: Actor, raw: dict[str, Any] | EntityIn) -> dict[str, Any]:
    """Register one entity (API / console); raises RegistryError naming the field."""
    item = _parse(raw)
    cipher = _cipher(hub)
    try:
        with hub.store.tx() as db:
            reg = Registrar(hub, db, actor, None, cipher)
            eid = reg.prepare(item)
            reg.flush()
            _audit(db, actor, "registry.register", eid, store.org_of(db, eid))
    except Forbidden as e:
        raise _deny(hub, actor, "registry.write", item.org or "?", None, e.field) from None
    return get_entity(hub, actor, eid)


Progress = Callable[[int], None]


Parsed = tuple[int, EntityIn, str | None]
Row = tuple[int, dict[str, Any] | Exception]



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
            try:
                with store.savepoint(db):  # a bad record leaves nothing behind
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
                        _audit(db, actor, "registry.push", eid, store.org_of(db, eid), {"source": body.source})
            except (RegistryError, *store.IntegrityError) as e:
                reg.discard()
                err = e.to_dict() if isinstance(e, RegistryError) else {"field": "row", "error": str(e)}
                report.errors.append({"row": i, **err})
    return report


def _update_from_push(db: Db, reg: Registrar, actor: Actor, eid: str, item: EntityIn) -> bool:
    row = store.entity_fields(db, eid, "org", "type", "name", "address", "grid", "valid_from", "valid_to", "attrs")
    assert row is not None
    org, etype = row["org"], row["type"]
    if not reg.actor.allowed("registry.write", org):  # whose it is stays unsaid
        raise Forbidden("external_key", "already registered, outside your scope")
    if etype != item.type:
        raise Conflict("type", f"external key belongs to {eid}, a {etype}")
    new = {"name": item.name, "address": item.address, "grid": item.grid, "valid_from": iso(item.valid_from),
           "valid_to": iso(item.valid_to),
           "attrs": _dumps(item.attrs) if item.attrs else "{}"}
    changes = {k: v for k, v in new.items() if v != row[k]}
    if not changes:
        return False
    _apply_update(db, eid, org, changes, actor)
    return True


def _apply_update(db: Db, eid: str, org: str, changes: dict[str, Any], actor: Actor) -> None:
    store.update_entity(db, eid, changes, _now())
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
        row = store.entity_fields(db, eid, "type", "valid_from", "valid_to")
        assert row is not None
        etype = row["type"]
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
        vf = data.get("valid_from", row["valid_from"])
        vt = data.get("valid_to", row["valid_to"])
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


