"""Recent lifecycle events (reloads, rejected reloads, shutdowns, level changes) for the console and the API.

A bounded ring like the original's (1024 entries): `record` is cheap and never blocks, `recent` gives the newest
last. Nothing on the per-transaction path writes here.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

MAX_EVENTS = 1024


@dataclass(frozen=True, slots=True)
class Event:
    timestamp: float  # time.time()
    kind: str  # RELOAD, CONFIG_VALIDATION_ERROR, SHUTDOWN, ...
    message: str


_events: deque[Event] = deque(maxlen=MAX_EVENTS)


def record(kind: str, message: str) -> Event:
    event = Event(time.time(), kind, message)
    _events.append(event)
    return event


def recent(limit: int | None = None) -> list[Event]:
    """The last ``limit`` events (all kept when None), oldest first."""
    events = list(_events)
    return events if limit is None else events[-limit:] if limit > 0 else []


def clear() -> None:
    _events.clear()
