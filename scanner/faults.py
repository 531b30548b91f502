"""Fault modes for the built-in appliance and the fault-injection proxy.

A fault is parsed from text (`refuse`, `blackhole`, `delay=2s`, `reset`,
`garbage`, and for the proxy also `truncate`, `trickle`, `oversize`), or `none`. Parsing
is pure; the servers decide what each fault does to a connection:

- refuse:    the listening socket is closed, connections are refused
- blackhole: connections are accepted and read, never answered
- delay=D:   every reply is held back D seconds
- slowscan=D: every scan reply is held back D seconds, PING and VERSION are not:
             a healthy appliance busy with a large file or a deep archive
- reset:     connections are accepted and reset (RST) at once
- garbage:   every reply is replaced with bytes that are no valid reply
- truncate:  (proxy) replies are cut in half and the connection closed
- trickle:   (proxy) replies are forwarded one byte every 50 ms
- oversize:  (proxy) every reply is replaced with a reply-shaped line far longer
             than any real reply (`stream: AAAA…A OK`): a lax parser would read OK
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

FaultKind = Literal["refuse", "blackhole", "delay", "slowscan", "reset", "garbage", "truncate",
                    "trickle", "oversize"]
KINDS: tuple[FaultKind, ...] = ("refuse", "blackhole", "delay", "reset", "garbage", "truncate",
                                "trickle", "oversize")
SERVER_KINDS: tuple[FaultKind, ...] = ("refuse", "blackhole", "delay", "slowscan", "reset",
                                       "garbage")
#: faults that take a duration
TIMED: tuple[FaultKind, ...] = ("delay", "slowscan")

#: what a `garbage` fault sends instead of a reply: printable-looking but no
#: valid clamd or ICAP reply (it even contains "OK" to catch lax parsers)
GARBAGE = b"\x16\x03\x01garbage: OK?\xff\xfe stream OK\r\n\x00"
TRICKLE_INTERVAL = 0.05
#: what an `oversize` fault sends instead of a reply: 1 MiB, ending like a clean one
OVERSIZE = b"stream: " + b"A" * (1 << 20) + b" OK\0"

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m)?")


def parse_duration(text: str) -> float:
    """`1.5`, `1.5s`, `200ms`, `2m` → seconds; ValueError otherwise."""
    m = _DURATION.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"bad duration {text!r} (expected e.g. 2s, 200ms, 1.5)")
    value = float(m[1])
    return value / 1000 if m[2] == "ms" else value * 60 if m[2] == "m" else value


@dataclass(frozen=True, slots=True)
class Fault:
    kind: FaultKind
    delay: float = 0.0

    def __str__(self) -> str:
        return f"{self.kind}={self.delay:g}s" if self.kind in TIMED else self.kind


def parse_fault(text: str, *, allowed: tuple[FaultKind, ...] = KINDS) -> Fault | None:
    """Parse a fault mode; `none` or "" → None. ValueError names the valid modes."""
    text = text.strip().lower()
    if text in ("", "none", "off"):
        return None
    name, sep, arg = text.partition("=")
    if name not in allowed:
        names = ", ".join(f"{k}=DURATION" if k in TIMED else k for k in allowed)
        raise ValueError(f"unknown fault {text!r} (expected one of: none, {names})")
    if name in TIMED:
        if not sep:
            raise ValueError(f"fault {name} needs a duration, e.g. {name}=2s")
        timed: FaultKind = "slowscan" if name == "slowscan" else "delay"
        return Fault(timed, parse_duration(arg))
    if sep:
        raise ValueError(f"fault {name!r} takes no argument")
    kind: FaultKind = name
    return Fault(kind)
