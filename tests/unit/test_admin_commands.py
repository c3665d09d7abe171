"""Admin console statements and result encoding, with plain values: parsing, tab completion, wire bytes,
the events ring and the /proc socket counters."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from pg_doorman import events
from pg_doorman.admin import commands, show
from pg_doorman.admin.wire import INT4, NUMERIC, TEXT, Column, data_row, result_set, row_description
from pg_doorman.protocol.messages import parse_data_row


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SHOW POOLS", ["SHOW POOLS"]),
        ("show pools; show stats;", ["show pools", "show stats"]),
        ("  ;; ; ", []),
        ("SET log_level = 'a;b'; SHOW LOG_LEVEL", ["SET log_level = 'a;b'", "SHOW LOG_LEVEL"]),
        ('SET log_level = "x;y"', ['SET log_level = "x;y"']),
        ("SHOW VERSION; 'unterminated ; quote", ["SHOW VERSION", "'unterminated ; quote"]),
    ],
)
def test_split_statements(sql: str, expected: list[str]) -> None:
    assert commands.split_statements(sql) == expected


def test_parse_upper_cases_the_verb_only() -> None:
    statement = commands.parse("  pause   MyDb ; ")
    assert (statement.verb, statement.args) == ("PAUSE", ("MyDb",))
    assert commands.parse("") == commands.Statement("", (), "")
    assert commands.parse("show\tclients\n").args == ("clients",)


@pytest.mark.parametrize(
    ("text", "name", "value"),
    [
        ("SET log_level = 'debug'", "log_level", "debug"),
        ("set LOG_LEVEL to warn", "log_level", "warn"),
        ("SET log_level='info, pg_doorman.pool=debug'", "log_level", "info, pg_doorman.pool=debug"),
        ('SET log_level "trace"', "log_level", "trace"),
        ("SET log_level", "log_level", None),
        ("SET", "", None),
        ("SET tolerance = 5", "tolerance", "5"),
    ],
)
def test_parse_set(text: str, name: str, value: str | None) -> None:
    assert commands.parse_set(text) == commands.SetCommand(name, value)


def test_tab_completion_answers() -> None:
    assert commands.is_tab_completion("SELECT name FROM pg_catalog.pg_settings WHERE ...")
    assert not commands.is_tab_completion("SHOW POOLS")
    column, values = commands.completion_rows("SELECT ... unnest(enumvals) ... pg_settings")
    assert column == "val" and "debug" in values and "default" in values
    assert commands.completion_rows("SELECT vartype FROM pg_catalog.pg_settings") == ("vartype", ["enum"])
    assert commands.completion_rows("... pg_settings WHERE context IN ('user')") == ("name", ["log_level"])
    column, values = commands.completion_rows("SELECT pg_catalog.lower(name) FROM pg_catalog.pg_settings")
    assert "pools" in values and "pools_extended" in values and "sockets" in values


def test_every_subcommand_has_a_view() -> None:
    assert set(commands.SHOW_SUBCOMMANDS) <= set(show.SHOW_VIEWS)


def test_row_description_and_data_row_bytes() -> None:
    desc = row_description([Column("database"), Column("cl_active", INT4), Column("total", NUMERIC)])
    assert desc[:1] == b"T" and struct.unpack("!i", desc[1:5])[0] == len(desc) - 1
    assert struct.unpack("!h", desc[5:7])[0] == 3
    name_end = desc.index(b"\x00", 7)
    assert desc[7:name_end] == b"database"
    assert struct.unpack("!ihihih", desc[name_end + 1 : name_end + 19]) == (0, 0, TEXT, -1, -1, 0)
    row = data_row(["app", 3, None, True, 1.5, 2.0, ""])
    assert row[:1] == b"D" and struct.unpack("!i", row[1:5])[0] == len(row) - 1
    assert parse_data_row(row[5:]) == [b"app", b"3", None, b"1", b"1.5", b"2", b""]
    full = result_set([Column("x")], [("a",), ("b",)], tag="SHOW")
    assert full.endswith(b"C\x00\x00\x00\x09SHOW\x00") and full.count(b"D\x00") == 2


def test_events_ring_keeps_the_newest() -> None:
    events.clear()
    first = events.record("PAUSE", "one")
    for i in range(events.CAPACITY + 5):
        events.record("RESUME", str(i))
    kept = events.recent()
    assert len(kept) == events.CAPACITY and kept[-1].message == str(events.CAPACITY + 4)
    assert first not in kept
    assert [e.message for e in events.recent(2)] == [str(events.CAPACITY + 3), str(events.CAPACITY + 4)]
    assert events.recent(0) == []
    last = kept[-1]
    assert events.recent(after=last.seq) == [] and events.recent(after=last.seq - 1) == [last]
    events.clear()


def test_socket_counts_from_a_proc_tree(tmp_path: Path) -> None:
    net = tmp_path / "net"
    net.mkdir()
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    (net / "tcp").write_text(
        header
        + "   0: 0100007F:1538 00000000:0000 0A 00000000:00000000 00:00000000 00000000   0 0 1 1\n"
        + "   1: 0100007F:1538 0100007F:D2C4 01 00000000:00000000 00:00000000 00000000   0 0 2 1\n"
        + "   2: 0100007F:1538 0100007F:D2C5 01 00000000:00000000 00:00000000 00000000   0 0 3 1\n"
        + "   3: garbage\n"
    )
    (net / "tcp6").write_text(header + "   0: 0:1538 0:0 0A 0:0 0:0 0 0 0 4 1\n")
    (net / "unix").write_text(
        "Num       RefCount Protocol Flags    Type St Inode Path\n"
        "0000: 00000002 00000000 00010000 0001 01 1 /run/x\n"
        "0000: 00000003 00000000 00000000 0001 03 2\n"
        "0000: 00000002 00000000 00000000 0002 01 3\n"
        "0000: 00000002 00000000 00000000 0005 01 4\n"
    )
    counts = dict(zip((c.name for c in show.SOCKETS_COLUMNS), show.socket_counts(proc=str(tmp_path)), strict=True))
    assert counts["tcp_listen"] == 1 and counts["tcp_established"] == 2 and counts["tcp6_listen"] == 1
    assert counts["unix_unconnected"] == 1 and counts["unix_connected"] == 1
    assert counts["unix_dgram"] == 1 and counts["unix_seq_packet"] == 1
    assert show.socket_counts(proc=str(tmp_path / "missing")) == (0,) * len(show.SOCKETS_COLUMNS)
