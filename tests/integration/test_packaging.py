"""The package as pip installs it: a wheel built from this tree, installed into a fresh virtualenv, runs its
compiled hot path.

pip writes each extension a few milliseconds before its .py; when freshness was judged by file times, every
pip-installed copy ran as pure Python. Freshness is judged by content now (pg_doorman/buildstamp.py): this test
builds a real wheel (offline, with this virtualenv's setuptools, wheel and Cython) and checks the installed copy.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
BUILD_TIMEOUT = 240
PIP = (sys.executable, "-m", "pip", "-q", "--disable-pip-version-check")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PG_DOORMAN_PURE_PYTHON")}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Python of a fresh virtualenv with this tree's wheel installed (without its dependencies: importing
    pg_doorman's hot path needs none of them)."""
    # scripts/setup.sh installs both (the test extras): without them this test would prove nothing.
    assert importlib.util.find_spec("Cython") is not None, "Cython is not installed: no compiled build to check"
    assert importlib.util.find_spec("wheel") is not None, "the 'wheel' package is missing (test extras)"
    tmp = tmp_path_factory.mktemp("wheel")
    # A copy of what the wheel is built from, so the build neither reads this tree's in-place extensions nor
    # writes its .c files and build/ directory here.
    project = tmp / "project"
    project.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, project / name)
    shutil.copytree(
        ROOT / "src",
        project / "src",
        ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.c", "*.egg-info", "compiled_from.txt"),
    )
    dist = tmp / "dist"
    # -O0: the test checks which implementation runs, not how fast; it compiles several times quicker.
    subprocess.run(
        [*PIP, "wheel", "--no-build-isolation", "--no-deps", "--no-index", "-w", str(dist), str(project)],
        env=clean_env(CFLAGS="-O0"),
        check=True,
        capture_output=True,
        timeout=BUILD_TIMEOUT,
    )
    (wheel,) = dist.glob("pg_doorman-*.whl")
    target = tmp / "venv"
    venv.create(target, with_pip=False)
    python = target / "bin" / "python"
    # The package's dependencies (PyYAML, uvloop) come from the test's own environment, offline: a .pth file
    # appends its site-packages behind the new venv's own, where the wheel's pg_doorman is found first.
    (site_packages,) = (target / "lib").glob("python3*/site-packages")
    (site_packages / "test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [*PIP, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
        env=clean_env(),
        check=True,
        capture_output=True,
        timeout=BUILD_TIMEOUT,
    )
    return python


def run_in(python: Path, code: str, **env: str) -> list[str]:
    out = subprocess.run(
        [str(python), "-c", code], env=clean_env(**env), cwd=python.parent, capture_output=True, text=True, check=True
    )
    return out.stdout.splitlines()


def test_pip_installed_package_runs_compiled(installed: Path) -> None:
    code = "import pg_doorman, pg_doorman.client as c; print(pg_doorman.implementation()); print(c.__file__)"
    implementation, client_file = run_in(installed, code)
    assert implementation == "compiled"
    assert client_file.startswith(str(installed.parent.parent)) and client_file.endswith(".so")
    # The case the content rule is for: pip wrote the extension before its source.
    package = Path(client_file).parent
    assert (package / "compiled_from.txt").exists()
    assert (package / "client.pxd").exists()


def test_pip_installed_package_still_refuses_an_edited_source(installed: Path) -> None:
    code = "import pg_doorman, os; print(os.path.dirname(pg_doorman.__file__))"
    (package,) = run_in(installed, code, PG_DOORMAN_PURE_PYTHON="1")
    source = Path(package) / "prepared.py"
    original = source.read_bytes()
    try:
        source.write_bytes(original + b"\n# edited after install\n")
        (implementation,) = run_in(installed, "import pg_doorman; print(pg_doorman.implementation())")
        assert implementation == (
            "pure Python (compiled extensions built from other sources than these: pg_doorman.prepared)"
        )
        (implementation,) = run_in(
            installed, "import pg_doorman; print(pg_doorman.implementation())", PG_DOORMAN_PURE_PYTHON="1"
        )
        assert implementation == "pure Python (PG_DOORMAN_PURE_PYTHON=1)"
    finally:
        source.write_bytes(original)
    (implementation,) = run_in(installed, "import pg_doorman; print(pg_doorman.implementation())")
    assert implementation == "compiled"
