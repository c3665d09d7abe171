"""TLS records in and out of an OpenSSL object that Python's ssl module made and shook hands with.

``sock`` is the ``_ssl._SSLSocket`` behind an `ssl.SSLObject` (its ``_sslobj``), ``incoming``/``outgoing`` the two
`ssl.MemoryBIO` it reads records from and writes records to. This file is the pure-Python implementation, through
those objects' methods. The compiled build never imports it: the `.pxd` next to it holds C versions under the same
names (OpenSSL's SSL_read / SSL_write / BIO_read on the same objects, no exception per call), which the compiled
`tlsstream` module cimports.
"""

from __future__ import annotations

import ssl
from typing import Any

from pg_doorman import directio

_CHUNK = 65536


def load(library: str) -> bool:
    """Make the calls usable (the compiled build looks OpenSSL's functions up in ``library``, _ssl's file)."""
    return True


def bind(sock: Any, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO) -> bool:
    """Whether these objects can carry records here (the compiled build checks it can read them from C)."""
    return True


def decrypt(sock: Any, incoming: ssl.MemoryBIO, data: bytes) -> bytes | None:
    """Feed received ciphertext; return all the plaintext it completes (b"" when a record is still partial), or
    None when the peer's close_notify came and no plaintext before it. A broken record raises an OSError
    (ssl.SSLError)."""
    if data:
        incoming.write(data)
    chunks: list[bytes] = []
    try:
        while True:
            chunk = sock.read(_CHUNK)
            if not chunk:  # close_notify (the _ssl object reports it as an empty read)
                return b"".join(chunks) if chunks else None
            chunks.append(chunk)
    except ssl.SSLWantReadError:
        pass
    except ssl.SSLZeroReturnError:
        return b"".join(chunks) if chunks else None
    return b"".join(chunks)


def send(sock: Any, outgoing: ssl.MemoryBIO, data: bytes | bytearray | memoryview, fd: int) -> bytes:
    """Encrypt ``data`` (may be empty: then only what OpenSSL has queued, e.g. an alert), write the records
    straight to the socket ``fd`` while it takes them (``fd`` < 0: not at all), and return what it did not take."""
    if data:
        sock.write(data)
    records = outgoing.read()
    if fd < 0 or not records:
        return records
    sent = directio.send_nowait(fd, records)
    return records[sent:] if sent > 0 else records


def pending(outgoing: ssl.MemoryBIO) -> int:
    """Bytes of records OpenSSL has written and nobody has sent yet."""
    return outgoing.pending
