"""Recent operator-visible events of this process (PAUSE, RELOAD, KILL, ...): a small ring buffer.

The admin console records one event per mutating command, the web console's ``/api/events`` reads them. The
ring is process-wide and bounded (``CAPACITY`` entries, oldest dropped first), so recording is O(1) and an
event storm cannot grow memory. Events are plain frozen values with a wall-clock timestamp (what an operator
correlates with other logs) and a sequence number (so a poller can ask for what is new since its last read).
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from dataclasses import dataclass

__all__ = ["CAPACITY", "Event", "clear", "recent", "record"]

CAPACITY = 1024


@dataclass(frozen=True, slots=True)
class Event:
    seq: int  # increasing from 1 in this process
    timestamp: float  # time.time() when recorded
    kind: str  # upper-case tag: "PAUSE", "RESUME", "RECONNECT", "KILL", "RELOAD", "RELOAD_FAILED", ...
    message: str


_ring: deque[Event] = deque(maxlen=CAPACITY)
_counter = itertools.count(1)


def record(kind: str, message: str) -> Event:
    """Append an event (the oldest one goes when the ring is full) and return it."""
    event = Event(next(_counter), time.time(), kind, message)
    _ring.append(event)
    return event


def recent(limit: int | None = None, *, after: int = 0) -> list[Event]:
    """Events oldest first: those with ``seq > after``, at most the newest ``limit`` of them."""
    events = [event for event in _ring if event.seq > after] if after else list(_ring)
    if limit is not None:
        events = events[-limit:] if limit > 0 else []
    return events


def clear() -> None:
    """Forget every event (tests)."""
    _ring.clear()
