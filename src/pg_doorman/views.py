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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pg_doorman import clock, codes
from pg_doorman.stats import AVERAGE_KEYS, Histogram

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
class HistogramView:
    """A Prometheus histogram: cumulative (le in seconds, count) pairs with +Inf last, count and sum."""

    buckets: tuple[tuple[float, int], ...]
    count: int
    sum_seconds: float


def histogram_view(histogram: Histogram) -> HistogramView:
    return HistogramView(buckets=histogram.cumulative(), count=int(histogram.count), sum_seconds=histogram.sum_us / 1e6)


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
    xact_count: int
    query_count: int
    bytes_sent: int  # to PostgreSQL
    bytes_received: int  # from PostgreSQL
    application_name: str  # as last set on the session


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
    xact_count: int
    query_count: int
    error_count: int  # ErrorResponses from PostgreSQL it received
    connected_at: float  # monotonic, at accept
    tls: bool
    wait_started: float  # monotonic time it began to wait for a server (0: not waiting)


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
    # Traffic (stats.py): totals since the pool was created, durations in microseconds.
    xact_count: int = 0
    query_count: int = 0
    bytes_received: int = 0  # from clients (sent to PostgreSQL)
    bytes_sent: int = 0  # to clients (received from PostgreSQL)
    xact_time_us: int = 0
    query_time_us: int = 0
    wait_time_us: int = 0
    wait_count: int = 0  # checkouts, waited or not
    errors: int = 0  # ErrorResponses from PostgreSQL sent to clients
    errors_by_sqlstate: dict[str, int] = field(default_factory=dict)
    maxwait_us: int = 0  # how long the oldest waiting client has waited
    oldest_active_age_ms: int = 0  # age of the oldest transaction running on a server of the pool
    clients_active: int = 0  # holding a server
    clients_idle: int = 0
    paused: bool = False
    check_query_backend: int = 0  # pooler_check_query probes sent to a server
    check_query_cache: int = 0  # answered with the reply kept from the first one
    # PgBouncer's SHOW STATS averages over the last 15 s period (stats.AVERAGE_KEYS).
    avg_xact_count: int = 0
    avg_query_count: int = 0
    avg_recv: int = 0
    avg_sent: int = 0
    avg_errors: int = 0
    avg_xact_time_us: int = 0
    avg_query_time_us: int = 0
    avg_wait_time_us: int = 0
    # Percentiles over the last minute, keys "0.5", "0.9", "0.95", "0.99", microseconds.
    query_percentiles_us: dict[str, int] = field(default_factory=dict)
    xact_percentiles_us: dict[str, int] = field(default_factory=dict)
    wait_percentiles_us: dict[str, int] = field(default_factory=dict)
    query_histogram: HistogramView = HistogramView((), 0, 0.0)
    xact_histogram: HistogramView = HistogramView((), 0, 0.0)
    wait_histogram: HistogramView = HistogramView((), 0, 0.0)


ServerFields = tuple[str, int, str, int, str, float, float, int, bool, int, int, int, int, str]
"""The values of `ServerView`'s fields, in its order."""
ClientFields = tuple[int, str, str, str, str, str, int, float, bool, int, int, int, float, bool, float]
"""The values of `ClientView`'s fields, in its order."""


def server_fields(server: ServerConnection) -> ServerFields:
    """A server's `ServerView` as a plain tuple, for readers that turn thousands of servers into rows at once:
    building a tuple costs a fraction of building the frozen dataclass."""
    client = server.client
    ledger = server.ledger
    state = server.state
    return (
        getattr(server.pool, "name", ""),
        int(server.pid),
        SERVER_STATES.get(state) or str(state),
        int(client.pid) if client is not None else 0,
        chr(ledger.tx_status),
        server.created_at,
        server.last_used,
        len(server.statements),
        ledger.is_clean(),
        int(server.xact_count),
        int(server.query_count),
        int(server.bytes_sent),
        int(server.bytes_received),
        server.params.get("application_name", ""),
    )


def server_view(server: ServerConnection) -> ServerView:
    return ServerView(*server_fields(server))


def client_fields(client: ClientConnection) -> ClientFields:
    """A client's `ClientView` as a plain tuple (see `server_fields`): SHOW CLIENTS reads 10,000 of these."""
    server = client.server
    state = client.state
    waiting = state == codes.CLIENT_WAITING
    return (
        client.pid,
        client.peer,
        client.user,
        client.database,
        client.application_name,
        CLIENT_STATES.get(state) or str(state),
        server.pid if server is not None else 0,
        client.wait_deadline if waiting else 0.0,
        client.is_admin,
        client.xact_count,
        client.query_count,
        client.error_count,
        client.connected_at,
        client.tls,
        _monotonic_of(client.wait_started) if waiting else 0.0,
    )


def client_view(client: ClientConnection) -> ClientView:
    return ClientView(*client_fields(client))


def _monotonic_of(us: int) -> float:
    """A clock.now_us() reading as a time.monotonic() value (the same clock, other units)."""
    return us / 1e6 if us else 0.0


def traffic_bytes(pool: Pool) -> tuple[int, int]:
    """Bytes clients sent to PostgreSQL and PostgreSQL sent to clients through ``pool``: its closed servers' plus
    its live servers' counters."""
    to_server = int(pool.stats_closed_bytes_sent)
    from_server = int(pool.stats_closed_bytes_received)
    for server in pool.servers:
        to_server += server.bytes_sent
        from_server += server.bytes_received
    return to_server, from_server


def pool_view(pool: Pool) -> PoolView:
    settings = pool.settings
    active = idle = other = holding = 0
    now_us = clock.now_us()
    oldest_xact = 0
    for server in pool.servers:
        if server.client is not None:
            holding += 1
        if server.state == codes.SERVER_ACTIVE:
            active += 1
            if server.xact_start and (not oldest_xact or server.xact_start < oldest_xact):
                oldest_xact = server.xact_start
        elif server.state == codes.SERVER_IDLE:
            idle += 1
        else:
            other += 1
    bytes_to_server, bytes_from_server = traffic_bytes(pool)
    waiting = 0
    oldest_wait = 0
    for client in pool.waiters:
        if client.state == codes.CLIENT_WAITING:
            waiting += 1
            if client.wait_started and not oldest_wait:
                oldest_wait = client.wait_started  # FIFO: the first one waiting is the oldest
    statements = pool.prepared_statement_stats()
    stats = pool.stats
    query, xact, wait = stats.query, stats.xact, stats.wait
    query_pct, xact_pct, wait_pct = stats.window_percentiles()
    averages = stats.averages
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
        clients_waiting=waiting,
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
        xact_count=int(xact.count),
        query_count=int(query.count),
        bytes_received=bytes_to_server,
        bytes_sent=bytes_from_server,
        xact_time_us=int(xact.sum_us),
        query_time_us=int(query.sum_us),
        wait_time_us=int(wait.sum_us),
        wait_count=int(wait.count),
        errors=stats.errors,
        errors_by_sqlstate=dict(stats.errors_by_sqlstate),
        maxwait_us=max(0, now_us - oldest_wait) if oldest_wait else 0,
        oldest_active_age_ms=max(0, now_us - oldest_xact) // 1000 if oldest_xact else 0,
        clients_active=holding,
        clients_idle=max(0, int(pool.client_count) - holding - waiting),
        paused=bool(pool.paused),
        check_query_backend=int(pool.stats_check_backend),
        check_query_cache=int(pool.stats_check_cache),
        **{key: int(averages.get(key, 0)) for key in AVERAGE_KEYS},
        query_percentiles_us=query_pct,
        xact_percentiles_us=xact_pct,
        wait_percentiles_us=wait_pct,
        query_histogram=histogram_view(query),
        xact_histogram=histogram_view(xact),
        wait_histogram=histogram_view(wait),
    )


def pool_views(pools: Iterable[Pool]) -> list[PoolView]:
    return [pool_view(pool) for pool in pools]


def server_views(pools: Iterable[Pool]) -> list[ServerView]:
    return [server_view(server) for pool in pools for server in pool.servers]


def client_views(clients: Iterable[ClientConnection]) -> list[ClientView]:
    return [ClientView(*client_fields(client)) for client in clients]
