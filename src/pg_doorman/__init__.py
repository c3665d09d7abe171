"""pg_doorman: a PostgreSQL connection pooler."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

__version__ = "0.1.0"

PURE_PYTHON = os.environ.get("PG_DOORMAN_PURE_PYTHON") == "1"


COMPILED_MODULES = ("connection", "ledger", "client", "prepared", "server", "pool/__init__", "context")
"""The hot path, compiled by Cython when it can be (setup.py). They share C types (client.pxd cimports
server.pxd, ...), so they are used all together or not at all."""


def _newest_pxd_mtime(package_dir: str) -> float:
    """An extension is built from its .py and from .pxd files: its own and those it cimports (any of the
    package's, to keep it simple)."""
    mtime = 0.0
    for folder, _, files in os.walk(package_dir):
        for name in files:
            if name.endswith(".pxd"):
                mtime = max(mtime, os.path.getmtime(os.path.join(folder, name)))
    return mtime


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_compiled_ok: bool | None = None
_unusable_reason = ""


def compiled_build_problem(package_dir: str) -> str:
    """Why the compiled modules in ``package_dir`` must not be used ("" when they can be, or when there are none):
    some are older than their .py or a .pxd, or only some of them were built (they share C types)."""
    stale: list[str] = []
    missing: list[str] = []
    newest_pxd = _newest_pxd_mtime(package_dir)
    for name in COMPILED_MODULES:
        base = os.path.join(package_dir, *name.split("/"))
        module = "pg_doorman." + name.removesuffix("/__init__").replace("/", ".")
        built = [base + suffix for suffix in importlib.machinery.EXTENSION_SUFFIXES if os.path.exists(base + suffix)]
        if not built:
            missing.append(module)
        elif os.path.exists(base + ".py") and max(os.path.getmtime(base + ".py"), newest_pxd) > os.path.getmtime(
            built[0]
        ):
            stale.append(module)
    if stale:
        return "compiled extensions older than their source: " + ", ".join(stale)
    if missing and len(missing) < len(COMPILED_MODULES):
        return "compiled build incomplete, missing: " + ", ".join(missing)
    return ""


def _compiled_usable() -> bool:
    """Whether the compiled modules may be imported (decided once, for all of them together)."""
    global _compiled_ok, _unusable_reason
    if _compiled_ok is None:
        _unusable_reason = compiled_build_problem(_PACKAGE_DIR)
        _compiled_ok = not PURE_PYTHON and not _unusable_reason
    return _compiled_ok


class _SourceFirstFinder:
    """Imports pg_doorman modules from their .py files instead of the compiled extensions next to them when
    PG_DOORMAN_PURE_PYTHON=1 (CI runs the suite both ways), when a source is newer than its extension (an
    edited file never runs as stale compiled code; scripts/setup.sh rebuilds it), or when only some of the
    modules were compiled."""

    @classmethod
    def find_spec(
        cls, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if not fullname.startswith("pg_doorman."):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        origin = spec.origin if spec is not None else None
        if spec is None or origin is None or not origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
            return spec
        source = origin[: origin.index(".", origin.rindex(os.sep))] + ".py"
        if not os.path.exists(source) or _compiled_usable():
            return spec
        return importlib.util.spec_from_file_location(
            fullname, source, submodule_search_locations=spec.submodule_search_locations
        )


sys.meta_path.insert(0, _SourceFirstFinder)


def implementation() -> str:
    """How the hot path runs: "compiled" (all Cython extensions in use) or "pure Python" (with the reason)."""
    modules = [importlib.import_module("pg_doorman." + name.removesuffix("/__init__")) for name in COMPILED_MODULES]
    if all(not (m.__file__ or "").endswith(".py") for m in modules):
        return "compiled"
    if PURE_PYTHON:
        return "pure Python (PG_DOORMAN_PURE_PYTHON=1)"
    if _unusable_reason:
        return f"pure Python ({_unusable_reason})"
    return "pure Python"
