"""A control request sent as raw bytes, for the attack reviews of the control plane
(tests/t4_attack28_control_test.py, t4_attack29_control_test.py): `vfile.control.call`
encodes JSON itself, so a malformed or oversized line needs its own socket."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from vfile import control

#: (request line, a piece of the error it must get; None: it must succeed)
Lines = list[tuple[bytes, str | None]]


def raw_call(mnt: Path, line: bytes) -> dict[str, object]:
    """One request line as given, its reply decoded (call_socket encodes JSON itself)."""
    path = control.candidate_sockets(mnt)[0]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(path))
        sock.sendall(line + b"\n")
        data = bytearray()
        while chunk := sock.recv(65536):
            data += chunk
    if not data:
        return {"ok": False, "error": "no reply (the server closed the connection)"}
    reply = json.loads(bytes(data).split(b"\n", 1)[0])
    assert isinstance(reply, dict), reply
    return reply


def wrong_replies(mnt: Path, lines: Lines) -> list[tuple[bytes, dict[str, object]]]:
    """Each line sent as is: the ones whose reply is not what the table says (a line's
    first 70 bytes, its reply). After each, the mount must still answer on its socket
    with no window left open (a refused quiesce opened none) and serve `f` ("clean")."""
    wrong = []
    for line, says in lines:
        reply = raw_call(mnt, line)
        if (says is None) != bool(reply.get("ok")) or (
                says is not None and says not in str(reply.get("error"))):
            wrong.append((line[:70], reply))
        assert control.call(str(mnt), "status", timeout=30)["window"]["active"] is False
        assert (mnt / "f").read_bytes() == b"clean\n"
    return wrong
