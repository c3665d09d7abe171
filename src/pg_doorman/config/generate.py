"""``pg_doorman generate``: a configuration built from a running PostgreSQL, as the original's command does.

It logs in (plain or ``--ssl``, any auth method the pooler itself speaks), reads every login role with its stored
verifier (``pg_shadow``: superuser only) and every database that is not a template, and writes one pool per
database holding every role, with the verifier as the role's password, so clients log in through pg_doorman with
the passwords they already have. Unlike the original it writes no ``pg_hba`` trust rules (trust for everybody is
not what anybody expects from a generated file) and a random admin password instead of ``admin``.
"""

from __future__ import annotations

import json
import re
import secrets
import socket
import ssl
import struct
from dataclasses import dataclass

from pg_doorman.auth.backend import ServerCredentials, ServerLogin
from pg_doorman.protocol import messages
from pg_doorman.protocol.errors import ServerError

ROLES_SQL = "SELECT usename, passwd FROM pg_shadow ORDER BY usename"
DATABASES_SQL = "SELECT datname FROM pg_database WHERE NOT datistemplate AND datallowconn ORDER BY datname"


class GenerateError(Exception):
    """Why the configuration could not be generated, in one line."""


@dataclass(frozen=True, slots=True)
class Source:
    host: str = "localhost"
    port: int = 5432
    user: str = "postgres"
    password: str | None = None
    database: str = "postgres"
    ssl: bool = False
    timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class Options:
    pool_size: int = 40
    session_mode: bool = False
    server_host: str | None = None
    ssl: bool = False


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise GenerateError("PostgreSQL closed the connection")
        data += chunk
    return data


def _read_message(sock: socket.socket) -> tuple[int, bytes]:
    header = _recv_exact(sock, 5)
    length = struct.unpack_from("!i", header, 1)[0]
    return header[0], _recv_exact(sock, length - 4)


def _connect(source: Source) -> socket.socket:
    try:
        if source.host.startswith("/"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(source.timeout)
            sock.connect(f"{source.host}/.s.PGSQL.{source.port}")
            return sock
        sock = socket.create_connection((source.host, source.port), timeout=source.timeout)
    except OSError as exc:
        raise GenerateError(f"cannot connect to PostgreSQL at {source.host}:{source.port}: {exc}") from None
    if not source.ssl:
        return sock
    sock.sendall(messages.ssl_request())
    if _recv_exact(sock, 1) != b"S":
        sock.close()
        raise GenerateError(f"PostgreSQL at {source.host}:{source.port} does not accept TLS (--ssl)")
    context = ssl.create_default_context()
    context.check_hostname = False  # like sslmode=require: encrypted, certificate not checked
    context.verify_mode = ssl.CERT_NONE
    return context.wrap_socket(sock, server_hostname=source.host)


def _query(sock: socket.socket, sql: str) -> list[list[str | None]]:
    sock.sendall(messages.query(sql))
    rows: list[list[str | None]] = []
    error: ServerError | None = None
    while True:
        kind, body = _read_message(sock)
        if kind == 0x44:  # DataRow
            rows.append([None if v is None else v.decode() for v in messages.parse_data_row(body)])
        elif kind == 0x45:
            fields = messages.parse_error_fields(body)
            error = ServerError(fields.get("C", "XX000"), fields.get("M", "query failed"))
        elif kind == 0x5A:
            break
    if error is not None:
        hint = " (reading pg_shadow needs a superuser: use -u postgres)" if error.sqlstate == "42501" else ""
        raise GenerateError(f"{sql}: {error.message}{hint}")
    return rows


def introspect(source: Source) -> tuple[list[tuple[str, str]], list[str]]:
    """(roles with their stored verifier, "" when none) and database names, read from PostgreSQL."""
    sock = _connect(source)
    try:
        login = ServerLogin(
            ServerCredentials(user=source.user, password=source.password),
            source.database,
            {"application_name": "pg_doorman generate"},
        )
        sock.sendall(login.start())
        try:
            while not login.done:
                kind, body = _read_message(sock)
                reply = login.feed(kind, body)
                if reply:
                    sock.sendall(reply)
        except ServerError as exc:
            raise GenerateError(f"PostgreSQL refused the login of {source.user!r}: {exc.message}") from None
        except Exception as exc:  # PoolerError: no password for the method the server asked for
            raise GenerateError(f"login as {source.user!r} failed: {exc} (give --password or PGPASSWORD)") from None
        roles = [(str(name), passwd or "") for name, passwd in _query(sock, ROLES_SQL)]
        databases = [str(row[0]) for row in _query(sock, DATABASES_SQL)]
        sock.sendall(messages.message(b"X", b""))
    except (OSError, TimeoutError) as exc:
        raise GenerateError(f"connection to PostgreSQL failed: {exc}") from None
    finally:
        sock.close()
    return roles, databases


def build_config(
    roles: list[tuple[str, str]], databases: list[str], source: Source, options: Options
) -> dict[str, object]:
    """The generated configuration as a plain mapping (general + one pool per database with every role)."""
    general: dict[str, object] = {
        "host": "0.0.0.0",
        "port": 6432,
        "admin_username": "admin",
        "admin_password": secrets.token_urlsafe(18),
    }
    pools: dict[str, object] = {}
    for database in databases:
        pool: dict[str, object] = {
            "server_host": options.server_host or source.host,
            "server_port": source.port,
            "server_database": database,
            "pool_mode": "session" if options.session_mode else "transaction",
        }
        if options.ssl:
            pool["server_tls_mode"] = "require"
        pool["users"] = [
            {"username": name, "password": verifier, "pool_size": options.pool_size} for name, verifier in roles
        ]
        pools[database] = pool
    return {"general": general, "pools": pools}


_COMMENTS = {
    "general": "Listener and admin console (psql -h <host> -p 6432 -U admin pgdoorman). Every setting: "
    "pg_doorman generate --reference",
    "pools": "One pool per database of the PostgreSQL server; each role with the password verifier PostgreSQL "
    'stores, so clients log in with their own passwords. Roles without a password ("") cannot log in here.',
}
_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def _scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid string in YAML and TOML


def _key(name: str) -> str:
    return name if _BARE.match(name) else json.dumps(name)


def render(config: dict[str, object], fmt: str, *, comments: bool = True) -> str:
    """YAML or TOML text of a generated config (tables, lists of user tables, scalars)."""
    lines: list[str] = []
    general = config["general"]
    pools = config["pools"]
    assert isinstance(general, dict) and isinstance(pools, dict)
    if comments:
        lines.append("# Generated by pg_doorman generate; check with: pg_doorman -t <this file>")
    for section, table in (("general", general), ("pools", pools)):
        if comments:
            lines.append(f"# {_COMMENTS[section]}")
        if fmt == "yaml":
            lines.append(f"{section}:")
            if section == "general":
                lines += [f"  {_key(k)}: {_scalar(v)}" for k, v in table.items()]
                continue
            for name, pool in table.items():
                lines.append(f"  {_key(name)}:")
                for k, v in pool.items():
                    if k != "users":
                        lines.append(f"    {_key(k)}: {_scalar(v)}")
                lines.append("    users:" if pool["users"] else "    users: []")
                for user in pool["users"]:
                    first = True
                    for k, v in user.items():
                        lines.append(f"      {'- ' if first else '  '}{_key(k)}: {_scalar(v)}")
                        first = False
        else:
            if section == "general":
                lines.append("[general]")
                lines += [f"{_key(k)} = {_scalar(v)}" for k, v in table.items()]
                continue
            for name, pool in table.items():
                lines += ["", f"[pools.{_key(name)}]"]
                lines += [f"{_key(k)} = {_scalar(v)}" for k, v in pool.items() if k != "users"]
                for user in pool["users"]:
                    lines += ["", f"[[pools.{_key(name)}.users]]"]
                    lines += [f"{_key(k)} = {_scalar(v)}" for k, v in user.items()]
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"
