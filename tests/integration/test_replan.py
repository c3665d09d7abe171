"""Transparent re-prepare after DDL: PostgreSQL rejects a cached statement whose result type changed with
0A000 "cached plan must not change result type"; outside an explicit transaction pg_doorman re-prepares it on
that server and runs the batch again, once. Inside a transaction the client gets PostgreSQL's error, as on a
direct connection (a retry there could not undo what the transaction already did)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from pg_doorman.devcluster import TempPostgres

StartDoorman = Callable[..., Any]
PoolConfig = Callable[..., dict[str, Any]]


@pytest.fixture
def replan_pool(pg_trust: TempPostgres, doorman: StartDoorman, pool_config: PoolConfig) -> Any:
    pg_trust.psql(
        "DROP TABLE IF EXISTS replan_t; CREATE TABLE replan_t (a int); INSERT INTO replan_t VALUES (1)", db="appdb"
    )
    pg_trust.psql("GRANT ALL ON replan_t TO app", db="appdb")
    proc = doorman(pool_config(pg_trust, ["app"], pool_size=1))
    yield proc
    pg_trust.psql("DROP TABLE IF EXISTS replan_t", db="appdb")


def test_select_star_after_add_column_is_retried(replan_pool: Any, pg_trust: TempPostgres) -> None:
    with psycopg.connect(replan_pool.dsn(), autocommit=True, prepare_threshold=0) as conn:
        assert conn.execute("select * from replan_t").fetchall() == [(1,)]
        pg_trust.psql("ALTER TABLE replan_t ADD COLUMN b int DEFAULT 7", db="appdb")
        cur = conn.execute("select * from replan_t")
        assert [d.name for d in cur.description] == ["a", "b"]
        assert cur.fetchall() == [(1, 7)]
        # And again, now that the server has the new plan.
        assert conn.execute("select * from replan_t").fetchall() == [(1, 7)]
    assert "re-preparing and retrying" in replan_pool.log_text()


def test_inside_a_transaction_the_error_is_postgresqls(replan_pool: Any, pg_trust: TempPostgres) -> None:
    with psycopg.connect(replan_pool.dsn(), prepare_threshold=0) as conn:
        assert conn.execute("select * from replan_t").fetchall() == [(1,)]
        conn.commit()
        conn.execute("select 1")  # opens a transaction
        pg_trust.psql("ALTER TABLE replan_t ADD COLUMN c int DEFAULT 8", db="appdb")
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="cached plan must not change result type"):
            conn.execute("select * from replan_t")
        conn.rollback()
        # Outside the transaction the next execution is retried and works.
        conn.autocommit = True
        rows = conn.execute("select * from replan_t").fetchall()
        assert rows == [(1, 8)]


def test_asyncpg_statement_cache_after_add_column(replan_pool: Any, pg_trust: TempPostgres) -> None:
    """asyncpg keeps the row description it got at prepare time; after the DDL it must still get correct rows
    (either its own re-prepare on the error, or the retried batch's rows)."""
    import asyncio

    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(
            host=replan_pool.host, port=replan_pool.port, user="app", password="app_pass", database="appdb"
        )
        try:
            assert [tuple(r) for r in await conn.fetch("select * from replan_t")] == [(1,)]
            pg_trust.psql("ALTER TABLE replan_t ADD COLUMN d int DEFAULT 9", db="appdb")
            try:
                rows = await conn.fetch("select * from replan_t")
            except asyncpg.exceptions.InvalidCachedStatementError:
                rows = await conn.fetch("select * from replan_t")
            assert [tuple(r) for r in rows] == [(1, 9)]
        finally:
            await conn.close()

    asyncio.run(run())
