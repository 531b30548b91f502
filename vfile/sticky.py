"""Infected stays infected: the gate's side of `journal.taint`.

A file found infected is remembered by inode (dev, ino) with the SHA-256 of
its content. Until a scan of its current content says clean, a reading open
is denied (policy input `tainted`): at once if the content is unchanged (the
digest matches), after a scan otherwise, and without one (window, outage) it
is denied too. The digest is hashlib's SHA-256: deciding "unchanged" with a
fast non-cryptographic hash would let an attacker craft other content with
the same hash.

Reading a file to hash it is I/O: it runs in a worker thread on its own
descriptor, under the caller's deadline (the thread is abandoned, not waited
for, if the deadline passes; it closes its descriptor itself).
"""

from __future__ import annotations

import hashlib
import logging
import os

import trio

log = logging.getLogger(__name__)

CHUNK = 1 << 20
#: hashing runs at most this many at once (files found infected are few)
_LIMITER = trio.CapacityLimiter(2)


def digest_fd(fd: int, size: int) -> str:
    """SHA-256 (hex) of the first `size` bytes at `fd` (read with pread: no offset
    change), or "" if the file is not that long any more."""
    h = hashlib.sha256()
    off = 0
    while off < size:
        block = os.pread(fd, min(CHUNK, size - off), off)
        if not block:
            return ""
        h.update(block)
        off += len(block)
    return h.hexdigest()


def _digest_of(fd: int, size: int) -> str:
    # Our own descriptor, opened in the thread: if the caller gave up (deadline) and
    # closed `fd`, this fails or hashes something the caller no longer looks at.
    own = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        return digest_fd(own, size)
    finally:
        os.close(own)


async def digest_within(fd: int, size: int, deadline: float) -> str | None:
    """The digest of `fd`'s content, or None if it could not be had within
    `deadline` seconds or read. `fd` stays the caller's."""
    with trio.move_on_after(deadline):
        try:
            return await trio.to_thread.run_sync(_digest_of, fd, size,
                                                 abandon_on_cancel=True, limiter=_LIMITER)
        except OSError as err:
            log.info("cannot hash a tainted file: %s", err)
            return None
    return None
