"""Attack review a29: control requests at the exact bounds and past them (b27's and
l28's ranges, a29's `journal.list`), negative zero, numbers JSON parses to infinity or
to more digits than Python converts, and text that is not UTF-8 or holds lone
surrogates; each gets its answer (or one error line) and the mount stays up. Through
a real mount's socket, as its owner."""

from __future__ import annotations

from pathlib import Path

import pytest
from controlcalls import wrong_replies
from mounting import mounted

pytestmark = pytest.mark.mount

BIG = b"9" * 5000  # more digits than int() converts by default (4,300)

#: (request line, a piece of the error it must get; None: it must succeed)
LINES: list[tuple[bytes, str | None]] = [
    (b'{"cmd": "journal.list", "args": {"limit": 1}}', None),
    (b'{"cmd": "journal.list", "args": {"limit": 10000}}', None),
    (b'{"cmd": "journal.list", "args": {"limit": 10000.5}}', "limit"),
    (b'{"cmd": "journal.list", "args": {"limit": -0.0}}', "limit"),
    (b'{"cmd": "journal.list", "args": {"limit": 1e400}}', "limit"),
    (b'{"cmd": "journal.list", "args": {"limit": ' + BIG + b"}}", "digits"),
    (b'{"cmd": "drain", "args": {"action": "rate", "files_per_s": 0.001}}', None),
    (b'{"cmd": "drain", "args": {"action": "rate", "files_per_s": 1e6, '
     b'"bytes_per_s": 1e12}}', None),
    (b'{"cmd": "drain", "args": {"action": "rate", "files_per_s": -0.0}}', "files_per_s"),
    (b'{"cmd": "drain", "args": {"action": "rate", "bytes_per_s": 1e12000}}', "bytes_per_s"),
    (b'{"cmd": "drain", "args": {"action": "\\ud800"}}', "action"),
    (b'{"cmd": "memory", "args": {"top": -0.0}}', None),
    (b'{"cmd": "memory", "args": {"top": 10001}}', "top"),
    (b'{"cmd": "memory", "args": {"group": "\\udcff"}}', "group"),
    (b'{"cmd": "quiesce", "args": {"max": -0.0}}', "max"),
    (b'{"cmd": "quiesce", "args": {"max": 1e400}}', "max"),
    (b'{"cmd": "quiesce", "args": {"max": 60, "reason": "\\udcff"}}', "reason"),
    (b'{"cmd": "quiesce", "args": {"max": 60, "reason": "' + b"r" * 201 + b'"}}', "reason"),
    (b'{"cmd": "\\ud800", "args": {}}', "unknown"),
    (b'{"cmd": "status", "args": {"x": "\xff\xfe"}}', "malformed"),
    (b'{"cmd": "journal.show", "args": {"path": "' + b"\\udcff" * 10000 + b'"}}',
     "no journal entry"),
]


def test_control_values_at_and_past_the_bounds(tmp_path: Path) -> None:
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    (src / "f").write_bytes(b"clean\n")
    with mounted(src, mnt, "--state-dir", str(tmp_path / "state")) as server:
        wrong = wrong_replies(mnt, LINES)
        assert wrong == [], f"{wrong}\n{server.log()[-3000:]}"
        assert "Traceback" not in server.log(), server.log()[-3000:]
