"""The recovery walk: after an unclean stop that lost the state disk's page cache,
journal every file changed since the durable watermark, before the mount serves.

A create's intent is tier 1w (committed, fsynced only by the background sync;
journal.watermark), so a power loss can take it away. The file it covered can
only exist after that power loss if its creation reached the disk, and then its
ctime did too: a file system writes a new inode with its ctime, and a later
ctime only grows. The creation happened after the intent was committed, and
every commit before the watermark's clock read is on disk, so such a file's
ctime is above the watermark W. Journaling every regular file with ctime > W
(tier 1: fsynced, one group commit per batch) thus gives each of them an entry.

The entry wins over a verdict: each walked file's verdicts are deleted first. Its
ctime above W means the source's sync had not returned since its last change
(journal.sourcesync), so the source's disk may hold its new times with its old bytes
(an overwrite in place on ext4: times with the next journal commit, data at
writeback), while the clean verdict for those new times, made durable by any journal
fsync, judged the new bytes. Served on that verdict, the old bytes would pass with no
scan; without it, the open scans.

Walk rules: no symlink is followed; directories on other file systems under the
source are walked too (the mount serves them); unreadable directories are
logged and skipped (a file vfile cannot list is one it cannot serve either).

Invariants:
- `journal_changed_since` returns only after every entry it made is fsynced.
- A walked file (ctime above `since_ns`) has no verdict left once it returns, whatever
  its profile: its open scans.
- Only profiles that scan after writes (the `close` trigger) get entries, as
  `decide` would journal a write intent for exactly those.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass

import trio

from vfile.config.model import Config, Trigger
from vfile.journal.records import Identity, JournalError
from vfile.journal.records import Reason as JournalReason
from vfile.journal.store import Journal
from vfile.passthrough import links

log = logging.getLogger(__name__)

#: files journaled per group commit
BATCH = 512


@dataclass
class WalkStats:
    files: int = 0
    journaled: int = 0
    verdicts_dropped: int = 0
    seconds: float = 0.0


def changed_since(root_fd: int, since_ns: int | None) -> Iterator[tuple[str, os.stat_result]]:
    """(source-relative path, lstat) of every regular file with ctime above `since_ns`
    (every one if None); ("", lstat) for the other regular files, so the caller
    counts what it walked. Blocking: run it in a thread."""
    def unreadable(rel: bytes, err: OSError) -> None:
        log.warning("recovery walk: cannot open %r: %s", os.fsdecode(rel), err)

    for path, st in links.walk(root_fd, on_error=unreadable):
        if stat.S_ISREG(st.st_mode):
            changed = since_ns is None or st.st_ctime_ns > since_ns
            yield (os.fsdecode(path) if changed else ""), st


async def journal_changed_since(journal: Journal, config: Config, root_fd: int,
                                since_ns: int | None) -> WalkStats:
    """Journal (tier 1) every regular file of the source whose ctime is above
    `since_ns`; the walk runs in a thread, the journal writes share group commits."""
    started = time.monotonic()
    profiles = links.ProfileChooser(config)
    out = WalkStats()

    def next_batch(it: Iterator[tuple[str, os.stat_result]]) -> list[tuple[str, os.stat_result]]:
        batch: list[tuple[str, os.stat_result]] = []
        for rel, st in it:
            out.files += 1
            if rel:
                batch.append((rel, st))
                if len(batch) >= BATCH:
                    break
        return batch

    failed: list[JournalError] = []

    async def defer(rel: str, st: os.stat_result) -> None:
        profile = profiles.profile_for(rel, st.st_nlink)
        if Trigger.CLOSE not in profile.triggers:
            return
        try:
            await journal.defer(rel, Identity.from_stat(st), JournalReason.MODIFIED,
                                profile.name)
        except JournalError as err:
            # One error for the caller's one clear line (exit 7), not a group of a
            # batch's worth of them (a full state disk was a traceback and exit 10, s26).
            failed.append(err)
            return
        out.journaled += 1

    it = changed_since(root_fd, since_ns)
    while batch := await trio.to_thread.run_sync(next_batch, it):
        # Before the entries: a file whose ctime is above W may show its new identity
        # with old bytes (journal.sourcesync), so a verdict stored for that identity
        # before the loss says nothing of what it holds now; the entry wins.
        out.verdicts_dropped += await journal.drop_verdicts_of(
            [(st.st_dev, st.st_ino) for _, st in batch])
        async with trio.open_nursery() as nursery:
            for rel, st in batch:
                nursery.start_soon(defer, rel, st)
        if failed:
            raise failed[0]
    out.seconds = time.monotonic() - started
    return out
