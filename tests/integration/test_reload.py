"""Reload (SIGHUP; the console's RELOAD and the API call `Application.reload`): what is kept, rebuilt, refused
and reported."""

from __future__ import annotations

import copy
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from psycopg_helpers import close_quietly, connect, scalar
from test_cli import rewrite_config, static_config

from pg_doorman import events
from pg_doorman.app import Application
from pg_doorman.config import load_config
from pg_doorman.devcluster import TempPostgres

StartDoorman = Callable[..., Any]
MakePoolConfig = Callable[..., dict[str, Any]]


def _app(tmp_path: Path, config: dict[str, Any]) -> tuple[Application, Path]:
    path = tmp_path / "pg_doorman.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return Application(load_config(path)), path


def _rewrite(path: Path, config: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(config), encoding="utf-8")


# ---------------------------------------- the result object (in process, no sockets)


def test_reload_result_unchanged_changed_and_restart_required(tmp_path: Path) -> None:
    config = static_config()
    app, path = _app(tmp_path, config)
    before = app.registry.pools[("appdb", "app")]
    result = app.reload()
    assert result.ok and not result.changed and result.message == "configuration unchanged"
    assert events.recent()[-1].kind == "RELOAD"

    config["general"]["port"] = 6433
    config["general"]["query_wait_timeout"] = "7s"
    config["pools"]["appdb"]["users"].append({"username": "new", "password": "pw", "pool_size": 2})
    _rewrite(path, config)
    result = app.reload()
    assert result.ok and result.changed
    assert result.restart_required == ("port",)
    assert "restart needed for: general.port" in result.message
    assert "added: new@appdb" in result.message and "rebuilt: app@appdb" in result.message
    assert app.registry.pools[("appdb", "app")] is not before  # query_wait_timeout is part of the pool
    assert app.config.general.query_wait_timeout == 7.0


def test_reload_bad_file_keeps_running_config_and_says_why(tmp_path: Path) -> None:
    config = static_config()
    app, path = _app(tmp_path, config)
    pool = app.registry.pools[("appdb", "app")]
    path.write_text("general: [unclosed", encoding="utf-8")
    result = app.reload()
    assert not result.ok
    assert "keeping the running configuration" in result.message and "invalid YAML" in result.message
    assert events.recent()[-1].kind == "CONFIG_VALIDATION_ERROR"
    assert app.registry.pools[("appdb", "app")] is pool

    # Access rules with a bad line are refused the same way, naming the key, the rule text's line and why.
    config["general"]["pg_hba"] = {"content": "host all all 127.0.0.1/32 md5\nhots all all 0.0.0.0/0 trust"}
    _rewrite(path, config)
    result = app.reload()
    assert not result.ok and "general.pg_hba" in result.message
    assert '(general.pg_hba):2: invalid connection type "hots"' in result.message
    assert app.config.general.pg_hba is None and app.context.access_rules is None


# ---------------------------------------- a real process


def test_sighup_keeps_unchanged_pools_connections_and_rebuilds_changed_ones(
    doorman: StartDoorman, pool_config: MakePoolConfig, pg_trust: TempPostgres
) -> None:
    config = pool_config(pg_trust, users=["app", "app2"], pool_size=1)
    proc = doorman(config)
    kept_client = connect(proc)
    rebuilt_client = connect(proc, user="app2", autocommit=False)
    try:
        kept_pid = scalar(kept_client, "select pg_backend_pid()")
        rebuilt_pid = scalar(rebuilt_client, "select pg_backend_pid()")  # inside a transaction across the reload

        new_config = copy.deepcopy(proc.config)
        users = new_config["pools"]["appdb"]["users"]
        next(u for u in users if u["username"] == "app2")["pool_size"] = 2
        new_config["general"]["port"] = proc.port + 1  # cannot change at runtime: reported, not applied
        rewrite_config(proc, new_config)
        offset = len(proc.log_text())
        proc.send_signal(signal.SIGHUP)
        line = proc.wait_for_log("configuration reloaded", after=offset, timeout=5)
        assert "rebuilt: app2@appdb" in line and "app@appdb" not in line.replace("app2@appdb", "")
        assert "restart needed for: general.port" in line

        # The unchanged pool kept its server connection; the client of the rebuilt one finishes its transaction.
        assert scalar(kept_client, "select pg_backend_pid()") == kept_pid
        assert scalar(rebuilt_client, "select pg_backend_pid()") == rebuilt_pid
        rebuilt_client.commit()
        assert scalar(rebuilt_client, "select 1") == 1
        with connect(proc) as again:  # still on the old port
            assert scalar(again, "select 1") == 1
    finally:
        close_quietly(kept_client)
        close_quietly(rebuilt_client)


@pytest.mark.parametrize("change", ["garbage", "access_rules"])
def test_sighup_refused_file_logs_why_and_keeps_serving(
    doorman: StartDoorman, pool_config: MakePoolConfig, pg_trust: TempPostgres, change: str
) -> None:
    proc = doorman(pool_config(pg_trust))
    client = connect(proc)
    try:
        pid = scalar(client, "select pg_backend_pid()")
        if change == "garbage":
            proc.config_path.write_bytes(b"\xff\xfe not a config")
        else:
            bad = copy.deepcopy(proc.config)
            bad["general"]["pg_hba"] = "host all all localhost md5"  # host names are refused at load
            rewrite_config(proc, bad)
        offset = len(proc.log_text())
        proc.send_signal(signal.SIGHUP)
        line = proc.wait_for_log("reload failed", after=offset, timeout=5)
        assert "ERROR" in line
        tail = proc.log_text()[offset:]
        assert ("general.pg_hba" in tail) if change == "access_rules" else ("cannot read file" in tail)
        assert proc.returncode is None
        assert scalar(client, "select pg_backend_pid()") == pid
    finally:
        close_quietly(client)
