"""Durations, sizes and file modes as written in configuration files."""

from __future__ import annotations

import pytest

from pg_doorman.config.units import (
    DURATION_EXPECTED,
    SIZE_EXPECTED,
    format_duration,
    format_size,
    parse_duration,
    parse_file_mode,
    parse_size,
)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (0, 0.0),
        (250, 0.25),
        (3000, 3.0),
        ("250ms", 0.25),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        ("1500", 1.5),  # bare numeric string = milliseconds, as in the original
        ("1.5s", 1.5),
        ("0.5m", 30.0),
        ("30S", 30.0),
        ("250MS", 0.25),
        ("  10 s ", 10.0),
        ("0s", 0.0),
    ],
)
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["", "s", "30x", "30 sec", "1h30m", "abc", "1..5s", True, 1.5, None, [1]])
def test_parse_duration_rejects_garbage(value: object) -> None:
    with pytest.raises(ValueError, match="expected a duration like '30s'"):
        parse_duration(value)


@pytest.mark.parametrize("value", [-1, "-5s", "-100"])
def test_parse_duration_rejects_negative(value: object) -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        parse_duration(value)


def test_duration_error_says_what_is_expected() -> None:
    with pytest.raises(ValueError) as info:
        parse_duration("soon")
    assert DURATION_EXPECTED in str(info.value)
    assert "'soon'" in str(info.value)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (0, 0),
        (4096, 4096),
        ("512B", 512),
        ("512", 512),
        ("64K", 64 * 1024),
        ("64KB", 64 * 1024),
        ("64kb", 64 * 1024),
        ("1M", 1024**2),
        ("1MB", 1024**2),
        ("256mb", 256 * 1024**2),
        ("1G", 1024**3),
        ("2GB", 2 * 1024**3),
        ("1MiB", 1024**2),
        (" 1 MB ", 1024**2),
        ("1.5KB", 1536),
    ],
)
def test_parse_size(value: object, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize("value", ["", "MB", "1XB", "1 megabyte", True, 1.5, None])
def test_parse_size_rejects_garbage(value: object) -> None:
    with pytest.raises(ValueError, match="expected a size like"):
        parse_size(value)


@pytest.mark.parametrize("value", [-1, "-1MB"])
def test_parse_size_rejects_negative(value: object) -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        parse_size(value)


def test_parse_size_rejects_fractional_bytes() -> None:
    with pytest.raises(ValueError, match="whole number of bytes"):
        parse_size("1.5B")


def test_size_error_says_what_is_expected() -> None:
    with pytest.raises(ValueError) as info:
        parse_size("big")
    assert SIZE_EXPECTED in str(info.value)


@pytest.mark.parametrize(("value", "mode"), [("0600", 0o600), ("600", 0o600), ("0o660", 0o660), ("0777", 0o777)])
def test_parse_file_mode(value: str, mode: int) -> None:
    assert parse_file_mode(value) == mode


@pytest.mark.parametrize("value", ["", "0800", "rw", "01777", 600, "0o"])
def test_parse_file_mode_rejects(value: object) -> None:
    with pytest.raises(ValueError):
        parse_file_mode(value)


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.25, "250ms"), (3.0, "3s"), (90.0, "90s"), (600.0, "10m"), (3600.0, "1h"), (0, "0ms")]
)
def test_format_duration_round_trips(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(("size", "text"), [(256 * 1024**2, "256MB"), (1024, "1KB"), (1000, "1000B"), (0, "0B")])
def test_format_size_round_trips(size: int, text: str) -> None:
    assert format_size(size) == text
    assert parse_size(text) == size
