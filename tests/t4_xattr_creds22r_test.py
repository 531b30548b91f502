"""Review r22 of sw22 (getxattr through an open handle's descriptor).

The server reads the attribute with its own credentials either way (fgetxattr on a
handle, getxattr by /proc/self/fd/N before): what a caller may read is the kernel's
check (`default_permissions`), made with the caller's credentials before the request
reaches the server. So a handle another user opened, even write-only, must not let a
caller read a user.* attribute its own permissions do not allow, nor hide one they do.
"""

from __future__ import annotations

import os

import pytest
from lifecycle import READER_UID, WRITER_UID, Tree, as_user
from mounting import mounted

pytestmark = pytest.mark.mount


def test_getxattr_is_checked_with_the_callers_credentials_not_the_handle_openers(
        tree: Tree) -> None:
    secret, shared = tree.source / "secret", tree.source / "shared"
    secret.write_bytes(b"")
    shared.write_bytes(b"")
    os.chown(secret, WRITER_UID, WRITER_UID)
    os.chmod(secret, 0o200)  # write-only even for its owner
    os.chmod(shared, 0o644)
    os.setxattr(secret, "user.k", b"hidden")
    os.setxattr(shared, "user.k", b"public")
    with mounted(tree.source, tree.mountpoint, "--no-scan", "-o", "allow_other"):
        # Root holds a write-only handle of each (its descriptor serves getxattr now).
        held = [os.open(tree.mountpoint / "secret", os.O_WRONLY),
                os.open(tree.mountpoint / "shared", os.O_WRONLY)]
        try:
            for uid in (READER_UID, WRITER_UID):
                res = as_user(uid, "getfattr", "-n", "user.k", str(tree.mountpoint / "secret"))
                assert res.returncode != 0 and "Permission denied" in res.stderr, res
                assert "hidden" not in res.stdout, res
            res = as_user(READER_UID, "getfattr", "-n", "user.k", str(tree.mountpoint / "shared"))
            assert res.returncode == 0 and "public" in res.stdout, res
        finally:
            for fd in held:
                os.close(fd)
