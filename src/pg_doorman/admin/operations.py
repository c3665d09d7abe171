"""What the admin console may see and do in its process: one small object `Application` builds.

`AdminContext` holds read access (the pool registry, the set of clients, the running configuration, the time
the process started) and the operations (PAUSE / RESUME / RECONNECT / KILL per database, RELOAD, SHUTDOWN,
the runtime log level). The console (and later the web console) call these and nothing else of the process.
Every mutating operation logs a line and records an event (`pg_doorman.events`).

An unknown database is an `AdminError` (3D000), reported to the console session, which goes on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Protocol

from pg_doorman import events, logs
from pg_doorman.pool import killed_error
from pg_doorman.protocol.errors import INVALID_CATALOG_NAME, PoolerError

if TYPE_CHECKING:
    from pg_doorman.client import ClientConnection
    from pg_doorman.config import Config
    from pg_doorman.pool import Pool
    from pg_doorman.registry import PoolRegistry

__all__ = ["CONFIG_FILE_ERROR", "LOG_LEVELS", "SYNTAX_ERROR", "AdminContext", "AdminError"]

log = logging.getLogger("pg_doorman.admin")

CONFIG_FILE_ERROR = "F0000"  # PostgreSQL's config_file_error
SYNTAX_ERROR = "42601"
# Runtime log levels accepted by SET log_level: the command line's (logs.LEVELS), and "off".
LOG_LEVELS = {**logs.LEVELS, "off": logging.CRITICAL + 10}


class AdminError(PoolerError):
    """A console command that failed: an ERROR (not FATAL), and the session goes on."""

    def __init__(self, sqlstate: str, message: str, *, detail: str | None = None) -> None:
        super().__init__(sqlstate, message, detail=detail, fatal=False)


def _level_name(level: int) -> str:
    for name, value in LOG_LEVELS.items():
        if value == level and name != "warning":
            return name
    return logging.getLevelName(level).lower()


class ReloadOutcome(Protocol):
    """What `Application.reload` returns (app.ReloadResult), as far as the console reads it."""

    @property
    def ok(self) -> bool: ...

    @property
    def message(self) -> str: ...


class AdminContext:
    """The process as the admin console sees it (read access plus the operations it may run)."""

    def __init__(
        self,
        *,
        registry: PoolRegistry,
        clients: Collection[ClientConnection],
        config: Callable[[], Config],
        reload: Callable[[], ReloadOutcome],
        shutdown: Callable[[], None],
        connection_counts: Callable[[], tuple[int, int, int]] = lambda: (0, 0, 0),
    ) -> None:
        self.registry = registry
        self.clients = clients
        self._config = config
        self._reload = reload
        self._shutdown = shutdown
        self.started_at = time.time()
        self.startup_log_level = logging.getLogger().level
        # (accepted, refused over max_connections, cancel requests) since start: SHOW CONNECTIONS. Counted by
        # Application.admit/cancel (the web console reads the same counters).
        self.connection_counts = connection_counts

    @property
    def config(self) -> Config:
        return self._config()

    # ------------------------------------------------------------------ pools

    def pools(self, database: str | None = None) -> list[Pool]:
        """The live pools, of one database when given (AdminError 3D000 when it has none)."""
        pools = list(self.registry.pools.values())
        if database is None:
            return pools
        chosen = [pool for pool in pools if pool.settings.database == database]
        if not chosen:
            raise AdminError(INVALID_CATALOG_NAME, f'No pool for database "{database}"')
        return chosen

    def _announce(self, kind: str, database: str | None, detail: str = "") -> str:
        scope = f'database "{database}"' if database is not None else "all databases"
        message = f"{kind} {scope}{': ' + detail if detail else ''}"
        log.info("admin console: %s", message)
        events.record(kind, message)
        return message

    def pause(self, database: str | None = None) -> int:
        pools = self.pools(database)
        for pool in pools:
            pool.pause()
        self._announce("PAUSE", database, f"{len(pools)} pool(s) lend no server until RESUME")
        return len(pools)

    def resume(self, database: str | None = None) -> int:
        pools = self.pools(database)
        for pool in pools:
            pool.resume()
        self._announce("RESUME", database, f"{len(pools)} pool(s)")
        return len(pools)

    def reconnect(self, database: str | None = None) -> int:
        pools = self.pools(database)
        servers = sum(pool.reconnect() for pool in pools)
        self._announce("RECONNECT", database, f"{servers} server connection(s) replaced (busy ones when released)")
        return servers

    def kill(self, database: str | None = None) -> int:
        """Drop the clients (not admin sessions) and the server connections of a database, or of all."""
        pools = self.pools(database)
        dropped = 0
        for client in list(self.clients):
            if client.is_admin or client.pool is None:
                continue
            if database is None or client.database == database:
                client.fail(killed_error(client.database))
                dropped += 1
        servers = sum(pool.kill() for pool in pools)
        self._announce("KILL", database, f"{dropped} client(s) and {servers} server connection(s) dropped")
        return dropped

    # ---------------------------------------------------------------- process

    def reload(self) -> str:
        """Re-read the configuration file (Application.reload, which logs and records the event); returns what
        changed. AdminError F0000, the running configuration kept, when the file is bad."""
        result = self._reload()
        if not result.ok:
            raise AdminError(
                CONFIG_FILE_ERROR, "RELOAD failed: the running configuration is kept", detail=result.message
            )
        return result.message

    def shutdown(self) -> None:
        """The graceful stop (as SIGINT): no new logins, clients go when their transaction ends."""
        log.info("admin console: SHUTDOWN")
        events.record("SHUTDOWN", "graceful shutdown requested on the admin console")
        self._shutdown()

    @property
    def log_level(self) -> str:
        return _level_name(logging.getLogger().level)

    def set_log_level(self, value: str) -> str:
        """Set the process's log level (`LOG_LEVELS`, or ``default``: the level it started with)."""
        name = value.strip().lower()
        if name == "default":
            level = self.startup_log_level
        elif name in LOG_LEVELS:
            level = LOG_LEVELS[name]
        else:
            choices = ", ".join(n for n in LOG_LEVELS if n != "warning")
            raise AdminError(
                SYNTAX_ERROR, f'invalid value for log_level: "{value}"', detail=f"one of {choices}, default"
            )
        shown = _level_name(level)
        log.warning("admin console: log_level set to %s", shown)  # before: the new level may hide it
        logging.getLogger().setLevel(level)
        events.record("LOG_LEVEL", f"log_level set to {shown}")
        return shown
