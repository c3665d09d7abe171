"""The web listener's HTTP/1.1 server: the sans-I/O parser with byte strings, then a real server on a loopback
socket with small limits (slowloris, idle keep-alive, oversized input, pipelining, HEAD, gzip, half-closed peers);
the role rules and static-file lookup without sockets."""

from __future__ import annotations

import asyncio
import base64
import gzip
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from pg_doorman.observe import auth
from pg_doorman.observe.http import HttpError, HttpServer, Limits, Request, RequestParser, Response, accepts_gzip
from pg_doorman.observe.web import static_file

# ------------------------------------------------------------------------------------------- parser


def parse(data: bytes, limits: Limits | None = None) -> list[tuple[str, str, str, dict[str, str], bytes]]:
    return RequestParser(limits or Limits()).feed(data)


def test_parses_a_request_fed_byte_by_byte() -> None:
    parser = RequestParser()
    data = b"POST /api/x?db=a%20b HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nX-A: 1\r\nx-a: 2\r\n\r\nabc"
    done = []
    for index in range(len(data)):
        done += parser.feed(data[index : index + 1])
        assert parser.has_partial == (index < len(data) - 1)
    assert done == [
        ("POST", "/api/x?db=a%20b", "HTTP/1.1", {"host": "h", "content-length": "3", "x-a": "1, 2"}, b"abc")
    ]


def test_pipelined_requests_come_out_in_order() -> None:
    data = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.0\r\n\r\nGET /c"
    parser = RequestParser()
    assert [r[1] for r in parser.feed(data)] == ["/a", "/b"]
    assert parser.has_partial


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 without Host
        (b"GET /\r\nHost: h\r\n\r\n", 400),  # HTTP/0.9 style request line
        (b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505),
        (b"GET / SPDY/3\r\nHost: h\r\n\r\n", 400),
        (b"G(T / HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        (b"GET http://evil/ HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost : h\r\n\r\n", 400),  # space before the colon (smuggling)
        (b"GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n", 400),  # obsolete line folding
        (b"GET / HTTP/1.1\r\nHost: h\r\nno colon\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1, 2\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 70000\r\n\r\n", 413),
        (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n", 400),  # a TLS ClientHello
    ],
)
def test_malformed_requests_get_the_right_status(data: bytes, status: int) -> None:
    with pytest.raises(HttpError) as caught:
        parse(data)
    assert caught.value.status == status


def test_size_limits_apply_before_the_request_is_complete() -> None:
    limits = Limits(max_request_line=64, max_head=256, max_headers=3)
    with pytest.raises(HttpError) as caught:
        RequestParser(limits).feed(b"GET /" + b"a" * 100)  # no CRLF yet, already too long
    assert caught.value.status == 414
    with pytest.raises(HttpError) as caught:
        RequestParser(limits).feed(b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"b" * 300)
    assert caught.value.status == 431
    with pytest.raises(HttpError) as caught:
        parse(b"GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n", limits)
    assert caught.value.status == 431


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("gzip", True),
        ("gzip, deflate, br", True),
        ("deflate", False),
        ("", False),
        ("gzip;q=0", False),
        ("*", True),
        ("*;q=0.5, gzip;q=0", False),
        ("GZIP ; q=0.8", True),
        ("gzip;q=bad", False),
    ],
)
def test_accept_encoding(header: str, expected: bool) -> None:
    assert accepts_gzip(header) is expected


# ------------------------------------------------------------------------------------------- roles


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_roles_from_the_authorization_header() -> None:
    assert auth.identify(basic("admin", "s3cret"), "admin", "s3cret").role == "admin"
    assert auth.identify(basic("admin", "wrong"), "admin", "s3cret").role == "rejected"
    assert auth.identify(basic("root", "s3cret"), "admin", "s3cret").role == "rejected"
    assert auth.identify(basic("admin", "s3cret:x"), "admin", "s3cret").role == "rejected"
    assert auth.identify("", "admin", "s3cret") == auth.Identity("anonymous", "none")
    assert auth.identify("Basic !!!", "admin", "s3cret").role == "rejected"
    assert auth.identify("Basic " + base64.b64encode(b"nocolon").decode(), "admin", "s3cret").role == "rejected"
    assert auth.identify("Digest x", "admin", "s3cret").role == "rejected"
    # SSO is not active: a token gives nothing more than anonymous.
    assert auth.identify("Bearer eyJ...", "admin", "s3cret") == auth.Identity("anonymous", "sso")
    # An empty admin password never matches (the console is off then anyway).
    assert auth.identify(basic("admin", ""), "admin", "").role == "rejected"


def test_route_levels() -> None:
    assert auth.allowed("public", "anonymous", False)
    assert not auth.allowed("read", "anonymous", False)
    assert auth.allowed("read", "anonymous", True)
    assert not auth.allowed("personal", "anonymous", True)
    assert not auth.allowed("admin", "anonymous", True)
    assert auth.allowed("admin", "admin", False)
    assert not auth.allowed("read", "rejected", True)


def test_challenge_only_for_callers_that_are_not_page_scripts() -> None:
    assert auth.challenge_headers("*/*", None) == [("WWW-Authenticate", 'Basic realm="pg_doorman", charset="UTF-8"')]
    assert auth.challenge_headers("application/json", None) == []
    assert auth.challenge_headers("*/*", "XMLHttpRequest") == []


# ------------------------------------------------------------------------------------------- static files


def test_static_files_never_leave_their_folder(tmp_path: Path) -> None:
    root = tmp_path / "static"
    (root / "assets").mkdir(parents=True)
    (root / "index.html").write_text("<html>")
    (root / "assets" / "app.js").write_text("x")
    (root / "assets" / ".hidden").write_text("x")
    (tmp_path / "secret.txt").write_text("secret")
    (root / "assets" / "link.txt").symlink_to(tmp_path / "secret.txt")
    assert static_file(root, "index.html") == (root / "index.html").resolve()
    assert static_file(root, "assets/app.js") == (root / "assets" / "app.js").resolve()
    for bad in (
        "../secret.txt",
        "assets/../../secret.txt",
        "assets/./app.js",
        "assets//app.js",
        "assets/.hidden",
        "assets/link.txt",
        "/etc/passwd",
        "assets\\..\\..\\secret.txt",
        "assets/app.js\0",
        "assets",
        "assets/missing.js",
        "",
    ):
        assert static_file(root, bad) is None, bad


# ------------------------------------------------------------------------------------------- the server


class Served:
    def __init__(self, server: HttpServer, port: int, seen: list[Request]) -> None:
        self.server = server
        self.port = port
        self.seen = seen

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)

    async def exchange(self, data: bytes, timeout: float = 5.0) -> bytes:
        """Send ``data`` and read until the server closes the connection."""
        reader, writer = await self.open()
        writer.write(data)
        try:
            return await asyncio.wait_for(reader.read(), timeout)
        finally:
            writer.close()


def handler(seen: list[Request]) -> Callable[[Request], Response]:
    def handle(request: Request) -> Response:
        seen.append(request)
        if request.path == "/boom":
            raise RuntimeError("handler bug")
        if request.path == "/big":
            return Response(body=b"metric_line 1\n" * 2000)
        return Response.text(200, f"{request.method} {request.path} {request.query}")

    return handle


def async_test(fn: Callable[[Served], Awaitable[None]]) -> Callable[[], None]:
    """Run ``fn(served)`` on a fresh loop with a started server (no pytest-asyncio needed)."""

    def wrapper() -> None:
        async def main() -> None:
            seen: list[Request] = []
            limits = Limits(
                request_timeout=0.5, idle_timeout=0.8, max_connections=4, max_head=2048, max_request_line=512
            )
            server = HttpServer(handler(seen), limits)
            await server.start("127.0.0.1", 0)
            try:
                await fn(Served(server, server.addresses[0][1], seen))
            finally:
                await server.stop()

        asyncio.run(main())

    wrapper.__name__ = fn.__name__
    return wrapper


@async_test
async def test_keep_alive_pipelining_and_close(s: Served) -> None:
    reader, writer = await s.open()
    writer.write(b"GET /one HTTP/1.1\r\nHost: h\r\n\r\nGET /two?a=1 HTTP/1.1\r\nHost: h\r\n\r\n")
    first = await reader.readuntil(b"one {}\n")
    assert first.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: close" not in first
    second = await reader.readuntil(b"{'a': '1'}\n")
    assert b"GET /two" in second
    writer.write(b"GET /three HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    rest = await asyncio.wait_for(reader.read(), 5)
    assert b"Connection: close" in rest and rest.endswith(b"GET /three {}\n")
    writer.close()
    # HTTP/1.0 closes unless asked to keep alive.
    reply = await s.exchange(b"GET /old HTTP/1.0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200 ") and b"Connection: close" in reply


@async_test
async def test_head_gzip_and_handler_errors(s: Served) -> None:
    head = await s.exchange(b"HEAD /big HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert head.endswith(b"\r\n\r\n") and b"Content-Length: 28000\r\n" in head
    zipped = await s.exchange(b"GET /big HTTP/1.1\r\nHost: h\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n")
    headers, _, body = zipped.partition(b"\r\n\r\n")
    assert b"Content-Encoding: gzip" in headers and gzip.decompress(body) == b"metric_line 1\n" * 2000
    assert f"Content-Length: {len(body)}".encode() in headers
    failed = await s.exchange(b"GET /boom HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert failed.startswith(b"HTTP/1.1 500 ")
    # The server still serves after a handler error.
    assert (await s.exchange(b"GET /ok HTTP/1.0\r\n\r\n")).startswith(b"HTTP/1.1 200 ")


@async_test
async def test_slowloris_gets_408_on_time_however_slowly_bytes_trickle(s: Served) -> None:
    reader, writer = await s.open()
    started = time.monotonic()
    writer.write(b"GET /slow HTTP/1.1\r\n")
    answer = asyncio.ensure_future(reader.read())
    while not answer.done():  # a byte every 50 ms would keep a per-read timeout alive forever
        await asyncio.sleep(0.05)
        if time.monotonic() - started > 3:
            break
        try:
            writer.write(b"X")
        except OSError:
            break
    reply = await asyncio.wait_for(answer, 5)
    elapsed = time.monotonic() - started
    assert reply.startswith(b"HTTP/1.1 408 "), reply
    assert 0.4 < elapsed < 2.0
    assert s.seen == []
    writer.close()


@async_test
async def test_idle_keep_alive_connection_is_closed(s: Served) -> None:
    reader, writer = await s.open()
    writer.write(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
    await reader.readuntil(b"GET /x {}\n")
    started = time.monotonic()
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, nothing more sent
    assert 0.6 < time.monotonic() - started < 3.0
    writer.close()


@async_test
async def test_oversized_and_garbage_input_is_refused_and_closed(s: Served) -> None:
    assert (await s.exchange(b"GET /" + b"a" * 1000)).startswith(b"HTTP/1.1 414 ")
    assert (await s.exchange(b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"b" * 4000 + b"\r\n\r\n")).startswith(
        b"HTTP/1.1 431 "
    )
    assert (await s.exchange(b"\x00\x01\x02garbage\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
    assert (await s.exchange(b"GET /%ff%fe HTTP/1.0\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
    assert s.seen == []


@async_test
async def test_connection_limit_and_half_closed_peers(s: Served) -> None:
    held = [await s.open() for _ in range(4)]
    await asyncio.sleep(0.05)
    assert (await s.exchange(b"GET / HTTP/1.0\r\n\r\n")).startswith(b"HTTP/1.1 503 ")
    for _, writer in held:
        writer.close()
    await asyncio.sleep(0.1)
    assert len(s.server.connections) == 0
    # A peer that sends half a request and shuts its side down is closed without an answer.
    reader, writer = await s.open()
    writer.write(b"GET /half HTTP/1.1\r\n")
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    assert (await s.exchange(b"GET /after HTTP/1.0\r\n\r\n")).startswith(b"HTTP/1.1 200 ")


@async_test
async def test_a_reader_that_does_not_read_stops_its_requests_being_read(s: Served) -> None:
    _, writer = await s.open()
    request = b"GET /big HTTP/1.1\r\nHost: h\r\n\r\n"
    for _ in range(200):  # 200 x 28 kB answers, never read
        writer.write(request)
    await asyncio.sleep(0.3)
    answered = len(s.seen)
    assert 0 < answered < 200  # reading stopped while the answers pile up unread
    assert len(s.server.connections) == 1
    await asyncio.sleep(1.0)  # idle_timeout (0.8 s) without reading: the connection is dropped
    assert len(s.server.connections) == 0
    assert len(s.seen) == answered
    writer.close()


@async_test
async def test_stop_closes_open_connections(s: Served) -> None:
    reader, writer = await s.open()
    writer.write(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
    await reader.readuntil(b"GET /x {}\n")
    await s.server.stop()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
