"""Registry benchmark: bulk registration rate, point lookup and FTS latency at N entities, descendants of a
building with 10k linked objects.

    .venv/bin/python bench/registry.py [--n 1000000] [--no-pg]

Every figure is printed as one JSON line; the LAST line is the headline (bulk registration rate) with its
same-run baseline: raw sqlite3 executemany of the very same entity rows into a plain table.

Then the store on each backend, side by side (`registry_store_*` lines, `backend` sqlite | postgresql; a
PostgreSQL 15 server is started with tests/pg.py's PgServer): the rows the service import prepared
(entities, links, aliases, feed) written again through `store.bulk.write_rows` (executemany on SQLite, COPY
on PostgreSQL) in 10k-row transactions, then point lookups, searches and the building's descendants through
the store's queries. Store level, because a hub runs on PostgreSQL only once every capability is on the
data-access layer; the service-level figures above are SQLite's.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from central.app import build_hub  # noqa: E402
from central.registry import service as svc  # noqa: E402
from central.registry.ids import id_card_check, uscc_check  # noqa: E402
from central.registry.store import tables as rtables  # noqa: E402
from central.settings import MqttSettings, Settings  # noqa: E402
from central.store import Store  # noqa: E402

ORG = "/city/district-a"
STREETS = ["文三路", "教工路", "天目山路", "莫干山路", "延安路", "Wensan Rd", "Jiaogong Rd", "Tianmushan Rd"]
KINDS = ["消防栓 hydrant", "路灯 streetlamp", "井盖 manhole", "摄像头 camera", "垃圾桶 bin", "灭火器 extinguisher"]


class ReadActor:
    """Reads everything, without pii.read (so a lookup measures the lookup, not a decrypt + audit write)."""

    name = "bench"

    def allowed(self, perm: str, org_path: str) -> bool:
        return perm != "pii.read"

    def scopes(self, perm: str) -> list[str]:
        return [] if perm == "pii.read" else ["/"]


def emit(metric: str, value: float, unit: str, target: float | None = None, baseline: float | None = None,
         **extra: Any) -> None:
    ratio = round(value / baseline, 3) if baseline else None
    print(json.dumps({"metric": metric, "value": round(value, 3), "unit": unit, "target": target,
                      "baseline": None if baseline is None else round(baseline, 3), "ratio": ratio, **extra}),
          flush=True)


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def rows(n: int, parents: list[str], owners: list[str], seed: int = 7) -> Iterator[tuple[int, dict[str, Any]]]:
    """A city-like mix: 70% objects (2 links each), 10% places, 10% persons, 10% enterprises."""
    rnd = random.Random(seed)
    d0 = date(1950, 1, 1)
    for i in range(n):
        r = i % 10
        street = STREETS[i % len(STREETS)]
        if r == 0:
            body = f"330106{(d0 + timedelta(days=i // 10 % 20000)).strftime('%Y%m%d')}{i // 200000 % 1000:03d}"
            rec: dict[str, Any] = {"type": "person", "region": "330106", "name": f"居民 resident {i}",
                                   "external_key": body + id_card_check(body)}
        elif r == 1:
            body = f"91330106{i:09d}"
            rec = {"type": "enterprise", "region": "330106", "name": f"企业 company {i}",
                   "address": f"{street} {i % 997} 号", "external_key": body + uscc_check(body)}
        elif r == 2:
            rec = {"type": "place", "region": "330106", "name": f"场所 place {i}",
                   "address": f"{street} {i % 997} 号",
                   "grid": "wtmk" + "0123456789bcdefghjkmnpqrstuvwxyz"[i % 32] + "q", "valid_from": "2024-01-01"}
        else:
            rec = {"type": "object", "region": "330106", "name": f"{KINDS[i % len(KINDS)]} {i}",
                   "address": f"{street} {i % 997} 号",
                   "links": [{"rel": "contained_in", "target": rnd.choice(parents)},
                             {"rel": "managed_by", "target": rnd.choice(owners)}]}
        yield i + 1, rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", "--n", type=int, default=1_000_000, help="entities to load (default 1,000,000)")
    ap.add_argument("--no-pg", action="store_true", help="skip the PostgreSQL store figures")
    ap.add_argument("--database-url", help="a PostgreSQL server's URL for the store figures (its role creates a"
                    " schema of its own there and drops it after; default: start a throwaway server)")
    ap.add_argument("--keep-pg", action="store_true", help="leave the PostgreSQL schema behind (to EXPLAIN)")
    ap.add_argument("--children", type=int, default=10_000, help="objects linked under the test building")
    ap.add_argument("--queries", type=int, default=2000, help="point lookups to time")
    ap.add_argument("--chunk", type=int, default=10_000,
                    help="rows per write transaction (the write lock is held that long; default 10,000)")
    ap.add_argument("--dir", type=Path, default=None, help="work directory (default: a temp dir)")
    ap.add_argument("--query-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--building", help=argparse.SUPPRESS)
    args = ap.parse_args()
    work = args.dir or Path(tempfile.mkdtemp(prefix="bench-registry-"))
    if args.query_only:
        query(args, work)
        return
    hub = build_hub(Settings(data_dir=work / "hub", mqtt=MqttSettings(enabled=False)))
    sysact = svc.SystemActor("bench", ORG)

    # parents and owners for the objects
    seed = [(i, {"type": "place", "region": "330106", "name": f"园区 campus {i}", "address": "文三路 1 号"})
            for i in range(50)]
    seed += [(100 + i, {"type": "enterprise", "region": "330106", "name": f"物业 estate {i}",
                        "external_key": (b := f"91330106{900000000 + i:09d}") + uscc_check(b)}) for i in range(50)]
    rep = svc.import_rows(hub, sysact, seed, org=ORG)
    parents = [r["id"] for r in rep.ids[:50]]
    owners = [r["id"] for r in rep.ids[50:]]

    # headline: bulk registration through the service (validation, ids, PII crypto, links, FTS, feed), as one
    # import of the whole file (one background checkpointer for the run, its closing pass inside the timer).
    # The input rows are generated before the timer starts, as the baseline gets its rows ready-made.
    batch = list(rows(args.count, parents, owners))
    ch0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t, c0 = time.perf_counter(), time.process_time()
    rep = svc.import_rows(hub, sysact, batch, org=ORG, chunk=args.chunk)
    took, cpu = time.perf_counter() - t, time.process_time() - c0
    ch1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the writer process, waited for by the import
    writer_cpu = ch1.ru_utime + ch1.ru_stime - ch0.ru_utime - ch0.ru_stime
    assert not rep.errors, rep.errors[:3]
    created = rep.created
    del batch, rep
    rate = created / took
    print(f"# loaded {created} entities in {took:.1f}s", file=sys.stderr)

    # baseline: the same final entity rows, raw executemany into a plain table (no checks, no FTS/links/feed)
    e = rtables.entities
    with hub.store.read() as db:
        same = [tuple(r) for r in db.run(sa.select(*[e.c[c] for c in svc.ENTITY_COLS])
                                         .where(e.c.created_by == "bench").order_by(e.c.rid).offset(100))]
    base_db = sqlite3.connect(str(work / "baseline.db"), isolation_level=None)
    base_db.execute("PRAGMA journal_mode=WAL")
    base_db.execute("PRAGMA synchronous=NORMAL")
    coldefs = ", ".join(c + (" TEXT PRIMARY KEY" if c == "id" else "") for c in svc.ENTITY_COLS)
    base_db.execute(f"CREATE TABLE e ({coldefs})")
    t, bcpu = time.perf_counter(), time.process_time()
    base_db.execute("BEGIN")
    for i in range(0, len(same), 10000):
        base_db.executemany(f"INSERT INTO e VALUES ({', '.join('?' * len(svc.ENTITY_COLS))})", same[i:i + 10000])
    base_db.execute("COMMIT")
    base_rate = len(same) / (time.perf_counter() - t)
    base_cpu_rate = len(same) / (time.process_time() - bcpu)
    del same

    # a building with N linked objects (some nested two deep: floors -> rooms)
    bld = svc.register(hub, sysact, {"type": "place", "region": "330106", "name": "Bench Tower 测试大厦"})["id"]
    floors = svc.import_rows(hub, sysact, [(i, {"type": "object", "region": "330106", "name": f"floor {i}",
                                                "links": [{"rel": "contained_in", "target": bld},
                                                          {"rel": "owned_by", "target": owners[0]}]})
                                           for i in range(20)], org=ORG)
    floor_ids = [r["id"] for r in floors.ids]
    kids = svc.import_rows(hub, sysact, [(i, {"type": "object", "region": "330106",
                                              "name": f"hydrant in tower {i}",
                                              "links": [{"rel": "contained_in", "target": floor_ids[i % 20]},
                                                        {"rel": "owned_by", "target": owners[1]}]})
                                         for i in range(args.children - 20)], org=ORG)
    assert not kids.errors

    # Queries are timed on a settled store, by a fresh process (as a hub serving requests would run them):
    # - the load leaves ~1 GB of dirty pages that the kernel is still writing back, which on this box
    #   doubles read latencies for a minute and says nothing about them;
    # - the loader freed ~1.5 GB of row objects, and the fragmented heap it leaves behind makes every later
    #   allocation slower (+20-50 % on a 10k-item walk, measured) in this process only.
    with hub.store.read() as db:  # SQLite: leave a short WAL behind for the query process
        db.raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    hub.close()
    os.sync()
    sys.stdout.flush()
    subprocess.run([sys.executable, __file__, "--query-only", "--dir", str(work), "--count", str(args.count),
                    "--children", str(args.children), "--queries", str(args.queries), "--building", bld,
                    *(["--no-pg"] if args.no_pg else []),
                    *(["--database-url", args.database_url] if args.database_url else []),
                    *(["--keep-pg"] if args.keep_pg else [])], check=True)
    emit("registry_bulk_registration_rate", rate, "entities/s", 20000.0, base_rate, entities=created,
         seconds=round(took, 1), cpu_us_per_row=round(cpu / created * 1e6, 1),
         writer_cpu_us_per_row=round(writer_cpu / created * 1e6, 1), baseline_cpu_rate=round(base_cpu_rate),
         baseline_what="raw sqlite3 executemany of the same entity rows, plain table")


def query(args: argparse.Namespace, work: Path) -> None:
    hub = build_hub(Settings(data_dir=work / "hub", mqtt=MqttSettings(enabled=False)))
    reader = ReadActor()
    bld = args.building

    # point lookups by id (service level: check char, visibility, row -> view)
    e = rtables.entities
    with hub.store.read() as db:
        maxrow = db.scalar(sa.select(sa.func.max(e.c.rid)))
        rnd = random.Random(1)
        picks = [rnd.randint(1, maxrow) for _ in range(args.queries)]
        all_ids = [db.scalar(sa.select(e.c.id).where(e.c.rid == p)) for p in picks]
    for eid in all_ids[:50]:  # warm the page cache like a running hub
        svc.get_entity(hub, reader, eid)
    lat = []
    for eid in all_ids:
        t = time.perf_counter()
        svc.get_entity(hub, reader, eid)
        lat.append((time.perf_counter() - t) * 1000)
    emit("registry_point_lookup_p99", pct(lat, 99), "ms", 2.0, p50=round(pct(lat, 50), 3), n=len(lat),
         entities=maxrow)

    # full-text search: specific terms (a name fragment, an address), limit 50, ranked
    queries = [f"{KINDS[i % len(KINDS)].split()[1]} {rnd.randint(0, args.count)}" for i in range(100)]
    queries += [f"{STREETS[i % 5]} {rnd.randint(0, 996)} 号" for i in range(100)]
    queries += [f"company {rnd.randint(0, args.count)}" for i in range(100)]
    for q in queries[:10]:
        svc.search(hub, reader, q)
    lat = []
    found = 0
    for q in queries:
        t = time.perf_counter()
        found += bool(svc.search(hub, reader, q, limit=50))
        lat.append((time.perf_counter() - t) * 1000)
    emit("registry_fts_p99", pct(lat, 99), "ms", 50.0, p50=round(pct(lat, 50), 3), n=len(lat), hits=found)
    lat = []
    for q in ["hydrant", "文三路", "company"]:  # very common terms: ranking every match costs more
        t = time.perf_counter()
        svc.search(hub, reader, q, limit=50)
        lat.append((time.perf_counter() - t) * 1000)
    emit("registry_fts_common_term_max", max(lat), "ms", None, terms=3)

    # descendants of the building (recursive CTE over physical links)
    for _ in range(3):  # warm up like the other queries: the first walk reads its pages from the OS
        svc.descendants(hub, reader, bld, depth=16, limit=100000)
    lat = []
    for _ in range(30):
        t = time.perf_counter()
        res = svc.descendants(hub, reader, bld, depth=16, limit=100000)
        lat.append((time.perf_counter() - t) * 1000)
    assert len(res["items"]) == args.children, len(res["items"])
    emit("registry_descendants_10k_p99", pct(lat, 99), "ms", 50.0, p50=round(statistics.median(lat), 3),
         items=len(res["items"]))
    batch = prepared_rows(hub.store)
    # the bench's own millions of row objects would make every full collection during the timed queries
    # below a 100 ms pause (a hub serving requests holds no such heap): out of the collector's sight
    gc.collect()
    gc.freeze()
    hub.close()
    store_level(args, work, batch, bld, all_ids, queries)


def prepared_rows(st: Store) -> list[tuple[list[Any], list[Any], list[Any], list[Any]]]:
    """What the service import stored, as write_rows batches of 10k entities (a link goes with its source)."""
    e, lk, al, fd = rtables.entities, rtables.links, rtables.aliases, rtables.feed
    with st.read() as db:
        ents = [tuple(r) for r in db.run(sa.select(e.c.rid, *[e.c[c] for c in svc.ENTITY_COLS]).order_by(e.c.rid))]
        links: dict[str, list[Any]] = {}
        for r in db.run(sa.select(lk.c.src, lk.c.rel, lk.c.dst, lk.c.category, lk.c.org, lk.c.created_by,
                                  lk.c.created_at).order_by(lk.c.id)):
            links.setdefault(r[0], []).append(tuple(r))
        aliases: dict[str, list[Any]] = {}
        for r in db.run(sa.select(al.c.org, al.c.local_id, al.c.base_id, al.c.created_by, al.c.created_at)):
            aliases.setdefault(r[2], []).append(tuple(r))
        feeds = {r[1]: tuple(r) for r in db.run(sa.select(fd.c.ts, fd.c.entity_id, fd.c.org, fd.c.data)
                                                 .where(fd.c.kind == "entity.create"))}
    out = []
    for i in range(0, len(ents), 10_000):
        part = [x[1:] for x in ents[i:i + 10_000]]
        out.append((part, [x for p in part for x in links.get(p[0], [])],
                    [x for p in part for x in aliases.get(p[0], [])], [feeds[p[0]] for p in part if p[0] in feeds]))
    return out


def pg_schema(url: str, keep: bool) -> tuple[str, Any]:
    """A fresh schema on the given server for this run (the role needs CREATE on its database), as a URL
    whose connections put it first on search_path (pg_trgm stays reachable in public); and its dropper."""
    import psycopg

    name = f"bench_registry_{os.getpid()}"
    plain = sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(plain, autocommit=True) as c:
        c.execute(f"CREATE SCHEMA {name}")

    def drop() -> None:
        if keep:
            print(f"# kept schema {name} (options=-csearch_path={name},public)", file=sys.stderr)
            return
        with psycopg.connect(plain, autocommit=True) as c:
            c.execute(f"DROP SCHEMA {name} CASCADE")

    return str(sa.make_url(plain).update_query_dict({"options": f"-csearch_path={name},public"})
               .render_as_string(hide_password=False)), drop


def raw_baseline(st: Store, batch: list[Any]) -> float:
    """The same entity rows, the driver's fastest path into a plain table (id TEXT PRIMARY KEY, no other
    index, no links/FTS/feed): executemany on SQLite, COPY on PostgreSQL; 10k rows a transaction."""
    coldefs = ", ".join(c + (" TEXT PRIMARY KEY" if c == "id" else " TEXT") for c in svc.ENTITY_COLS)
    with st.tx() as db:
        db.run(f"CREATE TABLE bench_raw_e ({coldefs})")
    n = sum(len(b[0]) for b in batch)
    t = time.perf_counter()
    for ents, *_ in batch:
        with st.tx() as db:
            if db.dialect == "sqlite":
                db.raw.executemany(f"INSERT INTO bench_raw_e VALUES ({', '.join('?' * len(svc.ENTITY_COLS))})",
                                   ents)
            else:
                with db.raw.cursor() as cur, cur.copy("COPY bench_raw_e FROM STDIN") as cp:
                    for r in ents:
                        cp.write_row(r)
    rate = n / (time.perf_counter() - t)
    with st.tx() as db:
        db.run("DROP TABLE bench_raw_e")
    return rate


def store_level(args: argparse.Namespace, work: Path, batch: list[Any], bld: str, ids: list[str],
                queries: list[str]) -> None:
    from central.registry import store as rstore
    from central.registry.store.bulk import write_rows

    backends: list[tuple[str, str]] = [("sqlite", str(work / "store-sqlite.db"))]
    srv, drop = None, None
    if args.database_url:
        url, drop = pg_schema(args.database_url, args.keep_pg)
        backends.append(("postgresql", url))
    elif not args.no_pg:
        from tests.pg import PgServer

        srv = PgServer().start()
        backends.append(("postgresql", srv.url(srv.create_database())))
    table: dict[str, dict[str, str]] = {}
    try:
        for backend, url in backends:
            col = table.setdefault(backend, {})
            st = Store(url)
            st.migrate()
            if backend == "postgresql":
                with st.read() as db:
                    col["server"] = str(db.scalar(sa.text("SHOW server_version"))).split()[0]
            n = sum(len(b[0]) for b in batch)
            t = time.perf_counter()
            for ents, links, aliases, feeds in batch:
                with st.tx() as db:
                    write_rows(db, ents, links, aliases, feeds, [])
            took = time.perf_counter() - t
            rate = n / took
            if backend == "postgresql":
                # settled, as SQLite's store is (checkpointed): what autovacuum does after a big load, at once
                # (statistics, and the visibility map that lets the walk's index-only scans skip the heap)
                with st.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
                    for t in ("registry_entities", "registry_links", "registry_feed", "registry_aliases"):
                        c.exec_driver_sql(f"VACUUM (ANALYZE) {t}")
                    # VACUUM leaves the whole table dirty in shared buffers; written back by the checkpointer
                    # meanwhile, it doubles the lookups' latency (needs pg_checkpoint or superuser)
                    try:
                        c.exec_driver_sql("CHECKPOINT")
                    except sa.exc.DBAPIError as e:
                        print(f"# no CHECKPOINT ({str(e.orig).strip()}): queries meet the write-back", file=sys.stderr)
                os.sync()
            lat = []
            for eid in ids[:50] + ids:
                t = time.perf_counter()
                with st.read() as db:
                    assert rstore.entity(db, eid) is not None
                lat.append((time.perf_counter() - t) * 1000)
            lat = lat[50:]
            emit("registry_store_point_lookup_p99", pct(lat, 99), "ms", 2.0, backend=backend,
                 p50=round(pct(lat, 50), 3), n=len(lat))
            col["point lookup p99 (p50)"] = f"{pct(lat, 99):.3f} ms ({pct(lat, 50):.3f})"
            lat = []
            for q in queries[:10] + queries:
                t = time.perf_counter()
                with st.read() as db:
                    rstore.search(db, q.split(), ["/"], limit=50)
                lat.append((time.perf_counter() - t) * 1000)
            lat = lat[10:]
            emit("registry_store_search_p99", pct(lat, 99), "ms", 50.0, backend=backend,
                 p50=round(pct(lat, 50), 3), n=len(lat))
            col["search p99 (p50)"] = f"{pct(lat, 99):.2f} ms ({pct(lat, 50):.2f})"
            with st.read() as db:
                rid = rstore.rid_of(db, bld)
            lat = []
            for _ in range(33):
                t = time.perf_counter()
                with st.read() as db:
                    items = rstore.walk(db, rid, 16, 100_000, True, ["/"])
                lat.append((time.perf_counter() - t) * 1000)
            assert len(items) == args.children, len(items)
            lat = lat[3:]
            emit("registry_store_descendants_10k_p99", pct(lat, 99), "ms", 50.0, backend=backend,
                 p50=round(statistics.median(lat), 3), items=len(items))
            col["descendants of 10k p99 (p50)"] = f"{pct(lat, 99):.1f} ms ({statistics.median(lat):.1f})"
            # after the queries: its WAL and dropped table would otherwise weigh on them
            base = raw_baseline(st, batch)
            emit("registry_store_bulk_write_rate", rate, "entities/s", 20000.0, base, backend=backend,
                 entities=n, seconds=round(took, 1), what="write_rows of prepared rows (executemany | COPY),"
                 " 10k per tx", baseline_what="the same entity rows, raw executemany | COPY into a plain table")
            col["bulk write (executemany | COPY)"] = f"{rate:,.0f} /s (raw {base:,.0f}, {rate / base:.2f})"
            st.close()
    finally:
        if srv is not None:
            srv.stop()
        if drop is not None:
            drop()
    # side by side, for the eye (the JSON lines above carry the same figures)
    names = list(table)
    rows_ = list(dict.fromkeys(k for c in table.values() for k in c))
    w = max(len(r) for r in rows_)
    print(f"# store level, {sum(len(b[0]) for b in batch):,} entities: " + " | ".join(names))
    for r in rows_:
        print(f"#   {r:<{w}}  " + " | ".join(f"{table[b].get(r, '-'):<34}" for b in names))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
