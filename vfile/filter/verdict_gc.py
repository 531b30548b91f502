"""Collecting verdicts nobody can use any more, so the verdict table does not only grow.

A verdict answers for one (identity, signature version); every rewrite makes
a new identity and every signature update a new version, so old rows pile up.
Two kinds are garbage:

- verdicts at a signature version no appliance reports now (after an update
  every file is rescanned at the new version anyway);
- verdicts for an identity no file in the source has any more (rewritten,
  unlinked, renamed over: size, mtime and ctime are part of the identity).

Invariants:
- Incremental: verdicts are read in batches (short read transactions) and
  deleted in batches of at most `BATCH` keys, one small group-committed write
  transaction each, so the collector never holds the writer for long.
- A verdict stored after the collection began is kept: the walk of the source
  may not have seen its file.
- Collecting a verdict that was still useful costs one rescan, never a wrong
  answer: verdicts are a cache of scans, and the journal entries (what still
  needs a scan) are never touched here.
- The source walk runs in a worker thread, never follows symlinks, and reads
  no file content.
- It yields to the drain: while `busy()` (the drain is scanning), a pass does
  not start and a started one waits between batches, for at most
  `MAX_POSTPONE` in all. At 100,000 files the first pass (`FIRST_DELAY` after
  the mount) fell in the middle of an unlimited drain: a walk of the whole
  source and 100,000 verdicts decoded, on the GIL the drain needs.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import trio

from vfile.journal.records import VerdictRecord
from vfile.journal.store import Journal

log = logging.getLogger(__name__)

#: verdict keys read, and at most deleted, per transaction
BATCH = 1000
#: the mount collects this long after it starts, then every `INTERVAL`
FIRST_DELAY = 300.0
INTERVAL = 3600.0
#: how long a pass waits for the drain in all (then it runs anyway: a drain that never
#: ends must not keep the table growing) and how often it looks
MAX_POSTPONE = 600.0
QUIET_POLL = 1.0

IdentityKey = tuple[int, int, int, int, int]


def source_identities(root: str, root_key: tuple[int, int] | None = None
                      ) -> set[IdentityKey] | None:
    """(dev, ino, size, mtime_ns, ctime_ns) of every regular file below `root`; None when
    the walk cannot see every file the mount serves: `root` is not the directory whose
    (st_dev, st_ino) is `root_key` any more (moved away, mounted over: the mount serves
    the one it opened), or a directory could not be listed for a reason other than its
    removal or its permissions (EMFILE, EIO). A file it missed would have its verdicts
    taken for garbage (a28, tests/t5_attack28_gc_walk_test.py). Checked before the walk
    and after it: the walk goes by path, and a source replaced while it walked hid every
    directory not listed yet (a29, tests/t5_attack29_gc_walk_test.py)."""
    if not _is_root(root, root_key):
        return None
    found = _walk(root)
    return found if found is not None and _is_root(root, root_key) else None


def _is_root(root: str, root_key: tuple[int, int] | None) -> bool:
    """`root` is there, and the directory `root_key` (st_dev, st_ino) names if given."""
    try:
        st = os.stat(root)
    except OSError:
        return False
    return root_key is None or (st.st_dev, st.st_ino) == root_key


def _walk(root: str) -> set[IdentityKey] | None:
    """`source_identities`' walk: None when a directory could not be listed."""
    found: set[IdentityKey] = set()
    stack = [root]
    while stack:
        top = stack.pop()
        try:
            entries = list(os.scandir(top))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue  # removed, or not ours to read: as unreadable through the mount
        except OSError:
            return None
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            except OSError:
                return None
            if stat.S_ISDIR(st.st_mode):
                stack.append(entry.path)
            elif stat.S_ISREG(st.st_mode):
                found.add((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return found


@dataclass
class Collected:
    examined: int = 0
    collected: int = 0
    seconds: float = 0.0


def is_garbage(rec: VerdictRecord | None, *, live: set[IdentityKey] | None,
               signatures: set[str], started: float) -> bool:
    """Whether a stored verdict can go (pure)."""
    if rec is None:
        return True  # undecodable: nobody can use it
    if rec.time >= started:
        return False
    if signatures and rec.sig_version not in signatures:
        return True
    i = rec.identity
    return live is not None and (i.dev, i.ino, i.size, i.mtime_ns, i.ctime_ns) not in live


class _Yield:
    """Waits while `busy()`, for at most `budget` seconds over all its waits."""

    def __init__(self, busy: Callable[[], bool], budget: float) -> None:
        self._busy = busy
        self._until = trio.current_time() + budget
        self.waited = 0.0

    async def wait_quiet(self) -> None:
        while self._busy() and trio.current_time() < self._until:
            began = trio.current_time()
            await trio.sleep(min(QUIET_POLL, self._until - began))
            self.waited += trio.current_time() - began


async def collect(journal: Journal, *, source: str | None, signatures: Iterable[str],
                  clock: Callable[[], float] = time.time,
                  busy: Callable[[], bool] = lambda: False,
                  max_postpone: float = MAX_POSTPONE,
                  root_key: tuple[int, int] | None = None) -> Collected:
    """One incremental pass over the verdict table; see the module docstring.

    `source`: the source directory (None: keep verdicts whatever files exist), walked
    only while it is the directory `root_key` names (`source_identities`);
    `signatures`: the versions in use (empty: keep verdicts whatever their version);
    `busy`: the drain is at work: wait (at most `max_postpone` in all).
    """
    quiet = _Yield(busy, max_postpone)
    await quiet.wait_quiet()
    began, started = time.monotonic(), clock()
    sigs = {s for s in signatures if s}
    live = None if source is None else await trio.to_thread.run_sync(
        source_identities, source, root_key)
    if source is not None and live is None:
        log.warning("verdict collection: %s could not be walked whole, or is not the "
                    "mount's source directory any more; verdicts are kept whatever files "
                    "exist (collected by signature version only)", source)
    out = Collected()
    after: bytes | None = None
    while True:
        batch = journal.verdict_batch(after, BATCH)
        if not batch:
            break
        after = batch[-1][0]
        out.examined += len(batch)
        victims = [k for k, rec in batch
                   if is_garbage(rec, live=live, signatures=sigs, started=started)]
        if victims:
            out.collected += await journal.delete_verdicts(victims)
        await trio.lowlevel.checkpoint()  # let the request path in between batches
        await quiet.wait_quiet()
    out.seconds = time.monotonic() - began
    return out


class VerdictCollector:
    """The mount's background collection: `nursery.start(collector.serve)`."""

    def __init__(self, journal: Journal, source: str, signatures: Callable[[], Iterable[str]],
                 *, first_delay: float = FIRST_DELAY, interval: float = INTERVAL,
                 busy: Callable[[], bool] = lambda: False,
                 root_key: tuple[int, int] | None = None) -> None:
        self._journal = journal
        #: (st_dev, st_ino) of the directory the mount serves (`source_identities`)
        self._root_key = root_key
        self._busy = busy
        self._source = source
        self._signatures = signatures
        self._first_delay = first_delay
        self._interval = interval
        self.runs = 0
        self.last: Collected | None = None

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep(self._first_delay)
        while True:
            # Wait for the drain before asking which signatures are in use.
            await _Yield(self._busy, MAX_POSTPONE).wait_quiet()
            try:
                self.last = await collect(self._journal, source=self._source,
                                          signatures=list(self._signatures()),
                                          busy=self._busy, root_key=self._root_key)
                self.runs += 1
                if self.last.collected:
                    log.info("verdicts: %d of %d collected in %.1fs", self.last.collected,
                             self.last.examined, self.last.seconds)
            except Exception as err:  # a journal or walk failure must not end the mount
                log.warning("verdict collection failed: %s; trying again later", err)
            await trio.sleep(self._interval)
