"""Connections beyond ``max_connections``: told so, at the cost of a small buffer and one timer.

PostgreSQL lets such a client finish SSL negotiation and send its startup packet, then answers 53300 "sorry, too
many clients already"; a CancelRequest still works, since canceling is what an overloaded server needs most. This
protocol does the same without a login coroutine, a client object or a pool lookup: it reads the first packets
with the startup-packet cap, answers, and closes. A client that sends nothing is dropped after
``client_login_timeout``.
"""

from __future__ import annotations

import asyncio
import struct
from typing import TYPE_CHECKING, cast

from pg_doorman.protocol import messages
from pg_doorman.protocol.errors import TOO_MANY_CONNECTIONS
from pg_doorman.protocol.framing import MAX_STARTUP_PACKET

if TYPE_CHECKING:
    from pg_doorman.context import ClientContext

_TOO_MANY = messages.error_response(TOO_MANY_CONNECTIONS, "sorry, too many clients already")


class OverLimitClient(asyncio.Protocol):
    __slots__ = ("_buf", "_context", "_timer", "_transport")

    def __init__(self, context: ClientContext) -> None:
        self._context = context
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        if self._context.login_timeout > 0:
            self._timer = asyncio.get_running_loop().call_later(self._context.login_timeout, self._transport.abort)

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        buf = self._buf
        buf += data
        while len(buf) >= 8:
            length, code = struct.unpack_from("!ii", buf)
            if length == 8 and code in (messages.SSL_REQUEST_CODE, messages.GSSENC_REQUEST_CODE):
                del buf[:8]
                transport.write(b"N")  # no TLS or GSS here; the client goes on in plain text
                continue
            if length == 16 and code == messages.CANCEL_REQUEST_CODE:
                if len(buf) < 16:
                    return
                pid, secret = struct.unpack_from("!ii", buf, 8)
                self._context.cancel(pid, secret)
                transport.close()
                return
            # Anything else is (or is meant to be) a StartupMessage: it gets the answer, whatever it holds.
            if 8 <= length <= MAX_STARTUP_PACKET and len(buf) < length:
                return
            transport.write(_TOO_MANY)
            transport.close()
            return

    def eof_received(self) -> bool | None:
        return None  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._buf = bytearray()
        self._transport = None
