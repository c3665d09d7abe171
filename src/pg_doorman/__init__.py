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

_PURE = os.environ.get("PG_DOORMAN_PURE_PYTHON") == "1"
_stale: list[str] = []


class _SourceFirstFinder:
    """Finds pg_doorman submodules; uses the .py source instead of a compiled extension next to it when
    PG_DOORMAN_PURE_PYTHON=1 (CI tests both) or when the source is newer than the extension (an edited file
    must never run as stale compiled code; scripts/setup.sh rebuilds it)."""

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
        if not os.path.exists(source):
            return spec
        if not _PURE:
            if os.path.getmtime(source) <= os.path.getmtime(origin):
                return spec
            _stale.append(fullname)
        return importlib.util.spec_from_file_location(
            fullname, source, submodule_search_locations=spec.submodule_search_locations
        )


sys.meta_path.insert(0, _SourceFirstFinder)


def compiled() -> bool:
    """Whether the hot path runs compiled (Cython) code."""
    from pg_doorman import client

    return not client.__file__.endswith(".py")


def stale_extensions() -> list[str]:
    """Modules whose compiled extension was older than the source and was therefore not used."""
    return list(_stale)
