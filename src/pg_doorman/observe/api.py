"""The JSON API (inventory §6.3): each read route is a function from the running process to a JSON-ready value.

Everything is read through the snapshots of `pg_doorman.views` (and the configuration), never from connection
internals. Pool-level routes are O(pools + servers); ``/api/clients`` walks the clients and is bounded by
``?limit=`` (default `CLIENTS_DEFAULT_LIMIT`). Mutations (`admin_action`) call the process's own operations.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import platform
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from pg_doorman import __version__, events, gcpolicy, implementation, views
from pg_doorman.observe import procinfo
from pg_doorman.observe.metrics import _stat

if TYPE_CHECKING:
    from pg_doorman.app import Application
    from pg_doorman.observe.logtap import LogRing
    from pg_doorman.pool import Pool

CLIENTS_DEFAULT_LIMIT = 1000
LOGS_DEFAULT_LIMIT = 500
SECRET_KEYS = ("admin_password", "password", "server_password", "bind_password")
# Settings that a reload does not change (inventory §2.9): listeners, sockets, process layout.
RESTART_REQUIRED = frozenset(
    {
        "general.host", "general.port", "general.backlog", "general.unix_socket_dir", "general.unix_socket_mode",
        "general.worker_threads", "general.tls_certificate", "general.tls_private_key", "general.tls_ca_cert",
        "general.tls_mode", "web.enabled", "web.host", "web.port",
    }
)  # fmt: skip

JSON = Any

log = logging.getLogger("pg_doorman.web")


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def jsonable(value: object) -> JSON:
    """Dataclasses, tuples and floats as JSON allows them (infinite bucket bounds become "+Inf")."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: "********" if f.name in SECRET_KEYS and getattr(value, f.name) else jsonable(getattr(value, f.name))
            for f in dataclasses.fields(value)
        }
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return "+Inf" if value > 0 else ("-Inf" if value < 0 else None)
    return value


def _pools(app: Application) -> list[views.PoolView]:
    return views.pool_views(app.registry.pools.values())


# ---------------------------------------------------------------------------- read routes


def version(app: Application) -> JSON:
    return {"version": __version__, "implementation": implementation(), "python": platform.python_version()}


def overview(app: Application) -> JSON:
    pools = _pools(app)
    now = time.time()
    return {
        "version": __version__,
        "pid": os.getpid(),
        "started_at": procinfo.PROCESS_START,
        "uptime_seconds": round(now - procinfo.PROCESS_START, 3),
        "pools": len(pools),
        "paused_pools": sum(1 for p in pools if _stat(p, "paused", False)),
        "clients": {
            "total": len(app.clients),
            "active": sum(_stat(p, "clients_active") for p in pools),
            "idle": sum(_stat(p, "clients_idle") for p in pools),
            "waiting": sum(p.clients_waiting for p in pools),
        },
        "servers": {
            "active": sum(p.servers_active for p in pools),
            "idle": sum(p.servers_idle for p in pools),
            "other": sum(p.servers_other for p in pools),
            "pool_size": sum(p.pool_size for p in pools),
        },
        "rates": {  # per second, over the last 15 s stats period
            "transactions": sum(_stat(p, "avg_xact_count") for p in pools),
            "queries": sum(_stat(p, "avg_query_count") for p in pools),
            "bytes_received": sum(_stat(p, "avg_recv") for p in pools),
            "bytes_sent": sum(_stat(p, "avg_sent") for p in pools),
            "errors": sum(_stat(p, "avg_errors") for p in pools),
        },
        "maxwait_us": max((_stat(p, "maxwait_us") for p in pools), default=0),
        "memory_bytes": procinfo.rss_bytes(),
    }


def pools(app: Application) -> JSON:
    return [jsonable(view) for view in _pools(app)]


def clients(app: Application, query: Mapping[str, str]) -> JSON:
    limit = _int_param(query, "limit", CLIENTS_DEFAULT_LIMIT)
    database, user = query.get("db"), query.get("user")
    now = time.monotonic()
    found: list[JSON] = []
    total = 0
    for view in views.client_views(app.clients):
        if (database and view.database != database) or (user and view.user != user):
            continue
        total += 1
        if len(found) < limit:
            entry = jsonable(view)
            connected_at = _stat(view, "connected_at", 0.0)
            entry["age_seconds"] = round(now - connected_at, 3) if connected_at else None
            wait_started = _stat(view, "wait_started", 0.0)
            entry["wait_seconds"] = round(now - wait_started, 3) if wait_started else 0.0
            found.append(entry)
    return {"total": total, "clients": found}


def servers(app: Application) -> JSON:
    now = time.monotonic()
    result = []
    for view in views.server_views(app.registry.pools.values()):
        entry = jsonable(view)
        entry["age_seconds"] = round(now - view.created_at, 3)
        entry["idle_seconds"] = round(max(now - view.last_used, 0.0), 3) if view.state == "idle" else 0.0
        result.append(entry)
    return result


def databases(app: Application) -> JSON:
    live = {(v.database, v.user): v for v in _pools(app)}
    result = []
    for settings in app.config.all_pool_settings():
        view = live.get((settings.database, settings.username))
        result.append(
            {
                "name": settings.database,
                "user": settings.username,
                "host": settings.server_host,
                "port": settings.server_port,
                "database": settings.server_database,
                "server_user": settings.server_username,
                "pool_size": settings.pool_size,
                "min_pool_size": settings.min_pool_size,
                "pool_mode": settings.pool_mode,
                "current_connections": (view.servers_active + view.servers_idle + view.servers_other) if view else 0,
            }
        )
    return result


STATS_FIELDS = (
    ("total_xact_count", "xact_count"),
    ("total_query_count", "query_count"),
    ("total_received", "bytes_received"),
    ("total_sent", "bytes_sent"),
    ("total_xact_time", "xact_time_us"),
    ("total_query_time", "query_time_us"),
    ("total_wait_time", "wait_time_us"),
    ("total_errors", "errors"),
    ("avg_xact_count", "avg_xact_count"),
    ("avg_query_count", "avg_query_count"),
    ("avg_recv", "avg_recv"),
    ("avg_sent", "avg_sent"),
    ("avg_errors", "avg_errors"),
    ("avg_xact_time", "avg_xact_time_us"),
    ("avg_query_time", "avg_query_time_us"),
    ("avg_wait_time", "avg_wait_time_us"),
)


def stats(app: Application) -> JSON:
    """SHOW STATS as JSON (times in microseconds, averages over the last 15 s period), plus percentiles."""
    result = []
    for view in _pools(app):
        entry: dict[str, JSON] = {"database": view.database, "user": view.user}
        for column, field in STATS_FIELDS:
            entry[column] = _stat(view, field)
        for kind in ("query", "xact", "wait"):
            entry[f"{kind}_percentiles_us"] = dict(_stat(view, f"{kind}_percentiles_us", {}))
        result.append(entry)
    return result


def users(app: Application) -> JSON:
    return [
        {"name": s.username, "database": s.database, "pool_mode": s.pool_mode} for s in app.config.all_pool_settings()
    ]


def config(app: Application) -> JSON:
    """Every setting in effect with its value (secrets masked) and whether changing it needs a restart."""
    cfg = app.config
    entries: list[dict[str, JSON]] = []

    def add(prefix: str, obj: object) -> None:
        assert dataclasses.is_dataclass(obj)
        for f in dataclasses.fields(obj):
            if f.name in ("users", "section"):
                continue
            key = f"{prefix}.{f.name}"
            value = getattr(obj, f.name)
            if f.name in SECRET_KEYS and value:
                value = "********"
            entries.append({"key": key, "value": jsonable(value), "restart_required": key in RESTART_REQUIRED})

    add("general", cfg.general)
    add("web", cfg.web)
    for name, pool in cfg.pools.items():
        add(f"pools.{name}", pool)
        for index, user in enumerate(pool.users):
            add(f"pools.{name}.users[{index}]", user)
    return {"path": cfg.path, "warnings": list(cfg.warnings), "settings": entries}


def log_level(app: Application) -> JSON:
    return {"log_level": logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()}


def process(app: Application) -> JSON:
    user_cpu, system_cpu = procinfo.cpu_seconds()
    return {
        "pid": os.getpid(),
        "version": __version__,
        "implementation": implementation(),
        "python": platform.python_version(),
        "started_at": procinfo.PROCESS_START,
        "uptime_seconds": round(time.time() - procinfo.PROCESS_START, 3),
        "memory_bytes": procinfo.rss_bytes(),
        "cpu_user_seconds": user_cpu,
        "cpu_system_seconds": system_cpu,
        "open_files": procinfo.open_files(),
        "config_path": app.config.path,
        "shutting_down": app.shutting_down,
        "gc": dataclasses.asdict(gcpolicy.figures()),
    }


def connections(app: Application) -> JSON:
    accepted, refused, cancels = app.connections_accepted, app.connections_refused, app.cancel_requests
    return {"total": accepted, "errors": refused, "tls": 0, "plain": accepted - cancels, "cancel": cancels}


def prepared(app: Application) -> JSON:
    return [
        {
            "database": v.database,
            "user": v.user,
            "pool_entries": v.statement_cache_entries,
            "pool_hits": v.statement_cache_hits,
            "pool_misses": v.statement_cache_misses,
            "pool_evictions": v.statement_cache_evictions,
            "server_entries": v.server_statements,
            "server_evictions": v.server_statement_evictions,
        }
        for v in _pools(app)
    ]


def recent_events(app: Application, query: Mapping[str, str]) -> JSON:
    limit = _int_param(query, "limit", events.CAPACITY)
    found = events.recent()
    return [jsonable(event) for event in (found[-limit:] if limit else [])]


def logs(ring: LogRing | None, query: Mapping[str, str]) -> JSON:
    if ring is None:
        return {"enabled": False, "lines": []}
    limit = _int_param(query, "limit", LOGS_DEFAULT_LIMIT)
    level_name = query.get("level", "").upper()
    min_level = logging.getLevelName(level_name) if level_name else logging.NOTSET
    if not isinstance(min_level, int):
        raise ApiError(400, f"unknown log level '{query['level']}'")
    return {"enabled": True, "capacity": ring.capacity, "lines": [jsonable(x) for x in ring.recent(limit, min_level)]}


def _int_param(query: Mapping[str, str], name: str, default: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit():
        raise ApiError(400, f"'{name}' must be a non-negative integer")
    return int(raw)


READ_ROUTES: dict[str, Callable[[Application], JSON]] = {
    "/api/version": version,
    "/api/overview": overview,
    "/api/pools": pools,
    "/api/servers": servers,
    "/api/databases": databases,
    "/api/stats": stats,
    "/api/users": users,
    "/api/config": config,
    "/api/log_level": log_level,
    "/api/process": process,
    "/api/connections": connections,
    "/api/prepared": prepared,
}
QUERY_ROUTES: dict[str, Callable[[Application, Mapping[str, str]], JSON]] = {
    "/api/clients": clients,
    "/api/events": recent_events,
}


# ---------------------------------------------------------------------------- mutations

ADMIN_ACTIONS = ("reload", "pause", "resume", "reconnect")


def _target_pools(app: Application, query: Mapping[str, str]) -> list[Pool]:
    """The pools ``?db=<name>`` or ``?pool=<user>@<db>`` names (all pools without either)."""
    pools = list(app.registry.pools.values())
    if "pool" in query:
        user, at, database = query["pool"].rpartition("@")
        if not at or not user or not database:
            raise ApiError(400, "'pool' must be <user>@<database>")
        chosen = [p for p in pools if p.settings.username == user and p.settings.database == database]
        if not chosen:
            raise ApiError(404, f'No pool for user "{user}" and database "{database}"')
        return chosen
    name = query.get("db")
    if name is None:
        return pools
    chosen = [p for p in pools if p.settings.database == name]
    if not chosen:
        raise ApiError(404, f'No pool for database "{name}"')
    return chosen


def admin_action(app: Application, action: str, query: Mapping[str, str], who: str) -> JSON:
    """Run RELOAD / PAUSE / RESUME / RECONNECT as the admin console does; an event records who asked."""
    if action == "reload":
        result = app.reload()  # logs and records the event (RELOAD or CONFIG_VALIDATION_ERROR)
        if not result.ok:
            raise ApiError(422, f"the configuration was not reloaded:\n{result.message}")
        log.info("reload requested via web API by %s", who)
        return {
            "ok": True,
            "action": "reload",
            "message": result.message,
            "restart_required": list(result.restart_required),
        }
    targets = _target_pools(app, query)
    missing = [p.name for p in targets if not callable(getattr(p, action, None))]
    if missing:
        raise ApiError(501, f"{action.upper()} is not available in this version")
    for pool in targets:
        getattr(pool, action)()
    names = [p.name for p in targets]
    events.record(action.upper(), f"{action} of {', '.join(names) or 'no pools'} via web API by {who}")
    return {"ok": True, "action": action, "pools": names}
