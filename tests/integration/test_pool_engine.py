"""Pool engine settings against a real PostgreSQL, with psycopg clients, counted in pg_stat_activity:
max_db_connections (a cap over all users of a database, eviction of another user's idle servers,
min_connection_lifetime, min_guaranteed_pool_size), reserve_pool_size/reserve_pool_timeout, retain_connections_max,
proxy_copy_data_timeout and max_memory_usage.

One private cluster for the module (backends of other tests' poolers would be counted otherwise).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg_helpers import close_quietly, connect, drop_socket, scalar, wait_until

from conftest import new_cluster
from pg_doorman.devcluster import TempPostgres

StartDoorman = Callable[..., Any]
PoolConfig = Callable[..., dict[str, Any]]

COUNT = "SELECT count(*) FROM pg_stat_activity WHERE usename IN ('app', 'app2') AND backend_type = 'client backend'"
COUNT_OF = "SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND backend_type = 'client backend'"


@pytest.fixture(scope="module")
def pg() -> Iterator[TempPostgres]:
    cluster = new_cluster("md5")
    yield cluster
    cluster.cleanup()


@pytest.fixture
def watch(pg: TempPostgres) -> Iterator[psycopg.Connection[Any]]:
    """A direct superuser connection (not counted), once the previous test's backends are gone."""
    with psycopg.connect(pg.dsn(db="appdb"), autocommit=True, connect_timeout=10) as conn:
        wait_until(lambda: backends(conn) == 0, timeout=10, what="no app backends left from earlier tests")
        yield conn


def backends(conn: psycopg.Connection[Any], user: str | None = None) -> int:
    row = conn.execute(COUNT).fetchone() if user is None else conn.execute(COUNT_OF, (user,)).fetchone()
    assert row is not None
    return int(row[0])


class Sampler(threading.Thread):
    """Counts app/app2 backends every 10 ms on its own connection; ``peak`` is the largest count seen."""

    def __init__(self, pg: TempPostgres) -> None:
        super().__init__(daemon=True)
        self.conn = psycopg.connect(pg.dsn(db="appdb"), autocommit=True, connect_timeout=10)
        self.peak = 0
        self.samples = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.peak = max(self.peak, backends(self.conn))
            self.samples += 1
            time.sleep(0.01)

    def __enter__(self) -> Sampler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.join(5)
        self.conn.close()


def two_users(pg: TempPostgres, pool_config: PoolConfig, *, pool_size: int = 2, **pool: Any) -> dict[str, Any]:
    general = pool.pop("general", {})
    return pool_config(
        pg,
        users=[{"username": "app", "pool_size": pool_size}, {"username": "app2", "pool_size": pool_size}],
        general={"query_wait_timeout": "3s", **general},
        **pool,
    )


def warm(proc: Any, user: str, n: int) -> None:
    """Make ``user``'s pool open ``n`` servers (n clients in transactions at once), then leave them idle."""
    conns = [connect(proc, user=user, autocommit=False) for _ in range(n)]
    try:
        pids = {scalar(c, "SELECT pg_backend_pid()") for c in conns}
        assert len(pids) == n
    finally:
        for c in conns:
            c.rollback()
            c.close()


# ------------------------------------------------------------------------- max_db_connections


def test_max_db_connections_caps_all_users_and_evicts_idle_servers_of_another(
    pg: TempPostgres, watch: psycopg.Connection[Any], doorman: StartDoorman, pool_config: PoolConfig
) -> None:
    proc = doorman(two_users(pg, pool_config, max_db_connections=2, min_connection_lifetime=0))
    with Sampler(pg) as sampler:
        warm(proc, "app", 2)
        assert backends(watch, "app") == 2
        # app2 needs a server while app's two servers sit idle: one of them is closed to make room.
        with connect(proc, user="app2", autocommit=False) as b:
            assert scalar(b, "SELECT current_user") == "app2"
            assert backends(watch, "app2") == 1
            assert backends(watch, "app") == 1
            # Both servers busy (b holds app2's, a1 app's): app2's second client waits; it gets the slot that a1
            # frees when its transaction ends and its server goes idle (then evicted).
            a1 = connect(proc, user="app", autocommit=False)
            try:
                assert scalar(a1, "SELECT 1") == 1
                result: list[Any] = []
                b2_thread = threading.Thread(
                    target=lambda: result.append(scalar(connect(proc, user="app2"), "SELECT 'b2'")), daemon=True
                )
                b2_thread.start()
                time.sleep(0.5)
                assert not result, "app2's second client got a server while the database was full"
                a1.rollback()
                b2_thread.join(5)
                assert result == ["b2"]
            finally:
                close_quietly(a1)
        assert sampler.samples > 20
    assert sampler.peak <= 2, f"{sampler.peak} backends for max_db_connections=2"
    assert "to make room" in proc.log_text()


def test_min_connection_lifetime_keeps_young_idle_servers(
    pg: TempPostgres, watch: psycopg.Connection[Any], doorman: StartDoorman, pool_config: PoolConfig
) -> None:
    config = two_users(pg, pool_config, max_db_connections=2, min_connection_lifetime="1h")
    config["general"]["query_wait_timeout"] = "1s"
    proc = doorman(config)
    warm(proc, "app", 2)
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError) as failure:
        connect(proc, user="app2")
    assert 0.8 < time.monotonic() - started < 5
    assert "all server connections to database 'appdb' are in use (max=2, user='app2')" in str(failure.value)
    assert backends(watch, "app") == 2 and backends(watch, "app2") == 0
    # The idle servers were kept, and still serve their own user.
    with connect(proc, user="app") as a:
        assert scalar(a, "SELECT 1") == 1


def test_min_guaranteed_pool_size_is_never_evicted(
    pg: TempPostgres, watch: psycopg.Connection[Any], doorman: StartDoorman, pool_config: PoolConfig
) -> None:
    config = two_users(pg, pool_config, max_db_connections=3, min_connection_lifetime=0, min_guaranteed_pool_size=2)
    config["general"]["query_wait_timeout"] = "1s"
    proc = doorman(config)
    warm(proc, "app", 2)
    warm(proc, "app2", 1)
    assert backends(watch) == 3
    # app2 wants a second server: app holds only its guaranteed two, so nothing may be evicted.
    b1 = connect(proc, user="app2", autocommit=False)
    try:
        assert scalar(b1, "SELECT 1") == 1
        with pytest.raises(psycopg.OperationalError) as failure, connect(proc, user="app2") as b2:
            scalar(b2, "SELECT 2")
        assert failure.value.sqlstate == "53300"
    finally:
        close_quietly(b1)
    assert backends(watch, "app") == 2


def test_eviction_racing_checkouts_never_fails_a_client_nor_passes_the_cap(
    pg: TempPostgres, watch: psycopg.Connection[Any], doorman: StartDoorman, pool_config: PoolConfig
) -> None:
    """Both users keep checking out and returning servers while each evicts the other's idle ones."""
    config = two_users(pg, pool_config, max_db_connections=2, min_connection_lifetime=0)
    config["general"]["query_wait_timeout"] = "10s"
    proc = doorman(config)
    errors: list[BaseException] = []
    counts: dict[str, int] = {"app": 0, "app2": 0}
    stop = time.monotonic() + 3

    def worker(user: str, pause: float) -> None:
        try:
            with connect(proc, user=user) as conn:
                while time.monotonic() < stop:
                    assert scalar(conn, "SELECT current_user") == user
                    counts[user] += 1
                    time.sleep(pause)
        except BaseException as exc:
            errors.append(exc)

    with Sampler(pg) as sampler:
        threads = [
            threading.Thread(target=worker, args=("app", 0.005), daemon=True),
            threading.Thread(target=worker, args=("app", 0.02), daemon=True),
            threading.Thread(target=worker, args=("app2", 0.01), daemon=True),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
    assert not errors, errors
    assert counts["app"] > 10 and counts["app2"] > 10, counts
    assert sampler.peak <= 2, f"{sampler.peak} backends for max_db_connections=2"


# ------------------------------------------------------------------------- reserve pool


def test_reserve_opens_only_after_reserve_pool_timeout_and_is_released(
    pg: TempPostgres, watch: psycopg.Connection[Any], doorman: StartDoorman, pool_config: PoolConfig
) -> None:
    proc = doorman(
        pool_config(
            pg,
            pool_size=1,
            reserve_pool_size=1,
            reserve_pool_timeout="1s",
            min_connection_lifetime="1s",
            general={"query_wait_timeout": "5s"},
        )
    )
    holder = connect(proc, autocommit=False)
    try:
        assert scalar(holder, "SELECT 1") == 1
        started = time.monotonic()
        with connect(proc) as waiter:
            assert scalar(waiter, "SELECT 'reserve'") == "reserve"
            waited = time.monotonic() - started
            assert 0.9 <= waited < 3, waited
            assert backends(watch) == 2
    finally:
        holder.rollback()
        holder.close()
    # Idle for min_connection_lifetime, the connection above pool_size is closed again.
    wait_until(lambda: backends(watch) == 1, timeout=6, what="the reserve connection to be released")
    assert "reserve connection" in proc.log_text()


def test_reserve_above_max_db_connections_and_a_client_leaving_with_it(
    pg: TempPostgres, watch: psycopg.Connection[Any], doorman: StartDoorman, pool_config: PoolConfig
) -> None:
    """The database's reserve lets a user past max_db_connections after reserve_pool_timeout; its client dies in
    the middle of a transaction: the server is rolled back (or closed) and, idle for min_connection_lifetime,
    released, so the database goes back under the cap."""
    config = two_users(
        pg,
        pool_config,
        max_db_connections=1,
        reserve_pool_size=1,
        reserve_pool_timeout="500ms",
        min_connection_lifetime="1s",
    )
    proc = doorman(config)
    a = connect(proc, user="app", autocommit=False)
    try:
        assert scalar(a, "SELECT 1") == 1
        started = time.monotonic()
        b = connect(proc, user="app2", autocommit=False)  # login waits for the reserve (no evictable server)
        assert scalar(b, "SELECT current_user") == "app2"
        assert 0.4 <= time.monotonic() - started < 3
        assert backends(watch) == 2
        drop_socket(b)  # gone mid-transaction while holding the reserve connection
        b.close()
        wait_until(lambda: backends(watch, "app2") == 0, timeout=6, what="the reserve server to be released")
        assert backends(watch) == 1
    finally:
        a.rollback()
        a.close()
    with connect(proc, user="app2") as again:  # evicts app's idle server (older than 1 s by now)
        assert scalar(again, "SELECT current_user") == "app2"
    assert backends(watch) == 1
    with connect(proc, user="app") as a2:
        assert scalar(a2, "SELECT 1") == 1


# ------------------------------------------------------------------------- retain_connections_max


def test_retain_connections_max_limits_closes_per_run(
    pg: TempPostgres, watch: psycopg.Connection[Any], doorman: StartDoorman, pool_config: PoolConfig
) -> None:
    config = two_users(pg, pool_config, pool_size=3, idle_timeout="1s", general={"retain_connections_max": 1})
    proc = doorman(config)
    warm(proc, "app", 3)
    warm(proc, "app2", 3)
    assert backends(watch) == 6
    wait_until(lambda: backends(watch) < 6, timeout=5, what="the first idle close")
    first = time.monotonic()
    time.sleep(1.6)  # two more maintenance runs at most: one close each
    assert backends(watch) >= 3, "more than one idle server closed per maintenance run"
    wait_until(lambda: backends(watch) == 0, timeout=10, what="all idle servers to close")
    assert time.monotonic() - first >= 3.5  # six closes, one per second


# ------------------------------------------------------------------------- proxy_copy_data_timeout


def test_stalled_copy_ends_the_client_and_closes_the_server(
    pg: TempPostgres, watch: psycopg.Connection[Any], doorman: StartDoorman, pool_config: PoolConfig
) -> None:
    proc = doorman(pool_config(pg, pool_size=1, general={"proxy_copy_data_timeout": "1s"}))
    with connect(proc) as setup:
        setup.execute("CREATE TABLE IF NOT EXISTS copy_target (n int, pad text)")
        setup.execute("TRUNCATE copy_target")
    # A COPY that keeps sending, slowly, is not stalled (rows over psycopg's 32 KiB buffer go out at once).
    with connect(proc) as slow:
        with slow.cursor().copy("COPY copy_target FROM STDIN") as copy:
            for n in range(5):
                copy.write_row((n, "x" * 40_000))
                time.sleep(0.6)
        assert scalar(slow, "SELECT count(*) FROM copy_target") == 5
    stalled = connect(proc)
    pid = scalar(stalled, "SELECT pg_backend_pid()")
    try:
        with pytest.raises(psycopg.OperationalError), stalled.cursor().copy("COPY copy_target FROM STDIN") as copy:
            copy.write_row((99, "x" * 40_000))
            time.sleep(4)  # nothing more: the pooler gives up after 1 s without a byte either way
    finally:
        close_quietly(stalled)
    assert "made no progress" in proc.log_text()
    wait_until(
        lambda: scalar(watch, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)) == 0,
        timeout=5,
        what="the stalled COPY's backend to be gone",
    )
    with connect(proc) as after:  # a fresh server, and the stalled row was never committed
        assert scalar(after, "SELECT pg_backend_pid()") != pid
        assert scalar(after, "SELECT count(*) FROM copy_target WHERE n = 99") == 0


# ------------------------------------------------------------------------- max_memory_usage


def test_max_memory_usage_refuses_new_and_waiting_clients_but_not_the_admin_console(
    pg: TempPostgres, watch: psycopg.Connection[Any], doorman: StartDoorman, pool_config: PoolConfig
) -> None:
    proc = doorman(pool_config(pg, pool_size=1, general={"max_memory_usage": "1GB", "query_wait_timeout": "5s"}))
    holder = connect(proc, autocommit=False)
    idle = connect(proc)
    try:
        assert scalar(holder, "SELECT 1") == 1
        # The same file with a limit below what any Python process holds.
        text = proc.config_path.read_text().replace("max_memory_usage: 1GB", "max_memory_usage: 1MB")
        assert "max_memory_usage: 1MB" in text
        proc.config_path.write_text(text)
        after = len(proc.log_text())
        proc.send_signal(signal.SIGHUP)
        proc.wait_for_log("over max_memory_usage", after=after)
        with pytest.raises(psycopg.OperationalError) as refused:
            connect(proc)
        assert "Server is temporarily out of memory" in str(refused.value)  # libpq gives no SQLSTATE at login
        # A client that would have to wait for the only server (held by `holder`) is refused too ...
        with pytest.raises(psycopg.OperationalError) as waiting:
            scalar(idle, "SELECT 'queued'")
        assert waiting.value.sqlstate == "53200"
        # ... while the client inside its transaction goes on, and the admin console still logs in.
        assert scalar(holder, "SELECT 2") == 2
        holder.commit()
        admin = psycopg.connect(proc.admin_dsn(), autocommit=True, connect_timeout=5)
        admin.close()
    finally:
        close_quietly(holder)
        close_quietly(idle)
    proc.config_path.write_text(text.replace("max_memory_usage: 1MB", "max_memory_usage: 0"))
    proc.send_signal(signal.SIGHUP)
    wait_until(lambda: _connects(proc), timeout=5, what="clients to be accepted with max_memory_usage: 0")


def _connects(proc: Any) -> bool:
    try:
        with connect(proc) as conn:
            return bool(scalar(conn, "SELECT true"))
    except psycopg.OperationalError:
        return False
