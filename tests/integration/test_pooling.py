"""Pooling through pg_doorman with real clients: psql, pgbench, psycopg 3, asyncpg, COPY and streaming.

Every test starts its own pg_doorman process (``doorman`` fixture) in front of a shared or private cluster and
checks results, not only the absence of errors.  Tables get a unique name per test so reruns and other test
files sharing the session clusters never collide.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from psycopg import errors as pg_errors
from wire_client import md5_password_message, md5_verifier, startup_packet

from pg_doorman.devcluster import TempPostgres

PSQL = "/usr/bin/psql"
PGBENCH = "/usr/bin/pgbench"

StartDoorman = Callable[..., Any]
PoolConfig = Callable[..., dict[str, Any]]


# ---------------------------------------------------------------- helpers


def table_name(prefix: str = "t") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def tool_env(password: str | None = "app_pass") -> dict[str, str]:
    """Environment for psql/pgbench: no PG* variables from outside, a password, no psqlrc surprises."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    env["PGCONNECT_TIMEOUT"] = "10"
    if password is not None:
        env["PGPASSWORD"] = password
    return env


def run_tool(
    argv: list[str], *, input_text: str | None = None, timeout: float = 60, cwd: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        argv, input=input_text, capture_output=True, text=True, env=tool_env(), timeout=timeout, cwd=cwd, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


def psql_argv(host: str, port: int, *extra: str, user: str = "app", db: str = "appdb") -> list[str]:
    return [
        PSQL,
        "-X",
        "-A",
        "-t",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        host,
        "-p",
        str(port),
        "-U",
        user,
        "-d",
        db,
        *extra,
    ]


def superuser(cluster: TempPostgres, db: str = "appdb") -> psycopg.Connection[Any]:
    """A direct (not pooled) superuser connection to ``cluster``."""
    return psycopg.connect(cluster.dsn(db=db), autocommit=True, connect_timeout=10)


def direct_scalar(cluster: TempPostgres, sql: str, db: str = "appdb") -> Any:
    with superuser(cluster, db) as conn:
        row = conn.execute(sql).fetchone()
        assert row is not None
        return row[0]


# ---------------------------------------------------------------- 1. psql


def test_psql_queries_multistatement_and_copy(
    pg_md5: TempPostgres, doorman: StartDoorman, pool_config: PoolConfig, tmp_path: Path
) -> None:
    proc = doorman(pool_config(pg_md5, pool_size=2))
    tbl = table_name("psql")

    def psql(*args: str, input_text: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_tool(psql_argv(proc.host, proc.port, *args), input_text=input_text, cwd=tmp_path, check=check)

    assert psql("-c", "SELECT current_user, current_database(), 40 + 2").stdout.strip() == "app|appdb|42"

    # Several statements in one simple Query: psql 15 prints every result; they share one implicit transaction.
    out = psql(
        "-c",
        f"CREATE TABLE {tbl} (id int PRIMARY KEY, name text); "
        f"INSERT INTO {tbl} VALUES (1, 'one'), (2, 'two'); SELECT count(*) FROM {tbl}; SELECT 'done'",
    )
    assert out.stdout.split() == ["2", "done"]

    # An error in the middle of a multi-statement query rolls back the whole implicit transaction ...
    bad = psql(
        "-c", f"INSERT INTO {tbl} VALUES (3, 'three'); SELECT 1/0; INSERT INTO {tbl} VALUES (4, 'four')", check=False
    )
    assert bad.returncode != 0
    assert "division by zero" in bad.stderr
    # ... and the pooled server is healthy for the next client.
    assert psql("-c", f"SELECT string_agg(id::text, ',' ORDER BY id) FROM {tbl}").stdout.strip() == "1,2"

    # A script with an explicit transaction, fed on stdin statement by statement.
    script = (
        f"BEGIN;\nINSERT INTO {tbl} VALUES (10, 'ten');\nSELECT count(*) FROM {tbl};\n"
        f"COMMIT;\nSELECT max(id) FROM {tbl};\n"
    )
    assert psql("-f", "-", input_text=script).stdout.split() == ["3", "10"]

    # \copy in and out (COPY FROM STDIN / TO STDOUT through the pooler).
    src = tmp_path / "in.csv"
    rows = [f"{i},name {i}" for i in range(100, 5100)]
    src.write_text("\n".join(rows) + "\n", encoding="utf-8")
    psql("-c", f"\\copy {tbl} FROM '{src}' WITH (FORMAT csv)")
    assert psql("-c", f"SELECT count(*), sum(id) FROM {tbl}").stdout.strip() == (
        f"{3 + len(rows)}|{1 + 2 + 10 + sum(range(100, 5100))}"
    )
    dst = tmp_path / "out.csv"
    psql("-c", f"\\copy (SELECT id, name FROM {tbl} WHERE id >= 100 ORDER BY id) TO '{dst}' WITH (FORMAT csv)")
    assert dst.read_text(encoding="utf-8").splitlines() == rows

    # A failing \copy (duplicate key) ends the COPY with an error; the next command works.
    dup = psql("-c", f"\\copy {tbl} FROM '{src}' WITH (FORMAT csv)", check=False)
    assert dup.returncode != 0 and "duplicate key" in dup.stderr
    assert psql("-c", f"SELECT count(*) FROM {tbl}").stdout.strip() == str(3 + len(rows))
    assert direct_scalar(pg_md5, f"SELECT count(*) FROM {tbl}") == 3 + len(rows)


# ---------------------------------------------------------------- 2. pgbench


def pgbench_result(output: str) -> tuple[int, int, int]:
    """(processed, expected, failed) from pgbench's summary."""
    processed = re.search(r"number of transactions actually processed: (\d+)(?:/(\d+))?", output)
    assert processed is not None, output
    failed = re.search(r"number of failed transactions: (\d+)", output)
    assert failed is not None, output
    done = int(processed.group(1))
    expected = int(processed.group(2)) if processed.group(2) else done
    return done, expected, int(failed.group(1))


@pytest.fixture(scope="module")
def pgbench_cluster() -> Iterator[TempPostgres]:
    """A private md5 cluster for this module's pgbench runs, initialised (``pgbench -i``) directly on PostgreSQL."""
    cluster = TempPostgres(auth="md5", users={"app": "app_pass", "app2": "app2_pass"})
    try:
        cluster.start()
        cluster.create_database("appdb", owner="app")
        run_tool([PGBENCH, "-i", "-q", "-s", "1", "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "app", "appdb"])
        yield cluster
    finally:
        cluster.cleanup()


def pgbench(proc: Any, *args: str, timeout: float = 60) -> tuple[int, int, int]:
    out = run_tool([PGBENCH, "-h", proc.host, "-p", str(proc.port), "-U", "app", "-n", *args, "appdb"], timeout=timeout)
    return pgbench_result(out.stdout + out.stderr)


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_pgbench_select_only(
    protocol: str, pgbench_cluster: TempPostgres, doorman: StartDoorman, pool_config: PoolConfig
) -> None:
    proc = doorman(pool_config(pgbench_cluster, pool_size=4))
    # Fixed number of transactions: the count must be exact.
    done, expected, failed = pgbench(proc, "-S", "-M", protocol, "-c", "20", "-j", "2", "-t", "50")
    assert failed == 0
    assert done == expected == 1000
    # Fixed duration: some work done, nothing failed.
    done, _, failed = pgbench(proc, "-S", "-M", protocol, "-c", "20", "-j", "2", "-T", "2")
    assert failed == 0
    assert done > 100
    # The pooler never opened more than pool_size backends for the 20 clients.
    assert len(pgbench_cluster.backend_pids(user="app")) <= 4


def test_pgbench_tpcb_like_no_lost_transactions(
    pgbench_cluster: TempPostgres, doorman: StartDoorman, pool_config: PoolConfig
) -> None:
    proc = doorman(pool_config(pgbench_cluster, pool_size=3))
    history_before = direct_scalar(pgbench_cluster, "SELECT count(*) FROM pgbench_history")
    done, expected, failed = pgbench(proc, "-c", "10", "-j", "2", "-t", "50")
    assert failed == 0
    assert done == expected == 500
    # Every transaction pgbench counted left exactly one history row, and the balances add up.
    with superuser(pgbench_cluster) as conn:
        history, delta_sum = conn.execute("SELECT count(*), coalesce(sum(delta), 0) FROM pgbench_history").fetchone()
        assert history - history_before == done
        for table, column in (
            ("pgbench_accounts", "abalance"),
            ("pgbench_tellers", "tbalance"),
            ("pgbench_branches", "bbalance"),
        ):
            (balance,) = conn.execute(f"SELECT sum({column}) FROM {table}").fetchone()
            assert balance == delta_sum, table
    done2, _, failed2 = pgbench(proc, "-M", "extended", "-c", "10", "-j", "2", "-t", "20")
    assert failed2 == 0 and done2 == 200
    assert direct_scalar(pgbench_cluster, "SELECT count(*) FROM pgbench_history") == history_before + 700


# ---------------------------------------------------------------- 7. psycopg 3


def test_psycopg_parameters_executemany_pipeline(
    pg_scram: TempPostgres, doorman: StartDoorman, pool_config: PoolConfig
) -> None:
    proc = doorman(pool_config(pg_scram, pool_size=2))
    tbl = table_name("pg3")
    # prepare_threshold=None: unnamed statements only (named ones in transaction mode are another issue).
    with proc.connect(autocommit=True, prepare_threshold=None) as conn:
        conn.execute(f"CREATE TABLE {tbl} (id int PRIMARY KEY, label text, amount numeric)")
        row = conn.execute(
            "SELECT %s::int + %s::int, %s::text || 'x', %s::numeric * 2", (40, 2, "ab", "1.25")
        ).fetchone()
        assert row is not None
        assert row[0] == 42 and row[1] == "abx" and str(row[2]) == "2.50"
        assert conn.execute("SELECT %s::int IS NULL", (None,)).fetchone() == (True,)
        # Binary parameters and results.
        with conn.cursor(binary=True) as cur:
            assert cur.execute("SELECT %b::bytea", (b"\x00\x01\xff",)).fetchone() == (b"\x00\x01\xff",)

        with conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO {tbl} (id, label, amount) VALUES (%s, %s, %s)",
                [(i, f"label {i}", i * 10) for i in range(1, 501)],
            )
            assert cur.rowcount == 500
            cur.executemany(
                f"UPDATE {tbl} SET amount = amount + %s WHERE id = %s RETURNING id, amount",
                [(1, 1), (2, 2), (3, 3)],
                returning=True,
            )
            returned = []
            while True:
                returned.append(cur.fetchone())
                if not cur.nextset():
                    break
            assert returned == [(1, 11), (2, 22), (3, 33)]
        assert conn.execute(f"SELECT count(*), sum(amount) FROM {tbl}").fetchone() == (500, 1252506)

        with conn.pipeline():
            c1 = conn.execute("SELECT %s::int * 2", (21,))
            c2 = conn.execute(f"INSERT INTO {tbl} VALUES (%s, %s, %s) RETURNING label", (1000, "piped", 0))
            c3 = conn.execute(f"SELECT label FROM {tbl} WHERE id = %s", (1000,))
            c4 = conn.execute("SELECT generate_series(1, %s)", (5,))
        assert c1.fetchone() == (42,)
        assert c2.fetchone() == ("piped",)
        assert c3.fetchone() == ("piped",)
        assert [r[0] for r in c4.fetchall()] == [1, 2, 3, 4, 5]

        # An error inside a pipeline: the failed batch is reported, the connection keeps working.
        with pytest.raises(pg_errors.DivisionByZero), conn.pipeline():
            conn.execute("SELECT %s::int", (1,))
            conn.execute("SELECT 1 / %s::int", (0,))
            conn.execute("SELECT %s::int", (3,))
        assert conn.execute("SELECT %s::int", (7,)).fetchone() == (7,)
        assert direct_scalar(pg_scram, f"SELECT label FROM {tbl} WHERE id = 1000") == "piped"


def test_pipelines_from_many_clients_share_one_server(
    pg_md5: TempPostgres, doorman: StartDoorman, pool_config: PoolConfig
) -> None:
    """Clients pipelining several Syncs at once on one server: replies never go to the wrong client."""
    proc = doorman(pool_config(pg_md5, pool_size=1))
    clients, rounds, per_sync = 6, 15, 4

    def client(i: int) -> list[int]:
        got: list[int] = []
        with proc.connect(autocommit=True, prepare_threshold=None) as conn:
            for r in range(rounds):
                with conn.pipeline() as p:
                    cursors = []
                    for s in range(3):  # three Syncs in flight per pipeline
                        for k in range(per_sync):
                            cursors.append(conn.execute("SELECT %s::int", (i * 100_000 + r * 100 + s * 10 + k,)))
                        p.sync()
                got.extend(row[0] for cur in cursors for row in cur.fetchall())
        return got

    results: dict[int, list[int]] = {}
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = client(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    for i in range(clients):
        expected = [
            i * 100_000 + r * 100 + s * 10 + k for r in range(rounds) for s in range(3) for k in range(per_sync)
        ]
        assert results[i] == expected


def test_psycopg_errors_transactions_and_rollback(
    pg_md5: TempPostgres, doorman: StartDoorman, pool_config: PoolConfig
) -> None:
    proc = doorman(pool_config(pg_md5, pool_size=1))
    tbl = table_name("pg3tx")
    with proc.connect(autocommit=True, prepare_threshold=None) as conn:
        conn.execute(f"CREATE TABLE {tbl} (id int PRIMARY KEY)")
        with pytest.raises(pg_errors.DivisionByZero):
            conn.execute("SELECT 1 / 0")
        assert conn.execute("SELECT 1").fetchone() == (1,)
        with pytest.raises(pg_errors.UndefinedTable):
            conn.execute("SELECT * FROM no_such_table_here")
        with pytest.raises(pg_errors.DivisionByZero):
            conn.execute("SELECT 1 / %s::int", (0,))
        assert conn.execute("SELECT %s::text", ("still fine",)).fetchone() == ("still fine",)

    with proc.connect(prepare_threshold=None) as conn:  # autocommit off: psycopg opens transactions
        conn.execute(f"INSERT INTO {tbl} VALUES (1)")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        with pytest.raises(pg_errors.UniqueViolation):
            conn.execute(f"INSERT INTO {tbl} VALUES (1)")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        with pytest.raises(pg_errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.rollback()
        assert conn.execute(f"SELECT count(*) FROM {tbl}").fetchone() == (0,)
        conn.execute(f"INSERT INTO {tbl} VALUES (2)")
        conn.commit()

        # A transaction block that raises is rolled back as a whole.
        with pytest.raises(pg_errors.DivisionByZero), conn.transaction():
            conn.execute(f"INSERT INTO {tbl} VALUES (3)")
            conn.execute("SELECT 1 / 0")
        # Savepoints (nested transaction blocks) work through the pooler.
        with conn.transaction():
            conn.execute(f"INSERT INTO {tbl} VALUES (4)")
            with pytest.raises(pg_errors.UniqueViolation), conn.transaction():
                conn.execute(f"INSERT INTO {tbl} VALUES (2)")
            conn.execute(f"INSERT INTO {tbl} VALUES (5)")
        conn.commit()
        assert [r[0] for r in conn.execute(f"SELECT id FROM {tbl} ORDER BY id")] == [2, 4, 5]
        conn.commit()
    assert direct_scalar(pg_md5, f"SELECT array_agg(id ORDER BY id) FROM {tbl}") == [2, 4, 5]


# ---------------------------------------------------------------- 8. asyncpg (session mode)


def test_asyncpg_session_mode_concurrent(
    pg_scram: TempPostgres, doorman: StartDoorman, pool_config: PoolConfig
) -> None:
    proc = doorman(pool_config(pg_scram, pool_mode="session", pool_size=10))
    tbl = table_name("apg")

    all_attached: asyncio.Barrier

    async def worker(n: int) -> tuple[int, int]:
        conn = await asyncpg.connect(
            host=proc.host, port=proc.port, user="app", password="app_pass", database="appdb", timeout=10
        )
        try:
            first_pid = await conn.fetchval("SELECT pg_backend_pid()")
            await all_attached.wait()  # every session now holds its own server at once
            assert await conn.fetchval("SELECT $1::int * 2", n) == n * 2
            rows = await conn.fetch("SELECT g, g::text AS t FROM generate_series(1, $1) g", 10 + n)
            assert [(r["g"], r["t"]) for r in rows] == [(i, str(i)) for i in range(1, 11 + n)]
            stmt = await conn.prepare(f"SELECT count(*) FROM {tbl} WHERE worker = $1")
            await conn.executemany(f"INSERT INTO {tbl} (worker, seq) VALUES ($1, $2)", [(n, i) for i in range(50)])
            assert await stmt.fetchval(n) == 50
            async with conn.transaction():
                await conn.execute(f"INSERT INTO {tbl} (worker, seq) VALUES ($1, 1000)", n)
            with pytest.raises(asyncpg.DivisionByZeroError):
                async with conn.transaction():
                    await conn.execute(f"INSERT INTO {tbl} (worker, seq) VALUES ($1, 2000)", n)
                    await conn.execute("SELECT 1 / 0")
            # The same prepared statement, reused many times on this session.
            for _ in range(5):
                assert await stmt.fetchval(n) == 51
            # Session mode: the same backend for the whole session.
            assert await conn.fetchval("SELECT pg_backend_pid()") == first_pid
            return n, first_pid
        finally:
            await conn.close()

    async def main() -> list[tuple[int, int]]:
        setup = await asyncpg.connect(
            host=proc.host, port=proc.port, user="app", password="app_pass", database="appdb", timeout=10
        )
        await setup.execute(f"CREATE TABLE {tbl} (worker int, seq int)")
        await setup.close()
        nonlocal all_attached
        all_attached = asyncio.Barrier(10)
        return await asyncio.wait_for(asyncio.gather(*(worker(n) for n in range(10))), 60)

    results = asyncio.run(main())
    assert sorted(n for n, _ in results) == list(range(10))
    # Session mode: ten simultaneous sessions, ten distinct backends.
    assert len({pid for _, pid in results}) == 10
    with superuser(pg_scram) as conn:
        rows = conn.execute(f"SELECT worker, count(*), max(seq) FROM {tbl} GROUP BY worker ORDER BY worker").fetchall()
    assert rows == [(n, 51, 1000) for n in range(10)]


# ---------------------------------------------------------------- 9. COPY and large results


def test_copy_in_and_out_100k_rows(pg_md5: TempPostgres, doorman: StartDoorman, pool_config: PoolConfig) -> None:
    proc = doorman(pool_config(pg_md5, pool_size=2))
    tbl = table_name("copy")
    n = 100_000
    with proc.connect(autocommit=True, prepare_threshold=None) as conn:
        conn.execute(f"CREATE TABLE {tbl} (id int, payload text)")
        with conn.cursor() as cur:
            with cur.copy(f"COPY {tbl} (id, payload) FROM STDIN") as copy:
                for i in range(n):
                    copy.write_row((i, f"row-{i}\t\\ é"))
            assert cur.rowcount == n
        assert conn.execute(f"SELECT count(*), sum(id) FROM {tbl}").fetchone() == (n, n * (n - 1) // 2)
        seen = 0
        with conn.cursor() as cur, cur.copy(f"COPY (SELECT id, payload FROM {tbl} ORDER BY id) TO STDOUT") as copy:
            for row in copy.rows():
                assert row == (str(seen), f"row-{seen}\t\\ é")
                seen += 1
        assert seen == n
        # Raw COPY TO in binary-safe chunks: the byte stream is exactly what PostgreSQL sends directly.
        with conn.cursor() as cur, cur.copy(f"COPY (SELECT id FROM {tbl} WHERE id < 1000 ORDER BY id) TO STDOUT") as cp:
            data = b"".join(bytes(chunk) for chunk in cp)
        assert data == b"".join(b"%d\n" % i for i in range(1000))
        # A COPY FROM that fails half-way (bad data) reports the error and leaves the connection usable.
        with (
            pytest.raises(pg_errors.InvalidTextRepresentation),
            conn.cursor() as cur,
            cur.copy(f"COPY {tbl} (id, payload) FROM STDIN") as copy,
        ):
            copy.write(b"1\tok\nnot-a-number\tbad\n")
        assert conn.execute(f"SELECT count(*) FROM {tbl}").fetchone() == (n,)
    assert direct_scalar(pg_md5, f"SELECT count(DISTINCT id) FROM {tbl}") == n


def test_large_result_streamed_to_slow_psycopg_reader(
    pg_md5: TempPostgres, doorman: StartDoorman, pool_config: PoolConfig
) -> None:
    proc = doorman(pool_config(pg_md5, pool_size=1))
    rows = 200_000
    with proc.connect(autocommit=True, prepare_threshold=None) as conn:
        count = 0
        with conn.cursor() as cur:
            for (value,) in cur.stream("SELECT repeat('x', 1000) FROM generate_series(1, %s)", (rows,)):
                assert value == "x" * 1000
                count += 1
                if count % 20_000 == 0:
                    time.sleep(0.05)  # a reader that stops now and then: backpressure must hold the server
        assert count == rows
        # A single 5 MiB row (one DataRow far above message_size_to_be_stream) and a 5 MiB parameter.
        big = 5 * 1024 * 1024
        assert conn.execute("SELECT repeat('x', %s)", (big,)).fetchone() == ("x" * big,)
        payload = "y" * big
        assert conn.execute(
            "SELECT length(%s::text), md5(%s::text) = md5(repeat('y', %s))", (payload, payload, big)
        ).fetchone() == (big, True)
        assert conn.execute("SELECT 'after'").fetchone() == ("after",)


class RawClient:
    """A minimal protocol-3 client on a raw socket, so the test decides exactly how fast bytes are read."""

    def __init__(self, host: str, port: int, user: str, db: str, password: str, rcvbuf: int = 64 * 1024) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(30)
        self.sock.connect((host, port))
        self.buf = bytearray()
        self.sock.sendall(startup_packet({"user": user, "database": db}))
        while True:
            kind, payload = self.read_message()
            if kind == ord("E"):
                raise AssertionError(f"login failed: {payload!r}")
            if kind == ord("R") and struct.unpack("!I", payload[:4])[0] == 5:
                self.sock.sendall(md5_password_message(password, user, payload[4:8]))
            elif kind == ord("R"):
                assert struct.unpack("!I", payload[:4])[0] == 0, "this raw client only supports md5"
            if kind == ord("Z"):
                break

    def _fill(self, n: int) -> None:
        while len(self.buf) < n:
            chunk = self.sock.recv(256 * 1024)
            if not chunk:
                raise AssertionError("connection closed")
            self.buf += chunk

    def read_message(self) -> tuple[int, bytes]:
        self._fill(5)
        length = struct.unpack_from("!I", self.buf, 1)[0]
        self._fill(1 + length)
        kind = self.buf[0]
        payload = bytes(self.buf[5 : 1 + length])
        del self.buf[: 1 + length]
        return kind, payload

    def query(self, sql: str) -> None:
        body = sql.encode() + b"\0"
        self.sock.sendall(b"Q" + struct.pack("!I", len(body) + 4) + body)

    def close(self) -> None:
        try:
            self.sock.sendall(b"X\0\0\0\4")
        finally:
            self.sock.close()


def test_backpressure_bounds_memory_with_slow_reader(
    pg_trust: TempPostgres, doorman: StartDoorman, pool_config: PoolConfig
) -> None:
    # An md5 password for the client side (the raw client answers it) and trust on the server.
    users = [{"username": "app", "password": md5_verifier("app_pass", "app")}]
    config = pool_config(pg_trust, users=users, pool_size=1)
    proc = doorman(config)
    client = RawClient(proc.host, proc.port, "app", "appdb", password="app_pass")
    rows, width = 200_000, 1000  # ~200 MB of DataRow payload
    with proc.connect(user="app") as warm:  # load code paths before the baseline
        warm.execute("SELECT repeat('x', 1000) FROM generate_series(1, 2000)").fetchall()
    baseline = proc.rss_kib()
    peak = baseline
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, proc.rss_kib())
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        client.query(f"SELECT repeat('x', {width}) FROM generate_series(1, {rows})")
        expected_row = struct.pack("!hi", 1, width) + b"x" * width
        data_rows = 0
        started = time.monotonic()
        # Read at most ~40 MB/s for the first 80 MB: PostgreSQL produces much faster, so without
        # backpressure pg_doorman would have to buffer the difference.
        budget_bytes = 0
        while True:
            kind, payload = client.read_message()
            if kind == ord("D"):
                assert payload == expected_row
                data_rows += 1
                budget_bytes += len(payload)
                if budget_bytes < 80_000_000 and data_rows % 2000 == 0:
                    ahead = budget_bytes / 40_000_000 - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
            elif kind == ord("Z"):
                break
            elif kind == ord("E"):
                raise AssertionError(f"query failed: {payload!r}")
        assert data_rows == rows
    finally:
        stop.set()
        sampler.join()
        client.close()
    grown_mib = (peak - baseline) / 1024
    assert grown_mib < 50, f"pg_doorman RSS grew by {grown_mib:.1f} MiB while streaming to a slow reader"


# ---------------------------------------------------------------- 10. NOTICE, ParameterStatus, LISTEN/NOTIFY


def test_notice_and_parameter_status(pg_md5: TempPostgres, doorman: StartDoorman, pool_config: PoolConfig) -> None:
    proc = doorman(pool_config(pg_md5, pool_size=1))
    with (
        proc.connect(autocommit=True, prepare_threshold=None) as conn,
        proc.connect(autocommit=True, prepare_threshold=None) as other,
    ):
        notices: list[tuple[str | None, str | None]] = []
        conn.add_notice_handler(lambda d: notices.append((d.severity_nonlocalized, d.message_primary)))
        conn.execute("DO $$ BEGIN RAISE NOTICE 'hello'; RAISE WARNING 'careful %', 42; END $$")
        assert notices == [("NOTICE", "hello"), ("WARNING", "careful 42")]

        conn.execute("SET application_name = 'x'")
        assert conn.info.parameter_status("application_name") == "x"
        assert conn.execute("SHOW application_name").fetchone() == ("x",)
        conn.execute("SET TimeZone = 'Asia/Tokyo'")
        assert conn.info.parameter_status("TimeZone") == "Asia/Tokyo"
        # The other client shares the single server (pool_size 1) but keeps its own settings ...
        assert other.execute("SHOW application_name").fetchone() != ("x",)
        assert other.execute("SHOW TimeZone").fetchone() != ("Asia/Tokyo",)
        # ... and the first one gets its settings back on its next transaction.
        assert conn.execute("SELECT current_setting('application_name'), current_setting('TimeZone')").fetchone() == (
            "x",
            "Asia/Tokyo",
        )


def test_listen_notify_session_mode(pg_md5: TempPostgres, doorman: StartDoorman, pool_config: PoolConfig) -> None:
    proc = doorman(pool_config(pg_md5, pool_mode="session", pool_size=2))
    channel = table_name("chan")
    with proc.connect(autocommit=True) as listener, proc.connect(autocommit=True) as sender:
        listener.execute(f"LISTEN {channel}")
        sender.execute("SELECT pg_notify(%s, %s)", (channel, "payload-1"))
        sender.execute(f"NOTIFY {channel}, 'payload-2'")
        got = [(n.channel, n.payload) for n in listener.notifies(timeout=5, stop_after=2)]
        assert got == [(channel, "payload-1"), (channel, "payload-2")]
        sender_pid = sender.execute("SELECT pg_backend_pid()").fetchone()
        assert sender_pid is not None
        # A notification sent directly to PostgreSQL (not through the pooler) reaches the listener too.
        with superuser(pg_md5) as direct:
            direct.execute(f"NOTIFY {channel}, 'direct'")
        got = [(n.channel, n.payload) for n in listener.notifies(timeout=5, stop_after=1)]
        assert got == [(channel, "direct")]
