"""Access rules in PostgreSQL's pg_hba.conf grammar: a parser into immutable rules, and the first-match lookup.

Contract (PostgreSQL 15, "The pg_hba.conf File"): each record is ``TYPE DATABASE USER [ADDRESS [MASK]] METHOD
[name=value ...]``; ``#`` starts a comment, a backslash at the end of a line continues the record, fields are
separated by blanks, a field may be a comma list, double quotes keep blanks and take away a keyword's meaning
(``""`` inside quotes is one quote), and ``@file`` in the database or user field includes the names of another
file (relative to the file that names it). The **first** record whose type, address, database and user match
decides; its method is the answer, whatever it is, and no record means refusal. `HbaRules.match` is that lookup
and nothing else: what a method then requires lives in `auth.policy`.

What pg_doorman cannot evaluate is said at load, never silently widened:

* ``+group``, ``samerole``/``samegroup`` need role membership, which a pooler does not know: such an entry never
  matches (a warning says so). In a ``reject`` record the file is refused instead, because skipping a rejection
  would admit the clients it names.
* ``replication`` never matches (pg_doorman serves no replication connections); ``hostgssenc`` never matches
  (GSSAPI encryption is declined), ``hostnogssenc`` matches every TCP connection.
* Host names, ``samehost`` and ``samenet`` are refused at load: they need DNS or the interface list, which this
  version does not consult.
* ``ldap`` (PostgreSQL's ldap* options, checked at load by auth.ldap) and ``pam`` (``pamservice``, default
  ``postgresql``) are carried out by auth/ldap.py and auth/pam.py. Methods other than trust / reject / md5 /
  scram-sha-256 / password / cert / ldap / pam (peer, ident, radius, gss, sspi) parse, and a connection their
  record matches is refused (deny by default, with the reason in the log).

Everything here is sans-I/O except reading ``@file`` includes, done through a callable so tests can feed text.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Literal

__all__ = [
    "ConnType",
    "HbaError",
    "HbaRules",
    "Method",
    "NamePattern",
    "Rule",
    "client_address",
    "legacy_rules",
    "load_hba_file",
    "parse_hba",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Connection = Literal["local", "host"]

MAX_INCLUDE_DEPTH = 10
MAX_FILE_BYTES = 10 * 1024 * 1024  # a pg_hba file larger than this is a mistake, not a rule set


class Method(Enum):
    """PostgreSQL's pg_hba method names. pg_doorman carries out those in `SUPPORTED_METHODS`."""

    TRUST = "trust"
    REJECT = "reject"
    MD5 = "md5"
    SCRAM_SHA_256 = "scram-sha-256"
    PASSWORD = "password"
    CERT = "cert"
    GSS = "gss"
    SSPI = "sspi"
    IDENT = "ident"
    PEER = "peer"
    PAM = "pam"
    LDAP = "ldap"
    RADIUS = "radius"
    # Not a pg_hba method: a user whose password is ``jwt-pkey-fpath:...`` logs in with a JWT (auth/jwt.py).
    JWT = "jwt"


SUPPORTED_METHODS = frozenset(
    {
        Method.TRUST,
        Method.REJECT,
        Method.MD5,
        Method.SCRAM_SHA_256,
        Method.PASSWORD,
        Method.CERT,
        Method.LDAP,
        Method.PAM,
    }
)


class ConnType(Enum):
    LOCAL = "local"
    HOST = "host"
    HOSTSSL = "hostssl"
    HOSTNOSSL = "hostnossl"
    HOSTGSSENC = "hostgssenc"
    HOSTNOGSSENC = "hostnogssenc"


# Options PostgreSQL accepts for the methods pg_doorman carries out; other methods' options are kept unchecked.
_OPTIONS: dict[Method, frozenset[str]] = {
    Method.TRUST: frozenset({"clientcert"}),
    Method.REJECT: frozenset({"clientcert"}),
    Method.MD5: frozenset({"clientcert"}),
    Method.SCRAM_SHA_256: frozenset({"clientcert"}),
    Method.PASSWORD: frozenset({"clientcert"}),
    Method.CERT: frozenset({"clientcert", "map", "clientname"}),
    Method.PAM: frozenset({"clientcert", "pamservice", "pam_use_hostname"}),
    # Method.LDAP: PostgreSQL's ldap* options, checked whole by auth.ldap.parse_ldap_options (see _rule).
}


class HbaError(ValueError):
    """A pg_hba file that cannot be loaded; ``lines`` are ``file:line: what`` for each problem."""

    def __init__(self, lines: Sequence[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = tuple(lines)


@dataclass(frozen=True, slots=True)
class Token:
    text: str
    quoted: bool

    def keyword(self, word: str) -> bool:
        return not self.quoted and self.text == word


@dataclass(frozen=True, slots=True)
class NamePattern:
    """One entry of a database or user list. ``kind``: all, sameuser, samerole, replication, group or name."""

    kind: str
    value: str = ""

    def matches_database(self, database: str, user: str) -> bool:
        if self.kind == "all":
            return True
        if self.kind == "sameuser":
            return database == user
        return self.kind == "name" and self.value == database

    def matches_user(self, user: str) -> bool:
        return self.kind == "all" or (self.kind == "name" and self.value == user)


@dataclass(frozen=True, slots=True)
class Rule:
    """One pg_hba record. ``network`` None means every address (``all``) or a ``local`` record."""

    source: str
    line: int
    conn_type: ConnType
    databases: tuple[NamePattern, ...]
    users: tuple[NamePattern, ...]
    network: IPNetwork | None
    method: Method
    options: tuple[tuple[str, str], ...] = ()
    text: str = field(default="", compare=False)

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"

    def option(self, name: str) -> str | None:
        for key, value in self.options:
            if key == name:
                return value
        return None

    def matches(self, connection: Connection, database: str, user: str, address: IPAddress | None, tls: bool) -> bool:
        kind = self.conn_type
        if kind is ConnType.LOCAL:
            if connection != "local":
                return False
        else:
            if connection != "host":
                return False
            if tls if kind is ConnType.HOSTNOSSL else (kind is ConnType.HOSTSSL and not tls):
                return False
            if kind is ConnType.HOSTGSSENC:
                return False
            if self.network is not None and (address is None or address not in self.network):
                return False
        return any(p.matches_database(database, user) for p in self.databases) and any(
            p.matches_user(user) for p in self.users
        )


@dataclass(frozen=True, slots=True)
class HbaRules:
    """A loaded rule set. ``warnings``: entries that can never match, for the startup log and ``-t``."""

    rules: tuple[Rule, ...]
    warnings: tuple[str, ...] = ()

    def match(
        self, connection: Connection, database: str, user: str, address: IPAddress | None, tls: bool
    ) -> Rule | None:
        """The first rule that matches, as PostgreSQL picks it; None means the connection is refused."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # an IPv4 client on a dual-stack socket is matched as IPv4
        for rule in self.rules:
            if rule.matches(connection, database, user, address, tls):
                return rule
        return None


def client_address(peername: object) -> IPAddress | None:
    """The IP address in a socket's peername (a tuple for TCP); None for a Unix socket."""
    if isinstance(peername, tuple) and peername and isinstance(peername[0], str):
        try:
            return ipaddress.ip_address(peername[0].split("%", 1)[0])
        except ValueError:
            return None
    return None


# ----------------------------------------------------------------------------------------------- tokenizer


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, text) of each record: backslash-newline joins lines, even inside comments/quotes."""
    out: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\r")
        if not pending:
            start = number
        if line.endswith("\\"):
            pending.append(line[:-1])
            continue
        pending.append(line)
        out.append((start, "".join(pending)))
        pending = []
    if pending:
        out.append((start, "".join(pending)))
    return out


def _fields(line: str) -> list[list[Token]]:
    """A record's fields; each field is its comma list of tokens. ValueError for an unterminated quote."""
    fields: list[list[Token]] = []
    i, n = 0, len(line)
    continues = False  # the previous token ended with a comma: this one belongs to the same field
    while True:
        while i < n and line[i] in " \t\r,":
            i += 1
        if i >= n or line[i] == "#":
            return fields
        chars: list[str] = []
        quoted = in_quote = trailing_comma = False
        while i < n:
            c = line[i]
            if not in_quote and (c in " \t\r" or c == "#"):
                break
            if not in_quote and c == ",":
                trailing_comma = True
                i += 1
                break
            if c == '"':
                if in_quote and i + 1 < n and line[i + 1] == '"':
                    chars.append('"')
                    i += 2
                    continue
                in_quote = not in_quote
                quoted = True
                i += 1
                continue
            chars.append(c)
            i += 1
        if in_quote:
            raise ValueError("unterminated quoted string")
        token = Token("".join(chars), quoted)
        if continues and fields:
            fields[-1].append(token)
        else:
            fields.append([token])
        continues = trailing_comma


# ------------------------------------------------------------------------------------------------- parser

ReadFile = Callable[[Path], str]


def _read_text(path: Path) -> str:
    with path.open("rb") as handle:
        data = handle.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise OSError(f"larger than {MAX_FILE_BYTES} bytes")
    return data.decode("utf-8", "surrogateescape")


class _Parser:
    def __init__(self, read_file: ReadFile) -> None:
        self.read_file = read_file
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def include(self, name: str, base_dir: Path, depth: int) -> list[Token]:
        """The names listed in an ``@file`` (every line, comments allowed, nested ``@`` followed)."""
        if depth > MAX_INCLUDE_DEPTH:
            raise ValueError(f'"@{name}": includes nested deeper than {MAX_INCLUDE_DEPTH} levels')
        path = (base_dir / name).resolve() if not Path(name).is_absolute() else Path(name)
        try:
            text = self.read_file(path)
        except (OSError, UnicodeError) as exc:
            raise ValueError(f'could not open secondary authentication file "@{name}" as "{path}": {exc}')
        tokens: list[Token] = []
        for _, line in _logical_lines(text):
            for field_tokens in _fields(line):
                tokens.extend(self.expand(field_tokens, path.parent, depth + 1))
        return tokens

    def expand(self, tokens: list[Token], base_dir: Path, depth: int) -> list[Token]:
        out: list[Token] = []
        for token in tokens:
            if not token.quoted and token.text.startswith("@") and len(token.text) > 1:
                out.extend(self.include(token.text[1:], base_dir, depth))
            elif token.text or token.quoted:
                out.append(token)
        return out


def _single(field_tokens: list[Token], what: str) -> Token:
    if len(field_tokens) != 1:
        raise ValueError(f"multiple values specified for {what}")
    return field_tokens[0]


def _databases(tokens: list[Token]) -> tuple[tuple[NamePattern, ...], list[str]]:
    patterns: list[NamePattern] = []
    never: list[str] = []
    for token in tokens:
        if token.keyword("all") or token.keyword("sameuser"):
            patterns.append(NamePattern(token.text))
        elif token.keyword("samerole") or token.keyword("samegroup"):
            never.append(f'"{token.text}" (pg_doorman does not know role membership)')
        elif token.keyword("replication"):
            never.append('"replication" (pg_doorman serves no replication connections)')
        else:
            patterns.append(NamePattern("name", token.text))
    return tuple(patterns), never


def _users(tokens: list[Token]) -> tuple[tuple[NamePattern, ...], list[str]]:
    patterns: list[NamePattern] = []
    never: list[str] = []
    for token in tokens:
        if token.keyword("all"):
            patterns.append(NamePattern("all"))
        elif not token.quoted and token.text.startswith("+"):
            never.append(f'"{token.text}" (pg_doorman does not know group membership)')
        else:
            patterns.append(NamePattern("name", token.text))
    return tuple(patterns), never


def _mask_prefix(mask: IPAddress) -> int:
    bits = mask.max_prefixlen
    value = int(mask)
    prefix = bin(value).count("1")
    if value != ((1 << bits) - 1) ^ ((1 << (bits - prefix)) - 1):
        raise ValueError(f'invalid IP mask "{mask}"')
    return prefix


def _address(fields: list[list[Token]]) -> tuple[IPNetwork | None, int]:
    """The ADDRESS (and MASK) fields at the front of ``fields``: the network and how many fields it used."""
    if not fields:
        raise ValueError("end-of-line before IP address specification")
    token = _single(fields[0], "host address")
    text = token.text
    if token.keyword("all"):
        return None, 1
    if token.keyword("samehost") or token.keyword("samenet"):
        raise ValueError(f'"{text}" is not supported by pg_doorman (write the addresses as CIDR ranges)')
    if "/" in text:
        address_text, _, prefix = text.partition("/")
        try:
            ipaddress.ip_address(address_text)
        except ValueError:
            raise ValueError(f'invalid IP address "{address_text}": host names are not supported by pg_doorman')
        if not prefix.isdigit():
            raise ValueError(f'invalid CIDR mask in address "{text}"')
        try:
            return ipaddress.ip_network(text, strict=False), 1
        except ValueError:
            raise ValueError(f'invalid CIDR mask in address "{text}"')
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(
            f'host name "{text}" is not supported by pg_doorman: write an IP address with a CIDR mask '
            "(a host name would need a DNS lookup for every connection)"
        )
    if len(fields) < 2:
        raise ValueError("end-of-line before netmask specification")
    mask_text = _single(fields[1], "netmask").text
    try:
        mask = ipaddress.ip_address(mask_text)
    except ValueError:
        raise ValueError(f'invalid IP mask "{mask_text}"')
    if mask.version != address.version:
        raise ValueError("IP address and mask do not match")
    return ipaddress.ip_network((address, _mask_prefix(mask)), strict=False), 2


def _options(method: Method, conn_type: ConnType, fields: list[list[Token]]) -> tuple[tuple[str, str], ...]:
    options: list[tuple[str, str]] = []
    for field_tokens in fields:
        text = ",".join(t.text for t in field_tokens)
        name, sep, value = text.partition("=")
        if not sep or not name:
            raise ValueError(f'authentication option not in name=value format: "{text}"')
        allowed = _OPTIONS.get(method)
        if allowed is not None and name not in allowed:
            raise ValueError(f'unrecognized authentication option name "{name}" for method "{method.value}"')
        if name == "clientcert":
            if conn_type is not ConnType.HOSTSSL:
                raise ValueError("clientcert can only be configured for hostssl rows")
            if value not in ("verify-ca", "verify-full"):
                raise ValueError(f'invalid value for clientcert: "{value}" (verify-ca or verify-full)')
            if method is Method.CERT and value != "verify-full":
                raise ValueError('clientcert only accepts "verify-full" when using "cert" authentication')
        if name == "clientname" and value not in ("CN", "DN"):
            raise ValueError(f'invalid value for clientname: "{value}" (CN or DN)')
        options.append((name, value))
    return tuple(options)


def _rule(parser: _Parser, source: str, number: int, text: str, base_dir: Path) -> Rule | None:
    fields = _fields(text)
    if not fields:
        return None
    type_text = _single(fields[0], "connection type").text
    try:
        conn_type = ConnType(type_text)
    except ValueError:
        raise ValueError(f'invalid connection type "{type_text}"')
    if len(fields) < 2:
        raise ValueError("end-of-line before database specification")
    if len(fields) < 3:
        raise ValueError("end-of-line before role specification")
    databases, never_db = _databases(parser.expand(fields[1], base_dir, 1))
    users, never_user = _users(parser.expand(fields[2], base_dir, 1))
    rest = fields[3:]
    network: IPNetwork | None = None
    if conn_type is not ConnType.LOCAL:
        network, used = _address(rest)
        rest = rest[used:]
    if not rest:
        raise ValueError("end-of-line before authentication method")
    method_text = _single(rest[0], "authentication type").text
    try:
        method = Method(method_text)
    except ValueError:
        raise ValueError(f'invalid authentication method "{method_text}"')
    if method is Method.CERT and conn_type is not ConnType.HOSTSSL:
        raise ValueError("cert authentication is only supported on hostssl connections")
    options = _options(method, conn_type, rest[1:])
    if method is Method.LDAP:
        from pg_doorman.auth.ldap import LdapOptionError, parse_ldap_options

        try:
            parse_ldap_options({name: value for name, value in options if name != "clientcert"})
        except LdapOptionError as exc:
            raise ValueError(f"{exc.key}: {exc}") from None
    where = f"{source}:{number}"
    never = never_db + never_user
    if never:
        if method is Method.REJECT:
            raise ValueError(
                f"{', '.join(never)} cannot be evaluated, and skipping a reject rule would admit the clients it "
                "names: list the names instead"
            )
        if not databases or not users:
            parser.warnings.append(f"{where}: this rule never matches: {', '.join(never)}")
        else:
            parser.warnings.append(f"{where}: these entries never match: {', '.join(never)}")
    if conn_type is ConnType.HOSTGSSENC:
        parser.warnings.append(f"{where}: hostgssenc never matches (pg_doorman declines GSSAPI encryption)")
    if method not in SUPPORTED_METHODS:
        parser.warnings.append(
            f'{where}: method "{method.value}" is not supported by pg_doorman: '
            "connections this rule matches are refused"
        )
    return Rule(source, number, conn_type, databases, users, network, method, options, text.strip())


def parse_hba(text: str, *, source: str, base_dir: Path, read_file: ReadFile = _read_text) -> HbaRules:
    """Parse pg_hba text; ``source`` names it in messages, ``base_dir`` anchors relative ``@file`` includes.

    Raises HbaError listing every bad line (PostgreSQL, too, loads a file only when all of it is valid).
    """
    parser = _Parser(read_file)
    rules: list[Rule] = []
    for number, line in _logical_lines(text):
        try:
            rule = _rule(parser, source, number, line, base_dir)
        except ValueError as exc:
            parser.errors.append(f"{source}:{number}: {exc}")
            continue
        if rule is not None:
            rules.append(rule)
    if parser.errors:
        raise HbaError(parser.errors)
    return HbaRules(tuple(rules), tuple(parser.warnings))


def load_hba_file(path: str | Path, *, read_file: ReadFile = _read_text) -> HbaRules:
    """Read and parse a pg_hba file (HbaError if it cannot be read or has a bad line)."""
    path = Path(path)
    try:
        text = read_file(path)
    except (OSError, UnicodeError) as exc:
        raise HbaError([f"{path}: cannot read: {exc}"])
    return parse_hba(text, source=str(path), base_dir=path.parent, read_file=read_file)


def legacy_rules(cidrs: Sequence[str], *, source: str = "general.hba") -> HbaRules:
    """The original's ``general.hba`` allow-list as pg_hba rules: Unix-socket clients and the listed networks
    log in with their password (``md5``, which a SCRAM secret serves with SCRAM), everybody else is refused."""
    rules = [Rule(source, 0, ConnType.LOCAL, (NamePattern("all"),), (NamePattern("all"),), None, Method.MD5)]
    errors: list[str] = []
    for index, cidr in enumerate(cidrs):
        try:
            network = ipaddress.ip_network(cidr.strip(), strict=False)
        except ValueError:
            errors.append(f"{source}[{index}]: invalid CIDR range {cidr!r}")
            continue
        all_names = (NamePattern("all"),)
        rules.append(Rule(source, index + 1, ConnType.HOST, all_names, all_names, network, Method.MD5))
    if errors:
        raise HbaError(errors)
    return HbaRules(tuple(rules))
