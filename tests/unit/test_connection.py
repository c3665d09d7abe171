"""Direct socket writes (connection.py): over real uvloop transports on a loopback socket pair, bytes arrive
complete and in order whether the kernel took them at once or the transport had to queue them, and nothing is
written straight to a descriptor once the connection is closing.

Closing after an error (`Connection.close_after_error`), on uvloop and on asyncio's own loop, over TCP and Unix
sockets: a peer that keeps sending still reads the error and an orderly EOF, and the drain stops at its bounds.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from pg_doorman import connection, directio
from pg_doorman.connection import DRAIN_MAX_BYTES, DRAIN_MAX_SECONDS, DRAIN_QUIET_SECONDS, Connection


class Endpoint(Connection):
    """A Connection as an event-loop protocol, like ClientConnection/ServerConnection."""

    def __init__(self) -> None:
        self.set_transport(None)
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.set_transport(transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        if self._drain_timer is not None:  # as ClientConnection does in CLIENT_CLOSED
            self.discard_input(len(data))

    def eof_received(self) -> bool | None:
        self.abort_transport()  # as ClientConnection does
        return None

    def pause_writing(self) -> None: ...

    def resume_writing(self) -> None: ...

    def connection_lost(self, exc: Exception | None) -> None:
        self.forget_socket()
        if not self.lost.done():
            self.lost.set_result(None)


def run(coro: object) -> None:
    uvloop.run(coro)  # type: ignore[arg-type]


async def _endpoint_and_peer() -> tuple[Endpoint, socket.socket]:
    ours, theirs = socket.socketpair()
    loop = asyncio.get_running_loop()
    _, endpoint = await loop.create_connection(Endpoint, sock=ours)
    theirs.setblocking(False)
    return endpoint, theirs


async def _read_all(sock: socket.socket, size: int) -> bytes:
    loop = asyncio.get_running_loop()
    got = bytearray()
    while len(got) < size:
        chunk = await loop.sock_recv(sock, 1 << 20)
        if not chunk:
            break
        got += chunk
    return bytes(got)


def test_bytes_arrive_in_order_when_the_socket_fills() -> None:
    async def main() -> None:
        endpoint, peer = await _endpoint_and_peer()
        assert endpoint._fd >= 0  # a plain socket: direct writes are on
        # Far more than a socket buffer holds while the peer does not read: the kernel takes the first chunks,
        # the transport queues the rest, and every write after that must queue behind it.
        chunks = [bytes([i % 251]) * (16 * 1024 + i) for i in range(200)]
        for chunk in chunks:
            endpoint.write(chunk)
        assert endpoint._queued_in_transport
        assert endpoint.transport is not None and endpoint.transport.get_write_buffer_size() > 0
        expected = b"".join(chunks)
        got = await _read_all(peer, len(expected))
        assert got == expected
        # Drained: the next write goes straight to the socket again and arrives after everything else.
        endpoint.write(b"tail")
        assert not endpoint._queued_in_transport
        assert await _read_all(peer, 4) == b"tail"
        endpoint.transport.close()
        peer.close()

    run(main())


def test_small_writes_skip_the_transport() -> None:
    async def main() -> None:
        endpoint, peer = await _endpoint_and_peer()
        for i in range(100):
            endpoint.write(b"%03d" % i)
        assert not endpoint._queued_in_transport
        assert endpoint.transport is not None and endpoint.transport.get_write_buffer_size() == 0
        assert await _read_all(peer, 300) == b"".join(b"%03d" % i for i in range(100))
        endpoint.transport.close()
        peer.close()

    run(main())


def test_no_direct_write_once_closing_or_lost() -> None:
    async def main() -> None:
        endpoint, peer = await _endpoint_and_peer()
        endpoint.forget_socket()  # what close()/abort() in ClientConnection/ServerConnection do first
        endpoint.write(b"via transport")
        assert endpoint._queued_in_transport
        assert await _read_all(peer, 13) == b"via transport"
        # The peer goes away: connection_lost ends direct writes before the loop closes the descriptor.
        endpoint2, peer2 = await _endpoint_and_peer()
        assert endpoint2._fd >= 0
        peer2.close()
        await asyncio.wait_for(endpoint2.lost, 5)
        assert endpoint2._fd == -1
        assert endpoint.transport is not None
        endpoint.transport.close()
        peer.close()

    run(main())


def test_pure_python_send_nowait() -> None:
    """The pure-Python build's send_nowait: count written, 0 when the socket is full, -1 on an error."""
    a, b = socket.socketpair()
    a.setblocking(False)
    assert directio.send_nowait(a.fileno(), b"hello") == 5
    assert b.recv(5) == b"hello"
    total = 0
    while True:
        sent = directio.send_nowait(a.fileno(), b"x" * 65536)
        if sent == 0:
            break
        total += sent
    assert total > 0
    b.close()
    assert directio.send_nowait(a.fileno(), b"after close") == -1
    a.close()


# ---------------------------------------------------------------- closing after an error

LOOPS: dict[str, Callable[[Coroutine[Any, Any, None]], None]] = {
    "uvloop": uvloop.run,
    "asyncio": asyncio.run,
}
ERROR = b"E" + (9).to_bytes(4, "big") + b"FATAL"


def socket_pair(family: str) -> tuple[socket.socket, socket.socket]:
    """(ours, theirs): a connected TCP or Unix stream socket pair."""
    if family == "unix":
        return socket.socketpair()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        theirs = socket.create_connection(listener.getsockname())
        ours, _ = listener.accept()
    return ours, theirs


async def endpoint_on(ours: socket.socket) -> Endpoint:
    _, endpoint = await asyncio.get_running_loop().create_connection(Endpoint, sock=ours)
    return endpoint


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = fn()
        except BaseException as exc:
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


async def joined(thread: threading.Thread, timeout: float = 10.0) -> None:
    await asyncio.get_running_loop().run_in_executor(None, thread.join, timeout)
    assert not thread.is_alive()


def read_to_eof(sock: socket.socket) -> bytes:
    got = b""
    while chunk := sock.recv(65536):
        got += chunk
    return got


@pytest.mark.parametrize("family", ["tcp", "unix"])
@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_peer_that_keeps_sending_reads_the_error_then_eof(loop: str, family: str) -> None:
    """The peer sends 300 kB the endpoint will never parse; the error was written in the middle of it. The peer
    finishes sending (no reset), reads the error and an orderly EOF, closes, and the drain is over."""

    async def main() -> None:
        ours, theirs = socket_pair(family)
        theirs.settimeout(10)
        endpoint = await endpoint_on(ours)

        def peer() -> bytes:
            theirs.sendall(b"x" * (100 * 1024))
            time.sleep(0.05)
            theirs.sendall(b"y" * (200 * 1024))
            got = read_to_eof(theirs)
            theirs.close()
            return got

        thread, out = in_thread(peer)
        endpoint.close_after_error(ERROR)
        assert connection.draining_count() == 1
        endpoint.write(b"after")  # dropped: the error is the last thing written
        await joined(thread)
        assert "error" not in out, out
        assert out["result"] == ERROR
        await asyncio.wait_for(endpoint.lost, 5)
        assert connection.draining_count() == 0
        await connection.wait_for_drains()  # nothing to wait for

    LOOPS[loop](main())


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_drain_resumes_paused_reading(loop: str) -> None:
    """A client held back by flow control (pause_reading) is read again once it is closing: otherwise its unread
    bytes would turn the close into a reset."""

    async def main() -> None:
        ours, theirs = socket_pair("tcp")
        theirs.settimeout(10)
        endpoint = await endpoint_on(ours)
        endpoint.pause_reading()
        theirs.sendall(b"z" * 4096)
        thread, out = in_thread(lambda: (theirs.sendall(b"z" * (300 * 1024)), read_to_eof(theirs))[1])
        await asyncio.sleep(0.05)
        endpoint.close_after_error(ERROR)
        await joined(thread)
        assert out.get("result") == ERROR, out
        theirs.close()
        await asyncio.wait_for(endpoint.lost, 5)

    LOOPS[loop](main())


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_drain_of_a_flood_stops_at_the_byte_bound(loop: str) -> None:
    async def main() -> None:
        ours, theirs = socket_pair("tcp")
        endpoint = await endpoint_on(ours)
        endpoint.close_after_error(ERROR)
        sent = 0

        def flood() -> None:
            nonlocal sent
            chunk = b"f" * 65536
            while sent < 64 * DRAIN_MAX_BYTES:
                sent += theirs.send(chunk)

        thread, out = in_thread(flood)
        t0 = time.monotonic()
        await asyncio.wait_for(endpoint.lost, DRAIN_MAX_SECONDS + 2)
        assert time.monotonic() - t0 < DRAIN_MAX_SECONDS  # the bytes ran out first
        await joined(thread)
        assert isinstance(out.get("error"), ConnectionResetError | BrokenPipeError), out
        assert sent < DRAIN_MAX_BYTES + 16 * 1024 * 1024  # the bound plus what the socket buffers hold
        theirs.close()

    LOOPS[loop](main())


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_quiet_peer_is_closed_without_waiting_for_its_eof(loop: str) -> None:
    """A peer that neither sends nor closes (an idle client that reads its socket only later) gets the error,
    then a FIN, and the connection is closed DRAIN_QUIET_SECONDS later; the error is still there to read."""

    async def main() -> None:
        ours, theirs = socket_pair("tcp")
        endpoint = await endpoint_on(ours)
        t0 = time.monotonic()
        endpoint.close_after_error(ERROR)
        waiting = asyncio.ensure_future(connection.wait_for_drains())
        await asyncio.wait_for(endpoint.lost, DRAIN_MAX_SECONDS)
        elapsed = time.monotonic() - t0
        assert DRAIN_QUIET_SECONDS * 0.8 <= elapsed < DRAIN_MAX_SECONDS
        await asyncio.wait_for(waiting, 1)
        theirs.settimeout(5)
        assert read_to_eof(theirs) == ERROR
        theirs.close()

    LOOPS[loop](main())


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_trickling_peer_is_aborted_at_the_time_bound(loop: str) -> None:
    async def main() -> None:
        ours, theirs = socket_pair("unix")
        endpoint = await endpoint_on(ours)
        stop = threading.Event()

        def trickle() -> None:
            while not stop.wait(0.05):
                theirs.send(b".")

        thread, _ = in_thread(trickle)
        t0 = time.monotonic()
        endpoint.close_after_error(ERROR)
        await asyncio.wait_for(endpoint.lost, DRAIN_MAX_SECONDS + 2)
        assert DRAIN_MAX_SECONDS * 0.9 <= time.monotonic() - t0 < DRAIN_MAX_SECONDS + 1
        stop.set()
        await joined(thread)
        theirs.close()

    LOOPS[loop](main())


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_error_waiting_for_input_goes_out_with_the_next_message(loop: str) -> None:
    """wait_for_input: nothing is written until the peer speaks; then the error (as the answer to that message)
    and EOF."""

    async def main() -> None:
        ours, theirs = socket_pair("tcp")
        endpoint = await endpoint_on(ours)
        endpoint.close_after_error(ERROR, wait_for_input=True)
        await asyncio.sleep(DRAIN_QUIET_SECONDS / 3)
        theirs.setblocking(False)
        with pytest.raises(BlockingIOError):
            theirs.recv(1)
        theirs.setblocking(True)
        theirs.settimeout(5)
        t0 = time.monotonic()
        thread, out = in_thread(lambda: (theirs.sendall(b"Q\0\0\0\x05;"), read_to_eof(theirs))[1])
        await joined(thread)
        assert out.get("result") == ERROR, out
        assert time.monotonic() - t0 < DRAIN_QUIET_SECONDS
        theirs.close()
        await asyncio.wait_for(endpoint.lost, 5)

    LOOPS[loop](main())


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_error_waiting_for_input_goes_out_after_a_quiet_moment(loop: str) -> None:
    async def main() -> None:
        ours, theirs = socket_pair("unix")
        endpoint = await endpoint_on(ours)
        endpoint.close_after_error(ERROR, wait_for_input=True)
        theirs.settimeout(5)
        t0 = time.monotonic()
        thread, out = in_thread(lambda: read_to_eof(theirs))
        await joined(thread)
        assert out.get("result") == ERROR, out
        assert DRAIN_QUIET_SECONDS * 0.8 <= time.monotonic() - t0 < DRAIN_MAX_SECONDS
        theirs.close()
        await asyncio.wait_for(endpoint.lost, 5)

    LOOPS[loop](main())


def test_close_after_error_twice_or_after_close_does_nothing() -> None:
    async def main() -> None:
        ours, theirs = socket_pair("tcp")
        endpoint = await endpoint_on(ours)
        endpoint.close_after_error(ERROR)
        endpoint.close_after_error(b"second")
        endpoint.close_transport()  # left to the drain
        assert endpoint.transport is not None and not endpoint.transport.is_closing()
        theirs.settimeout(5)
        thread, out = in_thread(lambda: read_to_eof(theirs))
        await joined(thread)
        assert out.get("result") == ERROR, out
        theirs.close()
        await asyncio.wait_for(endpoint.lost, 5)
        closed, theirs2 = socket_pair("tcp")
        endpoint2 = await endpoint_on(closed)
        endpoint2.close_transport()
        endpoint2.close_after_error(ERROR)
        await asyncio.wait_for(endpoint2.lost, 5)
        theirs2.settimeout(5)
        assert read_to_eof(theirs2) == b""
        theirs2.close()
        assert connection.draining_count() == 0

    uvloop.run(main())
