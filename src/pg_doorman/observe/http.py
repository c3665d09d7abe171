"""A small HTTP/1.1 server that runs in the pooler's own event loop: what ``/metrics`` and the web console need.

Why not a framework: the server answers a few routes with bodies built synchronously in well under a
millisecond, and it must never make the loop wait (no threads, no per-request tasks). An ``asyncio.Protocol``
with a sans-I/O request parser does that in a few hundred lines and adds no dependency.

- `RequestParser` (no I/O) turns bytes into `Request` objects: request line, headers, a ``Content-Length`` body.
  It enforces the limits (`Limits`): a request head over ``max_head`` bytes is 431 (a request line alone over
  ``max_request_line`` is 414), more than ``max_headers`` fields is 431, a body over ``max_body`` is 413,
  anything malformed is 400, ``Transfer-Encoding`` bodies are 501 (no route takes one).
- `HttpConnection` feeds it, calls the handler for each complete request in order (pipelining is fine), writes
  the answer and keeps the connection for the next one (HTTP/1.1 keep-alive; HTTP/1.0 only when asked).
  Slow or half-sent requests (slowloris) get 408 once ``request_timeout`` has passed since their first byte,
  however slowly the bytes trickle in; an idle kept-alive connection is closed after ``idle_timeout``.
  While the peer does not read what it is sent, the connection stops reading what it sends.
- ``HEAD`` is answered as ``GET`` without the body; a body is gzip-compressed when the client accepts it.
- `HttpServer` limits the number of open connections (503 beyond it) and closes them all at stop.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import cast
from urllib.parse import parse_qsl, unquote

log = logging.getLogger("pg_doorman.web")

_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
METHODS_WITH_BODY = ("POST", "PUT", "PATCH")
GZIP_MIN_BYTES = 512
GZIP_LEVEL = 5  # text compresses ~8x already at 5; 9 costs twice the CPU for a few percent


@dataclass(frozen=True, slots=True)
class Limits:
    max_request_line: int = 8 * 1024
    max_head: int = 16 * 1024  # request line + headers
    max_headers: int = 100
    max_body: int = 64 * 1024
    request_timeout: float = 10.0  # from the first byte of a request to its last
    idle_timeout: float = 60.0  # a kept-alive connection with no request
    max_connections: int = 256


@dataclass(frozen=True, slots=True)
class Request:
    method: str  # upper case as sent (methods are case-sensitive); HEAD is kept as HEAD
    target: str  # as sent, e.g. "/api/pools?db=x"
    path: str  # percent-decoded path without the query
    query: dict[str, str]  # last value wins
    version: str  # "HTTP/1.1" or "HTTP/1.0"
    headers: dict[str, str]  # lower-case names; repeated fields joined with ", "
    body: bytes = b""
    peer: str = ""

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name, default)

    @property
    def keep_alive(self) -> bool:
        tokens = {token.strip().lower() for token in self.header("connection").split(",")}
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens


@dataclass(slots=True)
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)
    compressible: bool = True  # gzip it when the client accepts gzip and it is large enough

    @classmethod
    def text(cls, status: int, message: str, headers: list[tuple[str, str]] | None = None) -> Response:
        return cls(status=status, body=(message + "\n").encode(), headers=headers or [])


class HttpError(Exception):
    """A request that cannot be answered normally: the status to send, and the connection is closed after it."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class RequestParser:
    """Bytes in, `Request` objects out (sans-I/O). Raises `HttpError` for what must not be served."""

    def __init__(self, limits: Limits = Limits()) -> None:
        self.limits = limits
        self._buffer = bytearray()
        self._head: tuple[str, str, str, dict[str, str]] | None = None  # parsed, waiting for its body
        self._body_length = 0

    @property
    def has_partial(self) -> bool:
        """Bytes of a request that is not complete yet are buffered."""
        return bool(self._buffer) or self._head is not None

    def feed(self, data: bytes) -> list[tuple[str, str, str, dict[str, str], bytes]]:
        """Add bytes; return every request now complete as (method, target, version, headers, body)."""
        self._buffer += data
        done: list[tuple[str, str, str, dict[str, str], bytes]] = []
        while True:
            if self._head is None:
                head_end = self._buffer.find(b"\r\n\r\n")
                if head_end < 0:
                    self._check_partial_head()
                    return done
                if head_end + 4 > self.limits.max_head:
                    raise HttpError(431, "request header fields too large")
                self._head = self._parse_head(bytes(self._buffer[:head_end]))
                del self._buffer[: head_end + 4]
                self._body_length = self._content_length(self._head[0], self._head[3])
            if len(self._buffer) < self._body_length:
                return done
            method, target, version, headers = self._head
            body = bytes(self._buffer[: self._body_length])
            del self._buffer[: self._body_length]
            self._head = None
            done.append((method, target, version, headers, body))

    def _check_partial_head(self) -> None:
        buffered = len(self._buffer)
        line_end = self._buffer.find(b"\r\n")
        if line_end < 0 and buffered > self.limits.max_request_line:
            raise HttpError(414, "request line too long")
        if buffered > self.limits.max_head:
            raise HttpError(431, "request header fields too large")

    def _parse_head(self, head: bytes) -> tuple[str, str, str, dict[str, str]]:
        try:
            text = head.decode("latin-1")
        except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
            raise HttpError(400, "bad request")
        lines = text.split("\r\n")
        # RFC 9112 §2.2: a server SHOULD ignore at least one empty line before the request line.
        while lines and not lines[0]:
            lines.pop(0)
        if not lines:
            raise HttpError(400, "empty request")
        request_line = lines[0]
        if len(request_line) > self.limits.max_request_line:
            raise HttpError(414, "request line too long")
        parts = request_line.split(" ")
        if len(parts) != 3:
            raise HttpError(400, "malformed request line")
        method, target, version = parts
        if not method or not set(method) <= _TOKEN_CHARS:
            raise HttpError(400, "malformed method")
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            if version.startswith("HTTP/"):
                raise HttpError(505, "HTTP version not supported")
            raise HttpError(400, "malformed request line")
        if not target.startswith("/") and target != "*":
            raise HttpError(400, "only origin-form request targets are served")
        if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in target):
            raise HttpError(400, "malformed request target")
        fields = lines[1:]
        if len(fields) > self.limits.max_headers:
            raise HttpError(431, "too many header fields")
        headers: dict[str, str] = {}
        for line in fields:
            name, colon, value = line.partition(":")
            # No obsolete line folding, no space before the colon (RFC 9112 §5.1, §5.2): both are smuggling tools.
            if not colon or not name or not set(name) <= _TOKEN_CHARS:
                raise HttpError(400, "malformed header field")
            if any(c in value for c in "\r\n\0"):
                raise HttpError(400, "malformed header field")
            key = name.lower()
            value = value.strip(" \t")
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        if version == "HTTP/1.1" and "host" not in headers:
            raise HttpError(400, "HTTP/1.1 request without Host")
        return method, target, version, headers

    def _content_length(self, method: str, headers: dict[str, str]) -> int:
        if "transfer-encoding" in headers:
            raise HttpError(501, "Transfer-Encoding request bodies are not supported; send Content-Length")
        raw = headers.get("content-length")
        if raw is None:
            return 0
        values = {v.strip() for v in raw.split(",")}
        if len(values) != 1:
            raise HttpError(400, "conflicting Content-Length")
        value = values.pop()
        if not value.isdigit() or not value.isascii():
            raise HttpError(400, "malformed Content-Length")
        length = int(value)
        if length > self.limits.max_body:
            raise HttpError(413, "request body too large")
        return length


def make_request(
    method: str, target: str, version: str, headers: dict[str, str], body: bytes, peer: str = ""
) -> Request:
    path, _, query = target.partition("?")
    return Request(
        method=method,
        target=target,
        path=unquote(path, errors="strict") if "%" in path else path,
        query=dict(parse_qsl(query, keep_blank_values=True)),
        version=version,
        headers=headers,
        body=body,
        peer=peer,
    )


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding value allows gzip (``gzip;q=0`` refuses it, ``*`` allows it)."""
    allowed: dict[str, float] = {}
    for item in accept_encoding.split(","):
        coding, _, params = item.strip().partition(";")
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if coding:
            allowed[coding.strip().lower()] = quality
    if "gzip" in allowed:
        return allowed["gzip"] > 0
    return allowed.get("*", 0) > 0


def serialize(response: Response, request: Request | None, *, keep_alive: bool) -> bytes:
    """Status line, headers and body (none for HEAD, 1xx, 204 and 304), gzip applied when accepted."""
    body = response.body
    headers = list(response.headers)
    if (
        response.compressible
        and request is not None
        and len(body) >= GZIP_MIN_BYTES
        and accepts_gzip(request.header("accept-encoding"))
    ):
        body = gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0)
        headers.append(("Content-Encoding", "gzip"))
    if response.compressible:
        headers.append(("Vary", "Accept-Encoding"))
    try:
        reason = HTTPStatus(response.status).phrase
    except ValueError:
        reason = "Unknown"
    lines = [f"HTTP/1.1 {response.status} {reason}"]
    if response.body or response.status not in (204, 304):
        lines.append(f"Content-Type: {response.content_type}")
    lines.append(f"Content-Length: {len(body)}")
    lines.append("Cache-Control: no-store")
    lines.append("X-Content-Type-Options: nosniff")
    lines.extend(f"{name}: {value}" for name, value in headers)
    if not keep_alive:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    if (request is not None and request.method == "HEAD") or response.status in (204, 304):
        return head
    return head + body


Handler = Callable[[Request], Response]


class HttpConnection(asyncio.Protocol):
    """One client connection: parse, answer in order, keep alive, time out slow requests."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.parser = RequestParser(server.limits)
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self._timer: asyncio.TimerHandle | None = None
        self._request_started = 0.0
        self._closing = False
        self._paused = False
        self._pending: deque[tuple[str, str, str, dict[str, str], bytes]] = deque()  # parsed, not answered yet

    # ------------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "")
        if len(self.server.connections) >= self.server.limits.max_connections:
            self._fail(HttpError(503, "too many connections to the web listener"))
            return
        self.server.connections.add(self)
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._cancel_timer()
        self.server.connections.discard(self)

    def pause_writing(self) -> None:
        # The peer does not read its answers: stop reading its requests until it does.
        if self.transport is not None and not self._paused:
            self._paused = True
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and self._paused and not self._closing:
            self._paused = False
            self.transport.resume_reading()
            self._answer_pending()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        if not self.parser.has_partial:
            self._request_started = time.monotonic()
        try:
            self._pending.extend(self.parser.feed(data))
        except HttpError as exc:
            self._pending.clear()
            self._fail(exc)
            return
        self._answer_pending()

    def _answer_pending(self) -> None:
        """Answer the complete requests in order; stop while the peer does not read (resume_writing goes on)."""
        answered = False
        while self._pending and not self._paused and not self._closing:
            method, target, version, headers, body = self._pending.popleft()
            answered = True
            try:
                request = make_request(method, target, version, headers, body, self.peer)
            except UnicodeDecodeError:
                self._fail(HttpError(400, "malformed percent-encoding in the request target"))
                return
            if not self._answer(request):
                return
        if self._closing:
            return
        if self._pending:
            self._arm_idle()  # waiting for the peer to read its answers: for idle_timeout at most
        elif self.parser.has_partial:
            if answered:
                # The next pipelined request started in the same chunk: its clock starts now.
                self._request_started = time.monotonic()
            self._arm_request_timeout()
        else:
            self._arm_idle()

    def eof_received(self) -> bool | None:
        # A peer that half-closes has sent all it will send: answer nothing more, close.
        self._close()
        return None

    # ------------------------------------------------------------------ internals

    def _answer(self, request: Request) -> bool:
        """Handle one request; False when the connection is closed after it."""
        try:
            response = self.server.handler(request)
        except Exception:
            log.exception("web: error answering %s %s", request.method, request.path)
            response = Response.text(500, "internal server error")
        keep_alive = request.keep_alive and not self.server.stopping
        self._write(serialize(response, request, keep_alive=keep_alive))
        if not keep_alive:
            self._close()
            return False
        return True

    def _fail(self, error: HttpError) -> None:
        self.server.on_error(error.status)
        self._write(serialize(Response.text(error.status, error.message), None, keep_alive=False))
        self._close()

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _close(self) -> None:
        self._closing = True
        self._cancel_timer()
        if self.transport is not None:
            self.transport.close()  # flushes what is buffered first

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm_idle(self) -> None:
        self._cancel_timer()
        self._timer = asyncio.get_running_loop().call_later(self.server.limits.idle_timeout, self._idle_timed_out)

    def shut(self) -> None:
        """Close now: gracefully (flushing answers) unless the peer has stopped reading them."""
        if self._paused and self.transport is not None:
            self._closing = True
            self._cancel_timer()
            self.transport.abort()
        else:
            self._close()

    def _idle_timed_out(self) -> None:
        self._timer = None
        self.shut()  # a peer that has not read its answers for idle_timeout would hold a graceful close forever

    def _arm_request_timeout(self) -> None:
        self._cancel_timer()
        remaining = self._request_started + self.server.limits.request_timeout - time.monotonic()
        self._timer = asyncio.get_running_loop().call_later(max(remaining, 0.0), self._request_timed_out)

    def _request_timed_out(self) -> None:
        self._timer = None
        self._fail(HttpError(408, "request not received in time"))


class HttpServer:
    """The listening socket and its open connections."""

    def __init__(
        self,
        handler: Handler,
        limits: Limits = Limits(),
        on_error: Callable[[int], None] = lambda status: None,
    ) -> None:
        self.handler = handler
        self.limits = limits
        self.on_error = on_error  # a request refused before it reached the handler (counted by the caller)
        self.connections: set[HttpConnection] = set()
        self.stopping = False
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: HttpConnection(self), host=host, port=port, reuse_address=True, backlog=128
        )

    @property
    def addresses(self) -> list[tuple[str, int]]:
        if self._server is None:
            return []
        return [sock.getsockname()[:2] for sock in self._server.sockets]

    async def stop(self) -> None:
        self.stopping = True
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.shut()
        if self._server is not None:
            await self._server.wait_closed()
