"""The pool registry without sockets: a reload keeps, replaces and retires pools (and moves their waiters); cancel
keys register, resolve and are forgotten by (pid, secret); the ClientContext follows the configuration."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_forwarding import RecordingTransport

from pg_doorman import codes
from pg_doorman.app import Application
from pg_doorman.auth.scram import make_scram_verifier
from pg_doorman.client import ClientConnection
from pg_doorman.config import Config, load_config
from pg_doorman.pool import Pool
from pg_doorman.protocol.framing import MessageBuffer
from pg_doorman.registry import PoolRegistry, new_cancel_key
from pg_doorman.server import ServerConnection

# A SCRAM verifier as a user's password, and no server_password: a pool cannot open a server before a client
# login has given it the ClientKey, so enqueueing a waiter opens nothing (no event loop, no socket).
SCRAM = make_scram_verifier("pw", salt=b"0123456789abcdef")


def user(name: str, pool_size: int = 2, password: str = SCRAM) -> dict[str, Any]:
    return {"username": name, "password": password, "pool_size": pool_size}


def write_config(path: Path, pools: dict[str, list[dict[str, Any]]], **general: Any) -> Config:
    document = {
        "general": {"admin_username": "admin", "admin_password": "secret", **general},
        "pools": {db: {"users": users} for db, users in pools.items()},
    }
    path.write_text(yaml.safe_dump(document))
    return load_config(path)


def registry_for(config: Config) -> PoolRegistry:
    registry = PoolRegistry()
    registry.reload(config.all_pool_settings())
    return registry


def waiting_client(app: Application, pool: Pool) -> ClientConnection:
    client = ClientConnection(app.context)
    client.set_transport(RecordingTransport())  # type: ignore[arg-type]
    client.pool = pool
    client.database, client.user = pool.settings.database, pool.settings.username
    client.param_token = pool.intern_params({"application_name": "waiter"})
    client.state = codes.CLIENT_WAITING
    pool.enqueue(client)
    return client


def idle_server(pool: Pool) -> ServerConnection:
    server = ServerConnection(pool)
    server.set_transport(RecordingTransport())  # type: ignore[arg-type]
    server.state = codes.SERVER_IDLE
    pool.servers.add(server)
    pool.idle.append(server)
    return server


def error_fields(data: bytes) -> dict[str, str]:
    buf = MessageBuffer()
    buf.feed(data)
    message = buf.next_message(1 << 20)
    assert message is not None and message[0] == ord("E")
    return {part[:1].decode(): part[1:].decode() for part in message[1].split(b"\0") if part}


# ---------------------------------------------------------------- pools


def test_pools_are_found_by_database_and_user(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", {"db": [user("u"), user("v", password="v_pw")], "db2": [user("u")]})
    registry = registry_for(config)
    assert len(registry) == 3
    pool = registry.pool_for("db", "v")
    assert pool is not None and pool.name == "db/v"
    assert registry.pool_for("db2", "v") is None
    assert registry.has_database("db2") and not registry.has_database("nope")
    # The first pool that names a user gives the password a client without a pool is challenged with.
    assert registry.user_passwords == {"u": SCRAM, "v": "v_pw"}


def test_reload_keeps_unchanged_replaces_changed_and_retires_removed(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    registry = registry_for(write_config(path, {"db": [user("same"), user("changed")], "gone": [user("u")]}))
    same, changed, gone = (registry.pools[key] for key in (("db", "same"), ("db", "changed"), ("gone", "u")))
    changed.scram_client_key = b"k" * 32  # learnt from a client login
    busy = idle_server(changed)
    changed.idle.remove(busy)
    busy.state = codes.SERVER_ACTIVE  # lent to a client: it closes when given back, not now
    parked = idle_server(changed)

    registry.reload(
        write_config(path, {"db": [user("same"), user("changed", pool_size=5)], "new": [user("u")]}).all_pool_settings()
    )

    assert registry.pools[("db", "same")] is same and not same.retired
    successor = registry.pools[("db", "changed")]
    assert successor is not changed and successor.settings.pool_size == 5
    assert successor.scram_client_key == b"k" * 32
    assert changed.retired and gone.retired
    assert ("gone", "u") not in registry.pools and registry.pool_for("new", "u") is not None
    assert registry.databases == {"db", "new"} and not registry.has_database("gone")
    # A retired pool closes its idle servers now; the busy one closes on checkin.
    assert parked.transport.closed and not changed.idle  # type: ignore[union-attr]
    assert not busy.transport.closed  # type: ignore[union-attr]
    changed.checkin(busy)
    assert busy.transport.closed  # type: ignore[union-attr]


def test_reload_moves_waiters_to_the_successor_and_fails_those_of_a_removed_pool(tmp_path: Path) -> None:
    async def main() -> None:  # failing a client starts its drain, which runs on the event loop
        path = tmp_path / "c.yaml"
        app = Application(write_config(path, {"db": [user("u")], "gone": [user("u")]}))
        old = app.registry.pools[("db", "u")]
        moved = waiting_client(app, old)
        canceled = waiting_client(app, old)
        canceled.state = codes.CLIENT_IDLE  # a wait that ended (canceled) while still queued: not carried over
        stranded = waiting_client(app, app.registry.pools[("gone", "u")])
        app.clients.update({moved, canceled, stranded})

        write_config(path, {"db": [user("u", pool_size=3)]})
        assert app.reload()

        successor = app.registry.pools[("db", "u")]
        assert successor is not old and not old.waiters
        assert list(successor.waiters) == [moved]
        assert moved.pool is successor and moved.waiting
        assert moved.params == {"application_name": "waiter"}
        assert moved.param_token is successor.intern_params({"application_name": "waiter"})  # the successor's token
        assert canceled.pool is old and not canceled.transport.closed  # type: ignore[union-attr]
        assert stranded.state == codes.CLIENT_CLOSED and stranded not in app.clients
        fields = error_fields(bytes(stranded.transport.data))  # type: ignore[union-attr]
        assert fields["S"] == "FATAL" and fields["C"] == "08006"
        assert fields["M"] == "this pool was removed by a configuration reload"

    asyncio.run(main())


def test_a_client_of_a_retired_pool_continues_on_its_successor(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    app = Application(write_config(path, {"db": [user("u")]}))
    client = ClientConnection(app.context)
    client.set_transport(RecordingTransport())  # type: ignore[arg-type]
    client.pool = app.registry.pools[("db", "u")]
    client.database, client.user = "db", "u"
    client.state = codes.CLIENT_IDLE
    write_config(path, {"db": [user("u", pool_size=3)]})
    assert app.reload()
    successor = app.registry.pools[("db", "u")]
    # A query between transactions: the retired pool opens nothing, so the client waits on the successor.
    client.data_received(b"Q\0\0\0\x0dselect 1\0")
    assert client.pool is successor and list(successor.waiters) == [client]


def test_tick_and_maintain_visit_every_pool(tmp_path: Path) -> None:
    registry = registry_for(write_config(tmp_path / "c.yaml", {"a": [user("u")], "b": [user("u")]}))
    registry.tick(1234.5)
    assert [pool.now for pool in registry.pools.values()] == [1234.5, 1234.5]
    expired = [idle_server(pool) for pool in registry.pools.values()]
    for server in expired:
        server.expires_at = 0.0  # past server_lifetime
    registry.maintain(1234.5)
    assert all(server.transport.closed for server in expired)  # type: ignore[union-attr]


def test_one_failing_pool_does_not_stop_maintenance_of_the_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = registry_for(write_config(tmp_path / "c.yaml", {"a": [user("u")], "b": [user("u")]}))
    broken, healthy = registry.pools.values()
    broken.idle.append(None)  # type: ignore[arg-type]  # any bug in one pool's maintenance
    server = idle_server(healthy)
    server.expires_at = 0.0
    registry.maintain(10.0)
    assert server.transport.closed  # type: ignore[union-attr]
    assert "maintenance of pool a/u failed" in caplog.text


# ---------------------------------------------------------------- cancel keys


class Client:
    """What the registry knows of a client: the key it was registered under, kept as its pid/secret."""

    def __init__(self) -> None:
        self.pid = 0
        self.secret = 0


def scripted(values: Iterable[int]) -> Callable[[int], int]:
    it = iter(values)

    def randbits(bits: int) -> int:
        value = next(it)
        assert value < 1 << bits
        return value

    return randbits


def register(registry: PoolRegistry, pid: int = 0) -> Client:
    client = Client()
    client.pid, client.secret = registry.register_cancel_key(client, pid)  # type: ignore[arg-type]
    return client


def test_new_cancel_key_pid_is_positive_and_secret_is_signed_32_bits() -> None:
    randbits = scripted([0, 7, 0xFFFFFFFF, 9, 0x80000000, 11, 0x7FFFFFFF])
    # pid 0 is skipped; the secret uses all 32 bits (sent as a signed int32).
    assert new_cancel_key(randbits) == (7, -1)
    assert new_cancel_key(randbits) == (9, -(1 << 31))
    assert new_cancel_key(randbits) == (11, (1 << 31) - 1)


def test_random_cancel_keys_are_distinct() -> None:
    registry = PoolRegistry()
    keys = {(c.pid, c.secret) for c in (register(registry) for _ in range(2000))}
    assert len(keys) == 2000 and registry.cancel_key_count() == 2000
    assert all(0 < pid < 1 << 31 and -(1 << 31) <= secret < 1 << 31 for pid, secret in keys)
    assert len({pid for pid, _ in keys}) > 1990
    assert any(secret < 0 for _, secret in keys)  # the high bit is used (fails with chance 2**-2000)


def test_a_cancel_key_needs_its_secret() -> None:
    registry = PoolRegistry(scripted([5, 9]))
    client = register(registry)
    assert (client.pid, client.secret) == (5, 9)
    assert registry.cancel_target(5, 9) is client
    assert registry.cancel_target(5, 8) is None
    assert registry.cancel_target(6, 9) is None


def test_clients_may_share_a_pid_with_different_secrets() -> None:
    """A session client's backend pid may equal another host's backend pid or some client's random pid."""
    registry = PoolRegistry(scripted([9, 10, 5, 3]))
    backend_a = register(registry, pid=5)  # session mode: the backend's pid, pg_doorman's secret
    backend_b = register(registry, pid=5)  # the same pid on another PostgreSQL host
    random_one = register(registry)  # random pid 5 again, secret 3: no exact clash, accepted
    assert [(c.pid, c.secret) for c in (backend_a, backend_b, random_one)] == [(5, 9), (5, 10), (5, 3)]
    assert registry.cancel_target(5, 9) is backend_a
    assert registry.cancel_target(5, 10) is backend_b
    assert registry.cancel_target(5, 3) is random_one
    assert registry.cancel_target(5, 4) is None
    registry.forget_cancel_key(backend_a)  # only its own entry goes
    assert registry.cancel_target(5, 9) is None
    assert registry.cancel_target(5, 10) is backend_b and registry.cancel_target(5, 3) is random_one
    registry.forget_cancel_key(backend_b)
    registry.forget_cancel_key(random_one)
    assert registry.cancel_key_count() == 0


def test_an_exact_clash_draws_the_secret_again() -> None:
    registry = PoolRegistry(scripted([9, 9, 1, 0, 5, 9, 8, 2]))
    first = register(registry, pid=5)
    # Session mode: the pid stays the backend's, only the secret is drawn again.
    second = register(registry, pid=5)
    assert (second.pid, second.secret) == (5, 1)
    # A random key (pid 0 skipped) that clashes exactly: both drawn again.
    third = register(registry)
    assert (third.pid, third.secret) == (8, 2)
    assert registry.cancel_target(5, 9) is first
    assert registry.cancel_target(5, 1) is second
    assert registry.cancel_target(8, 2) is third


def test_secrets_match_signed_or_unsigned() -> None:
    """BackendKeyData sends a signed int32; a CancelRequest's may be read back either way."""
    registry = PoolRegistry(scripted([0xFFFFFFFF, 0xFFFFFFFF, 4]))
    client = register(registry, pid=12)
    assert (client.pid, client.secret) == (12, -1)
    assert registry.cancel_target(12, -1) is client
    assert registry.cancel_target(12, 0xFFFFFFFF) is client
    assert (register(registry, pid=12).secret) == 4  # -1 again: an exact clash


def test_forgetting_an_unregistered_or_foreign_key_changes_nothing() -> None:
    registry = PoolRegistry(scripted([5, 9]))
    owner = register(registry)
    registry.forget_cancel_key(Client())  # type: ignore[arg-type]  # never logged in: pid 0
    impostor = Client()
    impostor.pid, impostor.secret = owner.pid, owner.secret
    registry.forget_cancel_key(impostor)  # type: ignore[arg-type]
    assert registry.cancel_target(5, 9) is owner


def test_closed_clients_forget_their_key(tmp_path: Path) -> None:
    app = Application(write_config(tmp_path / "c.yaml", {"db": [user("u")]}))
    client = ClientConnection(app.context)
    client.set_transport(RecordingTransport())  # type: ignore[arg-type]
    client.pid, client.secret = app.registry.register_cancel_key(client)
    assert app.registry.cancel_target(client.pid, client.secret) is client
    client.close()
    assert app.registry.cancel_target(client.pid, client.secret) is None


# ---------------------------------------------------------------- the context clients see


def test_context_follows_reload_and_shutdown(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    app = Application(write_config(path, {"db": [user("u")]}, max_message_size="1MB", client_login_timeout="5s"))
    context = app.context
    assert context.registry is app.registry
    assert (context.max_message_size, context.login_timeout) == (1024 * 1024, 5.0)
    assert context.admin_credentials() == ("admin", "secret")
    write_config(path, {"db": [user("u")]}, max_message_size="2MB", client_login_timeout="7s", admin_password="new")
    assert app.reload()
    assert app.context is context  # updated in place: every client sees the new values
    assert (context.max_message_size, context.login_timeout) == (2 * 1024 * 1024, 7.0)
    assert context.admin_credentials() == ("admin", "new")
    assert not context.shutting_down
    app.shutting_down = True
    assert context.shutting_down and app.shutting_down
