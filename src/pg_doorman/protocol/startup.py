"""Parsing of the first packet a client sends: StartupMessage, SSLRequest, GSSENCRequest or CancelRequest."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pg_doorman.protocol.errors import FEATURE_NOT_SUPPORTED, PoolerError, ProtocolViolation
from pg_doorman.protocol.messages import (
    CANCEL_REQUEST_CODE,
    GSSENC_REQUEST_CODE,
    SSL_REQUEST_CODE,
)


@dataclass(frozen=True, slots=True)
class SSLRequest:
    pass


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    pass


@dataclass(frozen=True, slots=True)
class CancelRequest:
    pid: int
    secret: int


@dataclass(frozen=True, slots=True)
class StartupMessage:
    params: dict[str, str]
    minor_version: int = 0
    protocol_options: tuple[str, ...] = ()  # ``_pq_.*`` parameters, which a 3.0 server does not understand

    @property
    def user(self) -> str:
        return self.params.get("user", "")

    @property
    def database(self) -> str:
        return self.params.get("database") or self.user


FirstPacket = SSLRequest | GSSENCRequest | CancelRequest | StartupMessage


def parse_first_packet(packet: bytes) -> FirstPacket:
    """Classify a complete startup-phase packet (its int32 length included)."""
    if len(packet) < 8:
        raise ProtocolViolation("startup packet too short")
    code = struct.unpack_from("!i", packet, 4)[0]
    if code == SSL_REQUEST_CODE and len(packet) == 8:
        return SSLRequest()
    if code == GSSENC_REQUEST_CODE and len(packet) == 8:
        return GSSENCRequest()
    if code == CANCEL_REQUEST_CODE:
        if len(packet) != 16:
            raise ProtocolViolation("invalid length of cancel request packet")
        pid, secret = struct.unpack_from("!ii", packet, 8)
        return CancelRequest(pid, secret)
    if code >> 16 != 3:
        raise PoolerError(
            FEATURE_NOT_SUPPORTED,
            f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}: server supports 3.0",
        )
    params = parse_startup_params(packet[8:])
    # A newer 3.x minor version or _pq_ options are answered with NegotiateProtocolVersion (3.0, options
    # unrecognized), as PostgreSQL does; the session then goes on in 3.0.
    options = tuple(name for name in params if name.startswith("_pq_."))
    for name in options:
        del params[name]
    return StartupMessage(params, minor_version=code & 0xFFFF, protocol_options=options)


def parse_startup_params(data: bytes) -> dict[str, str]:
    """Parse ``name\\0value\\0 ... \\0`` pairs."""
    if not data.endswith(b"\x00"):
        raise ProtocolViolation("invalid startup packet layout: expected terminator as last byte")
    body = data[:-1]
    if body and not body.endswith(b"\x00"):
        raise ProtocolViolation("invalid startup packet layout: expected terminator as last byte")
    parts = body[:-1].split(b"\x00") if body else []
    if len(parts) % 2 != 0:
        raise ProtocolViolation("invalid startup packet layout: missing value for a parameter")
    params: dict[str, str] = {}
    for i in range(0, len(parts), 2):
        try:
            name = parts[i].decode()
            value = parts[i + 1].decode()
        except UnicodeDecodeError:
            raise ProtocolViolation("invalid startup packet: parameters are not valid UTF-8")
        if not name:
            raise ProtocolViolation("invalid startup packet layout: empty parameter name")
        params[name] = value
    if "user" not in params or not params["user"]:
        raise PoolerError("28000", "no PostgreSQL user name specified in startup packet")
    return params
