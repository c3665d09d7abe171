"""Config of the password checks that need no stored secret: JWT, PAM and LDAP (`pg_doorman.auth.external`).

Per user (``pools.<db>.users[]``):

* ``password: "jwt-pkey-fpath:<path>"``: the client's password is a JWT checked with that RSA public key
  (read here, so that ``pg_doorman -t`` finds a missing or malformed key);
* ``auth_pam_service: "<service>"``: the password is checked by PAM service ``/etc/pam.d/<service>``;
* ``auth_ldap: true``: the password is checked by LDAP with the options of the pool's ``ldap`` table, overridden
  key by key by the user's own ``ldap`` table (PostgreSQL's pg_hba option names: ldapserver, ldapbasedn, …).

One user has at most one of them. With one, ``password`` may be left out (it is then empty: PostgreSQL must trust
pg_doorman, or ``server_password`` says how to log in). ``server_password: "jwt-priv-key-fpath:<path>"`` (the
original's backend JWT) is checked here too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from pg_doorman.auth.jwt import (
    JWT_PRIVATE_KEY_PREFIX,
    JWT_PUBLIC_KEY_PREFIX,
    JwtKeyError,
    load_private_key,
    load_public_key,
)
from pg_doorman.auth.ldap import LdapOptionError, LdapOptions, parse_ldap_options
from pg_doorman.config.reader import Section

__all__ = ["ExternalAuth", "pool_ldap_table", "read_user_auth"]

PAM_DIRECTORY = "/etc/pam.d"


@dataclass(frozen=True, slots=True)
class ExternalAuth:
    """A user's external password settings as read (one at most is set)."""

    pam_service: str | None = None
    ldap: LdapOptions | None = None


def pool_ldap_table(pool: Section) -> dict[str, object] | None:
    """The pool's ``ldap`` table as written (checked when a user uses it), or None."""
    table = pool.table("ldap")
    return None if table is None else dict(table.data)


def _ldap_for_user(s: Section, pool_ldap: Mapping[str, object] | None) -> LdapOptions | None:
    own = s.table("ldap")
    enabled = s.optional_boolean("auth_ldap")
    if not enabled:
        if own is not None:
            s.error("ldap", "LDAP options without auth_ldap: true (set it, or remove the options)")
        return None
    merged: dict[str, object] = dict(pool_ldap or {})
    if own is not None:
        merged.update(own.data)
    if not merged:
        s.error("auth_ldap", "needs LDAP options: an 'ldap' table in the pool or in this user")
        return None
    try:
        return parse_ldap_options(merged)
    except LdapOptionError as err:
        where = "ldap" if own is not None and err.key in own.data else "auth_ldap"
        s.error(where, f"{err.key}: {err.message}")
        return None


def read_user_auth(s: Section, pool_ldap: Mapping[str, object] | None, password: str | None) -> ExternalAuth:
    """Read and check a user's ``auth_pam_service``, ``auth_ldap``/``ldap`` and JWT key settings."""
    pam_service = s.optional_string("auth_pam_service", allow_empty=False)
    if pam_service is not None:
        if "/" in pam_service or pam_service in (".", ".."):
            s.error("auth_pam_service", f"expected a PAM service name (a file in {PAM_DIRECTORY}), got {pam_service!r}")
        elif not os.path.exists(os.path.join(PAM_DIRECTORY, pam_service)):
            s.problems.warn(
                s.key_path("auth_pam_service"),
                f"{PAM_DIRECTORY}/{pam_service} does not exist: PAM will use its 'other' service",
            )
    ldap = _ldap_for_user(s, pool_ldap)
    jwt_key = password.removeprefix(JWT_PUBLIC_KEY_PREFIX) if password else ""
    is_jwt = bool(password) and password is not None and password.startswith(JWT_PUBLIC_KEY_PREFIX)
    methods = [name for name, on in (("auth_pam_service", pam_service), ("auth_ldap", ldap), ("jwt", is_jwt)) if on]
    if len(methods) > 1:
        s.error(methods[1], f"a user has one external authentication method; {' and '.join(methods)} are set")
    if is_jwt:
        if not jwt_key:
            s.error("password", f"'{JWT_PUBLIC_KEY_PREFIX}' needs the path of an RSA public key (PEM)")
        else:
            try:
                load_public_key(jwt_key)
            except JwtKeyError as err:
                s.error("password", str(err))
    server_password = s.data.get("server_password")
    if isinstance(server_password, str) and server_password.startswith(JWT_PRIVATE_KEY_PREFIX):
        try:
            load_private_key(server_password.removeprefix(JWT_PRIVATE_KEY_PREFIX))
        except JwtKeyError as err:
            s.error("server_password", str(err))
    return ExternalAuth(pam_service=pam_service, ldap=ldap)
