"""Which pool serves a (database, user), and which client a CancelRequest is for (PgBouncer's objects.c).

`PoolRegistry` is the one owner of both maps, so nothing else holds a pool or a cancel key by its own lookup:

- **Pools.** `reload` builds them from the configuration: a pool whose settings did not change is kept (with its
  servers, waiters and statement cache), a changed one is replaced by a new pool (the SCRAM ClientKey learnt at a
  client login carries over), a removed one is retired. The waiters of a replaced or removed pool move to its
  successor or are told the pool is gone; its busy servers close when their clients give them back.
  `pool_for` is the only question clients ask; the 100 ms tick and the 1 s maintenance visit every pool through
  `tick` and `maintain`.
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

from pg_doorman import memory
from pg_doorman.client import pool_removed
from pg_doorman.pool import Pool
from pg_doorman.pool.coordinator import Coordinator, Limits, Member

if TYPE_CHECKING:
    from pg_doorman.auth.external import PasswordCheck
    from pg_doorman.client import ClientConnection
    from pg_doorman.config import General, PoolSettings

log = logging.getLogger("pg_doorman.registry")

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
        "_randbits",
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

    # ------------------------------------------------------------------ pools

    def reload(self, all_settings: Iterable[PoolSettings]) -> PoolChanges:
        """Make the pools those of ``all_settings`` (`Config.all_pool_settings()`): keep, replace or retire.

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
        self._coordinate(all_settings, new, old)  # before waiters move: their new pools may need a slot
        for key, pool in old.items():
            if new.get(key) is not pool:
                pool.retire()
                self._move_waiters(pool, new.get(key))
                if key not in new:
                    changes.removed.append(key)
        self.pools = new
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

    def configure_engine(self, general: General) -> None:
        """The general settings of the pool engine that act on every pool (read at each maintenance run)."""
        self.retain_connections_max = general.retain_connections_max
        self.proxy_copy_data_timeout = general.proxy_copy_data_timeout
        memory.budget.configure(general.max_memory_usage)

    def pool_for(self, database: str, user: str) -> Pool | None:
        """The pool that serves ``user`` in ``database``, or None.

        Every pool comes from the configuration today, so this only finds. Hook point for pools created at login
        (auth_query: a user the configuration does not list, whose password PostgreSQL is asked for): the login
        looks the password up first (that awaits), then asks here; when no pool is found and the database allows
        it, this is where the user's pool is built (with `_create`), added to ``pools`` and returned. Callers
        already treat every answer as possibly new, and `reload` must then decide what becomes of such pools.
        """
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

    @staticmethod
    def _roll_stats(pool: Pool, now: float) -> None:
        """Close the pool's 15 s statistics period if it ended (stats.PoolStats.roll): O(servers), once a second."""
        to_server = int(pool.stats_closed_bytes_sent) + sum(server.bytes_sent for server in pool.servers)
        from_server = int(pool.stats_closed_bytes_received) + sum(server.bytes_received for server in pool.servers)
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
