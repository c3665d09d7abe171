"""Server connection pools, one per (database, user).

A pool owns its server connections and hands them out; it never parses messages. Checkout and checkin are
synchronous and O(1) when a server is idle or a client is waiting (FIFO, direct hand-off). Only opening a new
server connection awaits, in a task of its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from time import monotonic
from typing import TYPE_CHECKING, cast

from pg_doorman import clock, codes, memory, tls
from pg_doorman.auth.backend import ServerCredentials
from pg_doorman.prepared import StatementRegistry
from pg_doorman.protocol.errors import (
    ADMIN_SHUTDOWN,
    CONNECTION_FAILURE,
    INVALID_AUTHORIZATION,
    TOO_MANY_CONNECTIONS,
    PoolerError,
    ServerError,
)
from pg_doorman.server import Lender, ServerConnection, login_error
from pg_doorman.stats import PoolStats
from pg_doorman.tasks import spawn

if TYPE_CHECKING:
    from pg_doorman.client import ClientConnection
    from pg_doorman.config import PoolSettings
    from pg_doorman.pool.coordinator import Coordinator

log = logging.getLogger("pg_doorman.pool")

_MAX_PARAM_TOKENS = 4096


def killed_error(database: str) -> PoolerError:
    """What a client of a database the admin console KILLed is told (PostgreSQL's pg_terminate_backend wording)."""
    return PoolerError(
        ADMIN_SHUTDOWN,
        "terminating connection due to administrator command",
        detail=f'KILL of database "{database}" on the pg_doorman admin console',
    )


def _created_at(server: ServerConnection) -> float:
    return server.created_at


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
        # pooler_check_query: the reply PostgreSQL gave to the check query (the Query message check_reply_for),
        # replayed to later probes; and how many probes went to a server / were answered from it.
        self.check_reply: bytes | None = None
        self.check_reply_for = b""
        self.stats_check_backend = 0
        self.stats_check_cache = 0
        # Pool engine: the database's max_db_connections coordinator (None: no cap, and no cost), since when
        # clients have been waiting without a break (the reserve's clock when query_wait_timeout is 0), and
        # whether a client login waits for a first server's parameters (it counts as demand).
        self.coordinator: Coordinator | None = None
        self.waiting_since = 0.0
        self._params_pending = False
        self._params_since = 0.0
        # proxy_copy_data_timeout: servers in a COPY or in the middle of a message -> (bytes moved, since when).
        self._stall_watch: dict[ServerConnection, tuple[int, float]] = {}
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
        if password and s.password_check is None:  # a JWT/PAM/LDAP user's password is nothing to send PostgreSQL
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
        if memory.budget.exhausted:
            client.checkout_failed(memory.budget.error())  # waiting clients are what piles up (memory.py)
            return
        self.stats_waits += 1
        self.waiters.append(client)
        # Every waiter beyond the connections already being opened asks for one more, up to pool_size.
        if self.opening < len(self.waiters) and self.size < self.settings.pool_size and not self.retired:
            self.open_server()

    def tick(self, now: float) -> None:
        """Every WAIT_CHECK_INTERVAL: advance the pool's clock, end waits past query_wait_timeout, and open
        reserve connections for clients that waited reserve_pool_timeout."""
        self.now = now
        if self.waiters:
            self.expire_waiters(now)
            if not self.waiting_since:
                self.waiting_since = now
            if self.waiters and self.settings.reserve_pool_size and self.reserve_due(now):
                self.open_reserve(now)
        elif self.waiting_since:
            self.waiting_since = 0.0

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
                coordinator = self.coordinator
                if coordinator is not None and self in coordinator.wanting:
                    coordinator.exhaustions += 1
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
        coordinator = self.coordinator
        if coordinator is not None:
            coordinator.server_gone(server, self.now)  # the slot may go to another user of the database

    # ------------------------------------------------------------ new servers

    def open_server(self) -> None:
        """Open a server for a waiting client; with max_db_connections, when the database's coordinator says so
        (it calls `open_granted`, now or when a slot frees)."""
        if not self.can_open_without_client():
            return
        coordinator = self.coordinator
        if coordinator is not None:
            coordinator.request(self, self.now)
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

    async def _open_tcp(self, use_tls: bool) -> ServerConnection:
        """A TCP connection to PostgreSQL, encrypted as server_tls_mode says (tls.py)."""
        s = self.settings
        protocol = await tls.open_backend(
            lambda: cast(asyncio.Protocol, ServerConnection(self)),
            s.server_host,
            s.server_port,
            tls.server_plan(s.server_tls.mode),
            tls.context_for(s.server_tls),
            use_tls=use_tls,
            handshake_timeout=s.connect_timeout,
        )
        return cast(ServerConnection, protocol)

    async def _login(self, server: ServerConnection) -> None:
        s = self.settings
        params = {"application_name": s.application_name}
        params.update(s.startup_parameters)
        await server.login(self.credentials(), s.server_database, params)

    async def _connect(self) -> ServerConnection:
        """Open and log in one server connection; ``opening`` was incremented by the caller."""
        s = self.settings
        loop = asyncio.get_running_loop()
        server: ServerConnection | None = None
        tls_plan = tls.server_plan(s.server_tls.mode)
        try:
            async with asyncio.timeout(s.connect_timeout):
                if s.server_host.startswith("/"):
                    path = f"{s.server_host}/.s.PGSQL.{s.server_port}"
                    _, protocol = await loop.create_unix_connection(
                        lambda: cast(asyncio.Protocol, ServerConnection(self)), path
                    )
                    server = cast(ServerConnection, protocol)
                    await self._login(server)
                else:
                    server = await self._open_tcp(tls_plan.ask)
                    try:
                        await self._login(server)
                    except ServerError as plain_error:
                        # server_tls_mode allow: PostgreSQL refused the plain connection (28000: its pg_hba has only
                        # hostssl for us): once more over TLS. Other failures (a wrong password) are the answer.
                        if not tls_plan.retry_with_tls or plain_error.sqlstate != INVALID_AUTHORIZATION:
                            raise
                        server.abort()
                        server = None
                        server = await self._open_tcp(True)
                        await self._login(server)
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
            if self._params_pending:  # a login waits for them (see _coordinated_startup_parameters)
                self._params_pending = False
                fut = self._params_future
                if fut is not None and not fut.done():
                    fut.set_result(self.default_params)
        self.servers.add(server)
        self.stats_servers_opened += 1
        self._last_connect_error = None
        log.debug("pool %s: opened server pid=%s", self.name, server.pid)
        if self.retired:
            server.close()
        return server

    def _on_connect_failure(self, exc: PoolerError) -> None:
        self._last_connect_error = exc
        if self._params_pending and self.opening == 0:
            self._params_pending = False
            fut = self._params_future
            if fut is not None and not fut.done():
                fut.set_exception(exc)
        coordinator = self.coordinator
        if coordinator is not None and coordinator.wanting:
            coordinator.distribute(self.now)  # the slot it held may go to another pool
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
        if self.coordinator is not None:
            return await self._coordinated_startup_parameters()
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

    async def _coordinated_startup_parameters(self) -> dict[str, str]:
        """`startup_parameters` under max_db_connections: the first server is opened when the database's
        coordinator grants a slot (the login counts as a waiting client), within query_wait_timeout."""
        fut = self._params_future
        if fut is None or fut.done():
            fut = self._params_future = asyncio.get_running_loop().create_future()
            self._params_pending = True
            self._params_since = self.now
            self.open_server()
        timeout = self.settings.query_wait_timeout
        try:
            async with asyncio.timeout(timeout if timeout > 0 else None):
                return await asyncio.shield(fut)
        except TimeoutError:
            raise self.database_full_error() from None

    def database_full_error(self) -> PoolerError:
        """What a client that waited query_wait_timeout for a server of a full database is told."""
        s = self.settings
        coordinator = self.coordinator
        reserve = ""
        if coordinator is not None and s.reserve_pool_size:
            reserve = f", reserve={coordinator.reserve_in_use()}/{s.reserve_pool_size}"
        return PoolerError(
            TOO_MANY_CONNECTIONS,
            f"all server connections to database '{s.database}' are in use "
            f"(max={s.max_db_connections}{reserve}, user='{s.username}')",
        )

    # ------------------------------------------------------------ pool engine
    # Reserve, max_db_connections (the coordinator calls the methods of its Member protocol), retain limits.

    def reserve_due(self, now: float) -> bool:
        """The oldest waiting client has waited reserve_pool_timeout (PgBouncer's rule for the reserve)."""
        s = self.settings
        if not s.reserve_pool_size:
            return False
        for client in self.waiters:
            if client.waiting:
                if s.query_wait_timeout > 0 and client.wait_deadline > 0:
                    since = client.wait_deadline - s.query_wait_timeout
                else:
                    since = self.waiting_since or now  # no wait limit: the clock of the pool's waiting
                return now - since >= s.reserve_pool_timeout
        # A login waiting for the pool's first server (its parameters) waits like a client.
        return self._params_pending and now - self._params_since >= s.reserve_pool_timeout

    def demand(self, now: float) -> int:
        """How many more servers the waiting clients need now: up to pool_size, or into the reserve once due."""
        if self.retired:
            return 0
        need = max(len(self.waiters), 1 if self._params_pending else 0) - self.opening
        if need <= 0:
            return 0
        s = self.settings
        room = s.pool_size - self.size
        if s.reserve_pool_size and self.reserve_due(now):
            room += s.reserve_pool_size
        return max(0, min(need, room))

    def open_reserve(self, now: float) -> None:
        """Open what the waiting clients need beyond pool_size (the tick found the reserve due)."""
        coordinator = self.coordinator
        if coordinator is not None:
            coordinator.request(self, now)
            return
        opened = 0
        while self.demand(now) > 0 and self.open_granted():
            opened += 1
        if opened:
            log.info(
                "pool %s: %d reserve connection(s) for clients waiting over reserve_pool_timeout", self.name, opened
            )

    def open_granted(self) -> bool:
        """Open one server now (the coordinator granted a slot, or the reserve is due)."""
        if self.retired or not self.can_open_without_client():
            return False
        self.opening += 1
        spawn(self._open_and_checkin())
        return True

    def spare(self) -> int:
        return self.size - self.settings.guaranteed_pool_size

    def eviction_candidate(self, min_age: float, now: float) -> ServerConnection | None:
        """The oldest idle server at least ``min_age`` old (min_connection_lifetime), for the coordinator."""
        best: ServerConnection | None = None
        for server in self.idle:
            old_enough = server.state == codes.SERVER_IDLE and now - server.created_at >= min_age
            if old_enough and (best is None or server.created_at < best.created_at):
                best = server
        return best

    def evict(self, server: ServerConnection) -> None:
        """Close an idle server for another pool of the database (no checkout can take it from here on)."""
        try:
            self.idle.remove(server)
        except ValueError:
            pass
        log.info("pool %s: closing idle server pid=%s for another user of the database", self.name, server.pid)
        if server.state == codes.SERVER_CLOSED or server.transport is None:
            coordinator = self.coordinator
            if coordinator is not None:
                coordinator.server_gone(server, self.now)
            return
        server.close()

    def watch_stalls(self, now: float, timeout: float) -> None:
        """proxy_copy_data_timeout (every second, from the maintenance): a lent server in a COPY, or in the middle
        of passing on a message, that moved no byte either way for ``timeout`` seconds ends its client with an
        error and is closed (never lent again). Looks at this pool's servers only, not at its clients, and costs
        the forwarding path nothing: progress is the byte counters the connections keep anyway."""
        watch = self._stall_watch
        seen: dict[ServerConnection, tuple[int, float]] = {}
        for server in self.servers:
            if server.state != codes.SERVER_ACTIVE or not (server.ledger.in_copy or server._skip):
                continue
            moved = server.bytes_sent + server.bytes_received
            before = watch.get(server)
            if before is None or before[0] != moved:
                seen[server] = (moved, now)
            elif now - before[1] >= timeout:
                self._stalled(server, timeout)
            else:
                seen[server] = before
        self._stall_watch = seen

    def _stalled(self, server: ServerConnection, timeout: float) -> None:
        what = "COPY" if server.ledger.in_copy else "message"
        log.warning(
            "pool %s: %s on server pid=%s made no progress for %gs (proxy_copy_data_timeout); closing it",
            self.name,
            what,
            server.pid,
            timeout,
        )
        client = server.client
        if client is not None:
            client.fail(
                PoolerError(
                    CONNECTION_FAILURE,
                    "Proxy operation timed out. Please try again later.",
                    detail=f"No data moved in either direction of this {what} for {timeout:g}s "
                    "(pg_doorman's proxy_copy_data_timeout).",
                )
            )
        server.abort()

    def release_idle(self, count: int, min_idle: float, now: float) -> int:
        """Close up to ``count`` servers idle for ``min_idle`` or longer, longest idle first, never below the
        guaranteed size; return how many (reserve release: the reserve is for bursts, not to keep)."""
        if self.waiters or count <= 0:
            return 0
        candidates = [s for s in self.idle if s.state == codes.SERVER_IDLE and now - s.last_used >= min_idle]
        candidates.sort(key=lambda s: s.last_used)
        closed = 0
        for server in candidates[: min(count, self.spare())]:
            self.idle.remove(server)
            server.close()
            closed += 1
        return closed

    # ------------------------------------------------------------ maintenance

    def maintain(self, now: float, quota: int | None = None) -> int:
        """Close idle servers past idle_timeout/lifetime, at most ``quota`` of them (retain_connections_max;
        None: no limit), oldest first; release idle reserve connections; keep min_pool_size open (runs every
        second). Returns how many idle_timeout/lifetime closes it made."""
        min_size = self.settings.min_pool_size
        closed = 0
        if self.idle and quota != 0:
            expiring: list[ServerConnection] = []
            # A closed server leaves self.servers only in connection_lost (later): count the closes made here,
            # or one pass would close every idle server and dip below min_pool_size.
            remaining = len(self.servers)
            for server in sorted(self.idle, key=_created_at) if quota is not None else self.idle:
                expired = now >= server.expires_at
                idle_for = now - server.last_used
                too_idle = server.used and idle_for >= server.idle_expires_after
                if (expired or too_idle) and remaining - 1 >= (0 if expired else min_size):
                    if quota is not None and closed >= quota:
                        break
                    remaining -= 1
                    closed += 1
                    expiring.append(server)
            if expiring:
                gone = set(expiring)
                self.idle = [server for server in self.idle if server not in gone]
                for server in expiring:
                    server.close()
        excess = self.size - self.settings.pool_size
        if excess > 0 and self.idle:
            released = self.release_idle(excess, self.settings.min_connection_lifetime, now)
            if released:
                log.info("pool %s: released %d idle reserve connection(s)", self.name, released)
        if not self.retired:
            missing = min_size - self.size
            coordinator = self.coordinator
            for _ in range(max(0, missing)):
                if coordinator is not None and not coordinator.has_room():
                    break  # replenishing never evicts nor goes into the reserve
                self.open_granted()
        return closed

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
