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

import trio

log = logging.getLogger(__name__)


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
