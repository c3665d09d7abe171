"""CPU of pg_doorman's client-side TLS layer per round trip, apart from PostgreSQL, pgbench and the pool.

One process, one event loop, a socket pair: a TLS client (the event loop's own TLS) sends a 60-byte Query, the
server side answers with a 100-byte reply, N times in a row. The server side is upgraded by `tls.upgrade`, once
with pg_doorman's record layer (tlsstream) and once with the event loop's TLS (``loop_tls``), interleaved; the
client side and the kernel's work are the same for both, so the difference in CPU per round trip is the
difference of the server side. `python bench/tls_layer.py [--trips 20000] [--rounds 3]`.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import socket
import ssl
import statistics
import tempfile
import time
from typing import Any

import uvloop

from pg_doorman import implementation, tls
from pg_doorman.devcluster import generate_certificates

QUERY = b"Q\x00\x00\x00\x3bSELECT abalance FROM pgbench_accounts WHERE aid = 4242;\x00"
REPLY = b"T" + b"\x00" * 40 + b"D" + b"\x00" * 20 + b"C\x00\x00\x00\x0dSELECT 1\x00Z\x00\x00\x00\x05I"


class Answer(asyncio.Protocol):
    transport: Any = None

    def data_received(self, data: bytes) -> None:
        self.transport.write(REPLY)


class Asker(asyncio.Protocol):
    def __init__(self, trips: int, done: asyncio.Future[None]) -> None:
        self.left = trips
        self.done = done
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.left -= 1
        if self.left <= 0:
            self.done.set_result(None)
        else:
            self.transport.write(QUERY)


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def one_run(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, trips: int, loop_tls: bool) -> float:
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    answer = Answer()
    raw, _ = await loop.connect_accepted_socket(lambda: answer, a)
    upgrading = asyncio.ensure_future(tls.upgrade(raw, answer, server_ctx, loop_tls=loop_tls))
    done: asyncio.Future[None] = loop.create_future()
    client_transport, _ = await loop.create_connection(
        lambda: Asker(trips, done), sock=b, ssl=client_ctx, server_hostname="localhost"
    )
    answer.transport = await upgrading
    start = cpu()
    client_transport.write(QUERY)
    await done
    spent = cpu() - start
    client_transport.close()
    answer.transport.close()
    await asyncio.sleep(0.05)
    return spent / trips * 1e6


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as work:
        files = generate_certificates(work)
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ctx.load_cert_chain(files.server_cert, files.server_key)
        client_ctx = ssl.create_default_context(cafile=files.ca_cert)
        results: dict[str, list[float]] = {"tlsstream": [], "loop TLS": []}
        await one_run(server_ctx, client_ctx, 2000, False)  # warm-up
        for _ in range(args.rounds):
            for name, loop_tls in (("tlsstream", False), ("loop TLS", True)):
                results[name].append(await one_run(server_ctx, client_ctx, args.trips, loop_tls))
        print(f"hot path: {implementation()}; {args.trips} round trips x {args.rounds} rounds")
        for name, values in results.items():
            print(
                f"  {name:10s} CPU µs per round trip (client + server + kernel): "
                f"best {min(values):.2f}  median {statistics.median(values):.2f}"
            )
        diff = statistics.median(results["loop TLS"]) - statistics.median(results["tlsstream"])
        print(f"  server side saves {diff:.2f} µs per round trip (median)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trips", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    t0 = time.monotonic()
    uvloop.run(main(parser.parse_args()))
