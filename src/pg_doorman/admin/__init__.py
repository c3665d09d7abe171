"""The admin console: database ``pgdoorman`` (alias ``pgbouncer``), reached with the admin credentials.

`login_decision` says how a client naming the admin database is challenged; `console.Console` answers its
messages once it is in. Both are sans-I/O: the client connection moves the bytes.
"""

from __future__ import annotations

from pg_doorman.admin.console import Console, login_decision
from pg_doorman.config.loader import ADMIN_DATABASES

__all__ = ["ADMIN_DATABASES", "Console", "is_admin_database", "login_decision"]


def is_admin_database(database: str) -> bool:
    """Whether a StartupMessage's database is the admin console's (pools cannot take these names)."""
    return database in ADMIN_DATABASES
