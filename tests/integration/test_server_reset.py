"""What a client leaves on a server must not reach the next client: the reset query at session-mode release
(``server_reset_query``, as in PgBouncer), and in transaction mode the leftover check that closes a server
holding state no cleanup may remove (session-level advisory locks, temporary tables, uncovered LISTEN/cursors).

Every test uses ``pool_size: 1``, so the next client lands on the same backend unless the pooler closed it;
``pg_backend_pid()`` tells which. What PostgreSQL really holds is checked on a direct connection.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg_helpers import close_quietly, connect, drop_socket, scalar, wait_until

from pg_doorman.devcluster import TempPostgres
from pg_doorman.reset import LEFTOVER_CHECK

StartDoorman = Callable[..., Any]
MakePoolConfig = Callable[..., dict[str, Any]]

DEFAULT_SEARCH_PATH = '"$user", public'


def direct(cluster: TempPostgres) -> psycopg.Connection[Any]:
    """A direct superuser connection to ``appdb`` (no pooler), for checking what PostgreSQL really has."""
    return psycopg.connect(cluster.dsn(db="appdb"), autocommit=True, connect_timeout=10)


def advisory_locks(su: psycopg.Connection[Any], key: int) -> int:
    """How many sessions hold advisory lock ``key`` (single bigint key: classid 0, objid = key)."""
    return int(
        scalar(
            su, "select count(*) from pg_locks where locktype = 'advisory' and objid::bigint = %s and granted", (key,)
        )
    )


def backend_alive(su: psycopg.Connection[Any], pid: int) -> bool:
    return su.execute("select 1 from pg_stat_activity where pid = %s", (pid,)).fetchone() is not None


def last_query(su: psycopg.Connection[Any], pid: int) -> str:
    row = su.execute("select query from pg_stat_activity where pid = %s", (pid,)).fetchone()
    assert row is not None, f"backend {pid} is gone"
    return str(row[0])


@pytest.fixture
def marks(pg_trust: TempPostgres) -> Iterator[str]:
    """A fresh table ``(what text)`` in appdb owned by ``app``, for reset queries that leave a trace."""
    name = f"marks_{uuid.uuid4().hex[:12]}"
    pg_trust.psql(f"CREATE TABLE {name} (what text); ALTER TABLE {name} OWNER TO app;", db="appdb")
    yield name
    pg_trust.psql(f"DROP TABLE IF EXISTS {name}", db="appdb")


@pytest.fixture
def session_pool(doorman: StartDoorman, pool_config: MakePoolConfig, pg_trust: TempPostgres) -> Any:
    """Session mode, one server connection, default settings (server_reset_query = DISCARD ALL)."""
    return doorman(pool_config(pg_trust, pool_mode="session", pool_size=1))


# ---------------------------------------------------------------- session mode: DISCARD ALL at release


def leave_state_behind(proc: Any, key: int) -> int:
    """Client A: protocol-level prepared statements (psycopg, prepare_threshold=0), a temporary table with rows,
    a session-level advisory lock, a SQL PREPARE, a LISTEN, a WITH HOLD cursor and a SET; then it disconnects.
    Returns its backend pid."""
    with connect(proc, prepare_threshold=0) as a:
        pid = int(scalar(a, "select pg_backend_pid() /* marker_a */"))
        for i in range(3):
            assert scalar(a, "select %s::int + 1 /* marker_a */", (i,)) == i + 1
        a.execute("create temp table tmp_a (x int)")
        a.execute("insert into tmp_a select generate_series(1, 3)")
        assert scalar(a, "select pg_advisory_lock(%s) is not null /* marker_a */", (key,)) is True
        a.execute("prepare sql_a as select 1")
        a.execute("listen chan_a")
        a.execute("declare cur_a cursor with hold for select 1")
        a.execute("set statement_timeout = '7s'")
        assert (
            scalar(a, "select count(*) from pg_prepared_statements where statement like '%%' || 'marker' || '_a%%'")
            >= 3
        )
    return pid


def test_session_mode_next_client_inherits_nothing(session_pool: Any, pg_trust: TempPostgres) -> None:
    key = 910_001
    pid = leave_state_behind(session_pool, key)
    # psycopg with prepare_threshold=0 names its statements _pg3_0, _pg3_1, ... in every session: without a
    # reset, B's first prepared query fails with 42P05 `prepared statement "_pg3_0" already exists`.
    with connect(session_pool, prepare_threshold=0) as b, direct(pg_trust) as su:
        assert scalar(b, "select pg_backend_pid()") == pid, "pool_size 1: the same backend"
        assert scalar(b, "select %s::int * 2", (21,)) == 42
        leftovers = "select count(*) from pg_prepared_statements where statement like '%%' || 'marker' || '_a%%'"
        assert scalar(b, leftovers) == 0
        assert scalar(b, "select count(*) from pg_prepared_statements where name = 'sql_a'") == 0
        assert scalar(b, "select to_regclass('pg_temp.tmp_a')") is None
        b.execute("create temp table tmp_a (x int)")  # the name is free
        assert scalar(b, "select count(*) from tmp_a") == 0
        assert advisory_locks(su, key) == 0
        assert scalar(b, "select count(*) from pg_listening_channels()") == 0
        assert scalar(b, "select count(*) from pg_cursors where name = 'cur_a'") == 0
        assert scalar(b, "show statement_timeout") == "0"
        for i in range(5):  # B's own prepared statements work on
            assert scalar(b, "select %s::int * 2", (i,)) == i * 2


def test_session_mode_protocol_prepared_statements_do_not_leak(session_pool: Any) -> None:
    """No tag reveals a protocol-level Parse, so only the reset query removes it. psycopg names its statements
    _pg3_0, _pg3_1, ... in every session: B's first prepared query would fail with 42P05."""
    with connect(session_pool, prepare_threshold=0) as a:
        pid = scalar(a, "select pg_backend_pid() /* marker_p */")
        assert scalar(a, "select %s::int + 1 /* marker_p */", (1,)) == 2
    with connect(session_pool, prepare_threshold=0) as b:
        assert scalar(b, "select pg_backend_pid()") == pid
        for i in range(5):
            assert scalar(b, "select %s::int * 2", (i,)) == i * 2
        leftovers = "select count(*) from pg_prepared_statements where statement like '%%' || 'marker' || '_p%%'"
        assert scalar(b, leftovers) == 0


def test_session_mode_startup_parameters_are_set_again_after_the_reset(session_pool: Any) -> None:
    """DISCARD ALL resets what the pooler SET for a client (here a startup search_path): a later client with the
    same parameters must get them set again, a client without them must not inherit them."""
    options = "-c search_path=myschema"
    with connect(session_pool, options=options) as a:
        pid = scalar(a, "select pg_backend_pid()")
        assert scalar(a, "show search_path") == "myschema"
    # Same parameters as A: only a pooler that knows DISCARD ALL undid A's SET sends it again.
    with connect(session_pool, options=options) as c:
        assert scalar(c, "select pg_backend_pid()") == pid
        assert scalar(c, "show search_path") == "myschema"
    with connect(session_pool) as b:
        assert scalar(b, "select pg_backend_pid()") == pid
        assert scalar(b, "show search_path") == DEFAULT_SEARCH_PATH


def test_session_mode_client_leaving_inside_a_transaction(session_pool: Any, pg_trust: TempPostgres) -> None:
    """ROLLBACK first (DISCARD ALL cannot run inside a transaction block), then the reset."""
    key = 910_002
    a = connect(session_pool, autocommit=False)
    try:
        pid = scalar(a, "select pg_backend_pid()")
        a.execute("create temp table tmp_tx (x int) on commit preserve rows")
        a.execute("select pg_advisory_lock(%s)", (key,))
        drop_socket(a)
    finally:
        close_quietly(a)
    with connect(session_pool) as b, direct(pg_trust) as su:
        assert scalar(b, "select pg_backend_pid()") == pid
        assert scalar(b, "select txid_current_if_assigned()") is None
        assert scalar(b, "select to_regclass('pg_temp.tmp_tx')") is None
        assert advisory_locks(su, key) == 0


def test_custom_reset_query_per_pool(
    doorman: StartDoorman, pool_config: MakePoolConfig, pg_trust: TempPostgres, marks: str
) -> None:
    """The pool's server_reset_query overrides general's (which would fail here); it runs instead of DISCARD ALL."""
    config = pool_config(
        pg_trust,
        pool_mode="session",
        pool_size=1,
        server_reset_query=f"INSERT INTO {marks} VALUES ('reset')",
        general={"server_reset_query": "SELECT 1/0"},
    )
    proc = doorman(config)
    with connect(proc) as a:
        pid = scalar(a, "select pg_backend_pid()")
        a.execute("create temp table tmp_kept (x int)")
    with connect(proc) as b, direct(pg_trust) as su:
        assert scalar(b, "select pg_backend_pid()") == pid
        assert scalar(su, f"select count(*) from {marks}") == 1
        # Not DISCARD ALL: the temporary table is still there.
        assert scalar(b, "select to_regclass('pg_temp.tmp_kept')") is not None
    with connect(proc) as c, direct(pg_trust) as su:
        assert scalar(c, "select pg_backend_pid()") == pid
        assert scalar(su, f"select count(*) from {marks}") == 2


def test_empty_reset_query_disables_the_reset(
    doorman: StartDoorman, pool_config: MakePoolConfig, pg_trust: TempPostgres
) -> None:
    """Control: with ``server_reset_query: ""`` the next session-mode client inherits what no tag reveals
    (PgBouncer's behaviour; the targeted cleanup still undoes SET, SQL PREPARE, LISTEN, DECLARE)."""
    proc = doorman(pool_config(pg_trust, pool_mode="session", pool_size=1, server_reset_query=""))
    with connect(proc, prepare_threshold=0) as a:
        pid = scalar(a, "select pg_backend_pid() /* marker_kept */")
        a.execute("create temp table tmp_kept (x int)")
        a.execute("insert into tmp_kept values (1), (2)")
    with connect(proc) as b:
        assert scalar(b, "select pg_backend_pid()") == pid
        assert scalar(b, "select count(*) from pg_temp.tmp_kept") == 2
        kept = "select count(*) from pg_prepared_statements where statement like '%%' || 'marker' || '_kept%%'"
        assert scalar(b, kept) == 1


def test_failing_reset_query_closes_the_server(
    doorman: StartDoorman, pool_config: MakePoolConfig, pg_trust: TempPostgres
) -> None:
    proc = doorman(pool_config(pg_trust, pool_mode="session", pool_size=1, server_reset_query="SELECT 1/0"))
    with connect(proc) as a:
        pid = scalar(a, "select pg_backend_pid()")
    with connect(proc) as b, direct(pg_trust) as su:
        assert scalar(b, "select pg_backend_pid()") != pid
        wait_until(lambda: not backend_alive(su, pid), what="the backend whose reset failed to end")
    proc.wait_for_log("cleanup failed")
    assert "division by zero" in proc.log_text()


# ---------------------------------------------------------------- transaction mode: server_reset_query_always


def test_reset_always_in_transaction_mode(
    doorman: StartDoorman, pool_config: MakePoolConfig, pg_trust: TempPostgres
) -> None:
    """DISCARD ALL after every transaction: no leftovers, and the pooler's own prepared statements (dropped by
    each DISCARD ALL) are prepared again where needed."""
    proc = doorman(pool_config(pg_trust, pool_size=1, general={"server_reset_query_always": True}))
    key = 910_003
    with connect(proc, prepare_threshold=0) as a, connect(proc) as b, direct(pg_trust) as su:
        pid = scalar(b, "select pg_backend_pid()")
        a.execute("create temp table tmp_a (x int)")
        assert scalar(a, "select pg_advisory_lock(%s) is not null", (key,)) is True
        assert scalar(b, "select pg_backend_pid()") == pid, "DISCARD ALL covers it: no need to close"
        assert scalar(b, "select to_regclass('pg_temp.tmp_a')") is None
        assert advisory_locks(su, key) == 0
        for i in range(5):
            assert scalar(a, "select %s::int + 100", (i,)) == i + 100
            assert scalar(b, "select count(*) from pg_prepared_statements") == 0
        assert scalar(a, "select pg_backend_pid()") == pid


# ---------------------------------------------------------------- transaction mode: leftovers close the server


def test_temp_table_left_behind_closes_the_server(single: Any, pg_trust: TempPostgres) -> None:
    """A temporary table outlives the transaction; the next client would see it (and its rows), or fail with
    42P07 creating its own of the same name. The server is closed instead."""
    with connect(single) as a, connect(single) as b, direct(pg_trust) as su:
        pid_a = scalar(a, "select pg_backend_pid()")
        with a.transaction():
            a.execute("create temp table dup (x int)")
            a.execute("insert into dup values (1), (2)")
        pid_b = scalar(b, "select pg_backend_pid()")
        assert pid_b != pid_a
        # B reuses the name: its own table, empty.
        with b.transaction():
            b.execute("create temp table dup (x int)")
            assert scalar(b, "select count(*) from dup") == 0
        # A's table went with its server (transaction mode does not keep a temporary table for its client).
        with pytest.raises(psycopg.errors.UndefinedTable):
            a.execute("select * from dup")
        assert scalar(b, "select pg_backend_pid()") != pid_b
        wait_until(lambda: not backend_alive(su, pid_b), what="B's backend to end")
    assert "left temporary objects behind" in single.log_text()


@pytest.mark.parametrize(
    "create",
    [
        "create temp table t_ctas as select 1 x",  # CommandComplete "SELECT 1": text signal needed
        "select 1 x into temp t_into",
    ],
)
def test_temp_table_from_select_closes_the_server(single: Any, create: str) -> None:
    """CREATE TEMP TABLE AS / SELECT INTO report "SELECT n": only the statement text says a table was made."""
    with connect(single) as a:
        pid = scalar(a, "select pg_backend_pid()")
        a.execute(create)
        assert scalar(a, "select pg_backend_pid()") != pid


def test_temp_table_on_commit_drop_keeps_the_server(single: Any, pg_trust: TempPostgres) -> None:
    """ON COMMIT DROP: gone at commit, as in PostgreSQL; the check runs (CREATE TABLE tag) and finds nothing."""
    with connect(single) as a, direct(pg_trust) as su:
        pid = scalar(a, "select pg_backend_pid()")
        with a.transaction():
            a.execute("create temp table scratch (x int) on commit drop")
            a.execute("insert into scratch values (1)")
            assert scalar(a, "select count(*) from scratch") == 1
        wait_until(lambda: last_query(su, pid) == LEFTOVER_CHECK, what="the leftover check to run")
        assert scalar(a, "select pg_backend_pid()") == pid
        assert scalar(a, "select to_regclass('pg_temp.scratch')") is None


def test_advisory_lock_found_by_the_check_closes_the_server(single: Any, pg_trust: TempPostgres) -> None:
    """The check armed by a CREATE in the same transaction also finds a session-level advisory lock; closing
    the server releases it (the next client of the lock key is not blocked by a stranger's session)."""
    key = 910_004
    with connect(single) as a, direct(pg_trust) as su:
        pid = scalar(a, "select pg_backend_pid()")
        with a.transaction():
            a.execute("select pg_advisory_lock(%s)", (key,))
            a.execute("create temp table scratch (x int) on commit drop")
        assert scalar(a, "select pg_backend_pid()") != pid
        wait_until(lambda: advisory_locks(su, key) == 0, what="the advisory lock to be released")
    assert "left session-level advisory lock behind" in single.log_text()


@pytest.mark.parametrize("protocol", ["simple", "extended", "prepared_rebind"])
def test_advisory_lock_left_behind_closes_the_server(single: Any, pg_trust: TempPostgres, protocol: str) -> None:
    """A session-level advisory lock outlives the transaction; lent on, the server would hold it for a stranger.

    simple: a Query; extended: Parse/Bind/Execute; prepared_rebind: a statement prepared (and its lock released)
    in an earlier transaction, run again by Bind alone."""
    key = 910_005
    with (
        connect(single, prepare_threshold=0 if protocol == "prepared_rebind" else None) as a,
        connect(single) as b,
        direct(pg_trust) as su,
    ):
        if protocol == "prepared_rebind":
            assert scalar(a, "select pg_advisory_lock(%s) is not null", (key,)) is True
            a.execute("select pg_advisory_unlock_all()")
        pid = scalar(a, "select pg_backend_pid()")
        if protocol == "simple":
            assert scalar(a, f"select pg_advisory_lock({key}) is not null") is True
        else:
            assert scalar(a, "select pg_advisory_lock(%s) is not null", (key,)) is True
        assert scalar(b, "select pg_backend_pid()") != pid
        wait_until(lambda: advisory_locks(su, key) == 0, what="the advisory lock to be released")
        assert scalar(b, f"select pg_try_advisory_lock({key})") is True
        b.execute(f"select pg_advisory_unlock({key})")
    assert "left session-level advisory lock behind" in single.log_text()


def test_session_advisory_lock_survives_the_rollback_of_an_abandoned_transaction(
    single: Any, pg_trust: TempPostgres
) -> None:
    """A session-level advisory lock taken inside a transaction is not released by ROLLBACK (PostgreSQL docs,
    "Advisory Locks"): the client that vanished mid-transaction leaves it behind."""
    key = 910_006
    a = connect(single, autocommit=False)
    try:
        pid = scalar(a, "select pg_backend_pid()")
        a.execute(f"select pg_advisory_lock({key})")
        drop_socket(a)
    finally:
        close_quietly(a)
    with connect(single) as b, direct(pg_trust) as su:
        assert scalar(b, "select pg_backend_pid()") != pid
        wait_until(lambda: advisory_locks(su, key) == 0, what="the advisory lock to be released")


def test_client_leaving_mid_transaction_with_an_advisory_xact_lock(single: Any, pg_trust: TempPostgres) -> None:
    """Hostile: the client vanishes holding a transaction-level advisory lock. The ROLLBACK at release frees it;
    the server is clean and is lent again."""
    key = 910_007
    a = connect(single, autocommit=False)
    try:
        pid = scalar(a, "select pg_backend_pid()")
        a.execute("select pg_advisory_xact_lock(%s)", (key,))
        drop_socket(a)
    finally:
        close_quietly(a)
    with connect(single) as b, direct(pg_trust) as su:
        assert scalar(b, "select pg_backend_pid()") == pid
        assert advisory_locks(su, key) == 0
        assert scalar(b, "select pg_try_advisory_xact_lock(%s)", (key,)) is True


def test_plain_transactions_do_not_run_the_check(single: Any, pg_trust: TempPostgres) -> None:
    """Ordinary transactions (simple and extended protocol, autocommit and explicit) never pay for the check:
    the backend stays the same and the last query PostgreSQL ran is always the client's own."""
    with connect(single) as a, connect(single, prepare_threshold=0) as p, direct(pg_trust) as su:
        pid = scalar(a, "select pg_backend_pid()")
        for i in range(30):
            conn = a if i % 2 else p
            assert scalar(conn, "select pg_backend_pid() + %s::int", (i,)) == pid + i
            assert last_query(su, pid) == "select pg_backend_pid() + $1::int"
            with conn.transaction():
                assert scalar(conn, "select %s::int", (i,)) == i
            assert last_query(su, pid) == "COMMIT"
        # Control: the same observation shows the check when a CREATE arms it.
        a.execute("create temp table scratch (x int) on commit drop")
        wait_until(lambda: last_query(su, pid) == LEFTOVER_CHECK, what="the leftover check to run")
        assert scalar(a, "select pg_backend_pid()") == pid
    assert "instead of lending it again" not in single.log_text()


@pytest.mark.parametrize(
    "statement",
    ["declare c cursor with hold for select 1", "listen chan_uncovered"],
)
def test_cleanup_off_uncovered_cursor_or_listen_closes_the_server(
    doorman: StartDoorman, pool_config: MakePoolConfig, pg_trust: TempPostgres, statement: str
) -> None:
    """With ``cleanup_server_connections: false`` nothing removes a WITH HOLD cursor or a LISTEN: the next
    client would see the cursor, or receive someone else's notifications. The server is closed instead."""
    proc = doorman(pool_config(pg_trust, pool_size=1, cleanup_server_connections=False))
    with connect(proc) as a, connect(proc) as b:
        pid = scalar(a, "select pg_backend_pid()")
        a.execute(statement)
        assert scalar(b, "select pg_backend_pid()") != pid
        assert scalar(b, "select count(*) from pg_cursors") == 0
        assert scalar(b, "select count(*) from pg_listening_channels()") == 0


def test_cleanup_off_cursor_closed_with_its_transaction_keeps_the_server(
    doorman: StartDoorman, pool_config: MakePoolConfig, pg_trust: TempPostgres
) -> None:
    proc = doorman(pool_config(pg_trust, pool_size=1, cleanup_server_connections=False))
    with connect(proc) as a:
        pid = scalar(a, "select pg_backend_pid()")
        with a.transaction():
            a.execute("declare c cursor for select 1")
        assert scalar(a, "select pg_backend_pid()") == pid
