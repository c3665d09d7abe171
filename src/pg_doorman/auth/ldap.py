"""LDAP authentication as PostgreSQL's pg_hba ``ldap`` method defines it (beyond the original pg_doorman).

Two modes, chosen by the options (https://www.postgresql.org/docs/current/auth-ldap.html):

* **simple bind**: ``ldapprefix`` + user name + ``ldapsuffix`` is the DN bound with the client's password
  (``cn=`` / ``,dc=example,dc=org``, or ``EXAMPLE\\`` for Active Directory). The user name is escaped as a DN value
  (RFC 4514), so ``alice,ou=admins`` cannot name another entry.
* **search+bind**: bind as ``ldapbinddn``/``ldapbindpasswd`` (anonymously without them), search the subtree at
  ``ldapbasedn`` for ``(ldapsearchattribute=user)`` (``uid`` by default) or ``ldapsearchfilter`` with
  ``$username`` replaced, require exactly one entry, then bind as that entry with the client's password. As in
  PostgreSQL, user names with ``* ( ) \\ /`` are refused in this mode, and the value is escaped (RFC 4515) anyway.

``ldapserver`` (space-separated names tried in order), ``ldapport``, ``ldapscheme`` (``ldap``/``ldaps``) and
``ldaptls`` (StartTLS) say where and how; ``ldapurl`` (RFC 4516) can give server, port, base DN, attribute, scope
and filter at once. TLS always verifies the server certificate: against ``ldaptlscacert`` (a pg_doorman
addition), else libldap's ``LDAPTLS_CACERT`` environment variable, else the system's CAs.

An empty password is refused before anything is sent: LDAP servers treat a simple bind with an empty password as
an anonymous bind and report success. `LdapOptions` is a plain value, built by `parse_ldap_options` from strings
(pg_hba options) or config values, and is itself the password check (`check`), which blocks: it runs in a worker
thread (`pg_doorman.auth.external`), with connect and response timeouts of its own.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "LDAP_OPTION_NAMES",
    "LdapOptionError",
    "LdapOptions",
    "ldap_authenticate",
    "parse_ldap_options",
]

CONNECT_TIMEOUT = 5  # per server tried
RESPONSE_TIMEOUT = 10  # per LDAP operation
_SEARCH_FORBIDDEN = frozenset("*()\\/")
_SCOPES = {"base": "BASE", "one": "LEVEL", "sub": "SUBTREE"}

LDAP_OPTION_NAMES = (
    "ldapserver",
    "ldapport",
    "ldapscheme",
    "ldaptls",
    "ldapprefix",
    "ldapsuffix",
    "ldapbasedn",
    "ldapbinddn",
    "ldapbindpasswd",
    "ldapsearchattribute",
    "ldapsearchfilter",
    "ldapurl",
    "ldaptlscacert",
)


class LdapOptionError(ValueError):
    """An unusable LDAP option: ``key`` names it, the message says what is expected."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


@dataclass(frozen=True, slots=True)
class LdapOptions:
    """Validated LDAP settings (see the module docstring); also the password check of an LDAP user."""

    servers: tuple[str, ...]
    port: int = 0  # 0: 389, or 636 for ldaps
    scheme: str = "ldap"
    start_tls: bool = False
    prefix: str = ""
    suffix: str = ""
    base_dn: str = ""
    bind_dn: str = ""
    bind_password: str = field(default="", repr=False)  # kept out of logs and SHOW CONFIG
    search_attribute: str = ""
    search_filter: str = ""
    scope: str = "sub"
    tls_ca_file: str = ""

    method = "ldap"
    blocking = True

    @property
    def search_mode(self) -> bool:
        return bool(self.base_dn)

    @property
    def effective_port(self) -> int:
        return self.port or (636 if self.scheme == "ldaps" else 389)

    def check(self, user: str, password: str) -> str | None:
        return ldap_authenticate(self, user, password)


def _text(raw: Mapping[str, object], key: str) -> str:
    value = raw.get(key)
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise LdapOptionError(key, f"expected a string, got {type(value).__name__}")
    return str(value)


def _bool(raw: Mapping[str, object], key: str) -> bool:
    value = raw.get(key)
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "on", "yes"):
        return True
    if text in ("", "0", "false", "off", "no"):
        return False
    raise LdapOptionError(key, f"expected 0/1 (or true/false), got {value!r}")


def _port(raw: Mapping[str, object], key: str) -> int:
    text = _text(raw, key)
    if not text:
        return 0
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise LdapOptionError(key, f"expected a port number 1..65535, got {text!r}")
    return int(text)


def _from_url(url: str) -> dict[str, str]:
    """``ldap[s]://host[:port]/basedn[?[attribute][?[scope][?[filter]]]]`` as option values."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("ldap", "ldaps"):
        raise LdapOptionError("ldapurl", f"unsupported LDAP URL scheme {parts.scheme!r} (ldap or ldaps)")
    if not parts.hostname:
        raise LdapOptionError("ldapurl", "the LDAP URL has no host")
    fields = [*parts.query.split("?"), "", "", ""]
    attributes, scope, search_filter = fields[0], fields[1], fields[2]
    if "," in attributes:
        raise LdapOptionError("ldapurl", "the LDAP URL may name one search attribute")
    found: dict[str, str] = {"ldapscheme": parts.scheme, "ldapserver": parts.hostname}
    try:
        if parts.port:
            found["ldapport"] = str(parts.port)
    except ValueError:
        raise LdapOptionError("ldapurl", "the LDAP URL has an invalid port") from None
    base_dn = urllib.parse.unquote(parts.path.lstrip("/"))
    if base_dn:
        found["ldapbasedn"] = base_dn
    if attributes:
        found["ldapsearchattribute"] = urllib.parse.unquote(attributes)
    if scope:
        if scope not in _SCOPES:
            raise LdapOptionError("ldapurl", f"invalid scope {scope!r} in the LDAP URL (base, one or sub)")
        found["scope"] = scope
    if search_filter:
        found["ldapsearchfilter"] = urllib.parse.unquote(search_filter)
    return found


def parse_ldap_options(raw: Mapping[str, object]) -> LdapOptions:
    """Validate LDAP options as PostgreSQL's pg_hba.conf parser does; raises LdapOptionError.

    ``raw`` maps PostgreSQL's option names (`LDAP_OPTION_NAMES`) to strings (pg_hba) or config values.
    """
    for key in raw:
        if key not in LDAP_OPTION_NAMES:
            raise LdapOptionError(key, f"unknown LDAP option (expected one of {', '.join(LDAP_OPTION_NAMES)})")
    values: dict[str, object] = dict(raw)
    scope = "sub"
    url = _text(raw, "ldapurl")
    if url:
        for key in ("ldapserver", "ldapport", "ldapscheme", "ldapbasedn", "ldapsearchattribute", "ldapsearchfilter"):
            if key in raw:
                raise LdapOptionError("ldapurl", f"cannot be combined with {key} (the URL sets it)")
        from_url = _from_url(url)
        scope = from_url.pop("scope", "sub")
        values.update(from_url)
    servers = tuple(_text(values, "ldapserver").split())
    if not servers:
        raise LdapOptionError("ldapserver", "LDAP authentication requires ldapserver (or ldapurl)")
    scheme = _text(values, "ldapscheme") or "ldap"
    if scheme not in ("ldap", "ldaps"):
        raise LdapOptionError("ldapscheme", f"expected 'ldap' or 'ldaps', got {scheme!r}")
    start_tls = _bool(values, "ldaptls")
    if start_tls and scheme == "ldaps":
        raise LdapOptionError("ldaptls", "StartTLS cannot be used with ldapscheme 'ldaps' (already TLS)")
    options = LdapOptions(
        servers=servers,
        port=_port(values, "ldapport"),
        scheme=scheme,
        start_tls=start_tls,
        prefix=_text(values, "ldapprefix"),
        suffix=_text(values, "ldapsuffix"),
        base_dn=_text(values, "ldapbasedn"),
        bind_dn=_text(values, "ldapbinddn"),
        bind_password=_text(values, "ldapbindpasswd"),
        search_attribute=_text(values, "ldapsearchattribute"),
        search_filter=_text(values, "ldapsearchfilter"),
        scope=scope,
        tls_ca_file=_text(values, "ldaptlscacert"),
    )
    simple = options.prefix or options.suffix
    search = options.base_dn or options.bind_dn or options.bind_password or options.search_attribute
    if simple and (search or options.search_filter):
        raise LdapOptionError(
            "ldapprefix" if options.prefix else "ldapsuffix",
            "cannot mix options for simple bind (ldapprefix, ldapsuffix) and search+bind "
            "(ldapbasedn, ldapbinddn, ldapbindpasswd, ldapsearchattribute, ldapsearchfilter)",
        )
    if not simple and not options.base_dn:
        raise LdapOptionError("ldapbasedn", "LDAP authentication requires ldapbasedn, ldapprefix or ldapsuffix")
    if options.search_attribute and options.search_filter:
        raise LdapOptionError("ldapsearchfilter", "cannot be combined with ldapsearchattribute")
    if options.bind_password and not options.bind_dn:
        raise LdapOptionError("ldapbindpasswd", "requires ldapbinddn")
    if options.tls_ca_file and not (start_tls or scheme == "ldaps"):
        raise LdapOptionError("ldaptlscacert", "needs ldaptls=1 or ldapscheme 'ldaps'")
    return options


# ------------------------------------------------------------------------------------------ the check


def _escape_filter_value(value: str) -> str:
    """RFC 4515 escaping of an assertion value (``*``, ``(``, ``)``, ``\\`` and NUL)."""
    out = []
    for ch in value:
        out.append(f"\\{ord(ch):02x}" if ch in "*()\\\x00" else ch)
    return "".join(out)


def _escape_dn_value(value: str) -> str:
    """RFC 4514 escaping of an attribute value inside a DN."""
    out = []
    for index, ch in enumerate(value):
        if ch in ',+"\\<>;=' or (ch == "#" and index == 0) or (ch == " " and index in (0, len(value) - 1)):
            out.append("\\" + ch)
        elif ch == "\x00":
            out.append("\\00")
        else:
            out.append(ch)
    return "".join(out)


def search_filter_for(options: LdapOptions, user: str) -> str:
    """The search filter for ``user``, its value escaped."""
    value = _escape_filter_value(user)
    if options.search_filter:
        return options.search_filter.replace("$username", value)
    return f"({options.search_attribute or 'uid'}={value})"


def _tls(options: LdapOptions) -> Any:
    from ldap3 import Tls

    ca_file = options.tls_ca_file or os.environ.get("LDAPTLS_CACERT") or None
    return Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=ca_file, version=ssl.PROTOCOL_TLS_CLIENT)


def _open(options: LdapOptions) -> tuple[Any, str | None]:
    """An open (not yet bound) connection to the first server that answers, or (None, why)."""
    from ldap3 import NONE, Connection, Server
    from ldap3.core.exceptions import LDAPException

    use_tls = options.start_tls or options.scheme == "ldaps"
    failures = []
    for host in options.servers:
        server = Server(
            host,
            port=options.effective_port,
            use_ssl=options.scheme == "ldaps",
            tls=_tls(options) if use_tls else None,
            get_info=NONE,
            connect_timeout=CONNECT_TIMEOUT,
        )
        connection = Connection(
            server,
            auto_bind="NONE",
            auto_referrals=False,
            receive_timeout=RESPONSE_TIMEOUT,
            read_only=True,
            raise_exceptions=False,
        )
        try:
            connection.open()
            if options.start_tls and not connection.start_tls():
                raise LDAPException(f"StartTLS failed: {connection.result}")
        except (LDAPException, OSError) as err:
            _close(connection)
            failures.append(f"{host}:{options.effective_port}: {err}")
            continue
        return connection, None
    return None, "could not connect to the LDAP server (" + "; ".join(failures) + ")"


def _bind(connection: Any, dn: str, password: str) -> str | None:
    """Simple bind on ``connection``; None on success, else the server's reason."""
    from ldap3 import SIMPLE
    from ldap3.core.exceptions import LDAPException

    connection.authentication = SIMPLE
    connection.user = dn
    connection.password = password
    try:
        if connection.bind():
            return None
    except (LDAPException, OSError) as err:
        return f"LDAP bind failed: {err}"
    result = connection.result or {}
    return f"LDAP bind as {dn!r} failed: {result.get('description', 'error')} {result.get('message', '')}".strip()


def ldap_authenticate(options: LdapOptions, user: str, password: str) -> str | None:
    """Check ``password`` for ``user`` with the LDAP server: None when it binds, else why not (for the log).

    Blocking: call it from a worker thread.
    """
    if not password:
        return "empty password (an LDAP server would take it as an anonymous bind)"
    if options.search_mode and any(ch in _SEARCH_FORBIDDEN for ch in user):
        return "invalid character in user name for LDAP authentication"
    connection, why = _open(options)
    if connection is None:
        return why
    try:
        if not options.search_mode:
            return _bind(connection, options.prefix + _escape_dn_value(user) + options.suffix, password)
        return _search_and_bind(connection, options, user, password)
    finally:
        _close(connection)


def _close(connection: Any) -> None:
    """Unbind and close; a connection that already broke has nothing left to say."""
    with contextlib.suppress(Exception):
        connection.unbind()


def _search_and_bind(connection: Any, options: LdapOptions, user: str, password: str) -> str | None:
    from ldap3 import ANONYMOUS, NO_ATTRIBUTES
    from ldap3.core.exceptions import LDAPException

    if options.bind_dn:
        why = _bind(connection, options.bind_dn, options.bind_password)
        if why is not None:
            return f"could not perform the initial LDAP bind as ldapbinddn: {why}"
    else:
        connection.authentication = ANONYMOUS
        try:
            if not connection.bind():
                return f"anonymous LDAP bind failed: {connection.result}"
        except (LDAPException, OSError) as err:
            return f"anonymous LDAP bind failed: {err}"
    search_filter = search_filter_for(options, user)
    try:
        connection.search(
            options.base_dn,
            search_filter,
            search_scope=_SCOPES[options.scope],
            attributes=NO_ATTRIBUTES,
            size_limit=2,
        )
    except (LDAPException, OSError) as err:
        return f"LDAP search for {search_filter!r} failed: {err}"
    entries = [item["dn"] for item in connection.response or () if item.get("type") == "searchResEntry"]
    if not entries:
        return f'LDAP user "{user}" does not exist (no entry for {search_filter!r} under {options.base_dn!r})'
    if len(entries) > 1:
        return f'LDAP user "{user}" is not unique ({search_filter!r} matches more than one entry)'
    return _bind(connection, entries[0], password)
