"""A control request sent as raw bytes, for the attack reviews of the control plane
(tests/t4_attack28_control_test.py, t4_attack29_control_test.py): `vfile.control.call`
encodes JSON itself, so a malformed or oversized line needs its own socket."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from vfile import control


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
