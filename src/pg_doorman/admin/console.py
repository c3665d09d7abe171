"""One admin console session, sans-I/O: messages in, replies out.

Simple Query only. A Query may carry several statements (``SHOW POOLS; SHOW STATS``): each gets its answer, then
one ReadyForQuery. A failing statement gets an
ErrorResponse with severity ERROR and ends the Query (as PostgreSQL does), the session goes on: unknown
commands are 58000, an unknown database 3D000, an unknown SET parameter 42601. Extended-protocol messages are
answered at their Sync with one 0A000 error (the console has no prepared statements). Anything else (COPY data,
function calls, garbage) ends the session.

A reply comes in chunks (`Console.replies`): a SHOW at 10,000 clients is built and written a few hundred rows
at a time, and the client connection lets the event loop run between chunks (and waits while the console
client's socket is full), so that no other client waits for a large SHOW. Rows are read as the chunks are
asked for; `show` says which connections a view shows when they come and go meanwhile. Small replies are one
chunk. `feed` joins the chunks, for callers that want the whole reply at once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING

from pg_doorman.admin import commands
from pg_doorman.admin.operations import SYNTAX_ERROR, AdminError
from pg_doorman.admin.show import show_chunks
from pg_doorman.admin.wire import Column, result_set
from pg_doorman.auth.hba import HbaRules
from pg_doorman.auth.policy import ClientOrigin, Decision, Method, decide
from pg_doorman.protocol import messages
from pg_doorman.protocol.errors import (
    FEATURE_NOT_SUPPORTED,
    INTERNAL_ERROR,
    INVALID_AUTHORIZATION,
    SYSTEM_ERROR,
    PoolerError,
    ProtocolViolation,
)

if TYPE_CHECKING:
    from pg_doorman.admin.operations import AdminContext

__all__ = ["MAX_CONSOLE_MESSAGE", "Console", "login_decision"]

log = logging.getLogger("pg_doorman.admin")

_QUERY = 0x51  # 'Q'
_SYNC = 0x53  # 'S'
_TERMINATE = 0x58  # 'X'
_EXTENDED = frozenset(b"PBDECH")  # Parse, Bind, Describe, Execute, Close, Flush: answered at their Sync
MAX_CONSOLE_MESSAGE = 1024 * 1024  # a console Query is a line of text; refuse megabytes before reading them

_STARTUP_REPLY = (
    messages.AUTH_OK
    + messages.parameter_status("server_version", "15.0 (pg_doorman)")
    + messages.parameter_status("client_encoding", "UTF8")
    + messages.parameter_status("DateStyle", "ISO, MDY")
    + messages.parameter_status("standard_conforming_strings", "on")
    + messages.parameter_status("integer_datetimes", "on")
    + messages.backend_key_data(0, 0)
    + messages.READY_IDLE
)
_EXTENDED_REFUSED = messages.error_response(
    FEATURE_NOT_SUPPORTED, "the admin console accepts simple queries only", severity="ERROR"
)


def login_decision(
    user: str,
    admin_username: str,
    admin_password: str,
    *,
    rules: HbaRules | None = None,
    origin: ClientOrigin | None = None,
    database: str = "pgdoorman",
) -> Decision:
    """How ``user`` is challenged on the admin database.

    Access rules apply as to any database (``all`` matches the admin database too, as in PostgreSQL and the
    original): ``reject`` and no matching rule refuse, ``trust`` admits the admin user without a password. Without
    rules, or under an md5 rule, it is md5 with a fresh salt for every name: only the admin name with its password
    can pass; any other name, and the admin name while ``admin_password`` is empty, run the same exchange and fail
    the same way, so the admin name cannot be found by probing. A trust rule admits only the admin name (the
    original admitted any name): another name is refused as PostgreSQL refuses a role that does not exist.
    """
    stored = admin_password if user == admin_username and admin_password else None
    if origin is None:
        origin = ClientOrigin(local=True)
    decision = decide(rules, origin, database, user, stored, default=Method.MD5)
    if decision.method is Method.TRUST and user != admin_username:
        return Decision(
            Method.REJECT,
            reason=f'role "{user}" does not exist',
            sqlstate=INVALID_AUTHORIZATION,
            rule=f'"{user}" is not the admin user ({decision.rule})',
        )
    if not decision.doomed:
        return decision
    if user == admin_username:
        return replace(decision, reason="general.admin_password is empty: the admin console admits nobody")
    return replace(decision, reason=f'"{user}" is not the admin user')


def _error(err: PoolerError) -> bytes:
    return messages.error_response(err.sqlstate, err.message, severity="ERROR", detail=err.detail)


def _unknown(text: str) -> AdminError:
    return AdminError(
        SYSTEM_ERROR,
        f"unsupported query against the admin database: {text[:200]}",
        detail="SHOW HELP lists the commands",
    )


class Console:
    """The admin session of one client, after its login. `closed` becomes true at Terminate."""

    __slots__ = ("_extended_failed", "closed", "ops")

    def __init__(self, ops: AdminContext | None = None) -> None:
        self.ops = ops
        self.closed = False
        self._extended_failed = False

    @staticmethod
    def startup_reply() -> bytes:
        """AuthenticationOk, a few ParameterStatus a driver needs, BackendKeyData (no cancel), ReadyForQuery."""
        return _STARTUP_REPLY

    def feed(self, kind: int, body: bytes) -> bytes:
        """One client message; returns the whole reply. Raises ProtocolViolation for a message the console
        refuses."""
        return b"".join(self.replies(kind, body))

    def replies(self, kind: int, body: bytes) -> Iterable[bytes]:
        """One client message; returns its reply as chunks to write one after the other, letting the event loop
        run between them (an empty chunk: nothing to write, but a point to let it run). Raises ProtocolViolation
        at once, before any chunk, for a message the console refuses."""
        if kind == _QUERY:
            return self.query_chunks(body.rstrip(b"\x00").decode("utf-8", errors="replace"))
        if kind == _SYNC:
            failed, self._extended_failed = self._extended_failed, False
            return ((_EXTENDED_REFUSED if failed else b"") + messages.READY_IDLE,)
        if kind == _TERMINATE:
            self.closed = True
            return ()
        if kind in _EXTENDED:
            self._extended_failed = True
            return ()
        raise ProtocolViolation(f"unexpected message {chr(kind)!r} on the admin console")

    def query(self, sql: str) -> bytes:
        """The whole answer to one Query: each statement's result, up to the first error, then ReadyForQuery."""
        return b"".join(self.query_chunks(sql))

    def query_chunks(self, sql: str) -> Iterator[bytes]:
        """The answer to one Query in chunks. A view's pieces are gathered up to its next yield point, so a small
        reply is one chunk, ReadyForQuery included; an error met after some rows were sent follows them, as
        PostgreSQL sends an error in the middle of a result."""
        if commands.is_tab_completion(sql):
            column, values = commands.completion_rows(sql)
            yield result_set([Column(column)], [(v,) for v in values], tag=f"SELECT {len(values)}") + (
                messages.READY_IDLE
            )
            return
        statements = commands.split_statements(sql)
        if not statements:
            yield messages.EMPTY_QUERY_RESPONSE + messages.READY_IDLE
            return
        pending: list[bytes] = []
        for text in statements:
            try:
                for piece in self.statement_chunks(text):
                    if piece:
                        pending.append(piece)
                    else:  # a yield point
                        yield b"".join(pending)
                        pending = []
            except PoolerError as err:
                pending.append(_error(err))
                break
            except Exception:
                log.exception("admin console: %r failed", text)
                pending.append(_error(AdminError(INTERNAL_ERROR, "internal error in the admin console")))
                break
        pending.append(messages.READY_IDLE)
        yield b"".join(pending)

    def run(self, text: str) -> bytes:
        """One statement's whole reply (without ReadyForQuery); PoolerError for a command that fails."""
        return b"".join(self.statement_chunks(text))

    def statement_chunks(self, text: str) -> Iterable[bytes]:
        """One statement's reply as pieces and yield points (`wire.YIELD_POINT`); PoolerError for a command that
        fails (raised at once, or for a SHOW while its rows are built)."""
        ops = self.ops
        statement = commands.parse(text)
        verb, args = statement.verb, statement.args
        if ops is None:
            raise AdminError(FEATURE_NOT_SUPPORTED, "the admin console is not available in this process")
        if verb == "SHOW":
            if len(args) != 1:
                raise _unknown(text)
            pieces = show_chunks(ops, args[0])
            if pieces is None:
                raise _unknown(text)
            return pieces
        if verb == "SET":
            return (self._set(text),)
        database = args[0] if args else None
        if len(args) > 1:
            raise _unknown(text)
        if verb == "PAUSE":
            ops.pause(database)
            return (messages.command_complete("PAUSE"),)
        if verb == "RESUME":
            ops.resume(database)
            return (messages.command_complete("RESUME"),)
        if verb == "RECONNECT":
            ops.reconnect(database)
            return (messages.command_complete("RECONNECT"),)
        if verb == "KILL":
            ops.kill(database)
            return (messages.command_complete("KILL"),)
        if args:
            raise _unknown(text)
        if verb == "RELOAD":
            ops.reload()
            return (messages.command_complete("RELOAD"),)
        if verb == "SHUTDOWN":
            ops.shutdown()
            return (result_set([Column("success")], [("t",)], tag="SHUTDOWN"),)
        raise _unknown(text)

    def _set(self, text: str) -> bytes:
        assert self.ops is not None
        command = commands.parse_set(text)
        if command.name != "log_level":
            raise AdminError(SYNTAX_ERROR, f'unknown parameter "{command.name}"', detail="SET log_level = '...'")
        if command.value is None:
            raise AdminError(SYNTAX_ERROR, "SET log_level needs a value", detail="SET log_level = 'info'")
        self.ops.set_log_level(command.value)
        return messages.command_complete("SET")
