"""An annotated example configuration (``pg_doorman generate --reference``), in YAML or TOML.

The example is described once as data (key, value, comment) and rendered into either format, so the two
cannot drift apart. Values of ``general`` come from the :class:`General` defaults, so the example always
shows the real defaults; a test loads both renderings back through :func:`load_config`.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass
from typing import Literal

from pg_doorman.config.schema import General
from pg_doorman.config.units import format_duration, format_size

Format = Literal["yaml", "toml"]
Value = str | int | bool | list[str] | dict[str, str]

_COMMENT_WIDTH = 100


@dataclass(frozen=True, slots=True)
class _Key:
    name: str
    value: Value
    comment: str
    commented_out: bool = False  # optional setting shown for reference, not enabled


_D = General(admin_username="admin", admin_password="")

_HEADER = """\
pg_doorman configuration (example with every setting explained).
Durations: integer milliseconds or a string with a unit: "250ms", "30s", "5m", "1h", "1d".
Sizes: integer bytes or a string with a 1024-based unit: "512B", "64KB", "1MB", "1G".
Unknown keys are rejected; check a file with `pg_doorman -t FILE`."""

_GENERAL: tuple[_Key, ...] = (
    _Key("host", _D.host, "Address to listen on for clients (IPv4 or IPv6)."),
    _Key("port", _D.port, "Port to listen on for clients."),
    _Key("backlog", _D.backlog, "listen(2) backlog; 0 uses max_connections."),
    _Key("max_connections", _D.max_connections, "Most clients connected at once; more get 'too many clients'."),
    _Key("unix_socket_dir", "/var/run/postgresql", "Also listen on <dir>/.s.PGSQL.<port>.", commented_out=True),
    _Key("unix_socket_mode", _D.unix_socket_mode, "Permissions of the Unix socket file (octal, quoted)."),
    _Key("admin_username", "admin", "Login for the admin console (database 'pgdoorman'). Required."),
    _Key("admin_password", "change_me", "Password for the admin console. Required."),
    _Key("connect_timeout", format_duration(_D.connect_timeout), "Deadline to connect and log in to PostgreSQL."),
    _Key(
        "query_wait_timeout",
        format_duration(_D.query_wait_timeout),
        "How long a client may wait for a free server connection before it gets an error.",
    ),
    _Key(
        "client_login_timeout",
        format_duration(_D.client_login_timeout),
        "A client must finish startup and authentication within this time, or it is disconnected; 0 = no limit.",
    ),
    _Key("idle_timeout", format_duration(_D.idle_timeout), "Close server connections idle this long; 0 = never."),
    _Key("server_lifetime", format_duration(_D.server_lifetime), "Close server connections this old; 0 = never."),
    _Key(
        "retain_connections_time",
        format_duration(_D.retain_connections_time),
        "Interval of the maintenance loop that closes idle/old connections and refills min_pool_size.",
    ),
    _Key(
        "server_idle_check_timeout",
        format_duration(_D.server_idle_check_timeout),
        "Probe a server connection idle longer than this before handing it out; 0 = never.",
    ),
    _Key("shutdown_timeout", format_duration(_D.shutdown_timeout), "How long a graceful shutdown lets clients finish."),
    _Key("tcp_keepalives_idle", _D.tcp_keepalives_idle, "TCP keepalive: seconds idle before the first probe."),
    _Key("tcp_keepalives_interval", _D.tcp_keepalives_interval, "TCP keepalive: seconds between probes."),
    _Key("tcp_keepalives_count", _D.tcp_keepalives_count, "TCP keepalive: probes lost before the peer is dead."),
    _Key("tcp_user_timeout", _D.tcp_user_timeout, "TCP_USER_TIMEOUT in seconds (Linux); 0 = off."),
    _Key("tcp_no_delay", _D.tcp_no_delay, "Disable Nagle's algorithm (lower latency)."),
    _Key("tcp_so_linger", _D.tcp_so_linger, "SO_LINGER seconds on close; 0 resets the connection at once."),
    _Key("max_message_size", format_size(_D.max_message_size), "Largest client message accepted."),
    _Key(
        "message_size_to_be_stream",
        format_size(_D.message_size_to_be_stream),
        "Server messages larger than this are streamed to the client instead of buffered.",
    ),
    _Key("server_round_robin", _D.server_round_robin, "false: reuse the most recent idle server (LIFO); true: FIFO."),
    _Key(
        "sync_server_parameters",
        _D.sync_server_parameters,
        "Transaction mode: make the server's session parameters match the client's at each checkout.",
    ),
    _Key(
        "prepared_statements",
        _D.prepared_statements,
        "Transaction mode: keep clients' prepared statements working across server connections.",
    ),
    _Key(
        "prepared_statements_cache_size",
        _D.prepared_statements_cache_size,
        "Prepared statements remembered per pool (must be > 0 when prepared_statements is on).",
    ),
    _Key(
        "server_prepared_statements_cache_size",
        _D.prepared_statements_cache_size,
        "Statements kept prepared per server connection; default = prepared_statements_cache_size.",
        commented_out=True,
    ),
    _Key(
        "client_anonymous_prepared_cache_size",
        _D.prepared_statements_cache_size,
        "Unnamed statements remembered per client; default = prepared_statements_cache_size.",
        commented_out=True,
    ),
    _Key("pooler_check_query", _D.pooler_check_query, "Health-check query answered by the pooler itself."),
    _Key("log_client_connections", _D.log_client_connections, "Log every client connection."),
    _Key("log_client_disconnections", _D.log_client_disconnections, "Log every client disconnection."),
    _Key("application_name", _D.application_name, "application_name sent to PostgreSQL (pools may override)."),
    _Key(
        "server_reset_query",
        _D.server_reset_query,
        "Run when a session-mode client leaves its server (as in PgBouncer); '' = none. Pools may override.",
    ),
    _Key(
        "server_reset_query_always",
        _D.server_reset_query_always,
        "Also run server_reset_query after every transaction in transaction mode.",
    ),
    _Key(
        "worker_threads",
        _D.worker_threads,
        "Accepted for compatibility with the original pg_doorman; one process serves (worker processes: later).",
    ),
    _Key(
        "daemon_pid_file",
        "/run/pg_doorman/pg_doorman.pid",
        "Pid file, written with -d (default /tmp/pg_doorman.pid) and in the foreground when set.",
        commented_out=True,
    ),
    _Key("syslog_prog_name", "pg_doorman", "Log to syslog (/dev/log) under this name.", commented_out=True),
    _Key(
        "startup_parameters",
        {"jit": "off"},
        "Parameters sent in every server StartupMessage; a pool's own startup_parameters override these.",
    ),
    _Key("tls_certificate", "/etc/pg_doorman/server.crt", "Client TLS: certificate (PEM).", commented_out=True),
    _Key("tls_private_key", "/etc/pg_doorman/server.key", "Client TLS: private key (PEM).", commented_out=True),
    _Key("tls_ca_cert", "/etc/pg_doorman/ca.crt", "Client TLS: CA for verify-full.", commented_out=True),
    _Key("tls_mode", "allow", "Client TLS: disable, allow, require or verify-full.", commented_out=True),
    _Key(
        "server_tls_mode",
        _D.server_tls_mode,
        "TLS to PostgreSQL: disable, allow, prefer, require, verify-ca or verify-full.",
    ),
    _Key("server_tls_ca_cert", "/etc/pg_doorman/pg-ca.crt", "CA bundle for verify-ca/full.", commented_out=True),
    _Key("server_tls_certificate", "/etc/pg_doorman/client.crt", "Client certificate (mTLS).", commented_out=True),
    _Key("server_tls_private_key", "/etc/pg_doorman/client.key", "Key of that certificate.", commented_out=True),
    _Key("hba", ["10.0.0.0/8"], "Legacy allow-list of client networks; exclusive with pg_hba.", commented_out=True),
    _Key(
        "pg_hba",
        {"content": "host all all 0.0.0.0/0 md5"},
        "pg_hba.conf rules (PostgreSQL's grammar, first match decides): the rules as a string, or a table with "
        "either path (a file, re-read on reload) or content.",
        commented_out=True,
    ),
    # pool engine
    _Key(
        "retain_connections_max",
        _D.retain_connections_max,
        "Most idle connections closed for idle_timeout/server_lifetime per maintenance run (every pool); 0 = all.",
    ),
    _Key(
        "proxy_copy_data_timeout",
        format_duration(_D.proxy_copy_data_timeout),
        "A COPY (or a message being passed on) with no data either way this long ends its client; 0 = never.",
    ),
    _Key(
        "max_memory_usage",
        format_size(_D.max_memory_usage),
        "Resident memory above which new clients and clients that would wait are refused (53200); 0 = off.",
    ),
)

_POOL_NAME = "mydb"
_POOL: tuple[_Key, ...] = (
    _Key("server_host", "127.0.0.1", "PostgreSQL host, or a directory (starting with /) holding its Unix socket."),
    _Key("server_port", 5432, "PostgreSQL port."),
    _Key("server_database", "mydb", "Database name on PostgreSQL; default = the pool name clients use."),
    _Key("pool_mode", "transaction", "transaction (server released after each transaction) or session."),
    _Key("connect_timeout", "3s", "Override of general.connect_timeout.", commented_out=True),
    _Key("idle_timeout", "10m", "Override of general.idle_timeout.", commented_out=True),
    _Key("server_lifetime", "1h", "Override of general.server_lifetime.", commented_out=True),
    _Key(
        "cleanup_server_connections",
        True,
        "Reset session state (RESET ALL, DEALLOCATE ALL...) when a client leaves a dirty server connection.",
    ),
    _Key("server_reset_query", "DISCARD ALL", "Override of general.server_reset_query.", commented_out=True),
    _Key("application_name", "mydb_pool", "Override of general.application_name.", commented_out=True),
    _Key("prepared_statements_cache_size", 4096, "Override of the general setting.", commented_out=True),
    _Key("server_prepared_statements_cache_size", 1024, "Override of the general setting.", commented_out=True),
    _Key("log_client_parameter_status_changes", False, "Log parameter changes PostgreSQL reports (SET...)."),
    _Key("startup_parameters", {"statement_timeout": "30s"}, "Pool-specific startup parameters."),
    # pool engine
    _Key("max_db_connections", 0, "Most server connections to this database over all its users; 0 = no cap."),
    _Key("min_connection_lifetime", "30s", "Servers younger than this are not evicted for another user."),
    _Key("reserve_pool_size", 0, "Extra connections above pool_size (and max_db_connections) for long waits."),
    _Key("reserve_pool_timeout", "3s", "A client waiting this long lets its pool use the reserve."),
    _Key("min_guaranteed_pool_size", 0, "Servers per user that eviction never takes (with min_pool_size)."),
)

_USERS: tuple[tuple[_Key, ...], ...] = (
    (
        _Key("username", "app", "Name the client logs in with."),
        _Key(
            "password",
            "md50e9070b976a76706bb4bc4369e934be1",
            "'md5' + md5(password || username), a SCRAM-SHA-256 verifier (from pg_shadow / pg_authid) or "
            "plaintext. Without server_password the client's proof is passed through to PostgreSQL.",
        ),
        _Key("pool_size", 40, "Most server connections for this user and database. Required."),
        _Key("min_pool_size", 0, "Server connections kept open even when idle (at most pool_size)."),
        _Key("server_lifetime", "30m", "Override of the pool's server_lifetime.", commented_out=True),
        _Key("idle_timeout", "5m", "Override of the pool's idle_timeout.", commented_out=True),
    ),
    (
        _Key("username", "reporting", "A second user, in session mode, logging in to PostgreSQL as another role."),
        _Key(
            "password",
            "SCRAM-SHA-256$4096:cGdfZG9vcm1hbl9zYWx0IQ==$5r9BH51vpnVOrZgEEJeNNWlLuJHAzaayuLGC9evqntA="
            ":sTGhVt58aAxg4jbDI0flvEOtb/vHUZ8MRnKMV3wzIyw=",
            "SCRAM-SHA-256 verifier of the client password.",
        ),
        _Key("pool_size", 5, "Most server connections for this user and database."),
        _Key("min_pool_size", 1, "Keep one connection warm."),
        _Key("pool_mode", "session", "Override of the pool's pool_mode."),
        _Key("server_username", "reporting_ro", "PostgreSQL role to log in as (default: username)."),
        _Key("server_password", "reporting_ro_password", "Plaintext password of server_username."),
        _Key("application_name", "reporting", "Override of the pool's application_name."),
    ),
)


def _scalar(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(value)  # a JSON string is a valid double-quoted string in both YAML and TOML


def _value(value: Value, fmt: Format) -> str:
    if isinstance(value, dict):
        separator = ": " if fmt == "yaml" else " = "
        items = ", ".join(f"{name}{separator}{_scalar(item)}" for name, item in value.items())
        return "{ " + items + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_scalar(item) for item in value) + "]"
    return _scalar(value)


def _comment(text: str, indent: str) -> list[str]:
    width = max(40, _COMMENT_WIDTH - len(indent))
    wrapped = [part for line in text.splitlines() for part in textwrap.wrap(line, width) or [""]]
    return [f"{indent}# {line}".rstrip() for line in wrapped]


def _key_lines(key: _Key, fmt: Format, indent: str, first_prefix: str = "") -> list[str]:
    """Comment lines, then ``key: value`` (YAML) or ``key = value`` (TOML), commented out if optional."""
    separator = ": " if fmt == "yaml" else " = "
    assignment = f"{key.name}{separator}{_value(key.value, fmt)}"
    lead = indent if not first_prefix else indent[: -len(first_prefix)] + first_prefix
    line = f"{indent}# {assignment}" if key.commented_out else f"{lead}{assignment}"
    return [*_comment(key.comment, indent), line]


def _yaml() -> list[str]:
    lines = [*_comment(_HEADER, ""), "", "general:"]
    for key in _GENERAL:
        lines += _key_lines(key, "yaml", "  ")
    lines += ["", "# Pools: the name is the database name clients connect to.", "pools:", f"  {_POOL_NAME}:"]
    for key in _POOL:
        lines += _key_lines(key, "yaml", "    ")
    lines += ["    # Client logins allowed for this database, each with its own server pool.", "    users:"]
    for user in _USERS:
        # The list item's "- " goes on the first uncommented key; its comment stays aligned above it.
        for position, key in enumerate(user):
            key_lines = _key_lines(key, "yaml", "        ", "- " if position == 0 else "")
            lines += key_lines
    return lines


def _toml() -> list[str]:
    lines = [*_comment(_HEADER, ""), "", "[general]"]
    for key in _GENERAL:
        lines += _key_lines(key, "toml", "")
    lines += ["", "# Pools: the name is the database name clients connect to.", f"[pools.{_POOL_NAME}]"]
    for key in _POOL:
        lines += _key_lines(key, "toml", "")
    for user in _USERS:
        lines += ["", "# A client login allowed for this database, with its own server pool.", "[[pools.mydb.users]]"]
        for key in user:
            lines += _key_lines(key, "toml", "")
    return lines


def generate_example_config(fmt: str = "yaml") -> str:
    """An annotated example configuration in ``fmt`` ("yaml" or "toml") that loads as it is."""
    fmt = fmt.lower()
    if fmt in ("yaml", "yml"):
        return "\n".join(_yaml()) + "\n"
    if fmt == "toml":
        return "\n".join(_toml()) + "\n"
    raise ValueError(f"unknown config format {fmt!r}: expected 'yaml' or 'toml'")
