"""Statement rewriting in transaction mode: a client's Parse/Bind/Describe/Close and its SQL-level
PREPARE/EXECUTE/DEALLOCATE, turned into what the server it holds now must receive.

Contract: the client's frame walk hands a `StatementRewriter` one whole message at a time, with the server
connection the client holds and an output list: every Parse, Bind, and Describe/Close of a statement (`rewrite`),
every simple Query that may be PREPARE/EXECUTE/DEALLOCATE (`query`), and an Execute or Sync that follows a Bind of
SQL PREPARE/DEALLOCATE (`next_execute`, `unexecuted`). For each, the rewriter appends to the output, in order, the
hidden requests that put the server in the state the message needs (a Parse of a pool statement the server lacks,
a Close of one it must parse afresh, the client's own SQL statement re-created, a leftover one dropped), then the
message itself with the client's statement names mapped to pool-wide ones, or nothing when the pooler answers it
itself. For every request sent or answered it queues one `Expect` on the server's ledger, in wire order, with what
to undo if PostgreSQL fails or skips it. It never touches a socket and never reads a reply (server.py matches those
against the ledger), so its tests feed it bytes and read back bytes and expects.

It owns the client's side only: the client's statement names (`ClientStatements`), its SQL-level prepared
statements (name → PREPARE text), and the parse-relevant settings (prepared.PARSE_SETTINGS) its statements are
keyed by, so that a server statement is shared only by clients that would parse its text alike. What a server has
prepared is prepared.ServerStatements; the pool's statements are prepared.StatementRegistry.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from pg_doorman import codes
from pg_doorman.prepared import (
    SERVER_NAME_PATTERN,
    ClientStatements,
    Expect,
    ServerStatements,
    Statement,
    name_after_first_cstring,
    parse_parse,
    parse_sql_statement_command,
    quote_name,
    rebuild_with_name,
)
from pg_doorman.protocol import messages

if TYPE_CHECKING:
    from pg_doorman.server import ServerConnection

Token = tuple[tuple[str, str], ...]

_EXPECT_BIND = Expect(codes.BIND)
_EXPECT_DESCRIBE = Expect(codes.DESCRIBE)
_EXPECT_CLOSE = Expect(codes.CLOSE)
_EXPECT_QUERY = Expect(codes.QUERY)
_HIDDEN_PARSE = Expect(codes.PARSE, hide=True)
_HIDDEN_BIND = Expect(codes.BIND, hide=True)
_HIDDEN_CLOSE = Expect(codes.CLOSE, hide=True)

# A SQL command the pooler runs on the client's behalf inside an extended-protocol batch (where a hidden simple
# Query cannot go) is a Parse of the unnamed statement (which the pooler never uses otherwise: every client
# statement has a pool-wide name) and a Bind/Execute of a portal of its own, closed right after (the client's
# unnamed portal may still be in use).
_SQL_PORTAL = b"DOORMAN_sql"
_SQL_BIND = messages.message(b"B", _SQL_PORTAL + b"\x00" + b"\x00" + b"\x00\x00\x00\x00\x00\x00")
_SQL_EXECUTE = messages.message(b"E", _SQL_PORTAL + b"\x00\x00\x00\x00\x00")
_SQL_CLOSE = messages.message(b"C", b"P" + _SQL_PORTAL + b"\x00")

_owners = itertools.count(1)

# PostgreSQL keys prepared statements by their first NAMEDATALEN - 1 bytes: longer names that share them are one
# statement (the client's map keys them the same way).
NAME_LIMIT = 63


def ensure_prepared(stmt: Statement, server: ServerConnection, out: list[bytes]) -> None:
    """Put a hidden Parse in front when ``server`` lacks the statement."""
    if stmt.name not in server.statements and server.lacks(stmt.name, out):
        out.append(stmt.parse_message)
        server.add_statement(stmt.name)
        server.ledger.owe(Expect(codes.PARSE, hide=True, parsed=stmt.name))


def _close_statement(name: bytes) -> bytes:
    return messages.message(b"C", b"S" + name + b"\x00")


def _restore(table: dict[bytes, bytes], name: bytes, before: bytes | None, after: bytes | None) -> None:
    """``table[name]`` back from ``after`` to ``before`` (None: absent), unless something changed it since."""
    if table.get(name) != after:
        return
    if before is None:
        table.pop(name, None)
    else:
        table[name] = before


class _Undo:
    """Restores a client's statement name when PostgreSQL fails or skips the Parse/Close that changed it."""

    __slots__ = ("name", "previous", "statements")

    def __init__(self, statements: ClientStatements, name: bytes, previous: Statement | None) -> None:
        self.statements = statements
        self.name = name
        self.previous = previous

    def __call__(self) -> None:
        statements, name, previous = self.statements, self.name, self.previous
        if not name:
            statements.unnamed = previous
        elif previous is None:
            statements.named.pop(name, None)
        else:
            statements.named[name] = previous


class _SqlUndo:
    """A request that changed SQL-level prepared statement ``name`` from ``before`` to ``after`` (None: absent)
    failed or was skipped: the server's map, and the client's when given, go back (server.py undoes a batch's
    requests last first). A PREPARE counted as pending (``pending``) will send no CommandComplete. Runs once at
    most: it may be queued on a Bind and on its Execute."""

    __slots__ = ("after", "before", "done", "mine", "name", "pending", "server")

    def __init__(
        self,
        server: ServerStatements,
        name: bytes,
        before: bytes | None,
        after: bytes | None,
        mine: dict[bytes, bytes] | None = None,
        pending: bool = False,
    ) -> None:
        self.server = server
        self.name = name
        self.before = before
        self.after = after
        self.mine = mine
        self.pending = pending
        self.done = False

    def __call__(self) -> None:
        if self.done:
            return
        self.done = True
        _restore(self.server.sql, self.name, self.before, self.after)
        if self.mine is not None:
            _restore(self.mine, self.name, self.before, self.after)
        if self.pending and self.server.sql_pending > 0:
            self.server.sql_pending -= 1


class StatementRewriter:
    """One client's statements in transaction mode (see the module docstring)."""

    __slots__ = (
        "_settings",
        "_token",
        "_unnamed_cache",
        "_unnamed_parse_complete",
        "next_execute",
        "owner",
        "sql_prepared",
        "statements",
    )

    def __init__(self) -> None:
        self.statements = ClientStatements()
        self.sql_prepared: dict[bytes, bytes] = {}  # the client's SQL-level statements: name → PREPARE text
        # Unnamed Parse messages seen lately (raw bytes → statement), so a repeated one costs one dict lookup. Keyed
        # by bytes only: emptied when the client's parse-relevant settings change.
        self._unnamed_cache: dict[bytes, Statement] = {}
        # A failed unnamed Parse leaves no unnamed statement: PostgreSQL drops the old one before parsing.
        self._unnamed_parse_complete = Expect(
            codes.SYNTHETIC, data=messages.PARSE_COMPLETE, undo=_Undo(self.statements, b"", None)
        )
        self._token: Token | None = None  # the client's param_token the settings below were derived from
        self._settings = b""  # the registry's interned parse-relevant settings of that token
        # What the next Execute owes, when a Bind of SQL PREPARE/DEALLOCATE announced it (its undo).
        self.next_execute: Expect | None = None
        # Marks the SQL-level statements this client leaves on a server (prepared.ServerStatements.sql_owner).
        self.owner = next(_owners)

    # ------------------------------------------------------------ protocol level

    def rewrite(self, kind: int, raw: bytes, server: ServerConnection, out: list[bytes], token: Token) -> None:
        """Parse/Bind/Describe/Close ``raw`` (one whole message) with the client's names → ``out``, and what the
        server owes for it on its ledger. ``token``: the client's param_token. Raises ValueError or IndexError
        for a name without its NUL.

        Answers the pooler gives itself (ParseComplete, CloseComplete) are queued, never written at once: they go
        out with the server's next reply (there is always one after a Sync), where PostgreSQL would put them.
        """
        statements = self.statements
        ledger = server.ledger
        if kind == 80:  # 'P' Parse
            if token is not self._token:
                self._use_settings(token, server)
            if raw[5] == 0:  # unnamed: the common case of drivers without a statement cache
                stmt = self._unnamed_cache.get(raw)
                if stmt is None or stmt.stale:
                    stmt = self._unnamed_statement(raw, server)
                if stmt.sql_command is not None:
                    stmt = self._sql_statement_parsed(stmt, server, out)
                statements.unnamed = stmt
                synthetic = self._unnamed_parse_complete
                self._parse(stmt, server, out, synthetic, synthetic.undo, raw)
                return
            parsed = parse_parse(raw[5:])
            name = parsed.name
            if len(name) > NAME_LIMIT:
                name = name[:NAME_LIMIT]
            if name in statements.named:
                self._duplicate_statement(name, parsed.name, parsed.query, parsed.types, server, out)
                return
            stmt = server.pool.registry.get(parsed.query, parsed.types, self._settings)
            if stmt.sql_command is not None:
                stmt = self._sql_statement_parsed(stmt, server, out)
            statements.named[name] = stmt
            self._parse(stmt, server, out, None, _Undo(statements, name, None), None)
            return
        body = raw[5:]
        if kind == 66:  # 'B' Bind
            start, end = name_after_first_cstring(body)
            name = body[start:end]
            if end - start > NAME_LIMIT:
                name = name[:NAME_LIMIT]
            bound = statements.lookup(name)
            if bound is None:
                if name in self.sql_prepared:  # the client's SQL-level statement, by its own name
                    self._sql_ensure(name, server, out, True)
                out.append(raw)  # else PostgreSQL itself reports the unknown statement
                ledger.owe(_EXPECT_BIND)
                return
            if bound.stale:
                bound = self._fresh_statement(name, bound, server)
            if bound.sql_command is None:
                expect = bound.bind_expect
            else:
                bound, expect = self._sql_statement_bound(bound, server, out)
            ensure_prepared(bound, server, out)
            out.append(rebuild_with_name(b"B", body, start, end, bound.name))
            ledger.owe(expect)
            if bound.hints:  # its text may change the session where no command tag tells (set_config, locks)
                server.note_session_hints(bound.hints)
        elif kind == 68:  # 'D' Describe of a statement (the frame walk passes portals on)
            if body[-1:] != b"\x00":
                raise ValueError("Describe without a terminated name")
            name = body[1:-1] if len(body) <= NAME_LIMIT + 2 else body[1 : NAME_LIMIT + 1]
            described = statements.lookup(name) if body[:1] == b"S" else None
            if described is None:
                if name in self.sql_prepared:
                    self._sql_ensure(name, server, out, True)
                out.append(raw)
                ledger.owe(_EXPECT_DESCRIBE)
                return
            if described.stale:
                described = self._fresh_statement(name, described, server)
            if described.sql_command is not None:
                described = self._sql_statement_parsed(described, server, out)
            ensure_prepared(described, server, out)
            out.append(messages.message(b"D", b"S" + described.name + b"\x00"))
            ledger.owe(described.describe_expect)
        else:  # 'C' Close of a statement
            if body[-1:] != b"\x00":
                raise ValueError("Close without a terminated name")
            if body[:1] == b"S":
                name = body[1:-1] if len(body) <= NAME_LIMIT + 2 else body[1 : NAME_LIMIT + 1]
                if name in self.sql_prepared and name not in statements.named:
                    self._sql_close(name, server, out)
                    return
                closed = statements.named.pop(name, None) if name else statements.unnamed
                if not name:
                    statements.unnamed = None
                # The server statement stays: other clients share it. Only the client's name goes away.
                reopen = _Undo(statements, name, closed) if closed is not None else None
                ledger.owe(Expect(codes.SYNTHETIC, data=messages.CLOSE_COMPLETE, undo=reopen))
            else:
                out.append(raw)
                ledger.owe(_EXPECT_CLOSE)

    def _use_settings(self, token: Token, server: ServerConnection) -> None:
        """The client's parameters changed (or this is its first Parse): key its statements by the new ones."""
        self._token = token
        settings = server.pool.registry.settings_key(token)
        if settings is not self._settings:
            self._settings = settings
            self._unnamed_cache.clear()  # its statements were keyed by the settings before

    def _unnamed_statement(self, raw: bytes, server: ServerConnection) -> Statement:
        parsed = parse_parse(raw[5:])
        pool = server.pool
        stmt: Statement = pool.registry.get(parsed.query, parsed.types, self._settings)
        cache = self._unnamed_cache
        cache[raw] = stmt
        if len(cache) > pool.settings.client_anonymous_prepared_cache_size:
            del cache[next(iter(cache))]
        return stmt

    def _parse(
        self,
        stmt: Statement,
        server: ServerConnection,
        out: list[bytes],
        synthetic: Expect | None,
        undo: Callable[[], None] | None,
        probe: bytes | None,
    ) -> None:
        """The client's Parse of ``stmt``: sent when the server lacks it, else answered by the pooler, unless
        PostgreSQL's answer may differ (``probe``: the Parse with the unnamed statement, or None to build it)."""
        ledger = server.ledger
        if stmt.name not in server.statements and server.lacks(stmt.name, out):
            out.append(stmt.parse_message)
            server.add_statement(stmt.name)
            ledger.owe(Expect(codes.PARSE, parsed=stmt.name, undo=undo))
        elif ledger.may_be_failed():
            # In a failed transaction PostgreSQL rejects a Parse (25P02) whether the statement exists or not, and
            # with a Query or Sync in flight the pooler cannot know whether it will be in one: PostgreSQL decides,
            # on a Parse of the same text into the unnamed statement (ParseComplete when the transaction is fine).
            if probe is None:
                probe = messages.message(b"P", b"\x00" + stmt.query + b"\x00" + stmt.types)
            out.append(probe)
            ledger.owe(Expect(codes.PARSE, undo=undo))
        elif synthetic is not None:
            ledger.owe(synthetic)
        else:
            ledger.owe(Expect(codes.SYNTHETIC, data=messages.PARSE_COMPLETE, undo=undo))

    def _duplicate_statement(
        self, name: bytes, given: bytes, query: bytes, types: bytes, server: ServerConnection, out: list[bytes]
    ) -> None:
        """Parse of a name the client already uses: PostgreSQL must raise 42P05 itself, so that the error is its
        own (fields and all), that it skips to the next Sync and fails an open transaction block as on a direct
        connection. The client's statement is made to exist on this server, and a Parse of the new text under its
        server-side name is sent (PostgreSQL parses the text first, as it would); the error names the statement
        again as the client wrote it (``given``, `unmask`)."""
        existing = self.statements.named[name]
        if existing.sql_command is not None:
            existing = self._sql_statement_parsed(existing, server, out)
        ensure_prepared(existing, server, out)
        out.append(messages.message(b"P", existing.name + b"\x00" + query + b"\x00" + types))
        server.ledger.owe(Expect(codes.PARSE, client_name=given))

    def _fresh_statement(self, name: bytes, stale: Statement, server: ServerConnection) -> Statement:
        """The client's statement went stale (its result type changed): map its name to a fresh one."""
        fresh: Statement = server.pool.registry.get(stale.query, stale.types, stale.settings, stale.scope)
        if name:
            self.statements.named[name] = fresh
        else:
            self.statements.unnamed = fresh
        return fresh

    def unmask(self, message: bytes, entry: Expect | None) -> bytes:
        """An ErrorResponse/NoticeResponse naming pool-wide statements, with the client's own names instead
        (``entry``: the failed request, which may say which of the client's names is meant)."""
        statements = self.statements
        own = entry.client_name if entry is not None else None

        def client_name(match: re.Match[bytes]) -> bytes:
            server_name = match.group(1)
            if own is not None:
                meant = statements.named.get(own[:NAME_LIMIT])
                if meant is not None and meant.name == server_name:
                    return b'"' + own + b'"'
            if statements.unnamed is not None and statements.unnamed.name == server_name:
                return b'""'
            for name, stmt in statements.named.items():
                if stmt.name == server_name:
                    return b'"' + name + b'"'
            return match.group(0)

        body = SERVER_NAME_PATTERN.sub(client_name, message[5:])
        return messages.message(message[:1], body)

    def forget(self) -> None:
        """DEALLOCATE ALL / DISCARD ALL ran for this client: none of its statements exists any more."""
        self.sql_prepared.clear()
        self.statements.named.clear()
        self.statements.unnamed = None

    # ------------------------------------------------------------------ SQL level
    #
    # PostgreSQL keeps SQL-level prepared statements per session; in transaction mode the pooler keeps them per
    # client: each client's PREPARE text is remembered and re-created on the server its EXECUTE lands on, and a
    # server never holds another client's (server.py closes them when it is lent to someone else). They may come
    # as a simple Query or as the text of a Parse; a Parse's is recognised once per pool statement
    # (Statement.sql_command) and acted on when PostgreSQL will run it (at Bind) or look it up (EXECUTE, at Parse:
    # PostgreSQL describes its result then).

    def query(self, message: bytes, server: ServerConnection, out: list[bytes]) -> bool:
        """A simple Query that may be PREPARE/EXECUTE/DEALLOCATE of one statement. When it is, the client's own
        statement is put in place first (hidden Queries), ``message`` is appended to ``out`` and its entry queued;
        False for anything else (the caller forwards it as it is)."""
        command = parse_sql_statement_command(message[5:])
        if command is None:
            return False
        verb, name = command
        if verb == "deallocate" and not name:
            return False  # DEALLOCATE ALL: its CommandComplete clears the maps (server.py)
        undo: _SqlUndo | None = None
        if verb == "prepare":
            undo = self._sql_prepare(name, message[5:-1], server, out, False)
        elif verb == "execute":
            self._sql_ensure(name, server, out, False)
        else:
            undo = self._sql_deallocate(name, server, out, False)
        out.append(message)
        server.ledger.owe(_EXPECT_QUERY if undo is None else Expect(codes.QUERY, undo=undo))
        return True

    def _sql_statement_parsed(self, stmt: Statement, server: ServerConnection, out: list[bytes]) -> Statement:
        """A Parse (or a hidden one, for Describe) of a text PostgreSQL will describe by looking up a SQL-level
        statement (EXECUTE name): the client's own must be there, and the pool statement is the one for that
        definition of it. PREPARE and DEALLOCATE need nothing until they run."""
        command = stmt.sql_command
        assert command is not None
        verb, name = command
        if verb != "execute":
            return stmt
        self._sql_ensure(name, server, out, True)
        return self._executing(stmt, server)

    def _sql_statement_bound(
        self, bound: Statement, server: ServerConnection, out: list[bytes]
    ) -> tuple[Statement, Expect]:
        """Bind of a statement whose text is PREPARE/EXECUTE/DEALLOCATE: what PostgreSQL will run needs the
        client's own statements in place (and the pooler's maps changed, undone if it fails). Returns the pool
        statement to bind and what the Bind owes."""
        command = bound.sql_command
        assert command is not None
        verb, name = command
        if verb == "execute":
            self._sql_ensure(name, server, out, True)
            executing = self._executing(bound, server)
            return executing, executing.bind_expect
        undo: _SqlUndo | None = None
        if verb == "prepare":
            undo = self._sql_prepare(name, bound.query, server, out, True)
        elif name:  # DEALLOCATE ALL needs nothing
            undo = self._sql_deallocate(name, server, out, True)
        if undo is None:
            return bound, bound.bind_expect
        # The command runs at the portal's Execute, which may fail (PREPARE of a bad query) or never come.
        self.next_execute = Expect(codes.EXECUTE, undo=undo)
        return bound, Expect(codes.BIND, stmt=bound, undo=undo)

    def unexecuted(self) -> None:
        """A Sync came before the Execute a Bind of PREPARE/DEALLOCATE announced: the command did not run."""
        entry = self.next_execute
        self.next_execute = None
        if entry is not None and entry.undo is not None:
            entry.undo()

    def _executing(self, stmt: Statement, server: ServerConnection) -> Statement:
        """The pool statement for ``EXECUTE name`` under the client's current definition of ``name``: PostgreSQL
        fixes the result description when it parses the text, so clients (or versions) with different
        definitions must never share one."""
        command = stmt.sql_command
        assert command is not None
        definition = self.sql_prepared.get(command[1])
        if definition is None or definition == stmt.scope:
            return stmt  # no definition now: PostgreSQL reports the missing name when it runs
        executing: Statement = server.pool.registry.get(stmt.query, stmt.types, stmt.settings, definition)
        return executing

    def _sql_prepare(
        self, name: bytes, text: bytes, server: ServerConnection, out: list[bytes], extended: bool
    ) -> _SqlUndo | None:
        mine = self.sql_prepared
        self._sql_ensure(name, server, out, extended)  # the server's `name` is now the client's own, or absent
        if name in mine:
            return None  # PostgreSQL answers 42P05 itself
        statements = server.statements
        mine[name] = text
        statements.sql[name] = text
        statements.sql_owner = self.owner
        statements.sql_pending += 1  # its CommandComplete is the pooler's, not a PREPARE to clean up (server.py)
        return _SqlUndo(statements, name, None, text, mine, pending=True)

    def _sql_deallocate(
        self, name: bytes, server: ServerConnection, out: list[bytes], extended: bool
    ) -> _SqlUndo | None:
        mine = self.sql_prepared
        text = mine.get(name)
        statements = server.statements
        self._sql_ensure(name, server, out, extended)  # PostgreSQL deallocates the client's own, or reports 26000
        if text is not None:
            del mine[name]
            statements.sql.pop(name, None)
            return _SqlUndo(statements, name, text, None, mine)
        if name in self.statements.named:
            # A protocol-level statement deallocated with SQL: forget the client's name and let PostgreSQL produce
            # the reply by deallocating a stand-in of the same name.
            del self.statements.named[name]
            self._sql_run(b"PREPARE " + quote_name(name) + b" AS SELECT", server, out, extended, name, None, None)
        return None

    def _sql_close(self, name: bytes, server: ServerConnection, out: list[bytes]) -> None:
        """Close of the client's SQL-level statement ``name`` by its own name: deallocated, as PostgreSQL does
        (statements of both kinds share one namespace there)."""
        self._sql_ensure(name, server, out, True)  # the statement PostgreSQL closes is the client's own
        text = self.sql_prepared.pop(name)
        statements = server.statements
        statements.sql.pop(name, None)
        out.append(_close_statement(name))
        server.ledger.owe(Expect(codes.CLOSE, undo=_SqlUndo(statements, name, text, None, self.sql_prepared)))

    def _sql_ensure(self, name: bytes, server: ServerConnection, out: list[bytes], extended: bool) -> None:
        """Make the server's SQL-level statement ``name`` the client's own, or absent when the client has none."""
        wanted = self.sql_prepared.get(name)
        statements = server.statements
        current = statements.sql.get(name)
        if current == wanted:
            return
        statements.sql_owner = self.owner
        if current is not None:
            del statements.sql[name]
            undo = _SqlUndo(statements, name, current, None)
            if extended:
                out.append(_close_statement(name))  # Close drops a SQL-level statement too, and never fails
                server.ledger.owe(Expect(codes.CLOSE, hide=True, undo=undo))
            else:
                out.append(messages.message(b"Q", b"DEALLOCATE " + quote_name(name) + b"\x00"))
                server.ledger.owe(Expect(codes.HIDDEN_QUERY, undo=undo))
        if wanted is not None:
            statements.sql[name] = wanted
            self._sql_run(wanted, server, out, extended, name, None, wanted)

    def _sql_run(
        self,
        text: bytes,
        server: ServerConnection,
        out: list[bytes],
        extended: bool,
        name: bytes,
        before: bytes | None,
        after: bytes | None,
    ) -> None:
        """Run PREPARE ``text`` on the client's behalf, hidden; if it fails, the server's ``name`` goes back from
        ``after`` to ``before``."""
        statements = server.statements
        ledger = server.ledger
        if not extended:
            out.append(messages.message(b"Q", text + b"\x00"))
            ledger.owe(Expect(codes.HIDDEN_QUERY, undo=_SqlUndo(statements, name, before, after)))
            return
        statements.sql_pending += 1  # its CommandComplete passes the server's tag check, unlike a hidden Query's
        out.append(messages.message(b"P", b"\x00" + text + b"\x00\x00\x00"))
        out.append(_SQL_BIND)
        out.append(_SQL_EXECUTE)
        out.append(_SQL_CLOSE)
        ledger.owe(_HIDDEN_PARSE)
        ledger.owe(_HIDDEN_BIND)
        ledger.owe(Expect(codes.EXECUTE, hide=True, undo=_SqlUndo(statements, name, before, after, pending=True)))
        ledger.owe(_HIDDEN_CLOSE)
