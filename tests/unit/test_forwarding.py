"""The forwarding hot path (client.py/server.py) without sockets: any split of the byte streams into reads must
give the same bytes on the other side and the same release decision (transaction mode, prepared statements on)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from pg_doorman import codes
from pg_doorman.app import Application
from pg_doorman.client import ClientConnection
from pg_doorman.config import load_config
from pg_doorman.protocol import messages
from pg_doorman.protocol.framing import MessageBuffer
from pg_doorman.server import ServerConnection


class RecordingTransport:
    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.data += data

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.closed = True  # what a client is sent last (Connection.close_after_error): closed for these tests


def make_pair(
    tmp_path: Path, tracked: bool, client_class: type[ClientConnection] = ClientConnection
) -> tuple[ClientConnection, ServerConnection, Any]:
    path = tmp_path / "c.yaml"
    path.write_text(
        "general: {admin_username: a, admin_password: b, prepared_statements: %s}\n"
        "pools: {db: {users: [{username: u, password: '', pool_size: 1}]}}\n" % ("true" if tracked else "false")
    )
    return pair_in(Application(load_config(path)), transaction_mode=True, tracked=tracked, client_class=client_class)


def pair_in(
    app: Application,
    *,
    transaction_mode: bool,
    tracked: bool,
    client_class: type[ClientConnection] = ClientConnection,
) -> tuple[ClientConnection, ServerConnection, Any]:
    """A logged-in client of ``app``'s pool db/u and an idle server of that pool, both on recording transports."""
    pool = app.registry.pools[("db", "u")]
    server = ServerConnection(pool)
    server.set_transport(RecordingTransport())  # type: ignore[arg-type]
    server.state = codes.SERVER_IDLE
    pool.servers.add(server)
    pool.idle.append(server)
    client = client_class(app.context)
    client.set_transport(RecordingTransport())  # type: ignore[arg-type]
    client.pool = pool
    client.state = codes.CLIENT_IDLE
    client.transaction_mode = transaction_mode
    if tracked:
        client.track_statements()
    client.param_token = server.param_token
    return client, server, pool


def feed(target: Any, data: bytes, size: int) -> None:
    for i in range(0, len(data), size):
        target.data_received(data[i : i + size])


PARSE = messages.message(b"P", b"s1\x00select $1::int\x00\x00\x01\x00\x00\x00\x17")
BIND = messages.message(b"B", b"\x00s1\x00\x00\x00\x00\x01\x00\x00\x00\x0142\x00\x00")
EXECUTE = messages.message(b"E", b"\x00\x00\x00\x00\x00")
ROW = messages.message(b"D", b"\x00\x01\x00\x00\x00\x0242")
TAIL = messages.command_complete("SELECT 1") + messages.READY_IDLE


@pytest.mark.parametrize("tracked", [True, False])
@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 11, 4096])
def test_simple_query_any_split(tmp_path: Path, tracked: bool, size: int) -> None:
    async def run() -> None:
        client, server, pool = make_pair(tmp_path, tracked)
        request = messages.query("select 42")
        reply = messages.message(b"T", b"\x00\x00") + ROW + TAIL
        feed(client, request, size)
        assert bytes(server.transport.data) == request  # type: ignore[union-attr]
        assert client.server is server
        feed(server, reply, size)
        assert bytes(client.transport.data) == reply  # type: ignore[union-attr]
        assert client.server is None and list(pool.idle) == [server], "released after ReadyForQuery 'I'"

    asyncio.run(run())


@pytest.mark.parametrize("size", [1, 3, 6, 4096])
def test_named_statement_any_split(tmp_path: Path, size: int) -> None:
    async def run() -> None:
        client, server, pool = make_pair(tmp_path, True)
        out = server.transport
        # Transaction 1: Parse + Sync; the server gets the pool-wide name.
        feed(client, PARSE + messages.SYNC, size)
        sent = bytes(out.data)  # type: ignore[union-attr]
        assert b"DOORMAN_" in sent and b"s1\x00" not in sent
        feed(server, messages.PARSE_COMPLETE + messages.READY_IDLE, size)
        assert bytes(client.transport.data) == messages.PARSE_COMPLETE + messages.READY_IDLE  # type: ignore[union-attr]
        assert client.server is None
        # Transaction 2: Bind by the client's name, rewritten; a re-Parse of the same text is answered locally.
        out.data.clear()  # type: ignore[union-attr]
        client.transport.data.clear()  # type: ignore[union-attr]
        feed(client, BIND + EXECUTE + messages.SYNC, size)
        assert b"DOORMAN_" in bytes(out.data) and b"s1\x00" not in bytes(out.data)  # type: ignore[union-attr]
        feed(server, messages.BIND_COMPLETE + ROW + TAIL, size)
        assert bytes(client.transport.data) == messages.BIND_COMPLETE + ROW + TAIL  # type: ignore[union-attr]
        assert client.server is None and list(pool.idle) == [server]

    asyncio.run(run())


def test_synthetic_parse_complete_keeps_its_position(tmp_path: Path) -> None:
    """A Parse the server already has is not sent; its ParseComplete still comes first, before BindComplete."""

    async def run() -> None:
        client, server, _ = make_pair(tmp_path, True)
        feed(client, PARSE + messages.SYNC, 4096)
        feed(server, messages.PARSE_COMPLETE + messages.READY_IDLE, 4096)
        other, _, _ = make_pair(tmp_path, True)
        # A second client of the same pool object parses the same text: reuse the registry of the first pool.
        other.pool = client.pool
        other.track_statements()
        other.param_token = server.param_token
        before = len(server.transport.data)  # type: ignore[union-attr]
        other.data_received(
            PARSE.replace(b"s1\x00", b"s9\x00") + BIND.replace(b"\x00s1\x00", b"\x00s9\x00") + EXECUTE + messages.SYNC
        )
        buf = MessageBuffer()
        buf.feed(bytes(server.transport.data)[before:])  # type: ignore[union-attr]
        assert [chr(kind) for kind, _ in buf.messages()] == ["B", "E", "S"], "the known Parse is not sent again"
        server.data_received(messages.BIND_COMPLETE + ROW + TAIL)
        got = bytes(other.transport.data)  # type: ignore[union-attr]
        assert got == messages.PARSE_COMPLETE + messages.BIND_COMPLETE + ROW + TAIL
        # The counters the admin console and metrics read: one statement, prepared once, found once.
        stats = server.pool.prepared_statement_stats()
        assert stats["cache_entries"] == 1 and stats["cache_misses"] == 1 and stats["cache_hits"] == 1
        assert stats["server_statements"] == 1 and stats["server_evictions"] == 0

    asyncio.run(run())


def test_error_skips_to_sync_and_undoes_the_parse(tmp_path: Path) -> None:
    async def run() -> None:
        client, server, _ = make_pair(tmp_path, True)
        error = messages.error_response("42601", "syntax error", severity="ERROR")
        feed(client, PARSE + BIND + EXECUTE + messages.SYNC, 4096)
        feed(server, error + messages.READY_IDLE, 4096)
        assert bytes(client.transport.data) == error + messages.READY_IDLE  # type: ignore[union-attr]
        assert client.rewriter is not None and b"s1" not in client.rewriter.statements.named
        assert not server.statements._names, "a failed Parse leaves nothing on the server"

    asyncio.run(run())


STALE = messages.error_response("0A000", "cached plan must not change result type", severity="ERROR")
DESCRIBE_PORTAL = messages.message(b"D", b"P\x00")


def _prepared(tmp_path: Path) -> tuple[ClientConnection, ServerConnection]:
    client, server, _ = make_pair(tmp_path, True)
    feed(client, PARSE + messages.SYNC, 4096)
    feed(server, messages.PARSE_COMPLETE + messages.READY_IDLE, 4096)
    client.transport.data.clear()  # type: ignore[union-attr]
    server.transport.data.clear()  # type: ignore[union-attr]
    return client, server


DROPPED_TYPE = messages.error_response("XX000", "cache lookup failed for type 16390", severity="ERROR")


@pytest.mark.parametrize("error", [STALE, DROPPED_TYPE], ids=["result_type_changed", "parameter_type_dropped"])
def test_stale_plan_replays_a_single_described_bind(tmp_path: Path, error: bytes) -> None:
    async def run() -> None:
        client, server = _prepared(tmp_path)
        first_name = client.rewriter.statements.named[b"s1"].name  # type: ignore[union-attr]
        feed(client, BIND + DESCRIBE_PORTAL + EXECUTE + messages.SYNC, 4096)
        first_attempt = len(server.transport.data)  # type: ignore[union-attr]
        feed(server, error + messages.READY_IDLE, 4096)
        assert bytes(client.transport.data) == b"", "the error and its ReadyForQuery are hidden"  # type: ignore[union-attr]
        fresh = client.rewriter.statements.named[b"s1"]  # type: ignore[union-attr]
        assert fresh.name != first_name, "the client's name now maps to a fresh statement"
        buf = MessageBuffer()
        buf.feed(bytes(server.transport.data)[first_attempt:])  # type: ignore[union-attr]
        resent = list(buf.messages())
        assert [chr(kind) for kind, _ in resent] == ["P", "B", "D", "E", "S"], "re-prepared, then sent again"
        assert resent[0][1].startswith(fresh.name + b"\x00") and fresh.name in resent[1][1]
        row_desc = messages.message(b"T", b"\x00\x00")
        feed(server, messages.PARSE_COMPLETE + messages.BIND_COMPLETE + row_desc + ROW + TAIL, 4096)
        got = bytes(client.transport.data)  # type: ignore[union-attr]
        assert got == messages.BIND_COMPLETE + row_desc + ROW + TAIL
        assert client.server is None

    asyncio.run(run())


@pytest.mark.parametrize("batch", ["two_binds", "no_describe"])
def test_stale_plan_error_reaches_the_client_when_replay_is_unsafe(tmp_path: Path, batch: str) -> None:
    async def run() -> None:
        client, server = _prepared(tmp_path)
        if batch == "two_binds":
            feed(client, BIND + DESCRIBE_PORTAL + EXECUTE + BIND + EXECUTE + messages.SYNC, 4096)
            reply = (
                messages.BIND_COMPLETE
                + messages.message(b"T", b"\x00\x00")
                + ROW
                + messages.command_complete("SELECT 1")
            )
            feed(server, reply + STALE + messages.READY_IDLE, 4096)
            assert bytes(client.transport.data) == reply + STALE + messages.READY_IDLE  # type: ignore[union-attr]
        else:
            feed(client, BIND + EXECUTE + messages.SYNC, 4096)
            feed(server, STALE + messages.READY_IDLE, 4096)
            assert bytes(client.transport.data) == STALE + messages.READY_IDLE  # type: ignore[union-attr]
        assert client.server is None
        # Either way the statement is retired: the next Bind prepares a fresh one first.
        server.transport.data.clear()  # type: ignore[union-attr]
        feed(client, BIND + EXECUTE + messages.SYNC, 4096)
        assert bytes(server.transport.data)[:1] == b"P"  # type: ignore[union-attr]

    asyncio.run(run())


@pytest.mark.parametrize("tracked", [True, False])
@pytest.mark.parametrize("length", [0x80000005, 0xFFFFFFFF, 3])
def test_client_length_outside_int32_range_is_rejected(tmp_path: Path, tracked: bool, length: int) -> None:
    """A length with the top bit set (negative as PostgreSQL's int32) or below 4: ErrorResponse 08P01, closed.
    The compiled loop must not wrap it around into a small or negative number."""

    async def run() -> None:
        client, server, _pool = make_pair(tmp_path, tracked)
        feed(client, messages.query("select 1"), 4096)  # a transaction is open: the client holds the server
        assert client.server is server
        feed(client, b"Q" + length.to_bytes(4, "big") + b"select 1\x00", 4096)
        reply = bytes(client.transport.data)  # type: ignore[union-attr]
        assert b"08P01" in reply
        assert client.transport.closed  # type: ignore[union-attr]

    asyncio.run(run())


@pytest.mark.parametrize("tracked", [True, False])
def test_server_length_above_int32_range_does_not_loop(tmp_path: Path, tracked: bool) -> None:
    """A (broken) server announcing a message of 2 GiB or more: its bytes pass through as the body of one huge
    message, the forwarder neither loops nor reads backwards, and the server is never released."""

    async def run() -> None:
        client, server, pool = make_pair(tmp_path, tracked)
        feed(client, messages.query("select 1"), 4096)
        huge = b"D" + (0x80000010).to_bytes(4, "big") + b"x" * 32
        feed(server, huge + messages.READY_IDLE, 4096)
        assert bytes(client.transport.data) == huge + messages.READY_IDLE  # type: ignore[union-attr]
        assert client.server is server and not pool.idle

    asyncio.run(run())


class _BuggyClient(ClientConnection):
    """Stands in for a bug in the client's forwarding code (a Python override of the compiled method too)."""

    def _forward(self, data: bytes) -> None:
        raise RuntimeError("simulated bug")


def test_a_bug_costs_only_that_client_its_connection(tmp_path: Path) -> None:
    """An exception out of the forwarding code: that client gets an ErrorResponse (XX000) and is closed, and its
    server goes back to the pool untouched (nothing reached it) for the next client."""

    async def run() -> None:
        client, server, pool = make_pair(tmp_path, True, _BuggyClient)
        client.data_received(messages.query("select 1"))
        reply = bytes(client.transport.data)  # type: ignore[union-attr]
        assert reply[:1] == b"E" and b"XX000" in reply and b"FATAL" in reply
        assert client.transport.closed  # type: ignore[union-attr]
        assert client.server is None and pool.idle == [server]
        assert bytes(server.transport.data) == b""  # type: ignore[union-attr]

    asyncio.run(run())


def test_a_bug_on_the_server_side_closes_that_server_and_fails_its_client(tmp_path: Path) -> None:
    async def run() -> None:
        client, server, pool = make_pair(tmp_path, True)
        feed(client, messages.query("select 1"), 4096)
        assert client.server is server
        server.ledger.expect.append(None)  # type: ignore[arg-type]  # a corrupt queue: what a bug could leave behind
        server.data_received(messages.command_complete("SELECT 1") + messages.READY_IDLE)
        reply = bytes(client.transport.data)  # type: ignore[union-attr]
        assert b"XX000" in reply and client.transport.closed  # type: ignore[union-attr]
        assert server.transport.closed  # type: ignore[union-attr]
        assert not pool.idle

    asyncio.run(run())
