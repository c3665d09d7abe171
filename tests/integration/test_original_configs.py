"""``pg_doorman -t`` on every configuration file the original PgDoorman ships or starts in its BDD suite.

Each file must be accepted, or fail only for a documented reason: a setting this version must not start without
(access rules, required TLS), a pool-engine or web setting that is not accepted yet, or a value the original
rejects too. The count of accepted files is printed (``pytest -s``) and must not drop.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from original_configs import all_configs, materialize
from test_cli import REPO_ROOT

# Keys that other parts of issue #10 add (pool engine, web listener): "not supported here" until then.
PENDING_KEYS = re.compile(
    r": (general\.(retain_connections_max|proxy_copy_data_timeout|max_memory_usage)"
    r"|pools\.[^.]+\.(max_db_connections|min_connection_lifetime|reserve_pool_size|reserve_pool_timeout"
    r"|min_guaranteed_pool_size)|web|prometheus)(\.|:)"
)
REFUSAL = "must not start without"
# The original rejects these too (negative scenarios of its suite).
ORIGINAL_REJECTS = ("is set by pg_doorman itself and cannot be a startup parameter",)
MIN_ACCEPTED = 270  # all but the required-TLS ones since access rules (pg_hba) are in effect


def _check(path: Path) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if (not k.startswith("PG") or k.startswith("PG_DOORMAN_")) and k not in ("CONFIG_FILE", "LOG_LEVEL")
    }
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", "pg_doorman", "-t", str(path)],
        capture_output=True, text=True, env=env, timeout=60, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_every_original_config_is_accepted_or_refused_for_a_documented_reason(tmp_path: Path) -> None:
    sources = all_configs()
    assert len(sources) >= 280, "tests/data/original_configs is incomplete"
    files = [materialize(path, tmp_path) for path in sources]
    with ThreadPoolExecutor(max_workers=4) as executor:
        results = list(executor.map(_check, files))
    accepted, refused, pending, unexplained = [], [], [], []
    for path, result in zip(files, results, strict=True):
        assert "Traceback" not in result.stderr, (path, result.stderr)
        if result.returncode == 0:
            assert "test is successful" in result.stdout
            accepted.append(path)
            continue
        assert result.returncode == 78, (path, result.stderr)
        errors = [line for line in result.stderr.splitlines() if line.startswith("Config parse error: ")]
        assert errors, (path, result.stderr)
        for line in errors:
            if REFUSAL in line:
                refused.append(path)
            elif PENDING_KEYS.search(line):
                pending.append(path)
            elif not any(reason in line for reason in ORIGINAL_REJECTS):
                unexplained.append(line)
    assert unexplained == []
    print(
        f"\noriginal configs: {len(files)} files, {len(accepted)} accepted, "
        f"{len(set(refused))} refused (required TLS not active yet), "
        f"{len(set(pending) - set(refused))} only for pool-engine/web keys not accepted yet"
    )
    assert len(accepted) >= MIN_ACCEPTED


def test_pg_hba_configs_are_accepted(tmp_path: Path) -> None:
    """The original's pg_hba configs (most of its suite) load, rules included, with no access-rule warning."""
    sources = [p for p in all_configs() if "pg_hba" in p.read_text() and "tls_mode" not in p.read_text()]
    assert len(sources) >= 200
    for source in sources[:5]:
        result = _check(materialize(source, tmp_path))
        assert result.returncode == 0, result.stderr
        assert "general.pg_hba" not in result.stderr


def test_general_pool_mode_is_accepted_with_a_warning(tmp_path: Path) -> None:
    text = (
        '[general]\nhost = "127.0.0.1"\nport = 6432\nadmin_username = "a"\nadmin_password = "b"\n'
        'pool_mode = "transaction"\n[pools.db]\nserver_host = "127.0.0.1"\nserver_port = 5432\n'
        '[[pools.db.users]]\nusername = "u"\npassword = "p"\npool_size = 1\n'
    )
    path = tmp_path / "c.toml"
    path.write_text(text)
    result = _check(path)
    assert result.returncode == 0, result.stderr
    assert "general.pool_mode: has no effect (the original pg_doorman ignores it too)" in result.stderr
