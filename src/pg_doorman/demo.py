"""``python -m pg_doorman.demo``: try pg_doorman with no configuration at all.

Starts a throwaway PostgreSQL (role ``demo``/``demo``, database ``demo``), writes a pg_doorman config whose pool
``demo`` carries the role's stored verifier from pg_authid (no plaintext password; pg_doorman authenticates to
PostgreSQL by passthrough), prints how to connect, and runs the pooler in this process.  Ctrl-C stops the
pooler, then PostgreSQL, and removes the temporary files.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
from types import FrameType

import yaml

from pg_doorman.devcluster import TempPostgres, find_free_port

DEMO_USER = "demo"
DEMO_PASSWORD = "demo"
DEMO_DB = "demo"
ADMIN_USER = "admin"
ADMIN_PASSWORD = "admin"
DEFAULT_PORT = 6432


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def build_config(pg: TempPostgres, *, port: int, pool_size: int = 20) -> dict[str, object]:
    """The demo's pg_doorman config: one transaction-mode pool ``demo`` with passthrough auth."""
    return {
        "general": {
            "host": "127.0.0.1",
            "port": port,
            "admin_username": ADMIN_USER,
            "admin_password": ADMIN_PASSWORD,
        },
        "pools": {
            DEMO_DB: {
                "server_host": pg.host,
                "server_port": pg.port,
                "pool_mode": "transaction",
                "users": [
                    {
                        "username": DEMO_USER,
                        "password": pg.role_password_hash(DEMO_USER),
                        "pool_size": pool_size,
                    }
                ],
            }
        },
    }


def _connect_hints(port: int, pg: TempPostgres, config_path: str) -> str:
    return "\n".join(
        [
            "",
            "pg_doorman demo",
            f"  PostgreSQL (throwaway): 127.0.0.1:{pg.port}, data in {pg.data_dir}",
            f"  pg_doorman config:      {config_path}",
            "",
            "Connect through pg_doorman:",
            f'  psql "host=127.0.0.1 port={port} user={DEMO_USER} dbname={DEMO_DB} password={DEMO_PASSWORD}"',
            "Admin database login (its SHOW/PAUSE/... commands come in a later version):",
            f'  psql "host=127.0.0.1 port={port} user={ADMIN_USER} dbname=pgdoorman password={ADMIN_PASSWORD}"',
            f"Benchmark it:  pgbench -i -h 127.0.0.1 -p {port} -U {DEMO_USER} {DEMO_DB}   (password: {DEMO_PASSWORD})",
            "",
            "Press Ctrl-C to stop pg_doorman and PostgreSQL.",
            "",
        ]
    )


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run the demo until interrupted; returns pg_doorman's exit code."""
    parser = argparse.ArgumentParser(prog="python -m pg_doorman.demo", description=__doc__)
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="pg_doorman listen port (default 6432, 0 = any free port)"
    )
    parser.add_argument("-l", "--log-level", default="info", help="pg_doorman log level (default info)")
    args = parser.parse_args(argv)

    port: int = args.port
    if port == 0:
        port = find_free_port()
    elif not _port_is_free("127.0.0.1", port):
        fallback = find_free_port()
        print(f"port {port} is busy (another pooler?); using {fallback} instead", file=sys.stderr)
        port = fallback

    # A plain SIGTERM must also reach the `finally` below, or the postmaster would outlive us.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)

    pg = TempPostgres(auth="trust", users={DEMO_USER: DEMO_PASSWORD})
    try:
        print("starting a throwaway PostgreSQL ...", file=sys.stderr)
        pg.start()
        pg.create_database(DEMO_DB, owner=DEMO_USER)
        config_path = os.path.join(pg.base_dir, "pg_doorman.yaml")
        with open(config_path, "w", encoding="utf-8") as f:
            yaml.safe_dump(build_config(pg, port=port), f, sort_keys=False)
        print(_connect_hints(port, pg, config_path), flush=True)

        from pg_doorman.cli import main as cli_main

        try:
            return cli_main([config_path, "-l", args.log_level])
        except KeyboardInterrupt:
            return 0
    except KeyboardInterrupt:
        return 130
    finally:
        print("stopping PostgreSQL and removing its files ...", file=sys.stderr)
        pg.cleanup()


if __name__ == "__main__":
    raise SystemExit(main())
