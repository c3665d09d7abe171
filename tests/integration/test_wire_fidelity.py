"""Byte-for-byte protocol fidelity: the same message sequence sent to PostgreSQL directly and through pg_doorman
must get the same replies, message by message.

pg_doorman runs in transaction mode with ``pool_size: 2`` and more clients than servers (one pg_doorman process
for the module, a private pool per test, so every test starts with no server connection and no prepared
statement).  Two "blocker" clients take turns holding one of the two servers in an open transaction, so each new
transaction of the client under test lands on the *other* server than its previous one (the harness self-test
checks this with ``pg_backend_pid()``).
Statements prepared in one transaction are therefore missing on the server of the next one, which exercises the
pooler's statement remapping (hidden Parse, synthetic ParseComplete/CloseComplete, skip-after-error).

Each sequence runs three times: directly against PostgreSQL, through pg_doorman with a fresh pool ("cold": no
statement prepared anywhere yet) and once more through the same pg_doorman with a new client connection ("warm":
the pool already has the statements prepared on both servers).  Both pooled runs must equal the direct one.

Normalized, because they legitimately differ: BackendKeyData bodies; ErrorResponse/NoticeResponse fields F (file),
L (line) and R (routine); and W (context) only in sequences marked ``ignore_context``, for an error the pooler would
have to emulate itself (none is now: even the 42P05 for a Parse of a name in use is PostgreSQL's own).  Everything
else is compared byte for byte.  Every run ends with a lone Sync
("probe") so that stray messages after the last step are caught, and the pooled runs finally check that the client
left no server behind (the next rotation must get a server within ``ROTATE_TIMEOUT`` seconds).
"""

from __future__ import annotations

import difflib
import os
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from wire_client import (
    Msg,
    WireClient,
    WireError,
    bind,
    build_error_body,
    close,
    copy_data,
    copy_done,
    copy_fail,
    describe,
    describe_message,
    error_fields,
    execute,
    flush,
    function_call,
    parse,
    query,
    split_frames,
    sync,
)

from pg_doorman.devcluster import TempPostgres

HOST = "127.0.0.1"
USER = "app"
PASSWORD = "app_pass"
DB = "appdb"
STARTUP_PARAMS = {"application_name": "wire_fidelity"}
STEP_TIMEOUT = 10.0  # a step that waits for ReadyForQuery
UNTIL_TIMEOUT = 5.0  # a step that waits for a given message type (Flush flows, COPY start)
QUIET = 0.2  # a step with no message to wait for: read until the socket is silent this long
TAIL_QUIET = 0.1  # after a message-type wait: catch anything that trails it
ROTATE_TIMEOUT = 2.0
BIG = 1_500_000

# ---------------------------------------------------------------- sequences


@dataclass(frozen=True)
class Ctx:
    table: str
    int4pl_oid: int


@dataclass(frozen=True)
class Step:
    data: bytes
    until: int | str | None  # int: that many ReadyForQuery; str: a message of one of these types; None: quiet
    label: str


_AUTO: Any = object()


def step(*msgs: bytes, until: int | str | None = _AUTO, label: str = "") -> Step:
    """One write of ``msgs``; by default wait for one ReadyForQuery per Sync/Query/FunctionCall sent."""
    frames = [f for m in msgs for f in split_frames(m)]
    if until is _AUTO:
        count = sum(1 for f in frames if f[:1] in (b"S", b"Q", b"F"))
        until = count if count else None
    if not label:
        kinds = [f[:1].decode() for f in frames]
        label = " ".join(kinds) if len(kinds) <= 16 else " ".join(kinds[:16]) + f" ... ({len(kinds)} messages)"
    return Step(b"".join(msgs), until, label)


def q(sql: str, **kwargs: Any) -> Step:
    return step(query(sql), **kwargs)


def pbes(sql: str, params: tuple[str | bytes | None, ...] = (), name: str = "") -> list[bytes]:
    """Parse/Bind/Execute of one statement (no Sync)."""
    return [parse(name, sql), bind("", name, params), execute()]


@dataclass(frozen=True)
class Sequence:
    name: str
    build: Callable[[Ctx], list[Step]]
    setup: str = ""
    ignore_context: bool = False
    doc: str = ""
    # A documented difference from a direct connection (README, "Differences from a direct connection"):
    # (variant, PostgreSQL's transcript) -> exactly what pg_doorman sends instead. Everything else must match.
    known_difference: Callable[[str, Transcript], Transcript] | None = None


SEQUENCES: dict[str, Sequence] = {}
TABLE_SETUP = "DROP TABLE IF EXISTS {t}; CREATE TABLE {t} (id int, val text)"


def seq(
    *,
    setup: str = "",
    ignore_context: bool = False,
    known_difference: Callable[[str, Transcript], Transcript] | None = None,
) -> Callable[[Callable[[Ctx], list[Step]]], Callable[[Ctx], list[Step]]]:
    def register(fn: Callable[[Ctx], list[Step]]) -> Callable[[Ctx], list[Step]]:
        name = fn.__name__
        assert name not in SEQUENCES, name
        SEQUENCES[name] = Sequence(name, fn, setup, ignore_context, (fn.__doc__ or "").strip(), known_difference)
        return fn

    return register


# ---------------------------------------------------------------- documented differences


def _replace_step(transcript: Transcript, index: int, msgs: list[Msg]) -> Transcript:
    return [(label, msgs if i == index else list(m)) for i, (label, m) in enumerate(transcript)]


def _error_msg(sqlstate: str, text: str) -> Msg:
    return Msg("E", build_error_body([("S", "ERROR"), ("V", "ERROR"), ("C", sqlstate), ("M", text)]))


def _app_name_status(value: str) -> Msg:
    return Msg("S", b"application_name\0" + value.encode() + b"\0")


def _reset_goes_to_pool_application_name(variant: str, t: Transcript) -> Transcript:
    """RESET application_name returns to the server connection's own startup value (the pool's
    application_name), not to the client's: pg_doorman applies the client's startup value with SET."""
    step2 = [_app_name_status("pg_doorman") if m.type == "S" else m for m in t[1][1]]
    row = Msg("D", struct.pack("!hi", 1, len(b"pg_doorman")) + b"pg_doorman")
    step3 = [row if m.type == "D" else m for m in t[2][1]]
    return _replace_step(_replace_step(t, 1, step2), 2, step3)


def _discard_all_reports_pool_application_name(variant: str, t: Transcript) -> Transcript:
    """DISCARD ALL resets application_name to the pool's value, and PostgreSQL reports that change."""
    msgs = list(t[1][1])
    msgs.insert(len(msgs) - 1, _app_name_status("pg_doorman"))
    return _replace_step(t, 1, msgs)


def _sql_and_protocol_namespaces_apart(index: int, name: str) -> Callable[[str, Transcript], Transcript]:
    """In transaction mode SQL-level PREPARE and protocol-level Parse names are separate namespaces: a protocol
    Bind cannot use a SQL-PREPAREd name and SQL EXECUTE cannot use a protocol statement (26000)."""

    def transform(variant: str, t: Transcript) -> Transcript:
        error = _error_msg("26000", f'prepared statement "{name}" does not exist')
        return _replace_step(t, index, [error, t[index][1][-1]])

    return transform


def _no_hidden_parse_in_failed_transaction(variant: str, t: Transcript) -> Transcript:
    """A statement that was never prepared on the server a client lands on cannot be prepared there inside a
    failed transaction: Describe reports 25P02 (the cold run only; once the server has it, it matches)."""
    if variant != "cold":
        return t
    error = _error_msg("25P02", "current transaction is aborted, commands ignored until end of transaction block")
    return _replace_step(t, 3, [error, t[3][1][-1]])


# --- simple query protocol


@seq()
def simple_select(c: Ctx) -> list[Step]:
    return [q("select 1 as one, 'two'::text as two, null::int as three")]


@seq()
def multi_statement_three_results(c: Ctx) -> list[Step]:
    return [q("select 1 as a; select 2 as b, 3 as c; select 'x' as d")]


@seq()
def syntax_error_simple(c: Ctx) -> list[Step]:
    return [q("selec 1"), q("select 2")]


@seq()
def error_mid_multi_statement(c: Ctx) -> list[Step]:
    return [q("select 1; select 1/0; select 3"), q("select 4")]


@seq()
def empty_query(c: Ctx) -> list[Step]:
    return [q("")]


@seq()
def semicolon_only_query(c: Ctx) -> list[Step]:
    return [q(";"), q(" ; ; ")]


@seq()
def notice_raise(c: Ctx) -> list[Step]:
    return [q("DO $$BEGIN RAISE NOTICE 'hello %', 42; END$$")]


@seq()
def warning_and_notice_then_select(c: Ctx) -> list[Step]:
    return [q("DO $$BEGIN RAISE WARNING 'careful'; RAISE NOTICE 'second'; END$$; select 1")]


@seq()
def set_show_multi_statement(c: Ctx) -> list[Step]:
    return [q("SET extra_float_digits = 1; SHOW extra_float_digits; select 0.1::float8 as f")]


@seq()
def set_application_name_parameter_status(c: Ctx) -> list[Step]:
    """SET of a reported parameter: ParameterStatus is forwarded in place."""
    return [q("SET application_name = 'wf_changed'; SHOW application_name")]


@seq()
def three_queries_one_write(c: Ctx) -> list[Step]:
    return [step(query("select 1"), query("select 1/0"), query("select 3"))]


@seq()
def large_row_simple(c: Ctx) -> list[Step]:
    return [q(f"select repeat('x', {BIG}) as big, 1 as small")]


@seq()
def many_rows_simple(c: Ctx) -> list[Step]:
    return [q("select g, md5(g::text) from generate_series(1, 10000) g")]


@seq()
def large_query_text(c: Ctx) -> list[Step]:
    return [q("select length('" + "y" * BIG + "') as n")]


@seq(setup=TABLE_SETUP)
def explicit_transaction_simple(c: Ctx) -> list[Step]:
    return [
        q("BEGIN"),
        q(f"insert into {c.table} values (1, 'a'), (2, 'b')"),
        q(f"select * from {c.table} order by id"),
        q("COMMIT"),
        q(f"select count(*) from {c.table}"),
    ]


@seq()
def error_in_transaction_then_rollback(c: Ctx) -> list[Step]:
    return [q("BEGIN"), q("select 1/0"), q("select 1"), q("ROLLBACK"), q("select 2")]


@seq()
def begin_lowercase_semicolon(c: Ctx) -> list[Step]:
    return [q("begin;"), q("select 1"), q("commit;")]


@seq()
def begin_commit_empty_transaction(c: Ctx) -> list[Step]:
    return [q("BEGIN"), q("COMMIT"), q("COMMIT")]


@seq()
def begin_twice_warning(c: Ctx) -> list[Step]:
    return [q("BEGIN"), q("BEGIN"), q("ROLLBACK")]


@seq(setup=TABLE_SETUP)
def begin_isolation_read_only(c: Ctx) -> list[Step]:
    return [
        q("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY"),
        q("SHOW transaction_isolation"),
        q(f"insert into {c.table} values (1, 'x')"),
        q("ROLLBACK"),
    ]


@seq()
def savepoint_rollback_to(c: Ctx) -> list[Step]:
    return [q("BEGIN"), q("SAVEPOINT a"), q("select 1/0"), q("ROLLBACK TO SAVEPOINT a"), q("select 2"), q("COMMIT")]


@seq()
def cursor_declare_fetch(c: Ctx) -> list[Step]:
    return [
        q("BEGIN"),
        q("DECLARE cur CURSOR FOR select generate_series(1, 5) as g"),
        q("FETCH 2 FROM cur"),
        q("FETCH ALL FROM cur"),
        q("CLOSE cur"),
        q("COMMIT"),
    ]


# --- COPY


@seq(setup=TABLE_SETUP)
def copy_from_stdin_simple(c: Ctx) -> list[Step]:
    return [
        q(f"COPY {c.table} FROM STDIN", until="G"),
        step(copy_data("1\tone\n"), copy_data("2\ttwo\n3\t\\N\n"), copy_done(), until=1),
        q(f"select * from {c.table} order by id"),
    ]


@seq(setup=TABLE_SETUP)
def copy_from_stdin_copyfail(c: Ctx) -> list[Step]:
    return [
        q(f"COPY {c.table} FROM STDIN", until="G"),
        step(copy_data("1\tone\n"), copy_fail("client gave up"), until=1),
        q(f"select count(*) from {c.table}"),
    ]


@seq(setup=TABLE_SETUP)
def copy_from_stdin_bad_row(c: Ctx) -> list[Step]:
    return [
        q(f"COPY {c.table} FROM STDIN", until="G"),
        step(copy_data("1\tone\textra\n"), copy_done(), until=1),
        q(f"select count(*) from {c.table}"),
    ]


@seq(setup=TABLE_SETUP)
def copy_from_stdin_late_copy_messages_after_error(c: Ctx) -> list[Step]:
    """The server rejects a row while the client is still sending: PostgreSQL ignores the late CopyData/CopyDone."""
    return [
        q(f"COPY {c.table} FROM STDIN", until="G"),
        step(copy_data("not_a_number\tx\n"), until=1),
        step(copy_data("2\ttwo\n"), copy_done(), until=None),
    ]


@seq()
def copy_to_stdout(c: Ctx) -> list[Step]:
    return [q("COPY (select g, g * 2 from generate_series(1, 5) g) TO STDOUT")]


@seq()
def copy_to_stdout_csv_header(c: Ctx) -> list[Step]:
    return [q("COPY (select g as num, 'v' || g as txt from generate_series(1, 3) g) TO STDOUT (FORMAT csv, HEADER)")]


@seq()
def copy_to_stdout_binary(c: Ctx) -> list[Step]:
    return [q("COPY (select g, g::text from generate_series(1, 3) g) TO STDOUT WITH (FORMAT binary)")]


@seq()
def copy_to_stdout_large_row(c: Ctx) -> list[Step]:
    return [q(f"COPY (select repeat('c', {BIG})) TO STDOUT")]


@seq(setup=TABLE_SETUP)
def copy_from_stdin_large_row(c: Ctx) -> list[Step]:
    return [
        q(f"COPY {c.table} FROM STDIN", until="G"),
        step(copy_data("1\t" + "L" * BIG + "\n"), copy_done(), until=1),
        q(f"select id, length(val) from {c.table}"),
    ]


@seq(setup=TABLE_SETUP)
def copy_in_transaction_rolled_back(c: Ctx) -> list[Step]:
    return [
        q("BEGIN"),
        q(f"COPY {c.table} FROM STDIN", until="G"),
        step(copy_data("1\tone\n"), copy_done(), until=1),
        q(f"select count(*) from {c.table}"),
        q("ROLLBACK"),
        q(f"select count(*) from {c.table}"),
    ]


@seq()
def copy_to_stdout_extended(c: Ctx) -> list[Step]:
    return [step(parse("", "COPY (select g from generate_series(1, 4) g) TO STDOUT"), bind(), execute(), sync())]


@seq(setup=TABLE_SETUP)
def copy_from_stdin_extended(c: Ctx) -> list[Step]:
    """libpq style: P/B/E/S, then CopyData/CopyDone/Sync. PostgreSQL ignores the Sync that arrives during COPY."""
    return [
        step(parse("", f"COPY {c.table} FROM STDIN"), bind(), execute(), sync(), until="G"),
        step(copy_data("7\tseven\n"), copy_done(), sync(), until=1),
        q(f"select * from {c.table}"),
    ]


# --- extended query protocol: statements


@seq()
def unnamed_parse_bind_execute(c: Ctx) -> list[Step]:
    return [step(parse("", "select 1 as a, 'b'::text as b"), bind(), execute(), sync())]


@seq()
def unnamed_with_parameter_types(c: Ctx) -> list[Step]:
    return [step(parse("", "select $1 + 1 as next", [23]), bind("", "", ["41"]), describe("P"), execute(), sync())]


@seq()
def named_statement_across_two_syncs(c: Ctx) -> list[Step]:
    return [
        step(parse("s1", "select $1::int * 2 as doubled"), sync()),
        step(bind("", "s1", ["21"]), execute(), sync()),
    ]


@seq()
def named_statement_three_transactions(c: Ctx) -> list[Step]:
    return [
        step(parse("s1", "select $1::text || '!' as shout"), sync()),
        step(bind("", "s1", ["a"]), execute(), sync()),
        step(describe("S", "s1"), bind("", "s1", ["b"]), execute(), sync()),
        step(bind("", "s1", ["c"]), execute(), sync()),
    ]


@seq()
def reparse_same_name_error(c: Ctx) -> list[Step]:
    return [
        step(parse("s1", "select 1 as v"), sync()),
        step(parse("s1", "select 2 as v"), sync()),
        step(bind("", "s1"), execute(), sync()),
    ]


@seq()
def reparse_same_name_same_batch(c: Ctx) -> list[Step]:
    return [
        step(parse("s1", "select 1 as v"), parse("s1", "select 1 as v"), bind("", "s1"), execute(), sync()),
        step(bind("", "s1"), execute(), sync()),
    ]


@seq()
def reparse_same_name_in_transaction(c: Ctx) -> list[Step]:
    return [
        q("BEGIN"),
        step(parse("s1", "select 1 as v"), sync()),
        step(parse("s1", "select 2 as v"), bind("", "s1"), execute(), sync()),
        q("ROLLBACK"),
        step(bind("", "s1"), execute(), sync()),
    ]


@seq()
def reparse_same_name_later_transaction_error_is_postgresqls(c: Ctx) -> list[Step]:
    """The 42P05 for a name already in use, with every field compared (also W, context): it must be PostgreSQL's
    own error, not one raised by a PL/pgSQL block on the pooler's behalf."""
    return [
        step(parse("s1", "select 1 as v"), sync()),
        step(parse("s1", "select 2 as v"), sync()),
        q("BEGIN"),
        step(parse("s1", "select 3 as v"), bind("", "s1"), execute(), sync()),
        q("ROLLBACK"),
        step(bind("", "s1"), execute(), sync()),
    ]


@seq()
def long_statement_names(c: Ctx) -> list[Step]:
    """PostgreSQL keeps NAMEDATALEN - 1 (63) bytes of a statement name: two longer names that share them are one
    statement. A name of 10 kB is as good as any."""
    long_a, long_b, huge = "n" * 63 + "a", "n" * 63 + "b", "h" * 10_000
    return [
        step(parse(long_a, "select 1 as v"), sync()),
        step(parse(long_b, "select 2 as v"), sync()),
        step(bind("", long_b), execute(), sync()),
        step(parse(huge, "select 3 as v"), bind("", huge), execute(), close("S", long_a), sync()),
        step(bind("", long_b), execute(), sync()),
    ]


@seq()
def unnamed_parse_twice(c: Ctx) -> list[Step]:
    return [step(parse("", "select 1 as v"), parse("", "select 2 as v"), bind(), execute(), sync())]


@seq()
def unnamed_reparse_across_syncs(c: Ctx) -> list[Step]:
    return [
        step(parse("", "select 'first' as v"), sync()),
        step(parse("", "select 'second' as v"), sync()),
        step(bind(), execute(), sync()),
    ]


@seq()
def bind_nonexistent_statement(c: Ctx) -> list[Step]:
    return [step(bind("", "nosuch"), execute(), sync()), step(bind("", ""), execute(), sync())]


@seq()
def close_statement_then_bind(c: Ctx) -> list[Step]:
    return [
        step(parse("s1", "select 1"), sync()),
        step(close("S", "s1"), sync()),
        step(bind("", "s1"), execute(), sync()),
    ]


@seq()
def close_statement_then_bind_same_batch(c: Ctx) -> list[Step]:
    return [
        step(parse("s1", "select 1"), sync()),
        step(close("S", "s1"), bind("", "s1"), execute(), sync()),
    ]


@seq()
def close_nonexistent_statement_and_portal(c: Ctx) -> list[Step]:
    return [step(close("S", "nosuch"), close("P", "nosuch"), close("S", ""), close("P", ""), sync())]


@seq()
def close_then_reparse_same_name(c: Ctx) -> list[Step]:
    return [
        step(parse("s1", "select 1 as v"), sync()),
        step(close("S", "s1"), parse("s1", "select 2 as v"), bind("", "s1"), execute(), sync()),
        step(bind("", "s1"), execute(), sync()),
    ]


@seq()
def two_names_same_text_close_one(c: Ctx) -> list[Step]:
    return [
        step(parse("a", "select 42 as v"), parse("b", "select 42 as v"), sync()),
        step(close("S", "a"), bind("", "b"), execute(), sync()),
        step(bind("", "a"), execute(), sync()),
        step(bind("", "b"), execute(), sync()),
    ]


@seq()
def same_text_different_parameter_types(c: Ctx) -> list[Step]:
    return [
        step(parse("a", "select $1 as v", [23]), parse("b", "select $1 as v", [25]), sync()),
        step(describe("S", "a"), describe("S", "b"), sync()),
    ]


@seq()
def unnamed_reparse_different_types(c: Ctx) -> list[Step]:
    return [
        step(
            parse("", "select $1 as v", [23]),
            bind("", "", ["1"]),
            execute(),
            parse("", "select $1 as v", [25]),
            bind("", "", ["1"]),
            execute(),
            sync(),
        )
    ]


# --- Describe


@seq()
def describe_statement(c: Ctx) -> list[Step]:
    return [step(parse("s1", "select $1::int4 as a, $2::text as b"), describe("S", "s1"), sync())]


@seq()
def describe_unnamed_statement_next_transaction(c: Ctx) -> list[Step]:
    return [
        step(parse("", "select $1::int8 as x"), sync()),
        step(describe("S", ""), sync()),
        step(bind("", "", ["5"]), describe("P"), execute(), sync()),
    ]


@seq()
def describe_portal(c: Ctx) -> list[Step]:
    return [step(parse("", "select 1 as a, now() is not null as b"), bind(), describe("P"), execute(), sync())]


@seq(setup=TABLE_SETUP)
def describe_statement_without_result(c: Ctx) -> list[Step]:
    return [
        step(parse("ins", f"insert into {c.table} values ($1, $2)"), describe("S", "ins"), sync()),
        step(bind("", "ins", ["1", "x"]), describe("P"), execute(), sync()),
    ]


@seq()
def describe_empty_query_extended(c: Ctx) -> list[Step]:
    return [step(parse("", ""), describe("S", ""), bind(), describe("P"), execute(), sync())]


# --- Execute / portals


@seq()
def execute_row_limit_portal_suspended(c: Ctx) -> list[Step]:
    return [
        step(
            parse("", "select g from generate_series(1, 5) g"),
            bind(),
            execute("", 2),
            execute("", 2),
            execute("", 0),
            sync(),
        )
    ]


@seq()
def named_portal_row_limit_in_transaction(c: Ctx) -> list[Step]:
    return [
        q("BEGIN"),
        step(parse("s1", "select generate_series(1, 4) as g"), bind("p1", "s1"), execute("p1", 1), sync()),
        step(execute("p1", 0), sync()),
        q("COMMIT"),
    ]


@seq()
def named_portal_gone_after_sync(c: Ctx) -> list[Step]:
    return [
        step(parse("", "select generate_series(1, 3)"), bind("p1", ""), execute("p1", 1), sync()),
        step(execute("p1"), sync()),
    ]


@seq()
def named_portal_describe_execute(c: Ctx) -> list[Step]:
    return [step(parse("s1", "select 'p' as col"), bind("p1", "s1"), describe("P", "p1"), execute("p1"), sync())]


@seq()
def close_portal_then_execute(c: Ctx) -> list[Step]:
    return [step(parse("", "select 1"), bind("p1", ""), close("P", "p1"), execute("p1"), sync())]


# --- pipelines


@seq()
def pipeline_many_statements_one_sync(c: Ctx) -> list[Step]:
    msgs = [m for i in range(5) for m in pbes(f"select {i} as n")]
    return [step(*msgs, sync())]


@seq()
def pipeline_error_in_middle(c: Ctx) -> list[Step]:
    return [
        step(*pbes("select 1"), *pbes("select 1/0"), *pbes("select 3"), sync()),
        step(*pbes("select 4"), sync()),
    ]


@seq()
def pipeline_parse_error_in_middle_named(c: Ctx) -> list[Step]:
    return [
        step(
            parse("s1", "select 1 as v"),
            bind("", "s1"),
            execute(),
            parse("s2", "selec 2"),
            bind("", "s2"),
            execute(),
            parse("s3", "select 3 as v"),
            sync(),
        ),
        step(bind("", "s1"), execute(), sync()),
        step(bind("", "s2"), execute(), sync()),
        step(bind("", "s3"), execute(), sync()),
    ]


@seq()
def pipeline_two_syncs_one_write(c: Ctx) -> list[Step]:
    return [step(*pbes("select 1 as a"), sync(), *pbes("select 2 as b"), sync())]


@seq()
def pipeline_errors_in_separate_syncs_one_write(c: Ctx) -> list[Step]:
    return [step(parse("", "selec 1"), sync(), *pbes("select 1/0"), sync(), *pbes("select 3"), sync())]


@seq()
def extended_then_simple_query_without_sync(c: Ctx) -> list[Step]:
    return [step(*pbes("select 1 as a"), query("select 2 as b"), until=1), step(sync())]


@seq()
def notice_extended(c: Ctx) -> list[Step]:
    return [step(*pbes("DO $$BEGIN RAISE NOTICE 'from extended'; END$$"), sync())]


# --- Flush flows


@seq()
def flush_parse_bind_describe_execute_then_sync(c: Ctx) -> list[Step]:
    return [
        step(parse("", "select 1 as a"), bind(), describe("P"), execute(), flush(), until="CE"),
        step(sync()),
    ]


@seq()
def flush_named_parse_then_use(c: Ctx) -> list[Step]:
    return [
        step(parse("s1", "select $1::int as v"), flush(), until="1"),
        step(bind("", "s1", ["5"]), execute(), flush(), until="CE"),
        step(bind("", "s1", ["6"]), execute(), sync()),
    ]


@seq()
def flush_alone_then_sync(c: Ctx) -> list[Step]:
    return [step(flush()), step(sync())]


@seq()
def sync_alone(c: Ctx) -> list[Step]:
    return [step(sync()), step(sync(), sync())]


@seq()
def flush_describe_statement_asyncpg_style(c: Ctx) -> list[Step]:
    return [
        step(parse("", "select $1::int as v"), describe("S", ""), flush(), until="Tn"),
        step(bind("", "", ["7"]), execute(), sync()),
    ]


@seq()
def flush_error_then_sync(c: Ctx) -> list[Step]:
    return [step(*pbes("select 1/0"), flush(), until="E"), step(sync()), step(*pbes("select 2"), sync())]


@seq()
def flush_error_then_more_messages_before_sync(c: Ctx) -> list[Step]:
    """After an error PostgreSQL ignores everything up to Sync, also a Parse of a statement the server knows."""
    return [
        step(parse("s1", "select 1 as v"), *pbes("select 1/0"), flush(), until="E"),
        step(*pbes("select 1 as v"), sync()),
        step(bind("", "s1"), execute(), sync()),
    ]


@seq()
def close_after_error_before_sync(c: Ctx) -> list[Step]:
    """A Close after an error (before Sync) is skipped by PostgreSQL: the statement must survive."""
    return [
        step(parse("s1", "select 1 as v"), sync()),
        step(*pbes("select 1/0"), flush(), until="E"),
        step(close("S", "s1"), sync()),
        step(bind("", "s1"), execute(), sync()),
    ]


@seq()
def flush_after_every_message(c: Ctx) -> list[Step]:
    return [
        step(parse("s1", "select $1::text as t"), flush(), until="1"),
        step(bind("", "s1", ["x"]), flush(), until="2"),
        step(describe("P"), flush(), until="Tn"),
        step(execute(), flush(), until="CE"),
        step(close("S", "s1"), flush(), until="3"),
        step(sync()),
    ]


# --- errors in Parse/Bind, transactions with the extended protocol


@seq()
def parse_error_named_then_bind(c: Ctx) -> list[Step]:
    return [step(parse("s1", "selec 1"), sync()), step(bind("", "s1"), execute(), sync())]


@seq()
def parse_error_then_bind_same_batch(c: Ctx) -> list[Step]:
    return [step(parse("s1", "selec 1"), bind("", "s1"), execute(), sync()), step(bind("", "s1"), execute(), sync())]


@seq()
def bind_wrong_parameter_count_named(c: Ctx) -> list[Step]:
    return [
        step(parse("s1", "select $1::int + $2::int as sum"), sync()),
        step(bind("", "s1", ["1"]), execute(), sync()),
    ]


@seq()
def bind_wrong_parameter_count_unnamed(c: Ctx) -> list[Step]:
    return [step(parse("", "select $1::int as v"), bind("", "", []), execute(), sync())]


@seq(setup=TABLE_SETUP)
def explicit_transaction_extended(c: Ctx) -> list[Step]:
    return [
        q("BEGIN"),
        step(parse("", f"insert into {c.table} values ($1, $2)"), bind("", "", ["1", "a"]), execute(), sync()),
        step(parse("sel", f"select * from {c.table} order by id"), bind("", "sel"), execute(), sync()),
        q("COMMIT"),
        step(bind("", "sel"), execute(), sync()),
    ]


@seq()
def error_in_transaction_extended(c: Ctx) -> list[Step]:
    return [
        q("BEGIN"),
        step(*pbes("select 1/0"), sync()),
        step(*pbes("select 1"), sync()),
        q("ROLLBACK"),
        step(*pbes("select 2"), sync()),
    ]


@seq()
def parse_known_statement_in_aborted_transaction(c: Ctx) -> list[Step]:
    """Parse in an aborted transaction fails with 25P02 even when the server already has that query prepared."""
    return [
        q("BEGIN"),
        step(parse("s1", "select 1 as v"), sync()),
        q("select 1/0"),
        step(parse("s2", "select 1 as v"), sync()),
        q("ROLLBACK"),
        step(bind("", "s2"), execute(), sync()),
    ]


@seq()
def parse_known_statement_after_error_in_same_write(c: Ctx) -> list[Step]:
    """A Query that fails and, in the same write, a Parse of a text the server already has prepared: PostgreSQL
    rejects the Parse with 25P02 (no ParseComplete), so the name does not exist after the ROLLBACK."""
    return [
        q("BEGIN"),
        step(parse("s1", "select 1 as v"), sync()),
        step(query("select 1/0"), parse("s2", "select 1 as v"), bind("", "s2"), execute(), sync(), until=2),
        q("ROLLBACK"),
        step(bind("", "s2"), execute(), sync()),
    ]


@seq()
def parse_known_statement_in_aborted_transaction_pipelined(c: Ctx) -> list[Step]:
    """In a failed transaction, two Parse/Sync pairs in one write: PostgreSQL answers 25P02 to both, also to the
    second one whose text the server already has prepared."""
    return [
        q("BEGIN"),
        step(parse("s1", "select 1 as v"), sync()),
        q("select 1/0"),
        step(parse("s2", "select 2 as v"), sync(), parse("s3", "select 1 as v"), sync()),
        q("ROLLBACK"),
        step(bind("", "s3"), execute(), sync()),
    ]


@seq()
def bind_in_aborted_transaction_on_other_server(c: Ctx) -> list[Step]:
    return [
        step(parse("s1", "select 1 as v"), sync()),
        q("BEGIN"),
        q("select 1/0"),
        step(bind("", "s1"), execute(), sync()),
        q("ROLLBACK"),
        step(bind("", "s1"), execute(), sync()),
    ]


@seq(setup=TABLE_SETUP, known_difference=_no_hidden_parse_in_failed_transaction)
def describe_no_result_statement_in_aborted_transaction(c: Ctx) -> list[Step]:
    """Describe of a statement without result columns is allowed in an aborted transaction."""
    return [
        step(parse("ins", f"insert into {c.table} values (1, 'x')"), sync()),
        q("BEGIN"),
        q("select 1/0"),
        step(describe("S", "ins"), sync()),
        q("ROLLBACK"),
    ]


@seq()
def parse_rollback_in_aborted_transaction(c: Ctx) -> list[Step]:
    """PostgreSQL accepts a Parse of ROLLBACK in a failed transaction (also when the text is known)."""
    return [
        step(parse("rb", "ROLLBACK"), sync()),
        q("BEGIN"),
        q("select 1/0"),
        step(parse("rb2", "ROLLBACK"), bind("", "rb2"), execute(), sync()),
        q("select 1"),
    ]


@seq()
def prepared_rollback_in_aborted_transaction(c: Ctx) -> list[Step]:
    return [
        step(parse("rb", "ROLLBACK"), sync()),
        q("BEGIN"),
        q("select 1/0"),
        step(bind("", "rb"), execute(), sync()),
        q("select 1"),
    ]


@seq()
def simple_query_destroys_unnamed_statement(c: Ctx) -> list[Step]:
    """A simple Query drops the unnamed prepared statement (same transaction, no Sync in between)."""
    return [step(parse("", "select 'unnamed' as v"), query("select 1"), bind(), execute(), sync(), until=2)]


@seq()
def simple_query_destroys_unnamed_statement_across_transactions(c: Ctx) -> list[Step]:
    return [step(parse("", "select 'unnamed' as v"), sync()), q("select 1"), step(bind(), execute(), sync())]


@seq()
def deallocate_protocol_statement(c: Ctx) -> list[Step]:
    return [step(parse("s1", "select 1 as v"), sync()), q("DEALLOCATE s1"), step(bind("", "s1"), execute(), sync())]


@seq()
def deallocate_all_then_bind(c: Ctx) -> list[Step]:
    return [
        step(parse("s1", "select 1 as v"), sync()),
        q("DEALLOCATE ALL"),
        step(bind("", "s1"), execute(), sync()),
        step(parse("s1", "select 2 as v"), bind("", "s1"), execute(), sync()),
    ]


@seq(known_difference=_discard_all_reports_pool_application_name)
def discard_all_then_bind(c: Ctx) -> list[Step]:
    return [
        step(parse("s1", "select 1 as v"), sync()),
        q("DISCARD ALL"),
        step(bind("", "s1"), execute(), sync()),
    ]


@seq()
def unnamed_failed_reparse_drops_statement(c: Ctx) -> list[Step]:
    """A failed Parse of the unnamed statement drops the previous unnamed statement."""
    return [
        step(parse("", "select 'kept?' as v"), sync()),
        step(parse("", "selec 1"), sync()),
        step(bind(), execute(), sync()),
    ]


@seq()
def unnamed_many_texts_one_pipeline(c: Ctx) -> list[Step]:
    msgs = [m for i in range(20) for m in pbes(f"select {i} as n{i % 3}")]
    return [step(*msgs, sync()), step(*msgs[-3:], sync())]


@seq()
def describe_nonexistent_statement_and_portal(c: Ctx) -> list[Step]:
    return [step(describe("S", "nosuch"), sync()), step(describe("P", "nosuch"), sync()), step(describe("P"), sync())]


@seq()
def flush_parse_of_statement_known_on_server(c: Ctx) -> list[Step]:
    """Through the pooler the third Parse finds the query prepared on its server: ParseComplete must still come."""
    return [
        step(parse("a", "select 7 as v"), sync()),
        step(parse("b", "select 7 as v"), sync()),
        step(parse("c", "select 7 as v"), flush(), until="1"),
        step(bind("", "c"), execute(), sync()),
    ]


@seq()
def synthetic_answers_after_slow_execute(c: Ctx) -> list[Step]:
    """ParseComplete/CloseComplete the pooler answers itself must wait for the slow Execute queued before them."""
    return [
        step(parse("a", "select 5 as v"), sync()),
        step(parse("b", "select 5 as v"), sync()),
        step(*pbes("select pg_sleep(0.3)"), parse("c", "select 5 as v"), close("S", "a"), flush(), until="C"),
        step(bind("", "c"), execute(), sync()),
    ]


@seq()
def flush_close_statement_alone(c: Ctx) -> list[Step]:
    return [
        step(parse("s1", "select 1 as v"), sync()),
        step(close("S", "s1"), flush(), until="3"),
        step(sync()),
        step(bind("", "s1"), execute(), sync()),
    ]


@seq()
def flush_describe_statement_on_other_server(c: Ctx) -> list[Step]:
    return [
        step(parse("s1", "select $1::int2 as small"), sync()),
        step(describe("S", "s1"), flush(), until="Tn"),
        step(bind("", "s1", ["3"]), execute(), sync()),
    ]


@seq()
def statement_after_its_table_was_dropped(c: Ctx) -> list[Step]:
    """Bind of a statement whose table is gone: revalidation error directly, the same error through a hidden Parse."""
    return [
        q(f"DROP TABLE IF EXISTS {c.table}_d"),
        q(f"CREATE TABLE {c.table}_d (id int)"),
        step(parse("s1", f"select id from {c.table}_d"), sync()),
        q(f"DROP TABLE {c.table}_d"),
        step(bind("", "s1"), execute(), sync()),
        step(bind("", "s1"), execute(), sync()),
    ]


# --- SQL-level PREPARE / EXECUTE / DEALLOCATE


@seq()
def sql_prepare_execute_deallocate(c: Ctx) -> list[Step]:
    return [
        q("PREPARE p1(int) AS select $1 * 2 as v"),
        q("EXECUTE p1(21)"),
        q("EXECUTE p1(4)"),
        q("DEALLOCATE p1"),
        q("EXECUTE p1(1)"),
    ]


@seq()
def sql_prepare_duplicate_name(c: Ctx) -> list[Step]:
    return [q("PREPARE p1 AS select 1 as v"), q("PREPARE p1 AS select 2 as v"), q("EXECUTE p1"), q("DEALLOCATE p2")]


@seq()
def sql_prepare_in_one_multi_statement_query(c: Ctx) -> list[Step]:
    return [q("PREPARE p3 AS select 3 as v; EXECUTE p3; DEALLOCATE p3; EXECUTE p3"), q("EXECUTE p3")]


@seq()
def sql_prepare_then_protocol_bind(c: Ctx) -> list[Step]:
    """SQL PREPARE and protocol Parse share one namespace in PostgreSQL."""
    return [
        q("PREPARE p2 AS select 2 as v"),
        step(bind("", "p2"), execute(), sync()),
        step(describe("S", "p2"), sync()),
    ]


@seq(known_difference=_sql_and_protocol_namespaces_apart(1, "s1"))
def protocol_parse_then_sql_execute(c: Ctx) -> list[Step]:
    return [step(parse("s1", "select 3 as v"), sync()), q("EXECUTE s1"), step(parse("s1", "select 4"), sync())]


@seq()
def sql_prepare_execute_through_parse_across_servers(c: Ctx) -> list[Step]:
    """PREPARE/EXECUTE/DEALLOCATE as the text of extended-protocol statements (psycopg prepare=True, asyncpg), each
    transaction on another server: the client's statement follows it; after DEALLOCATE it is gone everywhere."""
    return [
        step(parse("", "PREPARE px AS select 5 as v"), bind(), execute(), sync()),
        step(parse("e1", "EXECUTE px"), bind("", "e1"), describe("P"), execute(), sync()),
        step(bind("", "e1"), describe("P"), execute(), sync()),
        step(describe("S", "e1"), sync()),
        step(parse("", "DEALLOCATE px"), bind(), execute(), sync()),
        step(bind("", "e1"), execute(), sync()),
        step(parse("", "EXECUTE px"), bind(), execute(), sync()),
        q("EXECUTE px"),
        step(parse("", "PREPARE px AS select 'again' as v"), bind(), execute(), sync()),
        q("EXECUTE px"),
    ]


@seq()
def sql_prepare_error_then_execute(c: Ctx) -> list[Step]:
    return [q("PREPARE bad AS selec 1"), q("EXECUTE bad"), q("PREPARE bad AS select 1 as v"), q("EXECUTE bad")]


@seq()
def sql_execute_in_aborted_transaction(c: Ctx) -> list[Step]:
    return [
        q("PREPARE p1 AS select 1 as v"),
        q("BEGIN"),
        q("select 1/0"),
        q("EXECUTE p1"),
        q("ROLLBACK"),
        q("EXECUTE p1"),
    ]


@seq()
def sql_prepare_survives_rollback(c: Ctx) -> list[Step]:
    return [q("BEGIN"), q("PREPARE p1 AS select 'kept' as v"), q("ROLLBACK"), q("EXECUTE p1")]


@seq(known_difference=_reset_goes_to_pool_application_name)
def reset_application_name(c: Ctx) -> list[Step]:
    """RESET goes back to the value the client sent at startup."""
    return [q("SET application_name = 'wf_changed'"), q("RESET application_name"), q("SHOW application_name")]


# --- data: sizes, formats, NULLs, fast path


@seq()
def large_row_extended(c: Ctx) -> list[Step]:
    return [step(*pbes(f"select repeat('x', {BIG}) as big"), sync())]


@seq()
def large_bind_parameter(c: Ctx) -> list[Step]:
    return [
        step(
            parse("s1", "select length($1::text) as n, md5($1::text) as h"),
            bind("", "s1", ["z" * BIG]),
            execute(),
            sync(),
        )
    ]


@seq()
def many_rows_extended(c: Ctx) -> list[Step]:
    return [step(*pbes("select g from generate_series(1, 10000) g"), sync())]


@seq()
def binary_result_format(c: Ctx) -> list[Step]:
    return [
        step(
            parse("", "select 1::int4 as i, 'x'::text as t, 2.5::float8 as f"),
            bind("", "", [], [], [1]),
            describe("P"),
            execute(),
            sync(),
        )
    ]


@seq()
def mixed_result_formats(c: Ctx) -> list[Step]:
    return [
        step(
            parse("s1", "select 1::int4 as i, 'x'::text as t"),
            bind("", "s1", [], [], [0, 1]),
            describe("P"),
            execute(),
            sync(),
        )
    ]


@seq()
def binary_parameters(c: Ctx) -> list[Step]:
    return [
        step(
            parse("", "select $1::int4 + 1 as a, $2::int8 * 2 as b"),
            bind("", "", [struct.pack("!i", 41), struct.pack("!q", 21)], [1]),
            execute(),
            sync(),
        )
    ]


@seq()
def binary_parameter_bad_length(c: Ctx) -> list[Step]:
    return [step(parse("", "select $1::int4"), bind("", "", [b"\x00\x01"], [1]), execute(), sync())]


@seq()
def null_parameters(c: Ctx) -> list[Step]:
    return [
        step(
            parse("", "select $1::int is null as isnull, coalesce($2::text, 'dflt') as c"),
            bind("", "", [None, None]),
            execute(),
            sync(),
        )
    ]


@seq()
def unspecified_parameter_types_inferred(c: Ctx) -> list[Step]:
    return [
        step(parse("s1", "select $1 + 1 as r, $2 || 'x' as s", [0, 0]), describe("S", "s1"), sync()),
        step(bind("", "s1", ["1", "a"]), execute(), sync()),
    ]


@seq()
def function_call_int4pl(c: Ctx) -> list[Step]:
    return [
        step(function_call(c.int4pl_oid, [struct.pack("!i", 1), struct.pack("!i", 2)], [1], 1)),
        step(function_call(c.int4pl_oid, ["40", "2"], [0], 0)),
    ]


@seq()
def function_call_errors(c: Ctx) -> list[Step]:
    return [
        step(function_call(c.int4pl_oid, ["x", "2"], [0], 0)),
        step(function_call(999999, ["1"], [0], 0)),
        q("select 1"),
    ]


@seq()
def function_call_in_transaction(c: Ctx) -> list[Step]:
    return [q("BEGIN"), step(function_call(c.int4pl_oid, ["1", "1"], [0], 0)), q("COMMIT")]


SEQ_NAMES = list(SEQUENCES)

# ---------------------------------------------------------------- running


Transcript = list[tuple[str, list[Msg]]]
PSEUDO = "!"  # type of a pseudo-message recording a harness-level event (timeout, closed socket, rotation stuck)


class RotationStuck(Exception):
    pass


class Rotator:
    """Two blocker clients through pg_doorman; one of them always holds a server in an open transaction.

    ``rotate()`` (called while the client under test holds no server) makes the idle blocker take the only
    server not held — the one the client under test used last, waiting for it if it is still being cleaned up —
    and then lets the other blocker release its server, which the next transaction of the client under test gets.
    """

    def __init__(self, port: int, database: str) -> None:
        self.port = port
        self.database = database
        self.blockers: list[WireClient] = []
        self.holder: int | None = None
        params = {"application_name": "wf_blocker"}
        for _ in range(2):
            self.blockers.append(
                WireClient.connect(HOST, port, user=USER, database=database, password=PASSWORD, params=params)
            )

    def _hold(self, index: int) -> None:
        try:
            msgs = self.blockers[index].simple_query("BEGIN; SELECT 1", timeout=ROTATE_TIMEOUT)
        except WireError as exc:
            raise RotationStuck(
                f"a blocker client could not get a server within {ROTATE_TIMEOUT}s although the client under test "
                f"is idle (ReadyForQuery 'I', everything synced): it still holds its server ({exc})"
            ) from None
        assert msgs[-1] == Msg("Z", b"T"), msgs

    def _release(self, index: int) -> None:
        msgs = self.blockers[index].simple_query("COMMIT", timeout=ROTATE_TIMEOUT)
        assert msgs[-1] == Msg("Z", b"I"), msgs

    def rotate(self) -> None:
        if self.holder is None:
            self._hold(0)
            self.holder = 0
            return
        other = 1 - self.holder
        self._hold(other)
        self._release(self.holder)
        self.holder = other

    def close(self) -> None:
        for blocker in self.blockers:
            blocker.close()


def read_step(client: WireClient, st: Step) -> list[Msg]:
    if isinstance(st.until, int):
        return client.read_until_ready(st.until, timeout=STEP_TIMEOUT)
    if isinstance(st.until, str):
        msgs = client.read_until_type(st.until, timeout=UNTIL_TIMEOUT)
        return msgs + client.read_quiet(TAIL_QUIET, timeout=UNTIL_TIMEOUT)
    return client.read_quiet(QUIET, timeout=UNTIL_TIMEOUT)


def run_sequence(port: int, database: str, steps: list[Step], rotator: Rotator | None) -> Transcript:
    """Send ``steps`` on a new connection and record what comes back (a pseudo-message marks a failure).

    With a ``rotator``, the servers are rotated before every step that starts a new transaction, and once more
    after the last step (which proves the client did not keep a server).
    """
    transcript: Transcript = []
    try:
        client = WireClient.connect(HOST, port, user=USER, database=database, password=PASSWORD, params=STARTUP_PARAMS)
    except (WireError, OSError) as exc:
        return [("login", [Msg(PSEUDO, f"login failed: {type(exc).__name__}: {exc}".encode())])]
    unsynced = False
    last_type = "Z"
    probe = step(sync(), label="S (probe)")
    try:
        for st in [*steps, probe, None]:
            idle = last_type == "Z" and client.last_status == "I" and not unsynced
            if rotator is not None and idle:
                try:
                    rotator.rotate()
                except RotationStuck as exc:
                    transcript.append(("rotation", [Msg(PSEUDO, str(exc).encode())]))
                    return transcript
            if st is None:
                break
            try:
                client.send(st.data)
            except OSError as exc:
                transcript.append((st.label, [Msg(PSEUDO, f"send failed: {type(exc).__name__}: {exc}".encode())]))
                return transcript
            for f in split_frames(st.data):
                if f[:1] in b"PBDECH":
                    unsynced = True
                elif f[:1] == b"S":
                    unsynced = False
            try:
                msgs = read_step(client, st)
            except WireError as exc:
                transcript.append((st.label, [*exc.received, Msg(PSEUDO, f"{type(exc).__name__}: {exc}".encode())]))
                return transcript
            transcript.append((st.label, msgs))
            if msgs:
                last_type = msgs[-1].type
    finally:
        client.close()
    return transcript


def normalize(msg: Msg, ignore_context: bool) -> Msg:
    if msg.type == "K":
        return Msg("K", b"<BackendKeyData>")
    if msg.type in ("E", "N"):
        drop = {"F", "L", "R", "W"} if ignore_context else {"F", "L", "R"}
        return Msg(msg.type, build_error_body((c, v) for c, v in error_fields(msg.body) if c not in drop))
    return msg


def normalized(transcript: Transcript, ignore_context: bool) -> Transcript:
    return [(label, [normalize(m, ignore_context) for m in msgs]) for label, msgs in transcript]


def render(transcript: Transcript) -> list[str]:
    lines = []
    for index, (label, msgs) in enumerate(transcript, 1):
        lines.append(f"step {index} [{label}]")
        lines += [f"    {describe_message(m)}" for m in msgs] or ["    (nothing)"]
    return lines


def first_difference(expected: Transcript, actual: Transcript) -> str:
    for index, (exp, act) in enumerate(zip(expected, actual, strict=False), 1):
        if exp != act:
            for pos, (a, b) in enumerate(zip(exp[1], act[1], strict=False), 1):
                if a != b:
                    expected_msg, actual_msg = describe_message(a), describe_message(b)
                    return f"step {index} [{exp[0]}], message {pos}: expected {expected_msg} got {actual_msg}"
            return f"step {index} [{exp[0]}]: expected {len(exp[1])} messages, got {len(act[1])}"
    return f"expected {len(expected)} steps, got {len(actual)}"


def clip(lines: list[str], limit: int = 120) -> str:
    if len(lines) > limit:
        lines = [*lines[: limit // 2], f"    ... {len(lines) - limit} lines ...", *lines[-limit // 2 :]]
    return "\n".join(lines)


def compare(name: str, variant: str, expected: Transcript, actual: Transcript) -> str | None:
    """None when equal, else a report with the first difference, a diff and both message lists."""
    if expected == actual:
        return None
    exp_lines, act_lines = render(expected), render(actual)
    diff = difflib.unified_diff(
        exp_lines, act_lines, "PostgreSQL (direct)", f"pg_doorman ({variant})", lineterm="", n=4
    )
    return (
        f"[{name}] pg_doorman ({variant}) differs from PostgreSQL: {first_difference(expected, actual)}\n"
        f"--- diff ---\n{clip(list(diff))}\n"
        f"--- PostgreSQL (direct) ---\n{clip(exp_lines)}\n"
        f"--- pg_doorman ({variant}) ---\n{clip(act_lines)}"
    )


def run_setup(port: int, sql: str) -> None:
    if not sql:
        return
    with WireClient.connect(HOST, port, user=USER, database=DB, password=PASSWORD) as client:
        msgs = client.simple_query(sql)
        errors = [error_fields(m.body) for m in msgs if m.type == "E"]
        assert not errors, f"setup failed: {errors}"


# ---------------------------------------------------------------- fixtures and tests
#
# One pg_doorman process serves the whole module (starting one per test would cost most of the time budget), with
# a private pool per test: every test starts with empty server connections and statement caches, and a server
# leaked by one test cannot starve the next.  The process is started with conftest's helpers.

SPREAD_POOL = "wf__spread"
STARTUP_POOL = "wf__startup"


def pool_database(name: str) -> str:
    return f"wf_{name}"[:63]


def _conftest(config: pytest.Config) -> Any:
    """The tests/conftest.py module (its helpers are not fixtures), found among the registered plugins."""
    for plugin in config.pluginmanager.get_plugins():
        if hasattr(plugin, "prepare_config") and hasattr(plugin, "DoormanProcess"):
            return plugin
    raise RuntimeError("tests/conftest.py is not loaded")


@pytest.fixture(scope="module")
def shared_doorman(
    request: pytest.FixtureRequest, pg_trust: TempPostgres, tmp_path_factory: pytest.TempPathFactory
) -> Any:
    cf = _conftest(request.config)
    base = cf.make_pool_config(pg_trust, pool_size=2, pool_mode="transaction")["pools"][DB]
    # Short idle_timeout: servers of finished tests go away instead of piling up on the shared cluster.
    pool = {**base, "server_database": DB, "idle_timeout": "3s"}
    names = [pool_database(n) for n in SEQ_NAMES] + [SPREAD_POOL, STARTUP_POOL]
    full = cf.prepare_config({"pools": {name: dict(pool) for name in names}})
    tmp = tmp_path_factory.mktemp("wire_fidelity")
    config_path = cf.write_config(full, tmp / "pg_doorman.yaml")
    log_path = tmp / "pg_doorman.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(cf.REPO_ROOT / "src"), os.environ.get("PYTHONPATH")) if p)
    with open(log_path, "wb") as log_file:
        popen = subprocess.Popen(
            [sys.executable, "-m", "pg_doorman", str(config_path), "-l", "debug"],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp,
        )
    proc = cf.DoormanProcess(
        popen=popen,
        host=full["general"]["host"],
        port=int(full["general"]["port"]),
        config=full,
        config_path=config_path,
        log_path=log_path,
    )
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


@dataclass
class Env:
    pg_port: int
    doorman: Any
    int4pl_oid: int

    def log_tail(self) -> str:
        return f"--- pg_doorman log (pid {self.doorman.pid}, tail) ---\n{self.doorman.log_tail(40)}"


@pytest.fixture
def env(pg_trust: TempPostgres, shared_doorman: Any) -> Env:
    if shared_doorman.returncode is not None:
        pytest.fail(f"the shared pg_doorman exited with code {shared_doorman.returncode}:\n{shared_doorman.log_tail()}")
    with WireClient.connect(HOST, pg_trust.port, user=USER, database=DB) as client:
        rows = [m for m in client.simple_query("select 'int4pl'::regproc::oid") if m.type == "D"]
    return Env(pg_port=pg_trust.port, doorman=shared_doorman, int4pl_oid=int(rows[0].body[6:]))


def run_pooled(env: Env, database: str, steps: list[Step]) -> Transcript:
    try:
        rotator = Rotator(env.doorman.port, database)
    except (WireError, OSError) as exc:
        return [("blockers", [Msg(PSEUDO, f"blocker login failed: {type(exc).__name__}: {exc}".encode())])]
    try:
        return run_sequence(env.doorman.port, database, steps, rotator)
    finally:
        rotator.close()


@pytest.mark.parametrize("name", SEQ_NAMES)
def test_wire_fidelity(name: str, env: Env) -> None:
    sequence = SEQUENCES[name]
    ctx = Ctx(table=f"wf_{name}"[:63], int4pl_oid=env.int4pl_oid)
    steps = sequence.build(ctx)
    setup = sequence.setup.format(t=ctx.table)

    run_setup(env.pg_port, setup)  # once: RowDescription carries the table OID, so the table must stay the same
    try:
        check_sequence(env, sequence, steps, reset=f"TRUNCATE {ctx.table}" if setup else "")
    finally:
        run_setup(env.pg_port, f"DROP TABLE IF EXISTS {ctx.table}, {ctx.table}_d")


def check_sequence(env: Env, sequence: Sequence, steps: list[Step], reset: str) -> None:
    name = sequence.name
    direct = run_sequence(env.pg_port, DB, steps, None)
    broken = [m for _, msgs in direct for m in msgs if m.type == PSEUDO]
    assert not broken, "harness error on the direct connection:\n" + "\n".join(render(direct))
    expected = normalized(direct, sequence.ignore_context)

    problems = []
    previous: Transcript | None = None
    for variant in ("cold", "warm"):
        run_setup(env.pg_port, reset)
        actual = normalized(run_pooled(env, pool_database(name), steps), sequence.ignore_context)
        if actual == previous and problems:
            problems.append(f"[{name}] pg_doorman ({variant}): the same messages as the cold run, same difference")
            continue
        wanted = expected
        if sequence.known_difference is not None:
            wanted = sequence.known_difference(variant, expected)
        problem = compare(name, variant, wanted, actual)
        if problem:
            problems.append(problem)
        previous = actual
    if problems:
        problems.append(env.log_tail())
    assert not problems, "\n\n".join(problems)


def test_sequence_count() -> None:
    assert len(SEQUENCES) >= 40


def test_harness_spreads_transactions_across_servers(env: Env) -> None:
    """Self-test of the rotation: consecutive transactions of the tested client alternate between two backends."""
    steps = [q("select pg_backend_pid()") for _ in range(4)]
    transcript = run_pooled(env, SPREAD_POOL, steps)
    pids = [int(m.body[6:]) for _, msgs in transcript[:4] for m in msgs if m.type == "D"]
    assert len(pids) == 4, "\n".join(render(transcript))
    assert pids[0] != pids[1], pids
    assert pids == [pids[0], pids[1], pids[0], pids[1]], pids


def test_startup_messages_match(env: Env) -> None:
    """The login reply: same ParameterStatus set (order is not defined by the protocol), BackendKeyData, 'Z I'."""
    replies = []
    for port, database in ((env.pg_port, DB), (env.doorman.port, STARTUP_POOL)):
        with WireClient.connect(
            HOST, port, user=USER, database=database, password=PASSWORD, params=STARTUP_PARAMS
        ) as client:
            replies.append([normalize(m, False) for m in client.startup_messages])
    direct, pooled = replies

    def shape(msgs: list[Msg]) -> tuple[list[str], list[Msg]]:
        return [m.type for m in msgs if m.type != "S"], sorted(m for m in msgs if m.type == "S")

    assert shape(pooled) == shape(direct), (
        "--- PostgreSQL ---\n"
        + "\n".join(map(describe_message, direct))
        + "\n--- pg_doorman ---\n"
        + "\n".join(map(describe_message, pooled))
    )
