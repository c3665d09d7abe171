"""A minimal PostgreSQL frontend: log in (trust, cleartext, md5, SCRAM-SHA-256) and wait for ReadyForQuery.

Used by the harness to wait until a pooler accepts logins and to hold many idle client connections open
while the pooler's memory is measured. Not a driver: it never sends a query.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import struct
import time
from collections.abc import Callable

PROTOCOL_3_0 = 196608


class LoginError(Exception):
    pass


def _msg(kind: bytes, payload: bytes) -> bytes:
    return kind + struct.pack("!I", len(payload) + 4) + payload


def _startup(user: str, database: str) -> bytes:
    params = b""
    for k, v in (("user", user), ("database", database), ("application_name", "pg_doorman_bench")):
        params += k.encode() + b"\0" + v.encode() + b"\0"
    body = struct.pack("!I", PROTOCOL_3_0) + params + b"\0"
    return struct.pack("!I", len(body) + 4) + body


def _error_text(payload: bytes) -> str:
    fields = {}
    for part in payload.split(b"\0"):
        if part:
            fields[part[:1]] = part[1:].decode("utf-8", "replace")
    return f"{fields.get(b'S', 'ERROR')} {fields.get(b'C', '')}: {fields.get(b'M', '')}"


class _Scram:
    def __init__(self, password: str) -> None:
        self.password = password
        self.nonce = base64.b64encode(os.urandom(18)).decode()
        self.first_bare = f"n=,r={self.nonce}"

    def first(self) -> bytes:
        data = ("n,," + self.first_bare).encode()
        return b"SCRAM-SHA-256\0" + struct.pack("!i", len(data)) + data

    def final(self, server_first: bytes) -> bytes:
        text = server_first.decode()
        attrs = dict(kv.split("=", 1) for kv in text.split(","))
        if not attrs["r"].startswith(self.nonce):
            raise LoginError("SCRAM: server nonce does not extend the client nonce")
        salted = hashlib.pbkdf2_hmac("sha256", self.password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"]))
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c=biws,r={attrs['r']}"
        auth_message = f"{self.first_bare},{text},{without_proof}".encode()
        signature = hmac.digest(stored_key, auth_message, "sha256")
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()


async def login(
    host: str, port: int, user: str, database: str, password: str | None, timeout: float = 10.0
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a connection and complete the startup phase; returns the open stream pair."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        await asyncio.wait_for(_handshake(reader, writer, user, database, password), timeout)
    except BaseException:
        writer.close()
        raise
    return reader, writer


async def _handshake(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    user: str,
    database: str,
    password: str | None,
) -> None:
    writer.write(_startup(user, database))
    scram: _Scram | None = None
    while True:
        header = await reader.readexactly(5)
        kind = header[:1]
        length = struct.unpack("!I", header[1:])[0]
        payload = await reader.readexactly(length - 4)
        if kind == b"Z":
            return
        if kind == b"E":
            raise LoginError(_error_text(payload))
        if kind != b"R":
            continue  # ParameterStatus, BackendKeyData, NoticeResponse
        code = struct.unpack_from("!I", payload)[0]
        if code == 0:
            continue
        if password is None:
            raise LoginError(f"server asks for a password (auth request {code}) and none was given")
        if code == 3:
            writer.write(_msg(b"p", password.encode() + b"\0"))
        elif code == 5:
            inner = hashlib.md5((password + user).encode()).hexdigest()
            outer = hashlib.md5(inner.encode() + payload[4:8]).hexdigest()
            writer.write(_msg(b"p", b"md5" + outer.encode() + b"\0"))
        elif code == 10:
            if b"SCRAM-SHA-256\0" not in payload[4:]:
                raise LoginError(f"no supported SASL mechanism in {payload[4:]!r}")
            scram = _Scram(password)
            writer.write(_msg(b"p", scram.first()))
        elif code == 11 and scram is not None:
            writer.write(_msg(b"p", scram.final(payload[4:])))
        elif code == 12:
            continue  # SASLFinal; the server's signature is not checked here
        else:
            raise LoginError(f"unsupported authentication request {code}")


def close(writer: asyncio.StreamWriter) -> None:
    try:
        writer.write(b"X\0\0\0\4")  # Terminate
    except Exception:
        pass
    writer.close()


async def _probe(host: str, port: int, user: str, database: str, password: str | None) -> None:
    _, writer = await login(host, port, user, database, password, timeout=5.0)
    close(writer)


def wait_ready(
    host: str,
    port: int,
    user: str,
    database: str,
    password: str | None,
    timeout: float,
    still_running: Callable[[], bool] | None = None,
) -> None:
    """Retry a full login until it succeeds; raise the last error after ``timeout`` seconds.

    ``still_running`` is an optional callable returning False when the server process died (fail fast).
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        if still_running is not None and not still_running():
            raise LoginError(f"process exited before accepting logins (last error: {last})")
        try:
            asyncio.run(_probe(host, port, user, database, password))
            return
        except (TimeoutError, OSError, LoginError, asyncio.IncompleteReadError) as exc:
            last = exc
            time.sleep(0.2)
    raise LoginError(f"no successful login to {host}:{port} within {timeout:.0f}s (last error: {last!r})")


async def hold_idle(
    host: str,
    port: int,
    user: str,
    database: str,
    password: str | None,
    count: int,
    concurrency: int = 64,
) -> tuple[list[asyncio.StreamWriter], list[str]]:
    """Open ``count`` logged-in connections (``concurrency`` handshakes at a time).

    Returns the open writers and the error texts of the connections that failed.
    """
    sem = asyncio.Semaphore(concurrency)
    writers: list[asyncio.StreamWriter] = []
    errors: list[str] = []

    async def one() -> None:
        async with sem:
            try:
                _, w = await login(host, port, user, database, password, timeout=30.0)
                writers.append(w)
            except Exception as exc:
                errors.append(repr(exc))

    await asyncio.gather(*(one() for _ in range(count)))
    return writers, errors


async def close_all(writers: list[asyncio.StreamWriter]) -> None:
    for w in writers:
        close(w)
    for w in writers:
        try:
            await asyncio.wait_for(w.wait_closed(), 5)
        except Exception:
            pass
