"""Admin console statements: from a Query's text to what was asked, with no state and no I/O.

The rules are the original's (and PgBouncer's): a Query may hold several statements separated by ``;`` (outside
quotes); each is split on whitespace; the first word, upper-cased, is the verb. ``SET name = value`` keeps its
value as typed (quotes removed), so ``SET log_level = 'info, pg_doorman.pool=debug'`` survives the split.
psql's tab completion asks ``pg_catalog.pg_settings``: such a Query is recognised here and answered with the
console's own vocabulary (`completion_rows`).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "LOG_LEVEL_VALUES",
    "SHOW_SUBCOMMANDS",
    "SetCommand",
    "Statement",
    "completion_rows",
    "is_tab_completion",
    "parse",
    "parse_set",
    "split_statements",
]

# The SHOW sub-commands, in SHOW HELP's order: one list for dispatch, HELP and tab completion.
SHOW_SUBCOMMANDS: tuple[str, ...] = (
    "help",
    "config",
    "databases",
    "pools",
    "pools_extended",
    "pools_memory",
    "prepared_statements",
    "clients",
    "servers",
    "connections",
    "stats",
    "lists",
    "users",
    "startup_parameters",
    "auth_query",
    "sockets",
    "log_level",
    "version",
)
LOG_LEVEL_VALUES: tuple[str, ...] = ("error", "warn", "info", "debug", "trace", "off", "default")


@dataclass(frozen=True, slots=True)
class Statement:
    verb: str  # first word, upper-cased ("" for an empty statement)
    args: tuple[str, ...]  # the other words as typed
    text: str  # the whole statement, trimmed


@dataclass(frozen=True, slots=True)
class SetCommand:
    name: str  # lower-cased parameter name ("" when missing)
    value: str | None  # None when no value was given


def split_statements(sql: str) -> list[str]:
    """The statements of one Query: split at ``;`` outside single or double quotes, trimmed, empties dropped."""
    statements: list[str] = []
    current: list[str] = []
    quote = ""
    for ch in sql:
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == ";":
            statements.append("".join(current))
            current = []
            continue
        current.append(ch)
    statements.append("".join(current))
    return [text.strip() for text in statements if text.strip()]


def parse(text: str) -> Statement:
    words = text.strip().rstrip(";").split()
    if not words:
        return Statement("", (), "")
    return Statement(words[0].upper(), tuple(words[1:]), text.strip())


def parse_set(text: str) -> SetCommand:
    """``SET name = value``, ``SET name TO value`` or ``SET name value``; quotes around the value removed."""
    rest = text.strip().rstrip(";")[3:].strip()  # after "SET"
    name_end = 0
    while name_end < len(rest) and not rest[name_end].isspace() and rest[name_end] != "=":
        name_end += 1
    name, rest = rest[:name_end].lower(), rest[name_end:].strip()
    if rest.startswith("="):
        rest = rest[1:].strip()
    elif rest[:2].upper() == "TO" and (len(rest) == 2 or rest[2].isspace()):
        rest = rest[2:].strip()
    if len(rest) >= 2 and rest[0] == rest[-1] and rest[0] in "'\"":
        rest = rest[1:-1]
    return SetCommand(name, rest if rest else None)


def is_tab_completion(sql: str) -> bool:
    """psql's tab completion after SHOW / SET asks pg_settings (no admin statement mentions it)."""
    return "pg_settings" in sql.lower()


def completion_rows(sql: str) -> tuple[str, list[str]]:
    """(column name, values) answering a psql tab-completion query.

    ``SET log_level TO <TAB>`` asks for the enum values (``enumvals``) after the type (``vartype``);
    ``SET <TAB>`` asks for settable names (it filters on ``context``); ``SHOW <TAB>`` for every name.
    """
    lowered = sql.lower()
    if "enumvals" in lowered:
        return "val", list(LOG_LEVEL_VALUES)
    if "vartype" in lowered:
        return "vartype", ["enum"]
    if "context" in lowered:
        return "name", ["log_level"]
    return "name", list(SHOW_SUBCOMMANDS)
