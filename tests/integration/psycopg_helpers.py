"""Small psycopg helpers the integration tests share: connect through a pooler, read one value, cut or close a
connection the way a crashed or impatient client would."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any

import psycopg


def connect(proc: Any, **kwargs: Any) -> psycopg.Connection[Any]:
    """A psycopg connection through the pooler; autocommit, no server-side prepared statements."""
    kwargs.setdefault("autocommit", True)
    kwargs.setdefault("prepare_threshold", None)
    kwargs.setdefault("connect_timeout", 10)
    conn: psycopg.Connection[Any] = proc.connect(**kwargs)
    return conn


def scalar(conn: psycopg.Connection[Any], sql: str, params: Any = None) -> Any:
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return row[0]


def close_quietly(conn: psycopg.Connection[Any]) -> None:
    try:
        conn.close()
    except Exception:
        pass


def drop_socket(conn: psycopg.Connection[Any]) -> None:
    """Cut the client's TCP connection (FIN, no Terminate message), as a crashed client would."""
    with socket.socket(fileno=os.dup(conn.fileno())) as sock:
        sock.shutdown(socket.SHUT_RDWR)


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``predicate`` every 50 ms until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)
