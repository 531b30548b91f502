"""systemd's service notification protocol (sd_notify), in a few lines.

A `Type=notify` unit gives its main process ``$NOTIFY_SOCKET``: a unix
datagram socket, a filesystem path or (with a leading ``@``) an abstract
address. Each state is one datagram of ``KEY=VALUE`` lines. Without the
variable every function here does nothing, so the mount server calls them
unconditionally.

Why not the `sdnotify` package: it is this same datagram, unmaintained since
2017, and swallows every error; ten lines are easier to own and test.

Invariant: a notification never fails the caller. systemd gone away (or a
bad ``$NOTIFY_SOCKET``) costs one log line, never the mount.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from typing import TypeVar

import trio

log = logging.getLogger(__name__)

T = TypeVar("T")

#: seconds between EXTEND_TIMEOUT_USEC messages while a long start step runs; each
#: asks for three times as much, so a late one does not let the start time out
EXTEND_EVERY = 20.0


def notify(state: str, env: dict[str, str] | None = None) -> bool:
    """Send `state` (e.g. ``"READY=1"``) to the service manager; True if sent."""
    addr = (os.environ if env is None else env).get("NOTIFY_SOCKET", "")
    if not addr:
        return False
    if addr[0] == "@":
        addr = "\0" + addr[1:]  # the abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), addr)
    except OSError as err:
        log.warning("sd_notify %r to %r failed: %s", state.split("\n", 1)[0], addr, err)
        return False
    return True


def watchdog_interval(env: dict[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of ``$WATCHDOG_USEC``), or None.

    ``$WATCHDOG_PID``, when set, names the process the watchdog is meant for."""
    vars_ = os.environ if env is None else env
    usec, pid = vars_.get("WATCHDOG_USEC", ""), vars_.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


async def watchdog(interval: float) -> None:
    """Ping the watchdog from the trio loop until cancelled: a loop that stops
    running (a hung mount server) stops the pings and systemd restarts us."""
    while True:
        notify("WATCHDOG=1")
        await trio.sleep(interval)


async def run_extending(fn: Callable[[], T], status: str) -> T:
    """Run the blocking start step `fn` in a thread; while it runs, ask systemd for more
    start time (EXTEND_TIMEOUT_USEC) and say what we do (STATUS). The journal's check
    after an unclean stop may take up to its 900 s deadline (vfile.journal.torn), far
    more than a unit's default start timeout of 90 s: systemd would kill the check,
    and restart it, forever."""
    async with trio.open_nursery() as nursery:
        async def extend() -> None:
            while True:
                notify(f"EXTEND_TIMEOUT_USEC={int(3 * EXTEND_EVERY * 1e6)}\nSTATUS={status}")
                await trio.sleep(EXTEND_EVERY)

        nursery.start_soon(extend)
        error: Exception | None = None
        try:
            result = await trio.to_thread.run_sync(fn)
        except Exception as err:  # raised below as it is, not in the nursery's group
            error = err
        nursery.cancel_scope.cancel()
    if error is not None:
        raise error
    return result
