"""Human-readable durations, byte sizes and file modes used in the configuration.

The original pg_doorman accepts unit strings only on some keys and plain milliseconds on others; here every
duration and size key goes through these parsers, so ``"30s"`` works wherever a timeout is expected.
Each parser raises :class:`ValueError` whose text says what was expected; the loader adds file and key path.
"""

from __future__ import annotations

import re

DURATION_EXPECTED = "a duration like '30s', '5m', '250ms' or integer milliseconds"
SIZE_EXPECTED = "a size like '64KB', '1MB', '1G', '512B' or integer bytes"
MODE_EXPECTED = "an octal file mode like '0600', '660' or '0o660'"

_DURATION_UNITS: dict[str, float] = {
    "": 0.001,  # a bare number is milliseconds, as in the original
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}

_SIZE_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1024**4,
    "tib": 1024**4,
}

# Sign is captured so that "-5s" gets a clear "negative" message instead of a generic syntax one.
_QUANTITY = re.compile(r"^\s*([+-]?)\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$", re.IGNORECASE)


def _split_quantity(text: str, expected: str) -> tuple[float, str]:
    match = _QUANTITY.match(text)
    if match is None:
        raise ValueError(f"expected {expected}, got {text!r}")
    sign, number, unit = match.groups()
    if sign == "-" and float(number) != 0:
        raise ValueError(f"must not be negative, got {text!r}")
    return float(number), unit.lower()


def _check_number(value: object, expected: str, what: str) -> int:
    # bool is an int subclass; `true` is never a meaningful timeout or size.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected {expected}, got {value!r}")
    if value < 0:
        raise ValueError(f"must not be negative, got {value} {what}")
    return value


def parse_duration(value: object) -> float:
    """Return ``value`` as seconds.

    Integers are milliseconds (compatible with the original's integer form); strings carry a unit
    (``ms``, ``s``, ``m``, ``h``, ``d``, case-insensitive, fractions allowed) or are bare milliseconds.
    """
    if isinstance(value, str):
        number, unit = _split_quantity(value, DURATION_EXPECTED)
        if unit not in _DURATION_UNITS:
            raise ValueError(f"expected {DURATION_EXPECTED}, got {value!r} (unknown unit {unit!r})")
        return number * _DURATION_UNITS[unit]
    return _check_number(value, DURATION_EXPECTED, "ms") / 1000.0


def parse_size(value: object) -> int:
    """Return ``value`` as bytes; integers are bytes and unit suffixes are 1024-based (``1KB`` = 1024)."""
    if isinstance(value, str):
        number, unit = _split_quantity(value, SIZE_EXPECTED)
        if unit not in _SIZE_UNITS:
            raise ValueError(f"expected {SIZE_EXPECTED}, got {value!r} (unknown unit {unit!r})")
        size = number * _SIZE_UNITS[unit]
        if size != int(size):
            raise ValueError(f"must be a whole number of bytes, got {value!r}")
        return int(size)
    return _check_number(value, SIZE_EXPECTED, "bytes")


def parse_file_mode(value: object) -> int:
    """Return the permission bits of an octal mode string (``"0600"``, ``"600"``, ``"0o660"``)."""
    if not isinstance(value, str):
        raise ValueError(f"expected {MODE_EXPECTED} (quoted, so it is not read as a decimal number), got {value!r}")
    text = value.strip().lower()
    text = text.removeprefix("0o")
    if not text or any(ch not in "01234567" for ch in text):
        raise ValueError(f"expected {MODE_EXPECTED}, got {value!r}")
    mode = int(text, 8)
    if mode > 0o777:
        raise ValueError(f"only permission bits (0777) are allowed, got {value!r}")
    return mode


def format_duration(seconds: float) -> str:
    """Render seconds in the shortest exact unit form, for generated configs and SHOW output."""
    millis = round(seconds * 1000)
    for unit, factor in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if millis and millis % factor == 0:
            return f"{millis // factor}{unit}"
    return f"{millis}ms"


def format_size(size: int) -> str:
    """Render bytes in the largest exact 1024-based unit (``268435456`` → ``"256MB"``)."""
    for unit, factor in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"
