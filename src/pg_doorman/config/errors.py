"""The one exception the configuration layer raises, and how problems are located in it.

Loading never stops at the first problem: every mistake in a file is collected so that an operator fixes
them all in one edit, then :class:`ConfigError` carries the whole list, one problem per line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

KeyPart = str | int
KeyPath = tuple[KeyPart, ...]

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def format_key_path(path: KeyPath) -> str:
    """Render ``("pools", "mydb", "users", 0, "pool_size")`` as ``pools.mydb.users[0].pool_size``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
            continue
        name = part if _BARE_KEY.match(part) else '"' + part.replace('"', '\\"') + '"'
        text += f".{name}" if text else name
    return text


def format_problem(file: str, path: KeyPath, message: str) -> str:
    """One error line: ``<file>: <key path>: <message>`` (the key path is left out for whole-file errors)."""
    where = format_key_path(path)
    return f"{file}: {where}: {message}" if where else f"{file}: {message}"


class ConfigError(Exception):
    """The configuration could not be loaded; ``problems`` lists every mistake found, one line each."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        super().__init__("\n".join(self.problems))

    def __str__(self) -> str:
        return "\n".join(self.problems)
