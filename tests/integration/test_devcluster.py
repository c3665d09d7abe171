"""TempPostgres itself: the clusters every other integration test stands on must behave as documented."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from pg_doorman.devcluster import PostgresError, TempPostgres, find_free_port

SCRAM_VERIFIER = re.compile(r"^SCRAM-SHA-256\$\d+:[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+$")
MD5_VERIFIER = re.compile(r"^md5[0-9a-f]{32}$")

PgFactory = Callable[..., TempPostgres]


def query_one(dsn: str, sql: str) -> Any:
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        row = conn.execute(sql).fetchone()
        assert row is not None
        return row[0]


def test_psql_runs_statements_one_by_one(pg_trust: TempPostgres) -> None:
    assert pg_trust.psql("SELECT 1") == "1"
    assert pg_trust.psql("SELECT 1; SELECT 2") == "1\n2"
    assert pg_trust.psql("SELECT current_user", db="appdb", user="app") == "app"


def test_psql_raises_on_error(pg_trust: TempPostgres) -> None:
    with pytest.raises(PostgresError, match="does_not_exist"):
        pg_trust.psql("SELECT * FROM does_not_exist")


def test_settings_are_applied(pg_trust: TempPostgres) -> None:
    assert pg_trust.psql("SHOW max_connections") == "300"
    assert pg_trust.psql("SHOW fsync") == "off"
    assert pg_trust.psql("SHOW listen_addresses") == "127.0.0.1"
    assert pg_trust.psql("SHOW port") == str(pg_trust.port)
    assert pg_trust.psql("SHOW unix_socket_directories") == pg_trust.socket_dir


def test_standard_roles_and_database(pg_trust: TempPostgres) -> None:
    owner = pg_trust.psql("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'appdb'")
    assert owner == "app"
    roles = pg_trust.psql("SELECT rolname FROM pg_roles WHERE rolname IN ('app', 'app2') ORDER BY 1")
    assert roles.splitlines() == ["app", "app2"]


def test_trust_cluster_accepts_any_password(pg_trust: TempPostgres) -> None:
    assert query_one(pg_trust.dsn(user="app", password="wrong", db="appdb"), "SELECT current_user") == "app"


@pytest.mark.parametrize("cluster_name", ["pg_md5", "pg_scram"])
def test_password_users_authenticate_over_tcp(cluster_name: str, request: pytest.FixtureRequest) -> None:
    cluster: TempPostgres = request.getfixturevalue(cluster_name)
    dsn = cluster.dsn(user="app", password="app_pass", db="appdb")
    assert query_one(dsn, "SELECT current_user || '@' || current_database()") == "app@appdb"
    assert query_one(cluster.dsn(user="app2", password="app2_pass"), "SELECT current_user") == "app2"


@pytest.mark.parametrize("cluster_name", ["pg_md5", "pg_scram"])
def test_wrong_password_is_rejected(cluster_name: str, request: pytest.FixtureRequest) -> None:
    cluster: TempPostgres = request.getfixturevalue(cluster_name)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(cluster.dsn(user="app", password="nope", db="appdb"), connect_timeout=10)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(cluster.dsn(user="app", db="appdb"), connect_timeout=10)


def test_superuser_is_trusted_over_tcp(pg_scram: TempPostgres) -> None:
    assert query_one(pg_scram.dsn(), "SELECT current_user") == "postgres"


def test_md5_cluster_stores_md5_hashes(pg_md5: TempPostgres) -> None:
    for user in ("app", "app2"):
        assert MD5_VERIFIER.match(pg_md5.role_password_hash(user))


def test_scram_cluster_stores_scram_verifiers(pg_scram: TempPostgres) -> None:
    for user in ("app", "app2"):
        assert SCRAM_VERIFIER.match(pg_scram.role_password_hash(user))


def test_role_password_hash_of_unknown_role_raises(pg_md5: TempPostgres) -> None:
    with pytest.raises(PostgresError):
        pg_md5.role_password_hash("nobody_here")


def test_create_user_chooses_encryption(pg_factory: PgFactory) -> None:
    cluster = pg_factory("md5")
    cluster.create_user("scram_user", "s3cret", encryption="scram-sha-256")
    cluster.create_user("md5_user", "s3cret", encryption="md5")
    cluster.create_user("boss", "boss'pass", superuser=True)
    cluster.create_user("nopass", None)
    assert SCRAM_VERIFIER.match(cluster.role_password_hash("scram_user"))
    assert MD5_VERIFIER.match(cluster.role_password_hash("md5_user"))
    # pg_hba says md5, but a SCRAM verifier makes the server run SCRAM: both must log in.
    assert query_one(cluster.dsn(user="scram_user", password="s3cret"), "SELECT 1") == 1
    assert query_one(cluster.dsn(user="md5_user", password="s3cret"), "SELECT 1") == 1
    assert (
        query_one(
            cluster.dsn(user="boss", password="boss'pass"),
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
        )
        is True
    )
    with pytest.raises(PostgresError):
        cluster.role_password_hash("nopass")
    # create_user on an existing role updates its password
    cluster.create_user("md5_user", "changed", encryption="md5")
    assert query_one(cluster.dsn(user="md5_user", password="changed"), "SELECT 1") == 1


def test_password_auth_method(pg_factory: PgFactory) -> None:
    cluster = pg_factory("password")
    assert query_one(cluster.dsn(user="app", password="app_pass"), "SELECT current_user") == "app"
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(cluster.dsn(user="app", password="bad"), connect_timeout=10)


def test_kill_then_start_again(pg_factory: PgFactory) -> None:
    cluster = pg_factory("scram-sha-256")
    cluster.psql("CREATE TABLE survivors (id int); INSERT INTO survivors VALUES (1)", db="appdb", user="app")
    conn = psycopg.connect(cluster.dsn(user="app", password="app_pass", db="appdb"), connect_timeout=10)
    old_pid = cluster.postmaster_pid()
    cluster.kill()
    assert not cluster.is_running()
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    conn.close()
    cluster.start()
    assert cluster.is_running()
    assert cluster.postmaster_pid() != old_pid
    assert query_one(cluster.dsn(user="app", password="app_pass", db="appdb"), "SELECT count(*) FROM survivors") == 1
    cluster.kill()
    cluster.kill()  # killing a dead cluster is a no-op
    cluster.start()
    assert cluster.psql("SELECT 1") == "1"


def test_stop_start_restart_keep_data_and_apply_settings(pg_factory: PgFactory) -> None:
    cluster = pg_factory("md5", settings={"max_connections": "50"})
    assert cluster.psql("SHOW max_connections") == "50"
    cluster.psql("CREATE TABLE kept (id int)", db="appdb")
    cluster.stop()
    cluster.stop()  # idempotent
    assert not cluster.is_running()
    cluster.start()
    cluster.start()  # idempotent
    cluster.settings["work_mem"] = "7MB"
    cluster.restart()
    assert cluster.psql("SHOW work_mem") == "7MB"
    assert cluster.psql("SELECT count(*) FROM kept", db="appdb") == "0"
    # users are created once, at the first start; restarts keep the same verifier
    assert MD5_VERIFIER.match(cluster.role_password_hash("app"))


def test_context_manager_and_cleanup_remove_everything() -> None:
    with TempPostgres(auth="md5", users={"u": "p"}) as cluster:
        assert cluster.is_running()
        assert MD5_VERIFIER.match(cluster.role_password_hash("u"))
        base_dir = cluster.base_dir
        assert query_one(cluster.dsn(user="u", password="p"), "SELECT current_user") == "u"
    assert not os.path.exists(base_dir)
    cluster.cleanup()  # second cleanup is a no-op
    with pytest.raises(PostgresError):
        cluster.start()


def test_explicit_port_and_base_dir() -> None:
    # Not pytest's tmp_path: /tmp/pytest-of-root is 0700, which the postgres OS user cannot traverse.
    base = tempfile.mkdtemp(prefix="pg_doorman_test_")
    os.chmod(base, 0o755)
    port = find_free_port()
    cluster = TempPostgres(port=port, base_dir=base, password_encryption="md5", users={"x": "y"})
    try:
        cluster.start()
        assert cluster.port == port
        assert cluster.data_dir.startswith(base)
        assert MD5_VERIFIER.match(cluster.role_password_hash("x"))
        cluster.cleanup()
        assert os.path.isdir(base)  # a caller-provided base dir is kept, only our subdirectories go
        assert not os.path.exists(cluster.data_dir)
    finally:
        cluster.cleanup()
        shutil.rmtree(base, ignore_errors=True)


def test_invalid_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="auth"):
        TempPostgres(auth="ident")
    with pytest.raises(ValueError, match="password_encryption"):
        TempPostgres(password_encryption="plain")


def test_pool_config_uses_stored_verifiers(pg_scram: TempPostgres, pool_config: Callable[..., dict[str, Any]]) -> None:
    config = pool_config(pg_scram, users=["app", {"username": "app2", "pool_size": 3}], pool_mode="session")
    pool = config["pools"]["appdb"]
    assert pool["server_host"] == "127.0.0.1"
    assert pool["server_port"] == pg_scram.port
    assert pool["pool_mode"] == "session"
    app, app2 = pool["users"]
    assert app["password"] == pg_scram.role_password_hash("app")
    assert app2 == {"username": "app2", "pool_size": 3, "password": pg_scram.role_password_hash("app2")}
