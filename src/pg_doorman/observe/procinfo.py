"""What the process itself looks like from /proc: memory, start time, open files, sockets by family (Linux).

Everything here is cheap except `SocketCounts`, which reads one /proc entry per open socket: it is refreshed at
most every `SOCKETS_REFRESH_SECONDS` in a worker thread (as the original does every 15 s), and a scrape reads
the last result, so a scrape never waits for it and the event loop never runs it.
"""

from __future__ import annotations

import asyncio
import os
import resource
import time
from dataclasses import dataclass

SOCKETS_REFRESH_SECONDS = 15.0
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def rss_bytes() -> int:
    """Resident set size of this process (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def start_time() -> float:
    """The process start as a Unix time (from /proc; now, where /proc is missing)."""
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        # Field 22 (starttime, in clock ticks since boot); the command name in field 2 may hold spaces.
        fields = stat[stat.rindex(b")") + 2 :].split()
        ticks = int(fields[19])
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    return int(line.split()[1]) + ticks / _CLOCK_TICKS
    except (OSError, IndexError, ValueError):
        pass
    return time.time()


PROCESS_START = start_time()


def open_files() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


def cpu_seconds() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


@dataclass(frozen=True, slots=True)
class SocketCounts:
    tcp: int = 0
    tcp6: int = 0
    unix: int = 0
    unknown: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"tcp": self.tcp, "tcp6": self.tcp6, "unix": self.unix, "unknown": self.unknown}


def _inodes(table: str) -> set[str]:
    """Socket inodes listed in /proc/self/net/<table> (the inode column)."""
    column = 9 if table in ("tcp", "tcp6") else 6
    found = set()
    try:
        with open(f"/proc/self/net/{table}", encoding="ascii", errors="replace") as f:
            next(f, None)
            for line in f:
                fields = line.split()
                if len(fields) > column:
                    found.add(fields[column])
    except OSError:
        pass
    return found


def count_sockets() -> SocketCounts:
    """Open sockets of this process by family (blocking: /proc reads; run it in a thread)."""
    mine: list[str] = []
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return SocketCounts()
    for name in names:
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            mine.append(target[8:-1])
    if not mine:
        return SocketCounts()
    tcp, tcp6, unix = _inodes("tcp"), _inodes("tcp6"), _inodes("unix")
    counts = {"tcp": 0, "tcp6": 0, "unix": 0, "unknown": 0}
    for inode in mine:
        if inode in tcp:
            counts["tcp"] += 1
        elif inode in tcp6:
            counts["tcp6"] += 1
        elif inode in unix:
            counts["unix"] += 1
        else:
            counts["unknown"] += 1
    return SocketCounts(**counts)


class SocketCache:
    """The last `count_sockets` result, refreshed in a thread when older than `SOCKETS_REFRESH_SECONDS`."""

    def __init__(self) -> None:
        self.value = SocketCounts()
        self.taken_at = 0.0
        self._task: asyncio.Future[SocketCounts] | None = None

    def get(self) -> SocketCounts:
        now = time.monotonic()
        if now - self.taken_at >= SOCKETS_REFRESH_SECONDS and self._task is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.value, self.taken_at = count_sockets(), now
                return self.value
            self._task = loop.run_in_executor(None, count_sockets)
            self._task.add_done_callback(self._done)
        return self.value

    def _done(self, task: asyncio.Future[SocketCounts]) -> None:
        self._task = None
        self.taken_at = time.monotonic()
        if not task.cancelled() and task.exception() is None:
            self.value = task.result()
