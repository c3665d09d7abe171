"""deploy/: the systemd unit (checked by systemd-analyze against this checkout's pg_doorman) and the Dockerfile."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
UNIT = REPO_ROOT / "deploy" / "systemd" / "pg_doorman.service"
DOCKERFILE = REPO_ROOT / "deploy" / "Dockerfile"


def _unit() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def test_unit_is_notify_reload_by_sighup_and_hardened() -> None:
    service = _unit()["Service"]
    assert service["Type"] == "notify"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"  # not SIGUSR2: binary upgrade is not available
    assert " -t " in service["ExecStartPre"]
    for option in ("NoNewPrivileges", "ProtectSystem", "PrivateTmp", "RestrictAddressFamilies"):
        assert option in service


def test_unit_verifies_with_systemd_analyze(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze (Debian package systemd) is needed"
    executable = Path(sys.executable).with_name("pg_doorman")
    assert executable.exists()
    text = UNIT.read_text().replace("/usr/local/bin/pg_doorman", str(executable))
    unit = tmp_path / "pg_doorman.service"
    unit.write_text(text)
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False)
    problems = [ln for ln in (result.stdout + result.stderr).splitlines() if "pg_doorman.service" in ln]
    assert problems == [], problems


def test_dockerfile_builds_the_compiled_package_on_debian_12() -> None:
    text = DOCKERFILE.read_text()
    froms = re.findall(r"^FROM (\S+)", text, flags=re.MULTILINE)
    assert froms and all(image.startswith("debian:12") for image in froms)
    assert "pip install --no-cache-dir ." in text
    assert "implementation()" in text and "'compiled'" in text  # the build fails if the hot path is not compiled
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", text, flags=re.MULTILINE)
    for line in copied:
        for name in line.split():
            assert (REPO_ROOT / name).exists(), f"Dockerfile copies {name}, which is not in the repository"
    assert re.search(r'^ENTRYPOINT \["pg_doorman"\]', text, flags=re.MULTILINE)
