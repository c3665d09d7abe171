"""Small psycopg helpers the integration tests share: connect through a pooler, read one value, cut or close a
connection the way a crashed or impatient client would."""

from __future__ import annotations

import os
import socket
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
