"""Command line, as the original's: ``pg_doorman [OPTIONS] [CONFIG_FILE]``, ``-t``, ``-d``, ``generate``,
``generate-docs``.

Every mistake on the command line or in the environment (``CONFIG_FILE``, ``LOG_LEVEL``, ``LOG_FORMAT``,
``DAEMON``) is one line on stderr and exit code 2; a configuration problem is ``Config parse error: …`` and exit
code 78 (EX_CONFIG), as the original.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import NoReturn

from pg_doorman import __version__
from pg_doorman.logs import parse_format, parse_level

DEFAULT_CONFIG = "pg_doorman.toml"  # the original's default
EX_USAGE = 2
EX_CONFIG = 78
EX_OSERR = 71

log = logging.getLogger("pg_doorman")


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse that reports a mistake as one line (no usage block) and lets `main` choose the exit code."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def _level(value: str) -> str:
    try:
        parse_level(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value.lower()


def _format(value: str) -> str:
    try:
        return parse_format(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _env_flag(name: str) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise UsageError(f"pg_doorman: environment {name}={os.environ[name]!r}: expected true or false")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pg_doorman",
        description="PostgreSQL connection pooler. Subcommands: generate (config from a PostgreSQL server, or "
        "--reference for an annotated example), generate-docs (reference of every key).",
    )
    parser.add_argument(
        "config",
        nargs="?",
        default=None,
        metavar="CONFIG_FILE",
        help=f"configuration file, YAML or TOML by extension (env CONFIG_FILE; default {DEFAULT_CONFIG})",
    )
    parser.add_argument("-t", "--test-config", action="store_true", help="test the configuration file and exit")
    parser.add_argument(
        "-l", "--log-level", type=_level, default=None, help="error, warn, info, debug or trace (env LOG_LEVEL)"
    )
    parser.add_argument(
        "-F", "--log-format", type=_format, default=None, help="text, structured (JSON lines) or debug (env LOG_FORMAT)"
    )
    parser.add_argument("-n", "--no-color", action="store_true", help="no colours in the log (also NO_COLOR)")
    parser.add_argument("-d", "--daemon", action="store_true", help="run in the background (env DAEMON)")
    parser.add_argument("--inherit-fd", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("-V", "--version", action="version", version=f"pg_doorman {__version__}")
    return parser


def default_config_path() -> str:
    """``pg_doorman.toml`` as the original, or ``pg_doorman.yaml`` when only that one exists."""
    if not os.path.exists(DEFAULT_CONFIG) and os.path.exists("pg_doorman.yaml"):
        return "pg_doorman.yaml"
    return DEFAULT_CONFIG


def _from_env(value: str | None, name: str, convert: object, default: str) -> str:
    if value is not None:
        return value
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return str(convert(raw))  # type: ignore[operator]
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"pg_doorman: environment {name}: {exc}") from None


# ---------------------------------------------------------------------------------------------- generate


def build_generate_parser() -> argparse.ArgumentParser:
    env = os.environ
    parser = _Parser(
        prog="pg_doorman generate",
        description="Write a configuration with one pool per database of a PostgreSQL server and every role with "
        "its stored password verifier (reads pg_shadow: connect as a superuser). --reference prints an annotated "
        "example instead, without connecting.",
    )
    parser.add_argument("--host", default=env.get("PGHOST", "localhost"), help="PostgreSQL host or socket dir")
    parser.add_argument("-p", "--port", type=int, default=None, help="PostgreSQL port (env PGPORT, 5432)")
    parser.add_argument("-u", "--user", default=env.get("PGUSER", "postgres"), help="login role (env PGUSER)")
    parser.add_argument("--password", default=env.get("PGPASSWORD"), help="its password (env PGPASSWORD)")
    parser.add_argument("-d", "--database", default=env.get("PGDATABASE", "postgres"), help="database to log in to")
    parser.add_argument("--ssl", action="store_true", help="connect with TLS; pools get server_tls_mode: require")
    parser.add_argument("--pool-size", type=int, default=40, help="pool_size of every user (40)")
    parser.add_argument(
        "-s", "--session-pool-mode", action="store_true", help="pool_mode session instead of transaction"
    )
    parser.add_argument("-o", "--output", help="write to this file (its extension chooses the format)")
    parser.add_argument("-f", "--format", type=str.lower, choices=["yaml", "toml"], default=None)
    parser.add_argument("--server-host", help="server_host written in the pools (default: --host)")
    parser.add_argument("--no-comments", action="store_true", help="no comments in the output")
    parser.add_argument("--reference", action="store_true", help="the annotated example with every setting")
    parser.add_argument("--ru", "--russian-comments", action="store_true", dest="russian", help=argparse.SUPPRESS)
    return parser


def _write_output(text: str, output: str | None) -> None:
    if output:
        Path(output).write_text(text, encoding="utf-8")
        print(f"pg_doorman: wrote {output}", file=sys.stderr)
    else:
        sys.stdout.write(text)


def generate(argv: list[str]) -> int:
    from pg_doorman.config import generate_example_config
    from pg_doorman.config.generate import GenerateError, Options, Source, build_config, introspect, render

    args = build_generate_parser().parse_args(argv)
    fmt = args.format or ("toml" if args.output and args.output.endswith(".toml") else "yaml")
    if args.russian:
        print("pg_doorman generate: comments are in English only; --ru ignored", file=sys.stderr)
    if args.reference:
        _write_output(generate_example_config(fmt), args.output)
        return 0
    if args.pool_size < 1:
        raise UsageError("pg_doorman generate: --pool-size must be at least 1")
    port = args.port if args.port is not None else int(os.environ.get("PGPORT") or 5432)
    source = Source(
        host=args.host, port=port, user=args.user, password=args.password, database=args.database, ssl=args.ssl
    )
    try:
        roles, databases = introspect(source)
    except GenerateError as exc:
        print(f"pg_doorman generate: {exc}", file=sys.stderr)
        return 1
    options = Options(
        pool_size=args.pool_size, session_mode=args.session_pool_mode, server_host=args.server_host, ssl=args.ssl
    )
    config = build_config(roles, databases, source, options)
    _write_output(render(config, fmt, comments=not args.no_comments), args.output)
    return 0


def generate_docs(argv: list[str]) -> int:
    from pg_doorman.config.docs import reference_markdown

    parser = _Parser(prog="pg_doorman generate-docs", description="Markdown reference of every configuration key.")
    parser.add_argument("-o", "--output-dir", help="write configuration.md into this directory (default: stdout)")
    args = parser.parse_args(argv)
    text = reference_markdown()
    if args.output_dir:
        directory = Path(args.output_dir)
        directory.mkdir(parents=True, exist_ok=True)
        _write_output(text, str(directory / "configuration.md"))
    else:
        sys.stdout.write(text)
    return 0


# ------------------------------------------------------------------------------------------------- serve


def test_config(path: str) -> int:
    from pg_doorman.config import check_config

    report = check_config(path)
    for line in report.stderr:
        print(line, file=sys.stderr)
    for line in report.stdout:
        print(line)
    return 0 if report.ok else EX_CONFIG


def serve(args: argparse.Namespace, path: str) -> int:
    from pg_doorman.config import PARSE_ERROR, ConfigError, load_config, startup_messages
    from pg_doorman.logs import setup_logging
    from pg_doorman.service import DEFAULT_PID_FILE, PidFile, daemonize

    try:
        config = load_config(path)
    except ConfigError as exc:
        for line in exc.problems:
            print(f"{PARSE_ERROR}: {line}", file=sys.stderr)
        return EX_CONFIG
    level = _from_env(args.log_level, "LOG_LEVEL", _level, "info")
    fmt = _from_env(args.log_format, "LOG_FORMAT", _format, "text")
    daemon = args.daemon or _env_flag("DAEMON")
    general = config.general
    try:
        setup_logging(level, fmt, no_color=args.no_color, syslog_ident=general.syslog_prog_name)
    except OSError as exc:
        print(f"pg_doorman: fatal: cannot open syslog socket (/dev/log): {exc}", file=sys.stderr)
        print("hint: remove general.syslog_prog_name or make /dev/log available", file=sys.stderr)
        return 1
    if daemon and os.environ.get("NOTIFY_SOCKET"):
        log.warning("--daemon is incompatible with systemd Type=notify: remove -d from ExecStart")
    if args.inherit_fd is not None:
        log.warning("--inherit-fd %d ignored: binary upgrade is not available in this version", args.inherit_fd)
    ready_fd = daemonize() if daemon else None
    if daemon:  # the syslog socket or a log file stays; re-open the handler in the new process all the same
        setup_logging(level, fmt, no_color=args.no_color, syslog_ident=general.syslog_prog_name)
    pid_path = general.daemon_pid_file or (DEFAULT_PID_FILE if daemon else None)
    pid_file = PidFile(pid_path) if pid_path else None
    if pid_file is not None:
        try:
            pid_file.write()
        except OSError as exc:
            log.error("cannot write the pid file: %s", exc)
            return EX_OSERR
    log.info("Welcome to pg_doorman! (version %s)", __version__)
    for line in startup_messages(config):
        log.warning("%s", line)
    from pg_doorman.app import Application

    app = Application(config)
    app.ready_fd = ready_fd
    try:
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
            return int(asyncio.run(app.run()))
        return int(uvloop.run(app.run()))
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        if pid_file is not None:
            pid_file.remove()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "generate":
            return generate(argv[1:])
        if argv and argv[0] == "generate-docs":
            return generate_docs(argv[1:])
        args = build_parser().parse_args(argv)
        path = args.config or os.environ.get("CONFIG_FILE") or default_config_path()
        if args.test_config:
            return test_config(path)
        return serve(args, path)
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return EX_USAGE
