"""The original's command line around a running process: -d with daemon_pid_file, systemd notify, SIGUSR2,
environment variables, one-line errors, log levels (trace), and ``generate`` against a real PostgreSQL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from psycopg_helpers import connect, scalar
from test_cli import REPO_ROOT, run_cli, static_config, wait_until

from pg_doorman.devcluster import TempPostgres, find_free_port

StartDoorman = Callable[..., Any]
MakePoolConfig = Callable[..., dict[str, Any]]


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if (not k.startswith("PG") or k.startswith("PG_DOORMAN_")) and k not in ("CONFIG_FILE", "LOG_LEVEL")
    }
    env.pop("LOG_FORMAT", None)
    env.pop("NOTIFY_SOCKET", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _write(tmp_path: Path, config: dict[str, Any], name: str = "pg_doorman.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def _served_config(cluster: TempPostgres, pool_config: MakePoolConfig, port: int, **general: Any) -> dict[str, Any]:
    config = static_config(port=port, **general)
    config["pools"] = pool_config(cluster)["pools"]
    return config


# ---------------------------------------- -d / daemon_pid_file


def test_daemon_writes_pid_file_detaches_and_serves(
    tmp_path: Path, pool_config: MakePoolConfig, pg_trust: TempPostgres
) -> None:
    port = find_free_port()
    pid_file = tmp_path / "doorman.pid"
    log_file = tmp_path / "doorman.log"
    path = _write(tmp_path, _served_config(pg_trust, pool_config, port, daemon_pid_file=str(pid_file)))
    with open(log_file, "wb") as log:
        launcher = subprocess.run(
            [sys.executable, "-m", "pg_doorman", "-d", str(path)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_env(),
            timeout=30,
            check=False,
        )
    assert launcher.returncode == 0, log_file.read_text()
    # The launcher returned only once the daemon was listening and its pid file written.
    daemon_pid = int(pid_file.read_text().strip())
    try:
        assert daemon_pid != launcher.returncode and _alive(daemon_pid)
        assert os.getsid(daemon_pid) != os.getsid(0)  # a session of its own: detached from our terminal
        assert "Success, daemonized" in log_file.read_text()
        with psycopg.connect(
            f"host=127.0.0.1 port={port} user=app password=app_pass dbname=appdb", connect_timeout=5
        ) as conn:
            assert scalar(conn, "select 1") == 1
        # A second daemon with the same pid file refuses instead of overwriting it.
        second = _write(
            tmp_path, _served_config(pg_trust, pool_config, find_free_port(), daemon_pid_file=str(pid_file)), "b.yaml"
        )
        again = subprocess.run(
            [sys.executable, "-m", "pg_doorman", "-d", str(second)],
            capture_output=True, text=True, env=_env(), timeout=30, check=False, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert again.returncode != 0
        assert int(pid_file.read_text().strip()) == daemon_pid
        # Logs went to the file the launcher's stderr pointed at.
        wait_until(lambda: "client connected" in log_file.read_text() or "listening on" in log_file.read_text())
    finally:
        if _alive(daemon_pid):
            os.kill(daemon_pid, signal.SIGTERM)
    wait_until(lambda: not _alive(daemon_pid), timeout=10, what="daemon to exit")
    assert not pid_file.exists(), "the pid file is removed at exit"


def test_daemon_that_cannot_start_makes_the_launcher_fail(
    tmp_path: Path, pool_config: MakePoolConfig, pg_trust: TempPostgres
) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        port = busy.getsockname()[1]
        pid_file = tmp_path / "d.pid"
        path = _write(tmp_path, _served_config(pg_trust, pool_config, port, daemon_pid_file=str(pid_file)))
        result = subprocess.run(
            [sys.executable, "-m", "pg_doorman", "-d", str(path)],
            capture_output=True, text=True, env=_env(), timeout=30, check=False, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert result.returncode == 1
        assert "did not start" in result.stderr
    finally:
        busy.close()


def test_foreground_pid_file_when_configured(
    doorman: StartDoorman, pool_config: MakePoolConfig, pg_trust: TempPostgres, tmp_path: Path
) -> None:
    pid_file = tmp_path / "fg.pid"
    proc = doorman(pool_config(pg_trust, general={"daemon_pid_file": str(pid_file)}))
    assert int(pid_file.read_text().strip()) == proc.pid
    assert proc.stop() == 0
    assert not pid_file.exists()


# ---------------------------------------- systemd notify, SIGUSR2


def test_systemd_notify_ready_reloading_stopping(
    doorman: StartDoorman, pool_config: MakePoolConfig, pg_trust: TempPostgres, tmp_path: Path
) -> None:
    notify_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.settimeout(10)
    try:
        proc = doorman(pool_config(pg_trust), env={"NOTIFY_SOCKET": str(notify_path)}, wait=False)
        ready = sock.recv(4096).decode()
        assert "READY=1" in ready.splitlines()
        assert f"MAINPID={proc.pid}" in ready.splitlines()
        # READY comes after the listener is up: a client can connect right away.
        with connect(proc) as conn:
            assert scalar(conn, "select 1") == 1
        proc.send_signal(signal.SIGHUP)
        assert sock.recv(4096).decode() == "RELOADING=1"
        assert sock.recv(4096).decode() == "READY=1"
        proc.send_signal(signal.SIGTERM)
        assert sock.recv(4096).decode() == "STOPPING=1"
        assert proc.wait(10) == 0
    finally:
        sock.close()


def test_sigusr2_never_kills(doorman: StartDoorman, pool_config: MakePoolConfig, pg_trust: TempPostgres) -> None:
    proc = doorman(pool_config(pg_trust))
    conn = connect(proc)
    try:
        assert scalar(conn, "select 1") == 1
        offset = len(proc.log_text())
        for _ in range(2):
            proc.send_signal(signal.SIGUSR2)
        line = proc.wait_for_log("binary upgrade is not available", after=offset, timeout=5)
        assert "SIGUSR2" in line
        time.sleep(0.2)
        assert proc.returncode is None
        assert scalar(conn, "select 2") == 2
        with connect(proc) as fresh:
            assert scalar(fresh, "select 3") == 3
    finally:
        conn.close()


# ---------------------------------------- logging: trace, runtime lines, env


def test_trace_level_env_and_disconnect_duration(
    doorman: StartDoorman, pool_config: MakePoolConfig, pg_trust: TempPostgres
) -> None:
    config = pool_config(pg_trust, general={"log_client_connections": True, "log_client_disconnections": True})
    proc = doorman(config, env={"LOG_FORMAT": "text", "NO_COLOR": "1"}, extra_args=["-l", "trace"])
    with connect(proc) as conn:
        assert scalar(conn, "select 1") == 1
        time.sleep(0.3)
    line = proc.wait_for_log("disconnected, session duration", timeout=5)
    seconds = float(line.rsplit(" ", 1)[1].rstrip("s"))
    assert 0.3 <= seconds < 10, line
    assert "\x1b[" not in proc.log_text()  # NO_COLOR (and not a terminal anyway)


def test_query_wait_timeout_leaves_a_log_line(
    doorman: StartDoorman, pool_config: MakePoolConfig, pg_trust: TempPostgres
) -> None:
    proc = doorman(pool_config(pg_trust, pool_size=1, general={"query_wait_timeout": "300ms"}))
    holder = connect(proc, autocommit=False)
    try:
        scalar(holder, "select 1")  # holds the only server inside a transaction
        with connect(proc) as waiter, pytest.raises(psycopg.OperationalError):
            waiter.execute("select 1")
        line = proc.wait_for_log("query_wait_timeout", timeout=5)
        assert "app@appdb" in line and "WARN" in line
    finally:
        holder.close()


def test_config_file_from_environment_and_bad_env_values(
    tmp_path: Path, pool_config: MakePoolConfig, pg_trust: TempPostgres
) -> None:
    path = _write(tmp_path, static_config())
    result = subprocess.run(
        [sys.executable, "-m", "pg_doorman", "-t"],
        capture_output=True, text=True, env=_env(CONFIG_FILE=str(path)), timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"configuration file {path} test is successful" in result.stdout
    for name, value, needle in (
        ("LOG_LEVEL", "loud", "invalid log level 'loud'"),
        ("LOG_FORMAT", "xml", "invalid log format 'xml'"),
        ("DAEMON", "maybe", "DAEMON"),
    ):
        bad = subprocess.run(
            [sys.executable, "-m", "pg_doorman", str(path)],
            capture_output=True, text=True, env=_env(**{name: value}), timeout=30, check=False,
        )  # fmt: skip
        assert bad.returncode == 2, (name, bad.stderr)
        assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr  # one line, no traceback
        assert needle in bad.stderr


@pytest.mark.parametrize(
    "args",
    [["-l", "loud"], ["-F", "xml"], ["--no-such-flag"], ["generate", "--pool-size", "x"], ["generate", "-f", "ini"]],
)
def test_bad_command_line_is_one_line(args: list[str]) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------- generate


@pytest.mark.parametrize("fmt", ["yaml", "toml"])
def test_generate_from_postgres_then_clients_log_in(
    doorman: StartDoorman, pg_trust: TempPostgres, tmp_path: Path, fmt: str
) -> None:
    out = tmp_path / f"generated.{fmt}"
    result = run_cli(
        "generate", "--host", "127.0.0.1", "-p", str(pg_trust.port), "-u", "postgres", "-o", str(out),
        "--pool-size", "7",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    check = run_cli("-t", str(out))
    assert check.returncode == 0, check.stdout + check.stderr
    from pg_doorman.config import load_config

    config = load_config(out)
    assert {"appdb", "postgres"} <= set(config.pools)
    assert "template0" not in config.pools and "template1" not in config.pools
    users = {u.username: u for u in config.pools["appdb"].users}
    assert users["app"].password.startswith("SCRAM-SHA-256$")  # the verifier PostgreSQL stores
    assert users["app"].pool_size == 7
    assert "app_pass" not in text
    assert "pg_hba" not in text  # no trust-everybody rules
    # Start it (on a free port) and log in with the role's own password.
    generated = yaml.safe_load(text) if fmt == "yaml" else __import__("tomllib").loads(text)
    generated["general"]["host"] = "127.0.0.1"
    generated["general"].pop("port")
    proc = doorman(generated, fmt=fmt)
    with connect(proc, user="app2") as conn:
        assert scalar(conn, "select current_user") == "app2"
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(proc, user="app", password="wrong")


def test_generate_session_mode_and_server_host_stdout(pg_trust: TempPostgres) -> None:
    result = run_cli(
        "generate", "--host", "127.0.0.1", "-p", str(pg_trust.port), "-u", "postgres", "-s",
        "--server-host", "db.internal", "--no-comments", "-d", "appdb",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "#" not in result.stdout
    config = yaml.safe_load(result.stdout)
    assert config["pools"]["appdb"]["pool_mode"] == "session"
    assert config["pools"]["appdb"]["server_host"] == "db.internal"


def test_generate_as_non_superuser_says_why(pg_trust: TempPostgres) -> None:
    result = run_cli("generate", "--host", "127.0.0.1", "-p", str(pg_trust.port), "-u", "app", "-d", "appdb")
    assert result.returncode == 1
    assert "pg_shadow" in result.stderr and "superuser" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_generate_unreachable_server(tmp_path: Path) -> None:
    result = run_cli("generate", "--host", "127.0.0.1", "-p", str(find_free_port()))
    assert result.returncode == 1
    assert "cannot connect to PostgreSQL" in result.stderr


def test_generate_reference_and_docs(tmp_path: Path) -> None:
    reference = run_cli("generate", "--reference", "-f", "toml")
    assert reference.returncode == 0
    path = tmp_path / "ref.toml"
    path.write_text(reference.stdout)
    assert run_cli("-t", str(path)).returncode == 0
    docs = run_cli("generate-docs", "-o", str(tmp_path / "docs"))
    assert docs.returncode == 0, docs.stderr
    text = (tmp_path / "docs" / "configuration.md").read_text()
    for key in ("query_wait_timeout", "pg_hba", "auth_query", "patroni_api_urls", "auth_pam_service", "talos"):
        assert f"`{key}`" in text
