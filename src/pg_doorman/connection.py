"""What a client connection and a server connection share: the transport, and the write path.

Writes go straight to the socket (`directio.send_nowait`) while the transport has nothing queued: for the small
replies of a pooled transaction that is one `send()`, where the event loop's `transport.write` costs several
times more in Python-level work. Whatever the kernel does not take at once goes through `transport.write`,
which queues it, watches for writability and applies flow control (pause_writing); until that queue is empty
again every later write follows it, so bytes never overtake each other.

The socket's file descriptor is only used between `set_transport` and `forget_socket`: connection_lost and any
close or abort end it, and the event loop closes the descriptor only after connection_lost, so a write never
reaches a descriptor number the kernel has given to another connection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pg_doorman import directio

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable


class Connection:
    __slots__ = ("_fd", "_queued_in_transport", "_read_paused", "_send", "transport")

    transport: asyncio.Transport | None
    _send: Callable[[Any], object] | None  # the transport's bound write
    _fd: int  # the socket for direct writes, or -1
    _queued_in_transport: bool  # transport.write was used: it may still hold bytes
    _read_paused: bool  # pause_reading() is in effect (flow control from the other side)

    def set_transport(self, transport: asyncio.Transport | None) -> None:
        self.transport = transport
        self._send = transport.write if transport is not None else None
        self._queued_in_transport = False
        self._read_paused = False
        self._fd = -1
        if transport is not None and transport.get_extra_info("sslcontext") is None:
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
        """No more direct writes: the transport is closing or gone (its descriptor may be reused)."""
        self._fd = -1

    def close_transport(self) -> None:
        """Close once the transport's queued bytes are out; nothing is written directly from here on."""
        self._fd = -1
        if self.transport is not None:
            self.transport.close()

    def abort_transport(self) -> None:
        """Close at once, dropping what the transport still holds; nothing is written directly from here on."""
        self._fd = -1
        if self.transport is not None:
            self.transport.abort()

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
