"""CPU time and memory of a process tree, read from /proc (Linux only)."""

from __future__ import annotations

import os
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (index 0 is field 3, ``state``)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("ascii", "replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name is in parentheses and may itself contain spaces or ')'.
    return raw[raw.rfind(")") + 2 :].split()


def comm(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


def children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        if fields is None:
            continue
        kids.setdefault(int(fields[1]), []).append(int(name))
    return kids


def tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants."""
    kids = children_map()
    out: list[int] = []
    stack = [pid]
    while stack:
        p = stack.pop()
        out.append(p)
        stack.extend(kids.get(p, ()))
    return out


def find_descendant(pid: int, name: str) -> int | None:
    """First process named ``name`` in the tree rooted at ``pid`` (root included)."""
    for p in tree(pid):
        if comm(p) == name:
            return p
    return None


@dataclass(frozen=True)
class CpuTimes:
    user: float  # seconds
    system: float  # seconds

    def __sub__(self, other: CpuTimes) -> CpuTimes:
        return CpuTimes(self.user - other.user, self.system - other.system)


def tree_cpu(pid: int) -> CpuTimes:
    """utime+stime of ``pid`` and its live descendants, plus the times of the children that the root
    (and every descendant) has already reaped (cutime/cstime)."""
    utime = stime = 0
    for p in tree(pid):
        fields = _stat_fields(p)
        if fields is None:
            continue
        # stat fields 14..17 = utime, stime, cutime, cstime -> indexes 11..14 here.
        utime += int(fields[11]) + int(fields[13])
        stime += int(fields[12]) + int(fields[14])
    return CpuTimes(utime / CLK_TCK, stime / CLK_TCK)


def rss_kib(pid: int) -> int:
    """Sum of VmRSS (KiB) over ``pid`` and its descendants."""
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


def alive(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat, to tell when the box itself was saturated."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user
    return total - idle, total
