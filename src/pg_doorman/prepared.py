"""Prepared statements in transaction mode: pool-wide statement names and the bookkeeping around them.

In transaction mode consecutive transactions of one client land on different server connections, so a statement
a client prepared on one may be missing on the next. Every Parse (named or unnamed) is therefore keyed by its
query text and parameter types and mapped to a pool-wide server-side name (``DOORMAN_<n>``):

* the **pool** (`StatementRegistry`) maps keys to `Statement` objects (bounded LRU);
* each **server connection** (`ServerStatements`) remembers which names it has prepared (bounded LRU; an evicted
  name is closed on that server);
* each **client** (`ClientStatements`) maps its own statement names to `Statement` objects.

Client messages are rewritten (`rewrite_*`): Parse is sent only when the server lacks the statement (otherwise a
synthetic ParseComplete is produced), Bind/Describe get the server name and a hidden Parse in front when the
server lacks it, Close of a statement only forgets the client's name.

The server's answers are matched to what was sent with a queue of `Expect` entries (see server.py). Entry codes
(codes.py) name the message that completes each request.
"""

from __future__ import annotations

import itertools
import re
import struct
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from pg_doorman import codes
from pg_doorman.protocol import messages

# What completes an expected response (codes used by the response queue in server.py).
COMPLETES: dict[int, int] = {
    ord("1"): codes.PARSE,
    ord("2"): codes.BIND,
    ord("T"): codes.DESCRIBE,
    ord("n"): codes.DESCRIBE,
    ord("C"): codes.EXECUTE,
    ord("I"): codes.EXECUTE,
    ord("s"): codes.EXECUTE,
    ord("3"): codes.CLOSE,
    ord("Z"): codes.SYNC,
}

# The same as a 256-entry table indexed by the message type byte (0: completes nothing), for the forwarding loop.
COMPLETES_TABLE = bytes(COMPLETES.get(kind, 0) for kind in range(256))

_counter = itertools.count(1)


class Statement:
    """One distinct (query, parameter types) of a pool and its server-side name."""

    __slots__ = ("bind_expect", "describe_expect", "name", "parse_message", "query", "stale", "types")

    def __init__(self, name: bytes, query: bytes, types: bytes) -> None:
        self.name = name
        self.query = query
        self.types = types
        # PostgreSQL said its cached plan must not change result type (DDL): the name is never used again, the
        # next Bind/Describe/Parse of the same text gets a fresh statement (see client.py, server.py).
        self.stale = False
        self.parse_message = messages.message(b"P", name + b"\x00" + query + b"\x00" + types)
        # What a Bind or a Describe of this statement owes. Such entries are never modified once queued, so one
        # of each per statement serves every request (no allocation per Bind).
        self.bind_expect = Expect(codes.BIND, stmt=self)
        self.describe_expect = Expect(codes.DESCRIBE, stmt=self)


class Expect:
    """One request sent to (or answered for) the server whose response is still due.

    ``hide``: the completing message is not forwarded (requests the pooler inserted). ``on_fail``/``on_ok``
    carry the statement name whose presence on the server depends on the outcome.
    """

    __slots__ = ("code", "data", "hide", "parsed", "stmt", "undo")

    def __init__(
        self,
        code: int,
        *,
        hide: bool = False,
        data: bytes = b"",
        parsed: bytes = b"",
        undo: Callable[[], None] | None = None,
        stmt: Statement | None = None,
    ) -> None:
        self.code = code
        self.stmt = stmt  # the pool statement a Bind/Describe uses (to retire it when its plan went stale)
        self.hide = hide
        self.data = data
        self.parsed = parsed  # server-side name a sent Parse creates: gone again if the Parse fails
        self.undo = undo  # reverts the client-side effect when PostgreSQL fails or skips this request


class StatementRegistry:
    """Pool-wide map (query, types) → Statement, least recently used first out."""

    __slots__ = ("_by_key", "capacity", "evictions", "hits", "misses")

    def __init__(self, capacity: int) -> None:
        self._by_key: OrderedDict[bytes, Statement] = OrderedDict()
        self.capacity = max(1, capacity)
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._by_key)

    def forget(self, stmt: Statement) -> None:
        """Retire a statement whose plan went stale: the same text gets a new statement (and name) next time."""
        stmt.stale = True
        key = stmt.types + b"\x00" + stmt.query
        if self._by_key.get(key) is stmt:
            del self._by_key[key]

    def get(self, query: bytes, types: bytes) -> Statement:
        key = types + b"\x00" + query
        by_key = self._by_key
        stmt = by_key.get(key)
        if stmt is not None:
            by_key.move_to_end(key)
            self.hits += 1
            return stmt
        self.misses += 1
        stmt = Statement(b"DOORMAN_%d" % next(_counter), query, types)
        by_key[key] = stmt
        if len(by_key) > self.capacity:
            by_key.popitem(last=False)
            self.evictions += 1
        return stmt


class ServerStatements:
    """Names prepared on one server connection (LRU). ``add`` returns a name to close when over capacity."""

    __slots__ = ("_names", "capacity", "evictions")

    def __init__(self, capacity: int) -> None:
        self._names: OrderedDict[bytes, None] = OrderedDict()
        self.capacity = capacity
        self.evictions = 0

    def __contains__(self, name: bytes) -> bool:
        names = self._names
        if name in names:
            names.move_to_end(name)
            return True
        return False

    def __len__(self) -> int:
        return len(self._names)

    def add(self, name: bytes) -> bytes | None:
        names = self._names
        names[name] = None
        names.move_to_end(name)
        if self.capacity > 0 and len(names) > self.capacity:
            old, _ = names.popitem(last=False)
            self.evictions += 1
            return old
        return None

    def discard(self, name: bytes) -> None:
        self._names.pop(name, None)

    def clear(self) -> None:
        self._names.clear()


class ClientStatements:
    """A client's own statement names → pool statements. The unnamed one is kept apart, as PostgreSQL does."""

    __slots__ = ("named", "unnamed")

    def __init__(self) -> None:
        self.named: dict[bytes, Statement] = {}
        self.unnamed: Statement | None = None

    def lookup(self, name: bytes) -> Statement | None:
        if name:
            return self.named.get(name)
        return self.unnamed


@dataclass(frozen=True, slots=True)
class ParsedParse:
    name: bytes
    query: bytes
    types: bytes  # int16 count + int32 OIDs, as on the wire


def parse_parse(body: bytes | memoryview) -> ParsedParse:
    data = bytes(body)
    name_end = data.index(b"\x00")
    query_end = data.index(b"\x00", name_end + 1)
    return ParsedParse(data[:name_end], data[name_end + 1 : query_end], data[query_end + 1 :])


def name_after_first_cstring(body: bytes) -> tuple[int, int]:
    """Offsets [start, end) of the second NUL-terminated string (Bind: statement name after the portal name)."""
    start = 1 if body[0] == 0 else body.index(b"\x00") + 1  # the portal name is nearly always empty
    return start, body.index(b"\x00", start)


_pack_header = struct.Struct("!cI").pack


def rebuild_with_name(kind: bytes, body: bytes, start: int, end: int, name: bytes) -> bytes:
    """``body`` with bytes [start, end) replaced by ``name``, framed as a ``kind`` message."""
    new_body = body[:start] + name + body[end:]
    return _pack_header(kind, len(new_body) + 4) + new_body


_IDENT = rb'("(?:[^"]|"")+"|[A-Za-z_\x80-\xff][A-Za-z0-9_$\x80-\xff]*)'
_SQL_COMMAND = re.compile(
    rb"\s*(?:(?P<prepare>prepare)\s+" + _IDENT + rb"(?:\s*\(|\s+as\b)"
    rb"|(?P<execute>execute)\s+" + _IDENT + rb"\s*(?:\(|;|\x00|$)"
    rb"|(?P<deallocate>deallocate)(?:\s+prepare)?\s+" + _IDENT + rb"\s*;?\s*\x00?$)",
    re.IGNORECASE | re.DOTALL,
)


def normalize_ident(raw: bytes) -> bytes:
    """PostgreSQL identifier rules: quoted keeps case (with "" unescaped), unquoted folds to lower case."""
    if raw.startswith(b'"'):
        return raw[1:-1].replace(b'""', b'"')
    return raw.lower()


def parse_sql_statement_command(text: bytes) -> tuple[str, bytes] | None:
    """Recognize a single SQL-level ``PREPARE name ...``, ``EXECUTE name ...`` or ``DEALLOCATE [PREPARE] name``.

    Returns (command, normalized name); ``DEALLOCATE ALL`` gives ("deallocate", b"") only when written as the
    keyword ALL. Anything with more than one statement is not recognized (None).
    """
    body = text.rstrip(b"\x00")
    stripped = body.rstrip().rstrip(b";")
    if b";" in stripped:
        return None
    m = _SQL_COMMAND.match(body)
    if m is None:
        return None
    index = 2 if m.group("prepare") else 4 if m.group("execute") else 6
    command = ("prepare", "execute", "deallocate")[index // 2 - 1]
    raw: bytes = m.group(index)
    if command == "deallocate" and raw.lower() == b"all":
        return command, b""
    return command, normalize_ident(raw)
