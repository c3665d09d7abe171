"""The compiled hot path: connection.py, ledger.py, client.py, server.py, prepared.py, pool/__init__.py and
context.py built by Cython (pg_doorman.COMPILED_MODULES; tests/unit/test_build.py checks the two lists agree).

Those files are the pure-Python implementation too; the `.pxd` files next to them only give their classes and
forwarding loops C types. When Cython or a C compiler is missing, or PG_DOORMAN_PURE_PYTHON=1 is set at build
time, the package installs as plain Python. At run time PG_DOORMAN_PURE_PYTHON=1 makes pg_doorman import the
`.py` files even when extensions are present (see pg_doorman/__init__.py); CI runs the suite both ways.
"""

from __future__ import annotations

import os

from setuptools import setup
from setuptools.command.build_ext import build_ext

HOT_MODULES = [
    "src/pg_doorman/connection.py",
    "src/pg_doorman/ledger.py",
    "src/pg_doorman/server.py",
    "src/pg_doorman/client.py",
    "src/pg_doorman/prepared.py",
    "src/pg_doorman/pool/__init__.py",
    "src/pg_doorman/context.py",
]


class OptionalBuildExt(build_ext):
    """A failed compile leaves the pure-Python package, which behaves the same (only slower)."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            print(f"pg_doorman: compiled hot path not built ({exc}); using pure Python")

    def build_extension(self, ext: object) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            print(f"pg_doorman: {getattr(ext, 'name', ext)} not compiled ({exc}); using pure Python")


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
            # All of them, always: they share C types, and pg_doorman treats every extension older than any
            # .pxd of the package as stale (pg_doorman/__init__.py).
            force=True,
        )
    )


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
