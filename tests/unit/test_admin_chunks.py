"""Large admin replies come in chunks (no sockets): how many rows a chunk holds, where the yield points are,
which clients a SHOW CLIENTS shows when clients come and go between chunks, an error in the middle of the
rows, the row encoder against the plain one, and that a SHOW at thousands of clients sets off no garbage
collection."""

from __future__ import annotations

import dataclasses
import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_admin_session import error_code, kinds, messages_of
from test_forwarding import RecordingTransport

from pg_doorman import codes, views
from pg_doorman.admin import Console
from pg_doorman.admin.show import CHUNK_POOLS, CHUNK_ROWS, PoolTotals
from pg_doorman.admin.wire import RowEncoder, data_row
from pg_doorman.app import Application
from pg_doorman.client import ClientConnection
from pg_doorman.config import load_config
from pg_doorman.server import ServerConnection

QUERY = 0x51


def make_app(tmp_path: Path, databases: int = 1) -> Application:
    pools = "".join(f"  db{i}: {{users: [{{username: u, password: '', pool_size: 1}}]}}\n" for i in range(databases))
    path = tmp_path / "c.yaml"
    path.write_text("general: {admin_username: a, admin_password: b}\npools:\n" + pools)
    return Application(load_config(path))


def add_clients(app: Application, count: int, name: str = "idle") -> list[ClientConnection]:
    pool = app.registry.pools[("db0", "u")]
    added = []
    for i in range(count):
        client = ClientConnection(app.context)
        client.set_transport(RecordingTransport())  # type: ignore[arg-type]
        client.pool = pool
        pool.client_count += 1
        client.state = codes.CLIENT_IDLE
        client.user, client.database, client.application_name = "u", "db0", name
        client.peer = f"127.0.0.1:{10000 + i}"
        client.pid = 1000 + len(app.clients)
        app.clients.add(client)
        added.append(client)
    return added


def chunks(console: Console, sql: str) -> Iterator[bytes]:
    return iter(console.replies(QUERY, sql.encode() + b"\x00"))


def app_names(reply: bytes) -> list[str]:
    """The application_name column (the 18th) of each DataRow."""
    names = []
    for kind, body in messages_of(reply):
        if kind == b"D":
            pos = 2
            for _ in range(17):
                length = int.from_bytes(body[pos : pos + 4], "big", signed=True)
                pos += 4 + max(length, 0)
            length = int.from_bytes(body[pos : pos + 4], "big")
            names.append(body[pos + 4 : pos + 4 + length].decode())
    return names


def test_show_clients_comes_in_chunks_of_bounded_rows(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    add_clients(app, 2 * CHUNK_ROWS + 7)
    console = Console(app.admin)
    parts = list(chunks(console, "SHOW CLIENTS"))
    assert len(parts) == 3
    assert kinds(parts[0]) == b"T" + b"D" * CHUNK_ROWS
    assert kinds(parts[1]) == b"D" * CHUNK_ROWS
    assert kinds(parts[2]) == b"D" * 7 + b"CZ"  # the last rows, CommandComplete and ReadyForQuery: one write
    assert kinds(b"".join(parts)) == kinds(console.feed(QUERY, b"SHOW CLIENTS\x00"))  # feed: the same, joined
    assert app_names(b"".join(parts)) == ["idle"] * (2 * CHUNK_ROWS + 7)


def test_small_replies_and_several_statements_gather_up_to_a_yield_point(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    add_clients(app, CHUNK_ROWS + 1)
    console = Console(app.admin)
    assert [kinds(part) for part in chunks(console, "SHOW VERSION; SHOW LOG_LEVEL")] == [b"TDCTDCZ"]
    parts = list(chunks(console, "SHOW VERSION; SHOW CLIENTS; SHOW VERSION"))
    assert [kinds(part) for part in parts] == [b"TDCT" + b"D" * CHUNK_ROWS, b"DCTDCZ"]
    assert list(console.replies(0x58, b"")) == [] and console.closed


def test_clients_that_leave_between_chunks_are_left_out_and_new_ones_not_shown(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    add_clients(app, 3 * CHUNK_ROWS)
    console = Console(app.admin)
    order = list(app.admin.clients)  # the order SHOW CLIENTS takes them in
    stream = chunks(console, "SHOW CLIENTS")
    first = next(stream)
    # Between chunks: some clients of later chunks leave, a client of the first chunk leaves (already shown),
    # and new clients come.
    leaving = order[CHUNK_ROWS + 5 : CHUNK_ROWS + 15] + order[-3:] + order[:2]
    for client in leaving:
        client.close()
    assert all(c.state == codes.CLIENT_CLOSED and c not in app.clients for c in leaving)
    add_clients(app, 20, name="latecomer")
    reply = first + b"".join(stream)
    names = app_names(reply)
    assert len(names) == 3 * CHUNK_ROWS - 13 and "latecomer" not in names
    assert kinds(reply).endswith(b"CZ")
    # The next SHOW sees the world as it is now.
    assert len(app_names(console.query("SHOW CLIENTS"))) == 3 * CHUNK_ROWS - 15 + 20


def test_an_error_met_in_the_middle_of_the_rows_follows_them(tmp_path: Path, monkeypatch: Any) -> None:
    app = make_app(tmp_path)
    clients = add_clients(app, CHUNK_ROWS + 10)
    broken = list(app.admin.clients)[CHUNK_ROWS + 3]  # the order SHOW CLIENTS takes them in
    fields = views.client_fields

    def failing(client: ClientConnection) -> views.ClientFields:
        if client is broken:
            raise RuntimeError("a bug in a view")
        return fields(client)

    monkeypatch.setattr(views, "client_fields", failing)
    console = Console(app.admin)
    reply = console.query("SHOW CLIENTS; SHOW VERSION")
    assert kinds(reply) == b"T" + b"D" * CHUNK_ROWS + b"EZ"  # the chunk being built is lost with the error
    assert error_code(reply) == "XX000"
    assert kinds(console.query("SHOW VERSION")) == b"TDCZ"  # the session goes on
    assert len(clients) == CHUNK_ROWS + 10


def test_views_over_many_pools_yield_between_pool_chunks(tmp_path: Path) -> None:
    app = make_app(tmp_path, databases=2 * CHUNK_POOLS + 1)
    console = Console(app.admin)
    pools = list(chunks(console, "SHOW POOLS"))
    assert [kinds(part) for part in pools] == [
        b"T" + b"D" * CHUNK_POOLS,
        b"D" * CHUNK_POOLS,
        b"DCZ",
    ]
    for view, rows in (("STATS", 2 * CHUNK_POOLS + 1), ("DATABASES", 2 * CHUNK_POOLS + 1), ("LISTS", 12)):
        parts = list(chunks(console, f"SHOW {view}"))
        # Sums over every pool: the snapshots are taken in chunks (yield points with nothing to write yet).
        assert parts[:2] == [b"", b""], view
        assert kinds(parts[2]) == b"T" + b"D" * rows + b"CZ", view


@pytest.mark.parametrize(
    "row",
    [
        ("C", "u", 1, True, 1.0, 0, False, 0.0, -0.0),  # equal keys (1, True, 1.0) encode alike
        (None, "", "é" * 300, 2**40, -5, 0.25, float("inf"), "x" * 255, "y" * 256),
    ],
)
def test_row_encoder_matches_the_plain_encoding(row: tuple[Any, ...]) -> None:
    encoder = RowEncoder(len(row))
    assert encoder.row(row) == data_row(row)
    assert encoder.rows([row, row[::-1]]) == data_row(row) + RowEncoder(len(row)).row(row[::-1])


def test_show_clients_at_thousands_of_clients_sets_off_no_garbage_collection(tmp_path: Path) -> None:
    """Rows are made as they are encoded: a SHOW leaves no tuples alive long enough to count as new objects for
    the collector, whose full pass over a large process holds the event loop up."""
    app = make_app(tmp_path)
    add_clients(app, 5000)
    console = Console(app.admin)
    collections: list[int] = []

    def record(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    gc.collect()
    gc.callbacks.append(record)
    try:
        rows = sum(kinds(part).count(b"D") for part in chunks(console, "SHOW CLIENTS"))
    finally:
        gc.callbacks.remove(record)
    assert rows == 5000
    assert collections == []


def test_pool_totals_read_pool_view_fields_by_their_names() -> None:
    """STATS, DATABASES and LISTS read a PoolView through PoolTotals: every name must be a PoolView field."""
    assert set(PoolTotals._fields) <= {f.name for f in dataclasses.fields(views.PoolView)}


def test_show_servers_comes_in_chunks_and_leaves_out_servers_closed_meanwhile(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    pool = app.registry.pools[("db0", "u")]
    for pid in range(2 * CHUNK_ROWS + 3):
        server = ServerConnection(pool)
        server.set_transport(RecordingTransport())  # type: ignore[arg-type]
        server.state = codes.SERVER_IDLE
        server.pid = 5000 + pid
        pool.servers.add(server)
    order = list(pool.servers)  # the order SHOW SERVERS takes them in
    stream = chunks(Console(app.admin), "SHOW SERVERS")
    first = next(stream)
    assert kinds(first) == b"T" + b"D" * CHUNK_ROWS
    for server in order[-4:]:
        server.state = codes.SERVER_CLOSED
    rest = list(stream)
    # One of the closed ones was in the second chunk, three were the whole third one.
    assert [kinds(part) for part in rest] == [b"D" * (CHUNK_ROWS - 1), b"CZ"]
