"""Putting a quarantined file back where it was: into the source, at its place.

Quarantine records keep the path relative to the source (what the mount saw),
so a restore needs the source directory: the live mount's (`--mount`) or one
given (`--source`); never the caller's current directory.

Invariants:
- The target is reached from the source root one component at a time without
  following symlinks (`vfile.filter.actions.open_parent`): a symlink planted in the
  source cannot send the restore (run as root) elsewhere.
- An existing file is never replaced: the file arrives by `link()` (which
  fails if the name exists), from the quarantine directory or, across
  filesystems, from a private temporary copy next to the target.
- The quarantined copy is removed only once the file is in place.
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from pathlib import Path

from vfile.filter.actions import open_parent


class RestoreError(Exception):
    """The file cannot go back there; the message says why."""


def restore_into(source: str, rel: str, quarantined: Path) -> Path:
    """Move `quarantined` to `rel` below `source`; return the path it now has."""
    target = Path(source) / rel
    try:
        root = os.open(source, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        raise RestoreError(f"{source}: cannot open the source: {err.strerror}") from None
    try:
        try:
            dir_fd, name = open_parent(root, rel)
        except OSError as err:
            if err.errno in (errno.ELOOP, errno.ENOTDIR):
                raise RestoreError(f"{target}: a symlink or a non-directory on the way "
                                   "in the source; refusing (use --to)") from None
            raise RestoreError(f"{target}: {err.strerror} (use --to)") from None
    finally:
        os.close(root)
    try:
        _link_no_overwrite(quarantined, dir_fd, name, target)
    finally:
        os.close(dir_fd)
    quarantined.unlink()
    return target


def _link_no_overwrite(src: Path, dir_fd: int, name: str, target: Path) -> None:
    try:
        os.link(src, name, dst_dir_fd=dir_fd)
        return
    except FileExistsError:
        raise RestoreError(f"{target} exists; refusing to overwrite it (use --to)") from None
    except OSError as err:
        if err.errno != errno.EXDEV:
            raise RestoreError(f"cannot restore to {target}: {err.strerror}") from None
    # Another filesystem: a private copy next to the target, then link it into place.
    tmp = f".vfile-restore-{uuid.uuid4().hex}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600, dir_fd=dir_fd)
    try:
        with open(src, "rb") as fin, os.fdopen(fd, "wb", closefd=False) as fout:
            shutil.copyfileobj(fin, fout)
        os.fsync(fd)
        try:
            os.link(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except FileExistsError:
            raise RestoreError(f"{target} exists; refusing to overwrite it "
                               "(use --to)") from None
    finally:
        os.close(fd)
        os.unlink(tmp, dir_fd=dir_fd)
