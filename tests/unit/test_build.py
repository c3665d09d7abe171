"""Which implementation of the hot path runs: compiled (Cython) or the pure-Python source of the same files.

scripts/test.sh runs the suite twice and tells each run what to expect (PG_DOORMAN_EXPECT_HOT_PATH), so a
failed compile cannot make CI silently test pure Python twice.
"""

from __future__ import annotations

import importlib.machinery
import os
import re
import subprocess
import sys
from pathlib import Path

import pg_doorman
from pg_doorman import client, connection, context, pool, prepared, server

SRC = Path(pg_doorman.__file__).resolve().parent


def test_implementation_matches_what_the_run_expects() -> None:
    """Outside scripts/test.sh: compiled when the extensions are there (and not stale), else pure Python."""
    built = any(SRC.glob("client.cpython-*.so")) and os.environ.get("PG_DOORMAN_PURE_PYTHON") != "1"
    expected = os.environ.get("PG_DOORMAN_EXPECT_HOT_PATH", "compiled" if built else "pure Python")
    got = pg_doorman.implementation()
    assert got.startswith(expected), got


def test_hot_modules_come_from_one_kind_of_file() -> None:
    """The compiled modules share C types: a mix of compiled and source modules must never be imported."""
    kinds = {
        m.__name__: (m.__file__ or "").endswith(".py") for m in (client, connection, context, pool, prepared, server)
    }
    assert len(set(kinds.values())) == 1, kinds


def test_pure_python_switch_imports_sources() -> None:
    code = "import pg_doorman, pg_doorman.client as c; print(pg_doorman.implementation()); print(c.__file__)"
    env = dict(os.environ, PG_DOORMAN_PURE_PYTHON="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    assert lines[0] == "pure Python (PG_DOORMAN_PURE_PYTHON=1)"
    assert lines[1].endswith("client.py")


def test_pxd_declarations_cover_every_slot() -> None:
    """A compiled class has exactly the attributes its .pxd declares: every __slots__ name must be there."""
    classes = (
        (client, "ClientConnection"),
        (server, "ServerConnection"),
        (server, "Borrower"),
        (server, "Lender"),
        (connection, "Connection"),
        (context, "ClientContext"),
    )
    for module, cls in classes:
        pxd = (SRC / (module.__name__.rsplit(".", 1)[1] + ".pxd")).read_text()
        slots = getattr(module, cls).__dict__.get("__slots__")
        if slots is None:  # compiled: the class has no __slots__, its attributes are C fields
            continue
        for name in slots:
            assert f" {name}\n" in pxd, f"{cls}.{name} missing from the .pxd"


def test_each_hot_module_imports_first() -> None:
    """Compiled modules import each other's C types at load time: any of them may be the first one imported."""
    expected = pg_doorman.implementation()
    for name in ("connection", "server", "pool", "client", "prepared", "context"):
        code = f"import pg_doorman.{name}, pg_doorman; print(pg_doorman.implementation())"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
        assert out.returncode == 0, (name, out.stderr)
        assert out.stdout.strip() == expected, name


def _fake_package(
    root: Path, *, built: tuple[str, ...], stale: tuple[str, ...] = (), header_edited: bool = False
) -> str:
    """Sources (and .pxd files) of the compiled modules and a cimported header, with an 'extension' file for
    those in ``built``; the ones in ``stale`` get a source newer than their extension, and ``header_edited``
    makes the header newer than all of them."""
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    (root / "pool").mkdir()
    for name in pg_doorman.COMPILED_MODULES:
        base = root / name
        for ext in (".py", ".pxd"):
            Path(str(base) + ext).write_text("")
            os.utime(str(base) + ext, (1000, 1000))
        if name in built:
            ext_file = Path(str(base) + suffix)
            ext_file.write_text("")
            os.utime(ext_file, (2000, 2000))
        if name in stale:
            os.utime(str(base) + ".py", (3000, 3000))
    header = root / "directio.pxd"
    header.write_text("")
    os.utime(header, (3000, 3000) if header_edited else (1000, 1000))
    return str(root)


def test_compiled_build_problem(tmp_path: Path) -> None:
    every = pg_doorman.COMPILED_MODULES
    (tmp_path / "all").mkdir()
    assert pg_doorman.compiled_build_problem(_fake_package(tmp_path / "all", built=every)) == ""
    (tmp_path / "none").mkdir()
    assert pg_doorman.compiled_build_problem(_fake_package(tmp_path / "none", built=())) == ""
    (tmp_path / "some").mkdir()
    problem = pg_doorman.compiled_build_problem(_fake_package(tmp_path / "some", built=("client", "server")))
    missing = "pg_doorman.connection, pg_doorman.ledger, pg_doorman.prepared, pg_doorman.pool, pg_doorman.context"
    assert problem == f"compiled build incomplete, missing: {missing}"
    (tmp_path / "stale").mkdir()
    problem = pg_doorman.compiled_build_problem(_fake_package(tmp_path / "stale", built=every, stale=("server",)))
    assert problem == "compiled extensions older than their source: pg_doorman.server"
    (tmp_path / "header").mkdir()
    problem = pg_doorman.compiled_build_problem(_fake_package(tmp_path / "header", built=every, header_edited=True))
    assert problem == "compiled extensions older than their source: " + ", ".join(
        "pg_doorman." + name.removesuffix("/__init__") for name in every
    )


def test_setup_py_compiles_the_hot_path() -> None:
    """setup.py keeps its own list (it runs before the package can be imported): it must be this one."""
    setup_py = (SRC.parent.parent / "setup.py").read_text()
    listed = re.findall(r'"src/pg_doorman/([\w/]+)\.py"', setup_py)
    assert sorted(listed) == sorted(pg_doorman.COMPILED_MODULES)


def test_codes_pxd_matches_codes_py() -> None:
    """The compiled modules compare against codes.pxd's C constants, the pure-Python ones against codes.py."""
    from pg_doorman import codes

    declared = dict(re.findall(r"^\s+([A-Z_]+) = (\d+)$", (SRC / "codes.pxd").read_text(), re.M))
    defined = {name: str(value) for name, value in vars(codes).items() if name.isupper()}
    assert declared == defined
