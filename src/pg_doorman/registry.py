"""Which pool serves a (database, user), and which client a CancelRequest is for (PgBouncer's objects.c).

`PoolRegistry` is the one owner of both maps, so nothing else holds a pool or a cancel key by its own lookup:

- **Pools.** `reload` builds them from the configuration: a pool whose settings did not change is kept (with its
  servers, waiters and statement cache), a changed one is replaced by a new pool (the SCRAM ClientKey learnt at a
  client login carries over), a removed one is retired. The waiters of a replaced or removed pool move to its
  successor or are told the pool is gone; its busy servers close when their clients give them back.
  `pool_for` is the only question clients ask; the 100 ms tick and the 1 s maintenance visit every pool through
  `tick` and `maintain`.
- **auth_query pools.** A database with an ``auth_query`` section has an `AuthQuery` (auth/auth_query.py), kept
  across reloads that leave it unchanged (cache, lookup connections, counters). Its users' pools live in
  ``pools`` next to the configured ones: in dedicated mode one pool of ``server_user`` built with the
  configuration, in passthrough mode a pool per user built at its first login (`auth_query_pool`), rebuilt when
  the user's verifier changed and collected by the maintenance when it has had no client and no server for
  `DYNAMIC_POOL_GRACE`. A reload keeps a user's pool if its settings come out the same, and drops it otherwise
  (auth_query changed or removed, or a configured user of that name now exists: configured users always win).
- **Cancel keys.** Every logged-in client is registered under the (process id, secret) pair its BackendKeyData
  told it. The pair is the key, not the process id alone: pg_doorman's random ids and the real backend ids that
  session-mode clients are given come from different sources (and several PostgreSQL hosts), so two live
  clients may share a process id. A lookup compares secrets in constant time; a registration is refused only on
  an exact (pid, secret) clash, and then a fresh secret is drawn.

No I/O of its own (what a reload sets off, idle servers of retired pools closing and stranded waiters told so, is
the pools' and clients' doing): unit-tested without sockets (tests/unit/test_registry.py).
"""

from __future__ import annotations

import logging
import random
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pg_doorman import memory, views
from pg_doorman.auth.auth_query import AuthQuery
from pg_doorman.client import pool_removed
from pg_doorman.pool import Pool
from pg_doorman.pool.coordinator import Coordinator, Limits, Member

if TYPE_CHECKING:
    from pg_doorman.auth.external import PasswordCheck
    from pg_doorman.client import ClientConnection
    from pg_doorman.config import General, PoolSettings
    from pg_doorman.config.schema import AuthQueryConfig

log = logging.getLogger("pg_doorman.registry")

DYNAMIC_POOL_GRACE = 1.0
"""Seconds an auth_query user's pool stays without clients and servers before the maintenance drops it."""

CancelKey = tuple[int, int]
"""A BackendKeyData (process id, secret), as PostgreSQL sends them: two int32."""


def new_cancel_key(randbits: Callable[[int], int] = secrets.randbits) -> CancelKey:
    """A random BackendKeyData (process id, secret) for a client.

    The process id is random and positive: sequential ids would tell anyone how many clients connected and let
    a cancel be aimed at a neighbour's id. The secret is a full random 32 bits sent as PostgreSQL's signed int32.
    ``randbits`` is replaceable for tests.
    """
    return _random_pid(randbits), _random_secret(randbits)


def _random_pid(randbits: Callable[[int], int]) -> int:
    pid = 0
    while not pid:
        pid = randbits(31)
    return pid


def _random_secret(randbits: Callable[[int], int]) -> int:
    secret = randbits(32)
    return secret - (1 << 32) if secret >= 1 << 31 else secret


def _uint32(value: int) -> int:
    """An int32 sent signed or unsigned, as one number (a CancelRequest carries what BackendKeyData sent)."""
    return value & 0xFFFFFFFF


@dataclass(slots=True)
class PoolChanges:
    """What a `PoolRegistry.reload` did, by (database, user); pools not listed kept their connections."""

    added: list[tuple[str, str]] = field(default_factory=list)
    replaced: list[tuple[str, str]] = field(default_factory=list)
    removed: list[tuple[str, str]] = field(default_factory=list)

    def describe(self) -> str:
        parts = []
        for what, keys in (("added", self.added), ("rebuilt", self.replaced), ("removed", self.removed)):
            if keys:
                parts.append(f"{what}: " + ", ".join(f"{user}@{db}" for db, user in keys))
        return "; ".join(parts) if parts else "no pool changed"


class PoolRegistry:
    """The pools of one pg_doorman process, by (database, user), and its clients by cancel key."""

    __slots__ = (
        "_cancel_keys",
        "_empty_since",
        "_randbits",
        "_static",
        "auth_queries",
        "coordinators",
        "databases",
        "pools",
        "proxy_copy_data_timeout",
        "retain_connections_max",
        "user_checks",
        "user_passwords",
    )

    def __init__(self, randbits: Callable[[int], int] = secrets.randbits) -> None:
        self.pools: dict[tuple[str, str], Pool] = {}
        self.databases: frozenset[str] = frozenset()
        # The configured password of every user name, from the first pool that defines it: a client asking for a
        # database it has no pool in is still challenged against it (see ClientConnection._authenticate).
        self.user_passwords: dict[str, str] = {}
        self.user_checks: dict[str, PasswordCheck] = {}  # the same for external checks (JWT, PAM, LDAP)
        # uint32 process id -> [(secret as 4 bytes, client)]: almost always one entry (see the module docstring).
        self._cancel_keys: dict[int, list[tuple[bytes, ClientConnection]]] = {}
        self._randbits = randbits
        # Pool engine: max_db_connections coordinators by database, and the general settings maintenance applies.
        self.coordinators: dict[str, Coordinator] = {}
        self.retain_connections_max = 3
        self.proxy_copy_data_timeout = 15.0
        # auth_query: by database; which pools are configured ones (their users never go through auth_query);
        # when each auth_query user's pool was first seen without clients and servers (for the collection).
        self.auth_queries: dict[str, AuthQuery] = {}
        self._static: frozenset[tuple[str, str]] = frozenset()
        self._empty_since: dict[tuple[str, str], float] = {}

    # ------------------------------------------------------------------ pools

    def reload(
        self,
        all_settings: Iterable[PoolSettings],
        auth_queries: Iterable[tuple[AuthQueryConfig, PoolSettings]] = (),
    ) -> PoolChanges:
        """Make the pools those of ``all_settings`` (`Config.all_pool_settings()`) and ``auth_queries``
        (`Config.auth_query_templates()`): keep, replace or retire.

        Returns which (database, user) pools were added, replaced (settings changed) and removed.
        """
        all_settings = list(all_settings)
        old = self.pools
        new: dict[tuple[str, str], Pool] = {}
        changes = PoolChanges()
        for settings in all_settings:
            key = (settings.database, settings.username)
            existing = old.get(key)
            if existing is not None and existing.settings == settings:
                new[key] = existing
            else:
                new[key] = self._create(settings, existing)
                (changes.added if existing is None else changes.replaced).append(key)
        self._static = frozenset(new)
        templates = self._reload_auth_queries(list(auth_queries), old, new, changes)
        self._coordinate(all_settings + templates, new, old)  # before waiters move: their new pools may need a slot
        for key, pool in old.items():
            if new.get(key) is not pool:
                pool.retire()
                successor = new.get(key)
                if successor is not None and successor.settings.auth_query != pool.settings.auth_query:
                    successor = None  # a configured user now shadows an auth_query user's pool, or the reverse
                self._move_waiters(pool, successor)
                if key not in new:
                    changes.removed.append(key)
                self._count_dropped(pool)
        self.pools = new
        self._empty_since = {key: since for key, since in self._empty_since.items() if key in new}
        self.databases = frozenset(db for db, _ in new)
        passwords: dict[str, str] = {}
        checks: dict[str, PasswordCheck] = {}
        for settings in all_settings:
            if settings.username not in passwords:
                passwords[settings.username] = settings.password
                if settings.password_check is not None:
                    checks[settings.username] = settings.password_check
        self.user_passwords = passwords
        self.user_checks = checks
        return changes

    def _reload_auth_queries(
        self,
        setups: list[tuple[AuthQueryConfig, PoolSettings]],
        old: dict[tuple[str, str], Pool],
        new: dict[tuple[str, str], Pool],
        changes: PoolChanges,
    ) -> list[PoolSettings]:
        """The auth_query part of `reload`: keep or rebuild each database's AuthQuery and its users' pools (added
        to ``new``). Returns the templates (their database limits count for max_db_connections)."""
        previous = self.auth_queries
        current: dict[str, AuthQuery] = {}
        for config, template in setups:
            database = template.database
            auth = previous.get(database)
            if auth is None or not auth.same_setup(config, template):
                auth = AuthQuery(config, template)
            current[database] = auth
            if auth.dedicated:
                settings = auth.dedicated_settings()
                key = (database, settings.username)
                existing = old.get(key)
                if existing is not None and existing.settings == settings:
                    new[key] = existing
                else:
                    new[key] = self._create(settings, existing)
                    (changes.added if existing is None else changes.replaced).append(key)
        for database, auth in previous.items():
            if current.get(database) is not auth:
                auth.close()
        for key, pool in old.items():
            if key in new or pool.retired:
                continue
            auth = current.get(key[0])
            s = pool.settings
            unchanged = auth is not None and auth is previous.get(key[0]) and not auth.dedicated
            if unchanged and auth is not None and auth.pool_settings(s.username, s.password) == s:
                new[key] = pool  # an auth_query user's pool that this reload leaves as it was
        self.auth_queries = current
        return [template for _, template in setups]

    def auth_query_for(self, database: str, user: str) -> AuthQuery | None:
        """The AuthQuery that authenticates ``user`` in ``database``, or None: a configured user (they always
        win), or no auth_query there."""
        if (database, user) in self._static:
            return None
        return self.auth_queries.get(database)

    def auth_query_pool(self, database: str, user: str, password: str) -> Pool:
        """The pool of a user `AuthQuery.login` admitted with verifier ``password``: the shared server_user pool
        (dedicated mode), or the user's own (passthrough), built now if it has none or its verifier changed."""
        auth = self.auth_queries[database]
        if auth.dedicated:
            return self.pools[(database, auth.dedicated_settings().username)]
        key = (database, user)
        settings = auth.pool_settings(user, password)
        existing = self.pools.get(key)
        if existing is not None and existing.settings == settings:
            return existing
        pool = self._create(settings, None)  # a changed verifier: the old ClientKey is of the old password
        coordinator = pool.coordinator = self.coordinators.get(database)
        if coordinator is not None:
            coordinator.set_members([*coordinator.members, pool])
        if existing is not None:
            existing.retire()
            self._move_waiters(existing, pool)
            log.info("auth_query: pool %s rebuilt (the user's password changed)", pool.name)
        else:
            log.info("auth_query: pool %s created", pool.name)
        self.pools[key] = pool
        self._empty_since.pop(key, None)
        auth.stats.dynamic_pools_created += 1
        return pool

    def successor(self, pool: Pool) -> Pool | None:
        """The pool that took over from the retired ``pool`` (a reload, or a rebuilt auth_query pool), for its
        connected clients; None when there is none. A client stays with its kind of pool: one admitted by
        auth_query never moves to a configured user's pool of the same name (nor the reverse)."""
        s = pool.settings
        successor = self.pools.get((s.database, s.username))
        if successor is None or successor.settings.auth_query != s.auth_query:
            return None
        return successor

    @staticmethod
    def _create(settings: PoolSettings, predecessor: Pool | None) -> Pool:
        """A new pool; one that replaces ``predecessor`` keeps the SCRAM ClientKey a client login gave it, and its
        statistics (counters go on across a reload; the old pool's busy servers record into the same object)."""
        pool = Pool(settings)
        if predecessor is not None:
            pool.scram_client_key = predecessor.scram_client_key
            pool.stats = predecessor.stats
        return pool

    @staticmethod
    def _move_waiters(retired: Pool, successor: Pool | None) -> None:
        """Clients waiting on a pool a reload replaced wait on its successor (a retired pool opens nothing)."""
        waiters = list(retired.waiters)
        retired.waiters.clear()
        for client in waiters:
            if not client.waiting:
                continue
            if successor is None:
                client.checkout_failed(pool_removed())
                continue
            client.move_to_pool(successor)
            successor.enqueue(client)

    def _coordinate(
        self, all_settings: list[PoolSettings], new: dict[tuple[str, str], Pool], old: dict[tuple[str, str], Pool]
    ) -> None:
        """One coordinator per database with max_db_connections (kept across reloads, limits updated), with the
        database's pools as members; retired pools that still hold servers stay members until those are gone."""
        limits: dict[str, Limits] = {}
        for s in all_settings:
            if s.max_db_connections > 0 and s.database not in limits:
                limits[s.database] = Limits(
                    max_connections=s.max_db_connections,
                    reserve_size=s.reserve_pool_size,
                    reserve_timeout=s.reserve_pool_timeout,
                    min_lifetime=s.min_connection_lifetime,
                )
        previous = self.coordinators
        coordinators: dict[str, Coordinator] = {}
        for database, database_limits in limits.items():
            coordinator = previous.get(database)
            if coordinator is None:
                coordinator = Coordinator(database, database_limits)
            coordinator.limits = database_limits
            coordinators[database] = coordinator
        for (database, _), pool in new.items():
            pool.coordinator = coordinators.get(database)
        for database, coordinator in coordinators.items():
            members: list[Member[Any]] = [pool for (db, _), pool in new.items() if db == database]
            draining = [m for m in coordinator.members if m.retired and m.size > 0 and m not in members]
            draining += [p for (db, _), p in old.items() if db == database and p.size > 0 and p not in members]
            coordinator.set_members(list(dict.fromkeys(members + draining)))
        self.coordinators = coordinators

    def _count_dropped(self, pool: Pool) -> None:
        """A passthrough auth_query pool was dropped: count it in its database's AuthQuery."""
        s = pool.settings
        auth = self.auth_queries.get(s.database)
        if s.auth_query and auth is not None and not auth.dedicated:
            auth.stats.dynamic_pools_destroyed += 1

    def collect_idle_auth_query_pools(self, now: float) -> int:
        """Drop the passthrough auth_query pools that had no client, no server and no waiter for
        DYNAMIC_POOL_GRACE seconds (never those with min_pool_size); returns how many. A login that just built
        a pool counts as its client before it awaits anything, so a new pool is never collected under it."""
        dropped = 0
        for key, pool in list(self.pools.items()):
            s = pool.settings
            if not s.auth_query or key in self._static:
                continue
            auth = self.auth_queries.get(s.database)
            if auth is None or auth.dedicated:
                continue
            if pool.client_count > 0 or pool.size > 0 or pool.waiters or s.min_pool_size > 0:
                self._empty_since.pop(key, None)
                continue
            since = self._empty_since.setdefault(key, now)
            if now - since < DYNAMIC_POOL_GRACE:
                continue
            del self.pools[key]
            del self._empty_since[key]
            pool.retire()
            coordinator = pool.coordinator
            if coordinator is not None:
                coordinator.set_members([member for member in coordinator.members if member is not pool])
            auth.stats.dynamic_pools_destroyed += 1
            log.info("auth_query: idle pool %s dropped", pool.name)
            dropped += 1
        for auth in self.auth_queries.values():
            auth.prune()
        return dropped

    def configure_engine(self, general: General) -> None:
        """The general settings of the pool engine that act on every pool (read at each maintenance run)."""
        self.retain_connections_max = general.retain_connections_max
        self.proxy_copy_data_timeout = general.proxy_copy_data_timeout
        memory.budget.configure(general.max_memory_usage)

    def pool_for(self, database: str, user: str) -> Pool | None:
        """The pool that serves ``user`` in ``database``, or None. For a user that auth_query authenticates
        (`auth_query_for` is not None) the pool comes from `auth_query_pool` after the login instead."""
        return self.pools.get((database, user))

    def has_database(self, database: str) -> bool:
        """Whether some pool serves ``database`` (for the error a client without a pool in it gets)."""
        return database in self.databases

    def __len__(self) -> int:
        return len(self.pools)

    def tick(self, now: float) -> None:
        """Every 100 ms: the pools' clocks, and query_wait_timeout for waiting clients (no timer per wait)."""
        for pool in list(self.pools.values()):
            pool.tick(now)
        for coordinator in self.coordinators.values():
            if coordinator.wanting:
                coordinator.distribute(now)  # a peer's server may have become idle or old enough to evict

    def maintain(self, now: float) -> None:
        """Every second: idle_timeout and server_lifetime (at most retain_connections_max closes over all pools,
        pools in random order so that none always gets the whole quota), reserve release, min_pool_size, stalled
        COPYs and the memory budget; one failing pool stops no other."""
        memory.budget.sample()
        pools = list(self.pools.values())
        random.shuffle(pools)
        quota = self.retain_connections_max
        remaining: int | None = quota if quota > 0 else None
        copy_timeout = self.proxy_copy_data_timeout
        for pool in pools:
            try:
                closed = pool.maintain(now, remaining)
                if remaining is not None:
                    remaining = max(0, remaining - closed)
                if copy_timeout > 0:
                    pool.watch_stalls(now, copy_timeout)
                self._roll_stats(pool, now)
            except Exception:
                log.exception("maintenance of pool %s failed", pool.name)
        for coordinator in self.coordinators.values():
            try:
                coordinator.release_reserve(now)
            except Exception:
                log.exception("maintenance of database %s failed", coordinator.database)
        if self.auth_queries:
            try:
                self.collect_idle_auth_query_pools(now)
            except Exception:
                log.exception("collection of idle auth_query pools failed")

    @staticmethod
    def _roll_stats(pool: Pool, now: float) -> None:
        """Close the pool's 15 s statistics period if it ended (stats.PoolStats.roll): O(servers), once a second."""
        to_server, from_server = views.traffic_bytes(pool)
        pool.stats.roll(now, to_server, from_server)

    # ------------------------------------------------------------ cancel keys

    def register_cancel_key(self, client: ClientConnection, pid: int = 0) -> CancelKey:
        """Register ``client`` under a new cancel key and return it (to send in BackendKeyData and keep as the
        client's ``pid``/``secret``).

        The process id is ``pid`` when given (session mode: the backend lent to the client for good, so that
        pg_backend_pid() and NOTIFY's sender match what the client was told), else a random one; the secret is
        always pg_doorman's own random 32 bits. Only an exact (pid, secret) clash with a live client is refused:
        the secret (and a random pid) is drawn again.
        """
        randbits = self._randbits
        while True:
            key = (pid or _random_pid(randbits), _random_secret(randbits))
            if self._holder(*key) is None:
                break
        self._cancel_keys.setdefault(_uint32(key[0]), []).append((_uint32(key[1]).to_bytes(4, "big"), client))
        return key

    def cancel_target(self, pid: int, secret: int) -> ClientConnection | None:
        """The client a CancelRequest with this key is for, or None.

        All 32 bits of the secret count, compared in constant time: the process id alone is no proof (it is sent
        in clear to every client and, even when random, guessable one connection at a time).
        """
        return self._holder(pid, secret)

    def _holder(self, pid: int, secret: int) -> ClientConnection | None:
        entries = self._cancel_keys.get(_uint32(pid))
        if entries is None:
            return None
        wanted = _uint32(secret).to_bytes(4, "big")
        found = None
        for stored, client in entries:  # every entry compared: which one matched takes no different time
            if secrets.compare_digest(stored, wanted):
                found = client
        return found

    def forget_cancel_key(self, client: ClientConnection) -> None:
        """A client closed: its key (the ``pid``/``secret`` it was registered under) no longer cancels."""
        if not client.pid:
            return
        pid = _uint32(client.pid)
        entries = self._cancel_keys.get(pid)
        if entries is None:
            return
        kept = [entry for entry in entries if entry[1] is not client]
        if not kept:
            del self._cancel_keys[pid]
        elif len(kept) != len(entries):
            self._cancel_keys[pid] = kept

    def cancel_key_count(self) -> int:
        """How many clients a CancelRequest can reach (for tests and the admin console)."""
        return sum(len(entries) for entries in self._cancel_keys.values())
