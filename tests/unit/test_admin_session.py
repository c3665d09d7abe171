"""The admin console session and its operations on a real Application (no sockets): what each message gets,
several statements per Query, errors that keep the session, and the pool side of PAUSE/RESUME/RECONNECT/KILL."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from test_forwarding import RecordingTransport

from pg_doorman import codes, events
from pg_doorman.admin import Console
from pg_doorman.app import Application
from pg_doorman.config import load_config
from pg_doorman.pool import Pool
from pg_doorman.protocol.errors import ProtocolViolation
from pg_doorman.protocol.messages import parse_error_fields
from pg_doorman.server import ServerConnection

CONFIG = (
    "general: {admin_username: a, admin_password: b}\n"
    "pools:\n"
    "  db: {users: [{username: u, password: '', pool_size: 3}, {username: v, password: '', pool_size: 1}]}\n"
    "  other: {users: [{username: u, password: '', pool_size: 2, pool_mode: session}]}\n"
)


@pytest.fixture
def app(tmp_path: Path) -> Application:
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG)
    return Application(load_config(path))


def messages_of(reply: bytes) -> list[tuple[bytes, bytes]]:
    out = []
    while reply:
        length = int.from_bytes(reply[1:5], "big")
        out.append((reply[:1], reply[5 : 1 + length]))
        reply = reply[1 + length :]
    return out


def kinds(reply: bytes) -> bytes:
    return b"".join(kind for kind, _ in messages_of(reply))


def error_code(reply: bytes) -> str:
    errors = [body for kind, body in messages_of(reply) if kind == b"E"]
    assert len(errors) == 1, reply
    fields = parse_error_fields(errors[0])
    assert fields["S"] == "ERROR"
    return fields["C"]


def query(console: Console, sql: str) -> bytes:
    return console.feed(0x51, sql.encode() + b"\x00")


def add_idle_server(pool: Pool) -> ServerConnection:
    server = ServerConnection(pool)
    server.set_transport(RecordingTransport())  # type: ignore[arg-type]
    server.state = codes.SERVER_IDLE
    pool.servers.add(server)
    pool.checkin(server)
    return server


def test_several_statements_one_ready_for_query(app: Application) -> None:
    console = Console(app.admin)
    reply = query(console, "SHOW VERSION; show log_level; SHOW USERS")
    assert kinds(reply) == b"TDC" + b"TDC" + b"TDDC" + b"Z"
    # The first failing statement ends the Query; the session goes on.
    reply = query(console, "SHOW VERSION; SHOW NOPE; SHOW VERSION")
    assert kinds(reply) == b"TDCEZ" and error_code(reply) == "58000"
    assert kinds(query(console, "")) == b"IZ"
    assert kinds(query(console, "SHOW POOLS")) == b"T" + b"D" * 3 + b"CZ"


def test_extended_protocol_fails_once_at_sync(app: Application) -> None:
    console = Console(app.admin)
    for kind in b"PBDE":
        assert console.feed(kind, b"") == b""
    reply = console.feed(0x53, b"")
    assert kinds(reply) == b"EZ" and parse_error_fields(messages_of(reply)[0][1])["C"] == "0A000"
    assert console.feed(0x53, b"") == b"Z\x00\x00\x00\x05I"  # a bare Sync: nothing failed since
    with pytest.raises(ProtocolViolation):
        console.feed(ord("d"), b"copy data")
    console.feed(0x58, b"")
    assert console.closed


def test_without_an_admin_context_commands_fail_cleanly() -> None:
    assert error_code(query(Console(None), "SHOW POOLS")) == "0A000"


def test_pause_resume_on_the_pool(app: Application) -> None:
    async def main() -> None:
        console = Console(app.admin)
        pool = app.registry.pools[("db", "u")]
        server = add_idle_server(pool)
        events.clear()
        assert kinds(query(console, "PAUSE db")) == b"CZ"
        assert pool.paused and app.registry.pools[("db", "v")].paused
        assert not app.registry.pools[("other", "u")].paused
        assert pool.checkout_nowait() is None  # nothing is lent while paused
        assert pool.idle == [server]
        assert kinds(query(console, "RESUME db")) == b"CZ"
        assert not pool.paused and pool.checkout_nowait() is server
        assert [e.kind for e in events.recent()] == ["PAUSE", "RESUME"]
        assert error_code(query(console, "PAUSE nope")) == "3D000"
        assert error_code(query(console, "RESUME a b")) == "58000"

    asyncio.run(main())


def test_reconnect_closes_idle_now_and_busy_at_checkin(app: Application) -> None:
    async def main() -> None:
        pool = app.registry.pools[("db", "u")]
        idle, busy = add_idle_server(pool), add_idle_server(pool)
        assert pool.checkout_nowait() is busy
        busy.state = codes.SERVER_ACTIVE
        assert kinds(query(Console(app.admin), "RECONNECT")) == b"CZ"
        assert idle.transport is not None and idle.transport.is_closing()
        assert busy.transport is not None and not busy.transport.is_closing()
        pool.checkin(busy)
        assert busy.transport.is_closing() and pool.idle == []

    asyncio.run(main())


def test_kill_closes_every_server(app: Application) -> None:
    async def main() -> None:
        pool = app.registry.pools[("other", "u")]
        servers = [add_idle_server(pool), add_idle_server(pool)]
        assert kinds(query(Console(app.admin), "KILL other")) == b"CZ"
        assert all(s.transport is not None and s.transport.is_closing() for s in servers)
        assert pool.idle == [] and not pool.paused

    asyncio.run(main())


def test_set_log_level_and_reload_errors(app: Application, tmp_path: Path) -> None:
    console = Console(app.admin)
    root = logging.getLogger()
    before = root.level
    try:
        assert kinds(query(console, "SET log_level = 'trace'")) == b"CZ"
        assert root.level == 5
        assert b"trace" in query(console, "SHOW LOG_LEVEL")
        assert error_code(query(console, "SET log_level = 'chatty'")) == "42601"
        assert error_code(query(console, "SET work_mem = '1MB'")) == "42601"
        assert error_code(query(console, "SET log_level")) == "42601"
        assert kinds(query(console, "SET log_level = default")) == b"CZ"
        assert root.level == before
    finally:
        root.setLevel(before)
    (tmp_path / "c.yaml").write_text("pools: [broken\n")
    assert error_code(query(console, "RELOAD")) == "F0000"
    assert len(app.registry) == 3  # the running configuration is kept
    (tmp_path / "c.yaml").write_text(CONFIG.replace("pool_size: 2", "pool_size: 4"))
    assert kinds(query(console, "RELOAD")) == b"CZ"
    assert app.registry.pools[("other", "u")].settings.pool_size == 4


def test_tab_completion_query(app: Application) -> None:
    reply = query(Console(app.admin), "SELECT pg_catalog.lower(name) FROM pg_catalog.pg_settings")
    assert kinds(reply).startswith(b"TD") and kinds(reply).endswith(b"CZ")
    assert b"pools_extended" in reply and b"SELECT " in reply
