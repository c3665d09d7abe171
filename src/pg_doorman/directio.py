"""A socket write that bypasses the event loop's write path when the kernel takes the bytes at once.

This file is the pure-Python implementation. The compiled build never imports it for the hot path: the
`.pxd` next to it holds a C version (a `send()` call, no Python objects), which the compiled `connection`
module cimports under the same name.
"""

from __future__ import annotations

import os


def send_nowait(fd: int, data: bytes) -> int:
    """Write what the socket ``fd`` takes now: the byte count (0 when it would block), or -1 on an error (the
    caller leaves reporting it to the transport, which will meet the same error)."""
    try:
        return os.write(fd, data)
    except BlockingIOError:
        return 0
    except InterruptedError:
        return 0
    except OSError:
        return -1
