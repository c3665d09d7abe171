"""Process lifecycle: listeners, pools, signals (SIGHUP reload, SIGINT graceful stop, SIGTERM immediate stop,
SIGUSR2 logged and ignored), reload, and readiness for service managers (systemd notify, the ``-d`` launcher)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import cast

from pg_doorman import __version__, events, gcpolicy, implementation, sockets
from pg_doorman.admin import AdminContext
from pg_doorman.client import ClientConnection
from pg_doorman.config import Config, ConfigError, load_config, startup_messages
from pg_doorman.connection import DRAIN_MAX_SECONDS, wait_for_drains
from pg_doorman.context import ClientContext
from pg_doorman.observe.web import WebListener
from pg_doorman.registry import PoolChanges, PoolRegistry
from pg_doorman.service import report_ready, sd_notify
from pg_doorman.tasks import spawn
from pg_doorman.tls import client_tls

log = logging.getLogger("pg_doorman")

MAINTENANCE_INTERVAL = 1.0
WAIT_CHECK_INTERVAL = 0.1

# general keys read once at startup (inventory 2.9): a reload that changes them says a restart is needed.
RESTART_ONLY_GENERAL = (
    "host",
    "port",
    "backlog",
    "unix_socket_dir",
    "unix_socket_mode",
    "worker_threads",
    "tls_certificate",
    "tls_private_key",
    "tls_ca_cert",
    "tls_mode",
    "tls_rate_limit_per_second",
    "tls_client_cert_user_match",
    "daemon_pid_file",
    "syslog_prog_name",
)


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What `Application.reload` did: ``ok`` False means the running configuration was kept (``message`` says why).

    ``restart_required`` names the ``general`` keys that changed but take effect only after a restart.
    """

    ok: bool
    message: str
    restart_required: tuple[str, ...] = ()
    changed: bool = True
    warnings: tuple[str, ...] = field(default=())

    def __bool__(self) -> bool:
        return self.ok


class Application:
    """Everything one pg_doorman process serves: its config, its pools (`PoolRegistry`) and its clients.

    Clients see it only through `context` (a `ClientContext`): the registry, the limits, the shutting-down flag
    and the admit/client_closed/cancel callbacks below.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.registry = PoolRegistry()
        self.clients: set[ClientConnection] = set()
        self.context = ClientContext(
            self.registry, config.general, admit=self.admit, client_closed=self.client_closed, cancel=self.cancel
        )
        self.admin = self.context.admin = AdminContext(
            registry=self.registry,
            clients=self.clients,
            config=lambda: self.config,
            reload=self.reload,
            shutdown=self._on_sigint,
            connection_counts=lambda: (self.connections_accepted, self.connections_refused, self.cancel_requests),
        )
        self._servers: list[asyncio.Server] = []
        self._stop: asyncio.Event | None = None
        self._stop_mode = "immediate"
        self._janitor: asyncio.Task[None] | None = None
        self._wait_ticker: asyncio.Task[None] | None = None
        self._connected_at: dict[ClientConnection, float] = {}
        self._unix_path: str | None = None
        self.ready_fd: int | None = None  # the -d launcher's readiness pipe (service.daemonize)
        self.connections_accepted = 0  # every client connection accepted (cancel requests included)
        self.connections_refused = 0  # of those, refused over max_connections
        self.cancel_requests = 0
        self.web: WebListener | None = None  # /metrics and the web console, when web.enabled
        self.context.tls = client_tls(config.general)
        self._apply(config)

    @property
    def shutting_down(self) -> bool:
        """No new logins, and clients go when their transaction ends (kept in the context clients read)."""
        return self.context.shutting_down

    @shutting_down.setter
    def shutting_down(self, value: bool) -> None:
        self.context.shutting_down = value

    def _apply(self, config: Config) -> PoolChanges:
        """Put a (re)loaded configuration into effect: pools, client limits, socket options."""
        changes = self.registry.reload(config.all_pool_settings(), config.auth_query_templates())
        general = config.general
        self.registry.configure_engine(general)  # retain_connections_max, proxy_copy_data_timeout, max_memory_usage
        self.context.configure(general)
        self.context.access_rules = config.access_rules  # pg_hba: new connections use the new rules
        sockets.current = sockets.SocketOptions(
            keepalive_idle=general.tcp_keepalives_idle,
            keepalive_interval=general.tcp_keepalives_interval,
            keepalive_count=general.tcp_keepalives_count,
            user_timeout=general.tcp_user_timeout,
            no_delay=general.tcp_no_delay,
            linger=general.tcp_so_linger if general.tcp_so_linger > 0 else None,
        )
        return changes

    # ---------------------------------------------------------------- clients

    def admit(self, client: ClientConnection) -> bool:
        """Count a new connection; False when it is over max_connections (it is then not counted at all)."""
        self.connections_accepted += 1
        if len(self.clients) >= self.config.general.max_connections:
            self.connections_refused += 1
            limit = self.config.general.max_connections
            log.info("client from %s refused: max_connections (%d) reached", client.peer, limit)
            return False
        self.clients.add(client)
        self._connected_at[client] = time.monotonic()
        if self.config.general.log_client_connections:
            log.info("client connected from %s", client.peer)
        return True

    def client_closed(self, client: ClientConnection) -> None:
        self.clients.discard(client)
        started = self._connected_at.pop(client, None)
        self.registry.forget_cancel_key(client)
        if self.config.general.log_client_disconnections and client.user:
            duration = time.monotonic() - started if started is not None else 0.0
            log.info(
                "client %s (%s@%s) disconnected, session duration %s",
                client.peer,
                client.user,
                client.database,
                _session_duration(duration),
            )
        if self.shutting_down and not self.clients and self._stop is not None:
            self._stop.set()

    def cancel(self, pid: int, secret: int) -> None:
        """A CancelRequest: forward it to the server running this client's query, if any."""
        self.cancel_requests += 1
        client = self.registry.cancel_target(pid, secret)
        if client is None:
            log.info("cancel request with unknown key ignored")
            return
        server = client.server
        if server is None:
            if client.cancel_waiting():
                log.info("canceled the queued query of client pid=%s before it reached a server", pid)
            else:
                log.debug("cancel request for idle client pid=%s ignored", pid)
            return
        log.info("forwarding cancel for client pid=%s to server pid=%s", pid, server.pid)
        # Mark it now, not when the task first runs: if the query ends in between, the server must not be
        # checked in and lent to another client whose query the cancel would then hit.
        server.cancel_sent = True
        spawn(server.send_cancel())

    # -------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        general = self.config.general
        backlog = general.backlog or min(general.max_connections, 4096)
        server: asyncio.Server = await loop.create_server(
            lambda: cast(asyncio.Protocol, ClientConnection(self.context)),
            host=general.host,
            port=general.port,
            reuse_address=True,
            backlog=backlog,
        )
        self._servers.append(server)
        if general.unix_socket_dir:
            path = os.path.join(general.unix_socket_dir, f".s.PGSQL.{general.port}")
            if os.path.exists(path):
                os.unlink(path)
            unix: asyncio.Server = await loop.create_unix_server(
                lambda: cast(asyncio.Protocol, ClientConnection(self.context)), path=path, backlog=backlog
            )
            os.chmod(path, general.unix_socket_permissions)
            self._servers.append(unix)
            self._unix_path = path
        addrs = ", ".join(
            str(sock.getsockname()) for srv in self._servers for sock in srv.sockets if sock.family != socket.AF_UNIX
        )
        log.info(
            "pg_doorman %s listening on %s with %d pool(s); hot path: %s",
            __version__,
            addrs,
            len(self.registry),
            implementation(),
        )
        if self.config.web.enabled:
            self.web = WebListener(self)
            await self.web.start()
        self.registry.maintain(time.monotonic())
        self._janitor = loop.create_task(self._maintenance())
        self._wait_ticker = loop.create_task(self._tick_pools())
        # After the long-lived objects exist: they are frozen out of the collector's walks (gcpolicy.py).
        gcpolicy.install(freeze_survivors=type(loop).__module__.startswith("uvloop"))

    async def _tick_pools(self) -> None:
        """Every 100 ms: the pools' clocks, and query_wait_timeout for waiting clients (no timer per wait)."""
        while True:
            await asyncio.sleep(WAIT_CHECK_INTERVAL)
            self.registry.tick(time.monotonic())

    async def _maintenance(self) -> None:
        while True:
            await asyncio.sleep(MAINTENANCE_INTERVAL)
            self.registry.maintain(time.monotonic())

    def reload(self) -> ReloadResult:
        """Re-read the configuration file and apply it (SIGHUP, the console's RELOAD, the API).

        A file that does not load, or that this version must not run with, keeps the running configuration; the
        result says why (also logged and recorded as an event). Pools whose settings did not change keep their
        connections; changed ones are rebuilt, their connected clients staying connected (registry.reload).
        """
        sd_notify("RELOADING=1")
        try:
            return self._reload()
        finally:
            sd_notify("READY=1")

    def _reload(self) -> ReloadResult:
        path = self.config.path
        try:
            config = load_config(path)
        except (ConfigError, OSError) as exc:
            return self._reload_rejected(str(exc))
        if config == self.config:
            log.info("configuration reloaded from %s: unchanged", path)
            events.record("RELOAD", f"config unchanged ({path})")
            return ReloadResult(True, "configuration unchanged", changed=False)
        old_general = self.config.general
        restart = tuple(
            key for key in RESTART_ONLY_GENERAL if getattr(config.general, key) != getattr(old_general, key)
        )
        for line in startup_messages(config):
            log.warning("%s", line)
        self.config = config
        changes = self._apply(config)
        message = f"configuration reloaded from {path}: {changes.describe()}"
        if restart:
            message += f"; restart needed for: {', '.join('general.' + key for key in restart)}"
            log.warning(
                "reload: these settings change only at restart and keep their running values: %s",
                ", ".join("general." + key for key in restart),
            )
        log.info("%s", message)
        events.record("RELOAD", message)
        return ReloadResult(True, message, restart, warnings=tuple(startup_messages(config)))

    def _reload_rejected(self, why: str) -> ReloadResult:
        log.error("reload failed, keeping the running configuration:\n%s", why)
        events.record("CONFIG_VALIDATION_ERROR", f"reload rejected: {why}")
        return ReloadResult(False, f"reload failed, keeping the running configuration: {why}", changed=False)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        # Before the listeners open: a signal sent as soon as the port answers must find its handler (start()
        # still collects and freezes the heap after that, gcpolicy.py); one that comes during start() takes
        # effect when it returns.
        loop.add_signal_handler(signal.SIGTERM, self._on_sigterm)
        loop.add_signal_handler(signal.SIGINT, self._on_sigint)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        loop.add_signal_handler(signal.SIGUSR2, self._on_sigusr2)
        await self.start()
        sd_notify(f"READY=1\nSTATUS=serving {len(self.registry)} pool(s)\nMAINPID={os.getpid()}")
        report_ready(self.ready_fd)
        self.ready_fd = None
        events.record("STARTUP", f"pg_doorman {__version__} started")
        await self._stop.wait()
        sd_notify("STOPPING=1")
        events.record("SHUTDOWN", f"{self._stop_mode} shutdown")
        if self._stop_mode == "graceful":
            await self._graceful_shutdown()
        await self.close()
        return 0

    def _on_sighup(self) -> None:
        log.info("SIGHUP: reloading the configuration")
        self.reload()

    def _on_sigusr2(self) -> None:
        """The original's binary upgrade signal: never fatal here (Python's default action would kill us)."""
        log.warning("SIGUSR2: binary upgrade is not available in this version; still serving (use SIGHUP to reload)")
        events.record("UPGRADE", "SIGUSR2 ignored: binary upgrade is not available")

    def _on_sigterm(self) -> None:
        log.info("SIGTERM: stopping now")
        self._stop_mode = "immediate"
        if self._stop is not None:
            self._stop.set()

    def _on_sigint(self) -> None:
        if self.shutting_down:
            log.info("second SIGINT: stopping now")
            self._stop_mode = "immediate"
            if self._stop is not None:
                self._stop.set()
            return
        log.info(
            "SIGINT: no new connections; waiting up to %.1fs for transactions to finish",
            self.config.general.shutdown_timeout,
        )
        self._stop_mode = "graceful"
        if self._stop is not None:
            self._stop.set()

    async def _graceful_shutdown(self) -> None:
        self.shutting_down = True
        for srv in self._servers:
            srv.close()
        self._stop = asyncio.Event()
        # Clients between transactions can go now; the others go when their transaction ends (a client whose
        # BEGIN the pooler answered without a server is inside a transaction too).
        for client in list(self.clients):
            if client.server is None and client._deferred_begin is None:
                client.fail_shutdown()
        if self.clients:
            try:
                await asyncio.wait_for(self._stop.wait(), self.config.general.shutdown_timeout)
            except TimeoutError:
                log.warning("shutdown_timeout reached with %d client(s) still connected", len(self.clients))

    async def close(self) -> None:
        self.shutting_down = True
        for srv in self._servers:
            srv.close()
        if self._janitor is not None:
            self._janitor.cancel()
        if self._wait_ticker is not None:
            self._wait_ticker.cancel()
        if self.web is not None:
            await self.web.stop()
        for client in list(self.clients):
            client.fail_shutdown()
        for pool in self.registry.pools.values():
            pool.close_all()
        # The shutdown notices (these and the graceful shutdown's) are read only if their connections are not
        # reset by process exit while the clients are still sending: wait for those drains (bounded).
        await wait_for_drains(DRAIN_MAX_SECONDS)
        await asyncio.sleep(0)
        if self._unix_path is not None:
            try:
                os.unlink(self._unix_path)
            except OSError:
                pass
        gcpolicy.uninstall()


def _session_duration(seconds: float) -> str:
    """``1h02m03.456s``-style, the way an operator reads a session's length in a log line."""
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:06.3f}s"
    if minutes:
        return f"{minutes}m{secs:06.3f}s"
    return f"{secs:.3f}s"
