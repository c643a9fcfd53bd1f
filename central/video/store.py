"""Video tables: cases (one per incident, across events and adjacent cameras), their events, feedback per
camera+rule, routing rules, alert deliveries, site->org mapping, camera positions/adjacency, and the
correlator's cursor over the bridge's `events` feed (`events.seq`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from central.bridge import store as bridge_store
from central.store import dialect, metadata
from central.store import feed as feeds

if TYPE_CHECKING:
    from central.store import Db

sites = sa.Table(
    "video_sites", metadata,
    sa.Column("site", sa.Text, primary_key=True),
    sa.Column("org_path", sa.Text, nullable=False),
    sa.Column("updated_at", sa.Text, nullable=False),
)

cameras = sa.Table(
    "video_cameras", metadata,
    sa.Column("site", sa.Text, primary_key=True),
    sa.Column("device", sa.Text, primary_key=True),
    sa.Column("camera", sa.Text, primary_key=True),
    sa.Column("lat", sa.Float),
    sa.Column("lon", sa.Float),
    sa.Column("neighbours", sa.Text, nullable=False, server_default="[]"),  # JSON list of "device/camera"
    sa.Column("updated_at", sa.Text, nullable=False),
)

cases = sa.Table(
    "video_cases", metadata,
    sa.Column("id", dialect.BigId, primary_key=True, autoincrement=True),
    sa.Column("site", sa.Text, nullable=False),
    sa.Column("device", sa.Text, nullable=False),
    sa.Column("camera", sa.Text),
    sa.Column("zone", sa.Text),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("org", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),  # new | reviewed | dispatched | acknowledged | resolved | dismissed
    sa.Column("verdict", sa.Text),
    sa.Column("reason", sa.Text),
    sa.Column("score", sa.Float, nullable=False, server_default="0"),
    sa.Column("peak_count", sa.Integer),
    sa.Column("first_ts", sa.Text, nullable=False),
    sa.Column("last_ts", sa.Text, nullable=False),
    sa.Column("live", sa.Integer, nullable=False, server_default="1"),  # 1: the incident has not ended
    sa.Column("event_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("cameras", sa.Text, nullable=False, server_default="[]"),
    sa.Column("lat", sa.Float),
    sa.Column("lon", sa.Float),
    sa.Column("snapshot", sa.LargeBinary),  # legacy BLOB (before revision 0002): moved into a file by media-move
    sa.Column("department", sa.Text),
    sa.Column("route_id", dialect.BigId),
    sa.Column("due_at", sa.Text),  # SLA deadline of the current step
    sa.Column("created_at", sa.Text, nullable=False),
    sa.Column("updated_at", sa.Text, nullable=False),
    sa.Column("reviewed_at", sa.Text),
    sa.Column("dispatched_at", sa.Text),
    sa.Column("acknowledged_at", sa.Text),
    sa.Column("resolved_at", sa.Text),
    # The latest snapshot's file in the media store (shared with the event it came from): key, SHA-256.
    sa.Column("snapshot_key", sa.Text),
    sa.Column("snapshot_sha256", sa.Text),
    sa.Index("video_cases_open", "site", "kind", "status", "last_ts"),  # the legacy names
    sa.Index("video_cases_org", "org", "status"),
    sa.Index("video_cases_snapshot_key", "snapshot_key", sqlite_where=sa.text("snapshot_key IS NOT NULL"),
             postgresql_where=sa.text("snapshot_key IS NOT NULL")),
    sa.Index("video_cases_legacy_snapshot", "id", sqlite_where=sa.text("snapshot IS NOT NULL"),
             postgresql_where=sa.text("snapshot IS NOT NULL")),
)

case_events = sa.Table(
    "video_case_events", metadata,
    sa.Column("event_id", sa.Text, primary_key=True),
    sa.Column("case_id", dialect.BigId, sa.ForeignKey("video_cases.id"), nullable=False),
    sa.Column("site", sa.Text, nullable=False),
    sa.Column("device", sa.Text, nullable=False),
    sa.Column("incident_id", sa.Text),
    sa.Column("camera", sa.Text),
    sa.Column("phase", sa.Text, nullable=False),
    sa.Column("ts", sa.Text, nullable=False),
    sa.Column("score", sa.Float),
    sa.Column("count", sa.Integer),
    sa.Index("video_case_events_incident", "site", "device", "incident_id"),
    sa.Index("video_case_events_case", "case_id", "ts"),
)

case_log = sa.Table(
    "video_case_log", metadata,
    sa.Column("id", dialect.BigId, primary_key=True, autoincrement=True),
    sa.Column("case_id", dialect.BigId, nullable=False),
    sa.Column("ts", sa.Text, nullable=False),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("action", sa.Text, nullable=False),
    sa.Column("detail", sa.Text, nullable=False, server_default="{}"),
    sa.Index("video_case_log_case", "case_id", "id"),
)

feedback = sa.Table(
    "video_feedback", metadata,
    sa.Column("site", sa.Text, primary_key=True),
    sa.Column("device", sa.Text, primary_key=True),
    sa.Column("camera", sa.Text, primary_key=True),
    sa.Column("kind", sa.Text, primary_key=True),
    sa.Column("zone", sa.Text, primary_key=True),
    sa.Column("confirmed", sa.Integer, nullable=False, server_default="0"),
    sa.Column("false_positive", sa.Integer, nullable=False, server_default="0"),
    sa.Column("reasons", sa.Text, nullable=False, server_default="[]"),  # last 20 false-positive reasons
    sa.Column("updated_at", sa.Text, nullable=False),
)

routes = sa.Table(
    "video_routes", metadata,
    sa.Column("id", dialect.BigId, primary_key=True, autoincrement=True),
    sa.Column("org_prefix", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),  # '*' = any
    sa.Column("department", sa.Text, nullable=False),
    sa.Column("webhook_url", sa.Text),
    sa.Column("webhook_secret", sa.Text),
    sa.Column("mqtt", sa.Integer, nullable=False, server_default="1"),
    sa.Column("ack_sla_min", sa.Float, nullable=False),
    sa.Column("resolve_sla_min", sa.Float, nullable=False),
    sa.Column("created_at", sa.Text, nullable=False),
)

alerts = sa.Table(
    "video_alerts", metadata,
    sa.Column("id", dialect.BigId, primary_key=True, autoincrement=True),
    sa.Column("case_id", dialect.BigId, nullable=False),
    sa.Column("channel", sa.Text, nullable=False),
    sa.Column("target", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("error", sa.Text),
    sa.Column("created_at", sa.Text, nullable=False),
    sa.Column("sent_at", sa.Text),
    # An MQTT alert is sent from here, not from a process's memory: pending -> sending (claimed: lease_owner
    # holds it until lease_until) -> sent, or pending again at next_at, or failed after the last try. A
    # sending row whose lease ran out (its hub died) is claimed again by any hub: sent at least once.
    sa.Column("body", sa.Text),  # NULL only on rows from before revision 0009 (never sent, see there)
    sa.Column("next_at", sa.Float),
    sa.Column("lease_owner", sa.Text),
    sa.Column("lease_until", sa.Float),
    sa.Index("video_alerts_case", "case_id"),
    sa.Index("video_alerts_due", "status", "next_at"),
)

# Correlation consumes the bridge's `events` from this durable cursor (the last events.seq correlated),
# in its own transactions: ingest stays fast and a crash between the two resumes exactly where it stopped.
cursor = sa.Table(
    "video_cursor", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("last_seq", dialect.BigId, nullable=False, server_default="0"),
)

# create_extras seeds the cursor row; `hub copy-store` replaces it with the source's.
SEEDED = ("video_cursor",)
# The video change feed (docs/FEEDS.md): one row per case log entry (created, reviewed, dispatched, ...).
feed = feeds.feed_table("video_feed")

TABLES = [sites, cameras, cases, case_events, case_log, feedback, routes, alerts, cursor, feed]

CASE_COLS = ("id", "site", "device", "camera", "zone", "kind", "org", "status", "verdict", "reason", "score",
             "peak_count", "first_ts", "last_ts", "live", "event_count", "cameras", "lat", "lon", "department",
             "route_id", "due_at", "created_at", "updated_at", "reviewed_at", "dispatched_at",
             "acknowledged_at", "resolved_at")
ROUTE_COLS = ("id", "org_prefix", "kind", "department", "webhook_url", "webhook_secret", "mqtt", "ack_sla_min",
              "resolve_sla_min", "created_at")


# --- schema ------------------------------------------------------------------------------------------------
def adopt_legacy(db: Db) -> None:
    """Legacy video (v2) tables have these shapes and index names, except the cursor: it held an events
    rowid in `last_rowid`. Bridge's adopt_legacy (run first) made events.seq equal to that rowid, so the
    value carries over as `last_seq`. A database at legacy v1 had no cursor: it starts at the newest event."""
    names = set(sa.inspect(db.sa).get_table_names())
    if "video_cursor" in names:
        db.run("ALTER TABLE video_cursor RENAME TO _legacy_video_cursor")
        cursor.create(db.sa)
        db.run("INSERT INTO video_cursor (id, last_seq) SELECT id, COALESCE(last_rowid, 0) FROM _legacy_video_cursor")
        db.run("DROP TABLE _legacy_video_cursor")
    else:
        cursor.create(db.sa)
        _start_cursor(db)


def create_extras(db: Db, created: set[str]) -> None:
    if "video_cursor" in created:
        _start_cursor(db)


def _start_cursor(db: Db) -> None:
    # Events stored before video was installed are not correlated (as the legacy migration did).
    db.run(dialect.insert_ignore(db, cursor, "id").values(id=1, last_seq=bridge_store.max_seq(db)))


# --- the correlator's cursor -------------------------------------------------------------------------------
def claim_cursor(db: Db) -> int | None:
    """The cursor's position, its row locked for this transaction; None while another correlator holds it
    (PostgreSQL: SKIP LOCKED, so that one goes on alone; SQLite: the write transaction already serialises)."""
    last = db.scalar(dialect.claim(sa.select(cursor.c.last_seq).where(cursor.c.id == 1)))
    if last is None and db.scalar(sa.select(sa.func.count()).select_from(cursor)) == 0:
        _start_cursor(db)  # a cursor row deleted by hand: start again at the newest event
        return claim_cursor(db)
    return None if last is None else int(last)


def move_cursor(db: Db, seq: int) -> None:
    db.run(sa.update(cursor).where(cursor.c.id == 1).values(last_seq=seq))


def cursor_position(db: Db) -> int:
    return int(db.scalar(sa.select(cursor.c.last_seq).where(cursor.c.id == 1)) or 0)


@contextmanager
def savepoint(db: Db) -> Iterator[None]:
    """A nested transaction: an exception inside rolls back only what ran inside (and propagates). Said to
    the driver (the same SQL on both backends): Core's begin_nested cost more than the correlation itself."""
    if not db.sa.in_transaction():
        db.sa.begin()
    cur = db.raw.cursor()
    try:
        cur.execute("SAVEPOINT video_event")
        try:
            yield
        except BaseException:
            cur.execute("ROLLBACK TO SAVEPOINT video_event")
            raise
        finally:
            cur.execute("RELEASE SAVEPOINT video_event")
    finally:
        cur.close()


# --- correlation -------------------------------------------------------------------------------------------
# The correlator runs ~8 statements per event. Building and executing each through Core cost ~20x the raw
# driver (bench/ingest.py's video_correlation phase fell from ~4,800 to ~200 events/s), so these statements
# are Core expressions compiled once per dialect and then run on the driver connection (`Prepared`).
class Prepared:
    """A Core statement with named bindparams, compiled once per dialect to the driver's own SQL text and
    executed on `db.raw` (same transaction). Only for plain statements: no result-type processing."""

    def __init__(self, stmt: Any) -> None:
        self.stmt = stmt
        self._compiled: dict[str, tuple[str, list[str] | None, dict[str, Any]]] = {}

    def _sql(self, db: Db) -> tuple[str, list[str] | None, dict[str, Any]]:
        c = self._compiled.get(db.dialect)
        if c is None:
            comp = self.stmt.compile(dialect=db.sa.dialect, compile_kwargs={"render_postcompile": True})
            keys = list(comp.positiontup) if comp.positional else None  # sqlite3 `?` / psycopg `%(name)s`
            c = self._compiled[db.dialect] = (str(comp), keys, dict(comp.params))
        return c

    def run(self, db: Db, **params: Any) -> Any:
        sql, keys, defaults = self._sql(db)
        if not db.sa.in_transaction():  # tx()'s commit must cover what runs on the driver connection
            db.sa.begin()
        values = {**defaults, **params}
        cur = db.raw.cursor()
        cur.execute(sql, [values[k] for k in keys] if keys is not None else values)
        return cur

    def first(self, db: Db, **params: Any) -> tuple[Any, ...] | None:
        cur = self.run(db, **params)
        try:
            return cur.fetchone()
        finally:
            cur.close()

    def all(self, db: Db, **params: Any) -> list[tuple[Any, ...]]:
        cur = self.run(db, **params)
        try:
            return list(cur.fetchall())
        finally:
            cur.close()


_b = sa.bindparam
_IS_CORRELATED = Prepared(sa.select(sa.literal(1)).select_from(case_events)
                          .where(case_events.c.event_id == _b("event_id")).limit(1))
_CASE_OF_INCIDENT = Prepared(sa.select(case_events.c.case_id).where(
    case_events.c.site == _b("site"), case_events.c.device == _b("device"),
    case_events.c.incident_id == _b("incident_id")).limit(1))
_SITE_CAMERAS = Prepared(sa.select(cameras.c.device, cameras.c.camera, cameras.c.neighbours)
                         .where(cameras.c.site == _b("site")))
_CAMERA_POSITION = Prepared(sa.select(cameras.c.lat, cameras.c.lon).where(
    cameras.c.site == _b("site"), cameras.c.device == _b("device"), cameras.c.camera == _b("camera")))
_SITE_ORG = Prepared(sa.select(sites.c.org_path).where(sites.c.site == _b("site")))
_CASE_CAMERAS = Prepared(sa.select(cases.c.cameras).where(cases.c.id == _b("case_id")))
_COUNT_CASE_EVENT = Prepared(sa.update(cases).where(cases.c.id == _b("case_id"))
                             .values(event_count=cases.c.event_count + 1))
_INSERT_CASE_EVENT = Prepared(sa.insert(case_events).values({c.name: _b(c.name) for c in case_events.columns}))


def _greatest(col: sa.ColumnElement[Any], value: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    # max(a, b) is SQLite's, GREATEST PostgreSQL's: a CASE says it on both
    return sa.case((col >= value, col), else_=value)


_ADD_EVENT_TO_CASE = Prepared(sa.update(cases).where(cases.c.id == _b("case_id")).values(
    last_ts=_greatest(cases.c.last_ts, sa.cast(_b("ts"), sa.Text)),
    score=_greatest(cases.c.score, sa.cast(_b("score"), sa.Float)),
    peak_count=_greatest(sa.func.coalesce(cases.c.peak_count, 0), sa.cast(_b("count"), sa.Integer)),
    cameras=_b("cameras"),
    live=sa.func.coalesce(sa.cast(_b("live"), sa.Integer), cases.c.live),
    snapshot_key=sa.func.coalesce(sa.cast(_b("snapshot_key"), sa.Text), cases.c.snapshot_key),
    snapshot_sha256=sa.func.coalesce(sa.cast(_b("snapshot_sha256"), sa.Text), cases.c.snapshot_sha256),
    updated_at=_b("updated_at"),
))


def _open_cases_stmt(n: int) -> Prepared:
    return Prepared(sa.select(cases.c.id, cases.c.cameras).where(
        cases.c.site == _b("site"), cases.c.kind == _b("kind"),
        cases.c.status.in_([_b(f"status_{i}") for i in range(n)]), cases.c.last_ts >= _b("since"),
    ).order_by(cases.c.last_ts.desc()))


_OPEN_CASES: dict[int, Prepared] = {}


def is_correlated(db: Db, event_id: str) -> bool:
    return _IS_CORRELATED.first(db, event_id=event_id) is not None


def case_of_incident(db: Db, site: str, device: str, incident_id: str) -> int | None:
    r = _CASE_OF_INCIDENT.first(db, site=site, device=device, incident_id=incident_id)
    return None if r is None else int(r[0])


def open_cases_since(db: Db, site: str, kind: str, statuses: tuple[str, ...], since: str) -> list[tuple[int, str]]:
    """(id, cameras JSON) of cases in `statuses` whose last event is at or after `since`, newest first."""
    stmt = _OPEN_CASES.get(len(statuses)) or _OPEN_CASES.setdefault(len(statuses), _open_cases_stmt(len(statuses)))
    rows = stmt.all(db, site=site, kind=kind, since=since, **{f"status_{i}": s for i, s in enumerate(statuses)})
    return [(int(r[0]), r[1]) for r in rows]


def site_cameras(db: Db, site: str) -> list[tuple[str, str, str]]:
    """(device, camera, neighbours JSON) of the site's cameras."""
    return [(r[0], r[1], r[2]) for r in _SITE_CAMERAS.all(db, site=site)]


def camera_position(db: Db, site: str, device: str, camera: str) -> tuple[float | None, float | None] | None:
    r = _CAMERA_POSITION.first(db, site=site, device=device, camera=camera)
    return None if r is None else (r[0], r[1])


def site_org(db: Db, site: str) -> str | None:
    r = _SITE_ORG.first(db, site=site)
    return None if r is None else r[0]


def insert_case(db: Db, values: dict[str, Any]) -> int:
    return int(db.run(sa.insert(cases).values(**values)).inserted_primary_key[0])


def case_cameras(db: Db, case_id: int) -> str | None:
    r = _CASE_CAMERAS.first(db, case_id=case_id)
    return None if r is None else r[0]


def add_event_to_case(db: Db, case_id: int, ts: str, score: float, count: int | None, cameras_json: str,
                      live: int | None, snapshot: tuple[str, str] | None, updated_at: str) -> None:
    """Fold one more event into a case: latest ts, peak score/count, its camera, liveness (None: as it was),
    its snapshot (media key, SHA-256) when it has one."""
    key, sha = snapshot or (None, None)
    _ADD_EVENT_TO_CASE.run(db, case_id=case_id, ts=ts, score=score, count=count or 0, cameras=cameras_json,
                           live=live, snapshot_key=key, snapshot_sha256=sha, updated_at=updated_at).close()


def count_case_event(db: Db, case_id: int) -> None:
    _COUNT_CASE_EVENT.run(db, case_id=case_id).close()


def insert_case_event(db: Db, values: dict[str, Any]) -> None:
    _INSERT_CASE_EVENT.run(db, **values).close()


# --- configuration -----------------------------------------------------------------------------------------
def set_site(db: Db, site: str, org_path: str, at: str, open_statuses: tuple[str, ...]) -> None:
    """Map a site to an org; its open cases follow it (closed ones keep the org they were handled in)."""
    db.run(dialect.upsert(db, sites, ["site"], ["org_path", "updated_at"]).values(
        site=site, org_path=org_path, updated_at=at))
    db.run(sa.update(cases).where(cases.c.site == site, cases.c.status.in_(open_statuses)).values(org=org_path))


def set_camera(db: Db, site: str, device: str, camera: str, lat: float | None, lon: float | None,
               neighbours_json: str, at: str) -> None:
    db.run(dialect.upsert(db, cameras, ["site", "device", "camera"], ["lat", "lon", "neighbours", "updated_at"])
           .values(site=site, device=device, camera=camera, lat=lat, lon=lon, neighbours=neighbours_json,
                   updated_at=at))


def insert_route(db: Db, values: dict[str, Any]) -> int:
    return int(db.run(sa.insert(routes).values(**values)).inserted_primary_key[0])


def get_route(db: Db, rid: int) -> dict[str, Any] | None:
    return db.first(sa.select(routes).where(routes.c.id == rid))


def all_routes(db: Db) -> list[dict[str, Any]]:
    return db.all(sa.select(routes).order_by(routes.c.id))


def delete_route(db: Db, rid: int) -> None:
    db.run(sa.delete(routes).where(routes.c.id == rid))


# --- reads -------------------------------------------------------------------------------------------------
def scope(scopes: list[str]) -> sa.ColumnElement[bool]:
    """Cases whose org lies under one of `scopes` ("/" = all; none = nothing)."""
    parts = []
    for s in scopes:
        if s == "/":
            return sa.true()
        p = s.rstrip("/")
        parts.append(sa.or_(cases.c.org == p, cases.c.org.like(dialect.like_escape(p) + "/%", escape="\\")))
    return sa.or_(*parts) if parts else sa.false()


def _case_select() -> sa.Select:
    has = sa.or_(cases.c.snapshot_key.is_not(None), cases.c.snapshot.is_not(None))
    return sa.select(*(cases.c[k] for k in CASE_COLS), sa.case((has, 1), else_=0).label("has_snapshot"))


def get_case(db: Db, case_id: int) -> dict[str, Any] | None:
    """A case's columns (CASE_COLS) and `has_snapshot`, without the snapshot itself."""
    return db.first(_case_select().where(cases.c.id == case_id))


def case_field(db: Db, case_id: int, *names: str) -> dict[str, Any] | None:
    return db.first(sa.select(*(cases.c[n] for n in names)).where(cases.c.id == case_id))


def case_snapshot(db: Db, case_id: int) -> dict[str, Any] | None:
    """None: no such case; else its snapshot reference (`snapshot_key`, `snapshot_sha256`) and, in a
    database from before revision 0002 not yet moved into files, the legacy BLOB (`snapshot`)."""
    c = cases.c
    return db.first(sa.select(c.snapshot_key, c.snapshot_sha256, c.snapshot).where(c.id == case_id))


def case_filter(scopes: list[str], status: str | None = None, kind: str | None = None, site: str | None = None,
                last_since: str | None = None, first_since: str | None = None, first_until: str | None = None,
                overdue_at: str | None = None, overdue: bool | None = None,
                open_statuses: tuple[str, ...] = ()) -> sa.ColumnElement[bool]:
    cond: list[sa.ColumnElement[bool]] = [scope(scopes)]
    if status:
        cond.append(cases.c.status == status)
    if kind:
        cond.append(cases.c.kind == kind)
    if site:
        cond.append(cases.c.site == site)
    if last_since:
        cond.append(cases.c.last_ts >= last_since)
    if first_since:
        cond.append(cases.c.first_ts >= first_since)
    if first_until:
        cond.append(cases.c.first_ts < first_until)
    if overdue is not None:
        q = sa.and_(cases.c.due_at.is_not(None), cases.c.due_at < overdue_at, cases.c.status.in_(open_statuses))
        cond.append(q if overdue else sa.not_(q))
    return sa.and_(*cond)


def list_cases(db: Db, where: sa.ColumnElement[bool], limit: int, offset: int) -> tuple[int, list[dict[str, Any]]]:
    total = int(db.scalar(sa.select(sa.func.count()).select_from(cases).where(where)))
    rows = db.all(_case_select().where(where).order_by(cases.c.last_ts.desc(), cases.c.id.desc())
                  .limit(limit).offset(offset))
    return total, rows


def case_stats(db: Db, where: sa.ColumnElement[bool]) -> dict[str, Any]:
    def group(expr: sa.ColumnElement[Any]) -> dict[str, int]:
        k = expr.label("k")
        return {str(r[0]): int(r[1]) for r in db.run(
            sa.select(k, sa.func.count()).where(where).group_by(k).order_by(k))}

    fp = db.run(sa.select(sa.func.sum(sa.case((cases.c.verdict == "false_positive", 1), else_=0)),
                          sa.func.count(cases.c.verdict)).where(where)).one()
    return {
        "total": int(db.scalar(sa.select(sa.func.count()).select_from(cases).where(where))),
        "by_kind": group(cases.c.kind),
        "by_area": group(cases.c.org),
        "by_status": group(cases.c.status),
        "by_hour": group(sa.func.substr(cases.c.first_ts, 1, 13)),  # UTC hour buckets "YYYY-MM-DDTHH"
        "by_hour_of_day": group(sa.cast(sa.func.substr(cases.c.first_ts, 12, 2), sa.Integer)),
        "false_positive_rate": round(int(fp[0]) / int(fp[1]), 4) if fp[1] else None,
    }


def case_positions(db: Db, where: sa.ColumnElement[bool]) -> list[tuple[float, float]]:
    return [(r[0], r[1]) for r in db.run(sa.select(cases.c.lat, cases.c.lon).where(
        where, cases.c.lat.is_not(None), cases.c.lon.is_not(None)))]


def case_org(db: Db, case_id: int) -> str | None:
    return db.scalar(sa.select(cases.c.org).where(cases.c.id == case_id))


def events_of_case(db: Db, case_id: int) -> list[dict[str, Any]]:
    c = case_events.c
    return db.all(sa.select(c.event_id, c.device, c.camera, c.incident_id, c.phase, c.ts, c.score, c.count)
                  .where(c.case_id == case_id).order_by(c.ts))


def log_of_case(db: Db, case_id: int) -> list[dict[str, Any]]:
    c = case_log.c
    return db.all(sa.select(c.ts, c.actor, c.action, c.detail).where(c.case_id == case_id).order_by(c.id))


def alerts_of_case(db: Db, case_id: int) -> list[dict[str, Any]]:
    c = alerts.c
    status = sa.case((c.status == "sending", "pending"), else_=c.status)  # being sent is still pending to a reader
    return db.all(sa.select(c.id, c.channel, c.target, status.label("status"), c.attempts, c.error, c.sent_at)
                  .where(c.case_id == case_id).order_by(c.id))


def all_feedback(db: Db) -> list[dict[str, Any]]:
    f = feedback.c
    return db.all(sa.select(f.site, f.device, f.camera, f.kind, f.zone, f.confirmed, f.false_positive, f.reasons,
                            f.updated_at).order_by(f.site, f.device, f.camera, f.kind, f.zone))


# --- workflow ----------------------------------------------------------------------------------------------
def log_case(db: Db, case_id: int, ts: str, actor: str, action: str, detail_json: str) -> None:
    db.run(sa.insert(case_log).values(case_id=case_id, ts=ts, actor=actor, action=action, detail=detail_json))


def update_case(db: Db, case_id: int, **values: Any) -> None:
    db.run(sa.update(cases).where(cases.c.id == case_id).values(**values))


def feedback_reasons(db: Db, site: str, device: str, camera: str, kind: str, zone: str) -> str | None:
    f = feedback.c
    return db.scalar(sa.select(f.reasons).where(f.site == site, f.device == device, f.camera == camera,
                                                f.kind == kind, f.zone == zone))


def add_feedback(db: Db, site: str, device: str, camera: str, kind: str, zone: str, confirmed: int,
                 false_positive: int, reasons_json: str, at: str) -> None:
    """Count one verdict for a camera + rule (and keep its reasons)."""
    stmt = dialect.insert(db, feedback).values(site=site, device=device, camera=camera, kind=kind, zone=zone,
                                               confirmed=confirmed, false_positive=false_positive,
                                               reasons=reasons_json, updated_at=at)
    db.run(stmt.on_conflict_do_update(
        index_elements=["site", "device", "camera", "kind", "zone"],
        set_={"confirmed": feedback.c.confirmed + stmt.excluded.confirmed,
              "false_positive": feedback.c.false_positive + stmt.excluded.false_positive,
              "reasons": stmt.excluded.reasons, "updated_at": stmt.excluded.updated_at}))


def insert_alert(db: Db, case_id: int, channel: str, target: str, body: str, at: str, now: float) -> int:
    return int(db.run(sa.insert(alerts).values(case_id=case_id, channel=channel, target=target, status="pending",
                                               body=body, next_at=now, created_at=at)).inserted_primary_key[0])


def _alert_due(now: float) -> Any:
    return dialect.lease_due(alerts, now, "pending", "sending")


def any_alert_due(db: Db, now: float) -> bool:
    return db.scalar(sa.select(sa.literal(1)).where(_alert_due(now)).limit(1)) is not None


def claim_alerts(db: Db, now: float, lease_s: float, owner: str, limit: int) -> list[dict[str, Any]]:
    """Take up to `limit` due alerts for `owner` (see `dialect.take_leases`), oldest first."""
    c = alerts.c
    ids = dialect.take_leases(db, alerts, _alert_due(now), (c.next_at, c.id), now, lease_s, owner, limit,
                              status="sending")
    if not ids:
        return []
    return db.all(sa.select(c.id, c.target, c.body, c.attempts).where(c.id.in_(ids)).order_by(c.next_at, c.id))


def finish_alert(db: Db, alert_id: int, owner: str, status: str, attempts: int, error: str | None,
                 sent_at: str | None, next_at: float | None = None) -> bool:
    """Record a try's outcome if `owner` still holds the alert's lease (False: another hub took it over)."""
    values: dict[str, Any] = {"status": status, "attempts": attempts, "error": error, "sent_at": sent_at,
                              "lease_owner": None, "lease_until": None}
    if next_at is not None:
        values["next_at"] = next_at
    held = sa.and_(dialect.lease_held(alerts, alert_id, owner), alerts.c.status == "sending")
    return bool(db.run(sa.update(alerts).where(held).values(**values)).rowcount)


def alerts_waiting(db: Db, now: float) -> bool:
    """Whether an alert is due or held by a sender now."""
    c = alerts.c
    waiting = sa.or_(_alert_due(now), c.status == "sending")
    return db.scalar(sa.select(sa.literal(1)).where(waiting).limit(1)) is not None


def release_alerts(db: Db, ids: list[int], owner: str) -> None:
    """Hand claimed but unsent alerts back, due at once (a stopping hub, or half its lease gone)."""
    c = alerts.c
    db.run(sa.update(alerts).where(c.id.in_(ids), c.status == "sending", c.lease_owner == owner)
           .values(status="pending", lease_owner=None, lease_until=None))


# --- retention ---------------------------------------------------------------------------------------------
# Cases are not purged: a case is the record of what was decided and by whom (review, dispatch, resolution;
# audit rows and feedback statistics name it), one row per incident, small next to its events. Its snapshot
# is that record's evidence and stays with it, so its file outlives the events it came from.
CLOSED = ("resolved", "dismissed")


def _keep_events() -> sa.ColumnElement[bool]:
    """Events retention keeps for video: not yet consumed by the correlator (past its cursor; all of them
    while the cursor row is missing), or part of a case that is not closed."""
    e = bridge_store.events.c
    last = sa.select(cursor.c.last_seq).where(cursor.c.id == 1).scalar_subquery()
    open_case = sa.exists().where(case_events.c.event_id == e.event_id, cases.c.id == case_events.c.case_id,
                                  cases.c.status.not_in(CLOSED))
    return sa.or_(e.seq > sa.func.coalesce(last, -1), open_case)


bridge_store.KEEP_EVENTS.append(_keep_events)
bridge_store.MEDIA_REFS.append(cases.c.snapshot_key)


def legacy_snapshots(db: Db, limit: int) -> list[tuple[int, bytes | None, str | None]]:
    """(id, JPEG bytes, created_at) of cases still holding their snapshot as a BLOB (partial index); the
    bytes are None when a file already took its place (a newer event's)."""
    c = cases.c
    return [(int(r[0]), None if r[3] else bytes(r[1]), r[2]) for r in db.run(
        sa.select(c.id, c.snapshot, c.created_at, c.snapshot_key).where(c.snapshot.is_not(None)).order_by(c.id)
        .limit(limit))]


def store_snapshot_ref(db: Db, case_id: int, key: str | None, sha256: str | None) -> None:
    """The case's BLOB is now the file `key` (unless a newer snapshot already is): drop the BLOB."""
    c = cases.c
    db.run(sa.update(cases).where(c.id == case_id, c.snapshot.is_not(None)).values(
        snapshot_key=sa.func.coalesce(c.snapshot_key, key), snapshot_sha256=sa.func.coalesce(c.snapshot_sha256, sha256),
        snapshot=None))


LEGACY_MEDIA = {"video_cases": (legacy_snapshots, store_snapshot_ref)}


# --- change feed ---------------------------------------------------------------------------------------------
_FEED_CASE = ("status", "org", "kind", "site", "device", "camera", "zone", "verdict", "department", "score",
              "peak_count", "event_count", "first_ts", "last_ts", "lat", "lon", "due_at")


def case_for_feed(db: Db, case_id: int) -> dict[str, Any] | None:
    """The case fields a feed line carries (no snapshot, no reason text beyond the log's detail)."""
    return case_field(db, case_id, *_FEED_CASE)


def append_feed(db: Db, rows: list[dict[str, Any]]) -> None:
    feeds.append(db, feed, rows)


def feed_page(db: Db, after: int, scopes: list[str], limit: int) -> list[dict[str, Any]]:
    return feeds.page(db, feed, after, scopes, limit)


def feed_last(db: Db) -> int:
    return feeds.last_seq(db, feed)
