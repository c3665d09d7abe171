"""Settings of the original pg_doorman that are accepted now and put into effect in a later version.

Every one is read with its type and checked as the original checks it, so that ``pg_doorman -t`` finds the same
mistakes; a setting that is present is then reported as "not active yet" (by ``-t`` and in the startup log),
never ignored without a word. Settings that would *widen access* if they were ignored, a TLS requirement
(``general.tls_mode`` require/verify-full, ``server_tls_mode`` require/verify-ca/verify-full), make a configuration
refused at startup (and by ``-t``): see `refusal_lines`. (Access rules, ``hba`` / ``pg_hba``, are in effect:
auth/hba.py.)

Keys that the original itself ignores (it has no such setting and drops unknown keys) are accepted with a
warning saying so (`ORIGINAL_IGNORES`).
"""

from __future__ import annotations

from pg_doorman.config.reader import Section, describe

NOT_ACTIVE = "not active yet in this version"

# general.<key> -> what is missing, for keys the original silently ignores (it has no such setting).
ORIGINAL_IGNORES_GENERAL: dict[str, str] = {
    "pool_mode": "set pool_mode per pool (pools.<name>.pool_mode) or per user",
    "cleanup_server_connections": "set cleanup_server_connections per pool",
    "log_level": "use -l / LOG_LEVEL or the console's SET log_level",
}

_RUNTIME = "a setting of the original's Tokio runtime; this implementation runs one event loop per process"
_SCALING = "a scaling knob of the original's pool engine"
_FALLBACK = "Patroni-assisted fallback"
_INTERNER = "the original's query-text interner; statement texts live in the statement cache here"


def _notes(s: Section, key: str, what: str) -> None:
    s.problems.note(s.key_path(key), f"{NOT_ACTIVE} ({what}); accepted and ignored")


def _patroni_urls(s: Section) -> None:
    urls = s.raw("patroni_api_urls")
    if urls is None:
        return
    if not isinstance(urls, list) or not all(isinstance(url, str) for url in urls):
        s.error("patroni_api_urls", f"expected a list of URLs, got {describe(urls)}")
        return
    if not urls:
        s.error("patroni_api_urls", "must not be empty (leave the key out to disable fallback)")
    for index, url in enumerate(urls):
        if not url.startswith(("http://", "https://")):
            s.problems.add((*s.key_path("patroni_api_urls"), index), f"must start with http:// or https://: {url!r}")
    _notes(s, "patroni_api_urls", _FALLBACK)


def _fallback(s: Section) -> None:
    _patroni_urls(s)
    for key in ("fallback_cooldown", "patroni_api_timeout", "fallback_connect_timeout", "fallback_lifetime"):
        value = s.optional_duration(key)
        if value is None:
            continue
        if value <= 0:
            s.error(key, "must be greater than zero")
        _notes(s, key, _FALLBACK)


def _scaling(s: Section) -> None:
    ratio = s.optional_integer("scaling_warm_pool_ratio", maximum=100)
    if ratio is not None:
        _notes(s, "scaling_warm_pool_ratio", _SCALING)
    if s.optional_integer("scaling_fast_retries") is not None:
        _notes(s, "scaling_fast_retries", _SCALING)


def _server_tls_files(s: Section) -> None:
    """Server-side TLS files: checked to exist (as the original does at -t), reported as not active."""
    from pg_doorman.config.loader import existing_file  # the loader imports this module

    for key in ("server_tls_ca_cert", "server_tls_certificate", "server_tls_private_key"):
        if existing_file(s, key) is not None:
            _notes(s, key, "TLS toward PostgreSQL")


def read_general(s: Section) -> tuple[str | None, str | None]:
    """Check and report the not-yet-active ``general`` keys; return (daemon_pid_file, syslog_prog_name)."""
    for key in ("tokio_global_queue_interval", "tokio_event_interval", "max_blocking_threads"):
        if s.optional_integer(key) is not None:
            _notes(s, key, _RUNTIME)
    if s.optional_boolean("worker_cpu_affinity_pinning") is not None:
        _notes(s, "worker_cpu_affinity_pinning", _RUNTIME)
    if s.optional_size("worker_stack_size") is not None:
        _notes(s, "worker_stack_size", _RUNTIME)
    for key in ("tcp_socket_buffer_size", "unix_socket_buffer_size"):
        if s.optional_size(key) is not None:
            _notes(s, key, "socket buffer sizes are left to the kernel")
    if s.optional_integer("max_concurrent_creates", minimum=1) is not None:
        _notes(s, "max_concurrent_creates", _SCALING)
    if s.optional_integer("scaling_max_parallel_creates", minimum=1) is not None:
        _notes(s, "scaling_max_parallel_creates", _SCALING)
    _scaling(s)
    if s.optional_integer("query_interner_gc_interval_seconds", minimum=1) is not None:
        _notes(s, "query_interner_gc_interval_seconds", _INTERNER)
    if s.optional_integer("query_interner_anon_idle_ttl_seconds") is not None:
        _notes(s, "query_interner_anon_idle_ttl_seconds", _INTERNER)
    _fallback(s)
    rate = s.optional_integer("tls_rate_limit_per_second")
    if rate is not None:
        if rate % 100:
            s.error("tls_rate_limit_per_second", f"must be 0 or a multiple of 100, got {rate}")
        if rate:
            _notes(s, "tls_rate_limit_per_second", "TLS for clients")
    for key, hint in ORIGINAL_IGNORES_GENERAL.items():
        if s.has(key):
            s.problems.warn(s.key_path(key), f"has no effect (the original pg_doorman ignores it too): {hint}")
    daemon_pid_file = s.optional_string("daemon_pid_file", allow_empty=False)
    syslog_prog_name = s.optional_string("syslog_prog_name", allow_empty=False)
    return daemon_pid_file, syslog_prog_name


def read_pool(s: Section) -> str | None:
    """Check and report the not-yet-active keys of one ``pools.<name>`` section; return its server_tls_mode."""
    from pg_doorman.config.schema import SERVER_TLS_MODES

    _scaling(s)
    _fallback(s)
    _server_tls_files(s)
    return s.optional_choice("server_tls_mode", SERVER_TLS_MODES)


def tls_notes(s: Section, *, client_certificate: bool, tls_mode: str | None, server_tls_mode: str) -> None:
    """``general`` TLS settings that are allowed to go without TLS for now (the refusals are in `refusal_lines`)."""
    if client_certificate and tls_mode not in ("require", "verify-full", "disable"):
        _notes(s, "tls_certificate", "TLS for clients; an SSLRequest is answered 'N' and clients connect in plain text")
    if server_tls_mode == "prefer":
        _notes(s, "server_tls_mode", "TLS toward PostgreSQL; server connections stay plain text")
    for key in ("server_tls_ca_cert", "server_tls_certificate", "server_tls_private_key"):
        if s.raw(key) is not None:
            _notes(s, key, "TLS toward PostgreSQL")


def read_user(s: Section) -> None:
    if s.optional_string("auth_pam_service", allow_empty=False) is not None:
        _notes(s, "auth_pam_service", "PAM authentication; this user logs in with its configured password only")


def read_talos(root: Section) -> None:
    talos = root.table("talos")
    if talos is None:
        return
    talos.string_list("keys")
    talos.string_list("databases")
    talos.finish()
    _notes(root, "talos", "Talos JWT authentication; its users cannot log in")


# -------------------------------------------------------------------------------------- refusals


def refusal_lines(
    file: str,
    *,
    tls_mode: str | None,
    server_tls_modes: dict[str, str],
) -> list[str]:
    """What stops pg_doorman from starting with this configuration: each line names the key and why.

    ``server_tls_modes`` maps a key path (``general.server_tls_mode`` / ``pools.x.server_tls_mode``) to its mode.
    """
    lines = []
    if tls_mode in ("require", "verify-full"):
        lines.append(
            f"{file}: general.tls_mode: '{tls_mode}': TLS for clients is {NOT_ACTIVE}, and pg_doorman must not "
            "start without it (clients would connect in plain text); use 'allow' or 'disable' to start without TLS"
        )
    for key, mode in server_tls_modes.items():
        if mode in ("require", "verify-ca", "verify-full"):
            lines.append(
                f"{file}: {key}: '{mode}': TLS toward PostgreSQL is {NOT_ACTIVE}, and pg_doorman must not start "
                "without it (server connections would be plain text); use 'allow', 'prefer' or 'disable'"
            )
    return lines


# Every key this module accepts, by section, with what is not in effect yet: `pg_doorman generate-docs` lists them.
NOT_ACTIVE_KEYS: dict[str, dict[str, str]] = {
    "general": {
        **dict.fromkeys(
            (
                "tokio_global_queue_interval",
                "tokio_event_interval",
                "max_blocking_threads",
                "worker_cpu_affinity_pinning",
                "worker_stack_size",
            ),
            _RUNTIME,
        ),
        "tcp_socket_buffer_size": "socket buffer sizes are left to the kernel",
        "unix_socket_buffer_size": "socket buffer sizes are left to the kernel",
        **dict.fromkeys(
            (
                "max_concurrent_creates",
                "scaling_max_parallel_creates",
                "scaling_warm_pool_ratio",
                "scaling_fast_retries",
            ),
            _SCALING,
        ),
        "query_interner_gc_interval_seconds": _INTERNER,
        "query_interner_anon_idle_ttl_seconds": _INTERNER,
        **dict.fromkeys(
            (
                "patroni_api_urls",
                "fallback_cooldown",
                "patroni_api_timeout",
                "fallback_connect_timeout",
                "fallback_lifetime",
            ),
            _FALLBACK,
        ),
        "tls_rate_limit_per_second": "TLS for clients",
        "tls_certificate": "TLS for clients (tls_mode require/verify-full refuses to start)",
        "tls_private_key": "TLS for clients",
        "tls_ca_cert": "TLS for clients",
        "tls_mode": "TLS for clients (require/verify-full refuses to start)",
        "server_tls_mode": "TLS toward PostgreSQL (require/verify-ca/verify-full refuses to start)",
        "server_tls_ca_cert": "TLS toward PostgreSQL",
        "server_tls_certificate": "TLS toward PostgreSQL",
        "server_tls_private_key": "TLS toward PostgreSQL",
    },
    "pools.<name>": {
        "scaling_warm_pool_ratio": _SCALING,
        "scaling_fast_retries": _SCALING,
        **dict.fromkeys(
            (
                "patroni_api_urls",
                "fallback_cooldown",
                "patroni_api_timeout",
                "fallback_connect_timeout",
                "fallback_lifetime",
            ),
            _FALLBACK,
        ),
        "server_tls_mode": "TLS toward PostgreSQL (require/verify-ca/verify-full refuses to start)",
        "server_tls_ca_cert": "TLS toward PostgreSQL",
        "server_tls_certificate": "TLS toward PostgreSQL",
        "server_tls_private_key": "TLS toward PostgreSQL",
    },
    "pools.<name>.users[]": {"auth_pam_service": "PAM authentication"},
    "talos": {"keys": "Talos JWT authentication", "databases": "Talos JWT authentication"},
}
