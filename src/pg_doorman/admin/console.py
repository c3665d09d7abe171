"""One admin console session, sans-I/O: messages in, replies out.

The console commands (SHOW ..., PAUSE, RELOAD) come in a later release. Until then every query is answered with
an ErrorResponse (0A000) and ReadyForQuery, so a client sees a clear "not available" instead of a hang, and the
session goes on. Extended-protocol messages are swallowed up to their Sync, which gets ReadyForQuery. Anything
else (COPY data, function calls, garbage) ends the session: the console has no use for it.
"""

from __future__ import annotations

from dataclasses import replace

from pg_doorman.auth.policy import Decision, Method, choose_method
from pg_doorman.protocol import messages
from pg_doorman.protocol.errors import FEATURE_NOT_SUPPORTED, ProtocolViolation

__all__ = ["Console", "login_decision"]

_QUERY = 0x51  # 'Q'
_SYNC = 0x53  # 'S'
_TERMINATE = 0x58  # 'X'
_EXTENDED = frozenset(b"PBDECH")  # Parse, Bind, Describe, Execute, Close, Flush: answered at their Sync

_NOT_AVAILABLE = (
    messages.error_response(
        FEATURE_NOT_SUPPORTED,
        "the admin console is not available in this version of pg_doorman",
        severity="ERROR",
    )
    + messages.READY_IDLE
)

_STARTUP_REPLY = (
    messages.AUTH_OK
    + messages.parameter_status("server_version", "15.0 (pg_doorman)")
    + messages.parameter_status("client_encoding", "UTF8")
    + messages.parameter_status("DateStyle", "ISO, MDY")
    + messages.parameter_status("standard_conforming_strings", "on")
    + messages.backend_key_data(0, 0)
    + messages.READY_IDLE
)


def login_decision(user: str, admin_username: str, admin_password: str) -> Decision:
    """How ``user`` is challenged on the admin database: always md5 with a fresh salt, for every name.

    Only the admin name with its password can pass; any other name, and the admin name while ``admin_password``
    is empty, run the same md5 exchange and fail the same way, so the admin name cannot be found by probing.
    """
    if user == admin_username and admin_password:
        return choose_method(user, admin_password, rule=Method.MD5)
    doomed = choose_method(user, None, rule=Method.MD5)
    if user == admin_username:
        return replace(doomed, reason="general.admin_password is empty: the admin console admits nobody")
    return replace(doomed, reason=f'"{user}" is not the admin user')


class Console:
    """The admin session of one client, after its login. `closed` becomes true at Terminate."""

    __slots__ = ("closed",)

    def __init__(self) -> None:
        self.closed = False

    @staticmethod
    def startup_reply() -> bytes:
        """AuthenticationOk, a few ParameterStatus a driver needs, BackendKeyData (no cancel), ReadyForQuery."""
        return _STARTUP_REPLY

    def feed(self, kind: int, body: bytes) -> bytes:
        """One client message; returns the reply. Raises ProtocolViolation for a message the console refuses."""
        if kind == _QUERY:
            return _NOT_AVAILABLE
        if kind == _SYNC:
            return messages.READY_IDLE
        if kind == _TERMINATE:
            self.closed = True
            return b""
        if kind in _EXTENDED:
            return b""
        raise ProtocolViolation(f"unexpected message {chr(kind)!r} on the admin console")
