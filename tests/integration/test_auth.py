"""Authentication through pg_doorman, both sides, with real clients (psycopg/libpq, asyncpg) and raw sockets.

Client side: the kind of ``password`` in the config (md5 verifier, SCRAM verifier, plaintext) decides which
challenge pg_doorman sends (AuthenticationMD5Password = 5, AuthenticationSASL = 10) and whether a given password is
accepted; an empty password refuses the login (28000) until access rules can say ``trust``.  As in PostgreSQL the
client authenticates before it learns anything: an unknown user or an unknown database costs the same exchange and
the same 28P01 as a wrong password, and 3D000 comes only after a correct one.  Server side: md5 pass-the-hash, SCRAM
ClientKey passthrough, explicit ``server_username`` / ``server_password`` and trust, checked with ``current_user`` /
``session_user``; a wrong ``server_password`` must come back to the client as PostgreSQL's 28P01 quickly.  The admin
console challenges every user name with md5, alike.
"""

from __future__ import annotations

import asyncio
import hashlib
import struct
import subprocess
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import psycopg
import pytest
from wire_client import RawWire, WireClient, WireError, error_map, frame, startup_packet

from pg_doorman.devcluster import TempPostgres

StartDoorman = Callable[..., Any]
PoolConfig = Callable[..., dict[str, Any]]

HOST = "127.0.0.1"
IO_TIMEOUT = 5.0


# ---------------------------------------------------------------- raw wire helpers


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def md5_verifier(password: str, user: str) -> str:
    return "md5" + md5_hex(password.encode() + user.encode())


class Wire(RawWire):
    """A blocking socket speaking the PostgreSQL wire protocol, for asserting exact bytes."""

    def __init__(self, port: int, timeout: float = IO_TIMEOUT) -> None:
        super().__init__(port, timeout, HOST)

    def closed_by_peer(self, timeout: float = IO_TIMEOUT) -> bool:
        return super().closed_by_peer(timeout)


def auth_request_code(port: int, user: str, database: str = "appdb") -> tuple[int, Wire]:
    """Send a StartupMessage and return the code of the first Authentication message (socket left open)."""
    wire = Wire(port)
    wire.send(startup_packet({"user": user, "database": database}))
    kind, body = wire.read_message()
    assert kind == b"R", f"expected an Authentication message, got {kind!r}: {body!r}"
    return struct.unpack("!i", body[:4])[0], wire


def first_error(port: int, params: dict[str, str]) -> dict[str, str]:
    """Start up with ``params`` and return the fields of the ErrorResponse the pooler answers with."""
    with Wire(port) as wire:
        wire.send(startup_packet(params))
        kind, body = wire.read_message()
        assert kind == b"E", f"expected ErrorResponse, got {kind!r}: {body!r}"
        fields = error_map(body)
        assert wire.closed_by_peer(), "the connection must be closed after a FATAL error"
        return fields


def login_error(port: int, user: str, password: str, database: str = "appdb") -> dict[str, str]:
    """Log in with a password (md5 or SCRAM) expecting an ErrorResponse; return its fields."""
    with pytest.raises(WireError) as info:
        WireClient.connect(HOST, port, user=user, database=database, password=password, timeout=IO_TIMEOUT).close()
    errors = [msg for msg in info.value.received if msg.type == "E"]
    assert errors, info.value
    return error_map(errors[-1].body)


def wrong_md5_answer(wire: Wire, salt: bytes) -> None:
    wire.send(frame(b"p", b"md5" + md5_hex(b"not the password" + salt).encode() + b"\0"))


# ---------------------------------------------------------------- client helpers


def one(conn: psycopg.Connection[Any], sql: str) -> Any:
    row = conn.execute(sql).fetchone()
    assert row is not None
    return row[0]


def who(proc: Any, user: str, password: str | None, **kwargs: Any) -> tuple[str, str]:
    with proc.connect(user=user, password=password, **kwargs) as conn:
        row = conn.execute("select current_user::text, session_user::text").fetchone()
        assert row is not None
        return row[0], row[1]


def psycopg_login_error(proc: Any, user: str, password: str | None, db: str = "appdb", **kwargs: Any) -> str:
    """Log in expecting a failure; return libpq's message (psycopg has no SQLSTATE for connect errors)."""
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError) as info:
        proc.connect(user=user, password=password, db=db, **kwargs).close()
    assert time.monotonic() - started < 8, "login failure took too long (hang?)"
    return str(info.value)


async def _asyncpg_login(port: int, user: str, password: str, database: str) -> Any:
    conn = await asyncpg.connect(
        host=HOST,
        port=port,
        user=user,
        password=password,
        database=database,
        ssl=False,
        timeout=10,
        statement_cache_size=0,
    )
    try:
        return await conn.fetchval("select current_user::text")
    finally:
        await conn.close()


def asyncpg_login(port: int, user: str, password: str, database: str = "appdb") -> Any:
    return asyncio.run(_asyncpg_login(port, user, password, database))


def asyncpg_sqlstate(port: int, user: str, password: str, database: str = "appdb") -> str:
    """Log in with asyncpg expecting a server error; return its SQLSTATE."""
    started = time.monotonic()
    with pytest.raises(asyncpg.PostgresError) as info:
        asyncpg_login(port, user, password, database)
    assert time.monotonic() - started < 8, "login failure took too long (hang?)"
    return str(info.value.sqlstate)


def app_backends(cluster: TempPostgres, application_name: str) -> int:
    out = cluster.psql(
        "select count(*) from pg_stat_activity where backend_type = 'client backend' "
        f"and application_name = '{application_name}'"
    )
    return int(out)


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


# ---------------------------------------------------------------- A. client side

# Each configured user logs in to PostgreSQL as role ``app`` on the trusted cluster, so only pg_doorman's own
# check of the client is exercised here.
CLIENT_USERS = {
    "md5": ("u_md5", "md5_secret"),
    "scram": ("u_scram", "scram_secret"),
    "plain": ("u_plain", "plain_secret"),
    "empty": ("u_trust", ""),
}


def scram_verifier_from_postgres(cluster: TempPostgres, password: str) -> str:
    """A SCRAM verifier computed by PostgreSQL itself (not by pg_doorman's code under test)."""
    role = "verifier_maker"
    cluster.create_user(role, password, encryption="scram-sha-256")
    return cluster.role_password_hash(role)


@pytest.fixture
def client_auth_doorman(pg_trust: TempPostgres, doorman: StartDoorman, pool_config: PoolConfig) -> Any:
    passwords = {
        "md5": md5_verifier(CLIENT_USERS["md5"][1], CLIENT_USERS["md5"][0]),
        "scram": scram_verifier_from_postgres(pg_trust, CLIENT_USERS["scram"][1]),
        "plain": CLIENT_USERS["plain"][1],
        "empty": "",
    }
    users = [
        {"username": name, "password": passwords[kind], "server_username": "app"}
        for kind, (name, _) in CLIENT_USERS.items()
    ]
    return doorman(pool_config(pg_trust, users, pool_size=2, general={"max_message_size": "1MB"}))


@pytest.mark.parametrize(("kind", "code"), [("md5", 5), ("scram", 10), ("plain", 10)])
def test_auth_request_code_follows_configured_password(client_auth_doorman: Any, kind: str, code: int) -> None:
    user, password = CLIENT_USERS[kind]
    with Wire(client_auth_doorman.port) as wire:
        wire.send(startup_packet({"user": user, "database": "appdb"}))
        kind_, body = wire.read_message()
        assert kind_ == b"R"
        assert struct.unpack("!i", body[:4])[0] == code
        if code == 10:
            # AuthenticationSASL lists exactly SCRAM-SHA-256 (no -PLUS: there is no TLS to bind to).
            assert body[4:] == b"SCRAM-SHA-256\0\0"
            return
        if code == 5:
            # Answer the challenge by hand: "md5" + md5(md5(password + user) + salt).
            assert len(body) == 8
            salt = body[4:8]
            answer = "md5" + md5_hex(md5_hex(password.encode() + user.encode()).encode() + salt)
            wire.send(frame(b"p", answer.encode() + b"\0"))
            kind_, body = wire.read_message()
            assert (kind_, body) == (b"R", struct.pack("!i", 0))
        msgs = wire.read_until(b"Z")
        assert msgs[-1] == (b"Z", b"I")
        assert any(k == b"K" for k, _ in msgs)
        wire.send(frame(b"Q", b"select current_user\0"))
        msgs = wire.read_until(b"Z")
        rows = [body for k, body in msgs if k == b"D"]
        assert rows and rows[0].endswith(b"app")


@pytest.mark.parametrize("kind", ["md5", "scram", "plain"])
def test_psycopg_right_and_wrong_password(client_auth_doorman: Any, kind: str) -> None:
    user, password = CLIENT_USERS[kind]
    assert who(client_auth_doorman, user, password) == ("app", "app")
    message = psycopg_login_error(client_auth_doorman, user, password + "x")
    assert f'password authentication failed for user "{user}"' in message
    # The server still serves the right password after a failure.
    assert who(client_auth_doorman, user, password) == ("app", "app")


@pytest.mark.parametrize(
    ("kind", "method", "other"),
    [("md5", "md5", "scram-sha-256"), ("scram", "scram-sha-256", "md5"), ("plain", "scram-sha-256", "md5")],
)
def test_libpq_require_auth_sees_the_expected_method(
    client_auth_doorman: Any, kind: str, method: str, other: str
) -> None:
    """libpq's require_auth fails the login client-side if the server asks for another method."""
    user, password = CLIENT_USERS[kind]
    assert who(client_auth_doorman, user, password, require_auth=method) == ("app", "app")
    message = psycopg_login_error(client_auth_doorman, user, password, require_auth=other)
    assert "authentication method requirement" in message


def test_empty_password_is_refused(client_auth_doorman: Any) -> None:
    """An empty password used to admit anybody from anywhere; until access rules exist it refuses the login
    (28000, like PostgreSQL's "no pg_hba.conf entry"), before any challenge, and the log says why."""
    user, _ = CLIENT_USERS["empty"]
    fields = first_error(client_auth_doorman.port, {"user": user, "database": "appdb"})
    assert fields["C"] == "28000", fields
    assert (
        fields["M"] == f'password authentication is not configured for user "{user}" (empty password; a trust '
        "rule is needed)"
    )
    for password in (None, "", "anything"):
        message = psycopg_login_error(client_auth_doorman, user, password)
        assert "password authentication is not configured" in message
    assert asyncpg_sqlstate(client_auth_doorman.port, user, "anything") == "28000"
    assert "empty password" in client_auth_doorman.wait_for_log(
        f'login failed: password authentication is not configured for user "{user}"'
    )
    # The other users are unaffected.
    assert who(client_auth_doorman, *CLIENT_USERS["md5"]) == ("app", "app")


@pytest.mark.parametrize("kind", ["md5", "scram", "plain"])
def test_asyncpg_right_and_wrong_password(client_auth_doorman: Any, kind: str) -> None:
    user, password = CLIENT_USERS[kind]
    port = client_auth_doorman.port
    assert asyncpg_login(port, user, password) == "app"
    assert asyncpg_sqlstate(port, user, "wrong") == "28P01"


def test_psql_password_login(client_auth_doorman: Any) -> None:

    for kind in ("md5", "scram"):
        user, password = CLIENT_USERS[kind]
        env = {"PGPASSWORD": password, "PATH": "/usr/bin:/bin", "PGCONNECT_TIMEOUT": "10"}
        args = [
            "psql",
            "-X",
            "-At",
            "-h",
            HOST,
            "-p",
            str(client_auth_doorman.port),
            "-U",
            user,
            "-d",
            "appdb",
            "-c",
            "select current_user",
        ]
        ok = subprocess.run(args, env=env, capture_output=True, text=True, timeout=20, check=False)
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout.strip() == "app"
        bad = subprocess.run(
            args, env={**env, "PGPASSWORD": "nope"}, capture_output=True, text=True, timeout=20, check=False
        )
        assert bad.returncode == 2
        assert f'password authentication failed for user "{user}"' in bad.stderr


def test_database_is_checked_only_after_authentication(client_auth_doorman: Any) -> None:
    """PostgreSQL authenticates before it reports a missing database, so database names cannot be probed: an
    unknown database gets the user's usual challenge and, without the right password, the usual 28P01."""
    port = client_auth_doorman.port
    for database in ("nosuchdb", "appdb"):
        code, wire = auth_request_code(port, "u_md5", database)
        with wire:
            assert code == 5
            wrong_md5_answer(wire, b"")
            kind, body = wire.read_message()
            assert kind == b"E"
            assert error_map(body)["C"] == "28P01"
            assert error_map(body)["M"] == 'password authentication failed for user "u_md5"'
            assert wire.closed_by_peer()
    # Database defaults to the user name (no database here either): still the challenge first.
    code, wire = auth_request_code(port, "u_md5", "")
    wire.close()
    assert code == 5
    # The right password: now the client may learn that the database does not exist.
    fields = login_error(port, "u_md5", "md5_secret", "nosuchdb")
    assert (fields["C"], fields["S"]) == ("3D000", "FATAL")
    assert fields["M"] == 'database "nosuchdb" does not exist'
    assert asyncpg_sqlstate(port, "u_md5", "md5_secret", "nosuchdb") == "3D000"
    assert asyncpg_sqlstate(port, "u_md5", "wrong", "nosuchdb") == "28P01"
    assert asyncpg_sqlstate(port, "u_scram", "scram_secret", "nosuchdb") == "3D000"
    # An unknown user in an unknown database: the doomed SCRAM exchange, then 28P01.
    code, wire = auth_request_code(port, "nosuchuser", "nosuchdb")
    wire.close()
    assert code == 10
    assert asyncpg_sqlstate(port, "nosuchuser", "whatever", "nosuchdb") == "28P01"


def test_user_without_a_pool_in_an_existing_database(
    pg_trust: TempPostgres, doorman: StartDoorman, pool_config: PoolConfig
) -> None:
    """A user configured only in another pool: authenticated with that password, then told there is no pool."""
    config = pool_config(pg_trust, [{"username": "app", "password": md5_verifier("app_secret", "app")}])
    other = pool_config(
        pg_trust,
        [{"username": "app2", "password": md5_verifier("app2_secret", "app2")}],
        db="otherdb",
        server_database="appdb",
    )
    config["pools"].update(other["pools"])
    proc = doorman(config)
    assert asyncpg_sqlstate(proc.port, "app2", "wrong", "appdb") == "28P01"
    fields = login_error(proc.port, "app2", "app2_secret", "appdb")
    assert fields["C"] == "3D000"
    assert fields["M"] == 'no pool is configured for user "app2" in database "appdb"'
    assert who(proc, "app2", "app2_secret", db="otherdb") == ("app2", "app2")


def test_unknown_user_is_28p01_like_a_wrong_password(client_auth_doorman: Any) -> None:
    port = client_auth_doorman.port
    assert asyncpg_sqlstate(port, "nosuchuser", "whatever") == "28P01"
    unknown = psycopg_login_error(client_auth_doorman, "nosuchuser", "whatever")
    wrong = psycopg_login_error(client_auth_doorman, "u_md5", "whatever")
    # Same text (modulo the name) as a wrong password: nothing tells an unknown user from a known one.
    assert unknown.split("FATAL:", 1)[1].replace("nosuchuser", "U") == wrong.split("FATAL:", 1)[1].replace("u_md5", "U")
    # A role that exists in PostgreSQL but is not configured in pg_doorman is just as unknown.
    assert asyncpg_sqlstate(port, "app2", "app2_pass") == "28P01"
    # An unknown user is challenged like a known one (PostgreSQL does the same), not refused at once.
    code, wire = auth_request_code(port, "nosuchuser")
    with wire:
        assert code == 10


def test_bad_auth_message_during_login_is_rejected(client_auth_doorman: Any) -> None:
    """A PasswordMessage with an impossible length during the md5 exchange: 08P01 and close, no hang."""
    code, wire = auth_request_code(client_auth_doorman.port, "u_md5")
    with wire:
        assert code == 5
        wire.send(b"p\x00\x00\x00\x02")
        kind, body = wire.read_message()
        assert kind == b"E"
        assert error_map(body)["C"] == "08P01"
        assert wire.closed_by_peer()
    # Non-'p' message instead of the password → 08P01 as in PostgreSQL, connection closed.
    code, wire = auth_request_code(client_auth_doorman.port, "u_md5")
    with wire:
        wire.send(frame(b"Q", b"select 1\0"))
        kind, body = wire.read_message()
        assert kind == b"E"
        assert error_map(body)["C"] == "08P01"
        assert error_map(body)["M"] == "expected password response, got message type 81"
        assert wire.closed_by_peer()
    assert who(client_auth_doorman, "u_md5", "md5_secret") == ("app", "app")


@pytest.mark.parametrize("kind", ["md5", "scram"])
def test_oversized_auth_message_is_refused_before_login(client_auth_doorman: Any, kind: str) -> None:
    """An unauthenticated client cannot make the pooler wait for (and buffer) a message over max_message_size."""
    user, _ = CLIENT_USERS[kind]
    code, wire = auth_request_code(client_auth_doorman.port, user)
    with wire:
        assert code in (5, 10)
        started = time.monotonic()
        wire.send(b"p" + struct.pack("!i", 64 * 1024 * 1024) + b"x" * 1000)
        kind_, body = wire.read_message()
        assert kind_ == b"E"
        assert (error_map(body)["C"], error_map(body)["M"]) == ("08P01", "invalid message length")
        assert wire.closed_by_peer()
        assert time.monotonic() - started < 5
    assert who(client_auth_doorman, "u_md5", "md5_secret") == ("app", "app")


# ---------------------------------------------------------------- B. server side


def test_md5_passthrough_to_md5_cluster(pg_md5: TempPostgres, doorman: StartDoorman, pool_config: PoolConfig) -> None:
    config = pool_config(pg_md5, ["app", "app2"], pool_size=2)
    assert config["pools"]["appdb"]["users"][0]["password"].startswith("md5")
    assert "server_password" not in config["pools"]["appdb"]["users"][0]
    proc = doorman(config)
    assert who(proc, "app", "app_pass") == ("app", "app")
    assert who(proc, "app2", "app2_pass") == ("app2", "app2")
    code, wire = auth_request_code(proc.port, "app")
    wire.close()
    assert code == 5
    assert asyncpg_login(proc.port, "app", "app_pass") == "app"
    assert asyncpg_sqlstate(proc.port, "app", "app2_pass") == "28P01"


def test_scram_passthrough_to_scram_cluster(
    pg_scram: TempPostgres, doorman: StartDoorman, pool_config: PoolConfig
) -> None:
    app_name = "doorman_scram_passthrough"
    config = pool_config(pg_scram, [{"username": "app", "min_pool_size": 2}], pool_size=3, application_name=app_name)
    assert config["pools"]["appdb"]["users"][0]["password"].startswith("SCRAM-SHA-256$")
    proc = doorman(config)
    # Without a client login pg_doorman has no ClientKey: min_pool_size cannot be honoured yet.
    time.sleep(2.2)
    assert app_backends(pg_scram, app_name) == 0
    # A wrong password must not unlock anything either.
    assert asyncpg_sqlstate(proc.port, "app", "wrong") == "28P01"
    assert app_backends(pg_scram, app_name) == 0
    code, wire = auth_request_code(proc.port, "app")
    wire.close()
    assert code == 10
    with proc.connect(application_name=app_name) as conn:
        assert one(conn, "select current_user::text") == "app"
        assert one(conn, "select session_user::text") == "app"
    # Now the ClientKey is known: the pool can open servers on its own (min_pool_size).
    assert wait_until(lambda: app_backends(pg_scram, app_name) >= 2), app_backends(pg_scram, app_name)
    assert asyncpg_login(proc.port, "app", "app_pass") == "app"


def test_scram_passthrough_to_md5_hash_mismatch_fails_cleanly(
    pg_scram: TempPostgres, doorman: StartDoorman, pool_config: PoolConfig
) -> None:
    """An md5 verifier in the config while PostgreSQL wants SCRAM: the client gets 28P01, not a hang."""
    config = pool_config(pg_scram, [{"username": "app", "password": md5_verifier("app_pass", "app")}])
    proc = doorman(config)
    assert asyncpg_sqlstate(proc.port, "app", "app_pass") == "28P01"
    message = psycopg_login_error(proc, "app", "app_pass")
    assert "app" in message


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_explicit_server_credentials_on_scram_cluster(
    pg_scram: TempPostgres, doorman: StartDoorman, pool_config: PoolConfig, mode: str
) -> None:
    users = [
        {
            "username": "alias",
            "password": md5_verifier("alias_pass", "alias"),
            "server_username": "app",
            "server_password": "app_pass",
        },
        {"username": "alias2", "password": "alias2_plain", "server_username": "app2", "server_password": "app2_pass"},
    ]
    proc = doorman(pool_config(pg_scram, users, pool_mode=mode, pool_size=2))
    assert who(proc, "alias", "alias_pass") == ("app", "app")
    assert who(proc, "alias2", "alias2_plain") == ("app2", "app2")
    # The client's password is the alias's, not the server role's.
    assert "password authentication failed" in psycopg_login_error(proc, "alias", "app_pass")
    assert asyncpg_login(proc.port, "alias", "alias_pass") == "app"


def test_explicit_server_credentials_on_md5_cluster(
    pg_md5: TempPostgres, doorman: StartDoorman, pool_config: PoolConfig
) -> None:
    users = [{"username": "alias", "password": "alias_pass", "server_username": "app2", "server_password": "app2_pass"}]
    proc = doorman(pool_config(pg_md5, users, pool_size=1))
    assert who(proc, "alias", "alias_pass") == ("app2", "app2")


def test_trust_cluster_without_credentials(
    pg_trust: TempPostgres, doorman: StartDoorman, pool_config: PoolConfig
) -> None:
    """The client passwords are pg_doorman's own (PostgreSQL knows other ones): the trusted cluster never asks."""
    users = [{"username": name, "password": md5_verifier(f"{name}_doorman", name)} for name in ("app", "app2")]
    proc = doorman(pool_config(pg_trust, users))
    assert who(proc, "app", "app_doorman") == ("app", "app")
    assert who(proc, "app2", "app2_doorman") == ("app2", "app2")
    assert asyncpg_login(proc.port, "app2", "app2_doorman") == "app2"


def test_wrong_server_password_reaches_client_as_28p01(
    pg_hashed: TempPostgres, doorman: StartDoorman, pool_config: PoolConfig
) -> None:
    users = [
        {"username": "alias", "password": "alias_pass", "server_username": "app", "server_password": "not_app_pass"}
    ]
    proc = doorman(pool_config(pg_hashed, users, pool_size=2, connect_timeout="3s"))
    started = time.monotonic()
    assert asyncpg_sqlstate(proc.port, "alias", "alias_pass") == "28P01"
    message = psycopg_login_error(proc, "alias", "alias_pass")
    assert 'password authentication failed for user "app"' in message
    fields = login_error(proc.port, "alias", "alias_pass")
    assert fields["C"] == "28P01"
    assert time.monotonic() - started < 10
    # pg_doorman itself is still fine: another pool of the same process works.


def test_wrong_server_password_does_not_affect_other_pools(
    pg_scram: TempPostgres, doorman: StartDoorman, pool_config: PoolConfig
) -> None:
    users = [
        {"username": "bad", "password": "bad_pass", "server_username": "app", "server_password": "nope"},
        {"username": "good", "password": "good_pass", "server_username": "app", "server_password": "app_pass"},
    ]
    proc = doorman(pool_config(pg_scram, users, pool_size=1))
    for _ in range(3):
        assert asyncpg_sqlstate(proc.port, "bad", "bad_pass") == "28P01"
        assert who(proc, "good", "good_pass") == ("app", "app")


@pytest.mark.parametrize(
    "password", ["p\u00e4ssw\u00f6rd", "\u2168", "with space 'and' quotes"], ids=["umlauts", "saslprep", "spaces"]
)
def test_non_ascii_passwords_both_sides(
    pg_scram: TempPostgres, pg_md5: TempPostgres, doorman: StartDoorman, pool_config: PoolConfig, password: str
) -> None:
    """Passwords that need UTF-8 and SASLprep: PostgreSQL's verifiers, libpq's proofs and pg_doorman agree."""
    role = "nonascii_user"
    pg_scram.create_user(role, password, encryption="scram-sha-256")
    pg_md5.create_user(role, password, encryption="md5")
    users = [
        {"username": role},  # SCRAM passthrough with PostgreSQL's own verifier
        # plaintext in the config: pg_doorman derives the client verifier and answers PostgreSQL's SCRAM itself
        {"username": "plain_alias", "password": password, "server_username": role, "server_password": password},
    ]
    scram_proc = doorman(pool_config(pg_scram, users, pool_size=1))
    assert who(scram_proc, role, password) == (role, role)
    assert who(scram_proc, "plain_alias", password) == (role, role)
    assert asyncpg_login(scram_proc.port, "plain_alias", password) == role
    assert "password authentication failed" in psycopg_login_error(scram_proc, role, password + "!")
    md5_proc = doorman(pool_config(pg_md5, [role], pool_size=1))
    assert who(md5_proc, role, password) == (role, role)
    assert asyncpg_login(md5_proc.port, role, password) == role


# ---------------------------------------------------------------- C. admin console


@pytest.fixture
def admin_doorman(pg_trust: TempPostgres, doorman: StartDoorman, pool_config: PoolConfig) -> Any:
    return doorman(pool_config(pg_trust, ["app"]))


def test_admin_login_uses_md5_and_queries_answer(admin_doorman: Any) -> None:
    code, wire = auth_request_code(admin_doorman.port, "admin", "pgdoorman")
    wire.close()
    assert code == 5
    with psycopg.connect(admin_doorman.admin_dsn(), connect_timeout=10, autocommit=True) as conn:
        started = time.monotonic()
        try:
            conn.execute("SHOW POOLS")
        except psycopg.Error:
            pass  # an ErrorResponse is fine for now; a hang is not
        assert time.monotonic() - started < 5
        # The session goes on after the answer.
        try:
            conn.execute("SHOW VERSION")
        except psycopg.Error:
            pass
    # pgbouncer is an alias of the admin database
    dsn = admin_doorman.admin_dsn().replace("dbname=pgdoorman", "dbname=pgbouncer")
    with psycopg.connect(dsn, connect_timeout=10, autocommit=True):
        pass


def test_admin_login_md5_by_hand(admin_doorman: Any) -> None:
    with Wire(admin_doorman.port) as wire:
        wire.send(startup_packet({"user": "admin", "database": "pgdoorman"}))
        _kind, body = wire.read_message()
        salt = body[4:8]
        answer = "md5" + md5_hex(md5_hex(b"admin_pass" + b"admin").encode() + salt)
        wire.send(frame(b"p", answer.encode() + b"\0"))
        msgs = wire.read_until(b"Z")
        assert msgs[0] == (b"R", struct.pack("!i", 0))
        wire.send(frame(b"Q", b"SHOW POOLS\0"))
        msgs = wire.read_until(b"Z")
        assert msgs[-1] == (b"Z", b"I")
        kinds = [k for k, _ in msgs]
        assert b"E" in kinds or b"C" in kinds
        wire.send(frame(b"X", b""))
        assert wire.closed_by_peer()


def test_admin_wrong_password_or_user_is_28p01(admin_doorman: Any) -> None:
    port = admin_doorman.port
    assert asyncpg_sqlstate(port, "admin", "wrong", "pgdoorman") == "28P01"
    assert asyncpg_sqlstate(port, "app", "admin_pass", "pgdoorman") == "28P01"
    dsn = admin_doorman.admin_dsn().replace("password=admin_pass", "password=wrong")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(dsn, connect_timeout=10)
    # A normal pool client is unaffected by admin failures.
    assert who(admin_doorman, "app", "app_pass") == ("app", "app")


def test_admin_database_challenges_every_user_name_alike(admin_doorman: Any) -> None:
    """Only the admin name used to get a password challenge, so the admin name could be found by probing. Now
    every name gets md5 with a fresh salt and fails the same way with a wrong password."""
    errors = {}
    salts = set()
    for user, database in [
        ("admin", "pgdoorman"),
        ("app", "pgdoorman"),
        ("nosuchuser", "pgdoorman"),
        ("admin2", "pgbouncer"),
        ("app", "pgbouncer"),
    ]:
        with Wire(admin_doorman.port) as wire:
            wire.send(startup_packet({"user": user, "database": database}))
            kind, body = wire.read_message()
            assert (kind, len(body), body[:4]) == (b"R", 8, struct.pack("!i", 5))
            salts.add(body[4:8])
            wrong_md5_answer(wire, body[4:8])
            kind, body = wire.read_message()
            assert kind == b"E"
            fields = error_map(body)
            errors[user, database] = (fields["S"], fields["C"], fields["M"].replace(user, "U"))
            assert wire.closed_by_peer()
    assert len(set(errors.values())) == 1, errors
    assert errors["app", "pgdoorman"] == ("FATAL", "28P01", 'password authentication failed for user "U"')
    assert len(salts) == 5
