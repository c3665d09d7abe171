"""Typed access to one table of the merged document, collecting problems instead of raising.

The reading code *is* the schema: every key a section asks for (present or not) becomes a known key, and
whatever is left in the table when the section is finished is reported as unknown, with the closest known
key as a suggestion. A bad value records a problem naming file, key path and what was expected, and the
default is returned so that the rest of the file is still checked.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TypeVar

from pg_doorman.config.errors import KeyPath, format_problem
from pg_doorman.config.sources import MergedSource
from pg_doorman.config.units import parse_duration, parse_file_mode, parse_size

_T = TypeVar("_T")

_TYPE_NAMES = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    list: "list",
    dict: "table",
}


def describe(value: object) -> str:
    """``value`` as it would appear in an error: its config type and, for scalars, the value itself."""
    name = _TYPE_NAMES.get(type(value), type(value).__name__)
    if isinstance(value, dict | list):
        return name
    return f"{name} {value!r}"


class Problems:
    """Problems found so far, each already formatted as one line."""

    def __init__(self, source: MergedSource) -> None:
        self.source = source
        self.lines: list[str] = list(source.problems)
        self.warnings: list[str] = []
        self.notes: list[str] = []  # accepted settings that are not in effect yet (see config/later.py)

    def add(self, path: KeyPath, message: str) -> None:
        self.lines.append(format_problem(self.source.file_of(path), path, message))

    def warn(self, path: KeyPath, message: str) -> None:
        self.warnings.append(format_problem(self.source.file_of(path), path, message))

    def note(self, path: KeyPath, message: str) -> None:
        self.notes.append(format_problem(self.source.file_of(path), path, message))


class Section:
    """One table (``general``, ``pools.mydb``, ``pools.mydb.users[0]``…) being read."""

    def __init__(self, problems: Problems, path: KeyPath, data: Mapping[str, object]) -> None:
        self.problems = problems
        self.path = path
        self.data = data
        self._known: list[str] = []

    # -- generic access -------------------------------------------------------------------------------

    def key_path(self, key: str | int) -> KeyPath:
        return (*self.path, key)

    def error(self, key: str, message: str) -> None:
        self.problems.add(self.key_path(key), message)

    def has(self, key: str) -> bool:
        self._remember(key)
        return key in self.data

    def raw(self, key: str) -> object | None:
        """The value as written (None when absent); marks ``key`` as known."""
        self._remember(key)
        return self.data.get(key)

    def _remember(self, key: str) -> None:
        if key not in self._known:
            self._known.append(key)

    def _convert(self, key: str, convert: Callable[[object], _T]) -> _T | None:
        value = self.raw(key)
        if value is None:
            return None
        try:
            return convert(value)
        except ValueError as exc:
            self.error(key, str(exc))
            return None

    # -- scalars --------------------------------------------------------------------------------------

    def optional_string(self, key: str, *, allow_empty: bool = True) -> str | None:
        def convert(value: object) -> str:
            if not isinstance(value, str):
                raise ValueError(f"expected a string, got {describe(value)}")
            if not allow_empty and not value:
                raise ValueError("must not be empty")
            return value

        return self._convert(key, convert)

    def string(self, key: str, default: str, *, allow_empty: bool = True) -> str:
        value = self.optional_string(key, allow_empty=allow_empty)
        return default if value is None else value

    def required_string(self, key: str, *, allow_empty: bool = True) -> str | None:
        if not self.has(key):
            self.error(key, "required key is missing")
            return None
        return self.optional_string(key, allow_empty=allow_empty)

    def optional_integer(self, key: str, *, minimum: int = 0, maximum: int | None = None) -> int | None:
        def convert(value: object) -> int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"expected an integer, got {describe(value)}")
            _check_range(value, minimum, maximum)
            return value

        return self._convert(key, convert)

    def integer(self, key: str, default: int, *, minimum: int = 0, maximum: int | None = None) -> int:
        value = self.optional_integer(key, minimum=minimum, maximum=maximum)
        return default if value is None else value

    def required_integer(self, key: str, *, minimum: int = 0, maximum: int | None = None) -> int | None:
        if not self.has(key):
            self.error(key, "required key is missing")
            return None
        return self.optional_integer(key, minimum=minimum, maximum=maximum)

    def optional_boolean(self, key: str) -> bool | None:
        def convert(value: object) -> bool:
            if not isinstance(value, bool):
                raise ValueError(f"expected true or false, got {describe(value)}")
            return value

        return self._convert(key, convert)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.optional_boolean(key)
        return default if value is None else value

    def optional_duration(self, key: str) -> float | None:
        return self._convert(key, parse_duration)

    def duration(self, key: str, default: float) -> float:
        value = self.optional_duration(key)
        return default if value is None else value

    def optional_size(self, key: str) -> int | None:
        return self._convert(key, parse_size)

    def size(self, key: str, default: int) -> int:
        value = self.optional_size(key)
        return default if value is None else value

    def file_mode(self, key: str, default: str) -> str:
        """An octal mode string, kept as written (``"0600"``) once it is known to parse."""

        def convert(value: object) -> str:
            parse_file_mode(value)
            assert isinstance(value, str)  # parse_file_mode accepts only strings
            return value

        value = self._convert(key, convert)
        return default if value is None else value

    def optional_choice(self, key: str, choices: Iterable[str]) -> str | None:
        """A string from ``choices``, compared case-insensitively and returned lowercase."""
        allowed = tuple(choices)

        def convert(value: object) -> str:
            if isinstance(value, str) and value.strip().lower() in allowed:
                return value.strip().lower()
            listed = ", ".join(f"'{choice}'" for choice in allowed)
            raise ValueError(f"expected one of {listed}, got {describe(value)}")

        return self._convert(key, convert)

    def choice(self, key: str, default: str, choices: Iterable[str]) -> str:
        value = self.optional_choice(key, choices)
        return default if value is None else value

    # -- containers -----------------------------------------------------------------------------------

    def string_list(self, key: str) -> tuple[str, ...]:
        def convert(value: object) -> tuple[str, ...]:
            if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
                raise ValueError(f"expected a list of strings, got {describe(value)}")
            return tuple(value)

        return self._convert(key, convert) or ()

    def subtables(self) -> Iterator[tuple[str, Section]]:
        """Every entry of a name → table mapping (like ``pools``) as a Section; each name becomes known."""
        for name, value in self.data.items():
            self._remember(name)
            if isinstance(value, dict):
                yield name, Section(self.problems, self.key_path(name), value)
            else:
                self.error(name, f"expected a table, got {describe(value)}")

    def table(self, key: str) -> Section | None:
        """The nested table ``key`` as a Section (None when absent or not a table)."""
        value = self.raw(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            self.error(key, f"expected a table, got {describe(value)}")
            return None
        return Section(self.problems, self.key_path(key), value)

    # -- end ------------------------------------------------------------------------------------------

    def finish(self, unsupported: Iterable[str] = ()) -> None:
        """Report every key that was not asked for: a typo (with a suggestion) or an unsupported setting."""
        not_here = set(unsupported)
        for key in self.data:
            if key in self._known:
                continue
            if key in not_here:
                self.error(key, "this setting of the original pg_doorman is not supported here; remove it")
                continue
            match = difflib.get_close_matches(key, self._known, n=1, cutoff=0.6)
            hint = f"; did you mean '{match[0]}'?" if match else ""
            self.error(key, f"unknown key{hint}")


def _check_range(value: int, minimum: int, maximum: int | None) -> None:
    if maximum is not None and not minimum <= value <= maximum:
        raise ValueError(f"expected an integer from {minimum} to {maximum}, got {value}")
    if value < minimum:
        raise ValueError(f"expected an integer of at least {minimum}, got {value}")
