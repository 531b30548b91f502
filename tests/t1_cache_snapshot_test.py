"""The caching appliance scans exactly the bytes it hashed (scanner.cache_server._snapshot).

A client passing a descriptor (FILDES) could otherwise change the file between
the appliance's hash and the upstream's read, and have a clean verdict for
other bytes stored under the hash of its malware, for the whole fleet.
"""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest

from vfile.scanner.cache_server import _snapshot, _TooBig
from vfile.scanner.signatures import EICAR


def test_the_copy_is_what_was_hashed_whatever_happens_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(EICAR)
    with open(path, "r+b") as f:
        copy, digest, size = _snapshot(f.fileno(), 1 << 20)
        try:
            assert (digest, size) == (hashlib.sha256(EICAR).hexdigest(), len(EICAR))
            f.seek(0)
            f.write(b"clean bytes now, nothing to see" * 10)  # the client rewrites it
            f.flush()
            assert os.pread(copy, 1 << 20, 0) == EICAR  # upstream still sees what we hashed
            with pytest.raises(PermissionError) as err:  # sealed: nobody can change it
                os.pwrite(copy, b"x", 0)
            assert err.value.errno == errno.EPERM
        finally:
            os.close(copy)


def test_over_the_limit_is_refused_and_leaks_nothing(tmp_path: Path) -> None:
    path = tmp_path / "big"
    path.write_bytes(b"x" * 5000)
    before = len(os.listdir("/proc/self/fd"))
    with open(path, "rb") as f, pytest.raises(_TooBig):
        _snapshot(f.fileno(), 4096)
    assert len(os.listdir("/proc/self/fd")) == before
