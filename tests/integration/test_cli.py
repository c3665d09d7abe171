"""Signals (SIGTERM, SIGINT graceful stop, SIGHUP reload) and the command line (-t, generate, logging options)."""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from psycopg_helpers import close_quietly, connect, scalar

from pg_doorman.devcluster import TempPostgres, find_free_port

StartDoorman = Callable[..., Any]
MakePoolConfig = Callable[..., dict[str, Any]]

REPO_ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------- helpers


def refuses_connections(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return False
    except OSError:
        return True


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def run_cli(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """``python -m pg_doorman ARGS`` with this checkout's sources and no PG*/CONFIG_FILE/LOG_* environment."""
    env = {
        k: v
        for k, v in os.environ.items()
        if (not k.startswith("PG") or k.startswith("PG_DOORMAN_")) and k not in ("CONFIG_FILE", "LOG_LEVEL")
    }
    env.pop("LOG_FORMAT", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", "pg_doorman", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def static_config(**general: Any) -> dict[str, Any]:
    """A valid config that needs no cluster (``-t`` never connects to PostgreSQL)."""
    return {
        "general": {
            "host": "127.0.0.1",
            "port": 6432,
            "admin_username": "admin",
            "admin_password": "admin_pass",
            **general,
        },
        "pools": {
            "appdb": {
                "server_host": "127.0.0.1",
                "server_port": 5432,
                "pool_mode": "transaction",
                "users": [{"username": "app", "password": "app_pass", "pool_size": 5}],
            }
        },
    }


def rewrite_config(proc: Any, config: dict[str, Any]) -> None:
    """Replace the file a running pg_doorman was started from (same format as it was written in)."""
    path: Path = proc.config_path
    if path.suffix == ".toml":
        from conftest import dump_toml  # type: ignore[import-not-found]

        text = dump_toml(config)
    else:
        text = yaml.safe_dump(config, sort_keys=False)
    tmp = path.with_suffix(path.suffix + ".new")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


# ---------------------------------------- SIGTERM


def test_sigterm_exits_promptly(doorman: StartDoorman, pool_config: MakePoolConfig, pg_trust: TempPostgres) -> None:
    proc = doorman(pool_config(pg_trust, pool_size=2))
    idle = connect(proc)
    in_tx = connect(proc, autocommit=False)
    try:
        held = {scalar(idle, "select pg_backend_pid()")}
        held.add(scalar(in_tx, "select pg_backend_pid()"))  # inside a transaction: SIGTERM does not wait for it
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
        assert time.monotonic() - t0 < 2.0
        assert refuses_connections(proc.host, proc.port)
        for conn in (idle, in_tx):
            with pytest.raises(psycopg.OperationalError):
                conn.execute("select 1")
        # The backends the pooler held are closed too.
        wait_until(lambda: not held & set(pg_trust.backend_pids()), timeout=5, what="backends to close")
    finally:
        close_quietly(idle)
        close_quietly(in_tx)


# ---------------------------------------- SIGINT: graceful shutdown


@pytest.mark.parametrize("opened_by", ["statement", "begin_only"])
def test_sigint_lets_open_transaction_commit(
    doorman: StartDoorman, pool_config: MakePoolConfig, pg_trust: TempPostgres, opened_by: str
) -> None:
    """``begin_only``: the client has sent nothing but BEGIN (which the pooler may answer without a server)."""
    table = f"cli_{uuid.uuid4().hex[:12]}"
    pg_trust.psql(f"CREATE TABLE {table} (v text); ALTER TABLE {table} OWNER TO app;", db="appdb")
    proc = doorman(pool_config(pg_trust, pool_size=2, general={"shutdown_timeout": "20s"}))
    in_tx = connect(proc, autocommit=False)
    idle = connect(proc)
    try:
        assert scalar(idle, "select 1") == 1
        if opened_by == "begin_only":
            in_tx.pgconn.exec_(b"BEGIN")  # simple-protocol BEGIN alone, as many drivers send it
            assert in_tx.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        else:
            in_tx.execute(f"INSERT INTO {table} VALUES ('committed during shutdown')")
            assert scalar(in_tx, "select 1") == 1
        offset = len(proc.log_text())
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait_for_log("SIGINT", after=offset, timeout=5)

        # No new connections at once.
        wait_until(lambda: refuses_connections(proc.host, proc.port), timeout=1.0, what="listener to close")
        assert time.monotonic() - t0 < 1.5
        with pytest.raises(psycopg.OperationalError):
            connect(proc, connect_timeout=3)
        # A client between transactions is let go.
        with pytest.raises(psycopg.OperationalError):
            idle.execute("select 1")
        assert proc.returncode is None, "pg_doorman must wait for the open transaction"

        # The client inside a transaction can finish it...
        if opened_by == "begin_only":
            in_tx.execute(f"INSERT INTO {table} VALUES ('committed during shutdown')")
        assert scalar(in_tx, "select 2") == 2
        in_tx.commit()
        assert pg_trust.psql(f"select v from {table}", db="appdb") == "committed during shutdown"
        # ...then it is disconnected and the process exits.
        with pytest.raises(psycopg.OperationalError):
            in_tx.execute("select 1")
        assert proc.wait(5) == 0
    finally:
        close_quietly(in_tx)
        close_quietly(idle)
        pg_trust.psql(f"DROP TABLE IF EXISTS {table}", db="appdb")


def test_sigint_shutdown_timeout_with_a_client_that_never_commits(
    doorman: StartDoorman, pool_config: MakePoolConfig, pg_trust: TempPostgres
) -> None:
    proc = doorman(pool_config(pg_trust, pool_size=2, general={"shutdown_timeout": "1s"}))
    stuck = connect(proc, autocommit=False)
    try:
        assert scalar(stuck, "select 1") == 1
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(6) == 0
        elapsed = time.monotonic() - t0
        assert 0.8 <= elapsed < 3.0, f"exited after {elapsed:.2f}s with shutdown_timeout 1s"
        with pytest.raises(psycopg.OperationalError):
            stuck.execute("select 1")
    finally:
        close_quietly(stuck)


# ---------------------------------------- SIGHUP: reload


def test_sighup_reload_adds_user_and_resizes_pool(
    doorman: StartDoorman, pool_config: MakePoolConfig, pg_trust: TempPostgres
) -> None:
    proc = doorman(pool_config(pg_trust, users=["app"], pool_size=1))
    old = connect(proc)
    try:
        assert scalar(old, "select current_user") == "app"
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            connect(proc, user="app2")

        new_config = copy.deepcopy(proc.config)
        new_config["pools"] = pool_config(pg_trust, users=["app", "app2"], pool_size=3)["pools"]
        rewrite_config(proc, new_config)
        offset = len(proc.log_text())
        proc.send_signal(signal.SIGHUP)
        proc.wait_for_log("configuration reloaded", after=offset, timeout=5)

        with connect(proc, user="app2") as app2:
            assert scalar(app2, "select current_user") == "app2"
        # A client connected before the reload keeps working.
        assert scalar(old, "select current_user") == "app"

        # pool_size 3 now: three transactions at once get three backends.
        conns = [connect(proc) for _ in range(3)]
        try:
            barrier = threading.Barrier(3)
            pids: list[Any] = []
            errors: list[BaseException] = []

            def hold(conn: psycopg.Connection[Any]) -> None:
                try:
                    with conn.transaction():
                        pids.append(scalar(conn, "select pg_backend_pid()"))
                        barrier.wait(5)
                except BaseException as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=hold, args=(c,)) for c in conns]
            for t in threads:
                t.start()
            for t in threads:
                t.join(10)
            assert errors == []
            assert len(set(pids)) == 3
        finally:
            for c in conns:
                c.close()
        assert proc.returncode is None
    finally:
        close_quietly(old)


@pytest.mark.parametrize("reload", ["pool_resized", "pool_removed"])
def test_sighup_client_waiting_for_a_server_moves_to_the_new_pool(
    doorman: StartDoorman, pool_config: MakePoolConfig, pg_trust: TempPostgres, reload: str
) -> None:
    """A client waiting on a pool that a reload replaced is served by its successor; when the reload removed
    the pool, the waiter is told so at once instead of waiting for query_wait_timeout."""
    proc = doorman(pool_config(pg_trust, users=["app"], pool_size=1, general={"query_wait_timeout": "10s"}))
    holder = connect(proc, autocommit=False)
    waiter = connect(proc)
    try:
        pid = scalar(holder, "select pg_backend_pid()")  # holds the only server inside a transaction
        result: dict[str, Any] = {}

        def wait_for_server() -> None:
            try:
                result["pid"] = scalar(waiter, "select pg_backend_pid()")
            except BaseException as exc:
                result["error"] = exc

        thread = threading.Thread(target=wait_for_server, daemon=True)
        thread.start()
        time.sleep(0.3)
        assert thread.is_alive(), "the second client should be waiting for the pool's only server"

        new_config = copy.deepcopy(proc.config)
        users = ["app"] if reload == "pool_resized" else ["app2"]
        new_config["pools"] = pool_config(pg_trust, users=users, pool_size=2)["pools"]
        rewrite_config(proc, new_config)
        offset = len(proc.log_text())
        proc.send_signal(signal.SIGHUP)
        proc.wait_for_log("configuration reloaded", after=offset, timeout=5)
        thread.join(3)  # well before query_wait_timeout
        assert not thread.is_alive(), "a client waiting on the replaced pool got no answer"
        if reload == "pool_resized":
            assert "error" not in result, result
            assert result["pid"] != pid
        else:
            assert "pid" not in result, result
            assert "this pool was removed by a configuration reload" in str(result["error"])
        # The transaction that spanned the reload finishes normally.
        assert scalar(holder, "select pg_backend_pid()") == pid
        holder.commit()
        if reload == "pool_resized":
            assert scalar(holder, "select 1") == 1
        else:  # its next transaction has no pool to run in
            with pytest.raises(psycopg.OperationalError, match="this pool was removed by a configuration reload"):
                holder.execute("select 1")
    finally:
        close_quietly(holder)
        close_quietly(waiter)


def test_sighup_with_broken_config_keeps_the_old_one(
    doorman: StartDoorman, pool_config: MakePoolConfig, pg_trust: TempPostgres
) -> None:
    proc = doorman(pool_config(pg_trust, users=["app"], pool_size=2))
    old = connect(proc)
    try:
        assert scalar(old, "select 1") == 1
        broken = copy.deepcopy(proc.config)
        broken["pools"]["appdb"]["users"][0]["pool_sise"] = 3
        broken["pools"]["appdb2"] = pool_config(pg_trust, users=["app2"])["pools"]["appdb"]
        rewrite_config(proc, broken)
        offset = len(proc.log_text())
        proc.send_signal(signal.SIGHUP)
        line = proc.wait_for_log("reload failed", after=offset, timeout=5)
        assert "ERROR" in line or "error" in line
        assert "pool_sise" in proc.log_text()[offset:]

        time.sleep(0.2)
        assert proc.returncode is None
        assert scalar(old, "select 2") == 2
        with connect(proc) as fresh:
            assert scalar(fresh, "select current_user") == "app"
        # Nothing of the broken file was applied.
        with pytest.raises(psycopg.OperationalError):
            connect(proc, user="app2", db="appdb2")

        # A later good reload still works.
        rewrite_config(proc, proc.config)
        offset = len(proc.log_text())
        proc.send_signal(signal.SIGHUP)
        proc.wait_for_log("configuration reloaded", after=offset, timeout=5)
        assert scalar(old, "select 3") == 3
    finally:
        close_quietly(old)


# ---------------------------------------- -t


def test_check_good_config(tmp_path: Path) -> None:
    """The original's two lines on stdout, nothing on stderr, exit 0."""
    path = tmp_path / "good.yaml"
    path.write_text(yaml.safe_dump(static_config()), encoding="utf-8")
    result = run_cli("-t", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"pg_doorman: the configuration file {path} syntax is ok",
        f"pg_doorman: configuration file {path} test is successful",
    ]
    assert result.stderr == ""


def test_check_bad_config_names_file_key_and_suggestion(tmp_path: Path) -> None:
    config = static_config()
    user = config["pools"]["appdb"]["users"][0]
    user["pool_sise"] = user.pop("pool_size")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = run_cli("-t", str(path))
    assert result.returncode == 78  # EX_CONFIG, as the original
    output = result.stdout + result.stderr
    assert "test is successful" not in output
    line = next((ln for ln in output.splitlines() if "pool_sise" in ln), None)
    assert line is not None, output
    assert line.startswith("Config parse error: ")
    assert str(path) in line
    assert "pools.appdb.users[0].pool_sise" in line
    assert "pool_size" in line.replace("pool_sise", ""), f"no suggestion in {line!r}"


def test_check_bad_toml_config(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[general]\nport = "not a port"\nadmin_username = "a"\nadmin_password = "b"\n', encoding="utf-8")
    result = run_cli("-t", str(path))
    assert result.returncode != 0
    assert str(path) in result.stdout + result.stderr
    assert "general.port" in result.stdout + result.stderr


def test_start_with_bad_config_exits_nonzero(tmp_path: Path) -> None:
    config = static_config(port=find_free_port())
    config["general"]["pool_sise"] = 1
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = run_cli(str(path), timeout=15)
    assert result.returncode not in (0, None)
    assert "general.pool_sise" in result.stderr


# ---------------------------------------- TOML


def test_toml_config_serves_clients(doorman: StartDoorman, pool_config: MakePoolConfig, pg_trust: TempPostgres) -> None:
    config = pool_config(pg_trust, users=["app", "app2"], pool_size=2, general={"shutdown_timeout": "1s"})
    proc = doorman(config, fmt="toml")
    assert proc.config_path.suffix == ".toml"
    for user in ("app", "app2"):
        with connect(proc, user=user) as conn:
            assert scalar(conn, "select current_user") == user
    result = run_cli("-t", str(proc.config_path))
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stdout
    # SIGHUP re-reads the TOML file as TOML.
    new_config = copy.deepcopy(proc.config)
    new_config["pools"]["appdb"]["users"] = new_config["pools"]["appdb"]["users"][:1]
    rewrite_config(proc, new_config)
    offset = len(proc.log_text())
    proc.send_signal(signal.SIGHUP)
    proc.wait_for_log("configuration reloaded", after=offset, timeout=5)
    with pytest.raises(psycopg.OperationalError):
        connect(proc, user="app2")
    with connect(proc) as conn:
        assert scalar(conn, "select 1") == 1


# ---------------------------------------- logging options


@pytest.mark.parametrize("flag", ["structured", "json"])
def test_log_format_structured(
    doorman: StartDoorman, pool_config: MakePoolConfig, pg_trust: TempPostgres, flag: str
) -> None:
    proc = doorman(pool_config(pg_trust), extra_args=["-F", flag])
    with connect(proc) as conn:
        assert scalar(conn, "select 1") == 1
    assert proc.stop() == 0
    lines = [ln for ln in proc.log_text().splitlines() if ln.strip()]
    assert lines
    records = []
    for ln in lines:
        record = json.loads(ln)  # every line is one JSON object
        assert list(record) == ["timestamp", "level", "file", "line", "message"], record
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["timestamp"])
        assert isinstance(record["line"], int) and record["file"].endswith(".py")
        records.append(record)
    assert any("listening on" in r["message"] and r["level"] == "INFO" for r in records)
    assert any(r["level"] == "DEBUG" for r in records)  # the fixture's -l debug still applies
    assert any(r["message"].startswith("Welcome to pg_doorman") for r in records)


def test_log_level_warning_suppresses_info(doorman: StartDoorman, pool_config: MakePoolConfig, tmp_path: Path) -> None:
    # Point the pool at a port nothing listens on, so a client's attempt produces a warning.
    config = {
        "pools": {
            "appdb": {
                "server_host": "127.0.0.1",
                "server_port": find_free_port(),
                "users": [{"username": "app", "password": "app_pass", "pool_size": 1}],
            }
        }
    }
    proc = doorman(config, extra_args=["-l", "warning"])
    with pytest.raises(psycopg.OperationalError):
        connect(proc, connect_timeout=10)
    proc.wait_for_log("cannot open server connection", timeout=5)
    assert proc.stop() == 0
    text = proc.log_text()
    levels = set(re.findall(r"^\S+Z\s+(\w+) \S+:\d+: ", text, flags=re.MULTILINE))
    assert "WARN" in levels, text
    assert levels <= {"WARN", "ERROR"}, text
    assert "listening on" not in text and "client connected" not in text


# ---------------------------------------- generate


@pytest.mark.parametrize("fmt", ["yaml", "toml"])
def test_generate_prints_a_valid_config(tmp_path: Path, fmt: str) -> None:
    result = run_cli("generate", "--reference", "-f", fmt)
    assert result.returncode == 0, result.stderr
    assert "pools" in result.stdout and "general" in result.stdout
    path = tmp_path / f"generated.{fmt}"
    path.write_text(result.stdout, encoding="utf-8")
    check = run_cli("-t", str(path))
    assert check.returncode == 0, check.stdout + check.stderr
    assert "syntax is ok" in check.stdout and "test is successful" in check.stdout


def test_generate_to_output_file(tmp_path: Path) -> None:
    path = tmp_path / "out.toml"
    result = run_cli("generate", "--reference", "-o", str(path))
    assert result.returncode == 0, result.stderr
    assert path.exists()
    check = run_cli("-t", str(path))
    assert check.returncode == 0, check.stdout + check.stderr
