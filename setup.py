"""Optional compiled hot path: client.py, server.py, pool/__init__.py and prepared.py compiled by Cython.

The same files are the pure-Python implementation: nothing in them is Cython-specific. When Cython is not
available, or PG_DOORMAN_PURE_PYTHON=1 is set at build time, the package installs as plain Python. At run time
PG_DOORMAN_PURE_PYTHON=1 also makes an installed package import the .py files (see pg_doorman/__init__.py), which
is how CI runs the whole suite against both.
"""

from __future__ import annotations

import os

from setuptools import setup

HOT_MODULES = [
    "src/pg_doorman/client.py",
    "src/pg_doorman/server.py",
    "src/pg_doorman/pool/__init__.py",
    "src/pg_doorman/prepared.py",
]


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
            compiler_directives={"language_level": "3", "binding": False, "boundscheck": False},
            quiet=True,
        )
    )


setup(ext_modules=extensions())
