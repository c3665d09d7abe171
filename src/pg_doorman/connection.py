"""What a client connection and a server connection share: the transport, the write path, and the way a
connection closes after an error.

Writes go straight to the socket (`directio.send_nowait`) while the transport has nothing queued: for the small
replies of a pooled transaction that is one `send()`, where the event loop's `transport.write` costs several
times more in Python-level work. Whatever the kernel does not take at once goes through `transport.write`,
which queues it, watches for writability and applies flow control (pause_writing); until that queue is empty
again every later write follows it, so bytes never overtake each other.

Direct writes are never used on a TLS transport (`set_transport`): its socket carries encrypted records only.

The socket's file descriptor is only used between `set_transport` and `forget_socket`: connection_lost and any
close or abort end it, and the event loop closes the descriptor only after connection_lost, so a write never
reaches a descriptor number the kernel has given to another connection.

Closing after an error (`close_after_error`) is not a plain close. A socket closed while the peer's bytes are
still unread makes the kernel answer with a reset (RST) instead of an orderly FIN; a client that is still sending
then fails its send, or loses the ErrorResponse we wrote just before, and reports "server closed the connection
unexpectedly" instead of our error. So the connection writes the error, shuts down its write side (a FIN right
after the error, sent once the transport's queue is out), and reads and throws away what the client sends until
the client closes too. That drain is bounded by DRAIN_MAX_BYTES and DRAIN_MAX_SECONDS. A client that sends
nothing at all is closed DRAIN_QUIET_SECONDS after the FIN: an idle client may not read its socket for a long
time, and waiting gains nothing, since once it has our FIN a later reset no longer hides the error from it.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from pg_doorman import directio

if TYPE_CHECKING:
    from collections.abc import Callable

DRAIN_MAX_BYTES = 1 << 20
"""How much a connection closing after an error reads and throws away before it gives up on an orderly close."""
DRAIN_MAX_SECONDS = 2.0
"""How long a connection closing after an error waits at most for the client to close its side."""
DRAIN_QUIET_SECONDS = 0.25
"""A connection closing after an error whose client has sent nothing since is closed after this long."""

_draining: set[Connection] = set()
_drain_waiters: list[asyncio.Future[None]] = []


async def wait_for_drains(timeout: float = DRAIN_MAX_SECONDS) -> None:
    """Wait until no connection is closing after an error (at most ``timeout``): process exit closes every socket
    at once, which would reset the connections still draining (see the module docstring)."""
    if not _draining:
        return
    # Each drain ends by its deadline (its transport is aborted then; connection_lost ends the drain): no wait
    # past the last one, even for a connection whose event loop is gone.
    timeout = min(timeout, max(conn._drain_deadline for conn in _draining) - time.monotonic())
    if timeout <= 0:
        return
    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    _drain_waiters.append(waiter)
    try:
        await asyncio.wait_for(waiter, timeout)
    except TimeoutError:
        pass
    finally:
        if waiter in _drain_waiters:
            _drain_waiters.remove(waiter)


def draining_count() -> int:
    """How many connections are closing after an error right now."""
    return len(_draining)


def forget_drains() -> int:
    """End every drain at once without closing anything; returns how many there were. For tests: a connection on a
    stand-in transport, or on an event loop that is gone, never gets its connection_lost, and would otherwise
    stay in this module's set for the rest of the process."""
    left = list(_draining)
    for conn in left:
        conn._end_drain()
    return len(left)


def _encrypted(transport: asyncio.Transport) -> bool:
    """A TLS transport still reports its TCP socket: writing to that directly would put plain text on the wire.
    (The same test as tls.is_tls, kept here so that this module imports nothing of TLS.)"""
    return transport.get_extra_info("sslcontext") is not None or transport.get_extra_info("ssl_object") is not None


class Connection:
    __slots__ = (
        "_drain_deadline",
        "_drain_idle_close_at",
        "_drain_left",
        "_drain_notice",
        "_drain_timer",
        "_fd",
        "_queued_in_transport",
        "_read_paused",
        "_send",
        "transport",
    )

    transport: asyncio.Transport | None
    _send: Callable[[Any], object] | None  # the transport's bound write; None once nothing may be written
    _fd: int  # the socket for direct writes, or -1
    _queued_in_transport: bool  # transport.write was used: it may still hold bytes
    _read_paused: bool  # pause_reading() is in effect (flow control from the other side)
    _drain_timer: asyncio.TimerHandle | None  # set while closing after an error (close_after_error)
    _drain_left: int  # bytes the drain still reads before it gives up
    _drain_deadline: float  # monotonic time when the drain gives up
    _drain_idle_close_at: float  # monotonic time to close a client that stays silent; 0.0 once it has sent
    _drain_notice: bytes | None  # close_after_error(wait_for_input=True): the error, until it is written

    def set_transport(self, transport: asyncio.Transport | None) -> None:
        self.transport = transport
        self._send = transport.write if transport is not None else None
        self._queued_in_transport = False
        self._read_paused = False
        self._fd = -1
        self._drain_timer = None
        self._drain_left = 0
        self._drain_deadline = 0.0
        self._drain_idle_close_at = 0.0
        self._drain_notice = None
        if transport is not None and not _encrypted(transport):
            sock = transport.get_extra_info("socket")
            if sock is not None:
                self._fd = sock.fileno()

    def pause_reading(self) -> None:
        if not self._read_paused and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._read_paused and self.transport is not None:
            self._read_paused = False
            self.transport.resume_reading()

    def forget_socket(self) -> None:
        """The transport is gone (connection_lost): no more direct writes (the descriptor may be reused), and a
        drain is over."""
        self._fd = -1
        if self._drain_timer is not None:
            self._end_drain()

    def close_transport(self) -> None:
        """Close once the transport's queued bytes are out; nothing is written directly from here on. A connection
        closing after an error is left to its drain, which closes it when the client is done."""
        self._fd = -1
        if self.transport is not None and self._drain_timer is None:
            self.transport.close()

    def abort_transport(self) -> None:
        """Close at once, dropping what the transport still holds; nothing is written directly from here on."""
        self._fd = -1
        if self.transport is not None:
            self.transport.abort()

    # ------------------------------------------------------------------ closing after an error

    def close_after_error(self, data: bytes, wait_for_input: bool = False) -> None:
        """Write ``data`` (a FATAL ErrorResponse; empty if the peer has its error already) as the last bytes of
        this connection and close it so that the peer gets to read them: shut down the write side once the
        transport's queue is out (FIN), read and drop the peer's input (`discard_input`) until its EOF, then close;
        within DRAIN_MAX_BYTES and DRAIN_MAX_SECONDS, or DRAIN_QUIET_SECONDS when the peer sends nothing. Nothing
        else is written from here on, and the caller stops processing the peer's messages (a client in
        CLIENT_CLOSED passes them to `discard_input`). Called again, or on a closing transport, it does nothing.

        ``wait_for_input``: the peer was just sent a ReadyForQuery, and libpq parses an ErrorResponse that reaches
        it in the same read as an idle-state notice (the application then sees "server closed the connection
        unexpectedly" on its next query, not the error). So ``data`` goes out when the peer's next message
        arrives, which it then reads as that message's answer, or after DRAIN_QUIET_SECONDS without one."""
        transport = self.transport
        if transport is None or self._drain_timer is not None or transport.is_closing():
            return
        self._fd = -1
        self._send = None  # transport.write raises after write_eof: any later write is dropped here instead
        now = time.monotonic()
        self._drain_left = DRAIN_MAX_BYTES
        self._drain_deadline = now + DRAIN_MAX_SECONDS
        self._drain_idle_close_at = now + DRAIN_QUIET_SECONDS
        self._drain_timer = asyncio.get_running_loop().call_later(DRAIN_QUIET_SECONDS, self._drain_tick)
        _draining.add(self)
        if self._read_paused:
            self._read_paused = False
            transport.resume_reading()
        if wait_for_input:
            self._drain_notice = data
        else:
            self._drain_notice = None
            self._write_last(data)

    def _write_last(self, data: bytes) -> None:
        """The error, then the FIN once the transport's queue (if any) is out: uvloop and asyncio both shut the
        write side down only after flushing."""
        transport = self.transport
        if transport is None:
            return
        try:
            if data:  # empty: the last message went out already (the server's own FATAL, client.server_lost)
                transport.write(data)
            if transport.can_write_eof():
                transport.write_eof()
        except (OSError, RuntimeError):
            self.abort_transport()  # the peer is gone already

    def discard_input(self, size: int) -> None:
        """``size`` bytes arrived after `close_after_error`: dropped (and a deferred error goes out now). A client
        that sends is given until its EOF (or the bounds); past DRAIN_MAX_BYTES the connection is aborted: the
        client keeps sending and has had its chance to read."""
        notice = self._drain_notice
        if notice is not None:
            self._drain_notice = None
            self._write_last(notice)
        self._drain_idle_close_at = 0.0
        self._drain_left -= size
        if self._drain_left < 0:
            self.abort_transport()

    def _drain_tick(self) -> None:
        """The drain's timer: write a deferred error, close a client that stayed silent (once our bytes and FIN
        are out), abort at the deadline; otherwise check again later."""
        transport = self.transport
        if self._drain_timer is None or transport is None:
            return
        now = time.monotonic()
        if now >= self._drain_deadline:
            self.abort_transport()
            return
        notice = self._drain_notice
        if notice is not None:  # no message came: the client is idle, not in the middle of reading a reply
            self._drain_notice = None
            self._write_last(notice)
            self._drain_idle_close_at = now + DRAIN_QUIET_SECONDS
        elif self._drain_idle_close_at and now >= self._drain_idle_close_at:
            if not transport.get_write_buffer_size():
                transport.close()  # nothing unread, nothing unsent: an orderly close
                return
            self._drain_idle_close_at = now + DRAIN_QUIET_SECONDS  # not reading: wait for the queue to go out
        wake = self._drain_idle_close_at or self._drain_deadline
        delay = min(wake, self._drain_deadline) - now
        self._drain_timer = asyncio.get_running_loop().call_later(delay, self._drain_tick)

    def _end_drain(self) -> None:
        timer = self._drain_timer
        if timer is not None:
            timer.cancel()
        self._drain_timer = None
        self._drain_notice = None
        _draining.discard(self)
        if not _draining:
            for waiter in _drain_waiters:
                if not waiter.done():
                    waiter.set_result(None)
            _drain_waiters.clear()

    # ------------------------------------------------------------------ writing

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._fd >= 0 and type(data) is bytes:
            data = self._write_direct(data)
            if not data:
                return
        send = self._send
        if send is not None:
            self._queued_in_transport = True
            send(data)

    def _write_direct(self, data: bytes) -> bytes:
        """Send what the socket takes now, unless the transport still holds earlier bytes; returns the rest."""
        if self._queued_in_transport:
            transport = self.transport
            if transport is None or transport.get_write_buffer_size():
                return data
            self._queued_in_transport = False
        sent = directio.send_nowait(self._fd, data)
        if sent == len(data):
            return b""
        if sent < 0:
            self._fd = -1  # a socket error: the transport meets it too and reports it
            return data
        return data[sent:] if sent else data
