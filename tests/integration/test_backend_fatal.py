"""A backend that ends its session itself gives the client one FATAL through pg_doorman, as it does directly.

PostgreSQL sends its own FATAL ErrorResponse and closes when a session is terminated (pg_terminate_backend,
idle_in_transaction_session_timeout, idle_session_timeout, a fast shutdown). pg_doorman forwards that error and
closes the client after it, adding nothing; only a backend that dies without a word (SIGKILL, a crash) gets
pg_doorman's own 08006. Each scenario counts the ErrorResponse messages the client reads before EOF, and where a
direct connection can show the same thing, compares with it.
"""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg_helpers import connect, scalar, wait_until
from wire_client import Msg, WireClient, WireClosed, error_map, query

from pg_doorman.devcluster import TempPostgres

StartDoorman = Callable[..., Any]
MakePoolConfig = Callable[..., dict[str, Any]]
PgFactory = Callable[..., TempPostgres]

MODES = ["session", "transaction"]
PASSWORD = "app_pass"


# ---------------------------------------- helpers


def login(host: str, port: int) -> WireClient:
    return WireClient.connect(host, port, user="app", database="appdb", password=PASSWORD)


def read_to_eof(client: WireClient, timeout: float = 10.0) -> list[Msg]:
    """Every message until the peer closes; fails if it stays open for ``timeout``."""
    try:
        client.read_until(lambda _msg: False, timeout, what="the end of the connection")
    except WireClosed as closed:
        return closed.received
    raise AssertionError("unreachable")  # read_until only returns on a match


def errors(received: list[Msg]) -> list[tuple[str, str]]:
    """(severity, SQLSTATE) of each ErrorResponse."""
    out = []
    for msg in received:
        if msg.type == "E":
            fields = error_map(msg.body)
            out.append((fields.get("V", fields.get("S", "?")), fields.get("C", "?")))
    return out


def backend_pid(client: WireClient, sql: str = "select pg_backend_pid()") -> int:
    """Run ``sql`` (its last result's first column is a backend pid) and return that pid."""
    got = client.simple_query(sql)
    rows = [m for m in got if m.type == "D"]
    assert rows and not errors(got), got
    length = struct.unpack_from("!i", rows[-1].body, 2)[0]
    return int(rows[-1].body[6 : 6 + length])


def terminate(pg: TempPostgres, pid: int) -> None:
    with psycopg.connect(pg.dsn(db="appdb"), autocommit=True) as su:
        assert scalar(su, "select pg_terminate_backend(%s)", (pid,)) is True


def wait_running(pg: TempPostgres, pid: int, fragment: str) -> None:
    """Until backend ``pid`` is running a statement that contains ``fragment``."""

    def running() -> bool:
        with psycopg.connect(pg.dsn(db="appdb"), autocommit=True) as su:
            row = su.execute("select state, query from pg_stat_activity where pid = %s", (pid,)).fetchone()
        return row is not None and row[0] == "active" and fragment in row[1]

    wait_until(running, what=f"backend {pid} running {fragment!r}")


def wait_server_dropped(proc: Any, pid: int) -> None:
    """Until pg_doorman has closed its server ``pid`` that ended while idle (or in its reset query)."""
    proc.wait_for_log(re.compile(rf"server pid={pid}\b[^\n]*closing it"))


def assert_healthy(proc: Any) -> None:
    """pg_doorman still runs, met no bug, and its pool lends servers again (a replacement for the dead one)."""
    assert proc.returncode is None
    log = proc.log_text()
    assert "internal error" not in log and "Traceback" not in log, proc.log_tail()
    with connect(proc) as conn:
        assert scalar(conn, "select 41 + 1") == 42


# ---------------------------------------- pg_terminate_backend


def terminated_tail(pg: TempPostgres, host: str, port: int, *, hold: str, running: bool) -> list[tuple[str, str]]:
    """Errors a client reads to EOF when its backend is terminated: idle (after ``hold``) or with a query
    running. ``hold`` ends with a statement that returns the backend's pid."""
    client = login(host, port)
    try:
        pid = backend_pid(client, hold)
        if running:
            client.send(query("select pg_sleep(30)"))
            wait_running(pg, pid, "pg_sleep(30)")
        terminate(pg, pid)
        return errors(read_to_eof(client))
    finally:
        client.close()


@pytest.mark.parametrize("running", [False, True], ids=["idle", "running"])
@pytest.mark.parametrize("mode", MODES)
def test_terminated_backend_gives_one_fatal_like_a_direct_connection(
    doorman: StartDoorman, pool_config: MakePoolConfig, pg_trust: TempPostgres, mode: str, running: bool
) -> None:
    proc = doorman(pool_config(pg_trust, pool_size=1, pool_mode=mode))
    # In transaction mode a client holds its server only inside a transaction.
    hold = "begin; select pg_backend_pid()" if mode == "transaction" else "select pg_backend_pid()"
    direct = terminated_tail(pg_trust, "127.0.0.1", pg_trust.port, hold=hold, running=running)
    pooled = terminated_tail(pg_trust, proc.host, proc.port, hold=hold, running=running)
    assert direct == [("FATAL", "57P01")]
    assert pooled == direct
    assert_healthy(proc)  # pool_size 1: the dead server was replaced


@pytest.mark.parametrize("mode", MODES)
def test_psycopg_sees_admin_shutdown_once(
    doorman: StartDoorman, pool_config: MakePoolConfig, pg_trust: TempPostgres, mode: str
) -> None:
    """A real driver reports the server's own error (AdminShutdown, 57P01), not a pooler's connection failure."""
    proc = doorman(pool_config(pg_trust, pool_size=2, pool_mode=mode))
    conn = connect(proc)
    try:
        pid = scalar(conn, "select pg_backend_pid()")  # session mode: this session's backend
        if mode == "transaction":
            conn.execute("begin")
            pid = scalar(conn, "select pg_backend_pid()")
        timer = threading.Timer(0.3, terminate, (pg_trust, pid))
        timer.start()
        try:
            with pytest.raises(psycopg.errors.AdminShutdown) as raised:
                conn.execute("select pg_sleep(30)")
        finally:
            timer.join()
        assert raised.value.sqlstate == "57P01"
        assert conn.closed or conn.broken
    finally:
        conn.close()
    assert_healthy(proc)


# ---------------------------------------- timeouts set through the pool's connection


@pytest.mark.parametrize("mode", MODES)
def test_idle_in_transaction_timeout_gives_one_fatal(
    doorman: StartDoorman, pool_config: MakePoolConfig, pg_trust: TempPostgres, mode: str
) -> None:
    proc = doorman(pool_config(pg_trust, pool_size=1, pool_mode=mode))
    sql = "begin; set local idle_in_transaction_session_timeout = '200ms'; select 1"
    tails = []
    for host, port in (("127.0.0.1", pg_trust.port), (proc.host, proc.port)):
        client = login(host, port)
        try:
            got = client.simple_query(sql)
            assert client.last_status == "T" and not errors(got)
            tails.append(errors(read_to_eof(client)))  # nothing sent: the timeout ends the session
        finally:
            client.close()
    assert tails[0] == [("FATAL", "25P03")]
    assert tails[1] == tails[0]
    assert_healthy(proc)


def test_idle_session_timeout_gives_one_fatal_in_session_mode(
    doorman: StartDoorman, pool_config: MakePoolConfig, pg_trust: TempPostgres
) -> None:
    proc = doorman(pool_config(pg_trust, pool_size=1, pool_mode="session"))
    tails = []
    for host, port in (("127.0.0.1", pg_trust.port), (proc.host, proc.port)):
        client = login(host, port)
        try:
            assert not errors(client.simple_query("set idle_session_timeout = '200ms'"))
            tails.append(errors(read_to_eof(client)))
        finally:
            client.close()
    assert tails[0] == [("FATAL", "57P05")]
    assert tails[1] == tails[0]
    assert_healthy(proc)


# ---------------------------------------- servers idle in the pool


def test_server_terminated_idle_in_the_pool_touches_no_client(
    doorman: StartDoorman, pool_config: MakePoolConfig, pg_trust: TempPostgres
) -> None:
    """Transaction mode: between transactions the client holds no server; its server's end is not its business."""
    proc = doorman(pool_config(pg_trust, pool_size=1, pool_mode="transaction"))
    client = login(proc.host, proc.port)
    try:
        pid = backend_pid(client)  # the transaction ended: the server is idle in the pool
        terminate(pg_trust, pid)
        wait_server_dropped(proc, pid)
        readable, _, _ = select.select([client.sock], [], [], 0.3)
        assert not readable, "the client was sent something"
        assert backend_pid(client) != pid  # a replacement serves its next transaction
    finally:
        client.close()
    assert_healthy(proc)


def test_session_server_terminated_after_its_client_left_touches_the_next_one_not(
    doorman: StartDoorman, pool_config: MakePoolConfig, pg_trust: TempPostgres
) -> None:
    proc = doorman(pool_config(pg_trust, pool_size=1, pool_mode="session"))
    first = login(proc.host, proc.port)
    pid = backend_pid(first)
    first.close()  # its server runs the reset query, then waits in the pool
    terminate(pg_trust, pid)
    wait_server_dropped(proc, pid)
    second = login(proc.host, proc.port)
    try:
        assert backend_pid(second) != pid
    finally:
        second.close()
    assert_healthy(proc)


# ---------------------------------------- backends that die without a word


def test_killed_backend_gets_one_08006_from_pg_doorman(
    doorman: StartDoorman, pool_config: MakePoolConfig, pg_factory: PgFactory
) -> None:
    """SIGKILL: no FATAL from PostgreSQL, so pg_doorman's 08006 is the one error. PostgreSQL then restarts every
    backend (crash recovery); the other session hears at most a WARNING from its backend and gets the 08006 too."""
    pg = pg_factory()
    proc = doorman(pool_config(pg, pool_size=2, pool_mode="session"))
    victim = login(proc.host, proc.port)
    bystander = login(proc.host, proc.port)
    try:
        pid = backend_pid(victim)
        backend_pid(bystander)
        os.kill(pid, signal.SIGKILL)
        victim_tail = read_to_eof(victim)
        assert errors(victim_tail) == [("FATAL", "08006")], victim_tail
        bystander_tail = read_to_eof(bystander)
        assert errors(bystander_tail) == [("FATAL", "08006")], bystander_tail
        assert all(msg.type in "NE" for msg in bystander_tail), bystander_tail
    finally:
        victim.close()
        bystander.close()

    def recovered() -> bool:
        try:
            with connect(proc) as conn:
                return bool(scalar(conn, "select 1") == 1)
        except psycopg.Error:
            return False

    wait_until(recovered, timeout=30, what="PostgreSQL to recover and the pool to lend again")
    assert_healthy(proc)


@pytest.mark.parametrize("mode", MODES)
def test_fast_shutdown_gives_one_fatal(
    doorman: StartDoorman, pool_config: MakePoolConfig, pg_factory: PgFactory, mode: str
) -> None:
    """pg_ctl stop -m fast: each backend says 57P01 itself, and that stays the only error."""
    pg = pg_factory()
    proc = doorman(pool_config(pg, pool_size=1, pool_mode=mode))
    client = login(proc.host, proc.port)
    try:
        backend_pid(client, "begin; select pg_backend_pid()" if mode == "transaction" else "select pg_backend_pid()")
        stopper = threading.Thread(target=pg.stop)
        stopper.start()
        tail = read_to_eof(client)
        stopper.join(60)
        assert errors(tail) == [("FATAL", "57P01")], tail
    finally:
        client.close()
    assert proc.returncode is None


# ---------------------------------------- hostile: the client leaves at the same moment


@pytest.mark.parametrize("mode", MODES)
def test_client_leaving_while_its_backend_is_terminated(
    doorman: StartDoorman, pool_config: MakePoolConfig, pg_trust: TempPostgres, mode: str
) -> None:
    """The client closes (politely or with a reset) while its backend is being terminated; pg_doorman must neither
    trip nor lend the dying server to the next client, and its pool keeps its size."""
    proc = doorman(pool_config(pg_trust, pool_size=2, pool_mode=mode, server_reset_query=""))
    hold = "begin; select pg_backend_pid()" if mode == "transaction" else "select pg_backend_pid()"
    with psycopg.connect(pg_trust.dsn(db="appdb"), autocommit=True) as su:
        for round_no in range(12):
            client = login(proc.host, proc.port)
            pid = backend_pid(client, hold)
            # With a timeout pg_terminate_backend waits until the backend is gone (its FATAL and EOF sent).
            killer = threading.Thread(target=su.execute, args=("select pg_terminate_backend(%s, 5000)", (pid,)))
            killer.start()
            if round_no % 3 == 0:
                client.send(b"X\x00\x00\x00\x04")  # Terminate
            elif round_no % 3 == 1:
                client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
            else:
                time.sleep(0.001 * round_no)  # a moment later, without a word
            client.close()
            killer.join(10)
            # The very next client is served by a live server.
            follower = login(proc.host, proc.port)
            try:
                assert backend_pid(follower) != pid
            finally:
                follower.close()
    # Both slots still lend: two transactions at once.
    a, b = connect(proc, autocommit=False), connect(proc, autocommit=False)
    try:
        pids = {scalar(a, "select pg_backend_pid()"), scalar(b, "select pg_backend_pid()")}
        assert len(pids) == 2
    finally:
        a.close()
        b.close()
    assert_healthy(proc)
