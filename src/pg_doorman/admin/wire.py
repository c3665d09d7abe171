"""Result sets of the admin console as protocol bytes: RowDescription, DataRow, CommandComplete.

A SHOW at 10,000 clients builds 10,000 rows while forwarding waits, so rows are encoded by a `RowEncoder`:
most values of such a view repeat from row to row (user and database names, states, small counters, the
second a time is printed as), and each distinct value is turned into its length-prefixed text once per result
set; a row is then one ``b"".join`` of those pieces. Types are announced as PgBouncer announces them (text,
int4, int8, numeric), so that scrapers which read columns by type see what they expect.

Large views are produced in chunks (`show`): `YIELD_POINT`, an empty piece, marks where a view has done a
bounded amount of work and the console may let the event loop run before asking for more.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pg_doorman.protocol import messages

__all__ = [
    "BOOL",
    "INT4",
    "INT8",
    "NUMERIC",
    "TEXT",
    "YIELD_POINT",
    "Column",
    "RowEncoder",
    "data_row",
    "result_set",
    "row_description",
]

# PostgreSQL type OIDs (pg_type.oid) and their typlen in RowDescription.
TEXT = 25
INT4 = 23
INT8 = 20
NUMERIC = 1700
BOOL = 16
_TYPLEN = {TEXT: -1, INT4: 4, INT8: 8, NUMERIC: -1, BOOL: 1}

_I32 = struct.Struct("!i").pack
_I16 = struct.Struct("!h").pack
_FIELD_TAIL = struct.Struct("!ihihih")  # table oid, column number, type oid, typlen, typmod, format
_NULL = b"\xff\xff\xff\xff"

Value = str | int | float | None
YIELD_POINT = b""
"""A piece of a view that carries no bytes: the view did a chunk of work; the event loop may run now."""


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type_oid: int = TEXT


def row_description(columns: Sequence[Column]) -> bytes:
    parts = [_I16(len(columns))]
    for column in columns:
        parts.append(column.name.encode() + b"\x00")
        parts.append(_FIELD_TAIL.pack(0, 0, column.type_oid, _TYPLEN.get(column.type_oid, -1), -1, 0))
    return messages.message(b"T", b"".join(parts))


_LENGTHS = [_I32(n) for n in range(256)]  # the length prefix of short values, packed once
_SMALL_INTS = [str(n).encode() for n in range(1024)]


def _text(value: Value) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bool):
        return b"1" if value else b"0"
    if isinstance(value, int):
        return _SMALL_INTS[value] if 0 <= value < 1024 else str(value).encode()
    if isinstance(value, float):
        return str(int(value)).encode() if value.is_integer() else f"{value:.6f}".rstrip("0").encode()
    return str(value).encode()


def data_row(values: Sequence[Value]) -> bytes:
    """One DataRow in text format; None is SQL NULL, bool is 1/0 (as PgBouncer shows flags).

    Built with comprehensions and one join (no per-value appends): this runs once per client in SHOW CLIENTS.
    """
    raws = [
        value.encode()
        if value.__class__ is str
        else _SMALL_INTS[value]
        if value.__class__ is int and 0 <= value < 1024
        else _text(value)
        for value in values
    ]
    parts: list[bytes] = [b""] * (2 * len(raws) + 1)
    parts[0] = _I16(len(raws))
    parts[1::2] = [_NULL if raw is None else _LENGTHS[len(raw)] if len(raw) < 256 else _I32(len(raw)) for raw in raws]
    parts[2::2] = [raw or b"" for raw in raws]
    body = b"".join(parts)
    return b"D" + _I32(len(body) + 4) + body


_MAX_REMEMBERED = 1 << 16  # distinct values a RowEncoder keeps; beyond that, new ones are encoded each time


class RowEncoder:
    """DataRows of one result set, each distinct value encoded once (see the module docstring).

    Values that compare equal encode alike here (``1``, ``True`` and ``1.0`` are all ``1``), so one table
    serves them all. Values that never repeat (addresses, ids) cost one table entry each, up to a bound.
    """

    __slots__ = ("_count", "_pieces")

    def __init__(self, width: int) -> None:
        self._count = _I16(width)
        self._pieces: dict[Value, bytes] = {None: _NULL}

    def _piece(self, value: Value) -> bytes:
        raw = value.encode() if isinstance(value, str) else _text(value)
        assert raw is not None  # None is in the table from the start
        piece = (_LENGTHS[len(raw)] if len(raw) < 256 else _I32(len(raw))) + raw
        if len(self._pieces) < _MAX_REMEMBERED:
            self._pieces[value] = piece
        return piece

    def row(self, values: Sequence[Value]) -> bytes:
        get, piece = self._pieces.get, self._piece
        body = b"".join([self._count, *[get(value) or piece(value) for value in values]])
        return b"D" + _I32(len(body) + 4) + body

    def rows(self, rows: Iterable[Sequence[Value]]) -> bytes:
        """The DataRows of ``rows``, concatenated."""
        get, piece, count, pack = self._pieces.get, self._piece, self._count, _I32
        out = []
        for values in rows:
            body = b"".join([count, *[get(value) or piece(value) for value in values]])
            out.append(b"D" + pack(len(body) + 4) + body)
        return b"".join(out)


def result_set(columns: Sequence[Column], rows: Iterable[Sequence[Value]], tag: str = "SHOW") -> bytes:
    """RowDescription, a DataRow per row and CommandComplete ``tag`` (no ReadyForQuery: one per Query)."""
    return row_description(columns) + RowEncoder(len(columns)).rows(rows) + messages.command_complete(tag)
