"""What the compiled hot path was built from: a content hash of its sources, recorded at build time and checked at
import.

setup.py's build_ext writes MANIFEST next to the extensions it built: for each extension file, the sha256 of the
sources it was compiled from (`source_digests`). pg_doorman/__init__.py hashes the sources it finds and imports the
extensions only when every one matches its record (`compiled_build_problem`). File times cannot tell: an installer
writes files in whatever order it likes (pip extracts a wheel's .so a few milliseconds before its .py), and a
checkout or a copy gives every file a new time whether it changed or not.

An extension is built from its .py and the .pxd files it cimports; to keep the rule simple, every .pxd of the
package counts. Hashing them is cheap (a few small files, once per process).

This module imports nothing from pg_doorman: setup.py loads it by path before the package can be imported.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping

MANIFEST = "compiled_from.txt"
"""The record, at the top of the package: one ``<sha256>  <extension path relative to the package>`` per line."""

_HEADER = (
    "# pg_doorman compiled build: sha256 of the sources (the .py and every .pxd of the package) each extension was\n"
    "# compiled from, written by setup.py and checked at import (pg_doorman/buildstamp.py).\n"
)


def _hash_file(digest: hashlib._Hash, package_dir: str, relative: str) -> None:
    with open(os.path.join(package_dir, relative), "rb") as f:
        content = f.read()
    # Name and length first: the same bytes split differently between files must not hash the same.
    digest.update(f"{relative}\0{len(content)}\0".encode())
    digest.update(content)


def _pxd_files(package_dir: str) -> list[str]:
    found = []
    for folder, dirs, files in os.walk(package_dir):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in files:
            if name.endswith(".pxd"):
                found.append(os.path.relpath(os.path.join(folder, name), package_dir).replace(os.sep, "/"))
    return sorted(found)


def source_digests(package_dir: str, modules: Iterable[str]) -> dict[str, str]:
    """sha256 (hex) of what the extension of each module (``"client"``, ``"pool/__init__"``) is compiled from: its
    .py and every .pxd of the package. A module without its .py is left out."""
    shared = hashlib.sha256()
    for relative in _pxd_files(package_dir):
        _hash_file(shared, package_dir, relative)
    digests = {}
    for module in modules:
        relative = module + ".py"
        if os.path.exists(os.path.join(package_dir, relative)):
            digest = shared.copy()
            _hash_file(digest, package_dir, relative)
            digests[module] = digest.hexdigest()
    return digests


def read_manifest(package_dir: str) -> dict[str, str]:
    """The recorded digests by extension path (relative to the package, with "/"); empty without a record."""
    try:
        with open(os.path.join(package_dir, MANIFEST), encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    recorded = {}
    for line in lines:
        parts = line.split(None, 1)
        if len(parts) == 2 and not line.startswith("#"):
            recorded[parts[1].strip()] = parts[0]
    return recorded


def write_manifest(package_dir: str, built: Mapping[str, str], failed: Iterable[str] = ()) -> None:
    """Record ``built`` (extension path -> digest) and forget ``failed`` (extensions whose build failed: what is
    left in their place is not known to match anything), keeping the other records (e.g. another Python's build
    in the same tree). Replaced atomically, so a reader never sees half a file."""
    recorded = read_manifest(package_dir)
    for relative in failed:
        recorded.pop(relative, None)
    recorded.update(built)
    path = os.path.join(package_dir, MANIFEST)
    text = _HEADER + "".join(f"{digest}  {relative}\n" for relative, digest in sorted(recorded.items()))
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(temporary, path)
