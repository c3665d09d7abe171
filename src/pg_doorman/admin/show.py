"""The SHOW views of the admin console: snapshots (`pg_doorman.views`) and configuration in, result sets out.

Where PgBouncer 1.18 has the same view (POOLS, STATS, CLIENTS, SERVERS, DATABASES, LISTS, USERS, CONFIG,
VERSION), its columns come first, with its names, order and types, so that pgbouncer_exporter-style scrapers
read them unchanged; the original PgDoorman's further columns follow. Per view:

- POOLS: PgBouncer's 16 columns (cancel-request and ``sv_tested`` counts are 0: nothing here is in those
  states), then ``cl_idle, cl_cancel_req, pool_size, avg_xact_time, paused, oldest_active_age_ms``.
  ``cl_active`` counts clients holding a server; idle logged-in clients are ``cl_idle``.
- STATS: one row per database, as PgBouncer (scrapers label it by database alone; two rows of one database
  would collide), summed over the database's users; then ``total_errors, avg_errors``. Per-user numbers are
  in POOLS_EXTENDED and the metrics.
- CLIENTS / SERVERS: PgBouncer's 18 columns, then the original's ids and counters. The original's ``wait``
  text (idle/read/write) is not there: PgBouncer's ``wait`` (seconds waited) takes the name.
- DATABASES, LISTS, USERS, CONFIG, VERSION: PgBouncer's columns (the original's are the same or a prefix).

Every view is O(pools + servers) except CLIENTS (O(clients)) and SOCKETS (reads /proc at most every 15 s).

A view is an iterable of byte pieces (`show_chunks`). The views that grow with clients, servers, pools or
prepared statements produce their rows in chunks (`CHUNK_ROWS` rows, `CHUNK_POOLS` pools) with a
`wire.YIELD_POINT` between chunks, so that the console can let the event loop run: at 10,000 clients no
chunk holds forwarding up for more than a few milliseconds. Such a view takes its list of clients (servers,
pools) when it starts, as a plain list of references: clients that connect later are not in it, and a client
that has gone before its chunk is built is left out (a SHOW never shows a connection as "closed"); the rows
of one chunk are read at one moment, those of the next chunk a moment later.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, NamedTuple

from pg_doorman import __version__, codes, views
from pg_doorman.admin.commands import SHOW_SUBCOMMANDS
from pg_doorman.admin.wire import (
    INT4,
    INT8,
    NUMERIC,
    YIELD_POINT,
    Column,
    RowEncoder,
    Value,
    result_set,
    row_description,
)
from pg_doorman.config.units import format_duration
from pg_doorman.protocol import messages

if TYPE_CHECKING:
    from pg_doorman.admin.operations import AdminContext
    from pg_doorman.client import ClientConnection
    from pg_doorman.config.schema import PoolSettings
    from pg_doorman.pool import Pool
    from pg_doorman.server import ServerConnection

__all__ = ["CHUNK_POOLS", "CHUNK_ROWS", "SHOW_VIEWS", "PoolTotals", "show", "show_chunks"]

Rows = list[Sequence[Value]]
Chunks = Iterator[bytes]
CHUNK_ROWS = 250
"""Rows of a connection view (CLIENTS, SERVERS, PREPARED_STATEMENTS) built between two yield points."""
CHUNK_POOLS = 25
"""Pools whose snapshots (`views.pool_view`: counters, percentiles, histograms) are taken between two yield
points."""
_SHOW_COMPLETE = messages.command_complete("SHOW")

HELP_ITEMS = (
    "SHOW HELP|CONFIG|DATABASES|POOLS|POOLS_EXTENDED|POOLS_MEMORY|PREPARED_STATEMENTS",
    "SHOW CLIENTS|SERVERS|CONNECTIONS|STATS|LISTS|USERS|STARTUP_PARAMETERS|AUTH_QUERY|SOCKETS|LOG_LEVEL|VERSION",
    "SET log_level = 'error|warn|info|debug|trace|off|default'",
    "PAUSE [db]",
    "RESUME [db]",
    "RECONNECT [db]",
    "KILL [db]",
    "RELOAD",
    "SHUTDOWN",
)


def _cols(spec: str, type_oid: int) -> list[Column]:
    return [Column(name, type_oid) for name in spec.split()]


_wall_cache: dict[int, str] = {}


def _wall(monotonic_at: float, now_wall: float, now_mono: float) -> str:
    """A monotonic instant as PgBouncer prints times: ``2024-01-31 12:00:00 UTC`` (one strftime per second)."""
    if monotonic_at <= 0:
        return ""
    second = int(now_wall - (now_mono - monotonic_at))
    text = _wall_cache.get(second)
    if text is None:
        if len(_wall_cache) > 65536:
            _wall_cache.clear()
        text = _wall_cache[second] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(second))
    return text


def _ptr(ident: int) -> str:
    return f"{ident & 0xFFFFFFFF:#010x}" if ident else ""


def _split_peer(peer: str) -> tuple[str, int]:
    host, sep, port = peer.rpartition(":")
    if not sep or not port.isdigit():
        return peer, 0
    return host, int(port)


def _chunked(columns: Sequence[Column], row_chunks: Iterable[Iterable[Sequence[Value]]]) -> Chunks:
    """A result set from rows that come in chunks: a yield point after each chunk but the last.

    A chunk may be a generator that makes each row as it is encoded: then no rows pile up as live tuples, which
    would set off the cyclic garbage collector, whose full pass over a process with 10,000 clients holds the
    event loop up longer than the whole SHOW."""
    yield row_description(columns)
    encoder = RowEncoder(len(columns))
    first = True
    for rows in row_chunks:
        if not first:
            yield YIELD_POINT
        first = False
        data = encoder.rows(rows)
        if data:  # an empty piece would read as a yield point
            yield data
    yield _SHOW_COMPLETE


def _pool_view_chunks(ops: AdminContext) -> Iterator[list[views.PoolView]]:
    """Snapshots of the pools that are there now, `CHUNK_POOLS` at a time."""
    pools = ops.pools()
    for start in range(0, len(pools), CHUNK_POOLS):
        yield views.pool_views(pools[start : start + CHUNK_POOLS])


class PoolTotals(NamedTuple):
    """What the views that sum over pools (STATS, DATABASES, LISTS) read of a `views.PoolView`, same names.

    A tuple of plain values, which the garbage collector stops tracking: keeping a thousand whole snapshots
    (dicts, histograms) alive until the sums are made would set off a full collection."""

    database: str
    user: str
    pool_mode: str
    pool_size: int
    min_pool_size: int
    servers_active: int
    servers_idle: int
    servers_other: int
    servers_opening: int
    clients_active: int
    clients_waiting: int
    clients_idle: int
    paused: bool
    xact_count: int
    query_count: int
    bytes_received: int
    bytes_sent: int
    xact_time_us: int
    query_time_us: int
    wait_time_us: int
    errors: int
    avg_xact_count: int
    avg_query_count: int
    avg_recv: int
    avg_sent: int
    avg_errors: int
    avg_xact_time_us: int
    avg_query_time_us: int
    avg_wait_time_us: int


def _all_pool_totals(ops: AdminContext) -> Generator[bytes, None, list[PoolTotals]]:
    """Every pool's totals, for views that sum over pools; yields a yield point between chunks."""
    out: list[PoolTotals] = []
    names = PoolTotals._fields
    for chunk in _pool_view_chunks(ops):
        if out:
            yield YIELD_POINT
        out.extend(PoolTotals._make([getattr(p, name) for name in names]) for p in chunk)
    return out


# ------------------------------------------------------------------ POOLS

POOLS_COLUMNS = [
    Column("database"),
    Column("user"),
    *_cols(
        "cl_active cl_waiting cl_active_cancel_req cl_waiting_cancel_req sv_active sv_active_cancel "
        "sv_being_canceled sv_idle sv_used sv_tested sv_login maxwait maxwait_us",
        INT4,
    ),
    Column("pool_mode"),
    *_cols("cl_idle cl_cancel_req pool_size", INT4),
    Column("avg_xact_time", NUMERIC),
    Column("paused", INT4),
    Column("oldest_active_age_ms", INT8),
]


def _pools_row(p: views.PoolView) -> Sequence[Value]:
    maxwait_s, maxwait_us = divmod(p.maxwait_us, 1_000_000)
    return (
        p.database,
        p.user,
        p.clients_active,
        p.clients_waiting,
        0,
        0,
        p.servers_active,
        0,
        0,
        p.servers_idle,
        p.servers_other,
        0,
        p.servers_opening,
        maxwait_s,
        maxwait_us,
        p.pool_mode,
        p.clients_idle,
        0,
        p.pool_size,
        p.avg_xact_time_us,
        p.paused,
        p.oldest_active_age_ms,
    )


def show_pools(ops: AdminContext) -> Chunks:
    return _chunked(POOLS_COLUMNS, ([_pools_row(p) for p in chunk] for chunk in _pool_view_chunks(ops)))


POOLS_EXTENDED_COLUMNS = [
    Column("database"),
    Column("user"),
    *_cols("cl_active cl_waiting sv_active sv_idle sv_used sv_login pool_size maxwait maxwait_us", NUMERIC),
    Column("pool_mode"),
    *_cols(
        "bytes_recieved bytes_sent query_0.99 transaction_0.99 query_0.95 transaction_0.95 query_0.5 "
        "transaction_0.5 cl_idle wait_0.99 wait_0.95 wait_0.5 bytes_received errors paused",
        NUMERIC,
    ),
]


def _pools_extended_row(p: views.PoolView) -> Sequence[Value]:
    maxwait_s, maxwait_us = divmod(p.maxwait_us, 1_000_000)
    q, x, w = p.query_percentiles_us, p.xact_percentiles_us, p.wait_percentiles_us
    return (
        p.database,
        p.user,
        p.clients_active,
        p.clients_waiting,
        p.servers_active,
        p.servers_idle,
        p.servers_other,
        p.servers_opening,
        p.pool_size,
        maxwait_s,
        maxwait_us,
        p.pool_mode,
        p.bytes_received,
        p.bytes_sent,
        q.get("0.99", 0),
        x.get("0.99", 0),
        q.get("0.95", 0),
        x.get("0.95", 0),
        q.get("0.5", 0),
        x.get("0.5", 0),
        p.clients_idle,
        w.get("0.99", 0),
        w.get("0.95", 0),
        w.get("0.5", 0),
        p.bytes_received,
        p.errors,
        p.paused,
    )


def show_pools_extended(ops: AdminContext) -> Chunks:
    """The original's POOLS_EXTENDED (``bytes_recieved`` spelled as it spells it), then a few more columns:
    idle clients, wait percentiles, ``bytes_received`` spelled right, errors and the paused flag."""
    chunks = ([_pools_extended_row(p) for p in chunk] for chunk in _pool_view_chunks(ops))
    return _chunked(POOLS_EXTENDED_COLUMNS, chunks)


POOLS_MEMORY_COLUMNS = [
    Column("database"),
    Column("user"),
    *_cols(
        "pool_prepared_count pool_prepared_hits pool_prepared_misses pool_prepared_evictions "
        "server_prepared_count server_prepared_evictions",
        INT8,
    ),
]


def show_pools_memory(ops: AdminContext) -> Chunks:
    """Prepared-statement caches per pool: the pool-wide map and what its servers hold."""
    chunks = (
        [
            (
                p.database,
                p.user,
                p.statement_cache_entries,
                p.statement_cache_hits,
                p.statement_cache_misses,
                p.statement_cache_evictions,
                p.server_statements,
                p.server_statement_evictions,
            )
            for p in chunk
        ]
        for chunk in _pool_view_chunks(ops)
    )
    return _chunked(POOLS_MEMORY_COLUMNS, chunks)


PREPARED_COLUMNS = [Column("pool"), Column("name"), Column("query"), Column("parameter_types", INT4)]


def _pool_statements(pool: Pool) -> Iterable[tuple[str, str, int]]:
    """(name, query, number of declared parameter types) of a pool's cached statements."""
    by_key = getattr(pool.registry, "_by_key", {})  # StatementRegistry's map; no view of it exists yet
    for stmt in list(by_key.values()):
        types = stmt.types
        count = int.from_bytes(types[:2], "big") if len(types) >= 2 else 0
        yield stmt.name.decode(errors="replace"), stmt.query.decode(errors="replace"), count


def _prepared_rows(ops: AdminContext) -> Iterator[Rows]:
    rows: Rows = []
    for pool in ops.pools():
        for name, query, count in _pool_statements(pool):
            rows.append((pool.name, name, query, count))
            if len(rows) >= CHUNK_ROWS:
                yield rows
                rows = []
    yield rows


def show_prepared_statements(ops: AdminContext) -> Chunks:
    return _chunked(PREPARED_COLUMNS, _prepared_rows(ops))


# ------------------------------------------------------------------ STATS

STATS_COLUMNS = [
    Column("database"),
    *_cols(
        "total_xact_count total_query_count total_received total_sent total_xact_time total_query_time "
        "total_wait_time avg_xact_count avg_query_count avg_recv avg_sent avg_xact_time avg_query_time "
        "avg_wait_time total_errors avg_errors",
        NUMERIC,
    ),
]


def _weighted(pairs: list[tuple[int, int]]) -> int:
    """Mean of per-pool averages, weighted by how many transactions/queries each average is over."""
    total = sum(weight for _, weight in pairs)
    if total <= 0:
        return max((value for value, _ in pairs), default=0)
    return round(sum(value * weight for value, weight in pairs) / total)


def show_stats(ops: AdminContext) -> Chunks:
    by_database: dict[str, list[PoolTotals]] = {}
    for p in (yield from _all_pool_totals(ops)):
        by_database.setdefault(p.database, []).append(p)
    rows: Rows = []
    for database, pools in by_database.items():
        rows.append(
            (
                database,
                sum(p.xact_count for p in pools),
                sum(p.query_count for p in pools),
                sum(p.bytes_received for p in pools),
                sum(p.bytes_sent for p in pools),
                sum(p.xact_time_us for p in pools),
                sum(p.query_time_us for p in pools),
                sum(p.wait_time_us for p in pools),
                sum(p.avg_xact_count for p in pools),
                sum(p.avg_query_count for p in pools),
                sum(p.avg_recv for p in pools),
                sum(p.avg_sent for p in pools),
                _weighted([(p.avg_xact_time_us, p.avg_xact_count) for p in pools]),
                _weighted([(p.avg_query_time_us, p.avg_query_count) for p in pools]),
                _weighted([(p.avg_wait_time_us, p.avg_xact_count) for p in pools]),
                sum(p.errors for p in pools),
                sum(p.avg_errors for p in pools),
            )
        )
    yield result_set(STATS_COLUMNS, rows)


# ---------------------------------------------------------- CLIENTS, SERVERS

_CONNECTION_COLUMNS = [
    Column("type"),
    Column("user"),
    Column("database"),
    Column("state"),
    Column("addr"),
    Column("port", INT4),
    Column("local_addr"),
    Column("local_port", INT4),
    Column("connect_time"),
    Column("request_time"),
    Column("wait", INT4),
    Column("wait_us", INT4),
    Column("close_needed", INT4),
    Column("ptr"),
    Column("link"),
    Column("remote_pid", INT4),
    Column("tls"),
    Column("application_name"),
]
CLIENTS_COLUMNS = [
    *_CONNECTION_COLUMNS,
    Column("client_id"),
    *_cols("transaction_count query_count error_count age_seconds", INT8),
]


def _client_rows(ops: AdminContext) -> Iterator[Iterator[Sequence[Value]]]:
    general = ops.config.general
    clients = list(ops.clients)
    for start in range(0, len(clients), CHUNK_ROWS):
        yield _client_chunk(clients[start : start + CHUNK_ROWS], general.host, general.port)


def _client_chunk(clients: list[ClientConnection], local_addr: str, local_port: int) -> Iterator[Sequence[Value]]:
    """The rows of some clients, each made as it is encoded (no list of rows: see `_chunked`)."""
    now_wall, now_mono = time.time(), time.monotonic()
    fields = views.client_fields
    closed = views.CLIENT_STATES[codes.CLIENT_CLOSED]
    for client in clients:
        (pid, peer, user, database, app_name, state, server_pid, _, is_admin, xacts, queries, errors,
         connected_at, tls, wait_started) = fields(client)  # fmt: skip
        if state == closed:
            continue
        addr, port = _split_peer(peer)
        ident = pid & 0xFFFFFFFF
        waited_us = int((now_mono - wait_started) * 1_000_000) if wait_started > 0 else 0
        connected = _wall(connected_at, now_wall, now_mono)
        yield (
            "C",
            user,
            database,
            "active" if is_admin else state,
            addr,
            port,
            local_addr,
            local_port,
            connected,
            connected,
            waited_us // 1_000_000,
            waited_us % 1_000_000,
            0,
            f"{ident:#010x}" if ident else "",
            _ptr(server_pid),
            0,
            "TLS" if tls else "",
            app_name,
            f"0x{ident:08X}" if ident else "",
            xacts,
            queries,
            errors,
            int(now_mono - connected_at) if connected_at > 0 else 0,
        )


def show_clients(ops: AdminContext) -> Chunks:
    """One row per connected client (the only O(clients) view): admin sessions included, as PgBouncer does."""
    return _chunked(CLIENTS_COLUMNS, _client_rows(ops))


SERVERS_COLUMNS = [
    *_CONNECTION_COLUMNS,
    Column("server_id"),
    Column("server_process_id", INT4),
    *_cols("transaction_count query_count bytes_sent bytes_received age_seconds prepare_cache_size", INT8),
]


def _server_rows(ops: AdminContext) -> Iterator[Iterator[Sequence[Value]]]:
    servers = [(pool.settings, server) for pool in ops.pools() for server in list(pool.servers)]
    for start in range(0, len(servers), CHUNK_ROWS):
        yield _server_chunk(servers[start : start + CHUNK_ROWS])


def _server_chunk(servers: list[tuple[PoolSettings, ServerConnection]]) -> Iterator[Sequence[Value]]:
    now_wall, now_mono = time.time(), time.monotonic()
    fields = views.server_fields
    closed = views.SERVER_STATES[codes.SERVER_CLOSED]
    for settings, server in servers:
        (_, pid, state, client_pid, _, created_at, last_used, statements, _, xacts, queries, sent, received,
         app_name) = fields(server)  # fmt: skip
        if state == closed:
            continue
        ptr = _ptr(pid)
        yield (
            "S",
            settings.username,
            settings.database,
            state,
            settings.server_host,
            settings.server_port,
            "",
            0,
            _wall(created_at, now_wall, now_mono),
            _wall(last_used, now_wall, now_mono),
            0,
            0,
            0,
            ptr,
            _ptr(client_pid),
            pid,
            "",
            app_name,
            ptr.upper().replace("0X", "0x"),
            pid,
            xacts,
            queries,
            sent,
            received,
            int(now_mono - created_at),
            statements,
        )


def show_servers(ops: AdminContext) -> Chunks:
    return _chunked(SERVERS_COLUMNS, _server_rows(ops))


CONNECTIONS_COLUMNS = _cols("total errors tls plain cancel", NUMERIC)


def show_connections(ops: AdminContext) -> bytes:
    """Connections accepted since start (the original's columns): refused ones (max_connections) are
    ``errors``, CancelRequests ``cancel``, the rest ``plain`` (no TLS listener yet: ``tls`` is 0)."""
    total, refused, cancel = ops.connection_counts()
    return result_set(CONNECTIONS_COLUMNS, [(total, refused, 0, max(0, total - refused - cancel), cancel)])


# ---------------------------------------------------- DATABASES, USERS, LISTS

DATABASES_COLUMNS = [
    Column("name"),
    Column("host"),
    Column("port", INT4),
    Column("database"),
    Column("force_user"),
    *_cols("pool_size min_pool_size reserve_pool", INT4),
    Column("pool_mode"),
    *_cols("max_connections current_connections paused disabled", INT4),
]


def show_databases(ops: AdminContext) -> Chunks:
    """One row per configured database; pool sizes summed over its users (each user has a pool of its own)."""
    by_database: dict[str, list[PoolTotals]] = {}
    for p in (yield from _all_pool_totals(ops)):
        by_database.setdefault(p.database, []).append(p)
    rows: Rows = []
    for name, pool_config in ops.config.pools.items():
        pools = by_database.get(name, [])
        modes = {p.pool_mode for p in pools} or {pool_config.pool_mode}
        rows.append(
            (
                name,
                pool_config.server_host,
                pool_config.server_port,
                pool_config.server_database,
                "",
                sum(p.pool_size for p in pools),
                sum(p.min_pool_size for p in pools),
                int(getattr(pool_config, "reserve_pool_size", 0) or 0),
                modes.pop() if len(modes) == 1 else "",
                int(getattr(pool_config, "max_db_connections", 0) or 0),
                sum(p.servers_active + p.servers_idle + p.servers_other + p.servers_opening for p in pools),
                bool(pools) and all(p.paused for p in pools),
                0,
            )
        )
    yield result_set(DATABASES_COLUMNS, rows)


USERS_COLUMNS = [Column("name"), Column("pool_mode")]


def show_users(ops: AdminContext) -> bytes:
    """Each user name once; its pool mode when all of its pools agree (else empty, as PgBouncer's unset)."""
    modes: dict[str, set[str]] = {}
    for pool in ops.pools():
        modes.setdefault(pool.settings.username, set()).add(pool.settings.pool_mode)
    rows: Rows = [(name, next(iter(m)) if len(m) == 1 else "") for name, m in modes.items()]
    return result_set(USERS_COLUMNS, rows)


LISTS_COLUMNS = [Column("list"), Column("items", INT4)]


def show_lists(ops: AdminContext) -> Chunks:
    pools = yield from _all_pool_totals(ops)
    idle = sum(p.clients_idle for p in pools)
    used = sum(p.clients_active + p.clients_waiting for p in pools)
    rows: Rows = [
        ("databases", len({p.database for p in pools})),
        ("users", len({p.user for p in pools})),
        ("pools", len(pools)),
        ("free_clients", idle),
        ("used_clients", used),
        ("login_clients", max(0, len(ops.clients) - idle - used)),
        ("free_servers", sum(p.servers_idle for p in pools)),
        ("used_servers", sum(p.servers_active + p.servers_other for p in pools)),
        ("dns_names", 0),
        ("dns_zones", 0),
        ("dns_queries", 0),
        ("dns_pending", 0),
    ]
    yield result_set(LISTS_COLUMNS, rows)


# ------------------------------------------------------------------ CONFIG

CONFIG_COLUMNS = [Column("key"), Column("value"), Column("default"), Column("changeable")]
# general keys a reload cannot change (the listener, the process shape): "changeable" is "no" for them.
RESTART_ONLY = frozenset(
    {"host", "port", "backlog", "unix_socket_dir", "unix_socket_mode", "worker_threads", "daemon_pid_file"}
)
SECRET_KEYS = frozenset({"admin_password", "password", "server_password"})


def _config_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format_duration(value) if value != float("inf") else "inf"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, tuple | list):
        return ", ".join(str(v) for v in value)
    return str(value)


def _field_default(field: dataclasses.Field[object]) -> str:
    if field.default is not dataclasses.MISSING:
        return _config_text(field.default)
    if field.default_factory is not dataclasses.MISSING:
        return _config_text(field.default_factory())
    return "-"


def _config_rows(prefix: str, obj: object, skip: Sequence[str], changeable: Callable[[str], bool]) -> Rows:
    rows: Rows = []
    for field in dataclasses.fields(obj):  # type: ignore[arg-type]
        if field.name in skip:
            continue
        value = getattr(obj, field.name)
        text = ("********" if value else "") if field.name in SECRET_KEYS else _config_text(value)
        rows.append((prefix + field.name, text, _field_default(field), "yes" if changeable(field.name) else "no"))
    return rows


def show_config(ops: AdminContext) -> bytes:
    """Every general key, then every pool's and user's, with its value, default and whether RELOAD applies it
    (passwords masked)."""
    config = ops.config
    rows = _config_rows("", config.general, (), lambda name: name not in RESTART_ONLY)
    for name, pool in config.pools.items():
        rows.extend(_config_rows(f"pools.{name}.", pool, ("name", "users"), lambda _: True))
        rows.append((f"pools.{name}.users", ", ".join(u.username for u in pool.users), "-", "yes"))
        for user in pool.users:
            rows.extend(_config_rows(f"pools.{name}.users.{user.username}.", user, ("username",), lambda _: True))
    return result_set(CONFIG_COLUMNS, rows)


# ----------------------------------------------------------- small views


def show_help(ops: AdminContext) -> bytes:
    return result_set([Column("item")], [(item,) for item in HELP_ITEMS])


def show_version(ops: AdminContext) -> bytes:
    return result_set([Column("version")], [(f"pg_doorman {__version__}",)])


def show_log_level(ops: AdminContext) -> bytes:
    return result_set([Column("log_level")], [(ops.log_level,)])


STARTUP_PARAMETERS_COLUMNS = [Column(name) for name in ("user", "database", "parameter", "value", "source", "state")]


def show_startup_parameters(ops: AdminContext) -> bytes:
    """The parameters each pool sends in its servers' StartupMessage, and which level of the config set them."""
    config = ops.config
    general_params = config.general.startup_parameters
    rows: Rows = []
    for pool in ops.pools():
        s = pool.settings
        pool_config = config.pools.get(s.database)
        pool_params = pool_config.startup_parameters if pool_config is not None else {}
        rows.append((s.username, s.database, "application_name", s.application_name, "general", "applied"))
        for name, value in s.startup_parameters.items():
            source = "pool" if name in pool_params else "general" if name in general_params else "pool"
            rows.append((s.username, s.database, name, value, source, "applied"))
    return result_set(STARTUP_PARAMETERS_COLUMNS, rows)


AUTH_QUERY_COLUMNS = [
    Column("database"),
    *_cols(
        "cache_entries cache_hits cache_misses cache_refetches cache_rate_limited auth_success auth_failure "
        "executor_queries executor_errors dynamic_pools_current dynamic_pools_created dynamic_pools_destroyed",
        INT8,
    ),
]


def show_auth_query(ops: AdminContext) -> bytes:
    """One row per database with an auth_query: its cache, logins, lookups and passthrough pools."""
    registry = ops.registry
    rows: Rows = []
    for db, auth in sorted(registry.auth_queries.items()):
        st = auth.stats
        current = 0
        if not auth.dedicated:
            current = sum(1 for p in registry.pools.values() if p.settings.auth_query and p.settings.database == db)
        rows.append(
            (
                db,
                auth.cache_entries(),
                st.cache_hits,
                st.cache_misses,
                st.cache_refetches,
                st.cache_rate_limited,
                st.auth_success,
                st.auth_failure,
                st.executor_queries,
                st.executor_errors,
                current,
                st.dynamic_pools_created,
                st.dynamic_pools_destroyed,
            )
        )
    return result_set(AUTH_QUERY_COLUMNS, rows)


# ------------------------------------------------------------------ SOCKETS

# /proc/net/tcp "st" values 1..13, in order (include/net/tcp_states.h).
_TCP_STATES = (
    "established",
    "syn_sent",
    "syn_recv",
    "fin_wait1",
    "fin_wait2",
    "time_wait",
    "close",
    "close_wait",
    "last_ack",
    "listen",
    "closing",
    "new_syn_recv",
    "bound_inactive",
)
_UNIX_STATES = ("free", "unconnected", "connecting", "connected", "disconnecting")
SOCKETS_COLUMNS = [
    *_cols(" ".join(f"tcp_{state}" for state in _TCP_STATES), INT8),
    *_cols(" ".join(f"tcp6_{state}" for state in _TCP_STATES), INT8),
    *_cols(" ".join(f"unix_{state}" for state in _UNIX_STATES) + " unix_dgram unix_seq_packet unknown", INT8),
]
SOCKETS_CACHE_SECONDS = 15.0
_sockets_cache: tuple[float, tuple[int, ...]] | None = None


def _count_inet(path: str, counts: list[int]) -> int:
    """Add a /proc/net/tcp{,6} file's sockets to ``counts`` by state (st column, 1-based hex); unknown returned."""
    unknown = 0
    try:
        with open(path, encoding="ascii") as f:
            next(f, None)
            for line in f:
                fields = line.split(None, 4)
                if len(fields) < 4:
                    continue
                state = int(fields[3], 16)
                if 1 <= state <= len(counts):
                    counts[state - 1] += 1
                else:
                    unknown += 1
    except OSError:
        pass
    return unknown


def _count_unix(path: str) -> tuple[list[int], int, int, int]:
    states = [0] * len(_UNIX_STATES)
    dgram = seqpacket = unknown = 0
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            next(f, None)
            for line in f:
                fields = line.split()
                if len(fields) < 6:
                    continue
                kind, state = int(fields[4], 16), int(fields[5], 16)
                if kind == 2:
                    dgram += 1
                elif kind == 5:
                    seqpacket += 1
                elif 0 <= state < len(states):
                    states[state] += 1
                else:
                    unknown += 1
    except OSError:
        pass
    return states, dgram, seqpacket, unknown


def socket_counts(now: float | None = None, proc: str = "/proc") -> tuple[int, ...]:
    """Socket counts by family and state from /proc/net (this network namespace), refreshed every 15 s."""
    global _sockets_cache
    now = time.monotonic() if now is None else now
    cached = _sockets_cache
    if cached is not None and now - cached[0] < SOCKETS_CACHE_SECONDS and proc == "/proc":
        return cached[1]
    tcp = [0] * len(_TCP_STATES)
    tcp6 = [0] * len(_TCP_STATES)
    unknown = _count_inet(os.path.join(proc, "net/tcp"), tcp) + _count_inet(os.path.join(proc, "net/tcp6"), tcp6)
    unix, dgram, seqpacket, unix_unknown = _count_unix(os.path.join(proc, "net/unix"))
    counts = (*tcp, *tcp6, *unix, dgram, seqpacket, unknown + unix_unknown)
    if proc == "/proc":
        _sockets_cache = (now, counts)
    return counts


def show_sockets(ops: AdminContext) -> bytes:
    return result_set(SOCKETS_COLUMNS, [socket_counts()])


def _whole(view: Callable[[AdminContext], bytes]) -> Callable[[AdminContext], Iterable[bytes]]:
    """A view small enough to build in one go, as a view of one piece."""

    def pieces(ops: AdminContext) -> Iterable[bytes]:
        return (view(ops),)

    return pieces


SHOW_VIEWS: dict[str, Callable[[AdminContext], Iterable[bytes]]] = {
    "help": _whole(show_help),
    "config": _whole(show_config),
    "databases": show_databases,
    "pools": show_pools,
    "pools_extended": show_pools_extended,
    "pools_memory": show_pools_memory,
    "pool_memory": show_pools_memory,
    "prepared_statements": show_prepared_statements,
    "clients": show_clients,
    "servers": show_servers,
    "connections": _whole(show_connections),
    "stats": show_stats,
    "lists": show_lists,
    "users": _whole(show_users),
    "startup_parameters": _whole(show_startup_parameters),
    "auth_query": _whole(show_auth_query),
    "sockets": _whole(show_sockets),
    "log_level": _whole(show_log_level),
    "version": _whole(show_version),
}
assert set(SHOW_SUBCOMMANDS) <= set(SHOW_VIEWS)


def show_chunks(ops: AdminContext, what: str) -> Iterable[bytes] | None:
    """The result set of ``SHOW what`` (any letter case) as pieces with yield points between chunks (see the
    module docstring), or None when there is no such view. Rows are read as the pieces are asked for."""
    view = SHOW_VIEWS.get(what.lower())
    return view(ops) if view is not None else None


def show(ops: AdminContext, what: str) -> bytes | None:
    """The whole result set of ``SHOW what`` in one piece, or None when there is no such view."""
    pieces = show_chunks(ops, what)
    return b"".join(pieces) if pieces is not None else None
