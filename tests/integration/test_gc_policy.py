"""The garbage-collector policy (``pg_doorman.gcpolicy``): frozen objects are never collected, so closed client and
server connections must be freed by reference counting alone, with no cycle only the collector could break.

The application runs in this process (on uvloop, as in production, and on asyncio's own loop) so that its objects
can be counted with ``gc.get_objects()``; clients are raw asyncio connections that log in, query, and leave in
the ways real clients do (Terminate, a dropped socket mid-login, a dropped socket with a query in flight).
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import struct
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop
import yaml

from pg_doorman import gcpolicy
from pg_doorman.app import Application
from pg_doorman.client import ClientConnection
from pg_doorman.config import load_config
from pg_doorman.devcluster import TempPostgres, find_free_port
from pg_doorman.server import ServerConnection

USER, PASSWORD, DATABASE = "app", "app_pass", "appdb"


def _md5_verifier() -> str:
    return "md5" + hashlib.md5((PASSWORD + USER).encode()).hexdigest()


def _app(tmp_path: Path, cluster: TempPostgres, **general: Any) -> Application:
    config = {
        "general": {
            "host": "127.0.0.1",
            "port": find_free_port(),
            "admin_username": "admin",
            "admin_password": "admin_pass",
            **general,
        },
        "pools": {
            DATABASE: {
                "server_host": "127.0.0.1",
                "server_port": cluster.port,
                "pool_mode": "transaction",
                "server_lifetime": "30ms",  # servers are closed and replaced all along (the closed ones are counted)
                "users": [{"username": USER, "password": _md5_verifier(), "pool_size": 4}],
            }
        },
    }
    path = tmp_path / "pg_doorman.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return Application(load_config(path))


def _frame(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def _startup() -> bytes:
    body = struct.pack("!i", 196608) + f"user\0{USER}\0database\0{DATABASE}\0\0".encode()
    return struct.pack("!i", len(body) + 4) + body


async def _message(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    header = await reader.readexactly(5)
    return header[:1], await reader.readexactly(struct.unpack("!i", header[1:])[0] - 4)


async def _until_ready(reader: asyncio.StreamReader) -> list[bytes]:
    kinds = []
    while True:
        kind, body = await _message(reader)
        kinds.append(kind)
        if kind == b"E":
            raise AssertionError(f"error from the pooler: {body!r}")
        if kind == b"Z":
            return kinds


async def _login(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_startup())
    kind, body = await _message(reader)
    assert kind == b"R" and struct.unpack_from("!i", body)[0] == 5, (kind, body)
    inner = hashlib.md5((PASSWORD + USER).encode()).hexdigest()
    digest = "md5" + hashlib.md5(inner.encode() + body[4:8]).hexdigest()
    writer.write(_frame(b"p", digest.encode() + b"\0"))
    await _until_ready(reader)
    return reader, writer


async def _one_client(port: int, way: int) -> None:
    """One client's life; ``way`` picks how it ends."""
    if way == 0:  # a query, then Terminate
        reader, writer = await _login(port)
        writer.write(_frame(b"Q", b"SELECT 1\0"))
        assert b"D" in await _until_ready(reader)
        writer.write(_frame(b"X", b""))
    elif way == 1:  # gone after the startup packet, before answering the password request
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_startup())
        await _message(reader)
    elif way == 2:  # gone with a query in flight on a server
        reader, writer = await _login(port)
        writer.write(_frame(b"Q", b"SELECT pg_sleep(0.02)\0"))
        await writer.drain()
    else:  # garbage after login: refused with an error, then closed by the pooler
        reader, writer = await _login(port)
        writer.write(b"\xff\x00\x00\x00\x04")
        with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
            while True:
                await _message(reader)
    writer.close()


def _live(kind: type) -> int:
    return sum(1 for obj in gc.get_objects() if type(obj) is kind)


def _closed_servers(app: Application) -> int:
    """Server connections alive that no pool holds any more."""
    pooled = {id(server) for pool in app.registry.pools.values() for server in pool.servers}
    return sum(1 for obj in gc.get_objects() if type(obj) is ServerConnection and id(obj) not in pooled)


async def _settle(app: Application) -> None:
    for _ in range(500):
        busy = sum(len(pool.servers) - len(pool.idle) for pool in app.registry.pools.values())
        if not app.clients and not busy:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{len(app.clients)} clients still connected")


LoopRunner = Callable[[Coroutine[Any, Any, None]], None]


@pytest.fixture(params=["uvloop", "asyncio"])
def run_loop(request: pytest.FixtureRequest) -> LoopRunner:
    return uvloop.run if request.param == "uvloop" else asyncio.run  # type: ignore[return-value]


def test_closed_connections_are_freed_by_reference_count_alone(
    tmp_path: Path, pg_trust: TempPostgres, run_loop: LoopRunner
) -> None:
    app = _app(tmp_path, pg_trust)
    port = app.config.general.port

    async def scenario() -> None:
        await app.start()
        try:
            assert gcpolicy.current() is not None
            for way in range(4):  # warm up: servers opened, first-use caches filled
                await _one_client(port, way)
            await _settle(app)
            gc.collect()
            gc.disable()  # from here on only reference counting frees anything
            try:
                clients_before, servers_before = _live(ClientConnection), _closed_servers(app)
                server_pids: set[int] = set()
                for batch in range(25):
                    await asyncio.gather(*(_one_client(port, way % 4) for way in range(batch, batch + 16)))
                    server_pids.update(server.pid for pool in app.registry.pools.values() for server in pool.servers)
                    await asyncio.sleep(0.04)  # past server_lifetime
                await _settle(app)
                # The last closes finish in callbacks already scheduled: wait for the counts, not a fixed time. A
                # cycle never goes while the collector is off.
                for _ in range(100):
                    leaked_clients = _live(ClientConnection) - clients_before
                    leaked_servers = _closed_servers(app) - servers_before
                    if leaked_clients == 0 and leaked_servers == 0:
                        break
                    await asyncio.sleep(0.02)
                # Closed servers (the ones a client left mid-query are closed, not reused) must go too.
                assert leaked_clients == 0, f"{leaked_clients} closed clients kept alive only by a reference cycle"
                assert len(server_pids) > 8, "the test meant to close servers, but kept reusing the same few"
                assert leaked_servers == 0, f"{leaked_servers} closed servers kept alive only by a reference cycle"
            finally:
                gc.enable()
        finally:
            await app.close()

    run_loop(scenario())
