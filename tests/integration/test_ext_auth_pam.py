"""PAM authentication (``auth_pam_service``) through pg_doorman, against real PAM service files.

The tests run as root: each creates a system user (useradd + chpasswd) and service files
``/etc/pam.d/pg_doorman_test_<random>`` using pam_unix (``nodelay``: no failure delay), and removes them after.
A "slow" service runs ``pam_exec sleep`` before pam_unix, so that every PAM login takes half a second: twenty of
them at once must neither block other clients' queries (PAM runs in worker threads) nor run more than
`MAX_CONCURRENT_CHECKS` at a time.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from test_ext_auth_jwt import cleartext_login

from pg_doorman.auth.external import MAX_CONCURRENT_CHECKS
from pg_doorman.devcluster import TempPostgres

StartDoorman = Callable[..., Any]
PoolConfig = Callable[..., dict[str, Any]]

PAM_DIR = Path("/etc/pam.d")
SLEEP = shutil.which("sleep") or "/usr/bin/sleep"
SLOW_SECONDS = 0.5


@dataclass
class PamSetup:
    user: str
    password: str
    service: str  # pam_unix
    slow_service: str  # sleep, then pam_unix
    hanging_service: str  # sleeps 3 s


@pytest.fixture
def pam_setup() -> Iterator[PamSetup]:
    tag = secrets.token_hex(4)
    user = f"pgdt_{tag}"
    password = f"Pw-{secrets.token_hex(6)}!"
    names = {kind: f"pg_doorman_test_{tag}_{kind}" for kind in ("unix", "slow", "hang")}
    unix = "auth required pam_unix.so nodelay\naccount required pam_unix.so\n"
    bodies = {
        "unix": unix,
        "slow": f"auth requisite pam_exec.so quiet {SLEEP} {SLOW_SECONDS}\n{unix}",
        "hang": f"auth requisite pam_exec.so quiet {SLEEP} 3\n{unix}",
    }
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", user], check=True)
    try:
        subprocess.run(["chpasswd"], input=f"{user}:{password}\n".encode(), check=True)
        for kind, name in names.items():
            (PAM_DIR / name).write_text(bodies[kind])
        yield PamSetup(user, password, names["unix"], names["slow"], names["hang"])
    finally:
        for name in names.values():
            (PAM_DIR / name).unlink(missing_ok=True)
        subprocess.run(["userdel", user], check=False)


def _pam_user(name: str, service: str) -> dict[str, Any]:
    return {"username": name, "password": "", "auth_pam_service": service, "server_username": "app", "pool_size": 4}


@pytest.fixture
def pam_doorman(doorman: StartDoorman, pg_trust: TempPostgres, pool_config: PoolConfig, pam_setup: PamSetup) -> Any:
    users = [
        _pam_user(pam_setup.user, pam_setup.service),
        _pam_user("ghost_user_not_in_passwd", pam_setup.service),
        {"username": "app", "password": "app_pass", "pool_size": 4},
    ]
    return doorman(pool_config(pg_trust, users=users))


def test_correct_password_is_admitted(pam_doorman: Any, pam_setup: PamSetup) -> None:
    with psycopg.connect(pam_doorman.dsn(pam_setup.user, pam_setup.password), connect_timeout=10) as conn:
        assert conn.execute("select current_user").fetchone() == ("app",)
    assert cleartext_login(pam_doorman.port, pam_setup.user, pam_setup.password) == {}


def test_wrong_password_and_unknown_users_are_refused(pam_doorman: Any, pam_setup: PamSetup) -> None:
    for user, password in (
        (pam_setup.user, "wrong"),
        (pam_setup.user, pam_setup.password + "x"),
        ("ghost_user_not_in_passwd", pam_setup.password),  # configured, but PAM does not know it
        ("not_configured_at_all", pam_setup.password),
    ):
        fields = cleartext_login(pam_doorman.port, user, password) if user != "not_configured_at_all" else None
        if fields is not None:
            assert fields["C"] == "28P01", user
            assert fields["M"] == f'password authentication failed for user "{user}"'
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(pam_doorman.dsn(user, password), connect_timeout=10)
    pam_doorman.wait_for_log("PAM authentication failed")


def test_empty_password_is_refused_before_pam(pam_doorman: Any, pam_setup: PamSetup) -> None:
    fields = cleartext_login(pam_doorman.port, pam_setup.user, "")
    assert fields["C"] == "28P01"
    pam_doorman.wait_for_log("empty password returned by client")


def test_concurrent_pam_logins_do_not_block_other_clients(
    doorman: StartDoorman, pg_trust: TempPostgres, pool_config: PoolConfig, pam_setup: PamSetup
) -> None:
    users = [_pam_user(pam_setup.user, pam_setup.slow_service), {"username": "app", "password": "app_pass"}]
    proc = doorman(pool_config(pg_trust, users=users, pool_size=4))
    logins = 20
    results: list[dict[str, str]] = []
    latencies: list[float] = []
    stop = threading.Event()

    def pam_login() -> None:
        results.append(cleartext_login(proc.port, pam_setup.user, pam_setup.password))

    with psycopg.connect(proc.dsn("app", "app_pass"), connect_timeout=10, autocommit=True) as conn:
        conn.execute("select 1")

        def query_loop() -> None:
            while not stop.is_set():
                started = time.monotonic()
                conn.execute("select 1").fetchone()
                latencies.append(time.monotonic() - started)
                time.sleep(0.01)

        querier = threading.Thread(target=query_loop)
        querier.start()
        started = time.monotonic()
        threads = [threading.Thread(target=pam_login) for _ in range(logins)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        elapsed = time.monotonic() - started
        stop.set()
        querier.join(10)
    assert results == [{}] * logins
    assert latencies and max(latencies) < 0.25, max(latencies)  # the event loop kept serving queries
    rounds = -(-logins // MAX_CONCURRENT_CHECKS)
    # bounded: at most MAX_CONCURRENT_CHECKS PAM conversations at a time, so the logins come in rounds
    assert elapsed >= rounds * SLOW_SECONDS * 0.9, elapsed
    assert elapsed < rounds * SLOW_SECONDS + 5, elapsed


def test_a_pam_check_outliving_the_login_timeout_refuses_and_frees_others(
    doorman: StartDoorman, pg_trust: TempPostgres, pool_config: PoolConfig, pam_setup: PamSetup
) -> None:
    users = [_pam_user(pam_setup.user, pam_setup.hanging_service), {"username": "app", "password": "app_pass"}]
    proc = doorman(pool_config(pg_trust, users=users, general={"client_login_timeout": "1s"}))
    started = time.monotonic()
    fields = cleartext_login(proc.port, pam_setup.user, pam_setup.password)
    assert fields["C"] == "57014"  # canceling authentication due to timeout
    assert time.monotonic() - started < 2.5
    with psycopg.connect(proc.dsn("app", "app_pass"), connect_timeout=10) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_pam_user_needs_no_password_key_and_missing_service_warns(
    doorman: StartDoorman, pg_trust: TempPostgres, pam_setup: PamSetup
) -> None:
    users = [
        {"username": pam_setup.user, "auth_pam_service": pam_setup.service, "server_username": "app", "pool_size": 2},
        {"username": "x", "auth_pam_service": "pg_doorman_test_no_such_service", "pool_size": 1},
    ]
    proc = doorman({"pools": {"appdb": {"server_host": "127.0.0.1", "server_port": pg_trust.port, "users": users}}})
    result = subprocess.run(
        [sys.executable, "-m", "pg_doorman", "-t", str(proc.config_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "/etc/pam.d/pg_doorman_test_no_such_service does not exist" in result.stdout + result.stderr
    with psycopg.connect(proc.dsn(pam_setup.user, pam_setup.password), connect_timeout=10) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
