"""Query cancellation through pg_doorman.

A CancelRequest carries pg_doorman's own (pid, secret) from BackendKeyData; pg_doorman forwards it to the backend
currently running that client's query, and to no other.  Checked with psycopg (``cancel_safe``/``cancel``),
asyncpg (timeout → cancel), psql (SIGINT) and raw CancelRequests with right and wrong keys, in transaction and
session mode, including pool_size 1 where several clients share one backend.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import asyncpg
import psycopg
import pytest
from psycopg import errors
from wire_client import RawWire, error_map, md5_verifier, query, startup_packet

from pg_doorman.devcluster import TempPostgres

StartDoorman = Callable[..., Any]
PoolConfig = Callable[..., dict[str, Any]]

HOST = "127.0.0.1"
IO_TIMEOUT = 10.0
CANCEL_CODE = 80877102
QUICK = 5.0  # a canceled pg_sleep(30) must end well within this
PASSWORDS = {"app": "app_pass", "app2": "app2_pass"}


# ---------------------------------------------------------------- helpers


class RawClient(RawWire):
    """A raw-protocol client (md5 login) that remembers the BackendKeyData pg_doorman gave it."""

    def __init__(self, port: int, user: str = "app") -> None:
        super().__init__(port, IO_TIMEOUT, HOST)
        self.port = port
        msgs = self.login({"user": user, "database": "appdb"}, PASSWORDS[user])
        keys = [body for kind, body in msgs if kind == b"K"]
        assert len(keys) == 1, msgs
        self.pid, self.secret = struct.unpack("!ii", keys[0])

    def send_query(self, sql: str) -> None:
        self.send(query(sql))

    def result(self) -> tuple[str | None, list[tuple[bytes, bytes]]]:
        """Read up to ReadyForQuery; (SQLSTATE of an ErrorResponse or None, messages)."""
        msgs = self.read_until(b"Z")
        for kind, body in msgs:
            if kind == b"E":
                return error_map(body).get("C"), msgs
        return None, msgs

    def run(self, sql: str) -> tuple[str | None, list[tuple[bytes, bytes]]]:
        self.send_query(sql)
        return self.result()


def send_cancel(port: int, pid: int, secret: int) -> None:
    """A CancelRequest on its own connection; pg_doorman answers nothing and closes it."""
    with socket.create_connection((HOST, port), timeout=IO_TIMEOUT) as sock:
        sock.sendall(struct.pack("!iiii", 16, CANCEL_CODE, pid, secret))
        assert sock.recv(1) == b""


def active_queries(cluster: TempPostgres, tag: str) -> list[int]:
    """PIDs of backends currently running a query containing ``tag``."""
    out = cluster.psql(
        f"select pid from pg_stat_activity where state = 'active' and pid <> pg_backend_pid() and query like '%{tag}%'"
    )
    return [int(line) for line in out.splitlines() if line]


def wait_active(cluster: TempPostgres, tag: str, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = active_queries(cluster, tag)
        if pids:
            return pids[0]
        time.sleep(0.05)
    raise AssertionError(f"no active query tagged {tag} within {timeout}s")


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.monotonic()
    return fn(), time.monotonic() - started


@pytest.fixture
def pool_executor() -> Any:
    with ThreadPoolExecutor(max_workers=8) as executor:
        yield executor


def make_doorman(
    cluster: TempPostgres, doorman: StartDoorman, pool_config: PoolConfig, mode: str = "transaction", size: int = 4
) -> Any:
    users = [{"username": name, "password": md5_verifier(PASSWORDS[name], name)} for name in ("app", "app2")]
    return doorman(pool_config(cluster, users, pool_mode=mode, pool_size=size))


# ---------------------------------------------------------------- psycopg


@pytest.mark.parametrize("mode", ["transaction", "session"])
@pytest.mark.parametrize("method", ["cancel_safe", "cancel"])
def test_psycopg_cancel(
    pg_trust: TempPostgres,
    doorman: StartDoorman,
    pool_config: PoolConfig,
    pool_executor: ThreadPoolExecutor,
    mode: str,
    method: str,
) -> None:
    proc = make_doorman(pg_trust, doorman, pool_config, mode)
    tag = f"psycopg_{method}_{mode}"
    with psycopg.connect(proc.dsn(), autocommit=True, connect_timeout=10) as conn:
        before = conn.execute("select pg_backend_pid()").fetchone()
        running: Future[Any] = pool_executor.submit(
            lambda: timed(lambda: conn.execute(f"select pg_sleep(30) /* {tag} */"))
        )
        wait_active(pg_trust, tag)
        getattr(conn, method)()
        started = time.monotonic()
        with pytest.raises(errors.QueryCanceled) as info:
            running.result(timeout=QUICK + 5)
        assert time.monotonic() - started < QUICK
        assert info.value.sqlstate == "57014"
        assert "canceling statement due to user request" in str(info.value)
        # The connection goes on.
        assert conn.execute("select 'still here'").fetchone() == ("still here",)
        after = conn.execute("select pg_backend_pid()").fetchone()
        if mode == "transaction":
            # A backend that was the target of a cancel is not lent out again.
            assert before != after
        assert not active_queries(pg_trust, tag)


def test_psycopg_cancel_inside_transaction(
    pg_trust: TempPostgres, doorman: StartDoorman, pool_config: PoolConfig, pool_executor: ThreadPoolExecutor
) -> None:
    proc = make_doorman(pg_trust, doorman, pool_config, "transaction", size=1)
    tag = "cancel_in_tx"
    with psycopg.connect(proc.dsn(), connect_timeout=10) as conn:
        conn.execute("create temp table if not exists t (x int)")  # opens a transaction
        running = pool_executor.submit(lambda: conn.execute(f"select pg_sleep(30) /* {tag} */"))
        wait_active(pg_trust, tag)
        conn.cancel_safe()
        with pytest.raises(errors.QueryCanceled):
            running.result(timeout=QUICK)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        conn.rollback()
        assert conn.execute("select 1").fetchone() == (1,)
        conn.commit()
    # Another client gets a clean server afterwards (pool_size 1).
    with psycopg.connect(proc.dsn(user="app"), autocommit=True, connect_timeout=10) as other:
        assert other.execute("select 2").fetchone() == (2,)
        assert other.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


# ---------------------------------------------------------------- raw keys


def test_wrong_secret_does_nothing_right_secret_cancels(
    pg_trust: TempPostgres, doorman: StartDoorman, pool_config: PoolConfig
) -> None:
    proc = make_doorman(pg_trust, doorman, pool_config)
    client = RawClient(proc.port)
    try:
        tag = "wrong_secret"
        client.send_query(f"select pg_sleep(1.5) /* {tag} */")
        wait_active(pg_trust, tag)
        send_cancel(proc.port, client.pid, client.secret ^ 0x5A5A5A5A)
        send_cancel(proc.port, client.pid + 1000, client.secret)
        (state, msgs), took = timed(client.result)
        assert state is None, "a CancelRequest with a wrong key must not cancel anything"
        assert any(kind == b"C" for kind, _ in msgs)
        assert took > 0.3
        tag = "right_secret"
        client.send_query(f"select pg_sleep(30) /* {tag} */")
        wait_active(pg_trust, tag)
        send_cancel(proc.port, client.pid, client.secret)
        (state, msgs), took = timed(client.result)
        assert state == "57014"
        assert took < QUICK
        assert msgs[-1] == (b"Z", b"I")
        assert client.run("select 1")[0] is None
    finally:
        client.close()


def test_cancel_for_idle_client_does_not_hit_the_shared_server(
    pg_trust: TempPostgres, doorman: StartDoorman, pool_config: PoolConfig
) -> None:
    """pool_size 1: A is between transactions, B runs on the only server. A's key must not cancel B."""
    proc = make_doorman(pg_trust, doorman, pool_config, "transaction", size=1)
    a = RawClient(proc.port)
    b = RawClient(proc.port)
    try:
        state, msgs = a.run("select pg_backend_pid()")
        assert state is None
        a_backend = int(next(body for kind, body in msgs if kind == b"D")[6:])
        tag = "b_on_shared_server"
        b.send_query(f"select pg_sleep(1.5) /* {tag} */")
        b_backend = wait_active(pg_trust, tag)
        assert a_backend == b_backend, "pool_size 1: both clients use the same backend"
        for _ in range(3):
            send_cancel(proc.port, a.pid, a.secret)
        (state, _), took = timed(b.result)
        assert state is None, "B's query was canceled by a cancel meant for idle A"
        assert took > 0.3
        # A and B both still work and B's own key still cancels B.
        assert a.run("select 1")[0] is None
        tag = "b_own_cancel"
        b.send_query(f"select pg_sleep(30) /* {tag} */")
        wait_active(pg_trust, tag)
        send_cancel(proc.port, b.pid, b.secret)
        assert b.result()[0] == "57014"
        assert a.run("select 1")[0] is None
    finally:
        a.close()
        b.close()


def test_cancel_picks_the_right_client_among_several_on_one_server(
    pg_trust: TempPostgres, doorman: StartDoorman, pool_config: PoolConfig
) -> None:
    """Transaction mode, pool_size 1: A runs, B and C wait for the server; cancels for B/C do not hit A.

    C's own cancel cancels C's queued query before it reaches a server (57014 at once, A still running)."""
    proc = make_doorman(pg_trust, doorman, pool_config, "transaction", size=1)
    a, b, c = RawClient(proc.port), RawClient(proc.port, "app"), RawClient(proc.port)
    try:
        assert len({a.pid, b.pid, c.pid}) == 3
        a.send_query("select pg_sleep(30) /* several_a */")
        wait_active(pg_trust, "several_a")
        b.send_query("select 'b done', pg_sleep(0.2) /* several_b */")
        c.send_query("select 'c done', pg_sleep(0.2) /* several_c */")
        time.sleep(0.3)  # B and C are queued behind A now
        send_cancel(proc.port, b.pid, b.secret ^ 1)  # wrong secret for B
        send_cancel(proc.port, c.pid, c.secret)  # C is waiting: its queued query is canceled, nothing else
        (state, msgs), took = timed(c.result)
        assert state == "57014" and took < QUICK
        assert msgs[-1] == (b"Z", b"I")
        time.sleep(0.3)
        assert active_queries(pg_trust, "several_a"), "A's query must still be running"
        send_cancel(proc.port, a.pid, a.secret)
        (state, _), took = timed(a.result)
        assert state == "57014"
        assert took < QUICK
        state, msgs = b.result()
        assert state is None, "B's query was canceled"
        assert any(kind == b"D" and b"b done" in body for kind, body in msgs)
        state, msgs = c.run("select 'c done'")
        assert state is None and any(kind == b"D" and b"c done" in body for kind, body in msgs)
        # Now B runs a long query; canceling B leaves A and C alone.
        b.send_query("select pg_sleep(30) /* several_b2 */")
        wait_active(pg_trust, "several_b2")
        a.send_query("select 'a again' /* several_a2 */")
        send_cancel(proc.port, b.pid, b.secret)
        assert b.result()[0] == "57014"
        state, msgs = a.result()
        assert state is None
        assert c.run("select 1")[0] is None
    finally:
        for client in (a, b, c):
            client.close()


def test_cancel_after_client_left_is_ignored(
    pg_trust: TempPostgres, doorman: StartDoorman, pool_config: PoolConfig
) -> None:
    """A key of a disconnected client must not reach whoever now uses its old server."""
    proc = make_doorman(pg_trust, doorman, pool_config, "transaction", size=1)
    gone = RawClient(proc.port)
    gone_pid, gone_secret = gone.pid, gone.secret
    assert gone.run("select 1")[0] is None
    gone.close()
    stays = RawClient(proc.port)
    try:
        stays.send_query("select pg_sleep(1.2) /* after_left */")
        wait_active(pg_trust, "after_left")
        send_cancel(proc.port, gone_pid, gone_secret)
        assert stays.result()[0] is None
    finally:
        stays.close()


def test_cancel_after_ssl_request_on_the_same_socket(
    pg_trust: TempPostgres, doorman: StartDoorman, pool_config: PoolConfig
) -> None:
    """libpq 17+ with sslmode=prefer sends SSLRequest, gets 'N', then the CancelRequest on the same socket."""
    proc = make_doorman(pg_trust, doorman, pool_config)
    client = RawClient(proc.port)
    try:
        client.send_query("select pg_sleep(30) /* ssl_then_cancel */")
        wait_active(pg_trust, "ssl_then_cancel")
        with socket.create_connection((HOST, proc.port), timeout=IO_TIMEOUT) as sock:
            sock.sendall(struct.pack("!ii", 8, 80877103))
            assert sock.recv(1) == b"N"
            sock.sendall(struct.pack("!iiii", 16, CANCEL_CODE, client.pid, client.secret))
            assert sock.recv(1) == b""
        (state, _), took = timed(client.result)
        assert state == "57014"
        assert took < QUICK
    finally:
        client.close()


def test_cancel_is_honoured_at_max_connections(
    pg_trust: TempPostgres, doorman: StartDoorman, pool_config: PoolConfig
) -> None:
    """With every client slot taken, a CancelRequest (its own short connection) still gets through."""
    users = [{"username": "app", "password": md5_verifier("app_pass", "app")}]
    proc = doorman(pool_config(pg_trust, users, pool_size=2, general={"max_connections": 2}))
    a, b = RawClient(proc.port), RawClient(proc.port)
    try:
        with socket.create_connection((HOST, proc.port), timeout=IO_TIMEOUT) as sock:
            sock.sendall(startup_packet({"user": "app", "database": "appdb"}))
            head = sock.recv(5)
            assert head[:1] == b"E"
        a.send_query("select pg_sleep(30) /* at_max_connections */")
        wait_active(pg_trust, "at_max_connections")
        send_cancel(proc.port, a.pid, a.secret)
        (state, _), took = timed(a.result)
        assert state == "57014"
        assert took < QUICK
        assert b.run("select 1")[0] is None
    finally:
        a.close()
        b.close()


# ---------------------------------------------------------------- asyncpg and psql


def test_asyncpg_timeout_cancels_and_connection_survives(
    pg_trust: TempPostgres, doorman: StartDoorman, pool_config: PoolConfig
) -> None:
    proc = make_doorman(pg_trust, doorman, pool_config, "session")

    async def scenario() -> None:
        conn = await asyncpg.connect(
            host=HOST, port=proc.port, user="app", password="app_pass", database="appdb", ssl=False, timeout=10
        )
        try:
            started = time.monotonic()
            with pytest.raises(asyncio.TimeoutError):
                await conn.execute("select pg_sleep(30) /* asyncpg_timeout */", timeout=0.5)
            assert time.monotonic() - started < QUICK
            assert await conn.fetchval("select 41 + 1") == 42
            assert not active_queries(pg_trust, "asyncpg_timeout")
        finally:
            await conn.close()

    asyncio.run(scenario())


def test_psql_sigint_cancels(pg_trust: TempPostgres, doorman: StartDoorman, pool_config: PoolConfig) -> None:
    proc = make_doorman(pg_trust, doorman, pool_config)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")} | {"PGPASSWORD": "app_pass"}
    psql = subprocess.Popen(
        [
            "psql",
            "-X",
            "-h",
            HOST,
            "-p",
            str(proc.port),
            "-U",
            "app",
            "-d",
            "appdb",
            "-c",
            "select pg_sleep(30) /* psql_sigint */",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_active(pg_trust, "psql_sigint")
        started = time.monotonic()
        psql.send_signal(signal.SIGINT)
        _, stderr = psql.communicate(timeout=QUICK + 5)
        assert time.monotonic() - started < QUICK
        assert "canceling statement due to user request" in stderr
        assert psql.returncode == 1
    finally:
        if psql.poll() is None:
            psql.kill()
            psql.wait()
    assert not active_queries(pg_trust, "psql_sigint")
    with psycopg.connect(proc.dsn(), connect_timeout=10) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
