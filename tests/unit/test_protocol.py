"""Sans-I/O codec tests: framing, startup packets, builders, parsers."""

from __future__ import annotations

import struct

import pytest

from pg_doorman.client import parse_options
from pg_doorman.protocol import messages
from pg_doorman.protocol.errors import PoolerError, ProtocolViolation
from pg_doorman.protocol.framing import MessageBuffer
from pg_doorman.protocol.startup import (
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
    parse_first_packet,
)


def test_message_framing_roundtrip_split_anywhere() -> None:
    stream = messages.query("select 1") + messages.SYNC + messages.message(b"P", b"\x00select $1\x00\x00\x00")
    for cut in range(len(stream) + 1):
        buf = MessageBuffer()
        buf.feed(stream[:cut])
        got = list(buf.messages())
        buf.feed(stream[cut:])
        got += list(buf.messages())
        assert [chr(k) for k, _ in got] == ["Q", "S", "P"]
        assert got[0][1] == b"select 1\x00"
        assert len(buf) == 0


def test_message_buffer_rejects_bad_length() -> None:
    buf = MessageBuffer()
    buf.feed(b"Q\x00\x00\x00\x02")
    with pytest.raises(ProtocolViolation):
        list(buf.messages())


def test_message_buffer_rejects_oversized() -> None:
    buf = MessageBuffer(max_message_size=100)
    buf.feed(b"Q" + struct.pack("!I", 1000))
    with pytest.raises(PoolerError) as info:
        list(buf.messages())
    assert info.value.sqlstate == "53200"


def test_startup_message_parse() -> None:
    packet = messages.startup_message({"user": "alice", "database": "db1", "application_name": "x"})
    first = parse_first_packet(packet)
    assert isinstance(first, StartupMessage)
    assert first.user == "alice" and first.database == "db1"
    assert first.params["application_name"] == "x"


def test_startup_database_defaults_to_user() -> None:
    first = parse_first_packet(messages.startup_message({"user": "bob"}))
    assert isinstance(first, StartupMessage)
    assert first.database == "bob"


def test_ssl_gss_cancel_requests() -> None:
    assert isinstance(parse_first_packet(messages.ssl_request()), SSLRequest)
    assert isinstance(parse_first_packet(struct.pack("!ii", 8, 80877104)), GSSENCRequest)
    cancel = parse_first_packet(messages.cancel_request(42, -7))
    assert cancel == CancelRequest(42, -7)


@pytest.mark.parametrize(
    "packet",
    [
        struct.pack("!ii", 8, 196608),  # no terminator / no user
        struct.pack("!ii", 12, 196608) + b"user",  # no NUL terminator
        struct.pack("!ii", 14, 196608) + b"user\x00\x00",  # missing value / empty user
        struct.pack("!ii", 12, 80877102) + b"\x00" * 4,  # cancel with wrong length
    ],
)
def test_bad_startup_packets(packet: bytes) -> None:
    with pytest.raises(PoolerError):
        parse_first_packet(packet)


def test_unsupported_protocol_version() -> None:
    packet = struct.pack("!ii", 9, (2 << 16)) + b"\x00"
    with pytest.raises(PoolerError) as info:
        parse_first_packet(packet)
    assert info.value.sqlstate == "0A000"


def test_newer_minor_version_and_pq_options_are_kept_for_negotiation() -> None:
    packet = struct.pack("!ii", 0, (3 << 16) | 2) + b"user\x00u\x00_pq_.x\x00y\x00\x00"
    packet = struct.pack("!i", len(packet)) + packet[4:]
    first = parse_first_packet(packet)
    assert isinstance(first, StartupMessage)
    assert first.minor_version == 2
    assert first.protocol_options == ("_pq_.x",)
    assert "_pq_.x" not in first.params
    raw = messages.negotiate_protocol_version(0, first.protocol_options)
    assert raw[:1] == b"v" and raw[5:] == struct.pack("!ii", 0, 1) + b"_pq_.x\x00"


def test_startup_packet_length_limits() -> None:
    buf = MessageBuffer()
    buf.feed(struct.pack("!i", 20000))
    with pytest.raises(ProtocolViolation):
        buf.startup_packet()
    buf = MessageBuffer()
    buf.feed(struct.pack("!i", 4))
    with pytest.raises(ProtocolViolation):
        buf.startup_packet()


def test_error_response_fields() -> None:
    raw = messages.error_response("53300", "too many", severity="FATAL", detail="d")
    assert raw[0:1] == b"E"
    assert struct.unpack("!I", raw[1:5])[0] == len(raw) - 1
    fields = messages.parse_error_fields(raw[5:])
    assert fields == {"S": "FATAL", "V": "FATAL", "C": "53300", "M": "too many", "D": "d"}


def test_parameter_status_and_tag_parsers() -> None:
    raw = messages.parameter_status("TimeZone", "UTC")
    assert messages.parse_parameter_status(raw[5:]) == ("TimeZone", "UTC")
    assert messages.parse_command_tag(messages.command_complete("SELECT 1")[5:]) == b"SELECT 1"


def test_quoting() -> None:
    assert messages.quote_literal("it's") == "'it''s'"
    assert messages.quote_ident('a"b') == '"a""b"'
    # Read the same with standard_conforming_strings on or off: a backslash makes it an E'' literal.
    assert messages.string_literal("it's") == "'it''s'"
    assert messages.string_literal("a\\b'c") == "E'a\\\\b''c'"


def test_parse_options() -> None:
    assert parse_options("-c search_path=foo -c statement_timeout=5s") == {
        "search_path": "foo",
        "statement_timeout": "5s",
    }
    assert parse_options("--work-mem=64MB -cgeqo=off") == {"work_mem": "64MB", "geqo": "off"}
    assert parse_options(r"-c search_path=a\ b") == {"search_path": "a b"}
    assert parse_options("") == {}
