"""tlsstream.TlsTransport with bytes: a client made of Python's ssl on memory BIOs on one side, a recording TCP
transport on the other (no event loop I/O), so every record boundary can be chosen. In the compiled build this
runs the C record calls of tlsio.pxd, in pure Python those of tlsio.py; `test_records_go_through_c_when_compiled`
proves which. Last, `tls.upgrade` end to end over a socket pair, with pg_doorman's records and with the event
loop's TLS (the fallback)."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest

import pg_doorman
from pg_doorman import tls, tlsstream
from pg_doorman.devcluster import TlsFiles, generate_certificates


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return generate_certificates(str(tmp_path_factory.mktemp("tls")))


class RecordingRaw:
    """The TCP transport under a TlsTransport: keeps what is written, reports a queue size the test sets."""

    def __init__(self, sock: socket.socket | None = None) -> None:
        self.written = bytearray()
        self.queued = 0
        self.closed = False
        self.aborted = False
        self.protocol: Any = None
        self.sock = sock

    def write(self, data: bytes) -> None:
        self.written += data

    def get_write_buffer_size(self) -> int:
        return self.queued

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "socket":
            return self.sock
        return {"peername": ("127.0.0.1", 5)}.get(name, default)

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def resume_reading(self) -> None: ...
    def pause_reading(self) -> None: ...

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def take(self) -> bytes:
        data = bytes(self.written)
        self.written.clear()
        return data


class App:
    """The client protocol above: what it was given."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.eof = 0
        self.lost: list[Exception | None] = []

    def data_received(self, data: bytes) -> None:
        assert isinstance(data, bytes) and data
        self.data += data

    def eof_received(self) -> None:
        self.eof += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)


class Peer:
    """The remote client: Python's ssl on memory BIOs."""

    def __init__(self, maximum: ssl.TLSVersion | None = None) -> None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        if maximum is not None:
            ctx.maximum_version = maximum
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")

    def records(self, data: bytes) -> bytes:
        self.tls.write(data)
        return self.outgoing.read()

    def plaintext(self, records: bytes) -> bytes:
        self.incoming.write(records)
        out = bytearray()
        while True:
            try:
                chunk = self.tls.read(1 << 20)
            except ssl.SSLWantReadError:
                return bytes(out)
            if not chunk:
                return bytes(out)
            out += chunk


def server_context(certs: TlsFiles) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certs.server_cert, certs.server_key)
    return ctx


def sent_to(raw: RecordingRaw, far_end: socket.socket | None) -> bytes:
    """What the TlsTransport wrote: to its transport, and straight to the socket (read at ``far_end``)."""
    data = raw.take()
    if far_end is not None:
        far_end.setblocking(False)
        try:
            while True:
                data += far_end.recv(1 << 20)
        except BlockingIOError:
            pass
        finally:
            far_end.settimeout(5)
    return data


def connected(
    certs: TlsFiles,
    maximum: ssl.TLSVersion | None = None,
    sock: socket.socket | None = None,
    far_end: socket.socket | None = None,
) -> tuple[tlsstream.TlsTransport, RecordingRaw, App, Peer]:
    """A TlsTransport after its handshake with a Peer, driven by hand (over ``sock``, read at ``far_end``, when
    given)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    ssl_object = server_context(certs).wrap_bio(incoming, outgoing, server_side=True)
    raw, app, peer = RecordingRaw(sock), App(), Peer(maximum)
    stream = tlsstream.TlsTransport(raw, app, ssl_object, incoming, outgoing)  # type: ignore[arg-type]

    async def handshake() -> None:
        waiter = None
        while True:
            try:
                peer.tls.do_handshake()
            except ssl.SSLWantReadError:
                pass
            else:
                if waiter is not None and waiter.done():
                    break
            hello = peer.outgoing.read()
            if waiter is None:
                waiter = stream.start_handshake(hello)
            elif hello:
                stream.data_received(hello)
            peer.incoming.write(sent_to(raw, far_end))
        await waiter

    asyncio.run(handshake())
    assert peer.tls.version() in ("TLSv1.2", "TLSv1.3")
    return stream, raw, app, peer


def test_records_go_through_c_when_compiled(certs: TlsFiles) -> None:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    ssl_object = server_context(certs).wrap_bio(incoming, outgoing, server_side=True)
    # The compiled build binds OpenSSL's functions and the ssl objects' layout, or falls back to the loop's TLS.
    assert tlsstream.native(ssl_object, incoming, outgoing)
    compiled = pg_doorman.implementation() == "compiled"
    assert compiled == (Path(tlsstream.__file__).suffix == ".so")


@pytest.mark.parametrize("maximum", [None, ssl.TLSVersion.TLSv1_2])
def test_one_byte_at_a_time_and_many_records_at_once(certs: TlsFiles, maximum: ssl.TLSVersion | None) -> None:
    stream, _raw, app, peer = connected(certs, maximum)
    records = peer.records(b"Q\x00\x00\x00\x0dselect 1\x00")
    for i in range(len(records)):
        stream.data_received(records[i : i + 1])
    assert bytes(app.data) == b"Q\x00\x00\x00\x0dselect 1\x00"
    app.data.clear()
    batch = b"".join(peer.records(bytes([65 + i % 26]) * (i + 1)) for i in range(300))
    stream.data_received(batch)
    assert bytes(app.data) == b"".join(bytes([65 + i % 26]) * (i + 1) for i in range(300))


def test_big_input_across_records_and_chunks(certs: TlsFiles) -> None:
    stream, _raw, app, peer = connected(certs)
    payload = bytes(range(256)) * 8192  # 2 MiB: 128 records, fed in uneven pieces
    records = peer.records(payload)
    step = 70001
    for i in range(0, len(records), step):
        stream.data_received(records[i : i + step])
    assert bytes(app.data) == payload


def test_writes_become_records_in_order(certs: TlsFiles) -> None:
    stream, raw, _app, peer = connected(certs)
    stream.write(b"first")
    stream.write(bytearray(b"second"))
    stream.write(memoryview(b"third"))
    big = b"z" * 1_000_000
    stream.write(big)
    assert peer.plaintext(raw.take()) == b"firstsecondthird" + big


def test_direct_send_and_queue_order_on_a_real_socket(certs: TlsFiles) -> None:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.settimeout(5)
    stream, raw, _app, peer = connected(certs, sock=ours, far_end=theirs)
    stream.write(b"direct")
    assert raw.take() == b""  # the kernel took it: nothing went through the transport's queue
    assert peer.plaintext(theirs.recv(65536)) == b"direct"
    # Fill the socket so the kernel stops taking: the rest goes to the transport queue, and while that queue is
    # not empty later records follow it there instead of overtaking it.
    big = b"q" * 4_000_000
    stream.write(big)
    raw.queued = len(raw.written)
    assert raw.queued > 0
    stream.write(b"after")
    tail = raw.take()
    received = bytearray()
    theirs.settimeout(0.5)
    try:
        while True:
            chunk = theirs.recv(1 << 20)
            if not chunk:
                break
            received += chunk
    except TimeoutError:
        pass
    assert peer.plaintext(bytes(received) + tail) == big + b"after"
    ours.close()
    theirs.close()


def test_close_notify_is_eof_and_close_sends_ours(certs: TlsFiles) -> None:
    stream, raw, app, peer = connected(certs)
    try:
        peer.tls.unwrap()
    except ssl.SSLWantReadError:
        pass
    stream.data_received(peer.outgoing.read())
    assert app.eof == 1 and not app.data
    stream.close()
    assert raw.closed
    peer.incoming.write(raw.take())
    with pytest.raises((ssl.SSLZeroReturnError, ssl.SSLError)):
        data = peer.tls.read(10)
        if data == b"":  # some versions report close_notify as an empty read
            raise ssl.SSLZeroReturnError()
    stream.write(b"after close")  # dropped
    assert raw.take() == b""


def test_garbage_closes_and_delivers_nothing(certs: TlsFiles) -> None:
    stream, raw, app, peer = connected(certs)
    stream.data_received(b"\x17\x03\x03\x00\x20" + b"\x5a" * 32)
    assert raw.closed and not app.data
    stream.data_received(peer.records(b"late"))  # after the failure: ignored
    assert not app.data


def test_connection_lost_reaches_the_app(certs: TlsFiles) -> None:
    stream, raw, app, _peer = connected(certs)
    stream.connection_lost(None)
    assert app.lost == [None]
    stream.write(b"x")
    assert raw.take() == b""


def test_failed_handshake_fails_the_waiter(certs: TlsFiles) -> None:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    ssl_object = server_context(certs).wrap_bio(incoming, outgoing, server_side=True)
    raw, app = RecordingRaw(), App()
    stream = tlsstream.TlsTransport(raw, app, ssl_object, incoming, outgoing)  # type: ignore[arg-type]

    async def run() -> BaseException | None:
        waiter = stream.start_handshake(b"\x16\x03\x01\x00\x05hello" + b"\x00" * 10)
        try:
            await waiter
        except BaseException as exc:
            return exc
        return None

    assert isinstance(asyncio.run(run()), ssl.SSLError)
    assert raw.closed
    assert raw.take().startswith(b"\x15")  # a TLS alert record tells the client why


class Echo(asyncio.Protocol):
    transport: Any = None

    def data_received(self, data: bytes) -> None:
        self.transport.write(data.upper())


@pytest.mark.parametrize("loop_tls", [False, True])
def test_upgrade_end_to_end(certs: TlsFiles, loop_tls: bool) -> None:
    async def run() -> tuple[bytes, str]:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        echo = Echo()
        raw, _ = await loop.connect_accepted_socket(lambda: echo, a)
        upgrading = asyncio.ensure_future(tls.upgrade(raw, echo, server_context(certs), loop_tls=loop_tls))
        reader, writer = await asyncio.open_connection(
            sock=b, ssl=ssl.create_default_context(cafile=certs.ca_cert), server_hostname="localhost"
        )
        echo.transport = await upgrading
        writer.write(b"hello " * 10000)
        got = await reader.readexactly(60000)
        kind = type(echo.transport).__name__
        writer.close()
        echo.transport.close()
        return got, kind

    got, kind = asyncio.run(run())
    assert got == b"HELLO " * 10000
    assert (kind == "TlsTransport") == (not loop_tls)
