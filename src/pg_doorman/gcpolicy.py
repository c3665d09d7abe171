"""How CPython's cyclic garbage collector runs in a pooler that holds thousands of connections on one event loop.

A full (generation 2) collection walks every container object the collector tracks, and while it runs no client
is served. With 10,000 connected clients that is a few hundred thousand objects and a pause of tens to hundreds
of milliseconds, triggered by the objects that login and disconnect bursts promote (CPython 3.11 runs a full
collection once the objects promoted since the last one exceed a quarter of those that survived it).

The policy (``tuned``, the default):

1. At start, once the configuration, modules, listeners and pools exist: one collection, then ``gc.freeze()``,
   so those long-lived objects leave the collector's generations for good.
2. After every full collection its survivors are frozen too. They were just proven reachable, so nothing frozen
   is garbage at that moment; the next full collection walks only what was promoted since, a pause bounded by
   the churn between two collections instead of by the number of connected clients.
3. A larger generation-0 threshold, so that the short-lived objects of a login have died (by reference count)
   before a young collection would promote them. The price: while thousands of clients log in at once nearly
   everything survives, and a generation-1 collection then walks up to ten times the threshold (about 40 ms of
   CPU once while 10,000 clients logged in, in bench/gc_stall.py); under steady churn it stays far below.

What it costs: an object frozen while alive that later becomes part of an unreachable reference cycle is never
freed. Client and server connections, with their uvloop transports, are freed by reference counting alone when
they close (tested in ``tests/integration/test_gc_policy.py``), so what can leak that way is only a cycle that
forms later inside an object which had already survived a full collection: rare, and small. On asyncio's own
loop (the fallback where uvloop is missing) a closed socket transport is a cycle (it keeps a bound method of
itself), so there survivors are not frozen.

``PG_DOORMAN_GC=default`` keeps CPython's own collector settings (for comparison:
``bench/gc_stall.py --gc default``); the full collections are timed and logged under either policy.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("pg_doorman.gc")

POLICIES = ("tuned", "default")
# Young objects a login creates die by reference count within the login; 700 (CPython's default) promotes
# many of them mid-login when hundreds of logins interleave.
YOUNG_THRESHOLD = 10_000
# A full collection this long is worth an info line: it delayed every client by that much.
SLOW_PAUSE_SECONDS = 0.05


class CollectorWatch:
    """A ``gc.callbacks`` hook: times collections and, under the tuned policy, freezes a full one's survivors.

    Full collections are logged at debug, any collection that paused the loop for ``SLOW_PAUSE_SECONDS`` or
    more at info, with wall and CPU time (on a busy machine the wall time includes waiting for a core). The hook
    costs two clock reads per collection, nothing per query.
    """

    def __init__(self, *, freeze_survivors: bool) -> None:
        self.freeze_survivors = freeze_survivors
        self.full_collections = 0
        self.pause_total = 0.0  # wall seconds in full collections
        self.pause_max = 0.0  # the longest pause of any generation
        self._started = 0.0
        self._cpu_started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            self._cpu_started = time.process_time()
            return
        generation = info["generation"]
        if generation == 2 and self.freeze_survivors:
            gc.freeze()  # the collection is over: everything still tracked is reachable
        pause = time.perf_counter() - self._started
        if pause > self.pause_max:
            self.pause_max = pause
        if generation == 2:
            self.full_collections += 1
            self.pause_total += pause
        elif pause < SLOW_PAUSE_SECONDS:
            return
        cpu = time.process_time() - self._cpu_started
        level = logging.INFO if pause >= SLOW_PAUSE_SECONDS else logging.DEBUG
        log.log(
            level,
            "gc: generation %d collection took %.1f ms (%.1f ms CPU), collected %d objects",
            generation,
            pause * 1e3,
            cpu * 1e3,
            info["collected"],
        )


_installed: tuple[CollectorWatch, tuple[int, int, int]] | None = None


def policy_from_env() -> str:
    """``PG_DOORMAN_GC``: ``tuned`` (the default) or ``default`` (CPython's own settings); anything else is tuned."""
    value = os.environ.get("PG_DOORMAN_GC", "tuned").strip().lower()
    return value if value in POLICIES else "tuned"


def install(policy: str | None = None, *, freeze_survivors: bool = True) -> CollectorWatch:
    """Put the collector policy into effect (idempotent); call once startup has built its long-lived objects.

    ``freeze_survivors`` False keeps the thresholds but freezes nothing, not even at start-up (the freeze is the
    hook's, after a full collection): for asyncio's own event loop, whose socket transports hold a bound method of
    their own (a cycle only the collector frees).
    """
    global _installed
    if _installed is not None:
        return _installed[0]
    policy = policy or policy_from_env()
    tuned = policy == "tuned"
    watch = CollectorWatch(freeze_survivors=tuned and freeze_survivors)
    _installed = (watch, gc.get_threshold())
    gc.callbacks.append(watch)
    if tuned:
        gc.set_threshold(YOUNG_THRESHOLD, *gc.get_threshold()[1:])
        gc.collect()  # startup garbage goes first; the hook then freezes the survivors (if it freezes at all)
    log.debug("gc policy %s, thresholds %s, survivors frozen: %s", policy, gc.get_threshold(), watch.freeze_survivors)
    return watch


def uninstall() -> None:
    """Undo `install` (an in-process application that stops, e.g. in tests): thresholds back, nothing frozen."""
    global _installed
    if _installed is None:
        return
    watch, thresholds = _installed
    _installed = None
    if watch in gc.callbacks:
        gc.callbacks.remove(watch)
    gc.set_threshold(*thresholds)
    gc.unfreeze()


def current() -> CollectorWatch | None:
    """The installed hook (its counters say how many full collections ran and how long they paused)."""
    return _installed[0] if _installed is not None else None


@dataclass(frozen=True)
class Figures:
    """What operators see of the collector (/metrics, /api/process): all zero while no policy is installed."""

    full_collections: int = 0
    pause_seconds_total: float = 0.0  # wall time of the full collections
    longest_pause_seconds: float = 0.0  # of any generation


def figures() -> Figures:
    """The installed hook's counters (O(1): read by every scrape)."""
    watch = current()
    if watch is None:
        return Figures()
    return Figures(watch.full_collections, watch.pause_total, watch.pause_max)
