"""The last log lines in memory, for ``/api/logs``: a `logging.Handler` with a bounded ring.

It keeps what each record already carries (time, level, logger, the formatted message), nothing more: the cost
per log line is one tuple and a deque append. Attached to the root logger while the web console is on.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LogLine:
    at: float  # Unix time
    level: str  # lower case
    levelno: int
    logger: str
    message: str


class LogRing(logging.Handler):
    def __init__(self, capacity: int) -> None:
        super().__init__(logging.NOTSET)
        self.lines: deque[LogLine] = deque(maxlen=max(capacity, 1))
        self.capacity = capacity

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string in a log call must not break logging
            message = str(record.msg)
        if record.exc_info and record.exc_info[1] is not None:
            message += f" ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
        self.lines.append(LogLine(record.created, record.levelname.lower(), record.levelno, record.name, message))

    def recent(self, limit: int | None = None, min_level: int = logging.NOTSET) -> list[LogLine]:
        """Oldest first; at most ``limit`` of the newest lines at or above ``min_level``."""
        lines = [line for line in self.lines if line.levelno >= min_level]
        if limit is not None:
            lines = lines[-limit:] if limit > 0 else []
        return lines
