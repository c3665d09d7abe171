"""Turning a configuration file into a validated :class:`Config`, and the ``pg_doorman -t`` check.

Reading is section by section (``general``, ``pools.<name>``, ``pools.<name>.users[]``); each reader asks
for its keys with a type, which both converts the value and declares the key as known (see
:mod:`pg_doorman.config.reader`). Every problem in every included file is collected before a single
:class:`ConfigError` is raised.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pg_doorman.auth.hba import HbaError, HbaRules, legacy_rules, load_hba_file, parse_hba
from pg_doorman.config import later
from pg_doorman.config.errors import ConfigError, KeyPath, format_key_path
from pg_doorman.config.reader import Problems, Section, describe
from pg_doorman.config.schema import (
    POOL_MODES,
    SERVER_TLS_MODES,
    TLS_MODES,
    AuthQueryConfig,
    Config,
    General,
    HbaSource,
    PoolConfig,
    UserConfig,
    password_problem,
)
from pg_doorman.config.sources import load_source
from pg_doorman.config.web import read_web

# Startup packet keys the pooler sets itself (or that would change the session's identity behind its back).
_RESERVED_PARAMETERS = ("user", "database", "replication", "options", "role", "session_authorization")
_GUC_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
# The original's limit: PostgreSQL rejects a StartupMessage over 10 000 bytes; 512 are kept for user, database
# and application_name.
STARTUP_PARAMETERS_MAX_BYTES = 10_000 - 512
MAX_PORT = 65535
# Database names that reach the admin console; a pool with one of these names could never be used.
ADMIN_DATABASES = ("pgdoorman", "pgbouncer")


def _startup_parameters(section: Section) -> dict[str, str]:
    """``startup_parameters`` with names lowercased (GUC names are case-insensitive) and values as text."""
    value = section.raw("startup_parameters")
    if value is None:
        return {}
    if not isinstance(value, dict):
        section.error("startup_parameters", f"expected a table of parameter = value, got {describe(value)}")
        return {}
    parameters: dict[str, str] = {}
    base = section.key_path("startup_parameters")
    for name, raw in value.items():
        path: KeyPath = (*base, name)
        canonical = name.lower()
        if canonical in _RESERVED_PARAMETERS:
            section.problems.add(path, f"'{name}' is set by pg_doorman itself and cannot be a startup parameter")
            continue
        if canonical.startswith("_pq_."):
            section.problems.add(path, "protocol extension options ('_pq_.*') cannot be startup parameters")
            continue
        if not _GUC_NAME.match(name):
            section.problems.add(path, "not a valid parameter name (letters, digits, '_' and '.')")
            continue
        if canonical in parameters:
            section.problems.add(path, f"parameter '{canonical}' is set twice (names are case-insensitive)")
            continue
        if isinstance(raw, bool):  # YAML reads `jit: off` as false; PostgreSQL wants on/off
            text = "on" if raw else "off"
        elif isinstance(raw, str | int | float):
            text = str(raw)
        else:
            section.problems.add(path, f"expected a string value, got {describe(raw)}")
            continue
        if "\0" in text:
            section.problems.add(path, "value must not contain NUL bytes")
            continue
        parameters[canonical] = text
    return parameters


def _startup_parameters_size(parameters: dict[str, str]) -> int:
    return sum(len(name.encode()) + len(value.encode()) + 2 for name, value in parameters.items())


def _reset_query(section: Section) -> str | None:
    """``server_reset_query``: SQL sent as one Query message (so no NUL); "" means no reset query."""
    value = section.optional_string("server_reset_query")
    if value is not None and "\0" in value:
        section.error("server_reset_query", "must not contain NUL bytes")
        return None
    return value


def _first_set(value: str | None, default: str) -> str:
    return default if value is None else value


def existing_file(section: Section, key: str) -> str | None:
    """A path setting, resolved against the directory of the file that set it and checked to exist."""
    value = section.optional_string(key, allow_empty=False)
    if value is None:
        return None
    path = section.key_path(key)
    resolved = Path(section.problems.source.file_of(path)).parent / Path(value).expanduser()
    if not resolved.is_file():
        section.error(key, f"file not found: {resolved}")
    return str(resolved)


def _pg_hba(section: Section) -> HbaSource | None:
    value = section.raw("pg_hba")
    if value is None:
        return None
    if isinstance(value, str):
        return HbaSource(content=value)
    table = section.table("pg_hba")
    if table is None:
        return None
    if table.has("path") == table.has("content"):
        section.error("pg_hba", "expected exactly one of 'path' or 'content'")
    content = table.optional_string("content")
    path = existing_file(table, "path")
    table.finish()
    return HbaSource(path=path, content=content)


def _access_rules(s: Section, legacy: tuple[str, ...], source: HbaSource | None) -> HbaRules | None:
    """Parse the access rules (pg_hba text or file, or the legacy CIDR list) now, so that a bad line stops the
    load (and a reload keeps the running rules) and a changed file makes a changed configuration."""
    key = "pg_hba" if source is not None else "hba"
    try:
        if source is not None and source.path is not None:
            if not Path(source.path).is_file():
                return None  # already reported by existing_file
            rules = load_hba_file(source.path)
        elif source is not None:
            config_file = s.problems.source.file_of(s.key_path("pg_hba"))
            rules = parse_hba(
                source.content or "", source=f"{config_file} (general.pg_hba)", base_dir=Path(config_file).parent
            )
        elif legacy:
            rules = legacy_rules(legacy)
            s.problems.warn(
                s.key_path("hba"),
                "the legacy allow-list: clients from these networks and Unix-socket clients log in with their "
                "password, all others are refused; pg_hba says the same and more",
            )
        else:
            return None
    except HbaError as exc:
        for line in exc.lines:
            s.error(key, line)
        return None
    for line in rules.warnings:
        s.problems.warn(s.key_path(key), line)
    return rules


def _read_general(root: Section) -> tuple[General, HbaRules | None]:
    s = root.table("general")
    if s is None:
        if not root.has("general"):
            root.error("general", "required section is missing")
        s = Section(root.problems, ("general",), {})  # still build a General so pools can be checked
        admin_username: str | None = ""
        admin_password: str | None = ""
    else:
        admin_username = s.required_string("admin_username", allow_empty=False)
        admin_password = s.required_string("admin_password")

    anonymous_cache = s.optional_integer("client_anonymous_prepared_cache_size")
    if s.has("client_prepared_statements_cache_size"):
        legacy = s.optional_integer("client_prepared_statements_cache_size")
        if s.has("client_anonymous_prepared_cache_size"):
            s.error("client_prepared_statements_cache_size", "set only 'client_anonymous_prepared_cache_size'")
        else:
            anonymous_cache = legacy
            s.problems.warn(
                s.key_path("client_prepared_statements_cache_size"),
                "deprecated key; use 'client_anonymous_prepared_cache_size'",
            )

    daemon_pid_file, syslog_prog_name = later.read_general(s)
    hba = s.string_list("hba")
    pg_hba = _pg_hba(s)
    general = General(
        admin_username=admin_username or "",
        admin_password=admin_password or "",
        host=s.string("host", "0.0.0.0", allow_empty=False),
        port=s.integer("port", 6432, minimum=1, maximum=MAX_PORT),
        backlog=s.integer("backlog", 0),
        max_connections=s.integer("max_connections", 8192, minimum=1),
        connect_timeout=s.duration("connect_timeout", 3.0),
        query_wait_timeout=s.duration("query_wait_timeout", 5.0),
        client_login_timeout=s.duration("client_login_timeout", 60.0),
        idle_timeout=s.duration("idle_timeout", 600.0),
        server_lifetime=s.duration("server_lifetime", 1200.0),
        retain_connections_time=s.duration("retain_connections_time", 30.0),
        server_idle_check_timeout=s.duration("server_idle_check_timeout", 60.0),
        shutdown_timeout=s.duration("shutdown_timeout", 10.0),
        tcp_keepalives_idle=s.integer("tcp_keepalives_idle", 5),
        tcp_keepalives_interval=s.integer("tcp_keepalives_interval", 5),
        tcp_keepalives_count=s.integer("tcp_keepalives_count", 5),
        tcp_user_timeout=s.integer("tcp_user_timeout", 60),
        tcp_no_delay=s.boolean("tcp_no_delay", True),
        tcp_so_linger=s.integer("tcp_so_linger", 0),
        unix_socket_dir=s.optional_string("unix_socket_dir", allow_empty=False),
        unix_socket_mode=s.file_mode("unix_socket_mode", "0600"),
        max_message_size=s.size("max_message_size", 256 * 1024 * 1024),
        message_size_to_be_stream=s.size("message_size_to_be_stream", 1024 * 1024),
        server_round_robin=s.boolean("server_round_robin", False),
        sync_server_parameters=s.boolean("sync_server_parameters", True),
        prepared_statements=s.boolean("prepared_statements", True),
        prepared_statements_cache_size=s.integer("prepared_statements_cache_size", 8192),
        server_prepared_statements_cache_size=s.optional_integer("server_prepared_statements_cache_size"),
        client_anonymous_prepared_cache_size=anonymous_cache,
        pooler_check_query=s.string("pooler_check_query", ";", allow_empty=False),
        log_client_connections=s.boolean("log_client_connections", True),
        log_client_disconnections=s.boolean("log_client_disconnections", True),
        application_name=s.string("application_name", "pg_doorman"),
        server_reset_query=_first_set(_reset_query(s), "DISCARD ALL"),
        server_reset_query_always=s.boolean("server_reset_query_always", False),
        worker_threads=s.integer("worker_threads", 1, minimum=1),
        startup_parameters=_startup_parameters(s),
        tls_certificate=existing_file(s, "tls_certificate"),
        tls_private_key=existing_file(s, "tls_private_key"),
        tls_ca_cert=existing_file(s, "tls_ca_cert"),
        tls_mode=s.optional_choice("tls_mode", TLS_MODES),
        server_tls_mode=s.choice("server_tls_mode", "allow", SERVER_TLS_MODES),
        server_tls_ca_cert=existing_file(s, "server_tls_ca_cert"),
        server_tls_certificate=existing_file(s, "server_tls_certificate"),
        server_tls_private_key=existing_file(s, "server_tls_private_key"),
        hba=hba,
        pg_hba=pg_hba,
        daemon_pid_file=daemon_pid_file,
        syslog_prog_name=syslog_prog_name,
        # pool engine
        retain_connections_max=s.integer("retain_connections_max", 3),
        proxy_copy_data_timeout=s.duration("proxy_copy_data_timeout", 15.0),
        max_memory_usage=s.size("max_memory_usage", 256 * 1024 * 1024),
    )
    _check_general(s, general)
    if general.worker_threads > 1:
        s.problems.note(
            s.key_path("worker_threads"),
            "not active yet in this version (worker processes: one process serves); accepted and ignored",
        )
    later.tls_notes(
        s,
        client_certificate=general.tls_certificate is not None,
        tls_mode=general.tls_mode,
        server_tls_mode=general.server_tls_mode,
    )
    access_rules = _access_rules(s, hba, pg_hba) if not (hba and pg_hba) else None
    s.finish()
    return general, access_rules


def _check_general(s: Section, general: General) -> None:
    """Rules that span several keys of ``general``."""
    if general.max_message_size < 1024:
        s.error("max_message_size", "must be at least 1KB")
    if general.retain_connections_time <= 0:
        s.error("retain_connections_time", "must be greater than zero (it is the maintenance interval)")
    if general.prepared_statements and general.prepared_statements_cache_size == 0:
        s.error("prepared_statements_cache_size", "must be greater than 0 while prepared_statements is on")
    if general.hba and general.pg_hba is not None:
        s.error("hba", "use either 'hba' or 'pg_hba', not both")
    if (general.tls_certificate is None) != (general.tls_private_key is None):
        s.error("tls_certificate", "set both tls_certificate and tls_private_key, or neither")
    if general.tls_mode in ("require", "verify-full") and general.tls_certificate is None:
        s.error("tls_mode", f"'{general.tls_mode}' needs tls_certificate and tls_private_key")
    if general.tls_mode == "verify-full" and general.tls_ca_cert is None:
        s.error("tls_mode", "'verify-full' needs tls_ca_cert to verify client certificates")
    if (general.server_tls_certificate is None) != (general.server_tls_private_key is None):
        s.error("server_tls_certificate", "set both server_tls_certificate and server_tls_private_key, or neither")
    if general.server_tls_mode in ("verify-ca", "verify-full") and general.server_tls_ca_cert is None:
        s.error("server_tls_mode", f"'{general.server_tls_mode}' needs server_tls_ca_cert")
    if _startup_parameters_size(general.startup_parameters) > STARTUP_PARAMETERS_MAX_BYTES:
        s.error("startup_parameters", f"too large: at most {STARTUP_PARAMETERS_MAX_BYTES} bytes in total")


def _read_user(s: Section) -> UserConfig | None:
    username = s.required_string("username", allow_empty=False)
    password = s.required_string("password")
    pool_size = s.required_integer("pool_size", minimum=1)
    min_pool_size = s.integer("min_pool_size", 0)
    server_username = s.optional_string("server_username", allow_empty=False)
    server_password = s.optional_string("server_password")
    pool_mode = s.optional_choice("pool_mode", POOL_MODES)
    application_name = s.optional_string("application_name")
    server_lifetime = s.optional_duration("server_lifetime")
    idle_timeout = s.optional_duration("idle_timeout")
    if password is not None and (problem := password_problem(password)) is not None:
        s.error("password", problem)
    if pool_size is not None and min_pool_size > pool_size:
        s.error("min_pool_size", f"must not exceed pool_size ({pool_size}), got {min_pool_size}")
    if server_password is not None and server_username is None:
        s.error("server_password", "requires server_username (the PostgreSQL role to log in as)")
    later.read_user(s)
    s.finish()
    if username is None or password is None or pool_size is None:
        return None
    return UserConfig(
        username=username,
        password=password,
        pool_size=pool_size,
        min_pool_size=min_pool_size,
        server_username=server_username,
        server_password=server_password,
        pool_mode=pool_mode,
        application_name=application_name,
        server_lifetime=server_lifetime,
        idle_timeout=idle_timeout,
    )


def _user_sections(pool: Section) -> list[Section]:
    """``users`` as a list of tables: a list (YAML, ``[[pools.db.users]]``) or ``[pools.db.users.0]`` tables."""
    value = pool.raw("users")
    if value is None:
        return []
    base = pool.key_path("users")
    if isinstance(value, dict):
        # TOML's `[pools.db.users.0]` form: numeric keys give the order.
        entries: list[tuple[KeyPath, object]] = []
        for key, item in value.items():
            if key.isdigit():
                entries.append(((*base, key), item))
            else:
                pool.problems.add((*base, key), "invalid user key: expected a numeric index or the array form")
        entries.sort(key=lambda entry: int(str(entry[0][-1])))
    elif isinstance(value, list):
        entries = [((*base, index), item) for index, item in enumerate(value)]
    else:
        pool.error("users", f"expected a list of users, got {describe(value)}")
        return []
    sections = []
    for path, item in entries:
        if isinstance(item, dict):
            sections.append(Section(pool.problems, path, item))
        else:
            pool.problems.add(path, f"expected a table with username, password and pool_size, got {describe(item)}")
    return sections


def _read_users(pool: Section) -> tuple[UserConfig, ...]:
    users: list[UserConfig] = []
    first_seen: dict[str, KeyPath] = {}
    for section in _user_sections(pool):
        user = _read_user(section)
        if user is None:
            continue
        if user.username in first_seen:
            where = format_key_path(first_seen[user.username])
            section.error("username", f"duplicate username '{user.username}' (already defined at {where})")
            continue
        first_seen[user.username] = section.path
        users.append(user)
    return tuple(users)


def _read_pool(name: str, s: Section, general: General, server_tls_modes: dict[str, str]) -> PoolConfig:
    if not name:
        s.problems.add(s.path, "pool name (the database clients connect to) must not be empty")
    elif name.lower() in ADMIN_DATABASES:
        s.problems.add(s.path, f"'{name}' is the admin console's database name; choose another pool name")
    pool = PoolConfig(
        name=name,
        server_host=s.string("server_host", "127.0.0.1", allow_empty=False),
        server_port=s.integer("server_port", 5432, minimum=1, maximum=MAX_PORT),
        server_database=s.string("server_database", name, allow_empty=False),
        pool_mode=s.choice("pool_mode", "transaction", POOL_MODES),
        connect_timeout=s.optional_duration("connect_timeout"),
        idle_timeout=s.optional_duration("idle_timeout"),
        server_lifetime=s.optional_duration("server_lifetime"),
        cleanup_server_connections=s.boolean("cleanup_server_connections", True),
        server_reset_query=_reset_query(s),
        server_reset_query_always=s.optional_boolean("server_reset_query_always"),
        application_name=s.optional_string("application_name"),
        prepared_statements_cache_size=s.optional_integer("prepared_statements_cache_size"),
        server_prepared_statements_cache_size=s.optional_integer("server_prepared_statements_cache_size"),
        log_client_parameter_status_changes=s.boolean("log_client_parameter_status_changes", False),
        startup_parameters=_startup_parameters(s),
        users=_read_users(s),
        # pool engine
        max_db_connections=s.integer("max_db_connections", 0),
        min_connection_lifetime=s.duration("min_connection_lifetime", 30.0),
        reserve_pool_size=s.integer("reserve_pool_size", 0),
        reserve_pool_timeout=s.duration("reserve_pool_timeout", 3.0),
        min_guaranteed_pool_size=s.integer("min_guaranteed_pool_size", 0),
        auth_query=_read_auth_query(s),
    )
    server_user = pool.auth_query.server_user if pool.auth_query is not None else None
    if server_user is not None and pool.user(server_user) is not None:
        s.problems.add(
            (*s.key_path("auth_query"), "server_user"),
            f"'{server_user}' is also a user of this pool: the shared auth_query pool and the static user's pool "
            "would be the same (database, user); choose another role",
        )
    _check_pool_engine(s, pool, general)
    if general.prepared_statements and pool.prepared_statements_cache_size == 0:
        s.error("prepared_statements_cache_size", "must be greater than 0 while prepared_statements is on")
    merged = {**general.startup_parameters, **pool.startup_parameters}
    if _startup_parameters_size(merged) > STARTUP_PARAMETERS_MAX_BYTES:
        s.error(
            "startup_parameters",
            f"too large together with general.startup_parameters: at most {STARTUP_PARAMETERS_MAX_BYTES} bytes",
        )
    server_tls_mode = later.read_pool(s)
    if server_tls_mode is not None:
        server_tls_modes[format_key_path(s.key_path("server_tls_mode"))] = server_tls_mode
    s.finish()
    return pool


def _read_auth_query(pool: Section) -> AuthQueryConfig | None:
    """``pools.<name>.auth_query`` (see `AuthQueryConfig`), with the original's checks."""
    s = pool.table("auth_query")
    if s is None:
        return None
    query = s.required_string("query", allow_empty=False)
    user = s.required_string("user", allow_empty=False)
    if query is not None and "$1" not in query:
        s.error("query", "must use $1 for the user name (it is sent as a parameter, never spliced into the SQL)")
    server_user = s.optional_string("server_user", allow_empty=False)
    server_password = s.optional_string("server_password")
    if server_password is not None and server_user is None:
        s.error("server_password", "requires server_user")
    pool_size = s.integer("pool_size", 40, minimum=1)
    min_pool_size = s.integer("min_pool_size", 0)
    if min_pool_size > pool_size:
        s.error("min_pool_size", f"must not exceed pool_size ({pool_size}), got {min_pool_size}")
    config = AuthQueryConfig(
        query=query or "",
        user=user or "",
        password=s.string("password", ""),
        database=s.optional_string("database", allow_empty=False),
        workers=s.integer("workers", 2, minimum=1, maximum=64),
        server_user=server_user,
        server_password=server_password,
        pool_size=pool_size,
        min_pool_size=min_pool_size,
        cache_ttl=s.duration("cache_ttl", 3600.0),
        cache_failure_ttl=s.duration("cache_failure_ttl", 30.0),
        min_interval=s.duration("min_interval", 1.0),
    )
    s.finish()
    return config if query is not None and user is not None else None


def _check_pool_engine(s: Section, pool: PoolConfig, general: General) -> None:
    """The original's rules for max_db_connections and the reserve: one error (min_pool_size servers that the
    cap could never allow), and warnings for settings that cannot do what they seem to."""
    cap = pool.max_db_connections
    if cap > 0:
        floor = sum(user.min_pool_size for user in pool.users)
        if floor > cap:
            s.error("max_db_connections", f"the users' min_pool_size add up to {floor}, more than the {cap} allowed")
        if pool.reserve_pool_size > cap:
            s.problems.warn(s.key_path("reserve_pool_size"), f"larger than max_db_connections ({cap})")
        for user in pool.users:
            if user.pool_size > cap:
                s.problems.warn(
                    s.key_path("max_db_connections"),
                    f"user '{user.username}' has pool_size {user.pool_size}: at most {cap} are ever opened",
                )
    idle_timeout = general.idle_timeout if pool.idle_timeout is None else pool.idle_timeout
    if 0 < idle_timeout < pool.min_connection_lifetime:
        s.problems.warn(
            s.key_path("min_connection_lifetime"),
            "longer than idle_timeout: idle servers are closed before they could be evicted or released",
        )
    for user in pool.users:
        if pool.min_guaranteed_pool_size > user.pool_size:
            s.problems.warn(
                s.key_path("min_guaranteed_pool_size"),
                f"above the pool_size ({user.pool_size}) of user '{user.username}'",
            )
    if pool.reserve_pool_size and 0 < general.query_wait_timeout <= pool.reserve_pool_timeout:
        s.problems.warn(
            s.key_path("reserve_pool_timeout"),
            "not below query_wait_timeout: clients time out before the reserve is used",
        )


def _read_pools(root: Section, general: General, server_tls_modes: dict[str, str]) -> dict[str, PoolConfig]:
    section = root.table("pools")
    if section is None:
        return {}
    return {
        name: _read_pool(name, pool_section, general, server_tls_modes) for name, pool_section in section.subtables()
    }


def load_config(path: str | Path) -> Config:
    """Load, merge and validate a configuration file; raise :class:`ConfigError` listing every problem."""
    source = load_source(Path(path))
    problems = Problems(source)
    root = Section(problems, (), source.data)
    general, access_rules = _read_general(root)
    server_tls_modes = {"general.server_tls_mode": general.server_tls_mode}
    pools = _read_pools(root, general, server_tls_modes)
    web = read_web(root, general.admin_password)
    later.read_talos(root)
    root.finish()
    if problems.lines:
        raise ConfigError(problems.lines)
    refusals = later.refusal_lines(
        source.main_file,
        tls_mode=general.tls_mode,
        server_tls_modes=server_tls_modes,
    )
    return Config(
        path=str(path),
        general=general,
        access_rules=access_rules,
        pools=pools,
        warnings=tuple(problems.warnings),
        not_active=tuple(problems.notes),
        refusals=tuple(refusals),
        web=web,
    )


@dataclass(frozen=True, slots=True)
class CheckReport:
    """What ``pg_doorman -t`` prints: ``stdout`` on success, ``stderr`` for problems, warnings and notes."""

    ok: bool
    stdout: tuple[str, ...]
    stderr: tuple[str, ...]


PARSE_ERROR = "Config parse error"


def startup_messages(config: Config) -> list[str]:
    """Warnings and not-active-yet notes of a loaded config, one line each (for -t, startup and reload logs)."""
    return [*config.warnings, *config.not_active]


def check_config(path: str | Path) -> CheckReport:
    """``pg_doorman -t``: the original's nginx-style success lines, or ``Config parse error: …`` per problem.

    It only reads files; it does not connect to PostgreSQL (like the original). A setting that is not active yet
    is reported; one that would widen access if ignored (see config/later.py) fails the check.
    """
    try:
        config = load_config(path)
    except ConfigError as exc:
        return CheckReport(False, (), tuple(f"{PARSE_ERROR}: {line}" for line in exc.problems))
    notes = tuple(f"pg_doorman: warning: {line}" for line in startup_messages(config))
    if config.refusals:
        return CheckReport(False, (), notes + tuple(f"{PARSE_ERROR}: {line}" for line in config.refusals))
    return CheckReport(
        True,
        (
            f"pg_doorman: the configuration file {path} syntax is ok",
            f"pg_doorman: configuration file {path} test is successful",
        ),
        notes,
    )
