"""auth_query against a real PostgreSQL: users that exist only in PostgreSQL log in through pg_doorman with psycopg
and psql, their verifier read by a SECURITY DEFINER function (as the original's docs recommend).

One private cluster for the module (roles and the lookup function are created here; the shared clusters stay
untouched). Its pg_hba asks md5 of every role but the superuser, so a role stored as SCRAM is upgraded to SCRAM
by PostgreSQL, as it would be by pg_doorman.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from psycopg_helpers import connect, scalar
from web_helpers import request, wait_for_port, web_config, web_port

from conftest import (
    APP_DB,
    REPO_ROOT,
    DoormanProcess,
    StartDoorman,
    make_pool_config,
    new_cluster,
    prepare_config,
    write_config,
)
from pg_doorman.devcluster import TempPostgres, find_pg_bindir

LOOKUP_SQL = """
CREATE ROLE doorman_auth LOGIN PASSWORD 'auth_pw';
CREATE SCHEMA auth;
CREATE FUNCTION auth.lookup(p_user name) RETURNS TABLE (usename name, passwd text)
    LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog
    AS $$ SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename = p_user $$;
REVOKE ALL ON FUNCTION auth.lookup(name) FROM PUBLIC;
GRANT USAGE ON SCHEMA auth TO doorman_auth;
GRANT EXECUTE ON FUNCTION auth.lookup(name) TO doorman_auth;
"""
QUERY = "SELECT usename, passwd FROM auth.lookup($1)"
FAILED = 'password authentication failed for user "{}"'


@pytest.fixture(scope="module")
def pg() -> Iterator[TempPostgres]:
    cluster = new_cluster("md5")
    try:
        cluster.psql(LOOKUP_SQL, db=APP_DB)
        cluster.create_user("dyn_md5", "md5_pw", encryption="md5")
        cluster.create_user("dyn_scram", "scram_pw", encryption="scram-sha-256")
        yield cluster
    finally:
        cluster.cleanup()


def auth_query(**overrides: Any) -> dict[str, Any]:
    return {"query": QUERY, "user": "doorman_auth", "password": "auth_pw", "workers": 2, "min_interval": "0s",
            **overrides}  # fmt: skip


def start(doorman: StartDoorman, pg: TempPostgres, users: tuple[Any, ...] = (), **aq: Any) -> DoormanProcess:
    config = make_pool_config(pg, users=users, auth_query=auth_query(**aq))
    return doorman(config)


def show_auth_query(proc: DoormanProcess) -> dict[str, Any]:
    with psycopg.connect(proc.admin_dsn(), autocommit=True) as admin:
        cursor = admin.execute("SHOW AUTH_QUERY")
        names = [column.name for column in cursor.description or ()]
        rows = cursor.fetchall()
    assert names[:3] == ["database", "cache_entries", "cache_hits"] and len(names) == 13
    assert len(rows) == 1
    return dict(zip(names, rows[0], strict=True))


def login_error(proc: DoormanProcess, user: str, password: str) -> str:
    """The FATAL message a refused login gets (psycopg keeps no SQLSTATE for a failed connection)."""
    with pytest.raises(psycopg.OperationalError) as info:
        connect(proc, user=user, password=password)
    return str(info.value)


def refused(proc: DoormanProcess, user: str, password: str) -> bool:
    """Whether the login fails as a wrong password does in PostgreSQL (28P01's message)."""
    return f"FATAL:  {FAILED.format(user)}" in login_error(proc, user, password)


@pytest.fixture(scope="module")
def passthrough(pg: TempPostgres) -> Iterator[DoormanProcess]:
    """One pg_doorman in passthrough mode shared by the tests below that leave it as they found it (the
    function-scoped `doorman` fixture cannot serve a module)."""
    tmp = Path(tempfile.mkdtemp(prefix="pg_doorman_authq_"))
    full = prepare_config(make_pool_config(pg, users=(), auth_query=auth_query()))
    path = write_config(full, tmp / "pg_doorman.yaml")
    log_path = tmp / "pg_doorman.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PYTHONPATH"] = str(REPO_ROOT / "src")
    with open(log_path, "wb") as log_file:
        popen = subprocess.Popen(
            [sys.executable, "-m", "pg_doorman", str(path), "-l", "debug"],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=tmp,
        )  # fmt: skip
    port = int(full["general"]["port"])
    proc = DoormanProcess(popen=popen, host="127.0.0.1", port=port, config=full, config_path=path, log_path=log_path)
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


# ------------------------------------------------------------------------------------------ passthrough


@pytest.mark.parametrize(("user", "password"), [("dyn_md5", "md5_pw"), ("dyn_scram", "scram_pw")])
def test_user_known_only_to_postgres_logs_in_as_itself(passthrough: DoormanProcess, user: str, password: str) -> None:
    with connect(passthrough, user=user, password=password) as conn:
        assert scalar(conn, "SELECT current_user") == user
        assert scalar(conn, "SELECT 40 + 2") == 42
    # Second login: from the cache, and the pool's servers log in with pass-the-hash / the ClientKey again.
    with connect(passthrough, user=user, password=password) as conn:
        assert scalar(conn, "SELECT current_user") == user


def test_psql_logs_in_through_auth_query(passthrough: DoormanProcess, pg: TempPostgres) -> None:
    out = subprocess.run(
        [os.path.join(find_pg_bindir(), "psql"), "-X", "-A", "-t", "-h", "127.0.0.1", "-p", str(passthrough.port),
         "-U", "dyn_scram", "-d", APP_DB, "-c", "SELECT session_user"],
        env={"PGPASSWORD": "scram_pw", "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=30,
        check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "dyn_scram"


def test_wrong_password_and_unknown_user_get_the_same_refusal(passthrough: DoormanProcess) -> None:
    wrong = login_error(passthrough, "dyn_md5", "nope")
    unknown = login_error(passthrough, "no_such_role", "nope")
    assert f"FATAL:  {FAILED.format('dyn_md5')}" in wrong
    # The name is echoed as PostgreSQL does; nothing else differs.
    assert wrong.replace("dyn_md5", "X") == unknown.replace("no_such_role", "X")


def test_role_without_password_is_refused(passthrough: DoormanProcess, pg: TempPostgres) -> None:
    pg.create_user("dyn_nopass", None)
    assert refused(passthrough, "dyn_nopass", "x")


def test_concurrent_first_logins_of_one_user_share_one_lookup(passthrough: DoormanProcess, pg: TempPostgres) -> None:
    pg.create_user("dyn_burst", "burst_pw", encryption="md5")
    before = show_auth_query(passthrough)
    results: list[Any] = []

    def login() -> None:
        try:
            with connect(passthrough, user="dyn_burst", password="burst_pw") as conn:
                results.append(scalar(conn, "SELECT current_user"))
        except Exception as exc:  # collected and asserted below
            results.append(exc)

    threads = [threading.Thread(target=login) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == ["dyn_burst"] * 8
    after = show_auth_query(passthrough)
    assert after["executor_queries"] - before["executor_queries"] == 1
    assert after["auth_success"] - before["auth_success"] == 8


def test_user_name_is_a_parameter_not_sql(passthrough: DoormanProcess) -> None:
    """A name full of quotes is only a name: refused like any unknown user, and the pooler still serves."""
    assert refused(passthrough, "x' OR '1'='1", "whatever")
    with connect(passthrough, user="dyn_md5", password="md5_pw") as conn:
        assert scalar(conn, "SELECT 1") == 1


def test_flood_of_random_names_is_refused_and_bounded(passthrough: DoormanProcess) -> None:
    before = show_auth_query(passthrough)
    for index in range(40):
        name = f"random_{index}_{time.monotonic_ns()}"
        assert refused(passthrough, name, "x")
    after = show_auth_query(passthrough)
    assert after["auth_failure"] - before["auth_failure"] == 40
    assert after["dynamic_pools_created"] == before["dynamic_pools_created"]  # no pool for a refused name
    with connect(passthrough, user="dyn_scram", password="scram_pw") as conn:
        assert scalar(conn, "SELECT current_user") == "dyn_scram"


# ------------------------------------------------------------------------------------------ own processes


def test_changed_password_is_picked_up(doorman: StartDoorman, pg: TempPostgres) -> None:
    pg.create_user("dyn_rot", "old_pw", encryption="md5")
    pg.create_user("dyn_rot_s", "old_pw", encryption="scram-sha-256")
    proc = start(doorman, pg)
    for user in ("dyn_rot", "dyn_rot_s"):
        with connect(proc, user=user, password="old_pw") as conn:
            assert scalar(conn, "SELECT 1") == 1
    pg.create_user("dyn_rot", "new_pw", encryption="md5")
    pg.create_user("dyn_rot_s", "new_pw", encryption="scram-sha-256")
    # MD5: the cached verifier fails, the re-read one accepts the same answer: the first login succeeds, and its
    # pool (pass-the-hash with the new verifier) reaches PostgreSQL.
    with connect(proc, user="dyn_rot", password="new_pw") as conn:
        assert scalar(conn, "SELECT current_user") == "dyn_rot"
    # SCRAM: the proof is bound to the old salt; that login fails, the next one uses the re-read verifier.
    assert refused(proc, "dyn_rot_s", "new_pw")
    with connect(proc, user="dyn_rot_s", password="new_pw") as conn:
        assert scalar(conn, "SELECT current_user") == "dyn_rot_s"
    for user in ("dyn_rot", "dyn_rot_s"):
        assert refused(proc, user, "old_pw")
    stats = show_auth_query(proc)
    assert stats["cache_refetches"] >= 2


def test_static_users_win(doorman: StartDoorman, pg: TempPostgres) -> None:
    """A configured user logs in with its configured password even when PostgreSQL's differs."""
    static = {"username": "dyn_md5", "password": "static_pw", "server_username": "dyn_md5",
              "server_password": "md5_pw"}  # fmt: skip
    proc = start(doorman, pg, users=(static,))
    with connect(proc, user="dyn_md5", password="static_pw") as conn:
        assert scalar(conn, "SELECT current_user") == "dyn_md5"
    assert refused(proc, "dyn_md5", "md5_pw")
    stats = show_auth_query(proc)
    assert stats["executor_queries"] == 0 and stats["auth_success"] == 0


def test_dedicated_mode_runs_everyone_as_server_user(doorman: StartDoorman, pg: TempPostgres) -> None:
    proc = start(doorman, pg, server_user="app", server_password="app_pass")
    for user, password in (("dyn_md5", "md5_pw"), ("dyn_scram", "scram_pw")):
        with connect(proc, user=user, password=password) as conn:
            assert scalar(conn, "SELECT current_user") == "app"
    assert refused(proc, "no_such_role", "x")
    stats = show_auth_query(proc)
    assert stats["auth_success"] == 2 and stats["auth_failure"] == 1
    assert stats["dynamic_pools_current"] == 0 and stats["dynamic_pools_created"] == 0
    with psycopg.connect(proc.admin_dsn(), autocommit=True) as admin:
        users = {row[1] for row in admin.execute("SHOW POOLS").fetchall()}
    assert users == {"app"}


def test_idle_dynamic_pool_is_collected(doorman: StartDoorman, pg: TempPostgres) -> None:
    config = make_pool_config(pg, users=(), auth_query=auth_query(), idle_timeout=500)
    pg.create_user("dyn_gc", "gc_pw", encryption="md5")
    proc = doorman(config)
    with connect(proc, user="dyn_gc", password="gc_pw") as conn:
        assert scalar(conn, "SELECT 1") == 1
    assert show_auth_query(proc)["dynamic_pools_current"] == 1
    deadline = time.monotonic() + 20
    while (stats := show_auth_query(proc))["dynamic_pools_current"] and time.monotonic() < deadline:
        time.sleep(0.3)
    assert stats["dynamic_pools_current"] == 0 and stats["dynamic_pools_destroyed"] == 1
    while pg.backend_pids(user="dyn_gc") and time.monotonic() < deadline:  # its server closed at idle_timeout
        time.sleep(0.1)
    assert pg.backend_pids(user="dyn_gc") == []
    # A later login builds the pool again.
    with connect(proc, user="dyn_gc", password="gc_pw") as conn:
        assert scalar(conn, "SELECT current_user") == "dyn_gc"
    assert show_auth_query(proc)["dynamic_pools_created"] == 2


def test_lookup_failure_refuses_and_logs(doorman: StartDoorman, pg: TempPostgres) -> None:
    proc = start(doorman, pg, password="wrong_auth_pw")
    assert "FATAL:  Authentication service unavailable" in login_error(proc, "dyn_md5", "md5_pw")
    proc.wait_for_log('cannot look up user "dyn_md5"')
    assert show_auth_query(proc)["executor_errors"] >= 1


def test_reload_without_auth_query_drops_dynamic_pools(doorman: StartDoorman, pg: TempPostgres) -> None:
    proc = start(doorman, pg, users=("app",))
    with connect(proc, user="dyn_md5", password="md5_pw") as conn:
        assert scalar(conn, "SELECT 1") == 1
    with psycopg.connect(proc.admin_dsn(), autocommit=True) as admin:
        admin.execute("RELOAD")  # unchanged: the stats stay
    assert show_auth_query(proc)["auth_success"] == 1
    document = yaml.safe_load(proc.config_path.read_text())
    del document["pools"][APP_DB]["auth_query"]
    proc.config_path.write_text(yaml.safe_dump(document))
    with psycopg.connect(proc.admin_dsn(), autocommit=True) as admin:
        admin.execute("RELOAD")
        pools = {row[1] for row in admin.execute("SHOW POOLS").fetchall()}
        assert admin.execute("SHOW AUTH_QUERY").fetchall() == []
    assert pools == {"app"}
    assert refused(proc, "dyn_md5", "md5_pw")


def test_metrics(doorman: StartDoorman, pg: TempPostgres) -> None:
    config = web_config(make_pool_config(pg, users=(), auth_query=auth_query()))
    proc = doorman(config)
    port = web_port(config)
    wait_for_port(port)
    with connect(proc, user="dyn_md5", password="md5_pw") as conn:
        assert scalar(conn, "SELECT 1") == 1
    login_error(proc, "dyn_md5", "nope")
    text = request(port, "/metrics").text
    lines = set(text.splitlines())
    assert 'pg_doorman_auth_query_auth_total{result="success",database="appdb"} 1' in lines
    assert 'pg_doorman_auth_query_auth_total{result="failure",database="appdb"} 1' in lines
    # The wrong password re-read the cached verifier (min_interval 0s): two queries.
    assert 'pg_doorman_auth_query_executor_total{type="queries",database="appdb"} 2' in lines
    assert 'pg_doorman_auth_query_cache_total{type="refetches",database="appdb"} 1' in lines
    assert 'pg_doorman_auth_query_dynamic_pools{type="current",database="appdb"} 1' in lines
    assert 'pg_doorman_auth_query_cache{type="entries",database="appdb"} 1' in lines
