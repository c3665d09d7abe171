"""Living under a service manager: systemd readiness notifications, the pid file, and ``-d`` daemon mode.

No dependency: sd_notify is one datagram to the ``NOTIFY_SOCKET`` unix socket (a path, or ``@name`` for the
abstract namespace), as systemd documents in sd_notify(3). The pid file is locked (flock) while the process
lives, so a second pg_doorman started with the same file fails instead of overwriting it, and removed at exit.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import sys

log = logging.getLogger("pg_doorman")

DEFAULT_PID_FILE = "/tmp/pg_doorman.pid"  # the original's default for -d


def sd_notify(state: str, environ: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    """Send ``state`` (``READY=1``, ``RELOADING=1``, ``STOPPING=1``, ``STATUS=…``) to systemd, if it listens.

    Returns whether a datagram was sent; never raises (a service manager that went away must not stop us).
    """
    address = environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), address)
    except OSError as exc:
        log.warning("cannot notify the service manager (NOTIFY_SOCKET=%s): %s", environ.get("NOTIFY_SOCKET"), exc)
        return False
    return True


class PidFile:
    """``daemon_pid_file``: created, locked and filled with our pid; removed by `remove` (only if still ours)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    def write(self, pid: int | None = None) -> None:
        """Raise OSError naming the file when it cannot be written or another live process holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OSError(f"pid file {self.path} is locked by another running pg_doorman") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid() if pid is None else pid}\n".encode())
        os.fsync(fd)
        self._fd = fd

    def remove(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError), open(self.path, encoding="ascii") as f:
            if f.read().strip() == str(os.getpid()):
                os.unlink(self.path)
        os.close(self._fd)
        self._fd = None


def daemonize() -> int:
    """Detach (double fork, new session, stdin from /dev/null); return the write end of a readiness pipe.

    The launching process stays until the daemon writes one byte to that pipe (`report_ready`: listeners are up)
    or closes it (startup failed), then exits 0 or 1, so ``pg_doorman -d`` tells its caller whether it worked.
    stdout/stderr are kept when they are files or pipes (``pg_doorman -d cfg >>log 2>&1`` logs there), and
    pointed at /dev/null when they are a terminal that will go away.
    """
    read_end, write_end = os.pipe()
    if os.fork() > 0:  # the launcher
        os.close(write_end)
        with os.fdopen(read_end, "rb") as ready:
            answer = ready.read(1)
        if answer == b"\x01":
            print("Success, daemonized")
            os._exit(0)
        print("pg_doorman: the daemon did not start; see its log (or run without -d)", file=sys.stderr)
        os._exit(1)
    os.close(read_end)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    # The working directory is kept (the original does too): relative paths in the config stay valid.
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    for fd in (1, 2):
        if os.isatty(fd):
            os.dup2(devnull, fd)
    os.close(devnull)
    return write_end


def report_ready(fd: int | None) -> None:
    """Tell the ``-d`` launcher that the daemon serves (see `daemonize`)."""
    if fd is None:
        return
    with contextlib.suppress(OSError):
        os.write(fd, b"\x01")
        os.close(fd)
