"""Command line: ``pg_doorman [CONFIG]``, ``-t`` config test, ``generate`` example config, logging options."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from typing import TYPE_CHECKING

from pg_doorman import __version__

if TYPE_CHECKING:
    from pg_doorman.config import Config

DEFAULT_CONFIG = "pg_doorman.yaml"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-5s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pg_doorman", description="PostgreSQL connection pooler (transaction and session pooling)."
    )
    parser.add_argument(
        "config",
        nargs="?",
        default=os.environ.get("CONFIG_FILE", DEFAULT_CONFIG),
        help=f"configuration file, YAML or TOML by extension (default {DEFAULT_CONFIG})",
    )
    parser.add_argument("-t", "--test-config", action="store_true", help="validate the configuration and exit")
    parser.add_argument(
        "-l",
        "--log-level",
        default=os.environ.get("LOG_LEVEL", "info"),
        choices=["error", "warning", "warn", "info", "debug"],
        type=str.lower,
    )
    parser.add_argument("--log-format", "-F", default=os.environ.get("LOG_FORMAT", "text"), choices=["text", "json"])
    parser.add_argument("-V", "--version", action="version", version=f"pg_doorman {__version__}")
    return parser


def build_generate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pg_doorman generate", description="print an annotated example config")
    parser.add_argument("-f", "--format", choices=["yaml", "toml"], default="yaml")
    parser.add_argument("-o", "--output", help="write to this file (format from its extension)")
    return parser


def generate(argv: list[str]) -> int:
    from pg_doorman.config import generate_example_config

    args = build_generate_parser().parse_args(argv)
    fmt = args.format
    if args.output:
        fmt = "toml" if args.output.endswith(".toml") else "yaml"
    text = generate_example_config(fmt)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
        print(f"pg_doorman: wrote {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def unsupported_settings(config: Config) -> list[str]:
    """Settings this version accepts in the file but cannot honour, where ignoring them would be unsafe."""
    general = config.general
    problems = []
    where = config.path
    if general.pg_hba is not None or general.hba:
        problems.append(f"{where}: general.pg_hba/hba: access rules are not supported yet; remove them to start")
    if general.tls_mode in ("require", "verify-full"):
        problems.append(f"{where}: general.tls_mode: TLS for clients is not supported yet")
    if general.server_tls_mode in ("require", "verify-ca", "verify-full"):
        problems.append(f"{where}: general.server_tls_mode: TLS toward PostgreSQL is not supported yet")
    return problems


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "generate":
        return generate(argv[1:])
    args = build_parser().parse_args(argv)
    from pg_doorman.config import ConfigError, check_config, load_config

    if args.test_config:
        ok, text = check_config(args.config)
        if ok:
            missing = unsupported_settings(load_config(args.config))
            if missing:
                ok, text = False, "\n".join(missing)
        print(text, file=sys.stdout if ok else sys.stderr)
        return 0 if ok else 1
    level = "warning" if args.log_level == "warn" else args.log_level
    setup_logging(level, args.log_format)
    try:
        config = load_config(args.config)
    except (ConfigError, OSError) as exc:
        print(f"pg_doorman: configuration error:\n{exc}", file=sys.stderr)
        return 78  # EX_CONFIG, as the original
    missing = unsupported_settings(config)
    if missing:
        print("pg_doorman: configuration error:\n" + "\n".join(missing), file=sys.stderr)
        return 78
    from pg_doorman.app import Application

    app = Application(config)
    try:
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
            return int(asyncio.run(app.run()))
        return int(uvloop.run(app.run()))
    except OSError as exc:
        logging.getLogger("pg_doorman").error("cannot start: %s", exc)
        return 1
    except KeyboardInterrupt:
        return 0
