"""Server state hygiene in transaction mode: what one client does to a backend must not reach the next client.

Most tests use ``pool_size: 1`` so that every client is served by the same PostgreSQL backend (proved by
comparing ``pg_backend_pid()``); whatever session state leaked would then be visible to the next client.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg_helpers import close_quietly, connect, drop_socket, scalar, wait_until

from pg_doorman.devcluster import TempPostgres

StartDoorman = Callable[..., Any]
MakePoolConfig = Callable[..., dict[str, Any]]

DEFAULT_SEARCH_PATH = '"$user", public'


# ---------------------------------------- helpers


def direct(cluster: TempPostgres) -> psycopg.Connection[Any]:
    """A direct superuser connection to ``appdb`` (no pooler), for checking what PostgreSQL really has."""
    return psycopg.connect(cluster.dsn(db="appdb"), autocommit=True, connect_timeout=10)


def server_default(cluster: TempPostgres, name: str) -> str:
    return cluster.psql(f"SHOW {name}", db="appdb")


def assert_no_foreign_statement(conn: psycopg.Connection[Any], name: str) -> None:
    """``conn`` never PREPAREd ``name``: it can neither EXECUTE another client's statement nor collide with it.

    (The pooler may keep other clients' SQL-level statements on the backend for their later transactions, so
    ``pg_prepared_statements`` is not checked; what matters is that this client cannot reach them.)
    """
    with pytest.raises(psycopg.errors.InvalidSqlStatementName):
        conn.execute(f"EXECUTE {name}")
    conn.execute(f"PREPARE {name} AS select 'mine'")
    assert scalar(conn, f"EXECUTE {name}") == "mine"
    conn.execute(f"DEALLOCATE {name}")
    with pytest.raises(psycopg.errors.InvalidSqlStatementName):
        conn.execute(f"EXECUTE {name}")


@pytest.fixture
def table(pg_trust: TempPostgres) -> Iterator[str]:
    """A fresh table ``(client int, n int, marker text)`` in appdb owned by ``app``; dropped afterwards."""
    name = f"hyg_{uuid.uuid4().hex[:12]}"
    pg_trust.psql(f"CREATE TABLE {name} (client int, n int, marker text); ALTER TABLE {name} OWNER TO app;", db="appdb")
    yield name
    pg_trust.psql(f"DROP TABLE IF EXISTS {name}", db="appdb")


# ---------------------------------------- session state does not leak


def test_session_state_is_reset_between_clients(single: Any, pg_trust: TempPostgres) -> None:
    default_tz = server_default(pg_trust, "TimeZone")
    assert default_tz != "Asia/Tokyo"
    with connect(single) as a, connect(single) as b:
        pid = scalar(a, "select pg_backend_pid()")
        assert scalar(b, "select pg_backend_pid()") == pid, "pool_size 1: both clients must share one backend"

        a.execute("SET search_path = x")
        a.execute("SET statement_timeout = '1s'")
        a.execute("SET TimeZone = 'Asia/Tokyo'")
        a.execute("DECLARE c CURSOR WITH HOLD FOR select 1")
        a.execute("PREPARE p AS select 1")
        a.execute("LISTEN chan")

        assert scalar(b, "select pg_backend_pid()") == pid
        assert scalar(b, "show search_path") == DEFAULT_SEARCH_PATH
        assert scalar(b, "show statement_timeout") == "0"
        assert scalar(b, "show TimeZone") == default_tz
        assert_no_foreign_statement(b, "p")
        assert b.execute("select * from pg_listening_channels()").fetchall() == []
        with pytest.raises(psycopg.errors.InvalidCursorName):
            b.execute("FETCH c")
        # B's failed statement did not leave the backend in a failed transaction either.
        assert scalar(b, "select 1") == 1
        assert scalar(b, "select pg_backend_pid()") == pid


def test_state_set_inside_a_committed_transaction_is_reset(single: Any, pg_trust: TempPostgres) -> None:
    default_tz = server_default(pg_trust, "TimeZone")
    with connect(single) as a, connect(single) as b:
        pid = scalar(b, "select pg_backend_pid()")
        with a.transaction():
            assert scalar(a, "select pg_backend_pid()") == pid
            a.execute("SET search_path = x")
            a.execute("SET statement_timeout = '1s'")
            a.execute("SET TimeZone = 'Asia/Tokyo'")
            a.execute("DECLARE c CURSOR WITH HOLD FOR select 1")
            a.execute("PREPARE p AS select 1")
            a.execute("LISTEN chan")
            assert scalar(a, "show search_path") == "x"
        # Inside its own transaction the client saw its state; after COMMIT the next client must not.
        assert scalar(b, "select pg_backend_pid()") == pid
        assert scalar(b, "show search_path") == DEFAULT_SEARCH_PATH
        assert scalar(b, "show statement_timeout") == "0"
        assert scalar(b, "show TimeZone") == default_tz
        assert_no_foreign_statement(b, "p")
        assert b.execute("select * from pg_listening_channels()").fetchall() == []
        assert b.execute("select name from pg_cursors").fetchall() == []


@pytest.fixture
def member_role(pg_trust: TempPostgres) -> Iterator[str]:
    """A fresh role that ``app`` is a member of (so ``app`` may ``SET ROLE`` to it); dropped afterwards."""
    name = f"hyg_role_{uuid.uuid4().hex[:8]}"
    pg_trust.psql(f"CREATE ROLE {name}; GRANT {name} TO app;", db="appdb")
    yield name
    pg_trust.psql(f"DROP ROLE IF EXISTS {name}", db="appdb")


@pytest.mark.parametrize("how", ["SET ROLE {role}", "SET SESSION ROLE {role}", "BEGIN; SET ROLE {role}; COMMIT"])
def test_set_role_does_not_reach_the_next_client(single: Any, member_role: str, how: str) -> None:
    """RESET ALL leaves ``role`` and ``session_authorization`` alone: the next client would run as another role
    (with its privileges). The cleanup resets them with SET SESSION AUTHORIZATION DEFAULT."""
    with connect(single) as a, connect(single) as b:
        pid = scalar(a, "select pg_backend_pid()")
        a.execute(how.format(role=member_role))
        assert scalar(b, "select pg_backend_pid()") == pid
        assert scalar(b, "select current_user") == "app"
        assert scalar(a, "select current_user") == "app"


def test_cleanup_disabled_leaves_state_behind(
    doorman: StartDoorman, pool_config: MakePoolConfig, pg_trust: TempPostgres
) -> None:
    """Control for the tests above: with ``cleanup_server_connections: false`` the state is visible. Settings
    are the exception: a client's SET is read back at the end of its transaction and the parameter sync resets it
    for the next client, cleanup or not; and so are SQL-level prepared statements the pooler tracks (a lone
    PREPARE): they are the client's own, never another's. One inside a multi-statement query is not tracked."""
    proc = doorman(pool_config(pg_trust, pool_size=1, cleanup_server_connections=False))
    with connect(proc) as a, connect(proc) as b:
        pid = scalar(a, "select pg_backend_pid()")
        a.execute("SET search_path = x")
        a.execute("PREPARE p AS select 1")
        a.execute("PREPARE untracked AS select 1; select 1")
        assert scalar(b, "select pg_backend_pid()") == pid
        assert scalar(b, "show search_path") == '"$user", public'
        assert scalar(a, "show search_path") == "x"
        assert b.execute("select name from pg_prepared_statements").fetchall() == [("untracked",)]
        assert scalar(a, "EXECUTE p") == 1


# ---------------------------------------- each client's own parameters follow it


def test_startup_parameters_follow_their_client(single: Any) -> None:
    with (
        connect(single, application_name="appA", options="-c search_path=myschema") as a,
        connect(single, application_name="appB") as b,
    ):
        pids = set()
        for round_ in range(4):
            row_a = a.execute(
                "select current_setting('application_name'), current_setting('search_path'), pg_backend_pid()"
            ).fetchone()
            row_b = b.execute(
                "select current_setting('application_name'), current_setting('search_path'), pg_backend_pid()"
            ).fetchone()
            assert row_a is not None and row_b is not None
            assert row_a[:2] == ("appA", "myschema"), f"round {round_}"
            assert row_b[:2] == ("appB", DEFAULT_SEARCH_PATH), f"round {round_}"
            pids.update((row_a[2], row_b[2]))
            # The same inside explicit transactions.
            with a.transaction():
                assert scalar(a, "show application_name") == "appA"
                assert scalar(a, "show search_path") == "myschema"
            with b.transaction():
                assert scalar(b, "show application_name") == "appB"
                assert scalar(b, "show search_path") == DEFAULT_SEARCH_PATH
        assert len(pids) == 1, f"expected one shared backend, got {pids}"
        # What the client was told at login matches too.
        assert a.info.parameter_status("application_name") == "appA"
        assert b.info.parameter_status("application_name") == "appB"


def test_set_timezone_follows_its_client(single: Any, pg_trust: TempPostgres) -> None:
    default_tz = server_default(pg_trust, "TimeZone")
    with connect(single) as a, connect(single) as b:
        a.execute("SET TimeZone = 'Asia/Tokyo'")
        b.execute("SET application_name = 'bee'")
        pid = scalar(a, "select pg_backend_pid()")
        for _ in range(3):
            assert scalar(a, "show TimeZone") == "Asia/Tokyo"
            assert scalar(a, "select extract(timezone_hour from now())") == 9
            assert scalar(b, "show TimeZone") == default_tz
            assert scalar(b, "show application_name") == "bee"
            assert scalar(a, "show application_name") != "bee"
            assert scalar(b, "select pg_backend_pid()") == pid
        # psycopg's view (from ParameterStatus) agrees with the server.
        assert a.info.parameter_status("TimeZone") == "Asia/Tokyo"
        assert b.info.parameter_status("TimeZone") == default_tz


def test_parameter_change_rolled_back_by_cleanup_is_not_trusted(single: Any) -> None:
    """A client changes TimeZone without a SET (``set_config``) inside a transaction, then vanishes.

    The pooler's ROLLBACK undoes the change on the backend.  A client whose own TimeZone is the value that was
    rolled back must still get it: the pooler may not believe the backend already has it.
    """
    victim = connect(single)
    try:
        with connect(single, options="-c TimeZone=Asia/Tokyo") as tokyo, connect(single) as other:
            pid = scalar(other, "select pg_backend_pid()")
            assert scalar(tokyo, "show TimeZone") == "Asia/Tokyo"
            assert scalar(other, "show TimeZone") != "Asia/Tokyo"
            victim.autocommit = False
            assert scalar(victim, "select set_config('TimeZone', 'Asia/Tokyo', false)") == "Asia/Tokyo"
            assert scalar(victim, "select pg_backend_pid()") == pid
            drop_socket(victim)
            time.sleep(0.3)  # let the pooler roll the victim's transaction back
            # ``tokyo`` must be the very next client of the backend (another checkout would re-sync it).
            row = tokyo.execute("select pg_backend_pid(), current_setting('TimeZone')").fetchone()
            assert row == (pid, "Asia/Tokyo")
            assert scalar(other, "show TimeZone") != "Asia/Tokyo"
    finally:
        close_quietly(victim)


@pytest.mark.parametrize("reset", ["RESET ALL", "RESET search_path", "DISCARD ALL"])
def test_client_reset_does_not_desync_the_next_client(single: Any, reset: str) -> None:
    """Two clients with the same startup ``search_path``; one RESETs it on the shared backend.

    The pooler believed the backend had ``search_path=myschema`` (set for the first client); after the RESET it
    no longer has, so the second client, whose parameters look identical, must get it set again.
    """
    options = "-c search_path=myschema"
    with connect(single, options=options) as x, connect(single, options=options) as y:
        pid = scalar(x, "select pg_backend_pid()")
        assert scalar(x, "show search_path") == "myschema"
        x.execute(reset)
        row = y.execute("select pg_backend_pid(), current_setting('search_path')").fetchone()
        assert row == (pid, "myschema")
        assert scalar(x, "show search_path") == "myschema"


# ---------------------------------------- clients that vanish


_VICTIM_SCRIPT = textwrap.dedent(
    """
    import sys, time, psycopg
    conn = psycopg.connect(sys.argv[1], prepare_threshold=None, connect_timeout=10)
    conn.execute("INSERT INTO " + sys.argv[2] + " VALUES (1, 1, 'vanished')")
    print(conn.execute("select pg_backend_pid()").fetchone()[0], flush=True)
    time.sleep(60)
    """
)


@pytest.mark.parametrize("how", ["socket_closed", "process_killed", "terminate_in_transaction"])
def test_client_vanishing_mid_transaction_is_rolled_back(
    single: Any, pg_trust: TempPostgres, table: str, how: str
) -> None:
    with connect(single) as b, direct(pg_trust) as su:
        if how == "process_killed":
            child = subprocess.Popen(
                [sys.executable, "-c", _VICTIM_SCRIPT, single.dsn(), table],
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                assert child.stdout is not None
                pid = int(child.stdout.readline())
                child.send_signal(signal.SIGKILL)
            finally:
                child.wait(10)
        else:
            a = connect(single, autocommit=False)
            a.execute(f"INSERT INTO {table} VALUES (1, 1, 'vanished')")
            pid = scalar(a, "select pg_backend_pid()")
            if how == "socket_closed":
                drop_socket(a)
            else:
                a.close()  # libpq sends Terminate while the transaction is open
            close_quietly(a)
        assert su.execute("select state from pg_stat_activity where pid = %s", (pid,)).fetchone() is not None, (
            "the backend should survive a client that went away between queries"
        )

        # The next client on the same backend: not inside the dead client's transaction.
        assert scalar(b, "select pg_backend_pid()") == pid
        assert scalar(b, "select txid_current_if_assigned()") is None
        assert scalar(b, "select now() = statement_timestamp()") is True
        assert scalar(b, f"select count(*) from {table}") == 0
        b.execute(f"INSERT INTO {table} VALUES (2, 1, 'b')")
        assert scalar(su, f"select string_agg(marker, ',') from {table}") == "b"
        wait_until(
            lambda: su.execute("select state from pg_stat_activity where pid = %s", (pid,)).fetchone() == ("idle",),
            what="the shared backend to be idle",
        )


def test_client_vanishing_mid_result_does_not_corrupt_the_next_client(single: Any) -> None:
    with connect(single) as b:
        a = connect(single)
        try:
            rows = a.cursor().stream("select generate_series(1, 5000000)")
            got = [next(rows)[0] for _ in range(1000)]
            assert got == list(range(1, 1001))
            drop_socket(a)
            try:
                rows.close()
            except psycopg.Error:
                pass
        finally:
            close_quietly(a)

        assert scalar(b, "select 42") == 42
        assert [r[0] for r in b.execute("select generate_series(1, 20000)")] == list(range(1, 20001))
        assert b.execute("select count(*), sum(g) from generate_series(1, 200000) g").fetchone() == (
            200000,
            200000 * 200001 // 2,
        )
        assert scalar(b, "select txid_current_if_assigned()") is None
        with b.transaction():
            assert scalar(b, "select 'in tx'") == "in tx"
        assert scalar(b, "select 'after'") == "after"


def test_client_vanishing_mid_result_then_many_short_queries(single: Any) -> None:
    """Repeat the mid-result disconnect; the server must come free every time (query_wait_timeout is 5 s).

    psycopg sends a CancelRequest while giving up the stream, which races with the disconnect in the pooler.
    """
    with connect(single) as b:
        for i in range(15):
            a = connect(single)
            try:
                rows = a.cursor().stream("select generate_series(1, 5000000), repeat('x', 100)")
                for _ in range(10 + i * 100):
                    next(rows)
                drop_socket(a)
                try:
                    rows.close()
                except psycopg.Error:
                    pass
            finally:
                close_quietly(a)
            t0 = time.monotonic()
            assert scalar(b, "select %s::int", (i,)) == i
            assert time.monotonic() - t0 < 2.0, f"round {i}: the next client waited for the server"


def test_asyncpg_clients_keep_their_own_settings(single: Any, pg_trust: TempPostgres) -> None:
    """The same with asyncpg (named server-side statements, its own startup parameters)."""
    import asyncio

    import asyncpg

    default_tz = server_default(pg_trust, "TimeZone")

    async def scenario() -> None:
        common = {"host": single.host, "port": single.port, "user": "app", "password": "app_pass", "database": "appdb"}
        a = await asyncpg.connect(**common, server_settings={"application_name": "appA", "search_path": "myschema"})
        b = await asyncpg.connect(**common, server_settings={"application_name": "appB"})
        try:
            await a.execute("SET TimeZone = 'Asia/Tokyo'")
            await b.execute("DECLARE c CURSOR WITH HOLD FOR select 1")
            pids = set()
            for _ in range(3):
                row_a = await a.fetchrow(
                    "select current_setting('application_name') app, current_setting('search_path') sp,"
                    " current_setting('TimeZone') tz, pg_backend_pid() pid"
                )
                row_b = await b.fetchrow(
                    "select current_setting('application_name') app, current_setting('search_path') sp,"
                    " current_setting('TimeZone') tz, pg_backend_pid() pid"
                )
                assert (row_a["app"], row_a["sp"], row_a["tz"]) == ("appA", "myschema", "Asia/Tokyo")
                assert (row_b["app"], row_b["sp"], row_b["tz"]) == ("appB", DEFAULT_SEARCH_PATH, default_tz)
                assert await a.fetch("select name from pg_cursors where name = 'c'") == []
                pids.update((row_a["pid"], row_b["pid"]))
                async with a.transaction():
                    assert await a.fetchval("select $1::int + 1", 41) == 42
            assert len(pids) == 1
        finally:
            await a.close()
            await b.close()

    asyncio.run(scenario())
