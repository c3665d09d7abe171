"""What a Prometheus scrape costs the pooler: scrape time, and forwarding latency with and without scraping.

Starts a throwaway PostgreSQL and a pg_doorman with its web listener, opens ``--clients`` idle client connections
spread over ``--pools`` pools, and runs ``--workers`` connections that send ``SELECT 1`` back to back, measuring
each round trip. Phase 1 runs without scrapes, phase 2 scrapes ``/metrics`` (gzip) every ``--interval`` seconds.
Prints latency percentiles of both phases and the scrape times::

    .venv/bin/python bench/scrape.py --clients 10000 --pools 50 --workers 16 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pgwire

from pg_doorman.devcluster import TempPostgres, find_free_port

QUERY = b"Q" + struct.pack("!I", 4 + len(b"SELECT 1\0")) + b"SELECT 1\0"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def round_trip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(QUERY)
    while True:
        header = await reader.readexactly(5)
        await reader.readexactly(struct.unpack("!I", header[1:])[0] - 4)
        if header[:1] == b"Z":
            return


async def worker(host: str, port: int, database: str, stop: asyncio.Event, latencies: list[float]) -> None:
    reader, writer = await pgwire.login(host, port, "app", database, "app_pass")
    try:
        while not stop.is_set():
            started = time.perf_counter()
            await round_trip(reader, writer)
            latencies.append(time.perf_counter() - started)
    finally:
        pgwire.close(writer)


async def scrape_once(port: int) -> tuple[float, int]:
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n")
    body = await reader.read()
    elapsed = time.perf_counter() - started
    writer.close()
    assert body.startswith(b"HTTP/1.1 200 "), body[:100]
    return elapsed, len(body)


async def phase(
    host: str, port: int, web_port: int, databases: list[str], args: argparse.Namespace, scrape: bool
) -> tuple[list[float], list[tuple[float, int]]]:
    stop = asyncio.Event()
    latencies: list[float] = []
    scrapes: list[tuple[float, int]] = []
    tasks = [
        asyncio.create_task(worker(host, port, databases[i % len(databases)], stop, latencies))
        for i in range(args.workers)
    ]
    await asyncio.sleep(1.0)  # warm-up: logins, server connections
    latencies.clear()
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        if scrape:
            scrapes.append(await scrape_once(web_port))
        await asyncio.sleep(args.interval)
    stop.set()
    await asyncio.gather(*tasks)
    return latencies, scrapes


def report(name: str, latencies: list[float], seconds: float) -> str:
    ms = [x * 1000 for x in latencies]
    return (
        f"{name:<18} {len(ms) / seconds:>9.0f} {percentile(ms, 0.5):>8.3f} {percentile(ms, 0.99):>8.3f} "
        f"{percentile(ms, 0.999):>8.3f} {max(ms):>8.3f}"
    )


async def main_async(args: argparse.Namespace, host: str, port: int, web_port: int, databases: list[str]) -> None:
    per_pool = max(args.clients // len(databases), 1)
    held: list[asyncio.StreamWriter] = []
    started = time.monotonic()
    for database in databases:
        writers, errors = await pgwire.hold_idle(host, port, "app", database, "app_pass", per_pool)
        held += writers
        if errors:
            print(f"{len(errors)} idle logins failed, e.g. {errors[0]}")
    print(f"{len(held)} idle clients over {len(databases)} pools in {time.monotonic() - started:.1f}s")
    idle_scrape = [await scrape_once(web_port) for _ in range(5)]
    quiet, _ = await phase(host, port, web_port, databases, args, scrape=False)
    busy, scrapes = await phase(host, port, web_port, databases, args, scrape=True)
    print(f"\n{'phase':<18} {'tps':>9} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>8} {'max ms':>8}")
    print(report("no scrapes", quiet, args.seconds))
    print(report(f"scrape every {args.interval:g}s", busy, args.seconds))
    times = [t * 1000 for t, _ in idle_scrape + scrapes]
    size = scrapes[-1][1] if scrapes else idle_scrape[-1][1]
    print(
        f"\nscrape (gzip, {size} bytes on the wire, {len(times)} scrapes): median {statistics.median(times):.2f} ms, "
        f"max {max(times):.2f} ms (client-side wall time, {args.pools} pools, {len(held)} clients)"
    )
    await pgwire.close_all(held)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=2000, help="idle client connections held open")
    parser.add_argument("--pools", type=int, default=20)
    parser.add_argument("--workers", type=int, default=8, help="connections running SELECT 1 back to back")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between scrapes")
    args = parser.parse_args()

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.clients + 200 > hard // 2:
        print(f"note: the open-files limit ({hard}) is tight for {args.clients} clients on both ends")

    cluster = TempPostgres(auth="trust", users={"app": "app_pass"}, settings={"max_connections": "400"})
    cluster.start()
    cluster.create_database("appdb", owner="app")
    proc: subprocess.Popen[bytes] | None = None
    try:
        port, web_port = find_free_port(), find_free_port()
        databases = [f"db{i}" for i in range(args.pools)]
        pool_size = max(2, min(10, 300 // args.pools))
        config = {
            "general": {
                "host": "127.0.0.1",
                "port": port,
                "admin_username": "admin",
                "admin_password": "bench_admin",
                "max_connections": args.clients + args.workers + 100,
                "log_client_connections": False,
                "log_client_disconnections": False,
            },
            "web": {"enabled": True, "host": "127.0.0.1", "port": web_port},
            "pools": {
                name: {
                    "server_host": "127.0.0.1",
                    "server_port": cluster.port,
                    "server_database": "appdb",
                    "users": [{"username": "app", "password": "app_pass", "pool_size": pool_size}],
                }
                for name in databases
            },
        }
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "pg_doorman.yaml"
            path.write_text(yaml.safe_dump(config))
            log = open(Path(tmp) / "pg_doorman.log", "wb")  # noqa: SIM115 - closed with the process
            proc = subprocess.Popen(
                [sys.executable, "-m", "pg_doorman", str(path), "-l", "warning"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            pgwire.wait_ready("127.0.0.1", port, "app", databases[0], "app_pass", timeout=30)
            asyncio.run(main_async(args, "127.0.0.1", port, web_port, databases))
            proc.terminate()
            proc.wait(10)
            log.close()
            warnings = (Path(tmp) / "pg_doorman.log").read_text()
            if "slow /metrics" in warnings:
                print("pg_doorman logged slow scrapes:\n" + warnings[-2000:])
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        cluster.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
