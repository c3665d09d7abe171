"""The admin console against a real pg_doorman process in front of real PostgreSQL: psql and psycopg (simple
protocol, as the console requires), the raw protocol for hostile input, and PgBouncer 1.18 itself for the
column lists of the views both have.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_helpers import close_quietly, connect, scalar, wait_until
from wire_client import RawWire, frame, md5_password_message, startup_packet

from pg_doorman.devcluster import TempPostgres, find_free_port

HOST = "127.0.0.1"
ADMIN_DB = "pgdoorman"
PGBOUNCER = "/usr/sbin/pgbouncer"
# The views PgBouncer 1.18 also has: ours must start with its columns, names, order and types alike.
SHARED_VIEWS = ("POOLS", "STATS", "CLIENTS", "SERVERS", "DATABASES", "LISTS", "USERS", "CONFIG", "VERSION")
ALL_VIEWS = (
    "HELP",
    "CONFIG",
    "DATABASES",
    "POOLS",
    "POOLS_EXTENDED",
    "POOLS_MEMORY",
    "POOL_MEMORY",
    "PREPARED_STATEMENTS",
    "CLIENTS",
    "SERVERS",
    "CONNECTIONS",
    "STATS",
    "LISTS",
    "USERS",
    "STARTUP_PARAMETERS",
    "SOCKETS",
    "LOG_LEVEL",
    "VERSION",
)


def admin(proc: Any) -> psycopg.Connection[Any]:
    """An admin console session: client-side binding, so every statement goes as a simple Query."""
    return psycopg.connect(proc.admin_dsn(), autocommit=True, connect_timeout=10, cursor_factory=psycopg.ClientCursor)


def show(conn: psycopg.Connection[Any], what: str) -> list[dict[str, Any]]:
    cur = conn.execute(f"SHOW {what}")
    assert cur.description is not None
    names = [d.name for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def columns(conn: psycopg.Connection[Any], sql: str) -> list[tuple[str, int]]:
    cur = conn.execute(sql)
    assert cur.description is not None
    return [(d.name, d.type_code) for d in cur.description]


def psql(proc: Any, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PGPASSWORD": "admin_pass", "PGCONNECT_TIMEOUT": "10"}
    cmd = ["psql", "-X", "-h", HOST, "-p", str(proc.port), "-U", "admin", ADMIN_DB, *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30, check=check)


def sqlstate_of(conn: psycopg.Connection[Any], sql: str) -> str | None:
    with pytest.raises(psycopg.Error) as info:
        conn.execute(sql)
    return info.value.sqlstate


@pytest.fixture
def console_proc(doorman: Any, pg_trust: TempPostgres, pool_config: Any) -> Any:
    return doorman(pool_config(pg_trust, ["app"], pool_size=2))


# ---------------------------------------------------------------- the views


def test_every_view_answers_with_columns_and_the_session_goes_on(console_proc: Any) -> None:
    with admin(console_proc) as conn:
        for view in ALL_VIEWS:
            cols = columns(conn, f"SHOW {view}")
            assert cols, view
            assert len({name for name, _ in cols}) == len(cols), f"duplicate column in SHOW {view}"
        # Any letter case, a trailing semicolon.
        assert [name for name, _ in columns(conn, "show version;")] == ["version"]
        assert show(conn, "VERSION")[0]["version"].startswith("pg_doorman ")
        help_items = [row["item"] for row in show(conn, "HELP")]
        assert any("PAUSE" in item for item in help_items) and any("KILL" in item for item in help_items)


def test_psql_runs_several_statements_and_unknown_commands_get_58000(console_proc: Any) -> None:
    out = psql(console_proc, "-At", "-c", "SHOW LOG_LEVEL; SHOW VERSION").stdout.split()
    assert out[0] == "debug" and out[1] == "pg_doorman"  # the test process runs with -l debug
    bad = psql(console_proc, "-c", "SHOW NOSUCH", check=False)
    assert bad.returncode != 0 and "unsupported query against the admin database" in bad.stderr
    with admin(console_proc) as conn:
        for sql in ("SHOW NOSUCH", "FROBNICATE", "SELECT 1", "PAUSE a b", "RELOAD now"):
            assert sqlstate_of(conn, sql) == "58000", sql
        assert show(conn, "LOG_LEVEL") == [{"log_level": "debug"}]  # the session is still there


def test_views_follow_real_activity(console_proc: Any) -> None:
    app = connect(console_proc, application_name="activity-test")
    try:
        for _ in range(5):
            with app.transaction():
                app.execute("SELECT 1")
        backend = scalar(app, "SELECT pg_backend_pid()")
        with admin(console_proc) as conn:
            pools = [row for row in show(conn, "POOLS") if row["database"] == "appdb"]
            assert len(pools) == 1 and pools[0]["user"] == "app" and pools[0]["pool_mode"] == "transaction"
            assert pools[0]["sv_idle"] + pools[0]["sv_active"] >= 1
            assert pools[0]["paused"] == 0 and pools[0]["pool_size"] == 2
            stats = [row for row in show(conn, "STATS") if row["database"] == "appdb"]
            assert stats[0]["total_xact_count"] >= 6 and stats[0]["total_query_count"] >= 6
            assert stats[0]["total_received"] > 0 and stats[0]["total_sent"] > 0
            clients = [row for row in show(conn, "CLIENTS") if row["application_name"] == "activity-test"]
            assert len(clients) == 1
            assert clients[0]["type"] == "C" and clients[0]["user"] == "app" and clients[0]["addr"] == HOST
            assert clients[0]["state"] == "idle" and clients[0]["transaction_count"] >= 6
            admins = [row for row in show(conn, "CLIENTS") if row["database"] == ADMIN_DB]
            assert admins and admins[0]["user"] == "admin"
            servers = show(conn, "SERVERS")
            assert backend in {row["remote_pid"] for row in servers}
            assert all(row["type"] == "S" and row["database"] == "appdb" for row in servers)
            databases = show(conn, "DATABASES")
            assert [(d["name"], d["pool_size"], d["paused"]) for d in databases] == [("appdb", 2, 0)]
            lists = {row["list"]: row["items"] for row in show(conn, "LISTS")}
            assert lists["pools"] == 1 and lists["databases"] == 1 and lists["users"] == 1
            assert lists["free_clients"] + lists["used_clients"] >= 1 and lists["free_servers"] >= 1
            assert show(conn, "USERS") == [{"name": "app", "pool_mode": "transaction"}]
            connections = show(conn, "CONNECTIONS")[0]
            assert connections["total"] >= 3 and connections["plain"] >= 3
            params = {(r["parameter"], r["value"]) for r in show(conn, "STARTUP_PARAMETERS")}
            assert ("application_name", "pg_doorman") in params
            sockets = show(conn, "SOCKETS")[0]
            assert sockets["tcp_listen"] + sockets["tcp6_listen"] >= 1 and sockets["tcp_established"] >= 2
    finally:
        app.close()


def test_show_config_lists_real_keys_values_and_defaults(
    doorman: Any, pg_trust: TempPostgres, pool_config: Any
) -> None:
    config = pool_config(pg_trust, ["app"], general={"query_wait_timeout": "7s", "max_connections": 500})
    proc = doorman(config)
    with admin(proc) as conn:
        rows = {row["key"]: row for row in show(conn, "CONFIG")}
    assert rows["query_wait_timeout"]["value"] == "7s" and rows["query_wait_timeout"]["default"] == "5s"
    assert rows["max_connections"]["value"] == "500" and rows["max_connections"]["default"] == "8192"
    assert rows["port"]["value"] == str(proc.port) and rows["port"]["changeable"] == "no"
    assert rows["query_wait_timeout"]["changeable"] == "yes"
    assert rows["admin_password"]["value"] == "********"  # never shown
    assert rows["pools.appdb.server_port"]["value"] == str(pg_trust.port)
    assert rows["pools.appdb.users"]["value"] == "app"
    assert rows["pools.appdb.users.app.pool_size"]["value"] == "10"
    assert rows["pools.appdb.users.app.password"]["value"] == "********"


# ------------------------------------------------------------- against PgBouncer


@pytest.fixture
def pgbouncer(tmp_path: Path, pg_trust: TempPostgres) -> Iterator[int]:
    """A real PgBouncer 1.18 in front of pg_trust (admin user ``admin``, trust), run as nobody when root."""
    assert os.path.exists(PGBOUNCER), "scripts/setup.sh installs pgbouncer"
    workdir = tmp_path / "pgbouncer"
    workdir.mkdir()
    port = find_free_port()
    (workdir / "users.txt").write_text('"admin" "x"\n"app" "app_pass"\n')
    (workdir / "pgbouncer.ini").write_text(
        f"[databases]\nappdb = host=127.0.0.1 port={pg_trust.port} dbname=appdb\n"
        f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nauth_type = trust\n"
        f"auth_file = {workdir}/users.txt\nadmin_users = admin\nunix_socket_dir =\npool_mode = transaction\n"
    )
    argv = [PGBOUNCER, str(workdir / "pgbouncer.ini")]
    if os.geteuid() == 0:  # PgBouncer refuses to run as root
        nobody = pwd.getpwnam("nobody")
        os.chmod(tmp_path, 0o755)
        shutil.chown(workdir, nobody.pw_uid, nobody.pw_gid)
        for child in workdir.iterdir():
            shutil.chown(child, nobody.pw_uid, nobody.pw_gid)
        argv[1:1] = ["-u", "nobody"]
    popen = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: _listening(port) or popen.poll() is not None, what="pgbouncer to listen")
        assert popen.poll() is None, popen.stderr.read().decode() if popen.stderr else ""
        yield port
    finally:
        popen.terminate()
        popen.wait(10)


def _listening(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def test_shared_views_start_with_pgbouncers_columns(console_proc: Any, pgbouncer: int) -> None:
    bouncer_dsn = f"host={HOST} port={pgbouncer} user=admin dbname=pgbouncer"
    with (
        psycopg.connect(bouncer_dsn, autocommit=True, cursor_factory=psycopg.ClientCursor) as theirs,
        admin(console_proc) as ours,
    ):
        for view in SHARED_VIEWS:
            expected = columns(theirs, f"SHOW {view}")
            got = columns(ours, f"SHOW {view}")
            assert got[: len(expected)] == expected, f"SHOW {view}"
        their_lists = [row["list"] for row in show(theirs, "LISTS")]
        assert [row["list"] for row in show(ours, "LISTS")] == their_lists


# ------------------------------------------------------------------ commands


def test_pause_holds_new_transactions_until_resume(console_proc: Any) -> None:
    app = connect(console_proc)
    busy = connect(console_proc)
    try:
        busy.execute("BEGIN")
        busy_pid = scalar(busy, "SELECT pg_backend_pid()")
        with admin(console_proc) as conn:
            conn.execute("PAUSE appdb")
            assert [row["paused"] for row in show(conn, "POOLS")] == [1]
            assert show(conn, "DATABASES")[0]["paused"] == 1
            # A client holding a server goes on.
            assert scalar(busy, "SELECT pg_backend_pid()") == busy_pid
            busy.execute("COMMIT")
            done = threading.Event()
            result: list[Any] = []

            def run() -> None:
                result.append(scalar(app, "SELECT 42"))
                done.set()

            thread = threading.Thread(target=run)
            started = time.monotonic()
            thread.start()
            assert not done.wait(0.7), "a transaction ran while its pool was paused"
            wait_until(lambda: show(conn, "POOLS")[0]["cl_waiting"] == 1, what="the client to wait")
            conn.execute("RESUME appdb")
            assert done.wait(3), "RESUME did not wake the waiting client"
            assert result == [42] and time.monotonic() - started < 4
            thread.join()
            assert [row["paused"] for row in show(conn, "POOLS")] == [0]
            # Unknown database: 3D000, and the session goes on.
            for command in ("PAUSE", "RESUME", "RECONNECT", "KILL"):
                with pytest.raises(psycopg.Error) as info:
                    conn.execute(f"{command} nosuchdb")
                assert info.value.sqlstate == "3D000"
                assert 'No pool for database "nosuchdb"' in str(info.value)
            # Global PAUSE/RESUME without a database, idempotent.
            conn.execute("PAUSE")
            conn.execute("PAUSE")
            conn.execute("RESUME")
            conn.execute("RESUME")
        assert scalar(app, "SELECT 7") == 7
    finally:
        close_quietly(app)
        close_quietly(busy)


def test_paused_wait_ends_with_query_wait_timeout(doorman: Any, pg_trust: TempPostgres, pool_config: Any) -> None:
    proc = doorman(pool_config(pg_trust, ["app"], general={"query_wait_timeout": "1s"}))
    app = connect(proc)
    try:
        with admin(proc) as conn:
            conn.execute("PAUSE")
            started = time.monotonic()
            with pytest.raises(psycopg.Error) as info:
                app.execute("SELECT 1")
            assert info.value.sqlstate == "53300"
            assert 0.8 < time.monotonic() - started < 5
            conn.execute("RESUME")
    finally:
        close_quietly(app)


def test_reconnect_gives_new_backends(doorman: Any, pg_trust: TempPostgres, pool_config: Any) -> None:
    proc = doorman(pool_config(pg_trust, ["app"], pool_size=1))
    app = connect(proc)
    other = connect(proc)
    try:
        first = scalar(app, "SELECT pg_backend_pid()")
        with admin(proc) as conn:
            conn.execute("RECONNECT appdb")
            second = scalar(app, "SELECT pg_backend_pid()")
            assert second != first
            # A busy server is replaced when its transaction ends.
            app.execute("BEGIN")
            assert scalar(app, "SELECT pg_backend_pid()") == second
            conn.execute("RECONNECT")
            assert scalar(app, "SELECT pg_backend_pid()") == second
            app.execute("COMMIT")
            third = scalar(other, "SELECT pg_backend_pid()")
            assert third not in (first, second)
    finally:
        close_quietly(app)
        close_quietly(other)


def test_kill_drops_the_databases_clients_and_servers(console_proc: Any) -> None:
    idle = connect(console_proc)
    in_tx = connect(console_proc)
    try:
        in_tx.execute("BEGIN")
        backend = scalar(in_tx, "SELECT pg_backend_pid()")
        with admin(console_proc) as conn:
            conn.execute("KILL appdb")
            for victim in (idle, in_tx):
                with pytest.raises(psycopg.OperationalError):
                    victim.execute("SELECT 1")
            wait_until(lambda: backend not in {row["remote_pid"] for row in show(conn, "SERVERS")})
            # KILL leaves the database usable (no PAUSE), and the console itself was not dropped.
            with connect(console_proc) as fresh:
                assert scalar(fresh, "SELECT pg_backend_pid()") != backend
            assert show(conn, "LOG_LEVEL")
            conn.execute("KILL")
    finally:
        close_quietly(idle)
        close_quietly(in_tx)


def test_reload_with_a_broken_file_errors_and_keeps_serving(console_proc: Any) -> None:
    path: Path = console_proc.config_path
    good = path.read_text()
    app = connect(console_proc)
    try:
        with admin(console_proc) as conn:
            path.write_text("general: [this is: not valid\n")
            with pytest.raises(psycopg.Error) as info:
                conn.execute("RELOAD")
            assert info.value.sqlstate == "F0000"
            assert scalar(app, "SELECT 1") == 1
            assert show(conn, "VERSION")
            path.write_text(good.replace("pool_size: 2", "pool_size: 3"))
            conn.execute("RELOAD")
            assert show(conn, "POOLS")[0]["pool_size"] == 3
        assert scalar(app, "SELECT 2") == 2
    finally:
        path.write_text(good)
        app.close()


def test_set_log_level(console_proc: Any) -> None:
    with admin(console_proc) as conn:
        conn.execute("SET log_level = 'info'")
        assert show(conn, "LOG_LEVEL") == [{"log_level": "info"}]
        conn.execute("set LOG_LEVEL to warn")
        assert show(conn, "LOG_LEVEL") == [{"log_level": "warn"}]
        conn.execute("SET log_level = default")
        assert show(conn, "LOG_LEVEL") == [{"log_level": "debug"}]
        assert sqlstate_of(conn, "SET log_level = 'loud'") == "42601"
        assert sqlstate_of(conn, "SET statement_timeout = 5") == "42601"
        assert show(conn, "LOG_LEVEL") == [{"log_level": "debug"}]
    console_proc.wait_for_log("log_level set to warn")


def test_psql_tab_completion_queries_are_answered(console_proc: Any) -> None:
    with admin(console_proc) as conn:
        show_vars = (
            "SELECT name FROM  (SELECT pg_catalog.lower(name) AS name FROM pg_catalog.pg_settings   "
            "UNION ALL SELECT 'all') ss  WHERE substring(name,1,0)='' LIMIT 1000"
        )
        names = [row[0] for row in conn.execute(show_vars).fetchall()]
        assert "pools" in names and "clients" in names
        enum_vals = (
            "SELECT val FROM (SELECT name, pg_catalog.unnest(enumvals) AS val   FROM pg_catalog.pg_settings) ss "
            "WHERE (pg_catalog.quote_literal(val) = '' OR val = '') "
            "AND pg_catalog.lower(name)=pg_catalog.lower('log_level')"
        )
        assert "debug" in [row[0] for row in conn.execute(enum_vals).fetchall()]


def test_shutdown_stops_the_process_gracefully(doorman: Any, pg_trust: TempPostgres, pool_config: Any) -> None:
    proc = doorman(pool_config(pg_trust, ["app"]))
    out = psql(proc, "-At", "-c", "SHUTDOWN")
    assert out.stdout.strip() == "t"
    assert proc.wait(15) == 0


# ------------------------------------------------------------ hostile input


def admin_wire(proc: Any) -> RawWire:
    wire = RawWire(proc.port, 10, HOST)
    wire.send(startup_packet({"user": "admin", "database": ADMIN_DB}))
    kind, body = wire.read_message()
    assert kind == b"R" and struct.unpack("!i", body[:4])[0] == 5
    wire.send(md5_password_message("admin_pass", "admin", body[4:8]))
    assert wire.read_until(b"Z")[-1] == (b"Z", b"I")
    return wire


def test_extended_protocol_is_refused_at_sync_and_the_session_goes_on(console_proc: Any) -> None:
    parse = frame(b"P", b"\x00SHOW POOLS\x00\x00\x00")
    bind = frame(b"B", b"\x00\x00\x00\x00\x00\x00\x00\x00")
    execute = frame(b"E", b"\x00\x00\x00\x00\x00")
    with admin_wire(console_proc) as wire:
        wire.send(parse + bind + execute + frame(b"S", b""))
        msgs = wire.read_until(b"Z")
        assert [k for k, _ in msgs] == [b"E", b"Z"] and b"C0A000" in msgs[0][1]
        wire.send(frame(b"Q", b"SHOW VERSION\x00"))
        kinds = [k for k, _ in wire.read_until(b"Z")]
        assert kinds == [b"T", b"D", b"C", b"Z"]
        wire.send(frame(b"Q", b"\x00"))  # empty query
        assert [k for k, _ in wire.read_until(b"Z")] == [b"I", b"Z"]
        wire.send(frame(b"Q", b"\xff\xfe garbage \x00"))  # not UTF-8
        msgs = wire.read_until(b"Z")
        assert msgs[0][0] == b"E" and b"C58000" in msgs[0][1]
        wire.send(frame(b"d", b"copy data nobody asked for"))
        kind, body = wire.read_message()
        assert kind == b"E" and b"C08P01" in body
        assert wire.closed_by_peer(5)


def test_oversized_and_truncated_messages_end_the_session(console_proc: Any) -> None:
    with admin_wire(console_proc) as wire:
        wire.send(b"Q" + struct.pack("!i", 64 * 1024 * 1024))
        kind, body = wire.read_message()
        assert kind == b"E" and b"C08P01" in body
        assert wire.closed_by_peer(5)
    with admin_wire(console_proc) as wire:
        wire.send(b"Q" + struct.pack("!i", 100) + b"SHOW")  # then leaves midway
    with admin(console_proc) as conn:
        assert show(conn, "VERSION")


def test_non_admin_users_are_refused(console_proc: Any) -> None:
    dsn = console_proc.dsn("app", "app_pass", ADMIN_DB)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(dsn, connect_timeout=10)


def test_a_console_session_outlives_client_login_timeout(
    doorman: Any, pg_trust: TempPostgres, pool_config: Any
) -> None:
    proc = doorman(pool_config(pg_trust, ["app"], general={"client_login_timeout": "1s"}))
    with admin(proc) as conn:
        time.sleep(1.5)
        assert show(conn, "VERSION")


# ---------------------------------------------------------------- at scale


async def _open_idle_clients(port: int, count: int, password: str) -> list[asyncio.StreamWriter]:
    async def one() -> asyncio.StreamWriter:
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(startup_packet({"user": "app", "database": "appdb"}))
        while True:
            header = await reader.readexactly(5)
            body = await reader.readexactly(struct.unpack("!i", header[1:])[0] - 4)
            if header[:1] == b"R" and struct.unpack("!i", body[:4])[0] == 5:
                writer.write(md5_password_message(password, "app", body[4:8]))
            elif header[:1] == b"E":
                raise AssertionError(body)
            elif header[:1] == b"Z":
                return writer

    writers: list[asyncio.StreamWriter] = []
    for start in range(0, count, 200):
        writers.extend(await asyncio.gather(*(one() for _ in range(min(200, count - start)))))
    return writers


def test_show_clients_at_2000_idle_clients_is_quick(doorman: Any, pg_trust: TempPostgres, pool_config: Any) -> None:
    user = {"username": "app", "password": "md5" + __import__("hashlib").md5(b"app_passapp").hexdigest()}
    user |= {"server_username": "app", "server_password": "app_pass", "pool_size": 2}
    proc = doorman(pool_config(pg_trust, [user]))
    loop = asyncio.new_event_loop()
    writers = loop.run_until_complete(_open_idle_clients(proc.port, 2000, "app_pass"))
    try:
        with admin(proc) as conn:
            started = time.monotonic()
            rows = show(conn, "CLIENTS")
            elapsed = time.monotonic() - started
            assert sum(1 for row in rows if row["database"] == "appdb") == 2000
            assert elapsed < 1.0, f"SHOW CLIENTS at 2000 clients took {elapsed:.3f}s"
            started = time.monotonic()
            pools = show(conn, "POOLS")
            assert time.monotonic() - started < 0.2
            assert pools[0]["cl_idle"] == 2000
        # Forwarding is unaffected.
        with connect(proc, password="app_pass") as app:
            assert scalar(app, "SELECT 1") == 1
    finally:
        for writer in writers:
            writer.close()
        loop.close()
