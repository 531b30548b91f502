"""Who serves a TCP appliance on this machine: the owner of the peer's socket, asked of
the kernel by sock_diag (netlink), else read from /proc/net/tcp and /proc/net/tcp6 (no
SO_PEERCRED for TCP).

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


#: netlink sock_diag (linux/inet_diag.h): one socket looked up by its four-tuple
_NETLINK_SOCK_DIAG, _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST = 4, 20, 1
_NOCOOKIE = 0xFFFFFFFF
_TCP_TIME_WAIT = 6
NOT_FOUND = -1


def _diag_uid(ours: Endpoint, peer: Endpoint) -> int | None:
    """The uid of the socket the kernel would deliver our packets to (the peer's own, or
    its listener while it is being set up), by one sock_diag lookup: microseconds,
    where reading /proc/net/tcp walks the whole connection hash (ms on any host).
    NOT_FOUND: no such socket here (a remote peer), or a TIME_WAIT row (its uid is not
    kept); None: no sock_diag (then /proc/net/tcp is read)."""
    v4 = peer[0].ipv4_mapped is not None and ours[0].ipv4_mapped is not None
    family = socket.AF_INET if v4 else socket.AF_INET6

    def raw(ip: ipaddress.IPv6Address) -> bytes:
        return (ip.ipv4_mapped.packed if v4 and ip.ipv4_mapped else ip.packed).ljust(16, b"\0")

    sockid = struct.pack("!HH16s16s", peer[1], ours[1], raw(peer[0]), raw(ours[0])) \
        + struct.pack("=III", 0, _NOCOOKIE, _NOCOOKIE)
    req = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF) + sockid
    msg = struct.pack("=IHHII", 16 + len(req), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, 1, 0) + req
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC,
                           _NETLINK_SOCK_DIAG) as nl:
            nl.settimeout(1.0)
            nl.send(msg)
            reply = nl.recv(8192)
    except OSError:
        return None
    if len(reply) < 16 + 72:
        return NOT_FOUND  # NLMSG_ERROR (ENOENT: no such socket)
    kind = struct.unpack_from("=H", reply, 4)[0]
    state = reply[17]
    if kind != _SOCK_DIAG_BY_FAMILY or state == _TCP_TIME_WAIT:
        return NOT_FOUND
    return int(struct.unpack_from("=I", reply, 16 + 64)[0])


def peer_uids(ours: Endpoint, peer: Endpoint) -> set[int] | None:
    """The uid(s) owning the other end of our connection `ours` -> `peer` if it is a
    socket of this machine (module invariants); None if it is not found."""
    uid = _diag_uid(ours, peer)
    if uid == NOT_FOUND:
        return None  # (a remote appliance must not pay for a /proc/net/tcp walk)
    if uid is not None:
        return {uid}
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
