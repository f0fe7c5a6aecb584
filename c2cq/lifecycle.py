"""Process lifecycle: ready handshake, signal → flag → drain, children die with the parent."""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import sys

READY_FD_ENV = "C2CQ_READY_FD"
PARENT_PID_ENV = "C2CQ_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask the kernel to SIGTERM us when the supervisor dies; exit now if it already has."""
    parent = os.environ.get(PARENT_PID_ENV)
    if parent is None:
        return
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != int(parent):  # the parent died before prctl took effect
        os._exit(1)


def signal_ready() -> None:
    """Tell the supervisor this service is serving (once its sockets are bound)."""
    fd = os.environ.pop(READY_FD_ENV, None)
    if fd is None:
        return
    try:
        os.write(int(fd), b"ready\n")
    finally:
        os.close(int(fd))


def shutdown_flag() -> asyncio.Event:
    """An event set by SIGINT/SIGTERM; the service's loop drains and exits when it is set."""
    flag = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, flag.set)
    return flag


def run(coro_factory) -> None:
    """Run a service's async main on uvloop; a configuration or CURVE error ends it with one clear
    line on stderr (exit status 2), not a traceback."""
    import uvloop

    from c2cq.errors import AuthError, ConfigError

    die_with_parent()
    try:
        uvloop.run(coro_factory())
    except (AuthError, ConfigError) as e:
        print(f"c2cq: error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
