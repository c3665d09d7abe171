"""Unit-test fixtures shared by every module of tests/unit."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pg_doorman import connection


@pytest.fixture(autouse=True)
def end_left_drains() -> Iterator[None]:
    """A connection closing after an error stays in connection.py's module-level set until its connection_lost,
    which a stand-in transport or a finished event loop never delivers: end such drains after each test, so that
    the next test (which may count drains) starts with none."""
    yield
    connection.forget_drains()
