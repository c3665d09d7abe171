"""Prepared statements in transaction mode: the pool-wide statement registry and the bookkeeping around it.

In transaction mode consecutive transactions of one client land on different server connections, so a statement
a client prepared on one may be missing on the next. Every Parse (named or unnamed) is therefore keyed by its
query text, its parameter types and the client's parse-relevant settings, and mapped to a server-side name derived
from that key (``DOORMAN_`` + 16 hex digits of a BLAKE2b hash), which means the same statement in every process:

* the **pool** (`StatementRegistry`) maps keys to `Statement` objects (bounded LRU);
* each **server connection** (`ServerStatements`) remembers which names it has prepared (bounded LRU; an evicted
  name is closed on that server), which of them it prepared in the current lending (retired if their transaction
  rolls back) and the SQL-level prepared statements of the client it last served;
* each **client** (`ClientStatements`) maps its own statement names to `Statement` objects.

rewrite.py turns a client's messages into what the server gets; server.py matches the server's answers to the
`Expect` entries queued on its ledger. Entry codes (codes.py) name the message that completes each request.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from pg_doorman import codes, sessionhints
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

# Settings PostgreSQL applies while it parses and analyses a statement, so that the same text means something else
# under other values: the encoding of the text itself, the lexer (string literals), name lookup, and the input
# functions of constants it folds at parse time ('03:00'::timetz, '{NULL}'::text[], '$1'::money, '<a/>'::xml),
# and `x = NULL`. A server statement is shared only by clients that agree on all of them (lower-case names).
PARSE_SETTINGS = frozenset(
    {
        "array_nulls",
        "backslash_quote",
        "client_encoding",
        "datestyle",
        "intervalstyle",
        "lc_monetary",
        "search_path",
        "standard_conforming_strings",
        "timezone",
        "timezone_abbreviations",
        "transform_null_equals",
        "xmloption",
    }
)

_SETTINGS_CACHE_LIMIT = 1024  # distinct parameter tokens remembered by one registry


def statement_name(settings: bytes, scope: bytes, types: bytes, query: bytes, salt: bytes) -> bytes:
    """The server-side name of a statement key: the same in every process (a server connection passed to another
    worker keeps meaning the same statements). A non-empty ``salt`` gives other names for the same key: a newer
    generation after the old one was retired, or the next candidate after a collision."""
    digest = hashlib.blake2b(digest_size=8, person=b"pg_doorman")
    for part in (settings, scope, types, salt):
        digest.update(len(part).to_bytes(4, "big"))
        digest.update(part)
    digest.update(query)
    return b"DOORMAN_" + digest.hexdigest().encode()


# A server-side statement name as it appears in PostgreSQL's messages (quoted).
SERVER_NAME_PATTERN = re.compile(rb'"(DOORMAN_[0-9a-f]{16})"')

_MAYBE_SQL_COMMAND = re.compile(rb"\s*[pPeEdD]")


class Statement:
    """One distinct (settings, query, parameter types) of a pool and its server-side name.

    ``scope`` is one more part of the key, for statements whose meaning depends on the client beyond its settings
    (``EXECUTE name`` depends on the client's own ``PREPARE name``: the scope is that PREPARE's text).
    ``sql_command`` is what `parse_sql_statement_command` recognises in the text, ``hints`` the session changes
    no command tag reports that the text suggests (sessionhints.py): both worked out once, here.
    """

    __slots__ = (
        "bind_expect",
        "describe_expect",
        "hints",
        "name",
        "parse_message",
        "query",
        "scope",
        "settings",
        "sql_command",
        "stale",
        "types",
    )

    def __init__(self, name: bytes, query: bytes, types: bytes, settings: bytes = b"", scope: bytes = b"") -> None:
        self.name = name
        self.query = query
        self.types = types
        self.settings = settings
        self.scope = scope
        # PostgreSQL said its cached plan must not change result type (DDL), or its parameter type is gone: the
        # name is never used again, the next Bind/Describe/Parse of the same key gets a fresh statement.
        self.stale = False
        self.parse_message = messages.message(b"P", name + b"\x00" + query + b"\x00" + types)
        self.sql_command = parse_sql_statement_command(query) if _MAYBE_SQL_COMMAND.match(query) else None
        self.hints = sessionhints.session_hints(query, 0, len(query))
        # What a Bind or a Describe of this statement owes. Such entries are never modified once queued, so one
        # of each per statement serves every request (no allocation per Bind).
        self.bind_expect = Expect(codes.BIND, stmt=self)
        self.describe_expect = Expect(codes.DESCRIBE, stmt=self)


class Expect:
    """One request sent to (or answered for) the server whose response is still due.

    ``hide``: the completing message is not forwarded (requests the pooler inserted). ``parsed``: the server-side
    name a sent Parse creates (gone again if the Parse fails). ``undo`` reverts what the pooler assumed when
    PostgreSQL fails or skips the request. ``client_name``: the client's statement name that PostgreSQL's error
    for this request names by its server-side name (a Parse of a name already in use).
    """

    __slots__ = ("client_name", "code", "data", "hide", "parsed", "stmt", "undo")

    def __init__(
        self,
        code: int,
        *,
        hide: bool = False,
        data: bytes = b"",
        parsed: bytes = b"",
        undo: Callable[[], None] | None = None,
        stmt: Statement | None = None,
        client_name: bytes | None = None,
    ) -> None:
        self.code = code
        self.stmt = stmt  # the pool statement a Bind/Describe uses (to retire it when its plan went stale)
        self.hide = hide
        self.data = data
        self.parsed = parsed
        self.undo = undo
        self.client_name = client_name


StatementNamer = Callable[[bytes, bytes, bytes, bytes, bytes], bytes]


class StatementRegistry:
    """Pool-wide map (settings, scope, types, query) → Statement, least recently used first out.

    Names come from `statement_name`. Two keys the hash maps to one name (never seen in practice: 64 bits) are told
    apart: the later one takes the next candidate name. A statement retired after a stale plan leaves a generation
    count behind, so its key gets a new name next time (the old one may still exist, stale, on servers).
    """

    __slots__ = (
        "_by_key",
        "_by_name",
        "_generations",
        "_namer",
        "_settings_interned",
        "_settings_keys",
        "capacity",
        "evictions",
        "hits",
        "misses",
    )

    def __init__(self, capacity: int, namer: StatementNamer = statement_name) -> None:
        self._by_key: OrderedDict[tuple[bytes, bytes, bytes, bytes], Statement] = OrderedDict()
        self._by_name: dict[bytes, tuple[bytes, bytes, bytes, bytes]] = {}
        self._generations: dict[tuple[bytes, bytes, bytes, bytes], int] = {}
        self._settings_keys: dict[tuple[tuple[str, str], ...], bytes] = {}
        self._settings_interned: dict[bytes, bytes] = {}
        self._namer = namer
        self.capacity = max(1, capacity)
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._by_key)

    def settings_key(self, token: tuple[tuple[str, str], ...]) -> bytes:
        """The parse-relevant part of a client's parameters (its interned `param_token`), as one interned bytes
        object: clients whose settings parse a text alike get the same object (and the same statements)."""
        keys = self._settings_keys
        key = keys.get(token)
        if key is None:
            wanted = sorted((name.lower(), value) for name, value in token if name.lower() in PARSE_SETTINGS)
            text = "".join(f"{name}={value}\x00" for name, value in wanted).encode()
            interned = self._settings_interned
            if len(keys) >= _SETTINGS_CACHE_LIMIT:
                keys.clear()
                interned.clear()
            key = interned.setdefault(text, text)
            keys[token] = key
        return key

    def forget(self, stmt: Statement) -> None:
        """Retire a statement whose plan went stale: the same key gets a new statement (and name) next time."""
        stmt.stale = True
        key = (stmt.settings, stmt.scope, stmt.types, stmt.query)
        if self._by_key.get(key) is stmt:
            del self._by_key[key]
            if self._by_name.get(stmt.name) == key:
                del self._by_name[stmt.name]
        generations = self._generations
        if len(generations) > 4 * self.capacity:
            # Forgetting a generation is safe: the old name comes back, meets the stale plan again and is retired.
            generations.clear()
        generations[key] = generations.get(key, 0) + 1

    def get(self, query: bytes, types: bytes, settings: bytes = b"", scope: bytes = b"") -> Statement:
        key = (settings, scope, types, query)
        by_key = self._by_key
        stmt = by_key.get(key)
        if stmt is not None:
            by_key.move_to_end(key)
            self.hits += 1
            return stmt
        self.misses += 1
        stmt = Statement(self._name_for(key), query, types, settings, scope)
        by_key[key] = stmt
        self._by_name[stmt.name] = key
        if len(by_key) > self.capacity:
            _, old = by_key.popitem(last=False)
            self._by_name.pop(old.name, None)
            self.evictions += 1
        return stmt

    def _name_for(self, key: tuple[bytes, bytes, bytes, bytes]) -> bytes:
        settings, scope, types, query = key
        generation = self._generations.get(key, 0)
        by_name = self._by_name
        attempt = 0
        while True:
            salt = b"%d.%d" % (generation, attempt) if generation or attempt else b""
            name = self._namer(settings, scope, types, query, salt)
            holder = by_name.get(name)
            if holder is None or holder == key:
                return name
            attempt += 1


class ServerStatements:
    """What one server connection has prepared.

    * names of pool statements (LRU; ``add`` returns a name to close when over capacity);
    * ``opened``: names parsed during the current lending (a subset of the cache). If a transaction of that lending
      rolls back (or may have: ``aborted``, an error), they may depend on objects that are gone, so they are
      retired;
    * ``sql``: the SQL-level prepared statements on the session (name → PREPARE text), all of them belonging to
      the client ``sql_owner`` (rewrite.StatementRewriter.owner): another client's are closed when it gets the
      server. ``sql_pending``: PREPAREs the pooler knows of whose CommandComplete is still due.
    """

    __slots__ = ("_names", "aborted", "capacity", "evictions", "opened", "sql", "sql_owner", "sql_pending")

    def __init__(self, capacity: int) -> None:
        self._names: OrderedDict[bytes, None] = OrderedDict()
        self.capacity = capacity
        self.evictions = 0
        self.opened: dict[bytes, None] = {}
        self.aborted = False
        self.sql: dict[bytes, bytes] = {}
        self.sql_owner = 0
        self.sql_pending = 0

    def __contains__(self, name: bytes) -> bool:
        names = self._names
        if name in names:
            names.move_to_end(name)
            return True
        return False

    def __len__(self) -> int:
        return len(self._names)

    def add(self, name: bytes, parsed: bool = True) -> tuple[bytes, bool] | None:
        """``name`` exists on the server (``parsed`` now, rather than taken back before its Close was sent).
        Over capacity, returns the least recently used name, to close, and whether it may be taken back until
        then (not if parsed in this lending: its transaction may still roll back)."""
        names = self._names
        names[name] = None
        names.move_to_end(name)
        if parsed:
            self.opened[name] = None
        if self.capacity > 0 and len(names) > self.capacity:
            old, _ = names.popitem(last=False)
            self.evictions += 1
            opened = self.opened
            if old in opened:
                del opened[old]
                return old, True
            return old, False
        return None

    def discard(self, name: bytes) -> None:
        self._names.pop(name, None)
        self.opened.pop(name, None)

    def retire_opened(self) -> list[bytes]:
        """The names parsed in this lending, taken off (to be closed): a transaction or savepoint rolled back."""
        retired = list(self.opened)
        if retired:
            names = self._names
            for name in retired:
                names.pop(name, None)
            self.opened.clear()
        return retired

    def settle(self, rolled_back: bool) -> list[bytes]:
        """The lending is over: the names to retire (those parsed in it, if a transaction of it rolled back)."""
        retired = self.retire_opened() if rolled_back or self.aborted else []
        self.opened.clear()
        self.aborted = False
        return retired

    def sql_prepare_completed(self) -> bool:
        """A PREPARE's CommandComplete: True when the pooler knew of it (the server needs no DEALLOCATE ALL)."""
        if self.sql_pending > 0:
            self.sql_pending -= 1
            return True
        return False

    def clear(self) -> None:
        """DEALLOCATE ALL / DISCARD ALL: nothing prepared is left (PREPAREs still in flight stay counted)."""
        self._names.clear()
        self.opened.clear()
        self.sql.clear()


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
    """PostgreSQL identifier rules: quoted keeps case (with "" unescaped), unquoted folds to lower case; longer than
    NAMEDATALEN - 1 (63) bytes, clipped there (on a character boundary, UTF-8)."""
    name = raw[1:-1].replace(b'""', b'"') if raw.startswith(b'"') else raw.lower()
    if len(name) <= 63:
        return name
    cut = name[:63]
    last = 62
    while last > 0 and 0x80 <= cut[last] < 0xC0:  # back to the first byte of the last character
        last -= 1
    lead = cut[last]
    width = 1 if lead < 0x80 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
    return cut if last + width <= 63 else cut[:last]


def quote_name(name: bytes) -> bytes:
    """``name`` as a quoted SQL identifier."""
    return b'"' + name.replace(b'"', b'""') + b'"'


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
