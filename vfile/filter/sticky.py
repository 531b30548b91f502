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
from collections.abc import Callable

import trio

from vfile.journal.records import Identity, VerdictOutcome, VerdictRecord
from vfile.journal.store import Journal
from vfile.journal.taint import TaintRecord

log = logging.getLogger(__name__)

#: how long hashing a file just found infected may take (in the background)
TAINT_HASH_DEADLINE = 60.0

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


async def digest(fd: int, size: int) -> str | None:
    """The digest of `fd`'s content, or None if it cannot be read. `fd` stays the
    caller's; the caller sets the deadline (the thread is abandoned on cancel)."""
    try:
        return await trio.to_thread.run_sync(_digest_of, fd, size,
                                             abandon_on_cancel=True, limiter=_LIMITER)
    except OSError as err:
        log.info("cannot hash a tainted file: %s", err)
        return None


async def unchanged_infected(taint: TaintRecord, fd: int, identity: Identity, *, sig: str,
                             now: float) -> VerdictRecord | None:
    """An infected verdict for a tainted file's current identity if its content is
    provably the infected content (same size and SHA-256), else None. The caller
    bounds it with a cancel scope."""
    if not taint.digest or taint.size != identity.size:
        return None
    if await digest(fd, identity.size) != taint.digest:
        return None
    return VerdictRecord(identity=identity, sig_version=sig, outcome=VerdictOutcome.INFECTED,
                         signature=taint.signature, appliance="(unchanged content)", time=now)


async def update_taint(journal: Journal, open_source: Callable[[str], int], path: str,
                       record: VerdictRecord, now: float) -> None:
    """A verdict was stored. Infected: remember the inode and its content digest (call
    before any action moves the file). Clean: a scan of the current content clears
    an old taint."""
    ident = record.identity
    if record.outcome != VerdictOutcome.INFECTED:
        if journal.get_taint(ident.dev, ident.ino) is not None:
            await journal.clear_taint(ident.dev, ident.ino)
            log.info("%r scanned clean: no longer known infected", path)
        return
    digest_hex = ""
    try:
        fd = open_source(path)
    except OSError:
        fd = -1  # gone already: tainted with an unknown digest (only a clean scan clears it)
    if fd >= 0:
        try:
            if Identity.from_stat(os.fstat(fd)) == ident:
                with trio.move_on_after(TAINT_HASH_DEADLINE):
                    digest_hex = await digest(fd, ident.size) or ""
        finally:
            os.close(fd)
    await journal.put_taint(TaintRecord(ident.dev, ident.ino, ident.size, digest_hex,
                                        record.signature, now))
