"""Starting a pg_doorman with its web listener on, and plain HTTP requests to it (urllib, raw sockets, curl)."""

from __future__ import annotations

import base64
import gzip
import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from pg_doorman.devcluster import find_free_port

ADMIN = ("admin", "admin_pass")  # conftest's ADMIN_USER / ADMIN_PASSWORD


@dataclass
class HttpReply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


def web_config(base: dict[str, Any], section: str = "web", **web: Any) -> dict[str, Any]:
    """``base`` (a make_pool_config result) with a web section on a free loopback port."""
    config = dict(base)
    config[section] = {"enabled": True, "host": "127.0.0.1", "port": find_free_port(), **web}
    return config


def web_port(config: dict[str, Any]) -> int:
    section = config.get("web") or config["prometheus"]
    return int(section["port"])


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def request(
    port: int,
    path: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    auth: tuple[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 10.0,
) -> HttpReply:
    all_headers = dict(headers or {})
    if auth is not None:
        all_headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, headers=all_headers, data=body)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            reply = HttpReply(resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read())
    except urllib.error.HTTPError as exc:
        reply = HttpReply(exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read())
    if reply.headers.get("content-encoding") == "gzip":
        reply.body = gzip.decompress(reply.body)
    return reply


def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes it (or ``timeout``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
        return b"".join(chunks)


def curl(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", *args], capture_output=True, text=True, timeout=timeout, check=False)
