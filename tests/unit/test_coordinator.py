"""The max_db_connections coordinator without sockets: pools are plain objects with a size, waiting clients, idle
servers and a guaranteed minimum (the `Member` protocol), so each rule is checked with plain values."""

from __future__ import annotations

from dataclasses import dataclass, field

from pg_doorman.pool.coordinator import Coordinator, Limits


@dataclass(eq=False)
class Server:
    created_at: float
    last_used: float = 0.0


@dataclass(eq=False)
class FakePool:
    name: str
    servers: int = 0
    waiting: int = 0
    opening: int = 0
    pool_size: int = 5
    guaranteed: int = 0
    waited_since: float | None = None  # when its oldest client began to wait
    reserve_timeout: float = 3.0
    reserve_size: int = 0
    idle: list[Server] = field(default_factory=list)
    retired: bool = False
    closed: list[Server] = field(default_factory=list)

    @property
    def size(self) -> int:
        return self.servers + self.opening

    def reserve_due(self, now: float) -> bool:
        return self.waited_since is not None and now - self.waited_since >= self.reserve_timeout

    def demand(self, now: float) -> int:
        room = self.pool_size + (self.reserve_size if self.reserve_due(now) else 0) - self.size
        return max(0, min(self.waiting - self.opening, room))

    def spare(self) -> int:
        return self.size - self.guaranteed

    def eviction_candidate(self, min_age: float, now: float) -> Server | None:
        old = [s for s in self.idle if now - s.created_at >= min_age]
        return min(old, key=lambda s: s.created_at) if old else None

    def evict(self, server: Server) -> None:
        self.idle.remove(server)
        self.closed.append(server)

    def open_granted(self) -> bool:
        self.opening += 1
        return True

    def release_idle(self, count: int, min_idle: float, now: float) -> int:
        gone = [s for s in self.idle if now - s.last_used >= min_idle][: min(count, self.spare())]
        for server in gone:
            self.idle.remove(server)
            self.closed.append(server)
        return len(gone)

    def finish_close(self, coordinator: Coordinator, now: float) -> None:
        """The closed servers' connections are lost (what connection_lost -> Pool.forget reports)."""
        for server in self.closed:
            self.servers -= 1
            coordinator.server_gone(server, now)
        self.closed.clear()


def coordinator(*pools: FakePool, **limits: float) -> Coordinator:
    c = Coordinator("db", Limits(max_connections=int(limits.pop("max_connections", 2)), **limits))  # type: ignore[arg-type]
    c.set_members(list(pools))
    return c


def with_idle(pool: FakePool, *created: float) -> FakePool:
    for at in created:
        pool.idle.append(Server(created_at=at))
        pool.servers += 1
    return pool


def test_below_the_cap_every_request_is_granted_at_once() -> None:
    a = FakePool("a", waiting=2)
    c = coordinator(a, max_connections=3)
    c.request(a, now=0)
    assert a.opening == 2 and not c.wanting


def test_at_the_cap_an_idle_server_of_another_user_is_evicted_and_its_slot_granted_when_gone() -> None:
    a = with_idle(FakePool("a"), 0.0, 5.0)
    b = FakePool("b", waiting=1)
    c = coordinator(a, b, max_connections=2, min_lifetime=1.0)
    c.request(b, now=10)
    assert b.opening == 0, "no slot before the evicted backend is gone"
    assert [s.created_at for s in a.closed] == [0.0]  # the oldest
    assert c.evictions == 1
    c.distribute(now=10.1)  # the tick again, before the close completed: nothing more is evicted
    assert len(a.closed) == 1
    a.finish_close(c, now=10.2)
    assert b.opening == 1 and not c.wanting
    assert c.total() == 2


def test_min_connection_lifetime_protects_young_servers() -> None:
    a = with_idle(FakePool("a"), 9.5, 9.8)
    b = FakePool("b", waiting=1)
    c = coordinator(a, b, max_connections=2, min_lifetime=1.0)
    c.request(b, now=10)
    assert not a.closed and b in c.wanting
    c.distribute(now=10.6)  # the tick, once the oldest is old enough
    assert [s.created_at for s in a.closed] == [9.5]


def test_guaranteed_size_is_never_evicted_and_the_largest_surplus_gives_first() -> None:
    a = with_idle(FakePool("a", guaranteed=2), 0.0, 1.0)  # nothing to spare
    b = with_idle(FakePool("b", guaranteed=1), 2.0, 3.0, 4.0)  # two to spare
    d = with_idle(FakePool("d"), 0.5)  # one to spare, oldest server
    w = FakePool("w", waiting=1)
    c = coordinator(a, b, d, w, max_connections=6, min_lifetime=0.0)
    c.request(w, now=10)
    assert not a.closed and not d.closed
    assert [s.created_at for s in b.closed] == [2.0]


def test_freed_slots_go_to_the_oldest_request_first() -> None:
    a = FakePool("a", servers=2)  # busy servers only: nothing to evict
    first, second = FakePool("first", waiting=1), FakePool("second", waiting=1)
    c = coordinator(a, first, second, max_connections=2)
    c.request(first, now=0)
    c.request(second, now=0)
    assert list(c.wanting) == [first, second]
    a.servers -= 1
    c.server_gone(Server(0.0), now=1)
    assert (first.opening, second.opening) == (1, 0)
    # A pool asking later does not jump the queue either.
    late = FakePool("late", waiting=1)
    c.set_members([a, first, second, late])
    a.servers -= 1
    c.request(late, now=2)
    assert (second.opening, late.opening) == (1, 0)


def test_the_reserve_opens_only_after_reserve_pool_timeout_and_is_released_when_idle() -> None:
    a = FakePool("a", servers=2)
    b = FakePool("b", waiting=1, waited_since=0.0)
    c = coordinator(a, b, max_connections=2, reserve_size=1, reserve_timeout=3.0)
    b.reserve_timeout = 3.0
    c.request(b, now=1.0)
    assert b.opening == 0
    c.distribute(now=3.0)
    assert b.opening == 1 and c.reserve_acquisitions == 1
    assert c.reserve_in_use() == 1
    # Served and idle again: the reserve goes once its server was idle min_connection_lifetime.
    b.waiting, b.opening, b.waited_since = 0, 0, None
    with_idle(b, 3.0)
    b.idle[0].last_used = 3.0
    assert c.release_reserve(now=4.0) == 0  # idle 1 s < min_lifetime 30 s
    assert c.release_reserve(now=40.0) == 1


def test_replenishing_never_takes_a_slot_someone_waits_for() -> None:
    a = FakePool("a", servers=1)
    b = FakePool("b", waiting=1, servers=1)
    c = coordinator(a, b, max_connections=3)
    assert c.has_room()
    c.wanting[b] = None
    assert not c.has_room()


def test_a_retired_or_satisfied_pool_leaves_the_queue() -> None:
    a = FakePool("a", servers=2)
    b = FakePool("b", waiting=1)
    c = coordinator(a, b, max_connections=2)
    c.request(b, now=0)
    assert b in c.wanting
    b.waiting = 0  # its client timed out or left
    c.distribute(now=1)
    assert not c.wanting
    b.waiting = 1
    c.request(b, now=2)
    assert b in c.wanting
    c.set_members([a])  # a reload removed it
    assert not c.wanting
