"""The data-access layer on both backends: transactions, joins, the named dialect parts, claims that two
workers never share, serialised appends, and a database that cannot be reached."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from central.store import Store, StoreUnavailable, dialect
from tests.conftest import database_url

pytestmark = pytest.mark.both_backends

_md = sa.MetaData()
jobs = sa.Table("t_jobs", _md, sa.Column("id", dialect.BigId, primary_key=True, autoincrement=True),
                sa.Column("name", sa.Text, nullable=False, unique=True), sa.Column("owner", sa.Text),
                sa.Column("n", sa.Integer, nullable=False, server_default="0"))
chain = sa.Table("t_chain", _md, sa.Column("seq", dialect.BigId, primary_key=True, autoincrement=False),
                 sa.Column("prev", dialect.BigId, nullable=False))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(database_url() or tmp_path / "t.db")
    _md.create_all(s.engine)
    yield s
    s.close()


def test_tx_commits_rolls_back_and_nested_calls_join(store: Store) -> None:
    with store.tx() as db:
        db.run(sa.insert(jobs).values(name="a"))
        with store.tx() as inner:  # a service called inside another's transaction
            assert inner is db
            inner.run(sa.insert(jobs).values(name="b"))
    with pytest.raises(RuntimeError), store.tx() as db:
        db.run(sa.insert(jobs).values(name="c"))
        raise RuntimeError("boom")
    with store.read() as db:
        assert [r["name"] for r in db.all(sa.select(jobs.c.name).order_by(jobs.c.id))] == ["a", "b"]


def test_insert_ignore_and_upsert_mean_the_same_on_both(store: Store) -> None:
    with store.tx() as db:
        db.run(sa.insert(jobs).values(name="a", n=1))
        r = db.run(dialect.insert_ignore(db, jobs, "name").values(name="a", n=5))
        assert r.rowcount == 0
        db.run(dialect.upsert(db, jobs, ["name"], ["n"]).values(name="a", n=7))
        db.run(dialect.upsert(db, jobs, ["name"], ["n"]).values(name="z", n=2))
    with store.read() as db:
        assert {r["name"]: r["n"] for r in db.all(sa.select(jobs))} == {"a": 7, "z": 2}


def test_contains_escapes_like_wildcards(store: Store) -> None:
    with store.tx() as db:
        db.run(sa.insert(jobs), [{"name": "50% 文三大厦"}, {"name": "500 文三"}, {"name": "a_b"}, {"name": "axb"}])
    with store.read() as db:
        def hits(q: str) -> list[str]:
            return sorted(db.run(sa.select(jobs.c.name).where(dialect.contains(jobs.c.name, q))).scalars())

        assert hits("0%") == ["50% 文三大厦"]
        assert hits("_") == ["a_b"]
        assert hits("文三") == ["50% 文三大厦", "500 文三"]
        assert hits("AXB") == ["axb"]


def test_two_workers_never_claim_the_same_row(store: Store) -> None:
    with store.tx() as db:
        db.run(sa.insert(jobs), [{"name": f"j{i}"} for i in range(60)])
    taken: dict[str, list[int]] = {"w1": [], "w2": []}

    def work(me: str) -> None:
        while True:
            with store.tx() as db:
                ids = list(db.run(dialect.claim(sa.select(jobs.c.id).where(jobs.c.owner.is_(None))
                                                .order_by(jobs.c.id).limit(3))).scalars())
                if not ids:
                    return
                time.sleep(0.002)  # hold the claim a while: the other worker must skip, not take it too
                db.run(sa.update(jobs).where(jobs.c.id.in_(ids)).values(owner=me))
                taken[me] += ids

    ts = [threading.Thread(target=work, args=(w,)) for w in taken]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert sorted(taken["w1"] + taken["w2"]) == list(range(1, 61))  # each row once, none twice
    with store.read() as db:
        owners = dict(db.run(sa.select(jobs.c.id, jobs.c.owner)).all())
    assert all(owners[i] == w for w, ids in taken.items() for i in ids)


def test_serialised_appends_never_fork_the_chain(store: Store) -> None:
    def append(n: int) -> None:
        for _ in range(n):
            with store.tx() as db:
                dialect.serialize(db, "t_chain")
                last = db.scalar(sa.select(sa.func.max(chain.c.seq))) or 0
                db.run(sa.insert(chain).values(seq=last + 1, prev=last))

    ts = [threading.Thread(target=append, args=(25,)) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    with store.read() as db:
        rows = db.run(sa.select(chain.c.seq, chain.c.prev).order_by(chain.c.seq)).all()
    assert [tuple(r) for r in rows] == [(i, i - 1) for i in range(1, 101)]


def test_unreachable_database_names_host_and_port() -> None:
    from tests.pg import free_port

    port = free_port()
    s = Store(f"postgresql://citybrain:x@127.0.0.1:{port}/hub")
    with pytest.raises(StoreUnavailable) as e:
        s.migrate()
    assert f"127.0.0.1:{port}/hub" in str(e.value) and "database_url" in str(e.value)
    assert "x@" not in str(e.value)  # never the password


def test_store_refuses_work_after_close(store: Store) -> None:
    from central.store import StoreClosed

    store.close()
    with pytest.raises(StoreClosed), store.tx():
        pass


def test_postgresql_connections_come_from_psycopg_pool_and_go_back_to_it(tmp_path: Path) -> None:
    url = database_url()
    if url is None:
        pytest.skip("PostgreSQL only: SQLite's connections are file handles")
    from psycopg_pool import ConnectionPool

    s = Store(url)
    try:
        assert isinstance(s._pg_pool, ConnectionPool) and s._pg_pool.closed  # opened on first use only
        _md.create_all(s.engine)
        for i in range(20):  # twenty transactions, one after the other: one pooled connection serves them
            with s.tx() as db:
                db.run(sa.insert(jobs).values(name=f"j{i}"))
        stats = s._pg_pool.get_stats()
        assert stats["pool_size"] >= 1 and stats.get("connections_num", 1) <= 2, stats
        assert stats["pool_available"] == stats["pool_size"], stats  # every connection went back
        with s.read() as db:
            assert db.scalar(sa.select(sa.func.count()).select_from(jobs)) == 20
    finally:
        s.close()
    assert s._pg_pool.closed
