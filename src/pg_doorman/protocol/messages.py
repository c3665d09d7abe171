"""Builders for the messages the pooler itself produces, and parsers for the few it has to read.

Frontend/backend message formats: https://www.postgresql.org/docs/current/protocol-message-formats.html
"""

from __future__ import annotations

import struct

PROTOCOL_VERSION_3 = 196608
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102

_pack_i = struct.Struct("!i").pack
_pack_ci = struct.Struct("!ci").pack

READY_IDLE = b"Z\x00\x00\x00\x05I"
READY_IN_TX = b"Z\x00\x00\x00\x05T"
READY_FAILED_TX = b"Z\x00\x00\x00\x05E"
AUTH_OK = b"R\x00\x00\x00\x08\x00\x00\x00\x00"
AUTH_CLEARTEXT_PASSWORD = b"R\x00\x00\x00\x08\x00\x00\x00\x03"
PARSE_COMPLETE = b"1\x00\x00\x00\x04"
BIND_COMPLETE = b"2\x00\x00\x00\x04"
CLOSE_COMPLETE = b"3\x00\x00\x00\x04"
NO_DATA = b"n\x00\x00\x00\x04"
SYNC = b"S\x00\x00\x00\x04"
FLUSH = b"H\x00\x00\x00\x04"
TERMINATE = b"X\x00\x00\x00\x04"
EMPTY_QUERY_RESPONSE = b"I\x00\x00\x00\x04"


def message(kind: bytes, body: bytes) -> bytes:
    """Frame ``body`` as a typed message: type byte, int32 length (including itself), body."""
    return _pack_ci(kind, len(body) + 4) + body


def cstr(value: str) -> bytes:
    return value.encode() + b"\x00"


def ready_for_query(status: bytes) -> bytes:
    return b"Z\x00\x00\x00\x05" + status


def error_response(
    sqlstate: str,
    text: str,
    *,
    severity: str = "FATAL",
    detail: str | None = None,
    hint: str | None = None,
) -> bytes:
    """ErrorResponse with severity (S and the non-localized V), SQLSTATE (C), message (M) and optional D/H."""
    parts = [b"S", cstr(severity), b"V", cstr(severity), b"C", cstr(sqlstate), b"M", cstr(text)]
    if detail:
        parts += [b"D", cstr(detail)]
    if hint:
        parts += [b"H", cstr(hint)]
    parts.append(b"\x00")
    return message(b"E", b"".join(parts))


def parameter_status(name: str, value: str) -> bytes:
    return message(b"S", cstr(name) + cstr(value))


def backend_key_data(pid: int, secret: int) -> bytes:
    return b"K\x00\x00\x00\x0c" + struct.pack("!ii", pid, secret)


def command_complete(tag: str) -> bytes:
    return message(b"C", cstr(tag))


def query(sql: str) -> bytes:
    return message(b"Q", cstr(sql))


def auth_md5(salt: bytes) -> bytes:
    return message(b"R", _pack_i(5) + salt)


def auth_sasl(mechanisms: bytes) -> bytes:
    """AuthenticationSASL; ``mechanisms`` is the NUL-terminated list with its final extra NUL."""
    return message(b"R", _pack_i(10) + mechanisms)


def auth_sasl_continue(data: bytes) -> bytes:
    return message(b"R", _pack_i(11) + data)


def auth_sasl_final(data: bytes) -> bytes:
    return message(b"R", _pack_i(12) + data)


def password_message(data: bytes) -> bytes:
    """PasswordMessage / SASLInitialResponse / SASLResponse all share the 'p' type."""
    return message(b"p", data)


def startup_message(params: dict[str, str]) -> bytes:
    body = _pack_i(PROTOCOL_VERSION_3) + b"".join(cstr(k) + cstr(v) for k, v in params.items()) + b"\x00"
    return _pack_i(len(body) + 4) + body


def negotiate_protocol_version(minor: int, options: tuple[str, ...]) -> bytes:
    """NegotiateProtocolVersion: the newest minor version we speak and the ``_pq_`` options we do not know."""
    body = struct.pack("!ii", minor, len(options)) + b"".join(cstr(name) for name in options)
    return message(b"v", body)


def cancel_request(pid: int, secret: int) -> bytes:
    return struct.pack("!iiii", 16, CANCEL_REQUEST_CODE, pid, secret)


def ssl_request() -> bytes:
    return struct.pack("!ii", 8, SSL_REQUEST_CODE)


def parse_error_fields(body: bytes | memoryview) -> dict[str, str]:
    """Fields of an ErrorResponse/NoticeResponse body: one-letter code → value."""
    fields: dict[str, str] = {}
    data = bytes(body)
    pos = 0
    while pos < len(data) and data[pos] != 0:
        code = chr(data[pos])
        end = data.index(b"\x00", pos + 1)
        fields[code] = data[pos + 1 : end].decode("utf-8", "replace")
        pos = end + 1
    return fields


def parse_parameter_status(body: bytes | memoryview) -> tuple[str, str]:
    data = bytes(body)
    name_end = data.index(b"\x00")
    value_end = data.index(b"\x00", name_end + 1)
    return data[:name_end].decode("utf-8", "replace"), data[name_end + 1 : value_end].decode("utf-8", "replace")


def parse_command_tag(body: bytes | memoryview) -> bytes:
    data = bytes(body)
    end = data.find(b"\x00")
    return data if end < 0 else data[:end]


def quote_literal(value: str) -> str:
    """SQL string literal with standard_conforming_strings semantics (E'' is never needed for SET)."""
    return "'" + value.replace("'", "''") + "'"


def string_literal(value: str) -> str:
    """SQL string literal read the same whatever the session's standard_conforming_strings (which a client may
    have turned off): an E'' literal, with backslashes and quotes escaped, when the value has a backslash."""
    quoted = value.replace("'", "''")
    if "\\" in value:
        return "E'" + quoted.replace("\\", "\\\\") + "'"
    return "'" + quoted + "'"


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def parse_data_row(body: bytes) -> list[bytes | None]:
    """The column values of a DataRow body (None for NULL)."""
    count = int.from_bytes(body[:2], "big")
    values: list[bytes | None] = []
    pos = 2
    for _ in range(count):
        length = int.from_bytes(body[pos : pos + 4], "big", signed=True)
        pos += 4
        if length < 0:
            values.append(None)
        else:
            values.append(body[pos : pos + length])
            pos += length
    return values
