"""Incremental framing of typed messages (type byte + int32 length) and of untyped startup packets.

`MessageBuffer` is used during login and in the admin console, where convenience matters more than speed. The
forwarding hot path in client.py/server.py walks headers inline instead.
"""

from __future__ import annotations

from collections.abc import Generator

from pg_doorman.protocol.errors import OUT_OF_MEMORY, PoolerError, ProtocolViolation

MAX_STARTUP_PACKET = 10_000
"""PostgreSQL itself rejects startup packets above 10 000 bytes (MAX_STARTUP_PACKET_LENGTH)."""


def type_table(codes: dict[str, int]) -> bytes:
    """A 256-entry lookup by message type byte: ``codes`` maps type letters to small ints, all others are 0.

    The forwarding loops index it with the type byte instead of comparing against several letters.
    """
    table = bytearray(256)
    for letters, code in codes.items():
        for letter in letters:
            table[ord(letter)] = code
    return bytes(table)


class MessageBuffer:
    """Accumulates bytes and yields complete ``(type, body)`` messages."""

    __slots__ = ("_buf", "max_message_size")

    def __init__(self, max_message_size: int = 256 * 1024 * 1024) -> None:
        self._buf = bytearray()
        self.max_message_size = max_message_size

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data

    def __len__(self) -> int:
        return len(self._buf)

    def peek_byte(self) -> int:
        """The first buffered byte, or -1 when the buffer is empty."""
        return self._buf[0] if self._buf else -1

    def take_all(self) -> bytes:
        data = bytes(self._buf)
        self._buf.clear()
        return data

    def messages(self) -> Generator[tuple[int, bytes], None, None]:
        """Yield complete messages; incomplete trailing bytes stay buffered."""
        buf = self._buf
        pos = 0
        try:
            while len(buf) - pos >= 5:
                length = int.from_bytes(buf[pos + 1 : pos + 5], "big")
                if length < 4:
                    raise ProtocolViolation(f"invalid message length {length}")
                if length > self.max_message_size:
                    raise PoolerError(OUT_OF_MEMORY, f"message of {length} bytes exceeds the maximum allowed size")
                end = pos + 1 + length
                if end > len(buf):
                    break
                kind = buf[pos]
                body = bytes(buf[pos + 5 : end])
                pos = end
                yield kind, body
        finally:
            if pos:
                del buf[:pos]

    def next_message(self, limit: int) -> tuple[int, bytes] | None:
        """Take one complete ``(type, body)`` message, or None while it is incomplete.

        A declared length over ``limit`` (or under 4) is refused from the header alone, before its body is
        waited for, with PostgreSQL's 08P01 "invalid message length": before authentication nobody may make the
        pooler hold more than a small message.
        """
        buf = self._buf
        if len(buf) < 5:
            return None
        length = int.from_bytes(buf[1:5], "big")
        if length < 4 or length > limit:
            raise ProtocolViolation("invalid message length")
        if len(buf) < 1 + length:
            return None
        kind = buf[0]
        body = bytes(buf[5 : 1 + length])
        del buf[: 1 + length]
        return kind, body

    def startup_packet(self) -> bytes | None:
        """Take one untyped startup-phase packet (length-prefixed, no type byte) if complete."""
        buf = self._buf
        if len(buf) < 4:
            return None
        length = int.from_bytes(buf[:4], "big")
        if length < 8 or length > MAX_STARTUP_PACKET:
            raise ProtocolViolation(f"invalid length of startup packet: {length}")
        if len(buf) < length:
            return None
        packet = bytes(buf[:length])
        del buf[:length]
        return packet
