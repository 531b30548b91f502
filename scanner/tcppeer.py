"""Who serves a TCP appliance on this machine: the owner of the peer's socket, read from
/proc/net/tcp and /proc/net/tcp6 (no SO_PEERCRED for TCP).

Whoever answers at an appliance's address receives the content of every file scanned
(INSTREAM, ICAP bodies: root-only files included) and is believed. A loopback port can
be bound by any user while the real appliance is down or restarting (x24,
tests/t4_appliance_tcp24_test.py). So a connection whose other end is a socket of this
machine (found in this network namespace's tables) must be served by root or by us;
one to a loopback address whose other end cannot be found is refused too. A remote
address is believed: its network must be trusted (README, Operations).

Invariants:
- the peer's own socket is matched by both ends of the connection (its local end is
  our remote one and the other way round); an accepted socket carries its listener's
  uid; a TIME_WAIT row of an earlier connection with the same ends shows uid 0 and is
  not it. Not found (the server's kernel side not done yet), the listeners on the
  peer's port stand for it, every one of them (a wildcard or its exact address).
- /proc's addresses are printed as native-endian 32-bit words: decoded with "=I".
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct

_TABLES = ("/proc/net/tcp", "/proc/net/tcp6")
_LISTEN = "0A"
#: a TIME_WAIT row shows uid 0 whoever owned it: an older connection's, never ours
_TIME_WAIT = "06"
_ANY = (ipaddress.IPv6Address("::"), ipaddress.IPv6Address("::ffff:0.0.0.0"))

Endpoint = tuple[ipaddress.IPv6Address, int]


def _address(text: str) -> Endpoint:
    raw, port = text.split(":")
    words = [int(raw[i:i + 8], 16) for i in range(0, len(raw), 8)]
    packed = b"".join(struct.pack("=I", w) for w in words)
    if len(packed) == 4:
        packed = b"\0" * 10 + b"\xff\xff" + packed  # as an IPv4-mapped IPv6 address
    return ipaddress.IPv6Address(packed), int(port, 16)


def _endpoint(sockaddr: tuple[object, ...]) -> Endpoint:
    ip = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
    if isinstance(ip, ipaddress.IPv4Address):
        ip = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + ip.packed)
    return ip, int(str(sockaddr[1]))


def _rows() -> list[tuple[Endpoint, Endpoint, str, int]]:
    """(local end, remote end, state, uid) of every TCP socket in this namespace."""
    out = []
    for table in _TABLES:
        try:
            with open(table) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) >= 8:
                out.append((_address(fields[1]), _address(fields[2]), fields[3],
                            int(fields[7])))
    return out


def peer_uids(ours: Endpoint, peer: Endpoint) -> set[int] | None:
    """The uid(s) owning the other end of our connection `ours` -> `peer` if it is a
    socket of this machine (module invariants); None if it is not found."""
    rows = _rows()
    exact = {uid for local, remote, state, uid in rows
             if local == peer and remote == ours and state != _TIME_WAIT}
    if exact:
        return exact
    listeners = {uid for local, _remote, state, uid in rows
                 if state == _LISTEN and local[1] == peer[1]
                 and (local[0] == peer[0] or local[0] in _ANY)}
    return listeners or None


def check_tcp_listener(sock: socket.socket) -> None:
    """OSError(EACCES), an appliance error, unless the other end of `sock` is served by
    root or by us, or is a remote address (module docstring)."""
    ours, peer = _endpoint(sock.getsockname()), _endpoint(sock.getpeername())
    uids = peer_uids(ours, peer)
    shown = f"{peer[0].ipv4_mapped or peer[0]}:{peer[1]}"
    if uids is None:
        if peer[0].is_loopback or (peer[0].ipv4_mapped and peer[0].ipv4_mapped.is_loopback):
            raise OSError(errno.EACCES, f"{shown}: cannot tell who serves this loopback "
                          "port (not in /proc/net/tcp): not believed")
        return  # a remote appliance: the network is trusted
    others = uids - {0, os.geteuid()}
    if others:
        raise OSError(errno.EACCES, f"{shown} is served by uid {min(others)}, neither root "
                      "nor us: not an appliance of ours")
