"""Password checks that pg_doorman cannot do with a stored secret: JWT, PAM and LDAP.

Each is a `PasswordCheck`: a small immutable value (a key path, a PAM service, LDAP options) with a
``check(user, password)`` that returns None when the password is good and otherwise why not (for the log; the
client only ever hears 28P01). The client sends such a password in the clear (AuthenticationCleartextPassword;
`pg_doorman.auth.client_login.ClientLogin` asks for it), and `verify` runs the check:

* quick checks (JWT: one RSA signature) run on the event loop;
* blocking ones (PAM, LDAP: password hashing, failure delays, network round trips) run in a small thread pool,
  at most `MAX_CONCURRENT_CHECKS` at a time per process; the others wait for a slot without holding anything;
* a check that has not answered within `CHECK_TIMEOUT` seconds (waiting for a slot included) fails the login.
  A timed-out PAM call cannot be interrupted and keeps its thread until it returns; a check still waiting for
  a slot is dropped and never runs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from typing import Protocol

from pg_doorman.auth.jwt import JWT_PUBLIC_KEY_PREFIX, JwtCheck
from pg_doorman.auth.ldap import LdapOptions
from pg_doorman.auth.pam import PamCheck

__all__ = ["CHECK_TIMEOUT", "MAX_CONCURRENT_CHECKS", "PasswordCheck", "password_check_of", "verify"]

log = logging.getLogger("pg_doorman.auth")

CHECK_TIMEOUT = 10.0
MAX_CONCURRENT_CHECKS = 8


class PasswordCheck(Protocol):
    """What an external password check provides (see the module docstring)."""

    @property
    def method(self) -> str:
        """ "jwt", "pam" or "ldap": for the log and the auth method name."""
        ...

    @property
    def blocking(self) -> bool:
        """True when ``check`` may block (I/O, sleeps): it then runs in a worker thread."""
        ...

    def check(self, user: str, password: str) -> str | None: ...


def password_check_of(password: str, pam_service: str | None, ldap: LdapOptions | None) -> PasswordCheck | None:
    """The user's password check (`pg_doorman.auth.external.PasswordCheck`), or None for a stored secret.

    PAM wins over everything else, as in the original.
    """
    if pam_service is not None:
        return PamCheck(pam_service)
    if ldap is not None:
        return ldap
    if password.startswith(JWT_PUBLIC_KEY_PREFIX):
        return JwtCheck(password.removeprefix(JWT_PUBLIC_KEY_PREFIX))
    return None


_executor: concurrent.futures.ThreadPoolExecutor | None = None
_slots: asyncio.Semaphore | None = None
_slots_loop: asyncio.AbstractEventLoop | None = None


def _slot(loop: asyncio.AbstractEventLoop) -> asyncio.Semaphore:
    """The per-loop bound on checks in flight (a new loop, as in tests or a worker process, gets its own)."""
    global _slots, _slots_loop
    if _slots is None or _slots_loop is not loop:
        _slots = asyncio.Semaphore(MAX_CONCURRENT_CHECKS)
        _slots_loop = loop
    return _slots


def _pool() -> concurrent.futures.ThreadPoolExecutor:
    global _executor
    if _executor is None:
        _executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=MAX_CONCURRENT_CHECKS, thread_name_prefix="pg_doorman-auth"
        )
    return _executor


async def verify(check: PasswordCheck, user: str, password: str, *, timeout: float = CHECK_TIMEOUT) -> str | None:
    """Run ``check`` for ``user``: None when the password is good, else why not (see the module docstring)."""
    if not check.blocking:
        return _guarded(check, user, password)
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            async with _slot(loop):
                return await loop.run_in_executor(_pool(), _guarded, check, user, password)
    except TimeoutError:
        return f"{check.method} check did not answer within {timeout:g}s"


def _guarded(check: PasswordCheck, user: str, password: str) -> str | None:
    """``check.check``, with an unexpected exception turned into a refusal (and a traceback in the log)."""
    try:
        return check.check(user, password)
    except Exception as err:
        log.exception("%s password check failed unexpectedly", check.method)
        return f"{check.method} check failed: {err}"
