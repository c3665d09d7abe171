"""Who is asking, and may they (inventory §6.3): roles of the web listener, decided from request headers alone.

- HTTP Basic with the admin credentials → ``admin`` (compared in constant time, user and password both).
- No credentials → ``anonymous``. A Bearer token (SSO) is not checked in this version: it grants nothing more than
  anonymous, so a proxy that adds one never widens access.
- Wrong or malformed Basic credentials → ``rejected`` (401, even where anonymous would do: whoever typed a
  password should learn it is wrong).

Route levels: ``public`` (the page, its assets, ``/metrics``), ``read`` (anonymous when ``ui_anonymous``, else
admin), ``personal`` (logs: admin), ``admin`` (mutations). A 401 carries ``WWW-Authenticate`` only for callers that
are not scripts of a page (no ``Accept: application/json`` and no ``X-Requested-With``), so that a browser's page
shows its own login form instead of the browser's dialog, and curl still learns which scheme to use.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass
from typing import Literal

Role = Literal["admin", "anonymous", "rejected"]
Level = Literal["public", "read", "personal", "admin"]
REALM = "pg_doorman"


@dataclass(frozen=True, slots=True)
class Identity:
    role: Role
    source: Literal["basic", "sso", "none"]
    user: str = ""


def identify(authorization: str, admin_username: str, admin_password: str) -> Identity:
    """The role an ``Authorization`` header value earns."""
    if not authorization:
        return Identity("anonymous", "none")
    scheme, _, credentials = authorization.strip().partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        return Identity("anonymous", "sso")
    if scheme != "basic":
        return Identity("rejected", "basic")
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return Identity("rejected", "basic")
    user, colon, password = decoded.partition(":")
    if not colon:
        return Identity("rejected", "basic")
    # Both comparisons always run: the time taken says nothing about which part was wrong.
    user_ok = hmac.compare_digest(user.encode(), admin_username.encode())
    password_ok = hmac.compare_digest(password.encode(), admin_password.encode())
    if user_ok and password_ok and admin_username and admin_password:
        return Identity("admin", "basic", user)
    return Identity("rejected", "basic", user)


def allowed(level: Level, role: Role, ui_anonymous: bool) -> bool:
    if level == "public":
        return True
    if role == "admin":
        return True
    return level == "read" and role == "anonymous" and ui_anonymous


def is_script_caller(accept: str, x_requested_with: str | None) -> bool:
    """A page's script (fetch/XHR) rather than a person's browser tab or curl."""
    return x_requested_with is not None or "application/json" in accept.lower()


def challenge_headers(accept: str, x_requested_with: str | None) -> list[tuple[str, str]]:
    if is_script_caller(accept, x_requested_with):
        return []
    return [("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"')]
