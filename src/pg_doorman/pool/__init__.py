"""Server connection pools, one per (database, user).

A pool owns its server connections and hands them out; it never parses messages. Checkout and checkin are
synchronous and O(1) when a server is idle or a client is waiting (FIFO, direct hand-off). Only opening a new
server connection awaits, in a task of its own.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from time import monotonic
from typing import TYPE_CHECKING, cast

from pg_doorman import clock, codes
from pg_doorman.auth.backend import ServerCredentials
from pg_doorman.prepared import StatementRegistry
from pg_doorman.protocol.errors import ADMIN_SHUTDOWN, PoolerError
from pg_doorman.server import Lender, ServerConnection, login_error
from pg_doorman.stats import PoolStats
from pg_doorman.tasks import spawn

if TYPE_CHECKING:
    from pg_doorman.client import ClientConnection
    from pg_doorman.config import PoolSettings

log = logging.getLogger("pg_doorman.pool")

_MAX_PARAM_TOKENS = 4096


def killed_error(database: str) -> PoolerError:
    """What a client of a database the admin console KILLed is told (PostgreSQL's pg_terminate_backend wording)."""
    return PoolerError(
        ADMIN_SHUTDOWN,
        "terminating connection due to administrator command",
        detail=f'KILL of database "{database}" on the pg_doorman admin console',
    )


class Pool(Lender):
    """At most ``pool_size`` server connections for one (database, user)."""

    def __init__(self, settings: PoolSettings) -> None:
        self.now = monotonic()  # advanced by tick()
        self.settings = settings
        self.name = f"{settings.database}/{settings.username}"
        self.transaction_mode = settings.pool_mode == "transaction"
        self.round_robin = settings.server_round_robin
        # Idle servers, most recently used last: taken from the end (LIFO keeps few servers warm) or, with
        # server_round_robin, from the front. A list: its pops compile to C; pool sizes keep pop(0) cheap.
        self.idle: list[ServerConnection] = []
        self.waiters: deque[ClientConnection] = deque()
        self.servers: set[ServerConnection] = set()
        self.opening = 0
        self.retired = False
        self.paused = False  # admin PAUSE: no server is lent until RESUME (see pause())
        self.registry = StatementRegistry(settings.prepared_statements_cache_size)
        self.default_params: dict[str, str] | None = None
        self.scram_client_key: bytes | None = None
        # How PostgreSQL spells a reported parameter value a client sent (("client_encoding", "euc-jp") ->
        # "EUC_JP"), learnt from the servers' ParameterStatus: a client is told its parameters in that spelling.
        self.spelling: dict[tuple[str, str], str] = {}
        self._params_future: asyncio.Future[dict[str, str]] | None = None
        self._param_tokens: dict[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]] = {}
        self._last_connect_error: PoolerError | None = None
        # Latency histograms and error counts (stats.py); counters below are read through views.py.
        self.stats = PoolStats()
        self.client_count = 0  # logged-in clients of this pool (not counting the admin console's)
        self.stats_checkouts = 0
        self.stats_waits = 0
        self.stats_wait_timeouts = 0
        self.stats_servers_opened = 0
        self.stats_connect_errors = 0
        self.stats_server_statement_evictions = 0  # from servers already closed
        # Traffic of servers already closed (live servers count their own: see views.pool_view).
        self.stats_closed_bytes_sent = 0
        self.stats_closed_bytes_received = 0

    # --------------------------------------------------------------- capacity

    @property
    def size(self) -> int:
        return len(self.servers) + self.opening

    def credentials(self) -> ServerCredentials:
        s = self.settings
        if s.server_password is not None:
            return ServerCredentials(user=s.server_username, password=s.server_password)
        password = s.password
        if password.startswith("md5") and len(password) == 35:
            return ServerCredentials(user=s.server_username, md5_verifier=password)
        if password.startswith("SCRAM-SHA-256$"):
            return ServerCredentials(user=s.server_username, scram_client_key=self.scram_client_key)
        if password:
            return ServerCredentials(user=s.server_username, password=password)
        return ServerCredentials(user=s.server_username)

    def can_open_without_client(self) -> bool:
        """SCRAM passthrough needs a ClientKey, which only a client login provides."""
        s = self.settings
        return not (
            s.server_password is None and s.password.startswith("SCRAM-SHA-256$") and self.scram_client_key is None
        )

    # --------------------------------------------------------- checkout/checkin

    def checkout_nowait(self) -> ServerConnection | None:
        """An idle server, or None (then a new one is being opened if the pool has room)."""
        if self.paused:
            return None  # the caller waits in the queue; resume() hands servers out
        idle = self.idle
        while idle:
            server = idle.pop(0) if self.round_robin else idle.pop()
            if server.state != codes.SERVER_IDLE:
                continue
            if self.now >= server.expires_at:
                server.close()  # past server_lifetime while idle: never lent again
                continue
            self.stats_checkouts += 1
            self.stats.wait.record_zero()
            return server
        if self.size < self.settings.pool_size and not self.retired:
            self.open_server()
        return None

    def enqueue(self, client: ClientConnection) -> None:
        self.stats_waits += 1
        self.waiters.append(client)
        # Every waiter beyond the connections already being opened asks for one more, up to pool_size.
        if self.opening < len(self.waiters) and self.size < self.settings.pool_size and not self.retired:
            self.open_server()

    def tick(self, now: float) -> None:
        """Every WAIT_CHECK_INTERVAL: advance the pool's clock and end waits past query_wait_timeout."""
        self.now = now
        if self.waiters:
            self.expire_waiters(now)

    def expire_waiters(self, now: float) -> None:
        """End the waits that passed query_wait_timeout. Waiters are FIFO with one timeout per pool, so only
        the oldest ones need a look."""
        waiters = self.waiters
        while waiters:
            client = waiters[0]
            if not client.waiting:
                waiters.popleft()
            elif 0 < client.wait_deadline <= now:
                waiters.popleft()
                client.wait_timed_out()
            else:
                break

    def remove_waiter(self, client: ClientConnection) -> None:
        try:
            self.waiters.remove(client)
        except ValueError:
            pass

    def checkin(self, server: ServerConnection) -> None:
        """Take a clean, idle server back: hand it to the oldest waiting client or park it."""
        if server.state == codes.SERVER_CLOSED:
            return
        if self.retired or self.now >= server.expires_at:
            server.close()
            return
        server.state = codes.SERVER_IDLE
        waiters = self.waiters
        while waiters:
            if self.paused:
                break
            client = waiters.popleft()
            if client.state == codes.CLIENT_WAITING:  # `client.waiting`, as a C field read (hot path)
                self.stats_checkouts += 1
                if client.wait_started:
                    self.stats.wait.record(clock.now_us() - client.wait_started)
                    client.wait_started = 0
                client.attach_server(server)
                return
        self.idle.append(server)

    def forget(self, server: ServerConnection, previous_state: int) -> None:
        """A server connection closed (called from connection_lost)."""
        if server not in self.servers:
            return
        self.servers.discard(server)
        self.stats_server_statement_evictions += server.statements.evictions
        self.stats_closed_bytes_sent += server.bytes_sent
        self.stats_closed_bytes_received += server.bytes_received
        if previous_state == codes.SERVER_IDLE:
            try:
                self.idle.remove(server)
            except ValueError:
                pass
        # Capacity freed while clients wait: open a replacement.
        if self.waiters and not self.retired and self.size < self.settings.pool_size:
            self.open_server()

    # ------------------------------------------------------------ new servers

    def open_server(self) -> None:
        if not self.can_open_without_client():
            return
        self.opening += 1
        spawn(self._open_and_checkin())

    async def _open_and_checkin(self) -> None:
        try:
            server = await self._connect()
        except PoolerError as exc:
            self._on_connect_failure(exc)
            return
        self.checkin(server)

    async def _connect(self) -> ServerConnection:
        """Open and log in one server connection; ``opening`` was incremented by the caller."""
        s = self.settings
        loop = asyncio.get_running_loop()
        server: ServerConnection | None = None
        try:
            async with asyncio.timeout(s.connect_timeout):
                if s.server_host.startswith("/"):
                    path = f"{s.server_host}/.s.PGSQL.{s.server_port}"
                    _, protocol = await loop.create_unix_connection(
                        lambda: cast(asyncio.Protocol, ServerConnection(self)), path
                    )
                    server = cast(ServerConnection, protocol)
                else:
                    _, protocol = await loop.create_connection(
                        lambda: cast(asyncio.Protocol, ServerConnection(self)),
                        s.server_host,
                        s.server_port,
                        family=socket.AF_UNSPEC,
                    )
                server = cast(ServerConnection, protocol)
                params = {"application_name": s.application_name}
                params.update(s.startup_parameters)
                await server.login(self.credentials(), s.server_database, params)
        except BaseException as exc:
            if server is not None:
                server.abort()
            self.opening -= 1
            if isinstance(exc, asyncio.CancelledError):
                raise
            err = login_error(exc)
            self.stats_connect_errors += 1
            log.warning("pool %s: cannot open server connection: %s", self.name, err.message)
            raise err
        self.opening -= 1
        if self.default_params is None:
            self.default_params = dict(server.params)
        self.servers.add(server)
        self.stats_servers_opened += 1
        self._last_connect_error = None
        log.debug("pool %s: opened server pid=%s", self.name, server.pid)
        if self.retired:
            server.close()
        return server

    def _on_connect_failure(self, exc: PoolerError) -> None:
        self._last_connect_error = exc
        # With no server left to wait for, waiting clients would only time out: tell them now.
        if not self.servers and self.opening == 0:
            waiters = list(self.waiters)
            self.waiters.clear()
            for client in waiters:
                if client.waiting:
                    client.checkout_failed(exc)

    async def startup_parameters(self) -> dict[str, str]:
        """Server parameters a new client is told at login, from this pool's first server connection."""
        if self.default_params is not None:
            return self.default_params
        if self._params_future is None or self._params_future.done():
            loop = asyncio.get_running_loop()
            self._params_future = loop.create_future()
            fut = self._params_future

            async def fetch() -> None:
                self.opening += 1
                try:
                    server = await self._connect()
                except PoolerError as exc:
                    fut.set_exception(exc)
                    self._on_connect_failure(exc)
                    return
                fut.set_result(dict(server.params))
                self.checkin(server)

            spawn(fetch())
        return await asyncio.shield(self._params_future)

    # ------------------------------------------------------------ maintenance

    def maintain(self, now: float) -> None:
        """Close idle servers past idle_timeout/lifetime and keep min_pool_size open (runs every second)."""
        min_size = self.settings.min_pool_size
        if self.idle:
            keep: list[ServerConnection] = []
            # A closed server leaves self.servers only in connection_lost (later): count the closes made here,
            # or one pass would close every idle server and dip below min_pool_size.
            remaining = len(self.servers)
            for server in self.idle:
                expired = now >= server.expires_at
                idle_for = now - server.last_used
                too_idle = server.used and idle_for >= server.idle_expires_after
                if (expired or too_idle) and remaining - 1 >= (0 if expired else min_size):
                    remaining -= 1
                    server.close()
                else:
                    keep.append(server)
            self.idle = keep
        if not self.retired:
            missing = min_size - self.size
            for _ in range(max(0, missing)):
                self.open_server()

    def intern_params(self, params: dict[str, str]) -> tuple[tuple[str, str], ...]:
        """One shared tuple per distinct parameter set, so "in sync?" is an identity check on the hot path."""
        key = tuple(sorted(params.items()))
        tokens = self._param_tokens
        token = tokens.get(key)
        if token is None:
            if len(tokens) >= _MAX_PARAM_TOKENS:
                tokens.clear()
            tokens[key] = token = key
        return token

    def prepared_statement_stats(self) -> dict[str, int]:
        """Cache counters for the admin console and metrics: pool-wide map and per-server caches."""
        registry = self.registry
        return {
            "cache_entries": len(registry),
            "cache_hits": registry.hits,
            "cache_misses": registry.misses,
            "cache_evictions": registry.evictions,
            "server_statements": sum(len(s.statements) for s in self.servers),
            "server_evictions": self.stats_server_statement_evictions
            + sum(s.statements.evictions for s in self.servers),
        }

    def retire(self) -> None:
        """Stop using this pool (config reload replaced it): idle servers close now, busy ones on checkin."""
        self.retired = True
        for server in list(self.idle):
            server.close()
        self.idle.clear()

    # ------------------------------------------------------ admin operations

    def pause(self) -> None:
        """Admin PAUSE: lend no server until `resume` (new checkouts queue, up to query_wait_timeout); clients
        that hold a server keep it and give it back as usual."""
        self.paused = True

    def resume(self) -> None:
        """Admin RESUME: hand idle servers to the clients that queued meanwhile, open more for the rest."""
        if not self.paused:
            return
        self.paused = False
        idle = self.idle
        while self.waiters and idle:
            server = idle.pop()
            if server.state == codes.SERVER_IDLE:
                self.checkin(server)  # to the oldest waiting client, or back to idle when none is left
        missing = min(len(self.waiters) - self.opening, self.settings.pool_size - self.size)
        for _ in range(max(0, missing)):
            if self.retired:
                break
            self.open_server()

    def reconnect(self) -> int:
        """Admin RECONNECT: close idle servers now and busy ones when they come back (their lifetime ends
        now), so every connection lent from here on is a new one. Returns how many servers were affected."""
        servers = list(self.servers)
        for server in servers:
            server.expires_at = 0.0  # checkin closes a server past its lifetime (see checkin)
        for server in list(self.idle):
            server.close()
        self.idle.clear()
        return len(servers)

    def kill(self) -> int:
        """Admin KILL: close every server now and fail the clients still queued. Clients that hold a server
        lose it (they are told by the server's close); the caller drops the pool's other clients."""
        waiters = list(self.waiters)
        self.waiters.clear()
        for client in waiters:
            if client.waiting:
                client.checkout_failed(killed_error(self.settings.database))
        servers = list(self.servers)
        for server in servers:
            server.close()
        self.idle.clear()
        return len(servers)

    def close_all(self) -> None:
        self.retired = True
        for server in list(self.servers):
            server.close()
        self.idle.clear()
