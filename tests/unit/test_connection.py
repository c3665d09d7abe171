"""Direct socket writes (connection.py): over real uvloop transports on a loopback socket pair, bytes arrive
complete and in order whether the kernel took them at once or the transport had to queue them, and nothing is
written straight to a descriptor once the connection is closing."""

from __future__ import annotations

import asyncio
import socket

import uvloop

from pg_doorman import directio
from pg_doorman.connection import Connection


class Endpoint(Connection):
    """A Connection as an event-loop protocol, like ClientConnection/ServerConnection."""

    def __init__(self) -> None:
        self.set_transport(None)
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.set_transport(transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None: ...

    def eof_received(self) -> bool | None:
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
