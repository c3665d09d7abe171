"""A backend that ends the session itself (its own FATAL, then EOF) gives the client exactly one error, as a direct
connection does; a backend that dies without a word gets pg_doorman's 08006. Without sockets: the server's bytes
are fed to its callbacks and the client's recording transport shows what the client would read."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_forwarding import RecordingTransport, feed, make_pair, pair_in

from pg_doorman import codes, connection
from pg_doorman.app import Application
from pg_doorman.config import load_config
from pg_doorman.ledger import ServerLedger
from pg_doorman.protocol import messages
from pg_doorman.protocol.framing import MessageBuffer

ROW = messages.message(b"D", b"\x00\x01\x00\x00\x00\x0242")


@pytest.fixture(autouse=True)
def no_drain_left() -> Iterator[None]:
    """Each test ends its clients' drains (connection_lost), so no closing connection outlives it."""
    yield
    assert connection.draining_count() == 0


def error(severity: str, code: str, text: str, *, localized_only: bool = False) -> bytes:
    """An ErrorResponse as PostgreSQL sends it: 'S' (localized) and 'V' (since 9.6), or only 'S' (older)."""
    fields = [b"S" + severity.encode() + b"\x00"]
    if not localized_only:
        fields.append(b"V" + severity.encode() + b"\x00")
    fields += [b"C" + code.encode() + b"\x00", b"M" + text.encode() + b"\x00"]
    return messages.message(b"E", b"".join(fields) + b"\x00")


TERMINATED = error("FATAL", "57P01", "terminating connection due to administrator command")


def client_messages(client: Any) -> list[tuple[int, dict[str, str]]]:
    """What the client read: (type, error fields or {}) per message."""
    buf = MessageBuffer()
    buf.feed(bytes(client.transport.data))
    return [(kind, messages.parse_error_fields(body) if kind == 69 else {}) for kind, body in buf.messages()]


def errors(client: Any) -> list[str]:
    return [fields.get("C", "?") for kind, fields in client_messages(client) if kind == 69]


def lend(client: Any, server: Any, sql: str = "select 42") -> None:
    client.data_received(messages.query(sql))
    assert client.server is server


@pytest.mark.parametrize("tracked", [True, False])
@pytest.mark.parametrize("size", [1, 3, 4096])
@pytest.mark.parametrize("localized_only", [False, True])
def test_fatal_from_the_server_is_the_only_error(
    tmp_path: Path, tracked: bool, size: int, localized_only: bool
) -> None:
    async def run() -> None:
        client, server, pool = make_pair(tmp_path, tracked)
        lend(client, server, "select pg_sleep(10)")
        fatal = error(
            "FATAL", "57P01", "terminating connection due to administrator command", localized_only=localized_only
        )
        feed(server, fatal, size)
        assert server.fatal_forwarded
        assert bytes(client.transport.data) == fatal  # forwarded whole, as it came
        server.connection_lost(None)
        assert bytes(client.transport.data) == fatal, "nothing added after the server's own FATAL"
        assert client.transport.closed  # FIN after the error (close_after_error), draining the client's input
        assert client.state == codes.CLIENT_CLOSED and client.server is None
        assert server not in pool.servers and not pool.idle
        client.data_received(messages.query("select 1"))  # a client still sending: read and dropped
        assert bytes(client.transport.data) == fatal
        client.connection_lost(None)

    asyncio.run(run())


@pytest.mark.parametrize("tracked", [True, False])
def test_fatal_after_rows_of_a_running_query(tmp_path: Path, tracked: bool) -> None:
    """Rows first, then the FATAL in the same read (e.g. pg_terminate_backend during a long result)."""

    async def run() -> None:
        client, server, _pool = make_pair(tmp_path, tracked)
        lend(client, server)
        reply = messages.message(b"T", b"\x00\x00") + ROW + ROW + TERMINATED
        server.data_received(reply)
        server.connection_lost(None)
        assert bytes(client.transport.data) == reply
        assert errors(client) == ["57P01"]
        client.connection_lost(None)  # its socket goes: the drain ends

    asyncio.run(run())


@pytest.mark.parametrize(
    ("last_bytes", "expected"),
    [
        (b"", ["08006"]),  # killed between messages (SIGKILL, network cut)
        (TERMINATED[:9], ["08006"]),  # killed in the middle of its own FATAL: the client never got it whole
        (messages.message(b"T", b"\x00\x00") + ROW[:4], ["08006"]),  # in the middle of a result
        (error("ERROR", "57014", "canceling statement due to user request"), ["57014", "08006"]),  # not FATAL
        (messages.message(b"N", b"SWARNING\x00VWARNING\x00C57P02\x00Mcrash\x00\x00"), ["08006"]),  # a notice
    ],
    ids=["between-messages", "mid-fatal", "mid-result", "error-not-fatal", "notice"],
)
@pytest.mark.parametrize("tracked", [True, False])
def test_server_gone_without_its_fatal_gets_pg_doormans_08006(
    tmp_path: Path, tracked: bool, last_bytes: bytes, expected: list[str]
) -> None:
    async def run() -> None:
        client, server, _pool = make_pair(tmp_path, tracked)
        lend(client, server)
        if last_bytes:
            server.data_received(last_bytes)
        assert not server.fatal_forwarded
        server.connection_lost(ConnectionResetError())
        assert errors(client) == expected, client_messages(client)
        assert client_messages(client)[-1][1]["S"] == "FATAL"
        assert client.state == codes.CLIENT_CLOSED
        client.connection_lost(None)  # its socket goes: the drain ends

    asyncio.run(run())


@pytest.mark.parametrize("tracked", [True, False])
def test_client_leaving_before_the_servers_eof_does_not_return_it_to_the_pool(tmp_path: Path, tracked: bool) -> None:
    """Session mode without a reset query: the client read the FATAL and closed before pg_doorman saw the
    backend's EOF. The server, clean as far as requests go (the FATAL came while the session was idle), must not
    be lent to anyone again."""

    async def run() -> None:
        path = tmp_path / "c.yaml"
        path.write_text(
            "general: {admin_username: a, admin_password: b, prepared_statements: %s, server_reset_query: ''}\n"
            "pools: {db: {pool_mode: session, users: [{username: u, password: '', pool_size: 1}]}}\n"
            % ("true" if tracked else "false")
        )
        client, server, pool = pair_in(Application(load_config(path)), transaction_mode=False, tracked=tracked)
        lend(client, server)
        server.data_received(messages.message(b"T", b"\x00\x00") + ROW + messages.command_complete("SELECT 1"))
        server.data_received(messages.READY_IDLE)
        assert client.server is server and server.ledger.is_clean()  # session mode: kept until the client leaves
        server.data_received(error("FATAL", "57P01", "terminating connection due to administrator command"))
        assert not server.ledger.is_clean() and not server.ledger.idle()
        client.connection_lost(None)  # the client goes first
        assert server not in pool.idle and server.state != codes.SERVER_IDLE
        assert server.transport.closed  # type: ignore[attr-defined]
        server.connection_lost(None)
        assert server not in pool.servers and not pool.idle

    asyncio.run(run())


def test_fatal_seen_while_idle_in_pool_affects_no_client(tmp_path: Path) -> None:
    async def run() -> None:
        client, server, pool = make_pair(tmp_path, tracked=False)
        lend(client, server)
        server.data_received(messages.message(b"T", b"\x00\x00") + ROW + messages.command_complete("SELECT 1"))
        server.data_received(messages.READY_IDLE)
        assert client.server is None and list(pool.idle) == [server]
        before = bytes(client.transport.data)
        server.data_received(TERMINATED)  # an idle server must not talk: closed
        server.connection_lost(None)
        assert not pool.idle and server not in pool.servers
        assert bytes(client.transport.data) == before and client.state == codes.CLIENT_IDLE

    asyncio.run(run())


def test_a_second_server_of_the_client_is_not_confused_with_the_dead_one(tmp_path: Path) -> None:
    """The flag belongs to the server that sent the FATAL: a server lost later without one still reports 08006."""

    async def run() -> None:
        client, server, pool = make_pair(tmp_path, tracked=False)
        lend(client, server)
        server.data_received(messages.message(b"T", b"\x00\x00") + ROW + messages.command_complete("SELECT 1"))
        server.data_received(messages.READY_IDLE)
        assert client.server is None
        other = type(server)(pool)
        assert not other.fatal_forwarded
        other.set_transport(RecordingTransport())  # type: ignore[arg-type]
        other.state = codes.SERVER_IDLE
        pool.idle.clear()
        pool.servers.add(other)
        pool.idle.append(other)
        lend(client, other)
        other.connection_lost(None)
        assert errors(client) == ["08006"]
        client.connection_lost(None)  # its socket goes: the drain ends

    asyncio.run(run())


def test_ledger_session_ended_is_never_clean_again() -> None:
    ledger = ServerLedger()
    ledger.lent()
    assert ledger.is_clean() and ledger.idle()
    ledger.session_ended()
    assert not ledger.is_clean() and not ledger.idle()
