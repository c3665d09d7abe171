"""pg_doorman: a PostgreSQL connection pooler."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

from pg_doorman import buildstamp

__version__ = "0.1.0"

PURE_PYTHON = os.environ.get("PG_DOORMAN_PURE_PYTHON") == "1"


COMPILED_MODULES = (
    "connection",
    "ledger",
    "client",
    "prepared",
    "rewrite",
    "server",
    "pool/__init__",
    "context",
    "stats",
    "tlsstream",
)
"""The hot path, compiled by Cython when it can be (setup.py). They share C types (client.pxd cimports
server.pxd, ...), so they are used all together or not at all."""


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_compiled_ok: bool | None = None
_unusable_reason = ""


def compiled_build_problem(package_dir: str) -> str:
    """Why the compiled modules in ``package_dir`` must not be used ("" when they can be, or when there are none):
    some were not built from the sources next to them (by content: see buildstamp.py), or carry no record of what
    they were built from, or only some of them were built (they share C types)."""
    stale: list[str] = []
    unrecorded: list[str] = []
    missing: list[str] = []
    recorded = buildstamp.read_manifest(package_dir)
    current: dict[str, str] | None = None
    for name in COMPILED_MODULES:
        base = os.path.join(package_dir, *name.split("/"))
        module = "pg_doorman." + name.removesuffix("/__init__").replace("/", ".")
        built = [base + suffix for suffix in importlib.machinery.EXTENSION_SUFFIXES if os.path.exists(base + suffix)]
        if not built:
            missing.append(module)
            continue
        if not os.path.exists(base + ".py"):
            continue  # installed without its source: nothing to compare with
        if current is None:
            current = buildstamp.source_digests(package_dir, COMPILED_MODULES)
        # built[0] is the file the import system picks (EXTENSION_SUFFIXES is its order).
        want = recorded.get(os.path.relpath(built[0], package_dir).replace(os.sep, "/"))
        if want is None:
            unrecorded.append(module)
        elif want != current.get(name):
            stale.append(module)
    if stale:
        return "compiled extensions built from other sources than these: " + ", ".join(stale)
    if unrecorded:
        return f"compiled extensions with no record of their sources in {buildstamp.MANIFEST}: " + ", ".join(unrecorded)
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
    PG_DOORMAN_PURE_PYTHON=1 (CI runs the suite both ways), when a source differs from what its extension was
    built from (an edited file never runs as stale compiled code; scripts/setup.sh rebuilds it), or when only some
    of the modules were compiled."""

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
