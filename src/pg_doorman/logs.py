"""Logging setup: the original's text and JSON line formats, syslog, ``trace``, and level changes at runtime.

One root handler writes every record. Formats (``-F``):

- ``text``: ``2024-01-07T19:19:38.080Z  INFO pg_doorman/app.py:42: message`` (the original's layout; the level
  coloured when stderr is a terminal and neither ``-n`` nor ``NO_COLOR`` says otherwise);
- ``structured``: one JSON object a line, ``{"timestamp", "level", "file", "line", "message"}`` as the original;
- ``debug``: text plus the logger name and function, for reading a trace.

With ``general.syslog_prog_name`` set, records go to syslog (``/dev/log``, facility user) instead, as the original.
`set_log_level` is what ``SET log_level`` and the web API call; it accepts the same names as ``-l``.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
import time
from typing import TextIO

TRACE = 5
logging.addLevelName(TRACE, "TRACE")

LEVELS: dict[str, int] = {
    "error": logging.ERROR,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": TRACE,
}
FORMATS: tuple[str, ...] = ("text", "structured", "debug")
_FORMAT_ALIASES = {"json": "structured"}

# The original's level words (Rust `log`): WARN, not WARNING; CRITICAL is shown as ERROR.
_LEVEL_WORDS = {logging.CRITICAL: "ERROR", logging.ERROR: "ERROR", logging.WARNING: "WARN", logging.INFO: "INFO"}
_COLOURS = {"ERROR": "\x1b[31m", "WARN": "\x1b[33m", "INFO": "\x1b[32m", "DEBUG": "\x1b[36m", "TRACE": "\x1b[90m"}
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def level_word(levelno: int) -> str:
    if levelno in _LEVEL_WORDS:
        return _LEVEL_WORDS[levelno]
    return "DEBUG" if levelno > TRACE else "TRACE"


def level_name(levelno: int) -> str:
    """The ``-l`` name of a numeric level (what ``SHOW LOG_LEVEL`` prints)."""
    return level_word(levelno).lower()


def parse_level(name: str) -> int:
    """``-l`` / ``LOG_LEVEL`` / ``SET log_level`` value to a numeric level; ValueError names the choices."""
    level = LEVELS.get(name.strip().lower())
    if level is None:
        raise ValueError(f"invalid log level {name!r}: expected one of error, warn, info, debug, trace")
    return level


def parse_format(name: str) -> str:
    fmt = name.strip().lower()
    fmt = _FORMAT_ALIASES.get(fmt, fmt)
    if fmt not in FORMATS:
        raise ValueError(f"invalid log format {name!r}: expected one of text, structured, debug")
    return fmt


def use_colour(no_color_flag: bool, env: dict[str, str] | os._Environ[str], stream_is_tty: bool) -> bool:
    """Colour only when every gate is open: no ``-n``, no non-empty ``NO_COLOR`` (no-color.org), a terminal."""
    return not no_color_flag and not env.get("NO_COLOR") and stream_is_tty


def _timestamp(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created * 1000) % 1000:03d}Z"


def _source_file(record: logging.LogRecord) -> str:
    path = record.pathname
    if path.startswith(_PACKAGE_ROOT):
        return path[len(_PACKAGE_ROOT) + 1 :]
    return record.filename


class TextFormatter(logging.Formatter):
    """``<timestamp> <LEVEL:5> <file>:<line>: <message>``; ``verbose`` adds the logger and function."""

    def __init__(self, colour: bool = False, verbose: bool = False) -> None:
        super().__init__()
        self.colour = colour
        self.verbose = verbose

    def format(self, record: logging.LogRecord) -> str:
        word = level_word(record.levelno)
        level = f"{word:>5}"
        if self.colour:
            level = f"{_COLOURS[word]}{level}\x1b[0m"
        where = f"{_source_file(record)}:{record.lineno}"
        if self.verbose:
            where += f" [{record.name} {record.funcName}]"
        text = f"{_timestamp(record.created)} {level} {where}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class JsonFormatter(logging.Formatter):
    """The original's ``-F structured`` line: ``{"timestamp","level","file","line","message"}``."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        entry = {
            "timestamp": _timestamp(record.created),
            "level": level_word(record.levelno),
            "file": _source_file(record),
            "line": record.lineno,
            "message": message,
        }
        return json.dumps(entry, ensure_ascii=False)


class SyslogFormatter(logging.Formatter):
    """RFC 3164 tag and message: ``<ident>[<pid>]: <LEVEL> <message>`` (syslog adds the time)."""

    def __init__(self, ident: str) -> None:
        super().__init__()
        self.ident = ident

    def format(self, record: logging.LogRecord) -> str:
        return f"{self.ident}[{os.getpid()}]: {level_word(record.levelno)} {record.getMessage()}"


def setup_logging(
    level: str = "info",
    fmt: str = "text",
    *,
    no_color: bool = False,
    syslog_ident: str | None = None,
    syslog_address: str = "/dev/log",
    stream: TextIO | None = None,
) -> None:
    """Install the one root handler (replacing any); raises ValueError for a bad level/format and OSError
    when syslog was asked for and ``syslog_address`` cannot be opened."""
    numeric = parse_level(level)
    fmt = parse_format(fmt)
    handler: logging.Handler
    if syslog_ident:
        handler = logging.handlers.SysLogHandler(
            address=syslog_address, facility=logging.handlers.SysLogHandler.LOG_USER
        )
        handler.setFormatter(SyslogFormatter(syslog_ident))
    else:
        out = stream if stream is not None else sys.stderr
        handler = logging.StreamHandler(out)
        if fmt == "structured":
            handler.setFormatter(JsonFormatter())
        else:
            tty = hasattr(out, "isatty") and out.isatty()
            handler.setFormatter(TextFormatter(colour=use_colour(no_color, os.environ, tty), verbose=fmt == "debug"))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(numeric)


def set_log_level(name: str) -> str:
    """Change the level of the running process (``SET log_level``); returns the canonical name.

    Raises ValueError (with the accepted names) for an unknown level; the level is then unchanged.
    """
    numeric = parse_level(name)
    logging.getLogger().setLevel(numeric)
    canonical = level_name(numeric)
    logging.getLogger("pg_doorman").info("log level set to %s", canonical)
    return canonical


def current_log_level() -> str:
    return level_name(logging.getLogger().getEffectiveLevel())


def trace_enabled() -> bool:
    return logging.getLogger().isEnabledFor(TRACE)
