"""Settings of the original accepted now and put into effect later (config/later.py), and logs.set_log_level."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest

from pg_doorman import logs
from pg_doorman.config import ConfigError, check_config, load_config

BASE = (
    '[general]\nadmin_username = "a"\nadmin_password = "b"\n{general}\n'
    '[pools.db]\nserver_host = "127.0.0.1"\n{pool}\n[[pools.db.users]]\nusername = "u"\npassword = "p"\npool_size = 1\n'
    "{user}\n{top}"
)


def _write(tmp_path: Path, general: str = "", pool: str = "", user: str = "", top: str = "") -> Path:
    path = tmp_path / "c.toml"
    path.write_text(BASE.format(general=general, pool=pool, user=user, top=top))
    return path


def test_every_not_active_key_is_accepted_and_reported(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        general='tokio_global_queue_interval = 61\ntokio_event_interval = 7\nworker_stack_size = "8MB"\n'
        "max_blocking_threads = 8\nworker_cpu_affinity_pinning = true\ntcp_socket_buffer_size = 65536\n"
        'unix_socket_buffer_size = "1MB"\nmax_concurrent_creates = 4\nscaling_warm_pool_ratio = 20\n'
        "scaling_fast_retries = 10\nscaling_max_parallel_creates = 2\nquery_interner_gc_interval_seconds = 60\n"
        'query_interner_anon_idle_ttl_seconds = 0\npatroni_api_urls = ["http://127.0.0.1:8008"]\n'
        'fallback_cooldown = "30s"\npatroni_api_timeout = 5000\nfallback_connect_timeout = "5s"\n'
        'fallback_lifetime = "1m"\ntls_rate_limit_per_second = 200\nworker_threads = 4\n'
        'daemon_pid_file = "/tmp/x.pid"\nsyslog_prog_name = "pgd"\nserver_tls_mode = "prefer"',
        pool='scaling_fast_retries = 3\npatroni_api_urls = ["https://p:8008"]\n'
        '[pools.db.auth_query]\nquery = "select passwd from t where u = $1"\nuser = "q"\nworkers = 2\n'
        'cache_ttl = "1h"\ncache_failure_ttl = "30s"\nmin_interval = "1s"\npool_size = 5\nmin_pool_size = 1',
        user='auth_pam_service = "login"',
        top='[talos]\nkeys = ["k.pem"]\ndatabases = ["db"]',
    )
    config = load_config(path)
    assert config.refusals == ()
    assert config.general.daemon_pid_file == "/tmp/x.pid" and config.general.syslog_prog_name == "pgd"
    noted = {line.split(": ")[1] for line in config.not_active}
    for key in (
        "general.tokio_global_queue_interval", "general.worker_stack_size", "general.patroni_api_urls",
        "general.tls_rate_limit_per_second", "general.worker_threads", "general.server_tls_mode",
        "pools.db.scaling_fast_retries", "pools.db.users[0].auth_pam_service", "talos",
    ):  # fmt: skip
        assert key in noted, key
    assert not any(key.startswith("pools.db.auth_query") for key in noted)  # active now
    assert config.pools["db"].auth_query is not None
    assert all("not active yet in this version" in line for line in config.not_active)
    report = check_config(path)
    assert report.ok and len(report.stderr) == len(config.not_active)


@pytest.mark.parametrize(
    ("general", "needle"),
    [
        ("tls_rate_limit_per_second = 150", "general.tls_rate_limit_per_second: must be 0 or a multiple of 100"),
        ('patroni_api_urls = ["ftp://x"]', "general.patroni_api_urls[0]: must start with http:// or https://"),
        ("patroni_api_urls = []", "general.patroni_api_urls: must not be empty"),
        ('fallback_cooldown = "0s"', "general.fallback_cooldown: must be greater than zero"),
        ("scaling_warm_pool_ratio = 101", "general.scaling_warm_pool_ratio: expected an integer from 0 to 100"),
        ('worker_stack_size = "lots"', "general.worker_stack_size: expected a size"),
    ],
)
def test_not_active_keys_are_still_checked(tmp_path: Path, general: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, general=general))
    assert needle in str(info.value)


def test_auth_query_is_checked(tmp_path: Path) -> None:
    path = _write(tmp_path, pool='[pools.db.auth_query]\nuser = "q"\nserver_password = "x"\nworkerz = 1')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert "pools.db.auth_query.query: required key is missing" in text
    assert "pools.db.auth_query.server_password: requires server_user" in text
    assert "pools.db.auth_query.workerz: unknown key; did you mean 'workers'?" in text


@pytest.mark.parametrize(
    ("general", "pool", "key"),
    [
        ('tls_mode = "require"\ntls_certificate = "{crt}"\ntls_private_key = "{crt}"', "", "general.tls_mode"),
        ('server_tls_mode = "require"', "", "general.server_tls_mode"),
        ("", 'server_tls_mode = "verify-full"\nserver_tls_ca_cert = "{crt}"', "pools.db.server_tls_mode"),
    ],
)
def test_settings_that_would_widen_access_refuse(tmp_path: Path, general: str, pool: str, key: str) -> None:
    crt = tmp_path / "x.crt"
    crt.write_text("x")
    path = _write(tmp_path, general=general.replace("{crt}", str(crt)), pool=pool.replace("{crt}", str(crt)))
    config = load_config(path)
    assert len(config.refusals) == 1 and f": {key}: " in config.refusals[0]
    assert "must not start without" in config.refusals[0]
    report = check_config(path)
    assert not report.ok and report.stderr[-1].startswith("Config parse error: ")


def test_keys_the_original_ignores_warn(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, general='pool_mode = "session"\ncleanup_server_connections = false'))
    assert len(config.warnings) == 2 and all("has no effect" in w for w in config.warnings)
    assert config.pools["db"].pool_mode == "transaction"  # as the original: the general key changes nothing


def test_log_formats_and_runtime_level() -> None:
    stream = io.StringIO()
    logs.setup_logging("info", "structured", stream=stream)
    try:
        logger = logging.getLogger("pg_doorman.test")
        logger.debug("hidden")
        logger.warning('say "hi"\nthere')
        assert logs.set_log_level("TRACE") == "trace" and logs.current_log_level() == "trace"
        logger.log(logs.TRACE, "traced")
        with pytest.raises(ValueError, match="expected one of error, warn, info, debug, trace"):
            logs.set_log_level("verbose")
        assert logs.current_log_level() == "trace"
        records = [json.loads(line) for line in stream.getvalue().splitlines()]
        assert [r["level"] for r in records] == ["WARN", "INFO", "TRACE"]
        assert records[0]["message"] == 'say "hi"\nthere' and records[0]["file"].endswith("test_config_later.py")
        text = io.StringIO()
        logs.setup_logging("warn", "text", stream=text)
        logging.getLogger("pg_doorman").error("boom")
        assert text.getvalue().split(" ", 1)[1].startswith("ERROR ")
    finally:
        logs.setup_logging("warning", "text")
