"""Prepared statements in transaction mode with Python drivers and pgbench, through a real pg_doorman.

Each test starts pg_doorman with a small transaction-mode pool (2-4 server connections) in front of the shared
``pg_trust`` cluster and runs 20-50 concurrent clients that prepare and reuse statements with the drivers'
ordinary behaviour -- no ``DISCARD ALL``, no ``DEALLOCATE`` by the test, no statement cache switched off:

* asyncpg: its statement cache (every query is a named statement), ``executemany``, ``prepare()``, cursors
  (portals suspended by row limits), errors inside transactions followed by rollback and further use;
* psycopg 3: ``prepare_threshold=0`` (every query prepared), pipeline mode (also with an error inside the
  pipeline), ``executemany``, rollbacks (after which psycopg itself deallocates everything and re-prepares);
* SQLAlchemy 2 ORM on the asyncpg and the psycopg dialect: inserts with RETURNING, ``selectinload``
  (IN lists of changing length, i.e. many distinct statements), updates, a failed statement and rollback;
* ``pgbench -M prepared`` with two custom scripts that check the values they get back (every client uses the
  same statement names for different statements) and insert rows counted afterwards.

Variants set ``server_prepared_statements_cache_size: 2`` (the pooler closes and re-prepares statements on the
servers all the time) or shrink the driver's own statement cache (the driver closes and re-prepares). Two
deterministic tests pin a statement prepared on one server and executed on the other.

Every test checks the values returned, the table contents read directly from PostgreSQL, that the clients
really were spread over several server connections, that PostgreSQL logged no errors except the deliberate
ones, and that pg_doorman logged no traceback.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from driver_support import (
    DB,
    PASSWORD,
    USER,
    LogWindow,
    PoolConfig,
    StartDoorman,
    assert_clean_logs,
    create_table,
    direct,
    max_server_statements,
    server_backends,
    table_name,
    table_totals,
)
from psycopg import errors as pg_errors

from pg_doorman.devcluster import TempPostgres

PGBENCH = "/usr/bin/pgbench"


CACHE_VARIANTS = ["default", "server_cache_2", "small_client_cache"]


# ---------------------------------------------------------------- helpers


def start_pool(
    doorman: StartDoorman, pool_config: PoolConfig, cluster: TempPostgres, pool_size: int, variant: str = "default"
) -> Any:
    extra: dict[str, Any] = {}
    if variant == "server_cache_2":
        extra["server_prepared_statements_cache_size"] = 2
    return doorman(pool_config(cluster, pool_size=pool_size, **extra))


def check_spread(pids_per_client: list[set[int]], pool_size: int) -> None:
    """All clients together used 2..pool_size servers, and most clients ran statements on several of them."""
    all_pids = set().union(*pids_per_client)
    assert 2 <= len(all_pids) <= pool_size, all_pids
    multi = sum(1 for pids in pids_per_client if len(pids) > 1)
    assert multi >= len(pids_per_client) // 2, [sorted(p) for p in pids_per_client]


def check_eviction(proc: Any, variant: str) -> None:
    if variant == "server_cache_2":
        # The servers really kept at most 2 statements (+ possibly the probe's own unnamed one).
        assert max_server_statements(proc) <= 3


# ---------------------------------------------------------------- asyncpg


async def asyncpg_client(dsn: str, c: int, table: str, iterations: int, cache_size: int | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {} if cache_size is None else {"statement_cache_size": cache_size}
    conn = await asyncpg.connect(dsn, timeout=20, **kwargs)
    pids: set[int] = set()
    rows = 0
    total = 0
    rollbacks = 0
    try:
        # An explicit prepare() once, used in every iteration (and inside transactions).
        adder = await conn.prepare("SELECT $1::int + $2::int AS s, $3::text AS t, pg_backend_pid() AS pid")
        for i in range(iterations):
            v = c * 1000 + i
            row = await conn.fetchrow("SELECT $1::int * 2 AS v, pg_backend_pid() AS pid", v)
            assert row is not None and row["v"] == 2 * v, (c, i, row)
            pids.add(row["pid"])

            row = await adder.fetchrow(v, i, f"c{c}i{i}")
            assert row is not None and (row["s"], row["t"]) == (v + i, f"c{c}i{i}"), (c, i, row)
            pids.add(row["pid"])

            # Statements only even or only odd clients use: servers end up holding different sets.
            if c % 2:
                assert await conn.fetchval("SELECT upper($1::text)", f"x{i}") == f"X{i}"
            else:
                assert await conn.fetchval("SELECT $1::int - 7", v) == v - 7

            n = i % 20 + 1
            got = await conn.fetch("SELECT g, g * $1::int AS m FROM generate_series(1, $2::int) AS g", c, n)
            assert [(r["g"], r["m"]) for r in got] == [(g, g * c) for g in range(1, n + 1)], (c, i)

            # executemany inside a transaction, read back before commit.
            batch = [(c, i * 10 + k, c + i + k) for k in range(i % 4 + 1)]
            async with conn.transaction():
                await conn.executemany(f"INSERT INTO {table} (client, seq, val) VALUES ($1, $2, $3)", batch)
                row = await conn.fetchrow(
                    f"SELECT count(*) AS n, coalesce(sum(val), 0) AS s FROM {table} WHERE client = $1", c
                )
                want = (rows + len(batch), total + sum(b[2] for b in batch))
                assert row is not None and (row["n"], row["s"]) == want, (c, i, row, want)
                row = await adder.fetchrow(1, 2, "tx")
                assert row is not None and row["s"] == 3
            rows, total = want

            if i % 5 == 2:
                # An error inside a transaction, rollback, then the same statements keep working.
                with pytest.raises(asyncpg.DivisionByZeroError):
                    async with conn.transaction():
                        await conn.execute(
                            f"INSERT INTO {table} (client, seq, val) VALUES ($1, $2, $3)", c, 100000 + i, 10**6
                        )
                        await conn.fetchval("SELECT 100 / $1::int", 0)
                rollbacks += 1
                assert await conn.fetchval("SELECT 100 / $1::int", 4) == 25

            if i % 6 == 3:
                # A cursor: a named portal fetched in chunks (Execute with a row limit, PortalSuspended).
                async with conn.transaction():
                    seen = [
                        r["g"]
                        async for r in conn.cursor("SELECT g FROM generate_series(1, $1::int) AS g", 35, prefetch=8)
                    ]
                assert seen == list(range(1, 36)), (c, i)
    finally:
        await conn.close(timeout=10)
    return {"pids": pids, "rows": rows, "sum": total, "rollbacks": rollbacks}


@pytest.mark.parametrize("variant", CACHE_VARIANTS)
def test_asyncpg_statement_cache_executemany_prepare(
    variant: str, pg_trust: TempPostgres, doorman: StartDoorman, pool_config: PoolConfig
) -> None:
    pool_size, clients, iterations = 3, 40, 25
    table = create_table(pg_trust, "asyncpg")
    proc = start_pool(doorman, pool_config, pg_trust, pool_size, variant)
    window = LogWindow(pg_trust)
    # small_client_cache: asyncpg itself evicts statements (Close) and prepares them again later.
    cache_size = 3 if variant == "small_client_cache" else None
    dsn = f"postgresql://{USER}:{PASSWORD}@{proc.host}:{proc.port}/{DB}"

    async def main() -> list[dict[str, Any]]:
        return await asyncio.gather(*(asyncpg_client(dsn, c, table, iterations, cache_size) for c in range(clients)))

    results = asyncio.run(main())

    check_spread([r["pids"] for r in results], pool_size)
    want_rows = clients * sum(i % 4 + 1 for i in range(iterations))
    want_sum = sum(c + i + k for c in range(clients) for i in range(iterations) for k in range(i % 4 + 1))
    assert (sum(r["rows"] for r in results), sum(r["sum"] for r in results)) == (want_rows, want_sum)
    assert sum(r["rollbacks"] for r in results) == clients * len([i for i in range(iterations) if i % 5 == 2])
    assert table_totals(pg_trust, table) == (want_rows, want_sum)
    assert server_backends(pg_trust) <= pool_size
    check_eviction(proc, variant)
    assert_clean_logs(proc, window)


def test_asyncpg_prepared_statement_runs_on_another_server(
    pg_trust: TempPostgres, doorman: StartDoorman, pool_config: PoolConfig
) -> None:
    """prepare() lands on server Y; its next execution is forced onto server X, which never saw the Parse."""
    proc = start_pool(doorman, pool_config, pg_trust, 2)
    window = LogWindow(pg_trust)
    dsn = f"postgresql://{USER}:{PASSWORD}@{proc.host}:{proc.port}/{DB}"

    async def main() -> None:
        a, b, c = [await asyncpg.connect(dsn, timeout=20) for _ in range(3)]
        try:
            tx_b = b.transaction()
            await tx_b.start()
            pid_x = await b.fetchval("SELECT pg_backend_pid()")  # b holds X
            stmt = await a.prepare("SELECT $1::int + 1 AS v, pg_backend_pid() AS pid")
            row = await stmt.fetchrow(1)
            assert row is not None and row["v"] == 2
            pid_y = row["pid"]
            assert pid_y != pid_x
            cached = await a.fetchval("SELECT $1::int * 5", 3)  # goes into asyncpg's statement cache on Y
            assert cached == 15
            tx_c = c.transaction()
            await tx_c.start()
            assert await c.fetchval("SELECT pg_backend_pid()") == pid_y  # c holds Y
            await tx_b.commit()  # X is free: the only server a can get now
            row = await stmt.fetchrow(41)
            assert row is not None and (row["v"], row["pid"]) == (42, pid_x)
            assert await a.fetchval("SELECT $1::int * 5", 7) == 35
            # And inside a transaction on X, both again, several times.
            async with a.transaction():
                for k in range(5):
                    row = await stmt.fetchrow(k)
                    assert row is not None and (row["v"], row["pid"]) == (k + 1, pid_x)
                    assert await a.fetchval("SELECT $1::int * 5", k) == 5 * k
            await tx_c.rollback()
        finally:
            for conn in (a, b, c):
                await conn.close(timeout=10)

    asyncio.run(main())
    assert_clean_logs(proc, window)


# ---------------------------------------------------------------- psycopg 3


def psycopg_client(dsn: str, c: int, table: str, iterations: int, prepared_max: int | None) -> dict[str, Any]:
    pids: set[int] = set()
    rows = 0
    total = 0
    rollbacks = 0
    with psycopg.connect(dsn, prepare_threshold=0, autocommit=True, connect_timeout=20) as conn:
        if prepared_max is not None:
            conn.prepared_max = prepared_max  # psycopg closes its least recently used statements itself
        insert = f"INSERT INTO {table} (client, seq, val) VALUES (%s, %s, %s)"
        count = f"SELECT count(*), coalesce(sum(val), 0) FROM {table} WHERE client = %s"
        for i in range(iterations):
            v = c * 1000 + i
            row = conn.execute("SELECT %s::int * 2, pg_backend_pid()", (v,)).fetchone()
            assert row is not None and row[0] == 2 * v, (c, i, row)
            pids.add(row[1])

            if c % 2:
                assert conn.execute("SELECT lower(%s::text)", (f"X{i}",)).fetchone() == (f"x{i}",)
            else:
                assert conn.execute("SELECT %s::int + 11", (v,)).fetchone() == (v + 11,)

            # Pipeline mode: many prepared statements in flight at once, one Sync per statement.
            with conn.pipeline():
                curs = [conn.execute("SELECT %s::int + %s::int, %s::text", (v, k, f"k{k}")) for k in range(8)]
                series = conn.execute("SELECT sum(g)::int FROM generate_series(1, %s::int) AS g", (i + 1,))
            assert [cur.fetchone() for cur in curs] == [(v + k, f"k{k}") for k in range(8)], (c, i)
            assert series.fetchone() == ((i + 1) * (i + 2) // 2,)

            # executemany inside a transaction (psycopg pipelines it), read back before commit.
            batch = [(c, i * 10 + k, c + i + k) for k in range(i % 4 + 1)]
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(insert, batch)
                want = (rows + len(batch), total + sum(b[2] for b in batch))
                assert cur.execute(count, (c,)).fetchone() == want, (c, i)
                row = cur.execute("SELECT %s::int * 2, pg_backend_pid()", (i,)).fetchone()
                assert row is not None and row[0] == 2 * i
            rows, total = want

            if i % 5 == 2:
                # An error inside a transaction, rollback, then the statements keep working.
                with pytest.raises(pg_errors.DivisionByZero), conn.transaction():
                    conn.execute(insert, (c, 100000 + i, 10**6))
                    conn.execute("SELECT 100 / %s::int", (0,))
                rollbacks += 1
                assert conn.execute("SELECT 100 / %s::int", (4,)).fetchone() == (25,)

            if i % 5 == 4:
                # An error in the middle of a pipelined transaction: what follows is skipped by PostgreSQL
                # (including statements first prepared there), everything rolls back, work goes on.
                with pytest.raises(pg_errors.DivisionByZero), conn.pipeline(), conn.transaction():
                    conn.execute(insert, (c, 200000 + i, 10**6))
                    conn.execute("SELECT 100 / %s::int", (0,))
                    conn.execute(f"SELECT %s::int * 3 + {i}", (v,))
                    conn.execute(insert, (c, 300000 + i, 10**6))
                rollbacks += 1
                assert conn.execute(f"SELECT %s::int * 3 + {i}", (v,)).fetchone() == (3 * v + i,)
                assert conn.execute(count, (c,)).fetchone() == (rows, total)
    return {"pids": pids, "rows": rows, "sum": total, "rollbacks": rollbacks}


@pytest.mark.parametrize("variant", CACHE_VARIANTS)
def test_psycopg_prepare_threshold_0_pipeline_executemany(
    variant: str, pg_trust: TempPostgres, doorman: StartDoorman, pool_config: PoolConfig
) -> None:
    pool_size, clients, iterations = 3, 30, 25
    table = create_table(pg_trust, "psycopg")
    proc = start_pool(doorman, pool_config, pg_trust, pool_size, variant)
    window = LogWindow(pg_trust)
    prepared_max = 3 if variant == "small_client_cache" else None
    dsn = proc.dsn()

    with ThreadPoolExecutor(max_workers=clients) as pool:
        results = list(pool.map(lambda c: psycopg_client(dsn, c, table, iterations, prepared_max), range(clients)))

    check_spread([r["pids"] for r in results], pool_size)
    want_rows = clients * sum(i % 4 + 1 for i in range(iterations))
    want_sum = sum(c + i + k for c in range(clients) for i in range(iterations) for k in range(i % 4 + 1))
    assert (sum(r["rows"] for r in results), sum(r["sum"] for r in results)) == (want_rows, want_sum)
    want_rollbacks = clients * len([i for i in range(iterations) if i % 5 in (2, 4)])
    assert sum(r["rollbacks"] for r in results) == want_rollbacks
    assert table_totals(pg_trust, table) == (want_rows, want_sum)
    assert server_backends(pg_trust) <= pool_size
    check_eviction(proc, variant)
    assert_clean_logs(proc, window)


def test_psycopg_prepared_statement_runs_on_another_server(
    pg_trust: TempPostgres, doorman: StartDoorman, pool_config: PoolConfig
) -> None:
    """A statement psycopg prepared on server Y is executed (Bind by name only) on server X."""
    proc = start_pool(doorman, pool_config, pg_trust, 2)
    window = LogWindow(pg_trust)
    query = "SELECT %s::int + 1, pg_backend_pid()"
    with proc.connect(autocommit=True) as a, proc.connect() as b, proc.connect() as c:
        pid_x = b.execute("SELECT pg_backend_pid()").fetchone()  # b's implicit BEGIN: b holds X
        assert pid_x is not None
        row = a.execute(query, (1,), prepare=True).fetchone()
        assert row is not None and row[0] == 2 and row[1] != pid_x[0]
        pid_y = row[1]
        assert c.execute("SELECT pg_backend_pid()").fetchone() == (pid_y,)  # c holds Y
        b.commit()  # X is free: the only server a can get now
        assert a.execute(query, (41,), prepare=True).fetchone() == (42, pid_x[0])
        with a.transaction():
            for k in range(5):
                assert a.execute(query, (k,), prepare=True).fetchone() == (k + 1, pid_x[0])
        c.rollback()
    assert_clean_logs(proc, window)


# ---------------------------------------------------------------- SQLAlchemy 2


def orm_models(prefix: str) -> tuple[Any, Any, Any]:
    """Fresh declarative models (Base, Parent, Child) on per-test tables."""
    from sqlalchemy import ForeignKey, Integer, String
    from sqlalchemy.orm import DeclarativeBase, mapped_column, relationship

    class Base(DeclarativeBase):
        pass

    class Parent(Base):
        __tablename__ = f"{prefix}_parent"
        id = mapped_column(Integer, primary_key=True)
        worker = mapped_column(Integer, nullable=False, index=True)
        name = mapped_column(String(100), nullable=False)
        children = relationship("Child", back_populates="parent", order_by="Child.id")

    class Child(Base):
        __tablename__ = f"{prefix}_child"
        id = mapped_column(Integer, primary_key=True)
        parent_id = mapped_column(Integer, ForeignKey(Parent.id), nullable=False, index=True)
        value = mapped_column(Integer, nullable=False)
        parent = relationship(Parent, back_populates="children")

    return Base, Parent, Child


def create_orm_tables(cluster: TempPostgres, base: Any) -> None:
    from sqlalchemy import create_engine

    engine = create_engine(f"postgresql+psycopg://{USER}@{cluster.host}:{cluster.port}/{DB}")
    try:
        base.metadata.create_all(engine)
    finally:
        engine.dispose()


def orm_totals(cluster: TempPostgres, parent_table: str, child_table: str) -> tuple[int, int, int]:
    with direct(cluster) as conn:
        row = conn.execute(
            f"SELECT (SELECT count(*) FROM {parent_table}), (SELECT count(*) FROM {child_table}), "
            f"(SELECT coalesce(sum(value), 0) FROM {child_table})"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def orm_expected(workers: int, rounds: int) -> tuple[int, int, int]:
    """Parents, children and the sum of child values after every worker's rounds (see orm_round)."""
    parents = workers * rounds
    children = workers * sum(r % 4 + 1 for r in range(rounds))
    # each child value is w*1000 + r*10 + k, plus 1 from the update in the round that created it
    total = sum(w * 1000 + r * 10 + k + 1 for w in range(workers) for r in range(rounds) for k in range(r % 4 + 1))
    return parents, children, total


def orm_check(parents: list[Any], w: int, upto: int) -> None:
    """The worker's parents (loaded with selectinload) are exactly rounds 0..upto with their children."""
    assert [p.name for p in parents] == [f"w{w}-r{r}" for r in range(upto + 1)], (w, [p.name for p in parents])
    for r, p in enumerate(parents):
        assert [ch.value for ch in p.children] == [w * 1000 + r * 10 + k + 1 for k in range(r % 4 + 1)], (w, r)


def test_sqlalchemy_asyncpg_orm_selectinload(
    pg_trust: TempPostgres, doorman: StartDoorman, pool_config: PoolConfig
) -> None:
    from sqlalchemy import select, text, update
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
    from sqlalchemy.orm import selectinload

    pool_size, workers, rounds = 3, 25, 10
    prefix = table_name("sa_asyncpg")
    base, parent_cls, child_cls = orm_models(prefix)
    create_orm_tables(pg_trust, base)
    proc = start_pool(doorman, pool_config, pg_trust, pool_size)
    window = LogWindow(pg_trust)
    pids: list[set[int]] = [set() for _ in range(workers)]

    async def worker(sessions: async_sessionmaker[AsyncSession], w: int) -> int:
        failures = 0
        async with sessions() as session:
            for r in range(rounds):
                parent = parent_cls(
                    worker=w,
                    name=f"w{w}-r{r}",
                    children=[child_cls(value=w * 1000 + r * 10 + k) for k in range(r % 4 + 1)],
                )
                session.add(parent)
                await session.flush()  # INSERT ... RETURNING for the parent, then the children
                await session.execute(
                    update(child_cls).where(child_cls.parent_id == parent.id).values(value=child_cls.value + 1)
                )
                pid = (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
                pids[w].add(pid)
                await session.commit()
                session.expunge_all()

                result = await session.execute(
                    select(parent_cls)
                    .where(parent_cls.worker == w)
                    .options(selectinload(parent_cls.children))
                    .order_by(parent_cls.id)
                )
                orm_check(list(result.scalars()), w, r)
                await session.commit()

                if r % 3 == 1:
                    session.add(parent_cls(worker=w, name="rolled back"))
                    await session.flush()
                    with pytest.raises(DBAPIError, match="division by zero"):
                        await session.execute(text("SELECT 100 / CAST(:d AS int)"), {"d": 0})
                    await session.rollback()
                    failures += 1
                    got = (await session.execute(text("SELECT 100 / CAST(:d AS int)"), {"d": 4})).scalar_one()
                    assert got == 25
                    await session.commit()
        return failures

    async def main() -> list[int]:
        engine = create_async_engine(
            f"postgresql+asyncpg://{USER}:{PASSWORD}@{proc.host}:{proc.port}/{DB}", pool_size=workers, max_overflow=0
        )
        try:
            sessions = async_sessionmaker(engine, expire_on_commit=False)
            return await asyncio.gather(*(worker(sessions, w) for w in range(workers)))
        finally:
            await engine.dispose()

    failures = asyncio.run(main())

    assert sum(failures) == workers * len([r for r in range(rounds) if r % 3 == 1])
    check_spread(pids, pool_size)
    assert orm_totals(pg_trust, f"{prefix}_parent", f"{prefix}_child") == orm_expected(workers, rounds)
    assert server_backends(pg_trust) <= pool_size
    assert_clean_logs(proc, window)


def test_sqlalchemy_psycopg_orm_selectinload(
    pg_trust: TempPostgres, doorman: StartDoorman, pool_config: PoolConfig
) -> None:
    from sqlalchemy import create_engine, select, text, update
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.orm import Session, selectinload, sessionmaker

    pool_size, workers, rounds = 3, 25, 10
    prefix = table_name("sa_psycopg")
    base, parent_cls, child_cls = orm_models(prefix)
    create_orm_tables(pg_trust, base)
    proc = start_pool(doorman, pool_config, pg_trust, pool_size)
    window = LogWindow(pg_trust)
    pids: list[set[int]] = [set() for _ in range(workers)]
    # prepare_threshold=0: every statement is a named one from its first use. (With the default of 5 hardly
    # any would be: SQLAlchemy's pool rolls back each connection it gets back, and psycopg forgets and
    # deallocates all its statements at every rollback -- which it then does here, through the pooler.)
    engine = create_engine(
        f"postgresql+psycopg://{USER}:{PASSWORD}@{proc.host}:{proc.port}/{DB}",
        pool_size=workers,
        max_overflow=0,
        connect_args={"prepare_threshold": 0},
    )
    sessions = sessionmaker(engine, expire_on_commit=False)
    prepared_seen = threading.Event()

    def worker(w: int) -> int:
        failures = 0
        session: Session
        with sessions() as session:
            for r in range(rounds):
                parent = parent_cls(
                    worker=w,
                    name=f"w{w}-r{r}",
                    children=[child_cls(value=w * 1000 + r * 10 + k) for k in range(r % 4 + 1)],
                )
                session.add(parent)
                session.flush()
                session.execute(
                    update(child_cls).where(child_cls.parent_id == parent.id).values(value=child_cls.value + 1)
                )
                pids[w].add(session.execute(text("SELECT pg_backend_pid()")).scalar_one())
                session.commit()
                session.expunge_all()

                result = session.execute(
                    select(parent_cls)
                    .where(parent_cls.worker == w)
                    .options(selectinload(parent_cls.children))
                    .order_by(parent_cls.id)
                )
                orm_check(list(result.scalars()), w, r)
                dbapi_conn = session.connection().connection.dbapi_connection
                assert dbapi_conn is not None
                if dbapi_conn._prepared._names:  # psycopg really runs named prepared statements
                    prepared_seen.set()
                session.commit()

                if r % 3 == 1:
                    session.add(parent_cls(worker=w, name="rolled back"))
                    session.flush()
                    with pytest.raises(DBAPIError, match="division by zero"):
                        session.execute(text("SELECT 100 / CAST(:d AS int)"), {"d": 0})
                    session.rollback()
                    failures += 1
                    assert session.execute(text("SELECT 100 / CAST(:d AS int)"), {"d": 4}).scalar_one() == 25
                    session.commit()
        return failures

    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            failures = list(pool.map(worker, range(workers)))
    finally:
        engine.dispose()

    assert prepared_seen.is_set()
    assert sum(failures) == workers * len([r for r in range(rounds) if r % 3 == 1])
    check_spread(pids, pool_size)
    assert orm_totals(pg_trust, f"{prefix}_parent", f"{prefix}_child") == orm_expected(workers, rounds)
    assert server_backends(pg_trust) <= pool_size
    assert_clean_logs(proc, window)


# ---------------------------------------------------------------- pgbench -M prepared

# Each script checks what the server computed (an error aborts the pgbench client, so the run fails) and
# inserts exactly one row per transaction; pgbench names the statements P<script>_<command> on every client.
PGBENCH_SCRIPT_A = """\
\\set a random(1, 1000000)
\\set b random(1, 1000)
SELECT :a::int * 2 AS dbl, :b::int + 1 AS inc \\gset
\\if :dbl != 2 * :a
SELECT 'doubling is wrong'::int;
\\endif
\\if :inc != :b + 1
SELECT 'increment is wrong'::int;
\\endif
BEGIN;
INSERT INTO {table} (client, val, triple) VALUES (:client_id, :b, :b::int * 3);
SELECT count(*) AS mine FROM {table} WHERE client = :client_id AND val = :b \\gset
\\if :mine < 1
SELECT 'own insert not visible'::int;
\\endif
END;
"""

PGBENCH_SCRIPT_B = """\
\\set k random(1, 200)
SELECT sum(g)::int AS s FROM generate_series(1, :k) AS g \\gset
\\if :s != :k * (:k + 1) / 2
SELECT 'series sum is wrong'::int;
\\endif
SELECT length(repeat('x', :k)) AS len, :k::int - 1 AS dec \\gset
\\if :len != :k or :dec != :k - 1
SELECT 'length is wrong'::int;
\\endif
INSERT INTO {table} (client, val, triple) VALUES (:client_id, :k, :k::int * 3);
"""


def pgbench_counts(output: str) -> tuple[int, int, int]:
    """(processed, expected, failed) from pgbench's summary."""
    processed = re.search(r"number of transactions actually processed: (\d+)(?:/(\d+))?", output)
    assert processed is not None, output
    failed = re.search(r"number of failed transactions: (\d+)", output)
    done = int(processed.group(1))
    expected = int(processed.group(2)) if processed.group(2) else done
    return done, expected, int(failed.group(1)) if failed else 0


@pytest.mark.parametrize("variant", ["default", "server_cache_2"])
def test_pgbench_prepared(
    variant: str, pg_trust: TempPostgres, doorman: StartDoorman, pool_config: PoolConfig, tmp_path: Path
) -> None:
    pool_size, clients, per_client = 2, 20, 100
    table = table_name("pgbench")
    with direct(pg_trust) as conn:
        conn.execute(
            f"CREATE TABLE {table} (id bigserial PRIMARY KEY, client int NOT NULL, val int NOT NULL, "
            "triple int NOT NULL)"
        )
    proc = start_pool(doorman, pool_config, pg_trust, pool_size, variant)
    window = LogWindow(pg_trust)
    script_a = tmp_path / "a.sql"
    script_a.write_text(PGBENCH_SCRIPT_A.format(table=table), encoding="utf-8")
    script_b = tmp_path / "b.sql"
    script_b.write_text(PGBENCH_SCRIPT_B.format(table=table), encoding="utf-8")

    # One thread per client (-j = -c): pgbench prepares a script's statements with blocking PQprepare calls, so
    # with several clients per thread, one client waiting for a free server would stall the thread's other
    # clients -- including those inside a transaction holding the servers (a deadlock of pgbench's own making
    # with any transaction pooler, broken only by query_wait_timeout).
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGPASSWORD=PASSWORD, PGCONNECT_TIMEOUT="10", LC_ALL="C")
    argv = [
        PGBENCH,
        "-h",
        proc.host,
        "-p",
        str(proc.port),
        "-U",
        USER,
        "-n",
        "-M",
        "prepared",
        "-c",
        str(clients),
        "-j",
        str(clients),
        "-t",
        str(per_client),
        "-f",
        f"{script_a}@1",
        "-f",
        f"{script_b}@1",
        DB,
    ]
    out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=150, check=False, cwd=tmp_path)
    output = out.stdout + out.stderr
    assert out.returncode == 0, f"pgbench exited {out.returncode}:\n{output[-4000:]}"
    assert "aborted" not in output, output[-4000:]
    done, expected, failed = pgbench_counts(output)
    assert (done, expected, failed) == (clients * per_client, clients * per_client, 0), output[-4000:]

    with direct(pg_trust) as conn:
        row = conn.execute(
            f"SELECT count(*), count(DISTINCT client), count(*) FILTER (WHERE triple <> val * 3) FROM {table}"
        ).fetchone()
    assert row == (clients * per_client, clients, 0)
    assert server_backends(pg_trust) <= pool_size
    check_eviction(proc, variant)
    assert_clean_logs(proc, window)
