"""Read-only snapshots of pools, clients and servers: what the admin console, metrics and the web console show.

Everything outside the core that wants to know how a pool is doing reads these, never the connection objects:
the snapshots are plain frozen values taken at one moment, so a slow reader (an HTTP scrape, a console SHOW that
is written out over a slow socket) can neither see a connection change under it nor hold anything alive. Taking
one is O(pools + servers) for pools and O(clients) for clients; nothing here runs on the forwarding path.

This module is the one place that knows which connection fields mean what to an operator (state names, the
server a client holds, how long it has waited). When a field moves inside the core, only this module follows.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pg_doorman import codes

if TYPE_CHECKING:
    from pg_doorman.client import ClientConnection
    from pg_doorman.pool import Pool
    from pg_doorman.server import ServerConnection

CLIENT_STATES = {
    codes.CLIENT_STARTUP: "login",
    codes.CLIENT_IDLE: "idle",
    codes.CLIENT_WAITING: "waiting",
    codes.CLIENT_ACTIVE: "active",
    codes.CLIENT_CLOSED: "closed",
}
SERVER_STATES = {
    codes.SERVER_CONNECTING: "login",
    codes.SERVER_IDLE: "idle",
    codes.SERVER_ACTIVE: "active",
    codes.SERVER_CLEANUP: "cleanup",
    codes.SERVER_CLOSED: "closed",
    codes.SERVER_CAPTURE: "active",
}


@dataclass(frozen=True, slots=True)
class ServerView:
    pool: str
    pid: int
    state: str  # SERVER_STATES
    client_pid: int  # the client it is lent to, 0 when none
    transaction_status: str  # "I", "T" or "E" as of its last ReadyForQuery
    created_at: float  # monotonic
    last_used: float  # monotonic (the pool clock)
    prepared_statements: int  # pool statements prepared on this connection
    clean: bool  # nothing owed and nothing half-sent (ServerLedger.is_clean)


@dataclass(frozen=True, slots=True)
class ClientView:
    pid: int  # the BackendKeyData process id the client was given
    peer: str
    user: str
    database: str
    application_name: str
    state: str  # CLIENT_STATES
    server_pid: int  # the server it holds, 0 when none
    wait_deadline: float  # monotonic time its wait for a server ends (0: not waiting or no limit)
    is_admin: bool


@dataclass(frozen=True, slots=True)
class PoolView:
    name: str  # "database/user"
    database: str
    user: str
    pool_mode: str
    pool_size: int
    min_pool_size: int
    servers_active: int
    servers_idle: int
    servers_other: int  # logging in or being cleaned between clients
    servers_opening: int  # connections being opened (counted against pool_size)
    clients_waiting: int
    retired: bool  # replaced by a configuration reload; its busy servers close when released
    checkouts: int
    waits: int
    wait_timeouts: int
    servers_opened: int
    connect_errors: int
    statement_cache_entries: int
    statement_cache_hits: int
    statement_cache_misses: int
    statement_cache_evictions: int
    server_statements: int
    server_statement_evictions: int


def server_view(server: ServerConnection) -> ServerView:
    client = server.client
    ledger = server.ledger
    pool = server.pool
    return ServerView(
        pool=getattr(pool, "name", ""),
        pid=int(server.pid),
        state=SERVER_STATES.get(server.state, str(server.state)),
        client_pid=int(client.pid) if client is not None else 0,
        transaction_status=chr(ledger.tx_status),
        created_at=server.created_at,
        last_used=server.last_used,
        prepared_statements=len(server.statements),
        clean=ledger.is_clean(),
    )


def client_view(client: ClientConnection) -> ClientView:
    server = client.server
    return ClientView(
        pid=int(client.pid),
        peer=client.peer,
        user=client.user,
        database=client.database,
        application_name=client.application_name,
        state=CLIENT_STATES.get(client.state, str(client.state)),
        server_pid=int(server.pid) if server is not None else 0,
        wait_deadline=client.wait_deadline if client.state == codes.CLIENT_WAITING else 0.0,
        is_admin=client.is_admin,
    )


def pool_view(pool: Pool) -> PoolView:
    settings = pool.settings
    active = idle = other = 0
    for server in pool.servers:
        if server.state == codes.SERVER_ACTIVE:
            active += 1
        elif server.state == codes.SERVER_IDLE:
            idle += 1
        else:
            other += 1
    statements = pool.prepared_statement_stats()
    return PoolView(
        name=pool.name,
        database=settings.database,
        user=settings.username,
        pool_mode=settings.pool_mode,
        pool_size=settings.pool_size,
        min_pool_size=settings.min_pool_size,
        servers_active=active,
        servers_idle=idle,
        servers_other=other,
        servers_opening=pool.opening,
        clients_waiting=sum(1 for client in pool.waiters if client.state == codes.CLIENT_WAITING),
        retired=pool.retired,
        checkouts=pool.stats_checkouts,
        waits=pool.stats_waits,
        wait_timeouts=pool.stats_wait_timeouts,
        servers_opened=pool.stats_servers_opened,
        connect_errors=pool.stats_connect_errors,
        statement_cache_entries=statements["cache_entries"],
        statement_cache_hits=statements["cache_hits"],
        statement_cache_misses=statements["cache_misses"],
        statement_cache_evictions=statements["cache_evictions"],
        server_statements=statements["server_statements"],
        server_statement_evictions=statements["server_evictions"],
    )


def pool_views(pools: Iterable[Pool]) -> list[PoolView]:
    return [pool_view(pool) for pool in pools]


def server_views(pools: Iterable[Pool]) -> list[ServerView]:
    return [server_view(server) for pool in pools for server in pool.servers]


def client_views(clients: Iterable[ClientConnection]) -> list[ClientView]:
    return [client_view(client) for client in clients]
