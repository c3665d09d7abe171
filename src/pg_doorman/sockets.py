"""TCP options for client and server sockets (keepalives, user timeout, Nagle, linger), from ``general``."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class SocketOptions:
    keepalive_idle: int = 5
    keepalive_interval: int = 5
    keepalive_count: int = 5
    user_timeout: int = 60
    no_delay: bool = True
    linger: int | None = None


current = SocketOptions()
"""Set by the application from ``general`` at start and reload; read when a connection is made."""


def configure(sock: Any) -> None:
    """Apply ``current`` to a TCP socket (Unix sockets are left alone). Errors are ignored: best effort."""
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    opts = current
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1 if opts.no_delay else 0)
        if opts.keepalive_idle > 0:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, opts.keepalive_idle)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, opts.keepalive_interval))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, max(1, opts.keepalive_count))
        if opts.user_timeout > 0 and hasattr(socket, "TCP_USER_TIMEOUT"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, opts.user_timeout * 1000)
        if opts.linger is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, opts.linger))
    except OSError:
        pass
