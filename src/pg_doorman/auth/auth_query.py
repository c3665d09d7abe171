"""auth_query: logins of users that only PostgreSQL knows, with their verifier looked up at login.

One `AuthQuery` per pool section with an ``auth_query`` table (the registry keeps them by database). A login of a
user the configuration does not list goes through `AuthQuery.login`:

1. **Lookup** (`lookup`): the user's verifier from the cache, or from PostgreSQL (the configured query,
   ``$1`` = the user name, run by `LookupExecutor`). Found verifiers are cached for ``cache_ttl``, "no such
   user" for ``cache_failure_ttl``; both caches are bounded (`MAX_CACHED_USERS` each, oldest dropped first), so
   logins for random names cannot grow memory, and they cannot push real users out of the positive cache.
   Concurrent logins of one user share one query (coalescing); at most `MAX_IN_FLIGHT` different names are
   looked up at once. A name longer than PostgreSQL's 63 bytes is never looked up (PostgreSQL would compare a
   truncated name, possibly another role's).
2. **Exchange**: the same MD5 / SCRAM exchange as for a configured user (`policy.choose_method`). A user that
   is not found gets the doomed exchange with a mock SCRAM salt, so an unknown user and a wrong password end
   with the same 28P01 message after the same messages.
3. **Refetch on failure**: a failed check against a *cached* verifier re-reads it once (at most every
   ``min_interval`` per user): a changed password is picked up. For MD5 the client's answer is checked again
   against the new verifier and the login succeeds; a SCRAM proof is bound to the old salt, so that client fails
   and its next login uses the new verifier.

Lookup failures (PostgreSQL down, the query failing or returning something other than 0 or 1 row with a text
password) refuse the login (58000, as the original) with a log line; they are never taken as a password.

Where the client goes afterwards is the registry's business (`PoolRegistry.auth_query_pool`): the shared pool of
``server_user`` (dedicated mode), or a pool of the user's own that logs in to PostgreSQL with the verifier (MD5
pass-the-hash) or the ClientKey of the client's SCRAM proof (passthrough mode).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pg_doorman.auth.auth_query_executor import (
    LookupExecutor,
    LookupTarget,
    LookupUnavailable,
    password_from_result,
)
from pg_doorman.auth.client_login import ClientLogin, LoginFailed
from pg_doorman.auth.md5 import is_md5_verifier, verify_md5_response
from pg_doorman.auth.policy import Decision
from pg_doorman.protocol.errors import INVALID_PASSWORD, PoolerError
from pg_doorman.tasks import spawn

if TYPE_CHECKING:
    from pg_doorman.config.schema import AuthQueryConfig, PoolSettings

__all__ = [
    "MAX_CACHED_USERS",
    "MAX_IN_FLIGHT",
    "MAX_NAME_BYTES",
    "AuthQuery",
    "AuthQueryStats",
    "Found",
    "service_unavailable",
]

log = logging.getLogger("pg_doorman.auth_query")

MAX_NAME_BYTES = 63  # NAMEDATALEN - 1: PostgreSQL truncates longer names
MAX_CACHED_USERS = 10_000
MAX_IN_FLIGHT = 256
SYSTEM_ERROR = "58000"

Fetch = Callable[[str], Awaitable[str | None]]
Decide = Callable[[str | None], Decision]
Exchange = Callable[[ClientLogin], Awaitable[object]]


def service_unavailable() -> PoolerError:
    """What a client is told when its password cannot be looked up (the reason is only logged)."""
    return PoolerError(SYSTEM_ERROR, "Authentication service unavailable. Please try again later.")


@dataclass(slots=True)
class AuthQueryStats:
    """Counters of SHOW AUTH_QUERY and the pg_doorman_auth_query_* metrics (since this auth_query was built)."""

    cache_hits: int = 0
    cache_misses: int = 0
    cache_refetches: int = 0
    cache_rate_limited: int = 0
    auth_success: int = 0
    auth_failure: int = 0
    executor_queries: int = 0
    executor_errors: int = 0
    dynamic_pools_created: int = 0
    dynamic_pools_destroyed: int = 0


@dataclass(frozen=True, slots=True)
class Found:
    """A lookup's answer: the verifier (None: the user cannot log in), and whether it was read just now (then a
    refetch after a failed check could learn nothing newer)."""

    password: str | None
    fresh: bool


@dataclass(slots=True)
class _Entry:
    password: str | None
    fetched_at: float
    refetched_at: float  # last refetch after a failed check (min_interval)


class _RecordingLogin(ClientLogin):
    """A ClientLogin that keeps the MD5 salt it sent and the client's answer, to check that answer again against
    a refetched verifier."""

    __slots__ = ("_md5_salt", "md5_answer")

    def __init__(self, user: str, decision: Decision) -> None:
        super().__init__(user, decision)
        self._md5_salt = b""
        self.md5_answer: tuple[bytes, bytes] | None = None

    def start(self, channel_binding: bytes | None = None) -> bytes:
        request = super().start(channel_binding)
        # AuthenticationMD5Password: 'R', int32 length 12, int32 5, then the 4-byte salt.
        if request[:1] == b"R" and int.from_bytes(request[5:9], "big") == 5:
            self._md5_salt = request[9:13]
        return request

    def feed(self, kind: int, body: bytes) -> bytes:
        if self._md5_salt and self.md5_answer is None and kind == 0x70:
            self.md5_answer = (self._md5_salt, bytes(body))
        return super().feed(kind, body)


class AuthQuery:
    """The auth_query of one database: its cache, its lookup connections and its counters."""

    def __init__(
        self,
        config: AuthQueryConfig,
        template: PoolSettings,
        *,
        fetch: Fetch | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.template = template
        self.database = template.database
        self.stats = AuthQueryStats()
        self._clock = clock
        self._found: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first
        self._missing: OrderedDict[str, _Entry] = OrderedDict()  # oldest first
        self._in_flight: dict[str, asyncio.Future[str | None]] = {}
        self.executor: LookupExecutor | None = None
        if fetch is None:
            self.executor = LookupExecutor(
                LookupTarget(
                    host=template.server_host,
                    port=template.server_port,
                    database=config.database or template.server_database,
                    user=config.user,
                    password=config.password,
                ),
                config.workers,
            )
            fetch = self._fetch_from_postgres
        self._fetch = fetch

    # ------------------------------------------------------------ pools

    @property
    def dedicated(self) -> bool:
        return self.config.server_user is not None

    def pool_settings(self, user: str, password: str) -> PoolSettings:
        """Settings of ``user``'s own pool (passthrough): it logs in as the user with the verifier's material."""
        return dataclasses.replace(
            self.template,
            username=user,
            password=password,
            server_username=user,
            server_password=None,
            auth_query=True,
        )

    def dedicated_settings(self) -> PoolSettings:
        """Settings of the pool every user shares in dedicated mode: it logs in as server_user. Its ``password``
        is empty, so no client can log in to it as a configured user."""
        server_user = self.config.server_user
        assert server_user is not None
        return dataclasses.replace(
            self.template,
            username=server_user,
            password="",
            server_username=server_user,
            server_password=self.config.server_password,
            auth_query=True,
        )

    def same_setup(self, config: AuthQueryConfig, template: PoolSettings) -> bool:
        """Whether a reload leaves this auth_query as it is (then its cache, connections and counters stay)."""
        return self.config == config and self.template == template

    # ------------------------------------------------------------ login

    async def login(self, user: str, decide: Decide, exchange: Exchange) -> tuple[str, ClientLogin]:
        """Authenticate ``user``: look the verifier up, run the exchange ``decide`` chooses for it, refetch once
        after a failure. Returns the verifier that admitted the client and the finished login (its
        ``client_key``); raises LoginFailed (28P01) or the 58000 of `service_unavailable`."""
        found = await self.lookup(user)
        login = _RecordingLogin(user, decide(found.password))
        try:
            await exchange(login)
            password = found.password
        except LoginFailed:
            password = await self._recheck(user, found, login)
            if password is None:
                self.stats.auth_failure += 1
                raise
            log.info('auth_query: user "%s" logged in with a changed password (re-read after a failed check)', user)
        if password is None:  # an access rule let the client in without a password, but it has no role
            self.stats.auth_failure += 1
            raise LoginFailed(
                INVALID_PASSWORD, f'password authentication failed for user "{user}"', why="not found by auth_query"
            )
        self.stats.auth_success += 1
        return password, login

    async def _recheck(self, user: str, found: Found, login: _RecordingLogin) -> str | None:
        """After a failed check against a cached verifier: read it again (rate-limited); return the new one if
        it accepts the client's MD5 answer, else None (the login stays failed)."""
        if found.fresh or found.password is None:
            return None
        entry = self._found.get(user)
        now = self._clock()
        if entry is not None and now - entry.refetched_at < self.config.min_interval:
            self.stats.cache_rate_limited += 1
            return None
        self.stats.cache_refetches += 1
        try:
            newer = await self._fetch_shared(user, refetch=True)
        except PoolerError:
            return None  # logged; the failed login stays failed
        if newer is None or newer == found.password or login.md5_answer is None or not is_md5_verifier(newer):
            return None  # a SCRAM proof was made with the old salt: the next login uses the new verifier
        salt, answer = login.md5_answer
        return newer if verify_md5_response(newer, salt, answer) else None

    # ------------------------------------------------------------ cache

    async def lookup(self, user: str) -> Found:
        """The user's verifier, from the cache or PostgreSQL. Raises PoolerError 58000 when there is no answer."""
        if not user or len(user.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
            return Found(None, fresh=True)
        now = self._clock()
        entry = self._found.get(user)
        if entry is not None:
            if now - entry.fetched_at < self.config.cache_ttl:
                self._found.move_to_end(user)
                self.stats.cache_hits += 1
                return Found(entry.password, fresh=False)
            del self._found[user]
        entry = self._missing.get(user)
        if entry is not None:
            if now - entry.fetched_at < self.config.cache_failure_ttl:
                self.stats.cache_hits += 1
                return Found(None, fresh=False)
            del self._missing[user]
        if user in self._in_flight:
            self.stats.cache_hits += 1  # another login of this user is asking already: share its answer
            return Found(await asyncio.shield(self._in_flight[user]), fresh=True)
        self.stats.cache_misses += 1
        return Found(await self._fetch_shared(user, refetch=False), fresh=True)

    async def _fetch_shared(self, user: str, *, refetch: bool) -> str | None:
        """One query per user at a time, in a task of its own (a client giving up does not cancel it for the
        others waiting on it); the answer goes to the cache."""
        pending = self._in_flight.get(user)
        if pending is None:
            if len(self._in_flight) >= MAX_IN_FLIGHT:
                log.warning("auth_query for %s: %d lookups in flight, refusing more", self.database, MAX_IN_FLIGHT)
                raise service_unavailable()
            pending = self._in_flight[user] = asyncio.get_running_loop().create_future()
            spawn(self._run_fetch(user, pending, refetch))
        return await asyncio.shield(pending)

    async def _run_fetch(self, user: str, pending: asyncio.Future[str | None], refetch: bool) -> None:
        try:
            password = await self._fetch(user)
        except LookupUnavailable as exc:
            self.stats.executor_errors += 1
            log.warning('auth_query for %s: cannot look up user "%s": %s', self.database, user, exc)
            pending.set_exception(service_unavailable())
        except Exception as exc:
            self.stats.executor_errors += 1
            log.exception('auth_query for %s: lookup of user "%s" failed', self.database, user)
            pending.set_exception(service_unavailable() if not isinstance(exc, PoolerError) else exc)
        else:
            self._store(user, password, refetch)
            pending.set_result(password)
        finally:
            self._in_flight.pop(user, None)
            if not pending.done():
                pending.cancel()
            # Nobody may be waiting any more (the clients gave up): mark the exception as seen.
            if not pending.cancelled():
                pending.exception()

    def _store(self, user: str, password: str | None, refetch: bool) -> None:
        now = self._clock()
        old = self._found.pop(user, None)
        self._missing.pop(user, None)
        refetched_at = now if refetch else (old.refetched_at if old is not None else float("-inf"))
        cache = self._found if password is not None else self._missing
        cache[user] = _Entry(password, now, refetched_at)
        while len(cache) > MAX_CACHED_USERS:
            cache.popitem(last=False)

    async def _fetch_from_postgres(self, user: str) -> str | None:
        executor = self.executor
        assert executor is not None
        self.stats.executor_queries += 1
        result = await executor.fetch(self.config.query, user)
        password = password_from_result(result)
        if password is None and result.rows:
            log.info('auth_query for %s: user "%s" has no usable password (NULL, empty or not a verifier)',
                     self.database, user)  # fmt: skip
        return password

    def cache_entries(self) -> int:
        return len(self._found) + len(self._missing)

    def prune(self) -> None:
        """Drop expired entries from the front of both caches (from the maintenance run, once a second)."""
        now = self._clock()
        for cache, ttl in ((self._found, self.config.cache_ttl), (self._missing, self.config.cache_failure_ttl)):
            while cache:
                entry = next(iter(cache.values()))
                if now - entry.fetched_at < ttl:
                    break
                cache.popitem(last=False)

    def forget(self, user: str) -> None:
        """Drop what is known of ``user`` (the next login asks PostgreSQL)."""
        self._found.pop(user, None)
        self._missing.pop(user, None)

    def close(self) -> None:
        """A reload replaced or removed this auth_query: close its lookup connections."""
        if self.executor is not None:
            self.executor.close()
