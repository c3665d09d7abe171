"""TLS for a connection: a transport between the event loop's TCP transport and the protocol above it (a client
connection, or a server connection when pg_doorman talks TLS to PostgreSQL).

Why not the event loop's own TLS (``loop.start_tls``)? Its per-record cost is Python work, not cryptography: each
batch of received records goes through several Python frames and ends with an SSLWantReadError exception, and
each reply is queued, encrypted, read back out of a BIO and handed to the TCP transport. That made pgbench ``-S``
over TLS spend twice PgBouncer's user CPU per transaction. Here a batch of received records is one call that
returns the plaintext, and a reply is one call that encrypts it and `send()`s the records straight to the socket
while the kernel takes them (the same direct write `connection.py` does for plain connections), in C in the
compiled build (tlsio.pxd), through Python's ssl objects in pure Python (tlsio.py).

The handshake, rare, is Python's ssl module's (`ssl.SSLObject.do_handshake` on memory BIOs), and so are
certificates, verification, ALPN and ciphers: the records afterwards go through the same OpenSSL objects.

Ordering: whatever the kernel does not take goes to the TCP transport's queue (`transport.write`), and until that
queue is empty again every later record follows it there. Flow control is the TCP transport's, passed on to the
client's protocol (pause_writing / resume_writing). A client's close_notify is an EOF for the protocol; `close`
sends ours and closes once the queue is out; TLS has no half-close (`can_write_eof` is False).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

from pg_doorman import tlsio

log = logging.getLogger("pg_doorman.tls")

_HANDSHAKE_ERRORS = (ssl.SSLError, ssl.CertificateError, OSError, ValueError)


def native(ssl_object: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO) -> bool:
    """Whether a `TlsTransport` can carry this connection's records (always in pure Python; in the compiled build
    when OpenSSL's functions and the ssl objects' layout check out, see tlsio.pxd)."""
    import _ssl

    library = getattr(_ssl, "__file__", None)
    if library is None or not tlsio.load(library):
        return False
    return tlsio.bind(ssl_object._sslobj, incoming, outgoing)  # type: ignore[attr-defined]


class TlsTransport:
    """The transport the client's protocol (``app``) writes to, and the protocol of the TCP transport (``raw``)."""

    __slots__ = (
        "_closing",
        "_fd",
        "_handshake",
        "_incoming",
        "_outgoing",
        "_queued",
        "_sock",
        "app",
        "raw",
        "ssl_object",
    )

    app: Any
    raw: asyncio.Transport
    ssl_object: ssl.SSLObject
    _sock: Any  # the _ssl._SSLSocket behind ssl_object
    _incoming: ssl.MemoryBIO
    _outgoing: ssl.MemoryBIO
    _handshake: asyncio.Future[None] | None  # set until the handshake ends
    _fd: int  # the TCP socket for direct writes, or -1
    _queued: bool  # raw.write was used: its queue may still hold records
    _closing: bool

    def __init__(
        self,
        raw: asyncio.Transport,
        app: Any,
        ssl_object: ssl.SSLObject,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
    ) -> None:
        if not native(ssl_object, incoming, outgoing):
            raise ValueError("these ssl objects cannot carry records here: use the event loop's TLS")
        self.raw = raw
        self.app = app
        self.ssl_object = ssl_object
        self._sock = ssl_object._sslobj  # type: ignore[attr-defined]
        self._incoming = incoming
        self._outgoing = outgoing
        self._handshake = None
        self._queued = False
        self._closing = False
        sock = raw.get_extra_info("socket")
        self._fd = sock.fileno() if sock is not None else -1

    # ------------------------------------------------------------------ handshake

    def start_handshake(self, received: bytes) -> asyncio.Future[None]:
        """Become ``raw``'s protocol and run the handshake (the side ``ssl_object`` was made for); ``received``: its
        first bytes, read already. The future ends with the handshake (an exception when it fails: then the
        connection is closing)."""
        self._handshake = asyncio.get_running_loop().create_future()
        waiter = self._handshake
        self.raw.set_protocol(self)  # type: ignore[arg-type]
        self.raw.resume_reading()  # the client's protocol may have paused it while the login held its bytes
        self._handshake_step(received)  # a server side waits for the ClientHello; a client side sends it now
        return waiter

    def _handshake_step(self, data: bytes) -> None:
        waiter = self._handshake
        assert waiter is not None
        if data:
            self._incoming.write(data)
        try:
            self.ssl_object.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except _HANDSHAKE_ERRORS as exc:
            self._handshake = None
            self._flush()  # the alert that tells the client why
            self.close_raw()
            if not waiter.done():
                waiter.set_exception(exc)
            return
        self._handshake = None
        self._flush()  # our Finished (TLS 1.2) or session tickets (TLS 1.3)
        if not waiter.done():
            waiter.set_result(None)
        if self._incoming.pending:  # records the client sent right behind its Finished
            self._receive(b"")

    # ------------------------------------------------------------------ the TCP transport's protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Not called: the TCP transport is adopted open (`start_handshake`)."""

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        if self._handshake is not None:
            self._handshake_step(data)
            return
        self._receive(data)

    def _receive(self, data: bytes) -> None:
        try:
            plain = tlsio.decrypt(self._sock, self._incoming, data)
        except OSError as exc:
            log.info("TLS error from %s: %s", self.raw.get_extra_info("peername"), exc)
            self._flush()  # OpenSSL's alert, if it wrote one
            self.close_raw()
            return
        if tlsio.pending(self._outgoing):  # e.g. the answer to a TLS 1.3 KeyUpdate
            self._flush()
        if plain is None:
            self.app.eof_received()  # close_notify: the client ends its session
        elif plain:
            self.app.data_received(plain)

    def eof_received(self) -> bool | None:
        if self._handshake is not None:
            self._handshake_cut_off()
            return None
        if self._closing:
            return None
        return self.app.eof_received()  # type: ignore[no-any-return]

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._fd = -1  # the event loop closes the descriptor after this
        if self._handshake is not None:
            self._handshake_cut_off()
        self.app.connection_lost(exc)

    def _handshake_cut_off(self) -> None:
        """The peer (a client, or PostgreSQL) went away before the handshake ended: its waiter fails."""
        waiter = self._handshake
        self._handshake = None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("the peer closed the connection during the TLS handshake"))

    def pause_writing(self) -> None:
        self.app.pause_writing()

    def resume_writing(self) -> None:
        self.app.resume_writing()

    # ------------------------------------------------------------------ the client protocol's transport

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing:
            return
        fd = self._fd
        if self._queued:
            if self.raw.get_write_buffer_size():
                fd = -1  # earlier records still wait in the queue: these follow them
            else:
                self._queued = False
        try:
            rest = tlsio.send(self._sock, self._outgoing, data, fd)
        except OSError as exc:
            log.info("TLS error writing to %s: %s", self.raw.get_extra_info("peername"), exc)
            self.close_raw()
            return
        if rest:
            self._queued = True
            self.raw.write(rest)

    def writelines(self, chunks: Any) -> None:
        self.write(b"".join(chunks))

    def _flush(self) -> None:
        """Send what OpenSSL queued without a write of ours (handshake messages, alerts, close_notify)."""
        if not self._closing:
            self.write(b"")
            return
        rest = tlsio.send(self._sock, self._outgoing, b"", -1)
        if rest and not self.raw.is_closing():
            self.raw.write(rest)

    def close(self) -> None:
        """Send close_notify, then close once the queued records are out."""
        if self._closing:
            return
        if self._handshake is None:
            try:
                self._sock.shutdown()  # writes close_notify; "fails" waiting for the client's, which we do not need
            except (ssl.SSLError, OSError, ValueError):
                pass
            self._flush()
        self.close_raw()

    def close_raw(self) -> None:
        self._closing = True
        self._fd = -1
        self.raw.close()

    def abort(self) -> None:
        self._closing = True
        self._fd = -1
        self.raw.abort()

    def is_closing(self) -> bool:
        return self._closing or self.raw.is_closing()

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("TLS has no half-close")

    def pause_reading(self) -> None:
        self.raw.pause_reading()

    def resume_reading(self) -> None:
        self.raw.resume_reading()

    def is_reading(self) -> bool:
        return self.raw.is_reading()

    def get_write_buffer_size(self) -> int:
        return self.raw.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self.raw.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.raw.set_write_buffer_limits(high, low)

    def set_protocol(self, protocol: Any) -> None:
        self.app = protocol

    def get_protocol(self) -> Any:
        return self.app

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self.ssl_object
        if name == "sslcontext":
            return self.ssl_object.context
        if name == "peercert":
            return self.ssl_object.getpeercert()
        if name == "cipher":
            return self.ssl_object.cipher()
        if name == "compression":
            return self.ssl_object.compression()
        return self.raw.get_extra_info(name, default)
