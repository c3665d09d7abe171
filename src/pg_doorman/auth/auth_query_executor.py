"""The connections that run auth_query's lookup: a few PostgreSQL sessions of their own, never lent to clients.

`LookupExecutor.fetch(query, user)` runs the configured query with the user name as its only parameter, in the
extended protocol (Parse/Bind/Execute: the name travels as a Bind value and is never part of the SQL text), on
one of at most ``workers`` connections. Connections open on first need, log in with `ServerLogin` (the same
sans-I/O login the pools use, so md5, SCRAM and trust all work) and stay open; one that fails is closed and
replaced by the next lookup. Lookups beyond the open connections wait in a bounded FIFO: past `MAX_WAITING` they
fail at once, so a flood of logins cannot queue without limit.

What the query returned is judged by `password_from_result` (a pure function): the result is trusted only in the
expected shape. Every failure is a `LookupUnavailable` with a reason for the log; the client is then refused.
"""

from __future__ import annotations

import asyncio
import re
import struct
from collections import deque
from dataclasses import dataclass

from pg_doorman.auth.backend import ServerCredentials, ServerLogin
from pg_doorman.auth.scram import parse_scram_verifier
from pg_doorman.protocol import messages
from pg_doorman.protocol.errors import PoolerError

__all__ = [
    "MAX_WAITING",
    "LookupExecutor",
    "LookupTarget",
    "LookupUnavailable",
    "QueryResult",
    "password_from_result",
]

MAX_WAITING = 256
"""Lookups that may wait for a free connection; more fail at once (the login is refused, never admitted)."""

MAX_RESULT_MESSAGE = 1 << 20
"""Largest backend message a lookup accepts: a verifier row is a few hundred bytes."""

CONNECT_TIMEOUT = 5.0
QUERY_TIMEOUT = 5.0

# Types whose text form is the value itself: text, varchar, name (pg_shadow.usename), unknown (a literal).
TEXT_TYPES = frozenset({25, 1043, 19, 705})
_MD5_VERIFIER = re.compile(r"md5[0-9a-f]{32}")


class LookupUnavailable(Exception):
    """The lookup could not give an answer to trust; the message says why (for the log only)."""


@dataclass(frozen=True, slots=True)
class LookupTarget:
    """Where and as whom the lookup connections log in."""

    host: str  # a directory for a Unix socket
    port: int
    database: str
    user: str
    password: str  # plaintext; "" when the server trusts the role


@dataclass(frozen=True, slots=True)
class QueryResult:
    columns: tuple[tuple[str, int], ...]  # (name, type oid)
    rows: tuple[tuple[bytes | None, ...], ...]


def password_from_result(result: QueryResult) -> str | None:
    """The verifier in a lookup result, or None when the user has none PostgreSQL would accept.

    Zero rows, NULL and "" mean the role cannot log in with a password (PostgreSQL refuses a role without one,
    so do we). The password column is ``passwd``, else ``password``, else the only column; it must be of a text
    type. A value that is neither an MD5 nor a SCRAM-SHA-256 verifier is refused too: it is not what PostgreSQL
    stores, so it cannot be what the lookup meant. More than one row, or no usable column, is a mistake in the
    query: `LookupUnavailable` (refused, and logged), never a guess.
    """
    if not result.rows:
        return None
    if len(result.rows) > 1:
        raise LookupUnavailable(f"the query returned {len(result.rows)} rows for one user name (expected 0 or 1)")
    names = [name for name, _ in result.columns]
    if "passwd" in names:
        index = names.index("passwd")
    elif "password" in names:
        index = names.index("password")
    elif len(names) == 1:
        index = 0
    else:
        raise LookupUnavailable(f"the query returned no 'passwd' or 'password' column (columns: {', '.join(names)})")
    name, type_oid = result.columns[index]
    if type_oid not in TEXT_TYPES:
        raise LookupUnavailable(f"column '{name}' has type oid {type_oid}, expected text")
    raw = result.rows[0][index] if index < len(result.rows[0]) else None
    if not raw:
        return None
    try:
        value = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if _MD5_VERIFIER.fullmatch(value):
        return value
    if value.startswith("SCRAM-SHA-256$"):
        try:
            parse_scram_verifier(value)
        except ValueError:
            return None
        return value
    return None


# ------------------------------------------------------------------------------------------- wire


def _parse_row_description(body: bytes) -> tuple[tuple[str, int], ...]:
    count = struct.unpack_from("!h", body)[0]
    pos = 2
    columns = []
    for _ in range(count):
        end = body.index(b"\x00", pos)
        name = body[pos:end].decode("utf-8", "replace")
        type_oid = struct.unpack_from("!I", body, end + 7)[0]  # after table oid (4) and column number (2)
        columns.append((name, type_oid))
        pos = end + 19
    return tuple(columns)


def _lookup_messages(query: str, user: str) -> bytes:
    """Parse (unnamed), Bind with the user name as the one text parameter, Describe, Execute, Sync."""
    value = user.encode("utf-8")
    return b"".join(
        (
            messages.message(b"P", b"\x00" + messages.cstr(query) + b"\x00\x00"),
            messages.message(b"B", b"\x00\x00" + struct.pack("!hhi", 0, 1, len(value)) + value + b"\x00\x00"),
            messages.message(b"D", b"P\x00"),
            messages.message(b"E", b"\x00" + struct.pack("!i", 0)),
            messages.SYNC,
        )
    )


class _QueryFailed(LookupUnavailable):
    """PostgreSQL answered the lookup with an error; the connection itself is fine."""


class _LookupConnection:
    __slots__ = ("_reader", "_writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, target: LookupTarget) -> _LookupConnection:
        if target.host.startswith("/"):
            reader, writer = await asyncio.open_unix_connection(f"{target.host}/.s.PGSQL.{target.port}")
        else:
            reader, writer = await asyncio.open_connection(target.host, target.port)
        connection = cls(reader, writer)
        try:
            creds = ServerCredentials(user=target.user, password=target.password or None)
            login = ServerLogin(creds, target.database, {"application_name": "pg_doorman auth_query"})
            writer.write(login.start())
            while not login.done:
                kind, body = await connection._read()
                reply = login.feed(kind, body)
                if reply:
                    writer.write(reply)
        except BaseException:
            connection.close()
            raise
        return connection

    async def _read(self) -> tuple[int, bytes]:
        header = await self._reader.readexactly(5)
        length = int.from_bytes(header[1:5], "big")
        if length < 4 or length - 4 > MAX_RESULT_MESSAGE:
            raise LookupUnavailable(f"server sent a message of {length} bytes")
        return header[0], await self._reader.readexactly(length - 4)

    async def query(self, sql: str, user: str) -> QueryResult:
        self._writer.write(_lookup_messages(sql, user))
        columns: tuple[tuple[str, int], ...] = ()
        rows: list[tuple[bytes | None, ...]] = []
        error: str | None = None
        while True:
            kind, body = await self._read()
            if kind == 0x44:  # 'D' DataRow
                if len(rows) < 2:  # a second row is already an error; keep no more
                    rows.append(tuple(messages.parse_data_row(body)))
                else:
                    rows.append(())
            elif kind == 0x54:  # 'T' RowDescription
                columns = _parse_row_description(body)
            elif kind == 0x45:  # 'E' ErrorResponse: the rest up to ReadyForQuery is skipped by the server
                fields = messages.parse_error_fields(body)
                error = f"{fields.get('C', '')} {fields.get('M', 'error')}".strip()
            elif kind == 0x5A:  # 'Z' ReadyForQuery
                if error is not None:
                    raise _QueryFailed(f"the query failed: {error}")
                return QueryResult(columns, tuple(rows))
            # ParseComplete, BindComplete, NoData, CommandComplete, notices, ParameterStatus: nothing to do

    def close(self) -> None:
        try:
            if not self._writer.is_closing():
                self._writer.write(messages.TERMINATE)
            self._writer.close()
        except (OSError, RuntimeError):
            pass


class LookupExecutor:
    """At most ``workers`` lookup connections, opened on demand, and a bounded queue of lookups waiting."""

    def __init__(
        self,
        target: LookupTarget,
        workers: int,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        query_timeout: float = QUERY_TIMEOUT,
        max_waiting: int = MAX_WAITING,
    ) -> None:
        self.target = target
        self.workers = workers
        self.connect_timeout = connect_timeout
        self.query_timeout = query_timeout
        self.max_waiting = max_waiting
        self._idle: list[_LookupConnection] = []
        self._open = 0  # open or opening
        self._waiters: deque[asyncio.Future[_LookupConnection | None]] = deque()
        self._closed = False

    @property
    def open_connections(self) -> int:
        return self._open

    async def fetch(self, query: str, user: str) -> QueryResult:
        """Run ``query`` with ``$1 = user``; raises LookupUnavailable when there is no trustworthy answer."""
        connection = await self._acquire()
        try:
            async with asyncio.timeout(self.query_timeout):
                result = await connection.query(query, user)
        except _QueryFailed:
            self._release(connection)
            raise
        except TimeoutError:
            self._discard(connection)
            raise LookupUnavailable(f"no answer within {self.query_timeout:g}s") from None
        except (OSError, EOFError, asyncio.IncompleteReadError, PoolerError, LookupUnavailable, ValueError) as exc:
            self._discard(connection)
            raise LookupUnavailable(f"lookup connection failed: {_describe(exc)}") from None
        except BaseException:
            self._discard(connection)
            raise
        self._release(connection)
        return result

    async def _acquire(self) -> _LookupConnection:
        while True:
            if self._closed:
                raise LookupUnavailable("auth_query was reconfigured")
            if self._idle:
                return self._idle.pop()
            if self._open < self.workers:
                self._open += 1
                try:
                    async with asyncio.timeout(self.connect_timeout):
                        return await _LookupConnection.open(self.target)
                except BaseException as exc:
                    self._open -= 1
                    self._wake(None)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    if isinstance(exc, TimeoutError):
                        raise LookupUnavailable(f"could not connect within {self.connect_timeout:g}s") from None
                    if isinstance(exc, OSError | EOFError | PoolerError | LookupUnavailable | ValueError):
                        raise LookupUnavailable(f"could not log in: {_describe(exc)}") from None
                    raise
            if len(self._waiters) >= self.max_waiting:
                raise LookupUnavailable(f"{len(self._waiters)} lookups are already waiting for a connection")
            waiter: asyncio.Future[_LookupConnection | None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                connection = await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    handed = waiter.result()
                    if handed is not None:
                        self._release(handed)
                else:
                    try:
                        self._waiters.remove(waiter)
                    except ValueError:
                        pass
                raise
            if connection is not None:
                return connection
            # None: a connection closed and its slot is free; go round and open one.

    def _wake(self, connection: _LookupConnection | None) -> bool:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return True
        return False

    def _release(self, connection: _LookupConnection) -> None:
        if self._closed:
            self._discard(connection)
        elif not self._wake(connection):
            self._idle.append(connection)

    def _discard(self, connection: _LookupConnection) -> None:
        connection.close()
        self._open -= 1
        self._wake(None)

    def close(self) -> None:
        """Close every connection; lookups still waiting fail (a reload replaced this auth_query)."""
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            self._discard(connection)
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(LookupUnavailable("auth_query was reconfigured"))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, PoolerError):
        return f"{exc.sqlstate} {exc.message}"
    return str(exc) or type(exc).__name__
