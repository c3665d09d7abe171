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
            watch = gcpolicy.current()
            uses_uvloop = type(asyncio.get_running_loop()).__module__.startswith("uvloop")
            # Survivors are frozen only where closed transports are freed by reference count (uvloop).
            assert watch is not None and watch.freeze_survivors is uses_uvloop
            for way in range(4):  # warm up: servers opened, first-use caches filled
                await _one_client(port, way)
            await _settle(app)
            gc.collect()
            gc.disable()  # from here on only reference counting frees anything
            try:
                clients_before, servers_before = _live(ClientConnection), _closed_servers(app)
                tracked_before = len(gc.get_objects())
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
                    if leaked_clients <= 0 and leaked_servers <= 0:
                        break
                    await asyncio.sleep(0.02)
                # Closed servers (the ones a client left mid-query are closed, not reused) must go too.
                assert leaked_clients <= 0, f"{leaked_clients} closed clients kept alive only by a reference cycle"
                # Nothing else a connection made needs the collector either (transports, statement maps, futures):
                # what is left is the pool's current servers (a dozen objects each) and the loop's timers, where
                # 400 connections' leftovers would be thousands.
                if uses_uvloop:  # asyncio's own transports keep a bound method of theirs: a cycle (see gcpolicy)
                    assert len(gc.get_objects()) - tracked_before < 100
                assert len(server_pids) > 8, "the test meant to close servers, but kept reusing the same few"
                assert leaked_servers <= 0, f"{leaked_servers} closed servers kept alive only by a reference cycle"
            finally:
                gc.enable()
        finally:
            await app.close()

    run_loop(scenario())


def test_frozen_clients_that_disconnect_are_freed(tmp_path: Path, pg_trust: TempPostgres) -> None:
    """The policy freezes a full collection's survivors: clients connected then, which leave later, must still go."""
    app = _app(tmp_path, pg_trust)
    port = app.config.general.port

    async def scenario() -> None:
        await app.start()
        try:
            watch = gcpolicy.current()
            assert watch is not None and watch.freeze_survivors
            assert gc.get_threshold()[0] == gcpolicy.YOUNG_THRESHOLD
            held = [await _login(port) for _ in range(100)]
            for reader, writer in held[:10]:
                writer.write(_frame(b"Q", b"SELECT 1\0"))
                assert b"D" in await _until_ready(reader)
            collections = watch.full_collections
            gc.collect()  # a full collection: the hook freezes the 100 live clients with everything else
            assert watch.full_collections == collections + 1
            frozen = gc.get_freeze_count()
            assert _live(ClientConnection) == 0, "the live clients were not frozen"
            for _, writer in held:
                writer.write(_frame(b"X", b""))
                writer.close()
            del held
            await _settle(app)
            for _ in range(100):  # the frozen clients' objects leave the permanent generation as they are freed
                if frozen - gc.get_freeze_count() >= 100 * 5:
                    break
                await asyncio.sleep(0.02)
            assert frozen - gc.get_freeze_count() >= 100 * 5
            gc.unfreeze()
            assert _live(ClientConnection) == 0, "a frozen client that disconnected is never freed"
        finally:
            await app.close()
        assert gcpolicy.current() is None and gc.get_freeze_count() == 0 and gc.get_threshold()[0] == 700

    uvloop.run(scenario())


def test_default_policy_keeps_cpythons_collector(
    tmp_path: Path, pg_trust: TempPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PG_DOORMAN_GC", "default")
    app = _app(tmp_path, pg_trust)

    async def scenario() -> None:
        await app.start()
        try:
            watch = gcpolicy.current()
            assert watch is not None and not watch.freeze_survivors
            assert gc.get_threshold() == (700, 10, 10) and gc.get_freeze_count() == 0
            gc.collect()
            assert gc.get_freeze_count() == 0 and watch.full_collections >= 1
        finally:
            await app.close()

    uvloop.run(scenario())


def test_thousand_connections_leave_rss_bounded(doorman: Any, pg_trust: TempPostgres) -> None:
    """A real process (the policy as shipped): 1,000 logins, queries and disconnects, some dropped mid-login."""
    config = {
        "general": {"host": "127.0.0.1", "port": find_free_port(), "admin_username": "admin",
                    "admin_password": "admin_pass"},
        "pools": {DATABASE: {"server_host": "127.0.0.1", "server_port": pg_trust.port, "pool_mode": "transaction",
                             "users": [{"username": USER, "password": _md5_verifier(), "pool_size": 4}]}},
    }  # fmt: skip
    proc = doorman(config)
    port = proc.port

    async def cycles(count: int) -> None:
        for batch in range(count // 20):
            await asyncio.gather(*(_one_client(port, way % 4) for way in range(batch, batch + 20)))

    uvloop.run(cycles(200))  # warm-up: caches, the pool's servers, the allocator's arenas
    warm = proc.rss_kib()
    uvloop.run(cycles(1000))
    grown = proc.rss_kib() - warm
    assert grown < 4096, f"RSS grew {grown} KiB over 1,000 connections"
    assert "gc policy tuned" in proc.log_text()
