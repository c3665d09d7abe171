"""``max_memory_usage``: what pg_doorman does when the process holds more memory than it may.

The original counts the bytes of client messages being read and, over the budget, answers the message with
53200 and disconnects the client. Here messages are not read whole but passed on as they arrive (with
backpressure both ways), so the memory that grows with load is everything else: clients, their queued bytes
while they wait for a server, transport buffers, caches. The honest measure of all of it is the process's
resident set size, sampled once a second by the maintenance (`sample`, one read of /proc/self/statm; no work on
the forwarding path). While it is above the limit:

- a new connection is answered 53200 "out of memory" after its startup packet, and closed (admission.py);
- a client that would have to wait for a server (none idle) gets the same error and is disconnected, as the
  original does for a message over the budget (`Pool.enqueue`): waiting clients are what piles up;
- clients that get a server at once, and clients inside a transaction, go on: their bytes stream through.

``max_memory_usage: 0`` turns the check off. Where /proc is not available the check is off too (logged once).
"""

from __future__ import annotations

import logging
import os

from pg_doorman.protocol.errors import OUT_OF_MEMORY, PoolerError

log = logging.getLogger("pg_doorman.memory")

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_STATM = "/proc/self/statm"

OUT_OF_MEMORY_MESSAGE = "Server is temporarily out of memory. Please try again later or reduce the size of your query."


def resident_bytes() -> int | None:
    """The process's resident set size in bytes, or None where /proc is not there."""
    try:
        with open(_STATM, "rb") as f:
            fields = f.read().split()
    except OSError:
        return None
    return int(fields[1]) * _PAGE_SIZE


class MemoryBudget:
    """The limit, the last sample and whether the process is over the limit (read by admission and pools)."""

    __slots__ = ("exhausted", "limit", "resident", "unavailable")

    def __init__(self) -> None:
        self.limit = 0  # bytes; 0: no limit
        self.resident = 0  # bytes at the last sample
        self.exhausted = False
        self.unavailable = False

    def configure(self, limit: int) -> None:
        self.limit = limit
        self.sample()

    def sample(self) -> None:
        """Measure and decide (every second, from the maintenance); transitions are logged."""
        if self.limit <= 0 or self.unavailable:
            self.exhausted = False
            return
        resident = resident_bytes()
        if resident is None:
            self.unavailable = True
            self.exhausted = False
            log.warning("max_memory_usage is not enforced: %s cannot be read", _STATM)
            return
        self.resident = resident
        over = resident > self.limit
        if over and not self.exhausted:
            log.warning(
                "resident memory %d MiB is over max_memory_usage (%d MiB): refusing new clients and clients that "
                "would wait for a server",
                resident >> 20,
                self.limit >> 20,
            )
        elif self.exhausted and not over:
            log.info("resident memory %d MiB is under max_memory_usage again: accepting clients", resident >> 20)
        self.exhausted = over

    def error(self) -> PoolerError:
        return PoolerError(
            OUT_OF_MEMORY,
            OUT_OF_MEMORY_MESSAGE,
            detail=f"pg_doorman holds {self.resident >> 20} MiB, more than max_memory_usage ({self.limit >> 20} MiB)",
        )


budget = MemoryBudget()
"""The process's budget (one per process, like `sockets.current`); configured by the application on (re)load."""
