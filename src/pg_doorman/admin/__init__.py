"""The admin console: database ``pgdoorman`` (alias ``pgbouncer``), reached with the admin credentials.

`login_decision` says how a client naming the admin database is challenged; `console.Console` answers its
messages once it is in, from the process state an `operations.AdminContext` gives it. `commands` parses
statements, `show` builds the SHOW views, `wire` encodes result sets. All sans-I/O: the client connection
moves the bytes.
"""

from __future__ import annotations

from pg_doorman.admin.console import MAX_CONSOLE_MESSAGE, Console, login_decision
from pg_doorman.admin.operations import AdminContext, AdminError
from pg_doorman.config.loader import ADMIN_DATABASES

__all__ = [
    "ADMIN_DATABASES",
    "MAX_CONSOLE_MESSAGE",
    "AdminContext",
    "AdminError",
    "Console",
    "is_admin_database",
    "login_decision",
]


def is_admin_database(database: str) -> bool:
    """Whether a StartupMessage's database is the admin console's (pools cannot take these names)."""
    return database in ADMIN_DATABASES
