"""``max_db_connections``: one cap on the server connections of a database, over all its user pools.

PostgreSQL's ``max_connections`` (and a database's ``CONNECTION LIMIT``) count backends, not pools: with several
users in one database, each pool's ``pool_size`` alone cannot keep their sum under the server's limit. A
`Coordinator` exists for each database whose ``max_db_connections`` is above 0, and every pool of that database
asks it before opening a server connection for a waiting client (`Pool.open_server`). The checkout/checkin fast
path never reaches it: a pool calls it only when it has no idle server and wants a new one, when one of its
servers goes away, and on the 100 ms tick while a pool is kept waiting.

What it does when a pool asks (`request`) and whenever capacity may have changed (`distribute`):

1. Pools waiting for a slot are served first come, first served: a slot freed by any pool goes to the oldest
   request, not to whoever asks next.
2. Below the cap, the slot is granted (the pool opens a connection).
3. At the cap, a pool whose oldest waiting client has waited ``reserve_pool_timeout`` may go up to
   ``reserve_pool_size`` above it (PgBouncer's reserve; the original grants the reserve at once, see README).
4. Otherwise an idle server of another user of the database is closed to make room (eviction): only a pool
   above its guaranteed size (``max(min_pool_size, min_guaranteed_pool_size)``) gives one up, the one with the
   most to spare first, and only a server at least ``min_connection_lifetime`` old (its oldest one). The slot
   is granted when that server is gone (`server_gone`), so the backend count never goes above the cap, even
   for a moment. No more servers are evicted than the waiting pools still need.
5. Otherwise the pool keeps waiting: its clients get a server when one is freed or becomes evictable (the tick
   retries), or time out at ``query_wait_timeout``.

Sans-I/O: it sees pools only through the `Member` protocol below, so its unit tests use plain objects
(tests/unit/test_coordinator.py). Counting is done on demand (the sum of the members' sizes): connections being
opened and connections closing still count, as their backends still exist.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

log = logging.getLogger("pg_doorman.pool")


class Evictable(Protocol):
    """An idle server connection, as eviction sees it."""

    created_at: float


ServerT = TypeVar("ServerT", bound=Evictable)


class Member(Protocol[ServerT]):
    """What a coordinator needs of a pool (`pg_doorman.pool.Pool` implements it, with its ServerConnection)."""

    name: str
    retired: bool

    @property
    def size(self) -> int:
        """Servers open or being opened (closing ones count until they are gone)."""
        ...

    def demand(self, now: float) -> int:
        """How many more servers its waiting clients need now (within its pool_size, or its reserve)."""
        ...

    def reserve_due(self, now: float) -> bool:
        """Its oldest waiting client has waited reserve_pool_timeout."""
        ...

    def spare(self) -> int:
        """Servers above the number eviction must leave it (``max(min_pool_size, min_guaranteed_pool_size)``)."""
        ...

    def eviction_candidate(self, min_age: float, now: float) -> ServerT | None:
        """Its oldest idle server that is at least ``min_age`` old, or None."""
        ...

    def evict(self, server: ServerT) -> None:
        """Take ``server`` out of the idle list (no checkout can get it any more) and close it."""
        ...

    def open_granted(self) -> bool:
        """Open one server now (False if it cannot, e.g. a SCRAM passthrough pool before any client login)."""
        ...

    def release_idle(self, count: int, min_idle: float, now: float) -> int:
        """Close up to ``count`` servers idle ``min_idle`` or longer (not below its guaranteed size)."""
        ...


@dataclass(frozen=True, slots=True)
class Limits:
    """The settings of one database (``pools.<db>``) that a coordinator applies."""

    max_connections: int
    reserve_size: int = 0
    reserve_timeout: float = 3.0
    min_lifetime: float = 30.0


class Coordinator:
    """The ``max_db_connections`` cap of one database (see the module docstring)."""

    def __init__(self, database: str, limits: Limits) -> None:
        self.database = database
        self.limits = limits
        self.members: list[Member[Any]] = []
        # Pools waiting for a slot, oldest request first (a dict keeps insertion order and finds in O(1)).
        self.wanting: dict[Member[Any], None] = {}
        # Servers closed to make room, until they are gone: server -> the pool it was taken from.
        self.evicting: dict[Any, Member[Any]] = {}
        self.evictions = 0
        self.reserve_acquisitions = 0
        self.exhaustions = 0  # client waits that ended in query_wait_timeout while the database was full

    # ----------------------------------------------------------------- state

    def total(self) -> int:
        return sum(member.size for member in self.members)

    def reserve_in_use(self) -> int:
        return max(0, self.total() - self.limits.max_connections)

    def has_room(self) -> bool:
        """A connection may be opened without a waiting client (min_pool_size): below the cap, nobody waiting.
        Never evicts: keeping a pool warm is no reason to close another's servers."""
        return not self.wanting and self.total() < self.limits.max_connections

    def set_members(self, members: list[Member[Any]]) -> None:
        """The pools of the database after a reload, with retired ones that still hold servers (they count)."""
        self.members = members
        for pool in [pool for pool in self.wanting if pool not in members]:
            del self.wanting[pool]

    # ---------------------------------------------------------------- events

    def request(self, pool: Member[Any], now: float) -> None:
        """``pool`` wants servers for its waiting clients: grant what the cap allows, queue for the rest."""
        if pool not in self.wanting:
            self.wanting[pool] = None
        self.distribute(now)

    def server_gone(self, server: Evictable, now: float) -> None:
        """A server of a member closed (or failed to open): its slot may go to a waiting pool."""
        self.evicting.pop(server, None)
        if self.wanting:
            self.distribute(now)

    def distribute(self, now: float) -> None:
        """Grant free slots (and the reserve) to waiting pools in request order, then evict for what is unmet."""
        wanting = self.wanting
        if not wanting:
            return
        limits = self.limits
        total = self.total()
        for pool in list(wanting):
            while pool.demand(now) > 0:
                if total < limits.max_connections:
                    pass
                elif total < limits.max_connections + limits.reserve_size and pool.reserve_due(now):
                    self.reserve_acquisitions += 1
                    log.info(
                        "database %s: reserve connection for %s (%d of %d in use)",
                        self.database,
                        pool.name,
                        total + 1 - limits.max_connections,
                        limits.reserve_size,
                    )
                else:
                    break
                if not pool.open_granted():
                    break
                total += 1
            if pool.demand(now) <= 0 or pool.retired:
                del wanting[pool]
        unmet = sum(pool.demand(now) for pool in wanting) - len(self.evicting)
        while unmet > 0 and self._evict_one(now):
            unmet -= 1

    def release_reserve(self, now: float) -> int:
        """Above the cap (the reserve was used) with nobody waiting: close servers idle min_connection_lifetime
        or longer until the database is back under it (every second, from the maintenance)."""
        excess = self.total() - self.limits.max_connections - len(self.evicting)
        if excess <= 0 or self.wanting:
            return 0
        released = 0
        for pool in self.members:
            released += pool.release_idle(excess - released, self.limits.min_lifetime, now)
            if released >= excess:
                break
        if released:
            log.info("database %s: released %d idle reserve connection(s)", self.database, released)
        return released

    def _evict_one(self, now: float) -> bool:
        """Close the oldest idle server (old enough) of the pool with the most to spare; False if none may go."""
        best: tuple[int, float] | None = None
        chosen: tuple[Member[Any], Evictable] | None = None
        for pool in self.members:
            if pool in self.wanting:
                continue  # a pool whose clients wait has no idle server to give
            spare = pool.spare() - sum(1 for owner in self.evicting.values() if owner is pool)
            if spare <= 0:
                continue
            server = pool.eviction_candidate(self.limits.min_lifetime, now)
            if server is None:
                continue
            rank = (spare, -server.created_at)
            if best is None or rank > best:
                best, chosen = rank, (pool, server)
        if chosen is None:
            return False
        pool, server = chosen
        self.evicting[server] = pool
        self.evictions += 1
        log.info(
            "database %s: closing an idle server of %s to make room (max_db_connections=%d)",
            self.database,
            pool.name,
            self.limits.max_connections,
        )
        pool.evict(server)
        return True
