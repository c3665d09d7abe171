"""Pool limits and lifecycle: pool_size, transaction vs session mode, query_wait_timeout, max_connections,
min_pool_size, idle_timeout, server_lifetime and connect_timeout, checked against pg_stat_activity.

Tests that count backends use a private cluster (``pg_factory``), so no other test's connections are counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
import psycopg
import pytest
from psycopg import errors as pg_errors

from pg_doorman.devcluster import TempPostgres

StartDoorman = Callable[..., Any]
PoolConfig = Callable[..., dict[str, Any]]
PgFactory = Callable[..., TempPostgres]

COUNT_APP_BACKENDS = "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND backend_type = 'client backend'"


def table_name(prefix: str = "t") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def superuser(cluster: TempPostgres, db: str = "appdb") -> psycopg.Connection[Any]:
    """A direct (not pooled) superuser connection; its own backend is not counted (usename is postgres)."""
    return psycopg.connect(cluster.dsn(db=db), autocommit=True, connect_timeout=10)


def app_backends(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(COUNT_APP_BACKENDS).fetchone()
    assert row is not None
    return int(row[0])


def wait_for_backends(conn: psycopg.Connection[Any], predicate: Callable[[int], bool], timeout: float) -> int:
    """Poll the number of app backends until ``predicate`` holds; return it (fail with the last value)."""
    deadline = time.monotonic() + timeout
    while True:
        n = app_backends(conn)
        if predicate(n):
            return n
        if time.monotonic() > deadline:
            raise AssertionError(f"backend count still {n} after {timeout}s")
        time.sleep(0.05)


def backend_pid(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


@contextlib.contextmanager
def watch_socket(conn: psycopg.Connection[Any]) -> Iterator[socket.socket]:
    """A duplicate of the connection's socket, to see what the peer does after libpq has given up on it."""
    sock = socket.socket(fileno=os.dup(conn.fileno()))
    try:
        yield sock
    finally:
        sock.close()


def assert_peer_closed(sock: socket.socket, timeout: float = 3.0) -> None:
    """The pooler closed its end: reading reaches EOF (anything still buffered is skipped)."""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if sock.recv(65536) == b"":
                return
        except ConnectionResetError:
            return
        except TimeoutError:
            break
    raise AssertionError("the pooler did not close the client connection")


class Worker(threading.Thread):
    """Runs ``fn`` in a thread and keeps its result or exception; ``done`` is set when it finishes."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:
            self.error = exc
        finally:
            self.done.set()

    def outcome(self, timeout: float = 10) -> Any:
        assert self.done.wait(timeout), "worker did not finish"
        if self.error is not None:
            raise self.error
        return self.result


# ---------------------------------------------------------------- 3. pool_size is a hard limit


def test_pool_size_never_exceeded_under_concurrency(
    pg_factory: PgFactory, doorman: StartDoorman, pool_config: PoolConfig
) -> None:
    cluster = pg_factory("md5")
    proc = doorman(pool_config(cluster, pool_size=3))
    tbl = table_name("conc")
    with proc.connect(autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {tbl} (client int, n int)")
    clients, per_client = 30, 15
    start = threading.Barrier(clients + 1)

    def client(i: int) -> int:
        with proc.connect(prepare_threshold=None) as conn:
            start.wait(10)
            for n in range(per_client):
                with conn.transaction():
                    conn.execute(f"INSERT INTO {tbl} VALUES (%s, %s)", (i, n))
                    conn.execute("SELECT pg_sleep(0.002)")
            return i

    workers = [Worker(lambda i=i: client(i)) for i in range(clients)]
    for w in workers:
        w.start()
    samples = []
    with superuser(cluster) as watch:
        start.wait(10)
        while not all(w.done.is_set() for w in workers):
            samples.append(app_backends(watch))
        samples.append(app_backends(watch))
    assert sorted(w.outcome(30) for w in workers) == list(range(clients))
    assert len(samples) >= 20, f"only {len(samples)} samples taken"
    assert 0 < max(samples) <= 3, f"backend counts seen: {sorted(set(samples))}"
    assert direct_count(cluster, f"SELECT count(*) FROM {tbl}") == clients * per_client


def direct_count(cluster: TempPostgres, sql: str) -> int:
    with superuser(cluster) as conn:
        row = conn.execute(sql).fetchone()
        assert row is not None
        return int(row[0])


# ---------------------------------------------------------------- 4. transaction vs session mode


def test_transaction_mode_waits_for_commit_then_hands_server_over(
    pg_md5: TempPostgres, doorman: StartDoorman, pool_config: PoolConfig
) -> None:
    proc = doorman(pool_config(pg_md5, pool_size=1, general={"query_wait_timeout": "30s"}))
    tbl = table_name("txmode")
    with proc.connect(autocommit=True) as setup:
        setup.execute(f"CREATE TABLE {tbl} (id int)")

    with proc.connect() as a, proc.connect(autocommit=True) as b:
        # Between transactions both clients share the single server.
        a_pid = backend_pid(a)
        a.commit()
        assert backend_pid(b) == a_pid

        a.execute(f"INSERT INTO {tbl} VALUES (1)")  # BEGIN; INSERT: A now holds the only server
        assert a.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        b_worker = Worker(lambda: b.execute(f"SELECT pg_backend_pid(), count(*) FROM {tbl}").fetchone())
        b_worker.start()
        # B cannot get a server while A's transaction is open (it would see 0 rows if it ran now).
        assert not b_worker.done.wait(0.7), f"B finished while A held the server: {b_worker.result}"
        a.execute(f"INSERT INTO {tbl} VALUES (2)")  # A keeps working inside its transaction
        a.commit()
        b_pid, seen = b_worker.outcome(10)
        assert seen == 2, "B ran before A's commit"
        assert b_pid == a_pid

        # After the commit A can start another transaction on the same (released) server.
        assert backend_pid(a) == a_pid
        a.rollback()

        # A failed transaction (status 'E') still holds the server until the client rolls back.
        a.execute(f"INSERT INTO {tbl} VALUES (3)")
        with pytest.raises(pg_errors.DivisionByZero):
            a.execute("SELECT 1 / 0")
        assert a.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        b_worker = Worker(lambda: b.execute(f"SELECT count(*) FROM {tbl}").fetchone())
        b_worker.start()
        assert not b_worker.done.wait(0.5), "B got the server of a failed, still open transaction"
        a.rollback()
        assert b_worker.outcome(10) == (2,)


def test_session_mode_holds_server_for_the_session(
    pg_md5: TempPostgres, doorman: StartDoorman, pool_config: PoolConfig
) -> None:
    proc = doorman(pool_config(pg_md5, pool_mode="session", pool_size=1, general={"query_wait_timeout": "500ms"}))
    with proc.connect(autocommit=True) as a:
        a_pid = backend_pid(a)
        # Even between transactions, A keeps its server: a session-level SET survives on it.
        a.execute("SET work_mem = '7MB'")
        # B's login waits for a server (session mode lends it at login) and ends with 53300.
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError) as info:
            proc.connect(autocommit=True)
        elapsed = time.monotonic() - started
        assert "query_wait_timeout" in str(info.value)
        assert 0.4 <= elapsed < 3, elapsed
        assert backend_pid(a) == a_pid
        assert a.execute("SHOW work_mem").fetchone() == ("7MB",)
    # A's session ended: the server goes to the next client.
    deadline = time.monotonic() + 5
    while True:
        try:
            with proc.connect(autocommit=True) as c:
                assert c.execute("SELECT 42").fetchone() == (42,)
                assert c.execute("SHOW work_mem").fetchone() != ("7MB",), "session state leaked"
            break
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise


# ---------------------------------------------------------------- 5. query_wait_timeout


def test_query_wait_timeout(pg_md5: TempPostgres, doorman: StartDoorman, pool_config: PoolConfig) -> None:
    proc = doorman(pool_config(pg_md5, pool_size=1, general={"query_wait_timeout": "500ms"}))
    tbl = table_name("qwt")
    with proc.connect(autocommit=True) as setup:
        setup.execute(f"CREATE TABLE {tbl} (id int)")
    with proc.connect() as holder, proc.connect(autocommit=True) as waiter, watch_socket(waiter) as waiter_sock:
        holder.execute(f"INSERT INTO {tbl} VALUES (1)")
        started = time.monotonic()
        with pytest.raises(pg_errors.TooManyConnections) as info:
            waiter.execute("SELECT 1")
        elapsed = time.monotonic() - started
        assert info.value.sqlstate == "53300", info.value
        assert 0.4 <= elapsed < 3, elapsed
        # The waiting client's connection is closed by the pooler (EOF on the socket, not only in libpq's state).
        assert waiter.info.status == psycopg.pq.ConnStatus.BAD
        assert_peer_closed(waiter_sock)
        # The holder is unaffected: its transaction goes on and commits.
        holder.execute(f"INSERT INTO {tbl} VALUES (2)")
        holder.commit()
        assert holder.execute(f"SELECT count(*) FROM {tbl}").fetchone() == (2,)
        holder.commit()
    with proc.connect(autocommit=True) as later:
        assert later.execute(f"SELECT count(*) FROM {tbl}").fetchone() == (2,)


# ---------------------------------------------------------------- 6. max_connections


def asyncpg_login_error(proc: Any) -> tuple[str, str]:
    """(SQLSTATE, message) of a failed asyncpg login through ``proc``."""

    async def attempt() -> tuple[str, str]:
        try:
            conn = await asyncpg.connect(
                host=proc.host, port=proc.port, user="app", password="app_pass", database="appdb", timeout=10
            )
        except asyncpg.PostgresError as exc:
            return exc.sqlstate, exc.args[0] if exc.args else str(exc)
        await conn.close()
        raise AssertionError("asyncpg login succeeded")

    return asyncio.run(attempt())


def test_max_connections(pg_md5: TempPostgres, doorman: StartDoorman, pool_config: PoolConfig) -> None:
    proc = doorman(pool_config(pg_md5, pool_size=2, general={"max_connections": 3}))
    with contextlib.ExitStack() as stack:
        conns = [stack.enter_context(proc.connect(autocommit=True)) for _ in range(3)]
        for i, conn in enumerate(conns):
            assert conn.execute("SELECT %s::int", (i,)).fetchone() == (i,)
        # libpq drops the SQLSTATE of a login failure; asyncpg keeps it.
        with pytest.raises(psycopg.OperationalError, match="sorry, too many clients already"):
            proc.connect()
        assert asyncpg_login_error(proc) == ("53300", "sorry, too many clients already")
        # The connections already in are unaffected.
        assert conns[0].execute("SELECT 'ok'").fetchone() == ("ok",)
        conns[2].close()
        # A freed slot can be used again (the pooler may notice the close a moment later).
        deadline = time.monotonic() + 5
        while True:
            try:
                extra = proc.connect(autocommit=True)
                break
            except psycopg.OperationalError as exc:
                assert exc.sqlstate == "53300"
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        with extra:
            assert extra.execute("SELECT 'again'").fetchone() == ("again",)


# ---------------------------------------------------------------- 11. lifecycle knobs


def test_min_pool_size_and_idle_timeout(pg_factory: PgFactory, doorman: StartDoorman, pool_config: PoolConfig) -> None:
    cluster = pg_factory("md5")  # md5 passthrough: the pooler can log in before any client did
    with superuser(cluster) as watch:
        assert app_backends(watch) == 0
        users = [{"username": "app", "min_pool_size": 2}]
        proc = doorman(pool_config(cluster, users=users, pool_size=5, idle_timeout="1s"))
        # min_pool_size servers are opened without any client.
        assert wait_for_backends(watch, lambda n: n >= 2, timeout=5) == 2
        time.sleep(1.5)  # and they are kept (not idle-timed-out) while nobody used them
        assert app_backends(watch) == 2

        # Five clients in simultaneous transactions need five servers.
        conns = [proc.connect() for _ in range(5)]
        try:
            pids = {backend_pid(c) for c in conns}
            assert len(pids) == 5
            assert app_backends(watch) == 5
        finally:
            for c in conns:
                c.rollback()
                c.close()
        released = time.monotonic()
        # idle_timeout closes the idle servers above min_pool_size ...
        samples = []
        deadline = released + 5
        while time.monotonic() < deadline:
            samples.append(app_backends(watch))
            if samples[-1] == 2 and time.monotonic() - released > 0.5:
                break
            time.sleep(0.02)
        elapsed = time.monotonic() - released
        assert samples[-1] == 2, f"backend counts after release: {samples}"
        assert 0.7 <= elapsed <= 4.5, elapsed
        # ... never going below min_pool_size, and keeps exactly min_pool_size afterwards.
        assert min(samples) >= 2, f"pool dropped below min_pool_size: {samples}"
        for _ in range(20):
            assert app_backends(watch) == 2
            time.sleep(0.05)


def test_server_lifetime_replaces_servers(pg_md5: TempPostgres, doorman: StartDoorman, pool_config: PoolConfig) -> None:
    proc = doorman(pool_config(pg_md5, pool_size=1, server_lifetime="1s"))
    with proc.connect(autocommit=True) as conn:
        first = backend_pid(conn)
        assert backend_pid(conn) == first  # reused while young
        time.sleep(1.5)  # lifetime is 1 s +/- 20 %
        second = backend_pid(conn)
        assert second != first
        with superuser(pg_md5) as watch:
            gone = watch.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (first,)).fetchone()
            assert gone == (0,), "the expired backend is still connected"


@pytest.fixture
def silent_peer() -> Iterator[int]:
    """A fake peer for a hang PostgreSQL cannot produce: it accepts TCP connections and never says a word."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.1)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept_loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            accepted.append(conn)

    thread = threading.Thread(target=accept_loop, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(2)
    listener.close()
    for conn in accepted:
        conn.close()


def test_connect_timeout_to_silent_server(
    pg_md5: TempPostgres, silent_peer: int, doorman: StartDoorman, pool_config: PoolConfig
) -> None:
    config = pool_config(pg_md5, pool_size=2, connect_timeout="1s")
    config["pools"]["appdb"]["server_port"] = silent_peer
    proc = doorman(config)
    for _ in range(2):  # the first login waits for the pool's first server; later ones too while none exists
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError) as info:
            proc.connect(connect_timeout=10)
        elapsed = time.monotonic() - started
        assert 0.8 <= elapsed < 4, elapsed
        assert "timeout" in str(info.value).lower(), info.value
