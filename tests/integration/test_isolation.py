"""Isolation between the clients of one pool, checked against PostgreSQL itself.

Each test runs the same steps on direct connections to the cluster and through pg_doorman (``pool_size: 1``, so
every client of the pool is served by the same backend) and expects the same outcome: what one client left on a
backend (half a message, a SQL-level prepared statement, a statement parsed under its settings) must not reach
the next client, and what a client did itself (SET, PREPARE) must stay as a direct session keeps it.
"""

from __future__ import annotations

import asyncio
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg_helpers import connect, scalar
from wire_client import (
    Msg,
    WireClient,
    WireError,
    bind,
    data_row_values,
    describe_message,
    error_map,
    execute,
    parse,
    sync,
)

from pg_doorman.devcluster import TempPostgres

StartDoorman = Callable[..., Any]
MakePoolConfig = Callable[..., dict[str, Any]]

HOST = "127.0.0.1"
USER, PASSWORD, DB = "app", "app_pass", "appdb"
# The client that comes after a broken one waits this long for its answer: a backend that still waits for the
# rest of someone else's message would never answer (the test fails fast instead of hanging).
NEXT_CLIENT_TIMEOUT = 3.0


# ---------------------------------------- helpers


class Target:
    """Where a scenario runs: PostgreSQL directly, or a pg_doorman in front of it."""

    def __init__(self, name: str, port: int, password: str | None) -> None:
        self.name = name
        self.port = port
        self.password = password

    def wire(self, params: dict[str, str] | None = None, timeout: float = 10.0) -> WireClient:
        return WireClient.connect(
            HOST, self.port, user=USER, database=DB, password=self.password, params=params, timeout=timeout
        )

    def dsn(self) -> str:
        dsn = f"host={HOST} port={self.port} user={USER} dbname={DB}"
        return dsn + (f" password={self.password}" if self.password else "")

    def psycopg(self, **kwargs: Any) -> psycopg.Connection[Any]:
        kwargs.setdefault("autocommit", True)
        kwargs.setdefault("connect_timeout", 10)
        return psycopg.connect(self.dsn(), **kwargs)

    def __repr__(self) -> str:
        return self.name


def direct_target(cluster: TempPostgres) -> Target:
    return Target("direct", cluster.port, None)


def pooled_target(proc: Any) -> Target:
    return Target("pg_doorman", proc.port, PASSWORD)


@pytest.fixture
def targets(single: Any, pg_trust: TempPostgres) -> list[Target]:
    return [direct_target(pg_trust), pooled_target(single)]


def rows(msgs: list[Msg]) -> list[list[str | None]]:
    return [[None if v is None else v.decode() for v in data_row_values(m.body)] for m in msgs if m.type == "D"]


def errors(msgs: list[Msg]) -> list[str]:
    """SQLSTATE and message of each ErrorResponse."""
    return [f"{error_map(m.body).get('C')} {error_map(m.body).get('M')}" for m in msgs if m.type == "E"]


def outcome(msgs: list[Msg]) -> tuple[list[list[str | None]], list[str]]:
    return rows(msgs), errors(msgs)


def extended(client: WireClient, sql: str, params: tuple[str | None, ...] = (), name: str = "") -> list[Msg]:
    """Parse/Bind/Execute/Sync of ``sql`` (the unnamed statement unless ``name`` is given)."""
    client.send(parse(name, sql), bind("", name, params), execute(), sync())
    return client.read_until_ready()


@pytest.fixture
def mood_type_cleanup(pg_trust: TempPostgres) -> Iterator[None]:
    yield
    pg_trust.psql("DROP TABLE IF EXISTS iso_moods; DROP TYPE IF EXISTS iso_mood", db=DB)


# ---------------------------------------- 1. a client that leaves in the middle of a message


def _partial(kind: bytes) -> bytes:
    """A message of type ``kind`` that declares 1000 bytes of body and carries only 10."""
    return kind + struct.pack("!i", 4 + 1000) + b"0123456789"


@pytest.mark.parametrize("pool_mode", ["transaction", "session"])
@pytest.mark.parametrize(
    "kind",
    [b"d", b"c", b"f"],
    ids=["CopyData", "CopyDone", "CopyFail"],
)
def test_server_left_mid_message_is_not_lent_again(
    doorman: StartDoorman, pool_config: MakePoolConfig, pg_trust: TempPostgres, pool_mode: str, kind: bytes
) -> None:
    """A client sends the start of a message (a type PostgreSQL reads whole and ignores outside COPY) and
    disconnects. The backend still waits for the rest of that message: it must not be lent to the next client,
    whose bytes would complete it (PostgreSQL would swallow its Query and never answer)."""
    proc = doorman(pool_config(pg_trust, pool_size=1, pool_mode=pool_mode))
    target = pooled_target(proc)
    a = target.wire()
    try:
        # A server is open and idle (transaction mode) or held (session mode): the broken message reaches it.
        assert rows(a.simple_query("select pg_backend_pid()"))
        a.send(_partial(kind))
    finally:
        a.sock.close()  # gone without Terminate, in the middle of the message

    with target.wire(timeout=NEXT_CLIENT_TIMEOUT) as b:
        try:
            msgs = b.simple_query("select 'next client' as v", timeout=NEXT_CLIENT_TIMEOUT)
        except WireError as exc:
            pytest.fail(
                f"the next client got no answer within {NEXT_CLIENT_TIMEOUT}s ({exc}); received: "
                f"{[describe_message(m) for m in exc.received]}"
            )
        assert outcome(msgs) == ([["next client"]], [])
        assert msgs[-1] == Msg("Z", b"I")


# ---------------------------------------- 2. SQL PREPARE of one client reached by another's extended protocol


def _leak_scenario(target: Target) -> dict[str, Any]:
    """A PREPAREs ``leak_q`` with the simple protocol and leaves; B uses that name with named extended-protocol
    statements (psycopg ``prepare=True``)."""
    seen: dict[str, Any] = {}
    with target.psycopg(prepare_threshold=None) as a:
        a.execute("PREPARE leak_q AS SELECT 'secret-of-A'")
        seen["a"] = scalar(a, "EXECUTE leak_q")
    with target.psycopg(prepare_threshold=0) as b:
        try:
            seen["b_execute"] = b.execute("EXECUTE leak_q", prepare=True).fetchall()
        except psycopg.Error as exc:
            seen["b_execute"] = exc.sqlstate
        try:
            b.execute("PREPARE leak_q AS SELECT 1", prepare=True)
            seen["b_prepare"] = "ok"
        except psycopg.Error as exc:
            seen["b_prepare"] = exc.sqlstate
    return seen


def test_sql_prepare_is_invisible_to_the_next_clients_extended_protocol(targets: list[Target]) -> None:
    direct, pooled = (_leak_scenario(t) for t in targets)
    assert direct == {"a": "secret-of-A", "b_execute": "26000", "b_prepare": "ok"}
    assert pooled == direct


# ---------------------------------------- 3. SQL PREPARE / EXECUTE sent with the extended protocol


def _prepare_execute_extended(target: Target, times: int = 20) -> tuple[int, list[str]]:
    ok, failures = 0, []
    with target.psycopg(prepare_threshold=0) as conn:
        conn.execute("PREPARE p AS SELECT 1")
        for _ in range(times):
            try:
                assert scalar(conn, "EXECUTE p") == 1
                ok += 1
            except psycopg.Error as exc:
                failures.append(f"{exc.sqlstate} {exc}")
    return ok, failures[:3]


def test_sql_prepare_execute_through_extended_protocol_across_transactions(targets: list[Target]) -> None:
    direct, pooled = (_prepare_execute_extended(t) for t in targets)
    assert direct == (20, [])
    assert pooled == direct


# ---------------------------------------- 4. a statement parsed under another client's settings


def _timetz_scenario(target: Target) -> list[Any]:
    """Two clients with different TimeZones parse the same text with the extended protocol (the unnamed
    statement). PostgreSQL folds ``'03:00'::timetz`` at parse time, in the session's TimeZone."""
    seen: list[Any] = []
    with target.wire() as tokyo, target.wire() as kolkata:
        for client, zone in ((tokyo, "Asia/Tokyo"), (kolkata, "Asia/Kolkata")):
            assert not errors(client.simple_query(f"SET TimeZone = '{zone}'"))
        for client in (tokyo, kolkata, tokyo, kolkata):
            seen.append(outcome(extended(client, "SELECT '03:00'::timetz::text AS t")))
    return seen


def test_statement_is_parsed_under_the_clients_own_settings(targets: list[Target]) -> None:
    direct, pooled = (_timetz_scenario(t) for t in targets)
    tokyo, kolkata = ([["03:00:00+09"]], []), ([["03:00:00+05:30"]], [])
    assert direct == [tokyo, kolkata, tokyo, kolkata]
    assert pooled == direct


# ---------------------------------------- 5. a type dropped and created again under a shared statement


def _recreated_type_scenario(target: Target, savepoint: bool) -> list[Any]:
    """Each round creates a type and a table inside a transaction (or a savepoint), uses them through an
    unnamed extended-protocol statement and rolls back. Every round parses its statement afresh."""
    seen: list[Any] = []
    with target.wire() as client:
        if savepoint:
            assert not errors(client.simple_query("BEGIN"))
        for _ in range(3):
            opener = "SAVEPOINT round" if savepoint else "BEGIN"
            closer = "ROLLBACK TO SAVEPOINT round" if savepoint else "ROLLBACK"
            assert not errors(
                client.simple_query(
                    f"{opener}; CREATE TYPE iso_mood AS ENUM ('sad', 'happy'); CREATE TABLE iso_moods (m iso_mood)"
                )
            )
            insert = extended(client, "INSERT INTO iso_moods VALUES ($1)", ("happy",))
            select = extended(client, "SELECT $1::iso_mood AS m", ("sad",))
            seen.append((outcome(insert), outcome(select)))
            client.simple_query(closer)
        if savepoint:
            client.simple_query("ROLLBACK")
    return seen


@pytest.mark.usefixtures("mood_type_cleanup")
@pytest.mark.parametrize("savepoint", [False, True], ids=["transaction", "savepoint"])
def test_statement_on_a_recreated_type_is_parsed_again(targets: list[Target], savepoint: bool) -> None:
    direct, pooled = (_recreated_type_scenario(t, savepoint) for t in targets)
    assert direct == [(([], []), ([["sad"]], []))] * 3
    assert pooled == direct


# ---------------------------------------- 6. the client's last SET wins


def _set_twice_scenario(target: Target, startup_options: str, sets: list[str]) -> str:
    kwargs = {"options": startup_options} if startup_options else {}
    with target.psycopg(prepare_threshold=None, **kwargs) as conn:
        for value in sets:
            conn.execute(f"SET password_encryption = '{value}'")
        result: str = scalar(conn, "SHOW password_encryption")
        return result


@pytest.mark.parametrize(
    ("cluster_name", "startup_options", "sets"),
    [
        # pg_md5's postgresql.conf has password_encryption = md5.
        ("pg_md5", "", ["md5", "scram-sha-256"]),
        ("pg_trust", "-c password_encryption=md5", ["scram-sha-256"]),
    ],
    ids=["sets_over_md5_default", "set_over_startup_option"],
)
def test_last_set_of_an_unreported_parameter_wins(
    request: pytest.FixtureRequest,
    doorman: StartDoorman,
    pool_config: MakePoolConfig,
    cluster_name: str,
    startup_options: str,
    sets: list[str],
) -> None:
    """SET of a parameter PostgreSQL does not report (no ParameterStatus) must last like on a direct session:
    the next statement of the same client sees the value it set last, not the server's or the startup one."""
    cluster: TempPostgres = request.getfixturevalue(cluster_name)
    proc = doorman(pool_config(cluster, pool_size=1))
    direct = Target("direct", cluster.port, PASSWORD)
    pooled = pooled_target(proc)
    assert _set_twice_scenario(direct, startup_options, sets) == "scram-sha-256"
    assert _set_twice_scenario(pooled, startup_options, sets) == "scram-sha-256"


# ---------------------------------------- 7. ParameterStatus at login in PostgreSQL's spelling


CLIENT_SPELLED = {"client_encoding": "euc-jp", "DateStyle": "iso", "TimeZone": "utc", "IntervalStyle": "POSTGRES"}


def _reported_at_login(target: Target) -> dict[str, str]:
    with target.wire(params=CLIENT_SPELLED) as client:
        reported = {}
        for m in client.startup_messages:
            if m.type == "S":
                name, value = m.body.split(b"\0")[:2]
                if name.decode() in CLIENT_SPELLED:
                    reported[name.decode()] = value.decode()
        return reported


def test_login_parameter_status_is_postgresql_spelling(targets: list[Target]) -> None:
    direct, pooled = (_reported_at_login(t) for t in targets)
    assert direct == {
        "client_encoding": "EUC_JP",
        "DateStyle": "ISO, MDY",
        "TimeZone": "UTC",
        "IntervalStyle": "postgres",
    }
    assert pooled == direct


# ---------------------------------------- BackendKeyData in session mode


def test_session_mode_backend_key_data_is_the_servers(
    doorman: StartDoorman, pool_config: MakePoolConfig, pg_trust: TempPostgres
) -> None:
    """In session mode a client has one backend for its whole session: its BackendKeyData names that backend,
    as on a direct connection (``pg_backend_pid()`` equals the pid the client was given)."""
    proc = doorman(pool_config(pg_trust, pool_size=2, pool_mode="session"))
    with pooled_target(proc).wire() as client:
        keys = [m for m in client.startup_messages if m.type == "K"]
        assert len(keys) == 1
        pid = struct.unpack("!i", keys[0].body[:4])[0]
        assert rows(client.simple_query("select pg_backend_pid()")) == [[str(pid)]]


def test_session_mode_cancel_and_terminate_by_the_given_pid(
    doorman: StartDoorman, pool_config: MakePoolConfig, pg_trust: TempPostgres
) -> None:
    """Tools that act on the pid a session was given behave as on a direct connection: a cancel (libpq's, with
    pg_doorman's secret) stops the running query, and pg_terminate_backend() on that pid ends that session."""
    proc = doorman(pool_config(pg_trust, pool_size=2, pool_mode="session"))
    with pooled_target(proc).psycopg() as a, pooled_target(proc).psycopg() as b:
        pid = a.info.backend_pid
        assert scalar(a, "select pg_backend_pid()") == pid
        timer = threading.Timer(0.5, a.cancel)
        timer.start()
        try:
            with pytest.raises(psycopg.errors.QueryCanceled):
                a.execute("select pg_sleep(20)")
        finally:
            timer.cancel()
        assert scalar(a, "select 1") == 1  # the session goes on after the cancel
        assert scalar(b, f"select pg_terminate_backend({pid})") is True
        with pytest.raises(psycopg.OperationalError):
            a.execute("select 1")


def test_session_mode_login_waits_for_a_free_server(
    doorman: StartDoorman, pool_config: MakePoolConfig, pg_trust: TempPostgres
) -> None:
    """A session-mode client gets its server at login: with the pool busy, its login waits for one (and is
    refused with 53300 after query_wait_timeout), as its first query used to."""
    proc = doorman(pool_config(pg_trust, pool_size=1, pool_mode="session", general={"query_wait_timeout": 1000}))
    target = pooled_target(proc)
    with target.psycopg() as a:
        assert scalar(a, "select 1") == 1
        with pytest.raises(psycopg.OperationalError) as refused:
            target.psycopg()
        assert "53300" in str(refused.value) or "query_wait_timeout" in str(refused.value)
    with target.psycopg() as c:  # A is gone: its server is free again
        assert scalar(c, "select 1") == 1


# ---------------------------------------- session mode: protocol-level statements of the previous client


def _named_statement_then_next_client(target: Target) -> list[Any]:
    seen: list[Any] = []
    with target.wire() as a:
        seen.append(outcome(extended(a, "select 'secret-of-A' as v", name="_pg3_0")))
    with target.wire() as b:
        b.send(bind("", "_pg3_0"), execute(), sync())
        seen.append(outcome(b.read_until_ready()))
        seen.append(outcome(extended(b, "select 'mine' as v", name="_pg3_0")))
    return seen


def test_session_mode_named_statements_do_not_outlive_their_client(
    doorman: StartDoorman, pool_config: MakePoolConfig, pg_trust: TempPostgres
) -> None:
    proc = doorman(pool_config(pg_trust, pool_size=1, pool_mode="session"))
    direct = _named_statement_then_next_client(direct_target(pg_trust))
    assert direct == [
        ([["secret-of-A"]], []),
        ([], ['26000 prepared statement "_pg3_0" does not exist']),
        ([["mine"]], []),
    ]
    assert _named_statement_then_next_client(pooled_target(proc)) == direct


def test_asyncpg_does_not_see_another_clients_sql_prepare(single: Any) -> None:
    """The same leak as above with asyncpg (its statements are named; its EXECUTE goes through Parse)."""
    import asyncpg

    with connect(single) as a:
        a.execute("PREPARE leak_q AS SELECT 'secret-of-A'")

    async def scenario() -> Any:
        b = await asyncpg.connect(host=single.host, port=single.port, user=USER, password=PASSWORD, database=DB)
        try:
            return await b.fetch("EXECUTE leak_q")
        except asyncpg.PostgresError as exc:
            return exc.sqlstate
        finally:
            await b.close()

    assert asyncio.run(scenario()) == "26000"


# ---------------------------------------- settings changed without SET


def _set_config_then_next_client(target: Target) -> tuple[str, str]:
    with target.psycopg(prepare_threshold=None) as a:
        a.execute("select set_config('statement_timeout', '1234', false), set_config('search_path', 'leaked', false)")
    with target.psycopg(prepare_threshold=None) as b:
        row = b.execute("select current_setting('statement_timeout'), current_setting('search_path')").fetchone()
        assert row is not None
        return row[0], row[1]


@pytest.mark.parametrize("pool_mode", ["transaction", "session"])
def test_set_config_does_not_reach_the_next_client(
    doorman: StartDoorman, pool_config: MakePoolConfig, pg_trust: TempPostgres, pool_mode: str
) -> None:
    """``set_config(..., false)`` changes the session like SET but has no SET command tag: the next client of the
    backend must still start from the defaults, as a new direct session does."""
    proc = doorman(pool_config(pg_trust, pool_size=1, pool_mode=pool_mode))
    direct = _set_config_then_next_client(direct_target(pg_trust))
    assert direct == ("0", '"$user", public')
    assert _set_config_then_next_client(pooled_target(proc)) == direct


# ---------------------------------------- startup settings applied as PostgreSQL reads them


@pytest.mark.parametrize(
    ("options", "query"),
    [
        # A list setting: two schemas, not one named "iso_a,public" (which would leave no schema to create in).
        (r"-c search_path=iso_a,public", "SELECT current_schemas(false)::text, current_schema()"),
        # A backslash in a value.
        (r"-c application_name=back\\slash", "SELECT current_setting('application_name')"),
    ],
)
def test_startup_options_are_applied_as_postgresql_reads_them(targets: list[Target], options: str, query: str) -> None:
    """A client's startup settings are replayed on whichever server it lands on; the result must be the session
    PostgreSQL itself makes of the same startup packet (list settings stay lists, backslashes stay)."""
    seen = []
    for target in targets:
        with target.psycopg(options=options) as conn:
            seen.append(conn.execute(query).fetchone())
    assert seen[0] == seen[1], seen


def test_set_follows_its_client_and_only_its_client(targets: list[Target]) -> None:
    """A SET of an unreported setting lasts for the client's session, as on a direct connection (pg_doorman
    replays it on the client's next server), and never reaches another client of the same backend."""
    direct, pooled = targets
    outcomes = []
    for target in (direct, pooled):
        with target.psycopg() as a, target.psycopg() as b:
            a.execute("SET statement_timeout = '1234ms'")
            a.execute("SET search_path = iso_x, public")
            seen_by_b = b.execute("SELECT current_setting('statement_timeout'), current_setting('search_path')")
            b_row = seen_by_b.fetchone()
            a.execute("RESET search_path")
            a_row = a.execute("SELECT current_setting('statement_timeout'), current_setting('search_path')").fetchone()
            outcomes.append((a_row, b_row))
    assert outcomes[0] == outcomes[1], outcomes
    assert outcomes[1][0] == ("1234ms", '"$user", public')
