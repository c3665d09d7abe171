"""Immutable, validated configuration objects.

These are what the rest of pg_doorman reads. They are built only by :mod:`pg_doorman.config.loader`, which
has already checked every value, so consumers never re-validate. Durations are float seconds and sizes int
bytes. ``None`` on a pool or user field means "inherit from the level above"; :meth:`Config.pool_settings`
does that inheritance once, in one place, for a (database, user) pair.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from pg_doorman.auth.hba import HbaRules
from pg_doorman.config.units import parse_file_mode
from pg_doorman.config.web import WebConfig

PasswordKind = Literal["md5", "scram", "plain", "empty"]
PoolMode = Literal["transaction", "session"]

POOL_MODES: tuple[str, ...] = ("transaction", "session")
TLS_MODES: tuple[str, ...] = ("disable", "allow", "require", "verify-full")
SERVER_TLS_MODES: tuple[str, ...] = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")

MD5_PREFIX = "md5"
SCRAM_PREFIX = "SCRAM-SHA-256$"
_MD5_VERIFIER = re.compile(r"^md5[0-9a-fA-F]{32}$")
_SCRAM_VERIFIER = re.compile(r"^SCRAM-SHA-256\$(\d+):([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+):([A-Za-z0-9+/=]+)$")


def _b64(text: str) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _is_hex(text: str) -> bool:
    return all(ch in "0123456789abcdefABCDEF" for ch in text)


def password_problem(password: str) -> str | None:
    """Why ``password`` is unusable, or None.

    Plaintext is allowed, but a value that *starts* like an MD5 or SCRAM verifier and is malformed is
    almost certainly a truncated hash; taking it as plaintext would fail every login without a hint.
    """
    if password.startswith(SCRAM_PREFIX):
        match = _SCRAM_VERIFIER.match(password)
        if match is None:
            return "malformed SCRAM verifier: expected 'SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>'"
        iterations, salt, stored_key, server_key = match.groups()
        if int(iterations) < 1:
            return "malformed SCRAM verifier: iteration count must be at least 1"
        if _b64(salt) is None:
            return "malformed SCRAM verifier: salt is not valid base64"
        for name, part in (("StoredKey", stored_key), ("ServerKey", server_key)):
            decoded = _b64(part)
            if decoded is None or len(decoded) != 32:
                return f"malformed SCRAM verifier: {name} must be 32 bytes of base64"
        return None
    digest = password.removeprefix(MD5_PREFIX)
    if password.startswith(MD5_PREFIX) and len(digest) != 32 and len(digest) >= 8 and _is_hex(digest):
        return f"malformed MD5 verifier: expected 'md5' followed by 32 hex digits, got {len(digest)}"
    if password.startswith(MD5_PREFIX) and len(digest) == 32 and not _is_hex(digest):
        return "malformed MD5 verifier: expected 'md5' followed by 32 hex digits"
    return None


def classify_password(password: str) -> PasswordKind:
    """How a configured client password is stored: a verifier (md5/scram), plaintext, or empty."""
    if password == "":
        return "empty"
    if _MD5_VERIFIER.match(password):
        return "md5"
    if _SCRAM_VERIFIER.match(password):
        return "scram"
    return "plain"


@dataclass(frozen=True, slots=True)
class HbaSource:
    """Where pg_hba.conf-style rules come from: a file (re-read on reload) or inline text."""

    path: str | None = None
    content: str | None = None


@dataclass(frozen=True, slots=True)
class General:
    """The ``general`` section: listener, global timeouts and pool defaults."""

    admin_username: str
    admin_password: str
    host: str = "0.0.0.0"
    port: int = 6432
    backlog: int = 0
    max_connections: int = 8192
    connect_timeout: float = 3.0
    query_wait_timeout: float = 5.0
    client_login_timeout: float = 60.0
    idle_timeout: float = 600.0
    server_lifetime: float = 1200.0
    retain_connections_time: float = 30.0
    server_idle_check_timeout: float = 60.0
    shutdown_timeout: float = 10.0
    tcp_keepalives_idle: int = 5
    tcp_keepalives_interval: int = 5
    tcp_keepalives_count: int = 5
    tcp_user_timeout: int = 60
    tcp_no_delay: bool = True
    tcp_so_linger: int = 0
    unix_socket_dir: str | None = None
    unix_socket_mode: str = "0600"
    max_message_size: int = 256 * 1024 * 1024
    message_size_to_be_stream: int = 1024 * 1024
    server_round_robin: bool = False
    sync_server_parameters: bool = True
    prepared_statements: bool = True
    prepared_statements_cache_size: int = 8192
    server_prepared_statements_cache_size: int | None = None
    client_anonymous_prepared_cache_size: int | None = None
    pooler_check_query: str = ";"
    log_client_connections: bool = True
    log_client_disconnections: bool = True
    application_name: str = "pg_doorman"
    server_reset_query: str = "DISCARD ALL"
    server_reset_query_always: bool = False
    worker_threads: int = 1
    startup_parameters: dict[str, str] = field(default_factory=dict)
    tls_certificate: str | None = None
    tls_private_key: str | None = None
    tls_ca_cert: str | None = None
    tls_mode: str | None = None
    server_tls_mode: str = "allow"
    server_tls_ca_cert: str | None = None
    server_tls_certificate: str | None = None
    server_tls_private_key: str | None = None
    hba: tuple[str, ...] = ()
    pg_hba: HbaSource | None = None
    daemon_pid_file: str | None = None  # the original's default /tmp/pg_doorman.pid applies with -d
    syslog_prog_name: str | None = None
    # Pool engine (pool/coordinator.py, registry.py): idle servers closed per maintenance run (0 = no limit), a
    # stalled COPY or streamed message (0 = no limit), resident memory above which clients are refused (0 = off).
    retain_connections_max: int = 3
    proxy_copy_data_timeout: float = 15.0
    max_memory_usage: int = 256 * 1024 * 1024

    @property
    def unix_socket_permissions(self) -> int:
        """``unix_socket_mode`` as permission bits for ``os.chmod`` (validated at load)."""
        return parse_file_mode(self.unix_socket_mode)


@dataclass(frozen=True, slots=True)
class UserConfig:
    """One ``pools.<db>.users[]`` entry: a client login and the size of its server pool."""

    username: str
    password: str
    pool_size: int
    min_pool_size: int = 0
    pool_mode: str | None = None
    server_username: str | None = None
    server_password: str | None = None
    application_name: str | None = None
    server_lifetime: float | None = None
    idle_timeout: float | None = None

    @property
    def password_kind(self) -> PasswordKind:
        return classify_password(self.password)


@dataclass(frozen=True, slots=True)
class AuthQueryConfig:
    """A ``pools.<name>.auth_query`` section: users that only PostgreSQL knows (auth/auth_query.py).

    ``query`` is run with ``$1`` = the user name on ``workers`` connections that log in as ``user`` with
    ``password`` (plaintext) to ``database`` (None: the pool's server_database). With ``server_user`` every such
    user shares one pool whose servers log in as that role (dedicated mode); without it each user gets a pool of
    its own that logs in as the user with the verifier the query returned (passthrough mode). Durations in s.
    """

    query: str
    user: str
    password: str = ""
    database: str | None = None
    workers: int = 2
    server_user: str | None = None
    server_password: str | None = None
    pool_size: int = 40
    min_pool_size: int = 0
    cache_ttl: float = 3600.0
    cache_failure_ttl: float = 30.0
    min_interval: float = 1.0

    @property
    def dedicated(self) -> bool:
        return self.server_user is not None


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """One ``pools.<name>`` section; ``name`` is the database name clients connect to."""

    name: str
    server_database: str
    server_host: str = "127.0.0.1"
    server_port: int = 5432
    pool_mode: str = "transaction"
    connect_timeout: float | None = None
    idle_timeout: float | None = None
    server_lifetime: float | None = None
    cleanup_server_connections: bool = True
    server_reset_query: str | None = None
    server_reset_query_always: bool | None = None
    application_name: str | None = None
    prepared_statements_cache_size: int | None = None
    server_prepared_statements_cache_size: int | None = None
    log_client_parameter_status_changes: bool = False
    startup_parameters: dict[str, str] = field(default_factory=dict)
    users: tuple[UserConfig, ...] = ()
    # Pool engine, per database (pool/coordinator.py): a cap on server connections over all its users (0 = none),
    # the reserve above pool_size / that cap, and what eviction and reserve release leave alone.
    max_db_connections: int = 0
    min_connection_lifetime: float = 30.0
    reserve_pool_size: int = 0
    reserve_pool_timeout: float = 3.0
    min_guaranteed_pool_size: int = 0
    auth_query: AuthQueryConfig | None = None

    def user(self, username: str) -> UserConfig | None:
        for user in self.users:
            if user.username == username:
                return user
        return None


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """Everything one (database, user) pool needs, with inheritance already applied."""

    database: str
    username: str
    password: str
    server_host: str
    server_port: int
    server_database: str
    server_username: str
    server_password: str | None  # None: authenticate to PostgreSQL with the client's own proof
    pool_mode: str
    pool_size: int
    min_pool_size: int
    connect_timeout: float
    idle_timeout: float
    server_lifetime: float
    query_wait_timeout: float
    server_idle_check_timeout: float
    cleanup_server_connections: bool
    server_reset_query: str  # "" = none; run at release in session mode (or always, see reset.py)
    server_reset_query_always: bool
    application_name: str
    prepared_statements: bool  # effective: False in session mode, where no remapping is needed
    prepared_statements_cache_size: int
    server_prepared_statements_cache_size: int
    client_anonymous_prepared_cache_size: int
    sync_server_parameters: bool
    startup_parameters: dict[str, str]
    server_round_robin: bool
    log_client_parameter_status_changes: bool
    # Pool engine (pool/coordinator.py): the database's limits, and this user's eviction floor
    # (max(min_pool_size, min_guaranteed_pool_size)).
    max_db_connections: int
    min_connection_lifetime: float
    reserve_pool_size: int
    reserve_pool_timeout: float
    guaranteed_pool_size: int
    # Built by auth_query (auth/auth_query.py) for users the configuration does not list, not from users[].
    auth_query: bool = False

    @property
    def password_kind(self) -> PasswordKind:
        return classify_password(self.password)


_T = TypeVar("_T")


def _first(*values: _T | None) -> _T:
    for value in values:
        if value is not None:
            return value
    raise ValueError("no value to inherit")  # unreachable: the last level always has a default


@dataclass(frozen=True, slots=True)
class Config:
    """A whole loaded configuration.

    ``warnings``: accepted but discouraged or without effect (deprecated keys, keys the original ignores).
    ``not_active``: settings of the original accepted now and put into effect later (config/later.py).
    ``refusals``: why pg_doorman must not start with this file (a setting it cannot honour would widen access);
    ``-t`` fails and startup stops when there is any.
    """

    path: str
    general: General
    pools: dict[str, PoolConfig] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    not_active: tuple[str, ...] = ()
    refusals: tuple[str, ...] = ()
    web: WebConfig = field(default_factory=WebConfig)
    # The rules of general.pg_hba (its file is read at every load and reload) or of the legacy general.hba list;
    # None: no access rules, every client logs in with its password (auth/policy.py).
    access_rules: HbaRules | None = None

    def pool_settings(self, db: str, username: str) -> PoolSettings | None:
        """Resolve the pool for ``db`` and ``username`` (user → pool → general), or None if unknown."""
        pool = self.pools.get(db)
        if pool is None:
            return None
        user = pool.user(username)
        if user is None:
            return None
        return _resolve(self.general, pool, user)

    def all_pool_settings(self) -> list[PoolSettings]:
        """Resolved settings of every configured (database, user) pair, in file order."""
        return [_resolve(self.general, pool, user) for pool in self.pools.values() for user in pool.users]

    def auth_query_templates(self) -> list[tuple[AuthQueryConfig, PoolSettings]]:
        """Every auth_query section with the settings its pools inherit (pool section, then general), as a
        pool for a nameless user with auth_query's pool_size / min_pool_size: `AuthQuery` fills in the name."""
        templates = []
        for pool in self.pools.values():
            aq = pool.auth_query
            if aq is not None:
                user = UserConfig(username="", password="", pool_size=aq.pool_size, min_pool_size=aq.min_pool_size)
                templates.append((aq, _resolve(self.general, pool, user)))
        return templates


def _resolve(general: General, pool: PoolConfig, user: UserConfig) -> PoolSettings:
    pool_mode = _first(user.pool_mode, pool.pool_mode)
    cache_size = _first(pool.prepared_statements_cache_size, general.prepared_statements_cache_size)
    return PoolSettings(
        database=pool.name,
        username=user.username,
        password=user.password,
        server_host=pool.server_host,
        server_port=pool.server_port,
        server_database=pool.server_database,
        server_username=_first(user.server_username, user.username),
        server_password=user.server_password,
        pool_mode=pool_mode,
        pool_size=user.pool_size,
        min_pool_size=user.min_pool_size,
        connect_timeout=_first(pool.connect_timeout, general.connect_timeout),
        idle_timeout=_first(user.idle_timeout, pool.idle_timeout, general.idle_timeout),
        server_lifetime=_first(user.server_lifetime, pool.server_lifetime, general.server_lifetime),
        query_wait_timeout=general.query_wait_timeout,
        server_idle_check_timeout=general.server_idle_check_timeout,
        cleanup_server_connections=pool.cleanup_server_connections,
        server_reset_query=_first(pool.server_reset_query, general.server_reset_query),
        server_reset_query_always=_first(pool.server_reset_query_always, general.server_reset_query_always),
        application_name=_first(user.application_name, pool.application_name, general.application_name),
        prepared_statements=general.prepared_statements and pool_mode == "transaction",
        prepared_statements_cache_size=cache_size,
        server_prepared_statements_cache_size=_first(
            pool.server_prepared_statements_cache_size, general.server_prepared_statements_cache_size, cache_size
        ),
        client_anonymous_prepared_cache_size=_first(general.client_anonymous_prepared_cache_size, cache_size),
        sync_server_parameters=general.sync_server_parameters,
        startup_parameters={**general.startup_parameters, **pool.startup_parameters},
        server_round_robin=general.server_round_robin,
        log_client_parameter_status_changes=pool.log_client_parameter_status_changes,
        max_db_connections=pool.max_db_connections,
        min_connection_lifetime=pool.min_connection_lifetime,
        reserve_pool_size=pool.reserve_pool_size,
        reserve_pool_timeout=pool.reserve_pool_timeout,
        guaranteed_pool_size=max(user.min_pool_size, pool.min_guaranteed_pool_size),
    )
