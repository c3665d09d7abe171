"""Access rules (general.pg_hba / general.hba) with real clients from two addresses.

pg_doorman listens on 127.0.0.1. psycopg and psql connect from 127.0.0.1; the test's own wire client binds its
socket to 127.0.0.2 before connecting (Linux routes all of 127.0.0.0/8 over lo), so the pooler sees a second
client address, as it would see another host.
"""

from __future__ import annotations

import signal
import socket
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_helpers import close_quietly, connect, scalar
from wire_client import RawWire, WireClient, WireError, error_map, startup_packet

from pg_doorman.devcluster import TempPostgres

StartDoorman = Callable[..., Any]
PoolConfig = Callable[..., dict[str, Any]]
TIMEOUT = 5.0
OTHER = "127.0.0.2"


class SourcedWire(RawWire):
    """The raw wire client, with its socket bound to ``source`` before it connects."""

    def __init__(self, port: int, source: str, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, port), timeout=TIMEOUT, source_address=(source, 0))
        self.buf = b""


class SourcedClient(WireClient):
    """The wire-protocol client (md5, SCRAM and cleartext logins), its socket bound to ``source``."""

    def __init__(self, port: int, source: str, host: str = "127.0.0.1") -> None:
        super().__init__(host, port, timeout=TIMEOUT)
        self.sock.close()
        self.sock = socket.create_connection((host, port), timeout=TIMEOUT, source_address=(source, 0))


def wire_login(
    port: int, source: str, user: str, database: str = "appdb", password: str | None = None
) -> tuple[str, dict[str, str]]:
    """Log in from ``source`` and run ``select 1``: ("ok", {}) or ("error", the ErrorResponse's fields)."""
    client = SourcedClient(port, source)
    try:
        try:
            client.login(user, database, password=password)
        except WireError as err:
            last = err.received[-1] if err.received else None
            if last is None or last.type != "E":
                raise
            assert client.sock.recv(1) == b"", "a refused client must be disconnected"
            return "error", error_map(last.body)
        rows = [m for m in client.simple_query("select 1") if m.type == "D"]
        assert len(rows) == 1
        return "ok", {}
    finally:
        client.close()


def no_entry(user: str, database: str = "appdb", host: str = OTHER) -> str:
    return f'no pg_hba.conf entry for host "{host}", user "{user}", database "{database}", no encryption'


def hba_config(pool_config: PoolConfig, cluster: TempPostgres, pg_hba: Any, **general: Any) -> dict[str, Any]:
    """``app`` with its real password and ``nopass`` (user app on the server) with none."""
    users = ["app", {"username": "nopass", "password": "", "server_username": "app", "server_password": "app_pass"}]
    return pool_config(cluster, users=users, general={"pg_hba": pg_hba, **general})


def test_trust_for_local_address_admits_without_password_other_address_refused(
    doorman: StartDoorman, pool_config: PoolConfig, pg_trust: TempPostgres
) -> None:
    proc = doorman(hba_config(pool_config, pg_trust, "host all all 127.0.0.1/32 trust"))
    # The local client: no password asked, even for the user that has none, and even for one that has one.
    for user in ("nopass", "app"):
        with connect(proc, user=user, password="") as conn:
            assert scalar(conn, "select current_user") == "app"
    # The same users from 127.0.0.2: no rule, refused before any exchange, with PostgreSQL's message.
    for user in ("nopass", "app"):
        result, fields = wire_login(proc.port, OTHER, user, password="app_pass")
        assert result == "error"
        assert (fields["S"], fields["C"], fields["M"]) == ("FATAL", "28000", no_entry(user))
        proc.wait_for_log(f"login failed: {no_entry(user)} (no rule matches)")
    assert "logs in as nopass to appdb without a password: trust rule" in proc.log_text()


def test_no_password_means_no_login_without_trust(
    doorman: StartDoorman, pool_config: PoolConfig, pg_trust: TempPostgres
) -> None:
    proc = doorman(hba_config(pool_config, pg_trust, "host all all 127.0.0.1/32 md5\nhost all all 127.0.0.2/32 trust"))
    result, fields = wire_login(proc.port, "127.0.0.1", "nopass")
    assert result == "error" and fields["C"] == "28000"
    assert "empty password; a trust rule is needed" in fields["M"]
    assert wire_login(proc.port, OTHER, "nopass") == ("ok", {})  # trust from the other address
    assert wire_login(proc.port, "127.0.0.1", "app", password="app_pass") == ("ok", {})
    result, fields = wire_login(proc.port, "127.0.0.1", "app", password="wrong")
    assert result == "error" and fields["C"] == "28P01"


def test_reject_rules_first_match_and_password_method(
    doorman: StartDoorman, pool_config: PoolConfig, pg_trust: TempPostgres
) -> None:
    rules = (
        "host all app 127.0.0.2/32 reject\n"
        "host all all 127.0.0.2/32 trust\n"  # after the reject: never reached for app
        "host appdb app 127.0.0.1/32 password\n"
        "host all all 0.0.0.0/0 reject\n"
    )
    proc = doorman(hba_config(pool_config, pg_trust, rules))
    _, fields = wire_login(proc.port, OTHER, "app", password="app_pass")
    assert fields["C"] == "28000"
    assert (
        fields["M"]
        == 'pg_hba.conf rejects connection for host "127.0.0.2", user "app", database "appdb", no encryption'
    )
    assert "(general.pg_hba):1: host all app 127.0.0.2/32 reject" in proc.wait_for_log("rejects connection")
    assert wire_login(proc.port, OTHER, "nopass") == ("ok", {})
    # password: the cleartext exchange, with a real client (libpq answers AuthenticationCleartextPassword).
    with connect(proc, user="app", password="app_pass") as conn:
        assert scalar(conn, "select 1") == 1
    with pytest.raises(psycopg.OperationalError, match='password authentication failed for user "app"'):
        connect(proc, user="app", password="wrong")
    with pytest.raises(psycopg.OperationalError, match=r"pg_hba\.conf rejects connection"):
        connect(proc, user="nopass", password="")


def test_hostnossl_matches_plain_connections(
    doorman: StartDoorman, pool_config: PoolConfig, pg_trust: TempPostgres
) -> None:
    rules = (
        "hostssl all all 0.0.0.0/0 trust\nhostnossl all nopass 127.0.0.0/8 reject\nhostnossl all app 127.0.0.0/8 md5"
    )
    proc = doorman(hba_config(pool_config, pg_trust, rules))
    # sslmode=prefer: pg_doorman declines TLS (answers N), the connection is plain: hostnossl applies.
    with pytest.raises(psycopg.OperationalError, match=r"pg_hba\.conf rejects connection.*no encryption"):
        connect(proc, user="nopass", password="", sslmode="prefer")
    with connect(proc, user="app", password="app_pass", sslmode="prefer") as conn:
        assert scalar(conn, "select 1") == 1
    _, fields = wire_login(proc.port, OTHER, "nopass")
    assert "rejects connection" in fields["M"]


def test_unix_socket_local_rules_with_psql(
    doorman: StartDoorman, pool_config: PoolConfig, pg_trust: TempPostgres, tmp_path: Path
) -> None:
    sock_dir = tmp_path / "sock"
    sock_dir.mkdir()
    rules = "local all nopass trust\nlocal all app reject\nhost all all 127.0.0.1/32 md5"
    proc = doorman(hba_config(pool_config, pg_trust, rules, unix_socket_dir=str(sock_dir)))

    def psql(user: str, host: str) -> subprocess.CompletedProcess[str]:
        env = {"PATH": "/usr/bin:/bin", "PGPASSWORD": "app_pass", "PGCONNECT_TIMEOUT": "5"}
        argv = ["psql", "-X", "-w", "-h", host, "-p", str(proc.port), "-U", user, "-d", "appdb", "-Atc", "select 7"]
        return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=30, check=False)

    assert psql("nopass", str(sock_dir)).stdout.strip() == "7"  # local trust
    refused = psql("app", str(sock_dir))
    assert refused.returncode != 0
    assert 'pg_hba.conf rejects connection for host "[local]", user "app"' in refused.stderr
    assert psql("app", "127.0.0.1").stdout.strip() == "7"  # host rule, md5 with the password
    over_tcp = psql("nopass", "127.0.0.1")  # the host rule asks for a password nopass does not have
    assert over_tcp.returncode != 0 and "empty password" in over_tcp.stderr


def test_reload_applies_changed_file_to_new_connections(
    doorman: StartDoorman, pool_config: PoolConfig, pg_trust: TempPostgres, tmp_path: Path
) -> None:
    hba = tmp_path / "pg_hba.conf"
    hba.write_text("host all all 127.0.0.1/32 trust\n")
    proc = doorman(hba_config(pool_config, pg_trust, {"path": str(hba)}))
    kept = connect(proc, user="nopass", password="")
    try:
        assert wire_login(proc.port, OTHER, "nopass")[0] == "error"
        hba.write_text("host all all 127.0.0.2/32 trust\nhost all all 127.0.0.1/32 reject\n")
        offset = len(proc.log_text())
        proc.send_signal(signal.SIGHUP)
        proc.wait_for_log("configuration reloaded", after=offset, timeout=10)
        assert wire_login(proc.port, OTHER, "nopass") == ("ok", {})
        with pytest.raises(psycopg.OperationalError, match=r"pg_hba\.conf rejects connection"):
            connect(proc, user="nopass", password="")
        assert scalar(kept, "select 2") == 2  # an open session is not re-evaluated (as PostgreSQL)

        # A broken file: the reload is refused and the running rules stay.
        hba.write_text("host all all 127.0.0.2/32 trust\nhost all all somehost md5\n")
        offset = len(proc.log_text())
        proc.send_signal(signal.SIGHUP)
        proc.wait_for_log("reload failed", after=offset, timeout=10)
        assert f'{hba}:2: host name "somehost"' in proc.log_text()[offset:]
        assert wire_login(proc.port, OTHER, "nopass") == ("ok", {})
    finally:
        close_quietly(kept)


def test_admin_console_rules(doorman: StartDoorman, pool_config: PoolConfig, pg_trust: TempPostgres) -> None:
    rules = "host pgdoorman admin 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 md5"
    proc = doorman(hba_config(pool_config, pg_trust, rules))
    with connect(proc, user="admin", password="", db="pgdoorman") as admin:
        assert admin.execute("SHOW VERSION").fetchone() is not None
    _, fields = wire_login(proc.port, OTHER, "admin", database="pgdoorman", password="admin_pass")
    assert fields["M"] == no_entry("admin", "pgdoorman")
    # `all` matches the admin database too: another name under the md5 rule gets the usual doomed exchange.
    _, fields = wire_login(proc.port, "127.0.0.1", "app", database="pgdoorman", password="app_pass")
    assert fields["C"] == "28P01"

    trusting = doorman(hba_config(pool_config, pg_trust, "host all all 127.0.0.1/32 trust"))
    _, fields = wire_login(trusting.port, "127.0.0.1", "mallory", database="pgdoorman")
    assert (fields["C"], fields["M"]) == ("28000", 'role "mallory" does not exist')


def test_legacy_hba_list(doorman: StartDoorman, pool_config: PoolConfig, pg_trust: TempPostgres) -> None:
    config = pool_config(pg_trust, users=["app"], general={"hba": ["127.0.0.1/32"]})
    proc = doorman(config)
    assert wire_login(proc.port, "127.0.0.1", "app", password="app_pass") == ("ok", {})
    _, fields = wire_login(proc.port, OTHER, "app", password="app_pass")
    assert fields["M"] == no_entry("app")


def test_refused_clients_leaving_midway_do_not_hurt(
    doorman: StartDoorman, pool_config: PoolConfig, pg_trust: TempPostgres
) -> None:
    proc = doorman(hba_config(pool_config, pg_trust, "host all all 127.0.0.1/32 password"))
    for _ in range(20):
        with SourcedWire(proc.port, OTHER) as wire:  # refused, then gone before reading the error
            wire.send(startup_packet({"user": "app", "database": "appdb"}))
        with SourcedWire(proc.port, "127.0.0.1") as wire:  # asked for a password, leaves instead
            wire.send(startup_packet({"user": "app", "database": "appdb"}))
            kind, body = wire.read_message()
            assert kind == b"R" and struct.unpack_from("!i", body)[0] == 3
        with SourcedWire(proc.port, "127.0.0.1") as wire:  # a password packet without its terminator
            wire.send(startup_packet({"user": "app", "database": "appdb"}))
            wire.read_message()
            wire.send(b"p" + struct.pack("!i", 4 + 3) + b"abc")
            kind, body = wire.read_message()
            assert kind == b"E" and error_map(body)["C"] == "08P01"
    assert proc.returncode is None
    with connect(proc, user="app", password="app_pass") as conn:
        assert scalar(conn, "select 3") == 3
