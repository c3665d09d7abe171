"""``pg_doorman -t`` on every configuration file the original PgDoorman ships or starts in its BDD suite.

Each file must be accepted, or fail only for a reason the original fails it too (a negative scenario of its
suite). Every file goes through `check_config`, what ``-t`` runs, in this process (286 interpreter starts would
cost a minute of CI); a sample runs the real ``pg_doorman -t`` command. The count of accepted files is printed
(``pytest -s``) and must not drop.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from original_configs import all_configs, materialize
from test_cli import REPO_ROOT

from pg_doorman.config import check_config

# The original rejects these too (negative scenarios of its suite).
ORIGINAL_REJECTS = ("is set by pg_doorman itself and cannot be a startup parameter",)
MIN_ACCEPTED = 285  # all of them but one the original rejects too


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


def test_every_original_config_is_accepted_or_rejected_as_the_original_does(tmp_path: Path) -> None:
    sources = all_configs()
    assert len(sources) >= 280, "tests/data/original_configs is incomplete"
    files = [materialize(path, tmp_path) for path in sources]
    accepted, unexplained = [], []
    for path in files:
        report = check_config(path)
        if report.ok:
            assert any("test is successful" in line for line in report.stdout), (path, report)
            accepted.append(path)
            continue
        errors = [line for line in report.stderr if line.startswith("Config parse error: ")]
        assert errors, (path, report.stderr)
        unexplained.extend(line for line in errors if not any(reason in line for reason in ORIGINAL_REJECTS))
    assert unexplained == []
    print(f"\noriginal configs: {len(files)} files, {len(accepted)} accepted")
    assert len(accepted) >= MIN_ACCEPTED


def test_the_command_agrees_on_a_sample(tmp_path: Path) -> None:
    """``pg_doorman -t`` as a process: exit code and lines as `check_config` said, for accepted and rejected."""
    sources = all_configs()
    rejected = [p for p in sources if "startup-parameters.L180" in p.name]
    assert rejected
    for source in [*sources[:3], *rejected]:
        path = materialize(source, tmp_path)
        report = check_config(path)
        result = _check(path)
        assert "Traceback" not in result.stderr, (path, result.stderr)
        assert (result.returncode == 0) == report.ok, (path, result.stderr)
        if report.ok:
            assert "test is successful" in result.stdout
        else:
            assert result.returncode == 78 and "Config parse error: " in result.stderr


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
