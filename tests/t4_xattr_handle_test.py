"""Extended attributes of a file open through the mount are read through one of
its open handles (sw22: fgetxattr on the handle's descriptor, where the inode's
O_PATH descriptor needs a /proc/self/fd/N walk). What the caller gets must be
what the source holds, whichever handles come and go, and a write(2) (whose
security.capability GETXATTR takes this path) must still land."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from mounting import mounted

pytestmark = pytest.mark.mount


def test_xattrs_of_an_open_file_follow_the_source_as_handles_come_and_go(
        tmp_path: Path) -> None:
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    (src / "f").write_bytes(b"")
    (src / "g").write_bytes(b"")
    os.setxattr(src / "f", "user.k", b"one")
    os.setxattr(src / "g", "user.k", b"other file")
    with mounted(src, mnt, "--no-scan"):
        first = os.open(mnt / "f", os.O_WRONLY)
        second = os.open(mnt / "f", os.O_RDONLY)
        other = os.open(mnt / "g", os.O_RDONLY)
        try:
            assert os.getxattr(mnt / "f", "user.k") == b"one"
            assert os.getxattr(first, "user.k") == b"one"
            os.setxattr(src / "f", "user.k", b"two")  # behind the mount's back
            assert os.getxattr(mnt / "f", "user.k") == b"two"
            os.setxattr(first, "user.k", b"three")  # through the mount
            assert os.getxattr(src / "f", "user.k") == b"three"
            assert os.write(first, b"data") == 4  # security.capability asked by handle
            with pytest.raises(OSError) as err:
                os.getxattr(mnt / "f", "user.missing")
            assert err.value.errno == errno.ENODATA
            os.close(first)
            first = -1
            assert os.getxattr(second, "user.k") == b"three"  # the other handle's turn
            assert os.getxattr(mnt / "g", "user.k") == b"other file"
            os.close(second)
            second = -1
            assert os.getxattr(mnt / "f", "user.k") == b"three"  # no handle left
        finally:
            for fd in (first, second, other):
                if fd >= 0:
                    os.close(fd)
        assert (mnt / "f").read_bytes() == b"data"
    assert (src / "f").read_bytes() == b"data"
