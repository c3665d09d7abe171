"""A ring of recent notable events (start, reload, pause, ...): what ``/api/events`` and the console show.

Process-wide on purpose: anything may record an event without being handed an object, and a reader copies the
ring (at most `CAPACITY` entries, as the original's 1024).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

CAPACITY = 1024


@dataclass(frozen=True, slots=True)
class Event:
    at: float  # Unix time
    kind: str  # upper-case name, e.g. "RELOAD", "PAUSE", "CONFIG_VALIDATION_ERROR"
    message: str


_ring: deque[Event] = deque(maxlen=CAPACITY)


def record(kind: str, message: str) -> Event:
    event = Event(time.time(), kind, message)
    _ring.append(event)
    return event


def recent() -> list[Event]:
    """Oldest first."""
    return list(_ring)
