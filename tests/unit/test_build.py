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
from pg_doorman import buildstamp, client, connection, context, ledger, pool, prepared, rewrite, server

SRC = Path(pg_doorman.__file__).resolve().parent


def test_implementation_matches_what_the_run_expects() -> None:
    """Outside scripts/test.sh: compiled when the extensions are there (and not stale), else pure Python."""
    built = any(SRC.glob("client.cpython-*.so")) and os.environ.get("PG_DOORMAN_PURE_PYTHON") != "1"
    expected = os.environ.get("PG_DOORMAN_EXPECT_HOT_PATH", "compiled" if built else "pure Python")
    got = pg_doorman.implementation()
    assert got.startswith(expected), got


def test_hot_modules_come_from_one_kind_of_file() -> None:
    """The compiled modules share C types: a mix of compiled and source modules must never be imported."""
    modules = (client, connection, context, ledger, pool, prepared, rewrite, server)
    kinds = {m.__name__: (m.__file__ or "").endswith(".py") for m in modules}
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
        (rewrite, "StatementRewriter"),
        (prepared, "ServerStatements"),
        (prepared, "Statement"),
        (prepared, "Expect"),
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
    for name in ("connection", "server", "pool", "client", "prepared", "rewrite", "ledger", "context"):
        code = f"import pg_doorman.{name}, pg_doorman; print(pg_doorman.implementation())"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
        assert out.returncode == 0, (name, out.stderr)
        assert out.stdout.strip() == expected, name


def _fake_package(
    root: Path, *, built: tuple[str, ...], recorded: tuple[str, ...] | None = None, suffix: str | None = None
) -> str:
    """Sources (.py and .pxd) of the compiled modules and a cimported header, an 'extension' file for those in
    ``built`` and a build record (compiled_from.txt) with the current digests of those in ``recorded`` (default:
    the built ones). Every extension is given an mtime far older than its sources: only content may count."""
    suffix = suffix or importlib.machinery.EXTENSION_SUFFIXES[0]
    (root / "pool").mkdir()
    for name in pg_doorman.COMPILED_MODULES:
        for ext in (".py", ".pxd"):
            path = Path(str(root / name) + ext)
            path.write_text(f"# {name}{ext}\n")
            os.utime(path, (3000, 3000))
        if name in built:
            ext_file = Path(str(root / name) + suffix)
            ext_file.write_text("")
            os.utime(ext_file, (1000, 1000))
    (root / "directio.pxd").write_text("# header\n")
    digests = buildstamp.source_digests(str(root), pg_doorman.COMPILED_MODULES)
    buildstamp.write_manifest(
        str(root), {name + suffix: digests[name] for name in (built if recorded is None else recorded)}
    )
    return str(root)


def _modules(names: tuple[str, ...]) -> str:
    return ", ".join("pg_doorman." + name.removesuffix("/__init__") for name in names)


def test_compiled_build_problem(tmp_path: Path) -> None:
    every = pg_doorman.COMPILED_MODULES
    (tmp_path / "all").mkdir()
    assert pg_doorman.compiled_build_problem(_fake_package(tmp_path / "all", built=every)) == ""
    (tmp_path / "none").mkdir()
    assert pg_doorman.compiled_build_problem(_fake_package(tmp_path / "none", built=())) == ""
    (tmp_path / "some").mkdir()
    problem = pg_doorman.compiled_build_problem(_fake_package(tmp_path / "some", built=("client", "server")))
    missing = tuple(name for name in every if name not in ("client", "server"))
    assert problem == "compiled build incomplete, missing: " + _modules(missing)
    (tmp_path / "unrecorded").mkdir()
    problem = pg_doorman.compiled_build_problem(_fake_package(tmp_path / "unrecorded", built=every, recorded=missing))
    assert problem == "compiled extensions with no record of their sources in compiled_from.txt: " + _modules(
        ("client", "server")
    )


def test_extension_older_than_its_source_but_built_from_it_is_used(tmp_path: Path) -> None:
    """What pip does: it writes each .so a few ms before its .py (and a checkout or copy gives all files new
    times): the files' times say nothing, the content decides."""
    package = _fake_package(tmp_path, built=pg_doorman.COMPILED_MODULES)
    for name in pg_doorman.COMPILED_MODULES:
        assert os.path.getmtime(str(tmp_path / name) + ".py") > os.path.getmtime(
            str(tmp_path / name) + importlib.machinery.EXTENSION_SUFFIXES[0]
        )
    assert pg_doorman.compiled_build_problem(package) == ""


def test_edited_source_or_header_makes_the_build_stale(tmp_path: Path) -> None:
    every = pg_doorman.COMPILED_MODULES
    (tmp_path / "source").mkdir()
    package = _fake_package(tmp_path / "source", built=every)
    server = tmp_path / "source" / "server.py"
    server.write_text(server.read_text() + "# edited\n")
    os.utime(server, (0, 0))  # older than its extension: still stale
    assert pg_doorman.compiled_build_problem(package) == (
        "compiled extensions built from other sources than these: pg_doorman.server"
    )
    server.write_text(server.read_text().replace("# edited\n", ""))  # undone: the build matches again
    assert pg_doorman.compiled_build_problem(package) == ""
    (tmp_path / "header").mkdir()
    package = _fake_package(tmp_path / "header", built=every)
    (tmp_path / "header" / "directio.pxd").write_text("# header, edited\n")
    assert pg_doorman.compiled_build_problem(package) == (
        "compiled extensions built from other sources than these: " + _modules(every)
    )
    (tmp_path / "new-header").mkdir()
    package = _fake_package(tmp_path / "new-header", built=every)
    (tmp_path / "new-header" / "pool" / "ledger.pxd").write_text("")
    assert pg_doorman.compiled_build_problem(package).startswith("compiled extensions built from other sources")


def test_build_record_keeps_other_builds_and_forgets_failed_ones(tmp_path: Path) -> None:
    """Another Python's extensions in the same tree keep their record; an extension whose rebuild failed loses
    its own (whatever file is left there is not known to match its sources)."""
    package = _fake_package(tmp_path, built=pg_doorman.COMPILED_MODULES, suffix=".cpython-399-other.so")
    ours = importlib.machinery.EXTENSION_SUFFIXES[0]
    digests = buildstamp.source_digests(package, pg_doorman.COMPILED_MODULES)
    buildstamp.write_manifest(package, {"client" + ours: digests["client"]}, failed=["server" + ours])
    buildstamp.write_manifest(package, {"server" + ours: digests["server"]})
    buildstamp.write_manifest(package, {}, failed=["server" + ours])
    recorded = buildstamp.read_manifest(package)
    assert recorded["client" + ours] == digests["client"]
    assert "server" + ours not in recorded
    assert recorded["pool/__init__.cpython-399-other.so"] == digests["pool/__init__"]
    assert len(recorded) == len(pg_doorman.COMPILED_MODULES) + 1
    assert not [p for p in os.listdir(package) if p.endswith(".tmp")]


def test_source_digest_frames_each_file(tmp_path: Path) -> None:
    """Moving bytes from one file to another changes the digest; __pycache__ is not a source."""
    (tmp_path / "a.pxd").write_text("ab")
    (tmp_path / "b.pxd").write_text("c")
    (tmp_path / "m.py").write_text("")
    first = buildstamp.source_digests(str(tmp_path), ["m"])["m"]
    (tmp_path / "a.pxd").write_text("a")
    (tmp_path / "b.pxd").write_text("bc")
    assert buildstamp.source_digests(str(tmp_path), ["m"])["m"] != first
    (tmp_path / "a.pxd").write_text("ab")
    (tmp_path / "b.pxd").write_text("c")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "x.pxd").write_text("ignored")
    assert buildstamp.source_digests(str(tmp_path), ["m", "absent"]) == {"m": first}


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
