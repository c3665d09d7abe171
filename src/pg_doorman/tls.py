"""TLS on both sides: what each mode means, the SSL contexts, the handshake rate limit, and the two upgrades.

**Clients** (``general.tls_*``). A client asks for TLS with an SSLRequest and gets ``S`` when a certificate is
configured and ``tls_mode`` is not ``disable``; the connection is then upgraded in place (`upgrade`) before the
startup packet is read. PostgreSQL 17's *direct TLS* (``sslnegotiation=direct``) skips the SSLRequest: the
first byte is a TLS handshake record (0x16) and the ALPN protocol must be ``postgresql``, as PostgreSQL 17
requires. What each mode allows is `ClientTlsPolicy`; Unix-socket clients never use TLS and are never refused for
it (PostgreSQL answers ``N`` there too).

**Servers** (``server_tls_*``, global and per pool). `open_backend` sends an SSLRequest and reads the one-byte
answer on a bare socket, then hands the socket to the event loop, plain or with pg_doorman's TLS record layer
(tlsstream, as for clients); what each mode does with a ``N`` is `ServerTlsPlan`. The contexts are built once
per set of files (`backend_context`, keyed by the files' fingerprint, so a reload with changed files gets a new
context while the old pools finish with theirs).

Both sides speak TLS 1.2 or later with Mozilla's "intermediate" cipher list (TLS 1.3 suites are OpenSSL's own,
all of them modern).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, cast

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from pg_doorman import tlsstream
from pg_doorman.protocol import messages

if TYPE_CHECKING:
    from pg_doorman.config.schema import General, PoolSettings, ServerTls

log = logging.getLogger("pg_doorman.tls")

ALPN_POSTGRESQL = "postgresql"
TLS_RECORD_HANDSHAKE = 0x16
"""First byte of a TLS ClientHello: a client that starts with it uses direct TLS (PostgreSQL 17)."""

# Mozilla Server Side TLS, "intermediate" configuration (version 5.7): forward secrecy and AEAD ciphers only.
MOZILLA_INTERMEDIATE_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-CHACHA20-POLY1305",
    )
)

CLIENT_TLS_MODES: tuple[str, ...] = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
SERVER_TLS_MODES: tuple[str, ...] = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")

PLAIN_REFUSED = "Connection without SSL is not allowed by tls_mode."


class TlsSetupError(Exception):
    """A TLS file that does not load: ``key`` is the setting that names it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


def _harden(ctx: ssl.SSLContext) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(MOZILLA_INTERMEDIATE_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION  # renegotiation: as PostgreSQL, none
    return ctx


def _load_identity(ctx: ssl.SSLContext, cert_key: str, certificate: str, key_key: str, private_key: str) -> None:
    """Load a certificate and its key; an error names the setting at fault (certificate first)."""
    try:
        ssl.create_default_context(cafile=certificate)  # the certificate parses as PEM on its own
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise TlsSetupError(cert_key, f"cannot read the certificate {certificate}: {_reason(exc)}") from None
    try:
        ctx.load_cert_chain(certificate, private_key)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise TlsSetupError(
            key_key, f"cannot load the private key {private_key} (or it does not match {certificate}): {_reason(exc)}"
        ) from None


def _load_ca(ctx: ssl.SSLContext, key: str, ca_file: str) -> None:
    try:
        ctx.load_verify_locations(cafile=ca_file)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise TlsSetupError(key, f"cannot read the CA certificates in {ca_file}: {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).lower().replace("_", " ")
    return str(exc) or type(exc).__name__


def fingerprint(*paths: str | None) -> str:
    """SHA-256 over the contents of the files (None: absent): a reload that changes one recreates the pools
    that use it (inventory 7.2). No files: ""."""
    if all(path is None for path in paths):
        return ""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(b"\x00" if path is None else b"\x01" + path.encode())
        if path is not None:
            try:
                with open(path, "rb") as f:
                    digest.update(hashlib.sha256(f.read()).digest())
            except OSError:
                digest.update(b"?")
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------- client side


@dataclass(frozen=True, slots=True)
class ClientTlsPolicy:
    """What ``general.tls_mode`` means for a TCP client.

    ``offered``: an SSLRequest gets ``S`` (and direct TLS is accepted). ``required``: a plain TCP startup is
    refused with 28000. ``verify_client``: the client must present a certificate that chains to ``tls_ca_cert``.
    ``match_user``: the certificate's common name must equal the user name (PostgreSQL's
    ``clientcert=verify-full``); only with ``verify-full`` and ``tls_client_cert_user_match``.
    """

    mode: str
    offered: bool
    required: bool
    verify_client: bool
    match_user: bool


def client_policy(mode: str | None, has_certificate: bool, match_user: bool = False) -> ClientTlsPolicy:
    """The policy of a ``tls_mode`` (None: unset, which is ``allow``).

    ``prefer`` is ``allow`` (the server offers, the client chooses); ``verify-ca`` and ``verify-full`` both
    require a client certificate from the CA, as the original's ``verify-full`` does; ``verify-full`` also checks
    the user name when asked to. ``disable`` turns TLS off even with a certificate configured (the original fails
    to start then).
    """
    effective = mode or "allow"
    offered = has_certificate and effective != "disable"
    required = effective in ("require", "verify-ca", "verify-full")
    verify = effective in ("verify-ca", "verify-full")
    return ClientTlsPolicy(effective, offered, required, verify, verify and effective == "verify-full" and match_user)


def client_context(certificate: str, private_key: str, ca_cert: str | None, verify_client: bool) -> ssl.SSLContext:
    """The context that accepts clients: our certificate, ALPN ``postgresql``, and the CA when clients must show
    a certificate. Raises TlsSetupError naming the ``general`` key of a file that does not load."""
    ctx = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    _load_identity(ctx, "tls_certificate", certificate, "tls_private_key", private_key)
    if ca_cert is not None:
        _load_ca(ctx, "tls_ca_cert", ca_cert)
    ctx.verify_mode = ssl.CERT_REQUIRED if verify_client else ssl.CERT_NONE
    ctx.set_alpn_protocols([ALPN_POSTGRESQL])
    return ctx


class HandshakeLimiter:
    """``tls_rate_limit_per_second``: at most rate/100 handshakes start in each 10 ms window (as the original);
    a handshake over the limit waits for a later window. Sans-I/O: `reserve` says how long to wait."""

    WINDOW = 0.01

    __slots__ = ("_per_window", "_used", "_window_start")

    def __init__(self, rate_per_second: int) -> None:
        self._per_window = max(1, rate_per_second // 100)
        self._window_start = float("-inf")
        self._used = 0

    def reserve(self, now: float) -> float:
        """Take a handshake slot; returns the seconds to wait before the handshake may start (0.0: at once)."""
        if now >= self._window_start + self.WINDOW:
            self._window_start = now
            self._used = 0
        if self._used < self._per_window:
            self._used += 1
            return max(0.0, self._window_start - now)
        self._window_start += self.WINDOW
        self._used = 1
        return self._window_start - now


@dataclass(slots=True)
class ClientTls:
    """Client TLS as the process runs it (built once at start; the keys are restart-only).

    ``end_point_hash``: the ``tls-server-end-point`` channel binding data of our certificate (SCRAM-SHA-256-PLUS);
    None when TLS is not offered or the certificate's signature names no usable hash (then PLUS is not offered).
    """

    policy: ClientTlsPolicy
    context: ssl.SSLContext | None  # None: TLS not offered
    limiter: HandshakeLimiter | None = None
    end_point_hash: bytes | None = None


def build_client_tls(
    mode: str | None,
    certificate: str | None,
    private_key: str | None,
    ca_cert: str | None,
    *,
    rate_per_second: int = 0,
    match_user: bool = False,
) -> ClientTls:
    policy = client_policy(mode, certificate is not None and private_key is not None, match_user)
    context = None
    end_point = None
    if policy.offered:
        assert certificate is not None and private_key is not None
        context = client_context(certificate, private_key, ca_cert, policy.verify_client)
        end_point = certificate_file_end_point_hash(certificate)
    limiter = HandshakeLimiter(rate_per_second) if rate_per_second > 0 and context is not None else None
    return ClientTls(policy, context, limiter, end_point)


def client_tls(general: General) -> ClientTls:
    """Client TLS of a loaded configuration (its files were loaded once by the config loader already)."""
    return build_client_tls(
        general.tls_mode,
        general.tls_certificate,
        general.tls_private_key,
        general.tls_ca_cert,
        rate_per_second=general.tls_rate_limit_per_second,
        match_user=general.tls_client_cert_user_match,
    )


def certificate_common_name(peercert: dict[str, Any] | None) -> str | None:
    """The common name of a verified client certificate (`ssl.SSLObject.getpeercert()`), or None."""
    if not peercert:
        return None
    names = [value for rdn in peercert.get("subject", ()) for (field, value) in rdn if field == "commonName"]
    return names[0] if names else None


def certificate_user_problem(peercert: dict[str, Any] | None, user: str) -> str | None:
    """Why a verified client certificate does not name ``user`` (its common name must equal it), or None."""
    if not peercert:
        return "no client certificate"
    names = [value for rdn in peercert.get("subject", ()) for (field, value) in rdn if field == "commonName"]
    if not names:
        return "the certificate has no common name"
    if user not in names:
        return f'CN "{names[0]}" does not match'
    return None


# ---------------------------------------------------------------------------------------- channel binding


@functools.lru_cache(maxsize=16)
def end_point_hash(der: bytes) -> bytes | None:
    """``tls-server-end-point`` channel binding data of a DER certificate (RFC 5929 section 4.1): its hash with
    the hash function of the certificate's signature, SHA-256 when that is MD5 or SHA-1. None when the signature
    names no hash (Ed25519, Ed448) or the bytes do not parse: no channel binding with that certificate."""
    try:
        algorithm = x509.load_der_x509_certificate(der).signature_hash_algorithm
    except (ValueError, UnsupportedAlgorithm):
        return None
    if algorithm is None:
        return None
    if isinstance(algorithm, hashes.MD5 | hashes.SHA1):
        algorithm = hashes.SHA256()
    digest = hashes.Hash(algorithm)
    digest.update(der)
    return digest.finalize()


def certificate_file_end_point_hash(path: str) -> bytes | None:
    """`end_point_hash` of the first (leaf) certificate of a PEM file: the one a TLS handshake presents."""
    try:
        with open(path, "rb") as f:
            leaf = x509.load_pem_x509_certificates(f.read())[0]
    except (OSError, ValueError, IndexError):
        return None
    return end_point_hash(leaf.public_bytes(Encoding.DER))


def peer_end_point_hash(transport: asyncio.BaseTransport | None) -> bytes | None:
    """`end_point_hash` of the certificate the other end of a TLS connection showed (PostgreSQL's, for
    pg_doorman's own SCRAM-SHA-256-PLUS login); None on a plain connection."""
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return end_point_hash(der) if der else None


# ---------------------------------------------------------------------------------------- upgrading


def _ssl_protocol_class(loop: asyncio.AbstractEventLoop) -> Callable[..., Any]:
    """The SSL protocol class ``loop.start_tls`` would use: uvloop's own on a uvloop loop."""
    try:
        import uvloop
        import uvloop.loop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        pass
    else:
        if isinstance(loop, uvloop.Loop):
            return cast("Callable[..., Any]", uvloop.loop.SSLProtocol)  # type: ignore[attr-defined]
    from asyncio.sslproto import SSLProtocol

    return SSLProtocol


async def upgrade(
    transport: asyncio.BaseTransport,
    protocol: asyncio.BaseProtocol,
    context: ssl.SSLContext,
    *,
    received: bytes = b"",
    handshake_timeout: float | None = None,
    loop_tls: bool = False,
) -> asyncio.Transport:
    """Run a server-side TLS handshake on an open connection and return the encrypted transport; ``protocol``
    keeps receiving (decrypted) data. ``received``: bytes of the handshake already read from the socket (the
    ClientHello of a direct-TLS client), fed to the TLS layer first.

    The transport is a `tlsstream.TlsTransport` (records through OpenSSL in C, replies written straight to the
    socket); the event loop's own TLS only where that cannot bind to this interpreter's ssl objects (see
    tlsio.pxd), or with ``loop_tls``."""
    if handshake_timeout is not None and handshake_timeout <= 0:
        handshake_timeout = None
    if not loop_tls:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        ssl_object = context.wrap_bio(incoming, outgoing, server_side=True)
        try:
            stream = tlsstream.TlsTransport(transport, protocol, ssl_object, incoming, outgoing)  # type: ignore[arg-type]
        except ValueError:
            pass  # not on this interpreter (see tlsio.pxd)
        else:
            try:
                async with asyncio.timeout(handshake_timeout):
                    await stream.start_handshake(received)
            except BaseException:
                stream.abort()
                raise
            return stream  # type: ignore[return-value]
    return await _upgrade_with_loop(transport, protocol, context, received, handshake_timeout)


async def _upgrade_with_loop(
    transport: asyncio.BaseTransport,
    protocol: asyncio.BaseProtocol,
    context: ssl.SSLContext,
    received: bytes,
    handshake_timeout: float | None,
) -> asyncio.Transport:
    loop = asyncio.get_running_loop()
    if not received:
        new = await loop.start_tls(
            transport,  # type: ignore[arg-type]
            protocol,
            context,
            server_side=True,
            ssl_handshake_timeout=handshake_timeout,
        )
        assert new is not None
        return new
    # What loop.start_tls does, with the bytes already read fed in before the socket's next ones.
    waiter: asyncio.Future[None] = loop.create_future()
    ssl_protocol = _ssl_protocol_class(loop)(
        loop, protocol, context, waiter, True, None, False, handshake_timeout or 60.0
    )
    raw = transport
    raw.pause_reading()  # type: ignore[attr-defined]
    raw.set_protocol(ssl_protocol)
    ssl_protocol.connection_made(raw)
    view = memoryview(received)
    while view:
        buf = ssl_protocol.get_buffer(len(view))
        n = min(len(buf), len(view))
        buf[:n] = view[:n]
        ssl_protocol.buffer_updated(n)
        view = view[n:]
    raw.resume_reading()  # type: ignore[attr-defined]
    try:
        await waiter
    except BaseException:
        raw.close()
        raise
    app = getattr(ssl_protocol, "_app_transport", None) or ssl_protocol._get_app_transport()
    return app  # type: ignore[no-any-return]


def is_tls(transport: asyncio.BaseTransport | None) -> bool:
    """True for an encrypted transport: its socket must never be written to directly."""
    return transport is not None and (
        transport.get_extra_info("sslcontext") is not None or transport.get_extra_info("ssl_object") is not None
    )


# ---------------------------------------------------------------------------------------- server side


@dataclass(frozen=True, slots=True)
class ServerTlsPlan:
    """What a ``server_tls_mode`` does when a connection opens.

    ``ask``: send an SSLRequest first. ``need``: a ``N`` answer fails the connection (else it goes on plain).
    ``verify_ca``/``verify_host``: check PostgreSQL's certificate against ``server_tls_ca_cert`` / its name.
    ``retry_with_tls``: ``allow``: a plain login that PostgreSQL refuses is tried once more over TLS.
    """

    ask: bool
    need: bool
    verify_ca: bool
    verify_host: bool
    retry_with_tls: bool


def server_plan(mode: str) -> ServerTlsPlan:
    ask = mode in ("prefer", "require", "verify-ca", "verify-full")
    need = mode in ("require", "verify-ca", "verify-full")
    return ServerTlsPlan(ask, need, mode in ("verify-ca", "verify-full"), mode == "verify-full", mode == "allow")


@functools.lru_cache(maxsize=64)
def backend_context(
    mode: str, ca_cert: str | None, certificate: str | None, private_key: str | None, files_fingerprint: str
) -> ssl.SSLContext:
    """The context for connections to PostgreSQL (one per distinct settings and file contents).
    Raises TlsSetupError naming the ``server_tls_*`` key of a file that does not load."""
    del files_fingerprint  # part of the cache key only: changed files build a new context
    plan = server_plan(mode)
    ctx = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    ctx.check_hostname = plan.verify_host
    if ca_cert is not None:  # loaded even when not used for verification: a bad file is a config error
        _load_ca(ctx, "server_tls_ca_cert", ca_cert)
    if plan.verify_ca or plan.verify_host:
        if ca_cert is None:
            raise TlsSetupError("server_tls_ca_cert", f"server_tls_mode '{mode}' needs server_tls_ca_cert")
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.verify_mode = ssl.CERT_NONE
    if certificate is not None and private_key is not None:
        _load_identity(ctx, "server_tls_certificate", certificate, "server_tls_private_key", private_key)
    return ctx


def context_for(settings: ServerTls) -> ssl.SSLContext | None:
    """The backend context of a pool's ``server_tls`` (None with ``disable``)."""
    if settings.mode == "disable":
        return None
    return backend_context(
        settings.mode, settings.ca_cert, settings.certificate, settings.private_key, settings.fingerprint
    )


class ServerTlsRefused(OSError):
    """PostgreSQL answered ``N`` to our SSLRequest while the mode needs TLS."""


async def _connect_socket(loop: asyncio.AbstractEventLoop, host: str, port: int) -> socket.socket:
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    last: OSError = OSError(f"cannot resolve {host}")
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, address)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
        except BaseException:
            sock.close()
            raise
    raise last


async def negotiate(
    host: str, port: int, plan: ServerTlsPlan, context: ssl.SSLContext
) -> tuple[socket.socket, ssl.SSLContext | None, str | None]:
    """Connect and send an SSLRequest: returns the socket and, when PostgreSQL said ``S``, the context and the
    server_hostname for the handshake (the event loop runs it when it adopts the socket)."""
    loop = asyncio.get_running_loop()
    sock = await _connect_socket(loop, host, port)
    try:
        await loop.sock_sendall(sock, messages.ssl_request())
        answer = await loop.sock_recv(sock, 1)
        if answer == b"S":
            return sock, context, host if plan.verify_host else ""
        if answer == b"N" and not plan.need:
            return sock, None, None
        if answer == b"N":
            raise ServerTlsRefused("the server does not support TLS, and server_tls_mode requires it")
        if not answer:
            raise ConnectionResetError("the server closed the connection after the SSLRequest")
        raise ConnectionError(f"the server answered the SSLRequest with {answer!r}")
    except BaseException:
        sock.close()
        raise


async def open_backend(
    factory: Callable[[], asyncio.BaseProtocol],
    host: str,
    port: int,
    plan: ServerTlsPlan,
    context: ssl.SSLContext | None,
    *,
    use_tls: bool,
    handshake_timeout: float | None = None,
) -> asyncio.BaseProtocol:
    """A TCP connection to PostgreSQL with ``factory``'s protocol, over TLS when ``use_tls`` and PostgreSQL
    agrees (see `ServerTlsPlan`)."""
    loop = asyncio.get_running_loop()
    if not use_tls or context is None:
        _, protocol = await loop.create_connection(factory, host, port, family=socket.AF_UNSPEC)
        return protocol
    sock, ctx, hostname = await negotiate(host, port, plan, context)
    try:
        if ctx is None:
            _, protocol = await loop.create_connection(factory, sock=sock)
            return protocol
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        ssl_object = ctx.wrap_bio(incoming, outgoing, server_side=False, server_hostname=hostname or None)
        if not tlsstream.native(ssl_object, incoming, outgoing):  # not on this interpreter (see tlsio.pxd)
            _, protocol = await loop.create_connection(
                factory, sock=sock, ssl=ctx, server_hostname=hostname, ssl_handshake_timeout=handshake_timeout
            )
            return protocol
    except BaseException:
        sock.close()
        raise
    return await _backend_over_records(factory, sock, ssl_object, incoming, outgoing, handshake_timeout)


class _Unattached(asyncio.Protocol):
    """The protocol above a backend's TLS transport between its handshake and the server connection that takes
    it over: keeps whatever arrives (PostgreSQL sends nothing before our startup packet, but nothing is lost)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.ended = False

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> None:
        self.ended = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended = True


async def _backend_over_records(
    factory: Callable[[], asyncio.BaseProtocol],
    sock: socket.socket,
    ssl_object: ssl.SSLObject,
    incoming: ssl.MemoryBIO,
    outgoing: ssl.MemoryBIO,
    handshake_timeout: float | None,
) -> asyncio.BaseProtocol:
    """The client side of a TLS handshake with PostgreSQL on pg_doorman's record layer (tlsstream), then the
    server connection from ``factory`` on top of it: its replies are decrypted in one call per read and its
    queries written straight to the socket, as for TLS clients."""
    loop = asyncio.get_running_loop()
    unattached = _Unattached()
    try:
        raw, _ = await loop.create_connection(lambda: unattached, sock=sock)
    except BaseException:
        sock.close()
        raise
    stream = tlsstream.TlsTransport(raw, unattached, ssl_object, incoming, outgoing)
    try:
        async with asyncio.timeout(handshake_timeout if handshake_timeout and handshake_timeout > 0 else None):
            await stream.start_handshake(b"")
        if unattached.ended:
            raise ConnectionResetError("PostgreSQL closed the connection after the TLS handshake")
    except BaseException:
        stream.abort()
        raise
    protocol = factory()
    stream.set_protocol(protocol)
    protocol.connection_made(stream)  # type: ignore[arg-type]
    if unattached.data:
        protocol.data_received(bytes(unattached.data))  # type: ignore[attr-defined]
    return protocol


async def open_cancel_connection(
    host: str, port: int, settings: PoolSettings
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection for a CancelRequest to a backend whose session uses TLS: negotiated the same way."""
    server_tls = settings.server_tls
    context = context_for(server_tls)
    if context is None:
        return await asyncio.open_connection(host, port)
    plan = replace(server_plan(server_tls.mode), ask=True, need=True)  # the session is encrypted: so is this
    sock, ctx, hostname = await negotiate(host, port, plan, context)
    return await asyncio.open_connection(sock=sock, ssl=ctx, server_hostname=hostname)
