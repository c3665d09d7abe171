"""A small synchronous PostgreSQL wire-protocol client for byte-exact tests.

It logs in (trust, cleartext, md5 or SCRAM-SHA-256), sends raw frontend messages built by the helpers below
(`query`, `parse`, `bind`, `describe`, `execute`, `close`, `sync`, `flush`, `copy_data`, `copy_done`, `copy_fail`,
`function_call`, `terminate`) and reads backend messages as ``Msg(type, body)`` until a condition holds:

* `WireClient.read_until_ready(n)` — until ``n`` ReadyForQuery messages arrived;
* `WireClient.read_until_type(types)` — until a message of one of ``types`` arrived (e.g. ``"G"`` after a
  ``COPY ... FROM STDIN``, or ``"C"`` after an Execute followed by Flush);
* `WireClient.read_quiet(quiet)` — whatever arrives until the socket stays silent for ``quiet`` seconds (for
  Flush flows whose answer is not known in advance).

Every read has a deadline; a timeout raises `WireTimeout` and a closed socket `WireClosed`, both carrying the
messages received so far.  `describe_message` renders a message for humans (bodies of large messages are
abbreviated with a digest) so that a failing comparison can print readable lists.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import select
import socket
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

PROTOCOL_3_0 = 196608
DEFAULT_TIMEOUT = 10.0

# ---------------------------------------------------------------- frontend message builders


def frame(kind: bytes, body: bytes) -> bytes:
    """A typed message: type byte, int32 length (counting itself), body."""
    return kind + struct.pack("!i", len(body) + 4) + body


def _b(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _cstr(value: str | bytes) -> bytes:
    return _b(value) + b"\0"


def startup_packet(params: dict[str, str], version: int = PROTOCOL_3_0) -> bytes:
    body = struct.pack("!i", version) + b"".join(_cstr(k) + _cstr(v) for k, v in params.items()) + b"\0"
    return struct.pack("!i", len(body) + 4) + body


def md5_verifier(password: str, user: str) -> str:
    """What PostgreSQL stores for an md5 password (``"md5" + md5(password + user)``), for test configs."""
    return "md5" + hashlib.md5(password.encode() + user.encode()).hexdigest()


def md5_password_message(password: str, user: str, salt: bytes) -> bytes:
    """The PasswordMessage that answers AuthenticationMD5Password: ``"md5" + md5(md5(password + user) + salt)``."""
    inner = md5_verifier(password, user)[3:]
    return frame(b"p", _cstr("md5" + hashlib.md5(inner.encode() + salt).hexdigest()))


def query(sql: str | bytes) -> bytes:
    return frame(b"Q", _cstr(sql))


def parse(name: str | bytes = "", sql: str | bytes = "", types: Sequence[int] = ()) -> bytes:
    body = _cstr(name) + _cstr(sql) + struct.pack("!h", len(types)) + b"".join(struct.pack("!I", t) for t in types)
    return frame(b"P", body)


Param = str | bytes | None


def bind(
    portal: str | bytes = "",
    statement: str | bytes = "",
    params: Sequence[Param] = (),
    param_formats: Sequence[int] = (),
    result_formats: Sequence[int] = (),
) -> bytes:
    """Bind; a ``str`` parameter is sent UTF-8 encoded, ``bytes`` as is and ``None`` as SQL NULL."""
    parts = [_cstr(portal), _cstr(statement), struct.pack("!h", len(param_formats))]
    parts += [struct.pack("!h", f) for f in param_formats]
    parts.append(struct.pack("!h", len(params)))
    for value in params:
        if value is None:
            parts.append(struct.pack("!i", -1))
        else:
            data = _b(value)
            parts.append(struct.pack("!i", len(data)) + data)
    parts.append(struct.pack("!h", len(result_formats)))
    parts += [struct.pack("!h", f) for f in result_formats]
    return frame(b"B", b"".join(parts))


def describe(kind: str, name: str | bytes = "") -> bytes:
    """Describe a statement (``kind="S"``) or a portal (``kind="P"``)."""
    assert kind in ("S", "P")
    return frame(b"D", kind.encode() + _cstr(name))


def execute(portal: str | bytes = "", max_rows: int = 0) -> bytes:
    return frame(b"E", _cstr(portal) + struct.pack("!i", max_rows))


def close(kind: str, name: str | bytes = "") -> bytes:
    """Close a statement (``kind="S"``) or a portal (``kind="P"``)."""
    assert kind in ("S", "P")
    return frame(b"C", kind.encode() + _cstr(name))


def sync() -> bytes:
    return frame(b"S", b"")


def flush() -> bytes:
    return frame(b"H", b"")


def terminate() -> bytes:
    return frame(b"X", b"")


def copy_data(data: str | bytes) -> bytes:
    return frame(b"d", _b(data))


def copy_done() -> bytes:
    return frame(b"c", b"")


def copy_fail(message: str) -> bytes:
    return frame(b"f", _cstr(message))


def function_call(
    oid: int, args: Sequence[Param] = (), arg_formats: Sequence[int] = (), result_format: int = 0
) -> bytes:
    """FunctionCall (fast path): function OID, argument format codes, arguments, result format."""
    parts = [struct.pack("!I", oid), struct.pack("!h", len(arg_formats))]
    parts += [struct.pack("!h", f) for f in arg_formats]
    parts.append(struct.pack("!h", len(args)))
    for value in args:
        if value is None:
            parts.append(struct.pack("!i", -1))
        else:
            data = _b(value)
            parts.append(struct.pack("!i", len(data)) + data)
    parts.append(struct.pack("!h", result_format))
    return frame(b"F", b"".join(parts))


def split_frames(data: bytes) -> list[bytes]:
    """Split concatenated frontend messages into single messages (type byte + length + body)."""
    out = []
    pos = 0
    while pos < len(data):
        length = struct.unpack_from("!i", data, pos + 1)[0]
        out.append(data[pos : pos + 1 + length])
        pos += 1 + length
    return out


# ---------------------------------------------------------------- backend messages


class Msg(NamedTuple):
    """One backend message: its type as a one-character string and its body (without type and length)."""

    type: str
    body: bytes


class WireError(Exception):
    """A read failed; ``received`` holds the messages read before the failure."""

    def __init__(self, message: str, received: list[Msg]) -> None:
        super().__init__(message)
        self.received = received


class WireTimeout(WireError):
    pass


class WireClosed(WireError):
    pass


def error_fields(body: bytes) -> list[tuple[str, str]]:
    """The (code, value) fields of an ErrorResponse/NoticeResponse body, in wire order."""
    fields = []
    for part in body.split(b"\0"):
        if part:
            fields.append((chr(part[0]), part[1:].decode("utf-8", "replace")))
    return fields


def error_map(body: bytes) -> dict[str, str]:
    """The fields of an ErrorResponse/NoticeResponse body by code (``C`` SQLSTATE, ``M`` message, ...)."""
    return dict(error_fields(body))


def build_error_body(fields: Iterable[tuple[str, str]]) -> bytes:
    return b"".join(code.encode() + value.encode() + b"\0" for code, value in fields) + b"\0"


def data_row_values(body: bytes) -> list[bytes | None]:
    count = struct.unpack_from("!h", body)[0]
    pos = 2
    values: list[bytes | None] = []
    for _ in range(count):
        size = struct.unpack_from("!i", body, pos)[0]
        pos += 4
        if size < 0:
            values.append(None)
        else:
            values.append(body[pos : pos + size])
            pos += size
    return values


def _short(data: bytes, limit: int = 48) -> str:
    if len(data) <= limit:
        return repr(data)
    digest = hashlib.sha1(data).hexdigest()[:12]
    return f"<{len(data)} bytes {data[:24]!r}... sha1={digest}>"


def describe_message(msg: Msg) -> str:
    """A one-line human rendering of a backend message (exact enough to see any difference)."""
    kind, body = msg
    if kind == "!":  # a pseudo-message recorded by a test harness
        return "!! " + body.decode("utf-8", "replace")
    try:
        if kind in ("E", "N"):
            return f"{kind} " + " ".join(f"{c}={v!r}" for c, v in error_fields(body))
        if kind == "D":
            values = data_row_values(body)
            return f"D [{', '.join('NULL' if v is None else _short(v) for v in values)}]"
        if kind == "T":
            count = struct.unpack_from("!h", body)[0]
            pos = 2
            cols = []
            for _ in range(count):
                end = body.index(b"\0", pos)
                name = body[pos:end].decode("utf-8", "replace")
                table, attnum, oid, size, mod, fmt = struct.unpack_from("!IhIhih", body, end + 1)
                cols.append(f"{name}(table={table},att={attnum},type={oid},len={size},mod={mod},fmt={fmt})")
                pos = end + 1 + 18
            return f"T [{', '.join(cols)}]"
        if kind == "t":
            count = struct.unpack_from("!h", body)[0]
            oids = struct.unpack_from(f"!{count}I", body, 2)
            return f"t {list(oids)}"
        if kind in ("C", "S"):
            return f"{kind} " + " ".join(repr(p.decode("utf-8", "replace")) for p in body.split(b"\0")[:-1])
        if kind == "Z":
            return f"Z {body.decode()!r}"
        if kind in ("G", "H", "W"):
            fmt, count = struct.unpack_from("!bh", body)
            formats = struct.unpack_from(f"!{count}h", body, 3)
            return f"{kind} format={fmt} columns={list(formats)}"
        if kind in ("1", "2", "3", "n", "s", "I", "c"):
            return kind if not body else f"{kind} {_short(body)}"
        if kind == "d":
            return f"d {_short(body, 80)}"
        if kind == "V":
            size = struct.unpack_from("!i", body)[0]
            return f"V {'NULL' if size < 0 else _short(body[4:])}"
    except (struct.error, ValueError, IndexError):
        pass
    return f"{kind} {_short(body, 80)}"


# ---------------------------------------------------------------- the client


class RawWire:
    """A plain blocking socket for tests that assert exact bytes, malformed input included: send anything, read
    whole (type, body) messages. `WireClient` below is the richer client of the fidelity harness."""

    def __init__(self, port: int, timeout: float, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, n: int) -> None:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"connection closed with {len(self.buf)} of {n} bytes buffered")
            self.buf += chunk

    def read_bytes(self, n: int) -> bytes:
        self._fill(n)
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_message(self) -> tuple[bytes, bytes]:
        self._fill(5)
        length = struct.unpack("!i", self.buf[1:5])[0]
        self._fill(1 + length)
        kind, body = self.buf[:1], self.buf[5 : 1 + length]
        self.buf = self.buf[1 + length :]
        return kind, body

    def read_until(self, kind: bytes) -> list[tuple[bytes, bytes]]:
        out = []
        while True:
            msg = self.read_message()
            out.append(msg)
            if msg[0] == kind:
                return out

    def login(
        self,
        params: dict[str, str],
        password: str | None = None,
        *,
        version: int = PROTOCOL_3_0,
        pipelined: bytes = b"",
    ) -> list[tuple[bytes, bytes]]:
        """Start up with ``params`` and answer an md5 challenge with ``password``; return the messages up to
        ReadyForQuery (or the first ErrorResponse), without the challenge itself. ``pipelined`` is sent right
        behind the last login message (the password answer, or the StartupMessage when none is asked for)."""
        packet = startup_packet(params, version)
        if password is None:
            self.send(packet + pipelined)
        else:
            self.send(packet)
        out = []
        while True:
            kind, body = self.read_message()
            if kind == b"R" and struct.unpack_from("!i", body)[0] == 5:
                assert password is not None, "pg_doorman asked for a password and the test gave none"
                self.send(md5_password_message(password, params["user"], body[4:8]) + pipelined)
                continue
            out.append((kind, body))
            if kind in (b"Z", b"E"):
                return out

    def closed_by_peer(self, timeout: float) -> bool:
        """True if the peer closes (EOF or reset) within ``timeout`` without sending anything more."""
        if self.buf:
            return False
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1)
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
        return data == b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawWire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class WireClient:
    """A blocking socket that speaks the PostgreSQL protocol message by message."""

    def __init__(self, host: str, port: int, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = bytearray()
        self._pos = 0
        self.startup_messages: list[Msg] = []
        self.last_status = ""

    # ---------------------------------------------------------------- startup

    @classmethod
    def connect(
        cls,
        host: str,
        port: int,
        *,
        user: str,
        database: str,
        password: str | None = None,
        params: dict[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> WireClient:
        """Open a connection and log in; the login's backend messages end up in ``startup_messages``."""
        client = cls(host, port, timeout=timeout)
        try:
            client.login(user, database, password=password, params=params)
        except BaseException:
            client.close()
            raise
        return client

    def login(
        self, user: str, database: str, *, password: str | None = None, params: dict[str, str] | None = None
    ) -> None:
        startup = {"user": user, "database": database, **(params or {})}
        self.send(startup_packet(startup))
        received: list[Msg] = []
        scram: _ScramClient | None = None
        deadline = time.monotonic() + self.timeout
        while True:
            msg = self._next(deadline, received)
            if msg.type == "R":
                code = struct.unpack_from("!i", msg.body)[0]
                if code == 0:
                    received.append(msg)
                elif code == 3:  # cleartext
                    self.send(frame(b"p", _cstr(self._need(password))))
                elif code == 5:  # md5
                    salt = msg.body[4:8]
                    inner = hashlib.md5(self._need(password).encode() + user.encode()).hexdigest()
                    outer = hashlib.md5(inner.encode() + salt).hexdigest()
                    self.send(frame(b"p", _cstr("md5" + outer)))
                elif code == 10:  # SASL
                    mechanisms = [m.decode() for m in msg.body[4:].split(b"\0") if m]
                    if "SCRAM-SHA-256" not in mechanisms:
                        raise WireError(f"no supported SASL mechanism in {mechanisms}", received)
                    scram = _ScramClient(self._need(password))
                    first = scram.client_first()
                    self.send(frame(b"p", _cstr("SCRAM-SHA-256") + struct.pack("!i", len(first)) + first))
                elif code == 11:  # SASL continue
                    assert scram is not None
                    self.send(frame(b"p", scram.client_final(msg.body[4:])))
                elif code == 12:  # SASL final
                    assert scram is not None
                    scram.verify_server_final(msg.body[4:])
                else:
                    raise WireError(f"unsupported authentication request {code}", received)
                continue
            received.append(msg)
            if msg.type == "E":
                raise WireError(f"login failed: {error_fields(msg.body)}", received)
            if msg.type == "Z":
                self.last_status = msg.body.decode()
                self.startup_messages = received
                return

    @staticmethod
    def _need(password: str | None) -> str:
        if password is None:
            raise WireError("the server asked for a password but none was given", [])
        return password

    # ---------------------------------------------------------------- I/O

    def send(self, *messages: bytes) -> None:
        self.sock.sendall(b"".join(messages))

    def _available(self) -> int:
        return len(self._buf) - self._pos

    def _compact(self) -> None:
        if self._pos > 1 << 20 or (self._pos and self._pos == len(self._buf)):
            del self._buf[: self._pos]
            self._pos = 0

    def _fill(self, deadline: float | None, received: list[Msg]) -> bool:
        """Read more bytes; False when ``deadline`` passed first (None: do not wait at all)."""
        wait = 0.0 if deadline is None else max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select([self.sock], [], [], wait)
        if not ready:
            return False
        try:
            chunk = self.sock.recv(1 << 20)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            raise WireClosed("connection closed by the server", received)
        self._compact()
        self._buf += chunk
        return True

    def _try_message(self) -> Msg | None:
        if self._available() < 5:
            return None
        length = struct.unpack_from("!i", self._buf, self._pos + 1)[0]
        if self._available() < 1 + length:
            return None
        start = self._pos
        kind = chr(self._buf[start])
        body = bytes(self._buf[start + 5 : start + 1 + length])
        self._pos = start + 1 + length
        return Msg(kind, body)

    def _next(self, deadline: float, received: list[Msg]) -> Msg:
        while True:
            msg = self._try_message()
            if msg is not None:
                return msg
            if not self._fill(deadline, received):
                raise WireTimeout("timed out waiting for a message", received)

    def read_until(self, done: Callable[[Msg], bool], timeout: float | None = None, what: str = "") -> list[Msg]:
        """Messages up to and including the first one for which ``done`` is true."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        received: list[Msg] = []
        while True:
            try:
                msg = self._next(deadline, received)
            except WireTimeout as exc:
                raise WireTimeout(f"timed out waiting for {what or 'a message'}", exc.received) from None
            received.append(msg)
            if msg.type == "Z":
                self.last_status = msg.body.decode()
            if done(msg):
                return received

    def read_until_ready(self, count: int = 1, timeout: float | None = None) -> list[Msg]:
        """Messages up to and including the ``count``-th ReadyForQuery."""
        seen = 0

        def done(msg: Msg) -> bool:
            nonlocal seen
            if msg.type == "Z":
                seen += 1
            return seen >= count

        return self.read_until(done, timeout, what=f"ReadyForQuery #{count}")

    def read_until_type(self, types: str, timeout: float | None = None) -> list[Msg]:
        """Messages up to and including the first whose type is one of the characters in ``types``."""
        return self.read_until(lambda m: m.type in types, timeout, what=f"a message of type {types!r}")

    def read_quiet(self, quiet: float = 0.25, timeout: float | None = None) -> list[Msg]:
        """Everything that arrives until the socket has been silent for ``quiet`` seconds."""
        hard_deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        received: list[Msg] = []
        while True:
            msg = self._try_message()
            if msg is not None:
                received.append(msg)
                if msg.type == "Z":
                    self.last_status = msg.body.decode()
                continue
            deadline = min(time.monotonic() + quiet, hard_deadline)
            # With a message half here, keep waiting for the rest (up to the hard deadline).
            if not self._fill(deadline, received) and (self._available() == 0 or time.monotonic() >= hard_deadline):
                return received

    def simple_query(self, sql: str, timeout: float | None = None) -> list[Msg]:
        self.send(query(sql))
        return self.read_until_ready(1, timeout)

    def close(self) -> None:
        try:
            self.sock.sendall(terminate())
        except OSError:
            pass
        self.sock.close()

    def __enter__(self) -> WireClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _ScramClient:
    """SCRAM-SHA-256 without channel binding (what libpq does over a plain socket)."""

    def __init__(self, password: str) -> None:
        self.password = password.encode()
        self.nonce = base64.b64encode(os.urandom(18))
        self.first_bare = b"n=,r=" + self.nonce
        self.server_signature = b""

    def client_first(self) -> bytes:
        return b"n,," + self.first_bare

    def client_final(self, server_first: bytes) -> bytes:
        attrs = dict(part.split(b"=", 1) for part in server_first.split(b","))
        nonce, salt, iterations = attrs[b"r"], base64.b64decode(attrs[b"s"]), int(attrs[b"i"])
        if not nonce.startswith(self.nonce):
            raise WireError("SCRAM server nonce does not extend the client nonce", [])
        salted = hashlib.pbkdf2_hmac("sha256", self.password, salt, iterations)
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = b"c=biws,r=" + nonce
        auth_message = self.first_bare + b"," + server_first + b"," + without_proof
        signature = hmac.digest(stored_key, auth_message, "sha256")
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        server_key = hmac.digest(salted, b"Server Key", "sha256")
        self.server_signature = hmac.digest(server_key, auth_message, "sha256")
        return without_proof + b",p=" + base64.b64encode(proof)

    def verify_server_final(self, server_final: bytes) -> None:
        if not server_final.startswith(b"v=") or base64.b64decode(server_final[2:]) != self.server_signature:
            raise WireError("SCRAM server signature mismatch", [])
