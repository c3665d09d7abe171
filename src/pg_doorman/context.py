"""What a client connection may know of the process that accepted it: one small object instead of `Application`.

A `ClientContext` holds the pool registry (which pool serves it, its cancel key), the limits it enforces
(``max_message_size``, ``client_login_timeout``), whether the pooler is shutting down, the admin console's
credentials, the access rules (pg_hba), and the three callbacks by which the process counts its clients
(``admit``, ``client_closed``) and routes a CancelRequest (``cancel``). `Application` builds one, hands it to
every ClientConnection and updates it in place on reload (`configure`) and at shutdown, so every client sees the
new values at once.

Compiled with the hot path (context.pxd): the forwarding loops read ``max_message_size`` once per received chunk
and a released client reads ``shutting_down`` once per transaction, both as C fields.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from pg_doorman.protocol import messages

if TYPE_CHECKING:
    from pg_doorman.admin import AdminContext
    from pg_doorman.auth.hba import HbaRules
    from pg_doorman.client import ClientConnection
    from pg_doorman.config import General
    from pg_doorman.registry import PoolRegistry


class ClientContext:
    __slots__ = (
        "access_rules",
        "admin",
        "admin_password",
        "admin_username",
        "admit",
        "cancel",
        "check_query",
        "client_closed",
        "login_timeout",
        "max_message_size",
        "registry",
        "shutting_down",
    )

    def __init__(
        self,
        registry: PoolRegistry,
        general: General,
        *,
        admit: Callable[[ClientConnection], bool],
        client_closed: Callable[[ClientConnection], None],
        cancel: Callable[[int, int], None],
    ) -> None:
        self.registry = registry
        self.admit = admit  # a new connection: False when it is over max_connections
        self.client_closed = client_closed  # called once per admitted connection, when it is torn down
        self.cancel = cancel  # a CancelRequest (pid, secret) arrived
        self.shutting_down = False
        self.max_message_size = 0
        self.login_timeout = 0.0
        self.admin_username = ""
        self.admin_password = ""
        self.access_rules: HbaRules | None = None  # pg_hba / legacy hba rules (set by Application); None: none
        self.check_query = b""  # general.pooler_check_query as a whole Query message (see client._answer_check)
        self.admin: AdminContext | None = None  # what the admin console sees and may do (set by Application)
        self.configure(general)

    def configure(self, general: General) -> None:
        """Take the limits and credentials of a (re)loaded configuration; clients read them from here."""
        self.max_message_size = general.max_message_size
        self.login_timeout = general.client_login_timeout
        self.admin_username = general.admin_username
        self.admin_password = general.admin_password
        self.check_query = messages.query(general.pooler_check_query)

    def admin_credentials(self) -> tuple[str, str]:
        return self.admin_username, self.admin_password
