"""The compiled hot path: connection.py, ledger.py, client.py, server.py, prepared.py, rewrite.py, pool/__init__.py
and context.py built by Cython (pg_doorman.COMPILED_MODULES; tests/unit/test_build.py checks the two lists agree).

Those files are the pure-Python implementation too; the `.pxd` files next to them only give their classes and
forwarding loops C types. When Cython or a C compiler is missing, or PG_DOORMAN_PURE_PYTHON=1 is set at build
time, the package installs as plain Python. At run time PG_DOORMAN_PURE_PYTHON=1 makes pg_doorman import the
`.py` files even when extensions are present (see pg_doorman/__init__.py); CI runs the suite both ways.

Next to the extensions it built, build_ext records the hash of the sources each was compiled from
(pg_doorman/buildstamp.py, file compiled_from.txt, in the wheel too): pg_doorman imports an extension only when
the sources beside it still hash the same.
"""

from __future__ import annotations

import importlib.util
import os
from types import ModuleType
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

PACKAGE_DIR = "src/pg_doorman"
HOT_MODULES = [
    "src/pg_doorman/connection.py",
    "src/pg_doorman/ledger.py",
    "src/pg_doorman/server.py",
    "src/pg_doorman/client.py",
    "src/pg_doorman/prepared.py",
    "src/pg_doorman/rewrite.py",
    "src/pg_doorman/pool/__init__.py",
    "src/pg_doorman/context.py",
    "src/pg_doorman/stats.py",
    "src/pg_doorman/tlsstream.py",
]


def load_buildstamp() -> ModuleType:
    """pg_doorman/buildstamp.py by path: the package itself cannot be imported before it is built."""
    spec = importlib.util.spec_from_file_location("_pg_doorman_buildstamp", os.path.join(PACKAGE_DIR, "buildstamp.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


buildstamp = load_buildstamp()
# Hashed before Cython reads the files: a source edited during the build then fails the check at import (it runs
# as pure Python until rebuilt) instead of passing it with code compiled from the older text.
SOURCE_DIGESTS: dict[str, str] = buildstamp.source_digests(
    PACKAGE_DIR, [path.removeprefix(PACKAGE_DIR + "/").removesuffix(".py") for path in HOT_MODULES]
)


class OptionalBuildExt(build_ext):
    """A failed compile leaves the pure-Python package, which behaves the same (only slower). Every extension that
    was built gets its sources' digest recorded beside it; one whose build failed loses its record."""

    def finalize_options(self) -> None:
        super().finalize_options()
        if self.parallel is None:
            self.parallel = os.cpu_count() or 1  # five independent C files: compile them side by side

    def run(self) -> None:
        self._outcome: dict[str, bool] = {}  # extension name -> built
        try:
            super().run()
        except Exception as exc:
            print(f"pg_doorman: compiled hot path not built ({exc}); using pure Python")
        self._record_sources()

    def build_extension(self, ext: Any) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._outcome[ext.name] = False
            print(f"pg_doorman: {getattr(ext, 'name', ext)} not compiled ({exc}); using pure Python")
            return
        self._outcome[ext.name] = True

    def _record_sources(self) -> None:
        """Update compiled_from.txt in each package directory the extensions went to (the source tree with
        --inplace, build/lib... for a wheel)."""
        by_package: dict[str, tuple[dict[str, str], list[str]]] = {}
        for name, built in self._outcome.items():
            module = name.removeprefix("pg_doorman.").replace(".", "/")
            output = self.get_ext_fullpath(name)
            package = output
            for _ in module.split("/"):
                package = os.path.dirname(package)
            relative = os.path.relpath(output, package).replace(os.sep, "/")
            record, failed = by_package.setdefault(package, ({}, []))
            if built and module in SOURCE_DIGESTS:
                record[relative] = SOURCE_DIGESTS[module]
            else:
                failed.append(relative)
        for package, (record, failed) in by_package.items():
            os.makedirs(package, exist_ok=True)
            buildstamp.write_manifest(package, record, failed)


def extensions() -> list[object]:
    if os.environ.get("PG_DOORMAN_PURE_PYTHON") == "1":
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        return []
    return list(
        cythonize(
            HOT_MODULES,
            compiler_directives={"language_level": "3", "binding": False, "annotation_typing": False},
            quiet=True,
            # All of them, always: they share C types, and a .pxd edit changes what every one of them is built
            # from (pg_doorman/buildstamp.py).
            force=True,
        )
    )


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
