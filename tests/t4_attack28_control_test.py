"""Attack review a28: control-plane requests the parser or the handlers did not expect,
through a real mount's socket (as its owner: root and the owner are the only ones served).

- A request nested deeper than Python's recursion limit (`[` repeated: 30 KB, within the
  64 KiB request bound) raised RecursionError out of `json.loads`, which is neither a
  ValueError nor anything the server loop caught: it left the control server's nursery,
  and with it the mount's (the FUSE mount went down, ENOTCONN for every user).
- Paths no file has (a lone surrogate, valid JSON "\\ud800"; a NUL) are looked up
  as keys like any other (journal/keys.py): no entry, nothing retried (held before).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from controlcalls import wrong_replies
from mounting import mounted

pytestmark = pytest.mark.mount


#: (request line, a piece of the error it must get; None: it must succeed)
ODD_LINES: list[tuple[bytes, str | None]] = [
    (b"[" * 30000, "nested too deeply"),
    (b'{"cmd": "status", "args": {"x": ' + b"[" * 30000 + b"]}}", "nested too deeply"),
    (b'{"cmd": "journal.show", "args": {"path": "\\ud800"}}', "no journal entry"),
    (b'{"cmd": "journal.retry", "args": {"path": "\\udfff/x"}}', None),
    (b'{"cmd": "journal.show", "args": {"path": "a\\u0000b"}}', "no journal entry"),
    (b'{"cmd": "journal.retry", "args": {"path": "a\\u0000b"}}', None),
]


def test_odd_control_requests_get_an_error_and_the_mount_stays(tmp_path: Path) -> None:
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    (src / "f").write_bytes(b"clean\n")
    with mounted(src, mnt, "--state-dir", str(tmp_path / "state")) as server:
        wrong = wrong_replies(mnt, ODD_LINES)
        assert wrong == [], f"{wrong}\n{server.log()[-3000:]}"
