"""The registry's queries, as Core statements over the tables in `tables` (both backends)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import psycopg
import sqlalchemy as sa

from central.registry.store.tables import (
    ENTITY_COLS,
    aliases,
    applications,
    entities,
    feed,
    fts,
    imports,
    links,
    rejects,
    serials,
)
from central.store import dialect

if TYPE_CHECKING:
    from central.store import Db

# A unique key taken meanwhile, from the Core path or a raw fast path (either driver)
IntegrityError: tuple[type[BaseException], ...] = (sa.exc.IntegrityError, sqlite3.IntegrityError,
                                                    psycopg.errors.IntegrityError)
DbError: tuple[type[BaseException], ...] = (sa.exc.DBAPIError, sqlite3.Error, psycopg.Error)

E, L, A, F, P = entities.c, links.c, aliases.c, feed.c, applications.c
_ENTITY = [E[c] for c in ENTITY_COLS]
APP_COLS = tuple(c.name for c in applications.c)
PHYSICAL_RELS = ("attached_to", "belongs_to", "contained_in")


def org_in(col: Any, scopes: Iterable[str]) -> Any:
    """"col lies under one of scopes": a range test instead of LIKE, so the org index is used and `_`/`%`
    in paths mean nothing special ('0' sorts right after '/')."""
    parts = []
    for s in dict.fromkeys(scopes):
        if s == "/":
            return sa.true()
        s = s.rstrip("/")
        parts.append(sa.or_(col == s, sa.and_(col > s + "/", col < s + "0")))
    return sa.or_(*parts) if parts else sa.false()


def savepoint(db: Db) -> Any:
    """A SAVEPOINT inside the transaction (`with savepoint(db):` rolls back to it on an exception)."""
    return db.sa.begin_nested()


# ---------------------------------------------------------------- entities

# Hot point reads are built once (bound parameters): building a Core expression per call cost more than the
# query itself. SQLite reads the entity row through the driver (the service's hottest read, >10 % cheaper).
_EID = sa.bindparam("eid")
_Q_ENTITY = sa.select(*_ENTITY).where(E.id == _EID)
_SQL_ENTITY = f"SELECT {', '.join(ENTITY_COLS)} FROM registry_entities WHERE id = ?"
_Q_ORG = sa.select(E.org).where(E.id == _EID)
_Q_RID = sa.select(E.rid).where(E.id == _EID)
_Q_EXISTS = sa.select(sa.literal(1)).where(E.id == _EID)
_Q_ACTIVE_TYPE = sa.select(E.type).where(E.id == _EID, E.status == "active")
_Q_BY_EXT = sa.select(E.id).where(E.ext_bi == sa.bindparam("bi"))
_Q_BRIEF = sa.select(E.id, E.type, E.region, E.name, E.org, E.status).where(E.id == _EID)
_Q_ALIAS = sa.select(A.base_id).where(A.org == sa.bindparam("org"), A.local_id == sa.bindparam("local_id"))
_NOW = sa.bindparam("now")
_Q_GRANTS = sa.select(P.id, P.owner_org, P.fields, P.applicant_org).where(
    P.status == "approved", P.valid_from <= _NOW, P.valid_to > _NOW).order_by(P.id)
_SQL_GRANTS = ("SELECT id, owner_org, fields, applicant_org FROM registry_applications WHERE status = 'approved'"
               " AND valid_from <= ? AND valid_to > ? ORDER BY id")


def entity(db: Db, eid: str) -> dict[str, Any] | None:
    if db.dialect == "sqlite":
        r = db.raw.execute(_SQL_ENTITY, (eid,)).fetchone()
        return dict(zip(ENTITY_COLS, r, strict=True)) if r is not None else None
    return db.first(_Q_ENTITY, {"eid": eid})


def entity_fields(db: Db, eid: str, *cols: str) -> dict[str, Any] | None:
    return db.first(sa.select(*[E[c] for c in cols]).where(E.id == eid))


def org_of(db: Db, eid: str) -> str | None:
    return db.scalar(_Q_ORG, {"eid": eid})  # type: ignore[no-any-return]


def rid_of(db: Db, eid: str) -> int | None:
    return db.scalar(_Q_RID, {"eid": eid})  # type: ignore[no-any-return]


def exists(db: Db, eid: str) -> bool:
    return db.scalar(_Q_EXISTS, {"eid": eid}) is not None


def active_type(db: Db, eid: str) -> str | None:
    return db.scalar(_Q_ACTIVE_TYPE, {"eid": eid})  # type: ignore[no-any-return]


def id_by_ext(db: Db, bi: str) -> str | None:
    return db.scalar(_Q_BY_EXT, {"bi": bi})  # type: ignore[no-any-return]


def ids_by_ext(db: Db, bis: Sequence[str]) -> dict[str, str]:
    return dict(dialect.fetch_in(db, entities, "ext_bi", ["ext_bi", "id"], bis))  # thousands per import chunk


def brief(db: Db, eid: str) -> dict[str, Any] | None:
    """What other capabilities may know of an entity (no PII)."""
    return db.first(_Q_BRIEF, {"eid": eid})


def update_entity(db: Db, eid: str, changes: dict[str, Any], now: str) -> None:
    """Apply `changes` (column -> value) and keep the SQLite FTS index in step (external content: the old
    terms are removed before the row changes)."""
    text = db.dialect == "sqlite" and ("name" in changes or "address" in changes)
    if text:
        db.run(sa.insert(fts).from_select(["registry_entities_fts", "rowid", "name", "address"],
                                          sa.select(sa.literal("delete"), E.rid, E.name, E.address)
                                          .where(E.id == eid)))
    db.run(sa.update(entities).where(E.id == eid).values(**changes, updated_at=now))
    if text:
        db.run(sa.insert(fts).from_select(["rowid", "name", "address"],
                                          sa.select(E.rid, E.name, E.address).where(E.id == eid)))


# ---------------------------------------------------------------- serial counters

def stored_serial(db: Db, type_code: str, region: str) -> int:
    """The next unused serial for (type code, region) as stored. PostgreSQL: first takes the registry's
    serial lock until the transaction ends, so two registering transactions never hand out the same id
    (SQLite's write transaction already serialises them)."""
    dialect.serialize(db, "registry_serials")
    n = db.scalar(sa.select(serials.c.next).where(serials.c.type_code == type_code, serials.c.region == region))
    return int(n) if n is not None else 1


def save_serials(db: Db, rows: Sequence[tuple[str, str, int]]) -> None:
    if rows:
        db.run(dialect.upsert(db, serials, ["type_code", "region"], ["next"]),
               [{"type_code": t, "region": r, "next": n} for t, r, n in rows])


def reserve_serials(db: Db, type_code: str, region: str, size: int) -> int:
    """Claim `size` serials from (type code, region) for a bulk import; returns the first. Safe with several
    importing processes: each block is read and bumped under the serial lock."""
    n = stored_serial(db, type_code, region)
    save_serials(db, [(type_code, region, n + size)])
    return n


def release_serials(db: Db, rows: Sequence[tuple[int, str, str, int]]) -> None:
    """(next, type_code, region, expected): give back the unused end of a block unless somebody reserved
    after it (the stored value moved on)."""
    for nxt, t, r, expected in rows:
        db.run(sa.update(serials).where(serials.c.type_code == t, serials.c.region == r,
                                        serials.c.next == expected).values(next=nxt))


# ---------------------------------------------------------------- aliases

def alias_target(db: Db, org: str, local_id: str) -> str | None:
    return db.scalar(_Q_ALIAS, {"org": org, "local_id": local_id})  # type: ignore[no-any-return]


def alias_targets(db: Db, org: str, local_ids: Sequence[str]) -> dict[str, str]:
    return dict(dialect.fetch_in(db, aliases, "local_id", ["local_id", "base_id"], local_ids, {"org": org}))


def insert_alias(db: Db, org: str, local_id: str, base: str, who: str, ts: str) -> None:
    db.run(sa.insert(aliases).values(org=org, local_id=local_id, base_id=base, created_by=who, created_at=ts))


def aliases_of(db: Db, base: str, scopes: Iterable[str]) -> list[dict[str, Any]]:
    return db.all(sa.select(A.org, A.local_id).where(A.base_id == base, org_in(A.org, scopes))
                  .order_by(A.org, A.local_id))


# ---------------------------------------------------------------- links

def insert_link(db: Db, src: str, rel: str, dst: str, category: str, org: str, who: str, ts: str,
                src_rid: int, dst_rid: int) -> int | None:
    """The new link's id, or None if (src, rel, dst) exists already."""
    stmt = dialect.insert_ignore(db, links, "src_rid", "rel", "dst_rid").values(
        src=src, rel=rel, dst=dst, category=category, org=org, created_by=who, created_at=ts,
        src_rid=src_rid, dst_rid=dst_rid).returning(L.id)
    return db.scalar(stmt)  # type: ignore[no-any-return]


def would_cycle(db: Db, parent_rid: int, child_rid: int) -> bool:
    """Walking up physical links from `parent_rid` reaches `child_rid`: linking child -> parent closes a loop."""
    up = sa.select(sa.literal(parent_rid, dialect.BigId).label("id")).cte("up", recursive=True)
    up = up.union(sa.select(L.dst_rid).join(up, L.src_rid == up.c.id).where(L.rel.in_(PHYSICAL_RELS)))
    return db.scalar(sa.select(sa.literal(1)).select_from(up).where(up.c.id == child_rid).limit(1)) is not None


def link(db: Db, link_id: int) -> dict[str, Any] | None:
    """A link with its source's type."""
    return db.first(sa.select(L.src, L.rel, L.dst, L.category, L.org, E.type.label("src_type"), L.src_rid)
                    .join(entities, E.id == L.src).where(L.id == link_id))


def link_owner(db: Db, link_id: int) -> dict[str, Any] | None:
    return db.first(sa.select(L.src, L.org).where(L.id == link_id))


def other_links(db: Db, src_rid: int, category: str, link_id: int) -> int:
    return int(db.scalar(sa.select(sa.func.count()).select_from(links)
                         .where(L.src_rid == src_rid, L.category == category, L.id != link_id)))


def delete_link(db: Db, link_id: int) -> None:
    db.run(sa.delete(links).where(L.id == link_id))


def links_out(db: Db, rid: int) -> list[dict[str, Any]]:
    return db.all(sa.select(L.id, L.src, L.rel, L.dst, L.category).where(L.src_rid == rid).order_by(L.id))


def links_in(db: Db, rid: int, orgs: Iterable[str], limit: int = 10000) -> list[dict[str, Any]]:
    return db.all(sa.select(L.id, L.src, L.rel, L.dst, L.category)
                  .where(L.dst_rid == rid, org_in(L.org, orgs)).order_by(L.id).limit(limit))


def walk(db: Db, rid: int, depth: int, limit: int, down: bool, orgs: Iterable[str],
         type: str | None = None) -> list[tuple[str, str, str, str, int]]:
    """(id, type, name, org, depth) of what lies under (down) or above `rid` along physical links, nearest
    first (ties by id, in code-point order on both backends). Down uses the (dst_rid, category, src_rid)
    index; up UNIQUE(src_rid, rel, dst_rid) with `rel IN (physical)`.

    One statement as text, run through the driver on both backends: a 10k-row walk as SQLAlchemy Rows
    cost more than the walk itself. SQLite: UNION ALL (no dedupe b-tree per step, a third of the walk's
    cost) with a row cap that bounds a DAG whose shared parents would repeat subtrees (Core would
    parenthesise a recursive term with a LIMIT, which SQLite refuses). PostgreSQL refuses LIMIT in a
    recursive term: there UNION (distinct (id, depth) pairs) bounds the walk instead, and the order by id
    is COLLATE "C" (a sort by the database's locale costs strcoll per comparison, and "C" is SQLite's order)."""
    sqlite = db.dialect == "sqlite"

    def ph(name: str) -> str:
        return f":{name}" if sqlite else f"%({name})s"

    parts, args = [], {}
    for i, s in enumerate(dict.fromkeys(orgs)):
        if s == "/":
            parts = ["1 = 1"]
            break
        s = s.rstrip("/")
        parts.append(f"(e.org = {ph(f'o{i}')} OR (e.org > {ph(f'a{i}')} AND e.org < {ph(f'b{i}')}))")
        args.update({f"o{i}": s, f"a{i}": s + "/", f"b{i}": s + "0"})
    clause = "(" + " OR ".join(parts) + ")" if parts else "1 = 0"
    step, start = ("l.src_rid", "l.dst_rid") if down else ("l.dst_rid", "l.src_rid")
    cat = "l.category = 'physical'" if down else f"l.rel IN ({', '.join(repr(r) for r in PHYSICAL_RELS)})"
    tclause = f" AND e.type = {ph('type')}" if type else ""
    if sqlite:
        seed, union, cap, order = ":rid", "UNION ALL", f" LIMIT {int(limit * 4 + 1000)}", "e.id"
    else:
        seed, union, cap, order = "CAST(%(rid)s AS BIGINT)", "UNION", "", 'e.id COLLATE "C"'
    sql = (
        f"WITH RECURSIVE w(id, depth) AS (SELECT {seed}, 0 {union} SELECT {step}, w.depth + 1"
        f" FROM registry_links l JOIN w ON {start} = w.id WHERE {cat} AND w.depth < {ph('depth')}{cap}),"
        f" m AS (SELECT id, min(depth) AS d FROM w WHERE depth > 0 GROUP BY id)"
        f" SELECT e.id, e.type, e.name, e.org, m.d FROM m JOIN registry_entities e ON e.rid = m.id"
        f" WHERE {clause}{tclause} ORDER BY m.d, {order} LIMIT {ph('limit')}")
    params = {"rid": rid, "depth": depth, "limit": limit, **args, **({"type": type} if type else {})}
    if sqlite:
        return db.raw.execute(sql, params).fetchall()  # type: ignore[no-any-return]
    with db.raw.cursor() as cur:
        return cur.execute(sql, params).fetchall()  # type: ignore[no-any-return]


def linked(db: Db, rid: int, depth: int, limit: int, orgs: Iterable[str]) -> list[tuple[Any, ...]]:
    """(id, type, name, org, depth, rel) of the objects/places with a business link to `rid` (depth 1) and
    what physically lies under those, down to `depth`; per entity its nearest path (ties: the first rel)."""
    w = (sa.select(L.src_rid.label("id"), sa.literal(1).label("depth"), L.rel.label("rel"))
         .where(L.dst_rid == rid, L.category == "business").cte("w", recursive=True))
    w = w.union(sa.select(L.src_rid, w.c.depth + 1, L.rel).select_from(links).join(w, L.dst_rid == w.c.id)
                .where(L.category == "physical", w.c.depth < depth))
    ranked = sa.select(w.c.id, w.c.depth, w.c.rel, sa.func.row_number().over(
        partition_by=w.c.id, order_by=(w.c.depth, w.c.rel)).label("n")).cte("ranked")
    q = (sa.select(E.id, E.type, E.name, E.org, ranked.c.depth, ranked.c.rel).select_from(ranked)
         .join(entities, E.rid == ranked.c.id).where(ranked.c.n == 1, org_in(E.org, orgs))
         .order_by(ranked.c.depth, E.id).limit(limit))
    return list(db.run(q).all())  # type: ignore[arg-type]


# ---------------------------------------------------------------- search

def search(db: Db, terms: Sequence[str], orgs: Iterable[str], *, type: str | None = None,
           region: tuple[str, str] | None = None, grid: tuple[str, str] | None = None, at: str | None = None,
           org: str | None = None, limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
    """Entities matching every term and filter. The same hits on both backends: an entity matches a term
    when the term is a substring of its name or of its address, case-insensitively. Terms of 3+ characters
    use the index (SQLite: FTS5 trigram MATCH; PostgreSQL: ILIKE over pg_trgm GIN indexes); shorter ones
    (e.g. two CJK characters, which a trigram index cannot look up) filter by ILIKE the rows the long terms
    matched, or, with no long term, every row in scope. Order: newest first (by rid) when a long term is
    given (the match streams and LIMIT stops it early; a relevance rank would score every match first),
    else by id."""
    where = [org_in(E.org, orgs)]
    if type:
        where.append(E.type == type)
    if region:
        where += [E.region >= region[0], E.region < region[1]]
    if grid:
        where += [E.grid >= grid[0], E.grid < grid[1]]
    if at is not None:
        where += [E.valid_from <= at, sa.or_(E.valid_to.is_(None), E.valid_to > at)]
    if org:
        where.append(org_in(E.org, [org]))
    long_terms = [t for t in terms if len(t) >= 3]
    for t in terms:
        if len(t) < 3 or db.dialect != "sqlite":
            where.append(sa.or_(dialect.contains(E.name, t), dialect.contains(E.address, t)))
    q = sa.select(*_ENTITY)
    if long_terms and db.dialect == "sqlite":
        match = " ".join('"' + t.replace('"', '""') + '"' for t in long_terms)
        q = (q.select_from(fts).join(entities, E.rid == fts.c.rowid)
             .where(fts.c.registry_entities_fts.op("MATCH")(match), *where).order_by(fts.c.rowid.desc()))
    elif long_terms:
        q = q.where(*where).order_by(E.rid.desc())
    else:
        q = q.where(*where).order_by(E.id)
    return db.all(q.limit(limit).offset(offset))


# ---------------------------------------------------------------- usage applications

def grants(db: Db, applicant_scopes: Iterable[str], now: str) -> list[tuple[int, str, str]]:
    """(id, owner_org, fields JSON) of approved, in-period applications by orgs under the scopes. Few rows
    (departments' usage applications): the scope test runs here, so the statement is built once."""
    scopes = [s.rstrip("/") for s in applicant_scopes]
    if db.dialect == "sqlite":  # read on every entity view: through the driver (Core's execute was 40 % of it)
        rows = db.raw.execute(_SQL_GRANTS, (now, now)).fetchall()
    else:
        rows = db.run(_Q_GRANTS, {"now": now}).all()
    if "" in scopes:
        return [(r[0], r[1], r[2]) for r in rows]
    return [(r[0], r[1], r[2]) for r in rows if any(r[3] == s or r[3].startswith(s + "/") for s in scopes)]


def insert_application(db: Db, **values: Any) -> int:
    return int(db.scalar(sa.insert(applications).values(**values).returning(P.id)))


def application(db: Db, app_id: int) -> dict[str, Any] | None:
    return db.first(sa.select(applications).where(P.id == app_id))


def set_decision(db: Db, app_id: int, status: str, who: str, ts: str, reason: str | None) -> None:
    db.run(sa.update(applications).where(P.id == app_id)
           .values(status=status, decided_by=who, decided_at=ts, reason=reason))


def applications_for(db: Db, applicant_scopes: Iterable[str], owner_scopes: Iterable[str],
                     status: str | None, limit: int = 500) -> list[dict[str, Any]]:
    q = sa.select(applications).where(sa.or_(org_in(P.applicant_org, applicant_scopes),
                                             org_in(P.owner_org, owner_scopes)))
    if status:
        q = q.where(P.status == status)
    return db.all(q.order_by(P.id.desc()).limit(limit))


# ---------------------------------------------------------------- change feed and rejects

def append_feed(db: Db, ts: str, kind: str, entity_id: str | None, org: str | None, data: str) -> int:
    """Append one change record; returns its seq. Exactly-once for a resuming reader needs seqs to become
    visible in seq order: SQLite has one writer at a time; PostgreSQL allocates seqs from a sequence
    before commit, so appenders take the feed lock until their transaction ends."""
    dialect.serialize(db, "registry_feed")
    return int(db.scalar(sa.insert(feed).values(ts=ts, kind=kind, entity_id=entity_id, org=org, data=data)
                         .returning(F.seq)))


def feed_page(db: Db, after: int, scopes: Iterable[str], limit: int) -> list[dict[str, Any]]:
    return db.all(sa.select(F.seq, F.ts, F.kind, F.entity_id, F.org, F.data)
                  .where(F.seq > after, org_in(F.org, scopes)).order_by(F.seq).limit(limit))


def insert_reject(db: Db, ts: str, source: str, error: str, payload: str) -> None:
    db.run(sa.insert(rejects).values(ts=ts, source=source, error=error, payload=payload))


def feed_last(db: Db) -> int:
    """The newest feed seq (0 when empty): where the MQTT push starts."""
    return int(db.scalar(sa.select(sa.func.coalesce(sa.func.max(F.seq), 0))) or 0)


# --- leased imports (see tables.imports) ------------------------------------------------------------------
def claim_import(db: Db, key: str, org: str | None, actor: str, owner: str, now: float, lease_s: float,
                 at: str) -> tuple[int, str | None] | None:
    """Take the import `key` for `owner` until now + lease_s: (rows already committed, report so far), a
    fresh start if it is new or was finished; None while another importer's lease is live."""
    i = imports.c
    row = db.first(sa.select(i.status, i.rows_done, i.report, i.lease_owner, i.lease_until)
                   .where(i.id == key).with_for_update())
    if row is None:
        n = db.run(dialect.insert_ignore(db, imports, "id").values(
            id=key, org=org, actor=actor, status="running", rows_done=0, lease_owner=owner,
            lease_until=now + lease_s, created_at=at, updated_at=at)).rowcount
        return (0, None) if n else None  # 0: another importer inserted it meanwhile
    if row["status"] == "running" and row["lease_owner"] != owner and (row["lease_until"] or 0) > now:
        return None
    fresh = row["status"] != "running"
    values: dict[str, Any] = {"status": "running", "actor": actor, "lease_owner": owner, "lease_until": now + lease_s,
                              "updated_at": at}
    if fresh:
        values.update(rows_done=0, report=None)
    db.run(sa.update(imports).where(i.id == key).values(**values))
    return (0, None) if fresh else (int(row["rows_done"]), row["report"])


def advance_import(db: Db, key: str, owner: str, rows_done: int, report: str, now: float, lease_s: float,
                   at: str) -> bool:
    """Record progress and renew the lease, if `owner` still holds it (False: it ran out; do not commit)."""
    i = imports.c
    return bool(db.run(sa.update(imports).where(
        dialect.lease_held(imports, key, owner), i.status == "running", i.lease_until >= now).values(
        rows_done=rows_done, report=report, lease_until=now + lease_s, updated_at=at)).rowcount)


def finish_import(db: Db, key: str, owner: str, at: str) -> bool:
    i = imports.c
    return bool(db.run(sa.update(imports).where(dialect.lease_held(imports, key, owner), i.status == "running")
                       .values(status="done", lease_owner=None, lease_until=None, updated_at=at)).rowcount)


def release_import(db: Db, key: str, owner: str) -> None:
    """Give the lease up (an import that failed): the same upload sent again resumes at once."""
    db.run(sa.update(imports).where(dialect.lease_held(imports, key, owner))
           .values(lease_owner=None, lease_until=None))
