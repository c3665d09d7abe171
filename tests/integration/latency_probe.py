"""Run ``SELECT 1`` back to back through a pooler and print each round trip, in its own process.

``python latency_probe.py PORT USER DATABASE PASSWORD SECONDS`` logs in (trust or md5), then for SECONDS sends
one simple Query after another on a blocking socket and prints one JSON list of ``[sent_at, seconds]`` pairs
(``sent_at`` is ``time.monotonic()``, the same clock in every process of the machine). A process of its own, so
that what the test process does meanwhile (reading a large SHOW) cannot delay the measured round trips.
"""

from __future__ import annotations

import hashlib
import json
import socket
import struct
import sys
import time

PROTOCOL_3_0 = 196608
QUERY = b"Q" + struct.pack("!i", 4 + len(b"SELECT 1\0")) + b"SELECT 1\0"


def _frame(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def _startup(user: str, database: str) -> bytes:
    params = f"user\0{user}\0database\0{database}\0application_name\0latency_probe\0\0".encode()
    body = struct.pack("!i", PROTOCOL_3_0) + params
    return struct.pack("!i", len(body) + 4) + body


class Reader:
    """Whole backend messages from a blocking socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def message(self) -> tuple[bytes, bytes]:
        while True:
            if len(self.buf) >= 5:
                length = struct.unpack_from("!i", self.buf, 1)[0]
                if len(self.buf) >= 1 + length:
                    kind, body = self.buf[:1], self.buf[5 : 1 + length]
                    self.buf = self.buf[1 + length :]
                    return kind, body
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the pooler closed the connection")
            self.buf += data

    def until_ready(self) -> None:
        while True:
            kind, body = self.message()
            if kind == b"E":
                raise RuntimeError(f"error from the pooler: {body!r}")
            if kind == b"Z":
                return


def login(port: int, user: str, database: str, password: str, rcvbuf: int = 0) -> tuple[socket.socket, Reader]:
    """A logged-in connection; ``rcvbuf`` (bytes, set before connecting) keeps the receive window small."""
    sock = socket.socket()
    sock.settimeout(30)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(_startup(user, database))
    reader = Reader(sock)
    while True:
        kind, body = reader.message()
        if kind == b"R" and struct.unpack_from("!i", body)[0] == 5:
            inner = hashlib.md5((password + user).encode()).hexdigest()
            digest = "md5" + hashlib.md5(inner.encode() + body[4:8]).hexdigest()
            sock.sendall(_frame(b"p", digest.encode() + b"\0"))
        elif kind == b"E":
            raise RuntimeError(f"login failed: {body!r}")
        elif kind == b"Z":
            return sock, reader


def main() -> None:
    port, user, database, password, seconds = sys.argv[1:6]
    sock, reader = login(int(port), user, database, password)
    samples: list[tuple[float, float]] = []
    stop = time.monotonic() + float(seconds)
    while True:
        sent_at = time.monotonic()
        if sent_at >= stop:
            break
        sock.sendall(QUERY)
        reader.until_ready()
        samples.append((sent_at, time.monotonic() - sent_at))
    sock.sendall(_frame(b"X", b""))
    sock.close()
    json.dump(samples, sys.stdout)


if __name__ == "__main__":
    main()
