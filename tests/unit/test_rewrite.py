"""Statement rewriting without sockets: client messages in, the bytes the server gets and the responses it owes
(its ledger's queue) out (rewrite.StatementRewriter), plus the pool's statement names (prepared.StatementRegistry)
and what one server has prepared (prepared.ServerStatements)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from pg_doorman import codes
from pg_doorman.app import Application
from pg_doorman.client import ClientConnection
from pg_doorman.config import load_config
from pg_doorman.prepared import (
    PARSE_SETTINGS,
    ServerStatements,
    StatementRegistry,
    statement_name,
)
from pg_doorman.protocol import messages
from pg_doorman.protocol.framing import MessageBuffer
from pg_doorman.rewrite import StatementRewriter
from pg_doorman.server import ServerConnection

TOKYO = (("DateStyle", "ISO, MDY"), ("TimeZone", "Asia/Tokyo"), ("application_name", "a"))
KOLKATA = (("DateStyle", "ISO, MDY"), ("TimeZone", "Asia/Kolkata"), ("application_name", "a"))
INT4 = b"\x00\x01\x00\x00\x00\x17"
NO_TYPES = b"\x00\x00"
NAME = re.compile(rb"DOORMAN_[0-9a-f]{16}")


# ---------------------------------------------------------------- helpers


class Transport:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def is_closing(self) -> bool:
        return False


@pytest.fixture
def app(tmp_path: Path) -> Application:
    path = tmp_path / "c.yaml"
    path.write_text(
        "general: {admin_username: a, admin_password: b}\n"
        "pools: {db: {users: [{username: u, password: '', pool_size: 2}]}}\n"
    )
    return Application(load_config(path))


@pytest.fixture
def pool(app: Application) -> Any:
    return app.registry.pools[("db", "u")]


def new_server(pool: Any) -> ServerConnection:
    server = ServerConnection(pool)
    server.set_transport(Transport())  # type: ignore[arg-type]
    server.state = codes.SERVER_ACTIVE
    return server


@pytest.fixture
def server(pool: Any) -> ServerConnection:
    return new_server(pool)


def parse(name: bytes, query: bytes, types: bytes = NO_TYPES) -> bytes:
    return messages.message(b"P", name + b"\x00" + query + b"\x00" + types)


def bind(statement: bytes, portal: bytes = b"") -> bytes:
    return messages.message(b"B", portal + b"\x00" + statement + b"\x00\x00\x00\x00\x00\x00\x00")


def describe(statement: bytes) -> bytes:
    return messages.message(b"D", b"S" + statement + b"\x00")


def close(statement: bytes) -> bytes:
    return messages.message(b"C", b"S" + statement + b"\x00")


def send(rewriter: StatementRewriter, server: ServerConnection, *msgs: bytes, token: Any = TOKYO) -> list[Any]:
    """Each message through the rewriter: [(type, body), ...] of what the server would get."""
    out: list[bytes] = []
    for raw in msgs:
        if raw[:1] == b"Q":
            if not rewriter.query(raw, server, out):
                out.append(raw)
        else:
            rewriter.rewrite(raw[0], raw, server, out, token)
    buf = MessageBuffer()
    buf.feed(b"".join(out))
    return [(chr(kind), bytes(body)) for kind, body in buf.messages()]


def kinds(sent: list[Any]) -> str:
    return "".join(kind for kind, _ in sent)


def owed(server: ServerConnection) -> list[tuple[int, bool]]:
    """The ledger's queue: (code, hidden) per entry, taken off."""
    entries = [(entry.code, entry.hide) for entry in server.ledger.expect]
    server.ledger.expect.clear()
    return entries


def complete(server: ServerConnection) -> None:
    """PostgreSQL did everything that was sent: nothing owed any more, the lending goes on."""
    server.ledger.expect.clear()


def name_in(body: bytes) -> bytes:
    match = NAME.search(body)
    assert match is not None, body
    return match.group(0)


PARSE, BIND, DESCRIBE, EXECUTE, CLOSE = codes.PARSE, codes.BIND, codes.DESCRIBE, codes.EXECUTE, codes.CLOSE
SYNTHETIC, QUERY, HIDDEN_QUERY = codes.SYNTHETIC, codes.QUERY, codes.HIDDEN_QUERY


# ---------------------------------------------------------------- names


def test_statement_names_come_from_the_key_and_agree_across_registries() -> None:
    """A server connection passed to another process keeps meaning the same statements."""
    one, two = StatementRegistry(10), StatementRegistry(10)
    a = one.get(b"select $1", INT4, b"timezone=UTC\x00")
    two.get(b"select 2", NO_TYPES)  # other statements in between change nothing
    b = two.get(b"select $1", INT4, b"timezone=UTC\x00")
    assert a is not b and a.name == b.name
    assert re.fullmatch(rb"DOORMAN_[0-9a-f]{16}", a.name)
    assert a.name == statement_name(b"timezone=UTC\x00", b"", INT4, b"select $1", b"")
    others = {
        one.get(b"select $1", INT4, b"timezone=Asia/Tokyo\x00").name,
        one.get(b"select $1", b"\x00\x01\x00\x00\x00\x19", b"timezone=UTC\x00").name,
        one.get(b"select $1", INT4, b"timezone=UTC\x00", b"PREPARE p AS SELECT 1").name,
        one.get(b"select $2", INT4, b"timezone=UTC\x00").name,
    }
    assert len(others | {a.name}) == 5


def test_key_parts_do_not_run_into_each_other() -> None:
    """Settings, scope and types are length-prefixed in the hash: moving bytes between them is another key."""
    assert statement_name(b"a", b"b", b"", b"q", b"") != statement_name(b"", b"ab", b"", b"q", b"")
    assert statement_name(b"", b"", b"\x00\x00", b"q", b"") != statement_name(b"", b"", b"", b"\x00\x00q", b"")


def test_forced_collision_gets_a_distinct_name() -> None:
    def colliding(settings: bytes, scope: bytes, types: bytes, query: bytes, salt: bytes) -> bytes:
        """Every key hashes to one name; only the next candidates (salted) differ."""
        return b"DOORMAN_" + (b"0" * 16 if not salt else statement_name(settings, scope, types, query, salt)[8:])

    reg = StatementRegistry(10, namer=colliding)
    first = reg.get(b"select 1", NO_TYPES)
    second = reg.get(b"select 2", NO_TYPES)
    third = reg.get(b"select 3", NO_TYPES)
    assert first.name == b"DOORMAN_" + b"0" * 16
    assert len({first.name, second.name, third.name}) == 3
    assert all(NAME.fullmatch(stmt.name) for stmt in (first, second, third))
    assert reg.get(b"select 1", NO_TYPES) is first and reg.get(b"select 2", NO_TYPES) is second
    # Deterministic: another registry meeting the same keys in the same order names them alike.
    again = StatementRegistry(10, namer=colliding)
    assert [again.get(q, NO_TYPES).name for q in (b"select 1", b"select 2", b"select 3")] == [
        first.name,
        second.name,
        third.name,
    ]


def test_retired_statement_gets_a_new_name_also_in_another_registry() -> None:
    one, two = StatementRegistry(10), StatementRegistry(10)
    old = one.get(b"select 1", NO_TYPES)
    one.forget(old)
    fresh = one.get(b"select 1", NO_TYPES)
    assert old.stale and fresh.name != old.name
    other = two.get(b"select 1", NO_TYPES)
    two.forget(other)
    assert two.get(b"select 1", NO_TYPES).name == fresh.name


def test_settings_key_keeps_parse_relevant_settings_interned() -> None:
    reg = StatementRegistry(10)
    key = reg.settings_key(TOKYO)
    assert key == b"datestyle=ISO, MDY\x00timezone=Asia/Tokyo\x00"  # application_name does not change a parse
    other_app = (("DateStyle", "ISO, MDY"), ("TimeZone", "Asia/Tokyo"), ("application_name", "b"))
    assert reg.settings_key(other_app) is key, "same parse settings: the same object (identity on the hot path)"
    assert reg.settings_key((("timezone", "Asia/Tokyo"), ("datestyle", "ISO, MDY"))) == key  # names fold case
    assert reg.settings_key(KOLKATA) != key
    assert {"timezone", "datestyle", "intervalstyle", "search_path", "standard_conforming_strings"} <= PARSE_SETTINGS


# ---------------------------------------------------------------- Parse, Bind, Describe, Close


def test_unnamed_parse_is_sent_once_then_answered_by_the_pooler(server: ServerConnection) -> None:
    rewriter = StatementRewriter()
    sent = send(rewriter, server, parse(b"", b"select $1", INT4), bind(b""))
    assert kinds(sent) == "PB"
    server_name = name_in(sent[0][1])
    assert sent[0][1].startswith(server_name + b"\x00select $1\x00") and server_name in sent[1][1]
    assert owed(server) == [(PARSE, False), (BIND, False)]
    # The server has it now: the next Parse is answered locally, in its position.
    assert kinds(send(rewriter, server, parse(b"", b"select $1", INT4), bind(b""))) == "B"
    assert owed(server) == [(SYNTHETIC, False), (BIND, False)]


@pytest.mark.parametrize("state", ["failed", "query_in_flight", "sync_in_flight"])
def test_parse_of_a_known_statement_goes_to_postgresql_when_the_transaction_may_have_failed(
    server: ServerConnection, state: str
) -> None:
    """In a failed transaction PostgreSQL answers 25P02 to a Parse; with a Query or Sync in flight the pooler
    cannot know: the client's text goes to the server's unnamed statement and PostgreSQL answers."""
    rewriter = StatementRewriter()
    send(rewriter, server, parse(b"s1", b"select 1"))
    complete(server)
    ledger = server.ledger
    if state == "failed":
        ledger.sent_query()
        ledger.ready(codes.TX_FAILED)
    elif state == "query_in_flight":
        ledger.sent_query()
    else:
        ledger.sent_sync()
    sent = send(rewriter, server, parse(b"s2", b"select 1"))
    assert sent == [("P", b"\x00select 1\x00\x00\x00")]
    failed = ledger.head()
    assert owed(server) == [(PARSE, False)]
    # PostgreSQL said 25P02: the client's s2 does not exist.
    assert failed is not None and failed.undo is not None
    failed.undo()
    assert rewriter.statements.lookup(b"s2") is None


def test_duplicate_name_gets_postgresqls_own_error(pool: Any) -> None:
    """A Parse of a name the client uses: the statement is made to exist on this server (hidden Parse), then the
    new text is parsed under its server-side name, so PostgreSQL itself raises 42P05; the error names the
    client's statement."""
    rewriter = StatementRewriter()
    first = new_server(pool)
    send(rewriter, first, parse(b"s1", b"select 1"))
    complete(first)
    other = new_server(pool)  # the next transaction lands elsewhere
    sent = send(rewriter, other, parse(b"s1", b"select 2"))
    server_name = rewriter.statements.named[b"s1"].name
    assert sent == [("P", server_name + b"\x00select 1\x00\x00\x00"), ("P", server_name + b"\x00select 2\x00\x00\x00")]
    entries = list(other.ledger.expect)
    assert [(e.code, e.hide) for e in entries] == [(PARSE, True), (PARSE, False)]
    assert entries[1].client_name == b"s1" and not entries[1].parsed  # a failure must not forget the original
    error = messages.error_response(
        "42P05", f'prepared statement "{server_name.decode()}" already exists', severity="ERROR"
    )
    assert rewriter.unmask(error, entries[1]) == messages.error_response(
        "42P05", 'prepared statement "s1" already exists', severity="ERROR"
    )
    assert rewriter.statements.named[b"s1"].query == b"select 1"


def test_unmask_prefers_the_name_the_request_used(server: ServerConnection) -> None:
    rewriter = StatementRewriter()
    send(rewriter, server, parse(b"a", b"select 1"), parse(b"b", b"select 1"))
    complete(server)
    send(rewriter, server, parse(b"b", b"select 3"))
    entry = list(server.ledger.expect)[-1]
    server_name = rewriter.statements.named[b"b"].name.decode()
    error = messages.error_response("42P05", f'prepared statement "{server_name}" already exists', severity="ERROR")
    assert b'"b" already' in rewriter.unmask(error, entry)


def test_statements_are_shared_only_under_the_same_settings(server: ServerConnection) -> None:
    tokyo, kolkata = StatementRewriter(), StatementRewriter()
    text = parse(b"", b"select '03:00'::timetz")
    a = name_in(send(tokyo, server, text, token=TOKYO)[0][1])
    complete(server)
    sent = send(kolkata, server, text, token=KOLKATA)
    assert kinds(sent) == "P" and name_in(sent[0][1]) != a, "parsed again under the other TimeZone"
    complete(server)
    # Same client, settings changed (SET TimeZone reported back): its cached unnamed statement is not reused.
    sent = send(tokyo, server, text, token=KOLKATA)
    assert kinds(sent) == "" and tokyo.statements.unnamed is kolkata.statements.unnamed
    owed(server)
    assert kinds(send(tokyo, server, text, token=TOKYO)) == ""  # back: the server has that one too
    assert tokyo.statements.unnamed is not None and tokyo.statements.unnamed.name == a


def test_close_of_a_statement_forgets_only_the_clients_name(server: ServerConnection) -> None:
    rewriter = StatementRewriter()
    send(rewriter, server, parse(b"s1", b"select 1"))
    complete(server)
    assert send(rewriter, server, close(b"s1")) == []
    assert owed(server) == [(SYNTHETIC, False)]
    assert b"s1" not in rewriter.statements.named
    assert rewriter.statements.named == {}


def test_names_without_their_nul_are_refused(server: ServerConnection) -> None:
    rewriter = StatementRewriter()
    for raw in (
        messages.message(b"P", b"s1"),
        messages.message(b"P", b"s1\x00select 1"),
        messages.message(b"B", b"\x00s1"),
        messages.message(b"D", b"Ss1"),
        messages.message(b"C", b"Ss1"),
    ):
        with pytest.raises((ValueError, IndexError)):
            rewriter.rewrite(raw[0], raw, server, [], TOKYO)


def test_huge_statement_name_maps_like_any_other(server: ServerConnection) -> None:
    huge = b"n" * 100_000
    rewriter = StatementRewriter()
    sent = send(rewriter, server, parse(huge, b"select 1"), bind(huge), describe(huge))
    assert kinds(sent) == "PBD" and huge not in b"".join(body for _, body in sent)
    server_name = rewriter.statements.named[huge[:63]].name  # PostgreSQL keys it by 63 bytes too
    error = messages.error_response("26000", f'prepared statement "{server_name.decode()}" x', severity="ERROR")
    assert b'"' + huge[:63] + b'"' in rewriter.unmask(error, None)


def test_another_clients_statement_names_mean_nothing(server: ServerConnection) -> None:
    """Client B uses the name client A gave its statement: B's own map knows nothing of it, so PostgreSQL
    reports the unknown name (26000) and nothing of A's reaches B."""
    a, b = StatementRewriter(), StatementRewriter()
    send(a, server, parse(b"s1", b"select 'secret of a'"))
    complete(server)
    assert send(b, server, bind(b"s1"), describe(b"s1")) == [
        ("B", b"\x00s1\x00\x00\x00\x00\x00\x00\x00"),
        ("D", b"Ss1\x00"),
    ]
    # And B's own s1 is a statement of B's text.
    sent = send(b, server, parse(b"s1", b"select 'mine'"))
    assert kinds(sent) == "P" and b"mine" in sent[0][1]


# ---------------------------------------------------------------- statements retired after a rollback


def test_statements_parsed_before_a_rollback_are_closed_and_parsed_afresh(server: ServerConnection) -> None:
    rewriter = StatementRewriter()
    sent = send(rewriter, server, parse(b"", b"select $1::mood"))
    server_name = name_in(sent[0][1])
    complete(server)
    server._on_command_complete(messages.command_complete("ROLLBACK"), 5)  # e.g. ROLLBACK TO SAVEPOINT
    assert server.to_close == {server_name: False}
    # Still in the same lending: closed right before it is parsed again (the Parse must not meet the old one).
    sent = send(rewriter, server, parse(b"", b"select $1::mood"))
    assert sent == [("C", b"S" + server_name + b"\x00"), ("P", server_name + b"\x00select $1::mood\x00\x00\x00")]
    assert owed(server) == [(CLOSE, True), (PARSE, False)]
    assert not server.to_close


@pytest.mark.parametrize(("how", "retired"), [("commit", False), ("error", True), ("left_in_transaction", True)])
def test_statements_of_a_lending_are_settled_at_release(server: ServerConnection, how: str, retired: bool) -> None:
    rewriter = StatementRewriter()
    server_name = name_in(send(rewriter, server, parse(b"s1", b"select 1"))[0][1])
    complete(server)
    statements = server.statements
    assert list(statements.opened) == [server_name]
    if how == "error":
        statements.aborted = True  # what server.py notes at an ErrorResponse (an implicit transaction rolls back)
    elif how == "left_in_transaction":
        server.ledger.sent_query()
        server.ledger.ready(codes.TX_IN_BLOCK)
    server._settle_statements()
    assert not statements.opened and not statements.aborted
    assert (server_name in server.to_close) is retired
    assert (server_name in statements) is not retired


def test_cache_eviction_and_what_may_be_taken_back() -> None:
    """An evicted name is closed at the next checkout; until then it may be taken back, unless it was parsed in
    the current lending (its transaction may still roll back). ``opened`` stays within the cache."""
    statements = ServerStatements(1)
    assert statements.add(b"a") is None
    assert statements.add(b"b") == (b"a", True)
    assert list(statements.opened) == [b"b"]
    assert statements.settle(False) == []
    assert statements.add(b"c") == (b"b", False)
    assert statements.add(b"b", parsed=False) == (b"c", True)
    assert list(statements.opened) == [], "taking a name back is no new parse"


# ---------------------------------------------------------------- SQL-level statements


def test_sql_prepare_in_a_parse_is_the_clients_own(server: ServerConnection) -> None:
    """PREPARE sent as a Parse: nothing happens at Parse; at Bind the pooler records it for this client (and
    counts its CommandComplete as its own); if the Execute fails, that is undone."""
    rewriter = StatementRewriter()
    assert kinds(send(rewriter, server, parse(b"", b"PREPARE p AS SELECT 1"))) == "P"
    complete(server)
    sent = send(rewriter, server, bind(b""))
    assert kinds(sent) == "B"
    assert rewriter.sql_prepared == {b"p": b"PREPARE p AS SELECT 1"}
    assert server.statements.sql == {b"p": b"PREPARE p AS SELECT 1"}
    assert server.statements.sql_owner == rewriter.owner and server.statements.sql_pending == 1
    execute = rewriter.next_execute
    assert execute is not None and execute.code == EXECUTE and execute.undo is not None
    execute.undo()  # PostgreSQL: the PREPARE's query does not parse
    assert rewriter.sql_prepared == {} and server.statements.sql == {} and server.statements.sql_pending == 0
    execute.undo()  # queued on the Bind too: once only
    assert server.statements.sql_pending == 0


def test_sql_prepare_bound_without_execute_did_not_happen(server: ServerConnection) -> None:
    rewriter = StatementRewriter()
    send(rewriter, server, parse(b"", b"PREPARE p AS SELECT 1"), bind(b""))
    rewriter.unexecuted()  # the frame walk met a Sync first
    assert rewriter.sql_prepared == {} and rewriter.next_execute is None


def test_sql_execute_in_a_parse_drops_a_leftover_and_recreates_the_clients_own(server: ServerConnection) -> None:
    """EXECUTE p sent as a Parse: PostgreSQL looks p up to describe the result, so the server's p must be the
    client's own (re-created when missing, hidden) or absent (26000, as on a direct connection)."""
    stranger = StatementRewriter()
    server.statements.sql[b"p"] = b"PREPARE p AS SELECT 'not yours'"
    sent = send(stranger, server, parse(b"", b"EXECUTE p"))
    assert kinds(sent) == "CP" and sent[0] == ("C", b"Sp\x00"), "the leftover is dropped first"
    assert server.statements.sql == {}
    owed(server)
    mine = StatementRewriter()
    mine.sql_prepared[b"p"] = b"PREPARE p AS SELECT 1"
    sent = send(mine, server, parse(b"", b"EXECUTE p"), bind(b""))
    # Hidden PREPARE (unnamed statement, the pooler's portal, closed after), then the client's Parse and Bind.
    assert kinds(sent) == "PBECPB"
    assert sent[0] == ("P", b"\x00PREPARE p AS SELECT 1\x00\x00\x00")
    assert owed(server) == [(PARSE, True), (BIND, True), (EXECUTE, True), (CLOSE, True), (PARSE, False), (BIND, False)]
    assert server.statements.sql == {b"p": b"PREPARE p AS SELECT 1"} and server.statements.sql_pending == 1


def test_sql_execute_statements_are_never_shared_between_definitions(server: ServerConnection) -> None:
    """PostgreSQL fixes the row description of EXECUTE p when it parses it: one pool statement per definition."""
    one, two = StatementRewriter(), StatementRewriter()
    one.sql_prepared[b"p"] = b"PREPARE p AS SELECT 1"
    two.sql_prepared[b"p"] = b"PREPARE p AS SELECT 'text'"
    send(one, server, parse(b"e", b"EXECUTE p"))
    send(two, server, parse(b"e", b"EXECUTE p"))
    assert one.statements.named[b"e"].name != two.statements.named[b"e"].name


def test_sql_statements_of_the_previous_client_are_closed_at_checkout(app: Application, pool: Any) -> None:
    """A SQL-prepared statement of one client is never found by another, whatever the other sends."""
    server = new_server(pool)
    a = StatementRewriter()
    out: list[bytes] = []
    assert a.query(messages.query("PREPARE leak AS SELECT 'secret'"), server, out)
    complete(server)
    server.statements.sql_prepare_completed()
    b = ClientConnection(app.context)
    b.track_statements()
    server.transport.data.clear()  # type: ignore[union-attr]
    server.state = codes.SERVER_IDLE
    server.attach(b, None)
    assert bytes(server.transport.data) == close(b"leak") + messages.SYNC  # type: ignore[union-attr]
    assert server.statements.sql == {}
    # The client that left them finds them again when it comes back.
    assert b.rewriter is not None
    out = []
    assert b.rewriter.query(messages.query("PREPARE mine AS SELECT 1"), server, out)
    server.ledger.expect.clear()
    server.ledger.swallowed_ready(codes.TX_IDLE)  # the hidden Close's Sync
    server.transport.data.clear()  # type: ignore[union-attr]
    server.state = codes.SERVER_IDLE
    server.attach(b, None)
    assert bytes(server.transport.data) == b""  # type: ignore[union-attr]
    assert server.statements.sql == {b"mine": b"PREPARE mine AS SELECT 1"}


def test_simple_query_sql_commands(server: ServerConnection) -> None:
    rewriter = StatementRewriter()
    out: list[bytes] = []
    assert not rewriter.query(messages.query("select 1"), server, out) and out == []
    assert not rewriter.query(messages.query("DEALLOCATE ALL"), server, out) and out == []
    assert rewriter.query(messages.query("PREPARE q AS SELECT 1"), server, out)
    assert owed(server) == [(QUERY, False)]
    assert rewriter.sql_prepared == {b"q": b"PREPARE q AS SELECT 1"}
    # Another server: EXECUTE re-creates it first with a hidden Query.
    other = new_server(server.pool)
    out = []
    assert rewriter.query(messages.query("EXECUTE q"), other, out)
    assert out == [messages.query("PREPARE q AS SELECT 1"), messages.query("EXECUTE q")]
    assert owed(other) == [(HIDDEN_QUERY, False), (QUERY, False)]
    # DEALLOCATE of a protocol statement: the name goes, PostgreSQL deallocates a stand-in.
    send(rewriter, other, parse(b"s1", b"select 1"))
    owed(other)
    out = []
    assert rewriter.query(messages.query("DEALLOCATE s1"), other, out)
    assert out == [messages.query('PREPARE "s1" AS SELECT'), messages.query("DEALLOCATE s1")]
    assert b"s1" not in rewriter.statements.named


def test_protocol_use_of_the_clients_sql_statement(server: ServerConnection) -> None:
    """PostgreSQL has one namespace: Bind/Describe/Close of a SQL-prepared name work, with the client's own."""
    rewriter = StatementRewriter()
    rewriter.sql_prepared[b"p2"] = b"PREPARE p2 AS SELECT 2"
    sent = send(rewriter, server, bind(b"p2"), describe(b"p2"))
    assert kinds(sent) == "PBECBD", "re-created first (hidden), then the client's Bind and Describe as they are"
    owed(server)
    assert send(rewriter, server, close(b"p2")) == [("C", b"Sp2\x00")]
    assert rewriter.sql_prepared == {} and server.statements.sql == {}


def test_statements_parsed_around_a_clients_setting_change_are_not_shared(server: ServerConnection) -> None:
    """A Parse pipelined behind SET TimeZone was keyed by the old value but parsed under the new one: when
    PostgreSQL reports the change, what this lending parsed is retired. The pooler's own sync (a hidden SET, whose
    reply is swallowed) retires nothing."""
    rewriter = StatementRewriter()
    server_name = name_in(send(rewriter, server, parse(b"", b"select '03:00'::timetz"))[0][1])
    complete(server)
    server.ledger.inject()  # a parameter sync in flight
    server._on_parameter_status(b"TimeZone\x00Asia/Kolkata\x00")
    server._on_parameter_status(b"application_name\x00x\x00")
    assert server_name in server.statements and not server.to_close
    server.ledger.swallowed_ready(codes.TX_IDLE)
    server._on_parameter_status(b"application_name\x00y\x00")  # not a parse setting
    assert not server.to_close
    server._on_parameter_status(b"TimeZone\x00Asia/Tokyo\x00")
    assert server.to_close == {server_name: False} and server_name not in server.statements


@pytest.mark.parametrize(("setting", "retired"), [("transform_null_equals", True), ("statement_timeout", False)])
def test_statements_parsed_before_an_unreported_setting_is_adopted_are_retired(
    app: Application, pool: Any, setting: str, retired: bool
) -> None:
    """A SET PostgreSQL does not report becomes the client's (server.py reads the session's settings when the
    transaction ends): statements this lending parsed under it were keyed without it. Only settings statements
    are keyed by count: a SET statement_timeout in every transaction must not make the cache churn."""
    server = new_server(pool)
    client = ClientConnection(app.context)
    client.pool = pool
    client.transaction_mode = False  # no release at the end of the capture: only its bookkeeping is looked at
    client.track_statements()
    assert client.rewriter is not None
    server_name = name_in(send(client.rewriter, server, parse(b"", b"select null = null"))[0][1])
    complete(server)
    server.client = client
    server._captured = {setting: "on" if setting == "transform_null_equals" else "5s"}
    server._capture_done(b"")
    assert (server_name in server.to_close) is retired


def test_long_names_are_one_statement_when_their_first_63_bytes_agree(server: ServerConnection) -> None:
    """As in PostgreSQL (NAMEDATALEN): a Parse of a longer name sharing them is a duplicate (42P05, naming the
    statement as the client wrote it this time), a Bind of any such name finds the statement."""
    rewriter = StatementRewriter()
    long_a, long_b = b"n" * 63 + b"a", b"n" * 63 + b"b"
    send(rewriter, server, parse(long_a, b"select 1"))
    complete(server)
    send(rewriter, server, parse(long_b, b"select 2"))
    duplicate = list(server.ledger.expect)[-1]
    assert duplicate.client_name == long_b
    server_name = rewriter.statements.named[b"n" * 63].name
    error = messages.error_response("42P05", f'prepared statement "{server_name.decode()}" x', severity="ERROR")
    assert b'"' + long_b + b'"' in rewriter.unmask(error, duplicate)
    owed(server)
    sent = send(rewriter, server, bind(long_b), describe(long_b))
    assert server_name in sent[0][1] and server_name in sent[1][1]


def test_a_bound_statement_tells_the_server_what_its_text_suggests(server: ServerConnection) -> None:
    """set_config() or an advisory lock in a statement's text (found once per pool statement): each Bind that
    runs it arms the server's read-back of settings or its check for leftovers, also when the Parse was answered
    locally long before (sessionhints.py)."""
    rewriter = StatementRewriter()
    send(rewriter, server, parse(b"lock", b"select pg_advisory_lock($1)"), parse(b"plain", b"select $1"))
    assert not server.check_leftovers  # nothing ran yet
    send(rewriter, server, bind(b"plain"))
    assert not server.check_leftovers and not server.capture_due
    send(rewriter, server, bind(b"lock"))
    assert server.check_leftovers
    send(rewriter, server, parse(b"", b"select set_config('x.y', $1, false)"), bind(b""))
    assert server.capture_due
