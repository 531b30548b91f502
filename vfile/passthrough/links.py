"""Files with several names (hard links): which profile judges them, and which of
their names is alive.

A FUSE open names an inode, not the path the caller used, and a hard link can
be made in the source behind vfile's back: vfile cannot know every name of a
file. So a file with ``st_nlink > 1`` is judged by the strictest of *all*
profiles (`strictest`), not by whichever name vfile happened to see first: an
exclusion (``triggers = []``) never applies to a file that has another name,
because that name could be under a scanned (or closed) profile. A file with one
name is judged by its path, as before.

The journal keys deferred scans by path, so a multiply-linked file's entry must
always name a live name of it: `live_name` checks that a name still reaches the
inode (a decoy file put at a dead name does not), and `find_name` walks the
source for another name when vfile knows none (links made behind its back).

Pure except `live_name`/`find_name`/`walk`, which only stat (never open or follow a
symlink: ``follow_symlinks=False``, relative to O_PATH directory descriptors).
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Iterable, Iterator

from vfile.config.model import Config, FailMode, OversizeRule, Profile, Trigger

log = logging.getLogger(__name__)

Key = tuple[int, int]

_FAIL_RANK = {FailMode.OPEN: 0, FailMode.SAFE: 1, FailMode.CLOSED: 2}
_OVERSIZE_RANK = {OversizeRule.SCAN_FIRST: 0, OversizeRule.JOURNAL: 1, OversizeRule.DENY: 2}
#: a walk for another name of a file stops after this many directory entries
WALK_LIMIT = 1_000_000


def strictness(p: Profile) -> tuple[int, int, int, int, int]:
    """Orders profiles, strictest last: scanning on open first (an exclusion is the
    weakest rule there is), then the fail mode, scanning after writes, the oversize
    rule, and a smaller size limit."""
    limit = p.max_size if p.max_size > 0 else 1 << 62
    return (Trigger.OPEN in p.triggers, _FAIL_RANK[p.fail_mode], Trigger.CLOSE in p.triggers,
            _OVERSIZE_RANK[p.oversize], -limit)


def strictest(profiles: Iterable[Profile]) -> Profile:
    """The strictest profile (the first of equals, in match order)."""
    best: Profile | None = None
    for p in profiles:
        if best is None or strictness(p) > strictness(best):
            best = p
    if best is None:
        raise ValueError("no profiles")
    return best


class ProfileChooser:
    """`Config.profile_for`, aware of hard links (see the module docstring)."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self.strictest = strictest(config.all_profiles())

    def profile_for(self, path: str, nlink: int = 1) -> Profile:
        """The profile judging a file at `path` that has `nlink` names."""
        return self._config.profile_for(path) if nlink <= 1 else self.strictest


def reaches(dir_fd: int, name: bytes, key: Key) -> bool:
    """True if `name` in the directory `dir_fd` is (still) the inode `key`."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == key and stat.S_ISREG(st.st_mode)


def walk(root_fd: int, *, descend: Callable[[os.stat_result], bool] = lambda st: True,
         on_error: Callable[[bytes, OSError], None] | None = None
         ) -> Iterator[tuple[bytes, os.stat_result]]:
    """(source-relative path, lstat) of every entry below the source root, no symlink
    followed; directories are entered when `descend(their lstat)` says so. A directory
    that cannot be opened is skipped (`on_error` hears of it). Blocking: O(tree)."""
    stack: list[bytes] = [b""]
    while stack:
        rel = stack.pop()
        try:
            fd = os.open(rel or b".", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                         | os.O_CLOEXEC, dir_fd=root_fd)
        except OSError as err:
            if on_error is not None:
                on_error(rel, err)
            continue
        try:
            with os.scandir(fd) as it:
                for entry in it:
                    name = os.fsencode(entry.name)
                    path = rel + b"/" + name if rel else name
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue  # gone meanwhile
                    if stat.S_ISDIR(st.st_mode) and descend(st):
                        stack.append(path)
                    yield path, st
        finally:
            os.close(fd)


def find_name(root_fd: int, key: Key, *, exclude: bytes = b"") -> bytes | None:
    """A source-relative name of the regular file `key` other than `exclude`, found by
    walking the source (no symlink followed, other filesystems skipped); None if
    there is none. O(tree): only for a multiply-linked file whose other names vfile
    never saw (a link made behind its back)."""
    for seen, (path, st) in enumerate(walk(root_fd, descend=lambda st: st.st_dev == key[0])):
        if seen >= WALK_LIMIT:
            log.warning("links: gave up looking for a name of inode %s", key)
            return None
        if (st.st_dev, st.st_ino) == key and path != exclude and not stat.S_ISDIR(st.st_mode):
            return path
    return None
