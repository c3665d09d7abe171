"""Statement registry, per-server LRU, message helpers and SQL command recognition (no sockets)."""

from __future__ import annotations

import pytest

from pg_doorman.client import is_lone_begin
from pg_doorman.prepared import (
    ClientStatements,
    ServerStatements,
    StatementRegistry,
    name_after_first_cstring,
    parse_parse,
    parse_sql_statement_command,
    rebuild_with_name,
)
from pg_doorman.protocol import messages
from pg_doorman.protocol.framing import MessageBuffer


def test_registry_keys_on_query_and_types() -> None:
    reg = StatementRegistry(10)
    a = reg.get(b"select $1", b"\x00\x01\x00\x00\x00\x17")
    b = reg.get(b"select $1", b"\x00\x01\x00\x00\x00\x17")
    c = reg.get(b"select $1", b"\x00\x01\x00\x00\x00\x19")
    d = reg.get(b"select $2", b"\x00\x01\x00\x00\x00\x17")
    assert a is b
    assert len({a.name, c.name, d.name}) == 3
    assert reg.hits == 1 and reg.misses == 3
    assert a.name.startswith(b"DOORMAN_")


def test_registry_parse_message_is_valid_parse() -> None:
    stmt = StatementRegistry(4).get(b"select 1", b"\x00\x00")
    buf = MessageBuffer()
    buf.feed(stmt.parse_message)
    [(kind, body)] = list(buf.messages())
    assert kind == ord("P")
    parsed = parse_parse(body)
    assert (parsed.name, parsed.query, parsed.types) == (stmt.name, b"select 1", b"\x00\x00")


def test_registry_evicts_least_recently_used() -> None:
    reg = StatementRegistry(2)
    a = reg.get(b"a", b"\x00\x00")
    reg.get(b"b", b"\x00\x00")
    assert reg.get(b"a", b"\x00\x00") is a  # a is now most recent
    reg.get(b"c", b"\x00\x00")  # evicts b
    assert reg.evictions == 1
    assert reg.get(b"a", b"\x00\x00") is a
    assert len(reg) == 2


def test_server_statements_lru_returns_evicted_name() -> None:
    server = ServerStatements(2)
    assert server.add(b"s1") is None
    assert server.add(b"s2") is None
    assert b"s1" in server  # touch: s2 becomes the oldest
    assert server.add(b"s3") == (b"s2", True)  # parsed in this lending: not to be taken back
    assert b"s2" not in server and b"s1" in server and b"s3" in server
    server.discard(b"s1")
    assert len(server) == 1


def test_server_statements_unbounded_when_zero() -> None:
    server = ServerStatements(0)
    for i in range(100):
        assert server.add(b"s%d" % i) is None
    assert len(server) == 100


def test_client_statements_unnamed_apart() -> None:
    reg = StatementRegistry(4)
    cs = ClientStatements()
    stmt = reg.get(b"q", b"\x00\x00")
    cs.unnamed = stmt
    assert cs.lookup(b"") is stmt
    assert cs.lookup(b"x") is None


def test_bind_rename() -> None:
    body = b"portal\x00stmt\x00\x00\x00\x00\x01\x00\x00\x00\x01x\x00\x00"
    start, end = name_after_first_cstring(body)
    assert body[start:end] == b"stmt"
    msg = rebuild_with_name(b"B", body, start, end, b"DOORMAN_7")
    assert msg[:1] == b"B"
    assert int.from_bytes(msg[1:5], "big") == len(msg) - 1
    assert msg[5:] == b"portal\x00DOORMAN_7\x00\x00\x00\x00\x01\x00\x00\x00\x01x\x00\x00"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"PREPARE foo AS select 1\x00", ("prepare", b"foo")),
        (b'prepare "Foo" (int) as select $1', ("prepare", b"Foo")),
        (b"  EXECUTE foo(1, 'a')", ("execute", b"foo")),
        (b"execute Foo;", ("execute", b"foo")),
        (b"DEALLOCATE foo;", ("deallocate", b"foo")),
        (b"deallocate prepare Foo", ("deallocate", b"foo")),
        (b"DEALLOCATE ALL", ("deallocate", b"")),
        (b'deallocate "all"', ("deallocate", b"all")),
        (b"prepare a as select 1; select 2", None),
        (b"select 1", None),
        (b"executes foo", None),
        (b"prepared_x", None),
    ],
)
def test_sql_statement_commands(text: bytes, expected: tuple[str, bytes] | None) -> None:
    assert parse_sql_statement_command(text) == expected


@pytest.mark.parametrize(
    ("sql", "deferred"),
    [
        ("begin", True),
        ("BEGIN;", True),
        ("  Begin Transaction ; ", True),
        ("begin work", True),
        ("START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY", True),
        ("BEGIN ISOLATION LEVEL REPEATABLE READ", True),
        ("begin read write not deferrable", True),
        ("begin; select 1", False),
        ("beginx", False),
        ("begin isolation level bogus", False),
        ("select 1", False),
        ("start transaction; commit", False),
    ],
)
def test_lone_begin(sql: str, deferred: bool) -> None:
    assert is_lone_begin(messages.query(sql)) is deferred


def test_lone_begin_needs_exactly_one_message() -> None:
    assert not is_lone_begin(messages.query("begin") + messages.query("select 1"))


def test_long_sql_names_are_clipped_as_postgresql_does() -> None:
    assert parse_sql_statement_command(b"EXECUTE " + b"x" * 70) == ("execute", b"x" * 63)
    name = "é" * 40  # 80 bytes: clipped before the character the 64th byte would split
    assert parse_sql_statement_command(f'DEALLOCATE "{name}"'.encode()) == ("deallocate", ("é" * 31).encode())
