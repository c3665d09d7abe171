"""Pool checkout order and the pool clock, without sockets: which idle server a transaction gets (LIFO, or FIFO
with server_round_robin), and server_lifetime judged on the clock that `Pool.tick` advances."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from test_forwarding import RecordingTransport

from pg_doorman import codes
from pg_doorman.app import Application
from pg_doorman.config import load_config
from pg_doorman.pool import Pool
from pg_doorman.server import ServerConnection


def make_pool(tmp_path: Path, general: str = "") -> Pool:
    path = tmp_path / "c.yaml"
    path.write_text(
        "general: {admin_username: a, admin_password: b, " + general + "}\n"
        "pools: {db: {users: [{username: u, password: '', pool_size: 3}]}}\n"
    )
    return Application(load_config(path)).registry.pools[("db", "u")]


def add_idle_server(pool: Pool) -> ServerConnection:
    server = ServerConnection(pool)
    server.set_transport(RecordingTransport())  # type: ignore[arg-type]
    server.state = codes.SERVER_IDLE
    pool.servers.add(server)
    pool.checkin(server)
    return server


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


@pytest.mark.parametrize(("round_robin", "expected"), [(False, [2, 1, 0]), (True, [0, 1, 2])])
def test_checkout_order(tmp_path: Path, round_robin: bool, expected: list[int]) -> None:
    """Default: the most recently used server first (few servers stay warm); round robin: the longest idle."""

    async def main() -> None:
        pool = make_pool(tmp_path, f"server_round_robin: {'true' if round_robin else 'false'}")
        servers = [add_idle_server(pool) for _ in range(3)]
        got = [pool.checkout_nowait() for _ in range(3)]
        assert got == [servers[i] for i in expected]
        assert pool.checkout_nowait() is None  # all lent; pool_size reached, so nothing is opened either
        assert pool.opening == 0

    run(main())


def test_lifetime_is_judged_on_the_pool_clock(tmp_path: Path) -> None:
    async def main() -> None:
        pool = make_pool(tmp_path, "server_lifetime: 1h")
        old, young = add_idle_server(pool), add_idle_server(pool)
        old.expires_at = pool.now + 5
        young.expires_at = pool.now + 3600
        pool.idle = [young, old]  # `old` would be lent first (LIFO)
        assert pool.checkout_nowait() is old  # not expired yet on the pool's clock
        pool.checkin(old)
        pool.tick(pool.now + 10)  # the app's 100 ms ticker moves the clock on
        assert pool.checkout_nowait() is young  # `old` is past its lifetime: closed, never lent again
        assert old.transport is not None and old.transport.is_closing()
        assert bytes(old.transport.data).endswith(b"X\x00\x00\x00\x04")  # Terminate sent  # type: ignore[attr-defined]
        # A server checked in after its lifetime is closed instead of parked.
        young.expires_at = pool.now - 1
        pool.checkin(young)
        assert young.transport is not None and young.transport.is_closing()
        assert pool.idle == []

    run(main())
