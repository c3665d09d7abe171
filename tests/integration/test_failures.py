"""PostgreSQL failures seen through pg_doorman: down at start, killed mid-query, restarted, backends terminated.

Every test that stops or kills PostgreSQL uses a private cluster from ``pg_factory``.
"""

from __future__ import annotations

import hashlib
import select
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg_helpers import close_quietly, connect, drop_socket, scalar
from wire_client import error_map

from pg_doorman.devcluster import TempPostgres

StartDoorman = Callable[..., Any]
MakePoolConfig = Callable[..., dict[str, Any]]
PgFactory = Callable[..., TempPostgres]

DEFAULT_SEARCH_PATH = '"$user", public'


# ---------------------------------------- helpers


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


class RawLogin:
    """A minimal protocol-3 client (md5 or no password) that records every message of the login."""

    def __init__(self, host: str, port: int, user: str, password: str, database: str) -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.user, self.password = user, password
        body = struct.pack("!I", 196608) + b"".join(
            k.encode() + b"\0" + v.encode() + b"\0" for k, v in (("user", user), ("database", database))
        )
        self.sock.sendall(struct.pack("!I", len(body) + 4) + body + b"\0")
        self.buf = b""

    def _message(self) -> tuple[str, bytes] | None:
        while True:
            if len(self.buf) >= 5:
                length = struct.unpack_from("!I", self.buf, 1)[0]
                if len(self.buf) >= 1 + length:
                    kind, body = chr(self.buf[0]), self.buf[5 : 1 + length]
                    self.buf = self.buf[1 + length :]
                    return kind, body
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buf += chunk

    def run(self) -> tuple[list[tuple[str, bytes]], bool]:
        """Log in; return the messages up to ReadyForQuery or EOF, and whether the pooler closed the socket."""
        got: list[tuple[str, bytes]] = []
        while True:
            msg = self._message()
            if msg is None:
                return got, True
            got.append(msg)
            kind, body = msg
            if kind == "R" and struct.unpack_from("!I", body)[0] == 5:
                inner = hashlib.md5((self.password + self.user).encode()).hexdigest()
                digest = "md5" + hashlib.md5(inner.encode() + body[4:8]).hexdigest()
                payload = digest.encode() + b"\0"
                self.sock.sendall(b"p" + struct.pack("!I", len(payload) + 4) + payload)
            elif kind == "Z":
                return got, False
            elif kind == "E":
                # After a FATAL error the pooler must close the connection.
                rest = self._message()
                return got + ([rest] if rest else []), rest is None

    def close(self) -> None:
        self.sock.close()


def run_in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Run ``fn`` in a thread; the dict gets ``result`` or ``error`` and ``elapsed``."""
    out: dict[str, Any] = {}

    def target() -> None:
        t0 = time.monotonic()
        try:
            out["result"] = fn()
        except BaseException as exc:
            out["error"] = exc
        out["elapsed"] = time.monotonic() - t0

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


def assert_pool_works(proc: Any, clients: int = 4) -> None:
    """Several clients at once run a transaction and get their own answers."""
    conns = [connect(proc) for _ in range(clients)]
    try:
        threads = []
        for i, conn in enumerate(conns):

            def work(conn: psycopg.Connection[Any] = conn, i: int = i) -> Any:
                with conn.transaction():
                    return conn.execute("select %s::int, pg_sleep(0.05)::text", (i,)).fetchone()

            threads.append(run_in_thread(work))
        for i, (thread, out) in enumerate(threads):
            thread.join(15)
            assert "error" not in out, f"client {i}: {out.get('error')!r}"
            assert out["result"][0] == i
    finally:
        for conn in conns:
            close_quietly(conn)


# ---------------------------------------- PostgreSQL down when pg_doorman starts


def test_postgres_down_at_startup_then_up(
    doorman: StartDoorman, pool_config: MakePoolConfig, pg_factory: PgFactory
) -> None:
    pg = pg_factory("md5")
    config = pool_config(pg, pool_size=2, general={"connect_timeout": "2s"})
    pg.stop()
    proc = doorman(config)

    for _ in range(2):  # the second try must not hang on a half-failed first attempt either
        t0 = time.monotonic()
        raw = RawLogin(proc.host, proc.port, "app", "app_pass", "appdb")
        try:
            messages, closed = raw.run()
        finally:
            raw.close()
        elapsed = time.monotonic() - t0
        errors = [error_map(body) for kind, body in messages if kind == "E"]
        assert errors, f"expected an ErrorResponse, got {[k for k, _ in messages]}"
        code = errors[0]["C"]
        assert code.startswith("08") or code.startswith("57P0"), errors[0]
        assert errors[0]["S"] == "FATAL"
        assert "Z" not in [k for k, _ in messages]
        assert closed, "the pooler must close the connection after the error"
        assert elapsed < 3.0, f"error took {elapsed:.1f}s"

    # A real driver sees a clean failure too.
    with pytest.raises(psycopg.OperationalError):
        connect(proc, connect_timeout=5)
    assert proc.returncode is None, "pg_doorman must keep running"

    pg.start()
    with connect(proc) as conn:
        assert scalar(conn, "select current_user") == "app"
    assert_pool_works(proc)


# ---------------------------------------- PostgreSQL killed mid-query


def test_postgres_killed_mid_query(doorman: StartDoorman, pool_config: MakePoolConfig, pg_factory: PgFactory) -> None:
    pg = pg_factory("trust")
    proc = doorman(pool_config(pg, pool_size=3, general={"connect_timeout": "2s", "query_wait_timeout": "3s"}))
    sleeper = connect(proc)
    idle = connect(proc)
    assert scalar(idle, "select 1") == 1

    thread, out = run_in_thread(lambda: sleeper.execute("select pg_sleep(10)").fetchone())
    wait_until(
        lambda: pg.psql("select count(*) from pg_stat_activity where query like 'select pg_sleep(10)%'") == "1",
        what="pg_sleep to be running",
    )
    t0 = time.monotonic()
    pg.kill()
    thread.join(8)
    assert not thread.is_alive(), "the client is still waiting for its query after PostgreSQL died"
    assert isinstance(out.get("error"), psycopg.OperationalError), out
    assert out["error"].sqlstate in (None, "08006", "57P01", "57P02"), out["error"].sqlstate
    assert time.monotonic() - t0 < 3.0
    with pytest.raises(psycopg.OperationalError):
        sleeper.execute("select 1")
    assert sleeper.closed
    close_quietly(sleeper)

    # While PostgreSQL is down, a query fails cleanly instead of hanging.
    t0 = time.monotonic()
    with pytest.raises(psycopg.OperationalError):
        idle.execute("select 1")
    assert time.monotonic() - t0 < 5.0
    close_quietly(idle)
    assert proc.returncode is None

    pg.start()
    with connect(proc) as conn:
        assert scalar(conn, "select 1") == 1
    assert_pool_works(proc, clients=6)


# ---------------------------------------- PostgreSQL restarted while clients are idle


def test_postgres_restart_while_clients_idle(
    doorman: StartDoorman, pool_config: MakePoolConfig, pg_factory: PgFactory
) -> None:
    pg = pg_factory("trust")
    proc = doorman(pool_config(pg, pool_size=3, general={"connect_timeout": "2s"}))
    idle_clients = [connect(proc) for _ in range(3)]
    # Warm the pool: three servers open at once.
    barrier = threading.Barrier(3)

    def warm(conn: psycopg.Connection[Any]) -> Any:
        with conn.transaction():
            pid = scalar(conn, "select pg_backend_pid()")
            barrier.wait(5)  # all three hold a server at once
            return pid

    warmups = [run_in_thread(lambda c=c: warm(c)) for c in idle_clients]
    old_pids = set()
    for thread, out in warmups:
        thread.join(10)
        assert "error" not in out, out
        old_pids.add(out["result"])
    assert len(old_pids) == 3
    in_tx = connect(proc, autocommit=False)
    assert scalar(in_tx, "select 1") == 1  # holds a server inside a transaction (pool now has 3 + waiting)

    pg.restart()

    for conn in idle_clients:
        # Between transactions a client owns no backend: its next query runs on a fresh one.
        assert scalar(conn, "select pg_backend_pid()") not in old_pids
        assert scalar(conn, "select 2") == 2
    t0 = time.monotonic()
    with pytest.raises(psycopg.OperationalError):
        in_tx.execute("select 1")
    assert time.monotonic() - t0 < 3.0
    close_quietly(in_tx)
    for conn in idle_clients:
        conn.close()
    with connect(proc) as conn:
        assert scalar(conn, "select 3") == 3
    assert_pool_works(proc)
    assert proc.returncode is None


# ---------------------------------------- backend terminated under an idle-in-transaction client


def test_terminated_backend_of_idle_in_transaction_client(
    doorman: StartDoorman, pool_config: MakePoolConfig, pg_trust: TempPostgres
) -> None:
    proc = doorman(pool_config(pg_trust, pool_size=2))
    a = connect(proc, autocommit=False)
    b = connect(proc)
    try:
        pid_a = scalar(a, "select pg_backend_pid()")  # BEGIN; select ... : a now holds this backend
        pid_b = scalar(b, "select pg_backend_pid()")
        assert pid_a != pid_b
        with psycopg.connect(pg_trust.dsn(db="appdb"), autocommit=True) as su:
            assert scalar(su, "select pg_terminate_backend(%s)", (pid_a,)) is True

        # The client learns at once, without sending anything: the pooler writes to / closes its socket.
        readable, _, _ = select.select([a.fileno()], [], [], 3.0)
        assert readable, "client was not told that its backend died"
        t0 = time.monotonic()
        with pytest.raises(psycopg.OperationalError) as excinfo:
            a.execute("select 1")
        assert time.monotonic() - t0 < 1.0
        assert excinfo.value.sqlstate in (None, "57P01", "08006"), excinfo.value.sqlstate
        assert a.closed

        # Others continue; the pool has both slots again.
        assert scalar(b, "select pg_backend_pid()") == pid_b
        barrier = threading.Barrier(2)
        conns = [b, connect(proc)]

        def hold(conn: psycopg.Connection[Any]) -> Any:
            with conn.transaction():
                pid = scalar(conn, "select pg_backend_pid()")
                barrier.wait(5)
                return pid

        runs = [run_in_thread(lambda c=c: hold(c)) for c in conns]
        pids = []
        for thread, out in runs:
            thread.join(10)
            assert "error" not in out, out
            pids.append(out["result"])
        assert len(set(pids)) == 2 and pid_a not in pids
        conns[1].close()
    finally:
        close_quietly(a)
        close_quietly(b)


# ---------------------------------------- many clients, some dying mid-transaction


def test_clients_killed_mid_transaction_under_contention(
    doorman: StartDoorman, pool_config: MakePoolConfig, pg_trust: TempPostgres
) -> None:
    table = f"fail_{uuid.uuid4().hex[:12]}"
    pg_trust.psql(
        f"CREATE TABLE {table} (client int, n int, marker text); ALTER TABLE {table} OWNER TO app;", db="appdb"
    )
    proc = doorman(pool_config(pg_trust, pool_size=2, general={"query_wait_timeout": "20s"}))
    clients, rounds = 20, 12
    good_rows: dict[int, int] = {}
    failures: list[str] = []

    def victim_round(me: int, n: int) -> None:
        conn = connect(proc, autocommit=False)
        try:
            conn.execute(f"INSERT INTO {table} VALUES (%s, %s, 'poison')", (me, n))
            conn.execute("SET statement_timeout = '1ms'")
            conn.execute("SET search_path = poison")
            if n % 2:
                conn.pgconn.send_query(b"select pg_sleep(0.2)")  # dies with a query in flight
                conn.pgconn.flush()
            drop_socket(conn)
        finally:
            close_quietly(conn)

    def worker(me: int) -> None:
        try:
            conn = connect(proc)
            done = 0
            for n in range(rounds):
                if me % 2 and n % 3 == 1:
                    victim_round(me, n)
                    continue
                with conn.transaction():
                    row = conn.execute(
                        "select txid_current_if_assigned(), current_setting('search_path'),"
                        " current_setting('statement_timeout')"
                    ).fetchone()
                    assert row == (None, DEFAULT_SEARCH_PATH, "0"), f"client {me} round {n} inherited {row}"
                    conn.execute(f"INSERT INTO {table} VALUES (%s, %s, 'good')", (me, n))
                    mine = scalar(conn, f"select count(*) from {table} where client = %s and marker = 'good'", (me,))
                    assert mine == done + 1, f"client {me} round {n}: sees {mine} rows, expected {done + 1}"
                done += 1
                assert scalar(conn, "select %s::text", (f"{me}:{n}",)) == f"{me}:{n}"
            good_rows[me] = done
            conn.close()
        except BaseException as exc:
            failures.append(f"client {me}: {exc!r}")

    try:
        threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        assert not any(t.is_alive() for t in threads), "some clients hung"
        assert failures == []
        expected = {me: rounds - (len(range(1, rounds, 3)) if me % 2 else 0) for me in range(clients)}
        assert good_rows == expected
        with psycopg.connect(pg_trust.dsn(db="appdb"), autocommit=True) as su:
            counts = dict(su.execute(f"select marker, count(*) from {table} group by marker").fetchall())
        assert counts == {"good": sum(expected.values())}, "a dead client's insert became visible"
        assert_pool_works(proc, clients=2)
    finally:
        pg_trust.psql(f"DROP TABLE IF EXISTS {table}", db="appdb")
