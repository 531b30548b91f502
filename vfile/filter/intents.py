"""Write intents in memory: which paths are being written, and by which intent.

A write intent is made (and its journal entry made durable) before anything
that can change a file's content; the close scan after the last writer
resolves it. This module owns the in-memory side: path → the current
`Intent`. Pure bookkeeping, no I/O.

Invariants:
- Every intent ends `done`: resolved by its close scan, dropped by an unlink
  or a rename, or rolled back because its operation failed (or finished
  without a handle to close, like mknod, link or an exchange). An intent that
  nothing ends would turn off the cached-open fast path for the whole mount,
  make the drain answer "still being written" forever and count in the quota.
- Rolling back never loses protection: the journal entry stays (the drain
  scans the file), and an older intent this one replaced, still waiting for
  its writers' last close, becomes current again with the newest entry seq,
  so that close resolves the entry.
- An intent a close scan has claimed is not rolled back: that scan reads the
  file after the failed operation and resolves it.
- A new file's intent may have no journal record yet (`unrecorded`,
  vfile.filter.newfiles). Such an intent is only ever the current one of its
  path, at its path: whatever else would happen to it (replaced by a newer
  intent, moved, popped, rolled back, finished unresolved) first calls
  `displaced`, which makes its record. One exception: a rename before its close
  scan has read the file moves it unrecorded, that scan's path along with it
  (vfile.filter.keeping `moved`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import trio

from vfile.journal.ops import PreparedDefer
from vfile.journal.syncer import Unsynced


@dataclass(eq=False)
class Intent:
    """A write intent: replaced by each new write, while `seq` follows re-defers."""

    path: str
    seq: int = -1
    #: the intent this one replaced (made current again if this one is rolled back)
    prev: Intent | None = None
    #: a close scan was started for it: that scan resolves it
    closing: bool = False
    done: bool = False
    #: set once its journal record is committed, if that happens in the background
    #: (a new file's: vfile.filter.newfiles); None: committed before it was returned
    landed: trio.Event | None = None
    #: an existing file's record committed, its fsync awaited before the first write
    #: rather than in the open (vfile.filter.writeintents); None: durable or none
    unsynced: Unsynced | None = None
    #: its journal record while queued (vfile.filter.newfiles): a close scan's completion
    #: can be queued behind it (journal.store.complete_soon); None once committed
    queued: PreparedDefer | None = None
    #: a last close came while its record was still being written (its operation, and
    #: the content change after it, still to come) and left it alone: if it is rolled
    #: back, the intent it replaced gets that close scan (vfile.filter.gate)
    close_due: bool = False
    #: a new file's intent whose journal record is not made yet (vfile.filter.newfiles):
    #: in flight (journal.inflight) until its clean verdict is committed or its record made
    unrecorded: bool = False
    #: set when it is done, made by the first who waits for that (`IntentTable.ended`)
    ended: trio.Event | None = None

    @property
    def recording(self) -> bool:
        """Its journal record is still being written: the operation it was made for
        (an open with O_TRUNC, a truncate, a rename onto its path) has not acted yet."""
        return self.seq < 0


class IntentTable:
    """path → its current, unresolved `Intent`."""

    def __init__(self) -> None:
        self._by_path: dict[str, Intent] = {}
        #: intents begun so far: a content change through the mount begins one (keeping)
        self.begun = 0
        #: called with an `unrecorded` intent before anything but its resolution changes it
        #: (module doc): makes its record (vfile.filter.newfiles.IntentRecords.record_now)
        self.displaced: Callable[[Intent], None] = lambda intent: None

    def _record(self, intent: Intent | None) -> None:
        if intent is not None and intent.unrecorded:
            self.displaced(intent)

    def __len__(self) -> int:
        return len(self._by_path)

    def __contains__(self, path: object) -> bool:
        return path in self._by_path

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._by_path))

    def get(self, path: str) -> Intent | None:
        return self._by_path.get(path)

    def find(self, names_it: Callable[[str], bool]) -> Intent | None:
        """The first intent whose path `names_it` says names a given file (a scan of
        every intent: for a multiply-linked file only)."""
        return next((i for p, i in self._by_path.items() if names_it(p)), None)

    def find_all(self, names_it: Callable[[str], bool]) -> list[Intent]:
        """Every intent whose path `names_it` says names a given file (as `find`)."""
        return [i for p, i in list(self._by_path.items()) if names_it(p)]

    def begin(self, path: str) -> Intent:
        """A new intent for `path`, current from now on."""
        prev = self._by_path.get(path)
        self._record(prev)
        self.begun += 1
        intent = Intent(path, prev=prev)
        self._by_path[path] = intent
        return intent

    @staticmethod
    async def ended(intent: Intent) -> None:
        """Return once `intent` is done (a metadata change waits for the close scan
        that reads the file before it: vfile.filter.keeping)."""
        if not intent.done:
            if intent.ended is None:
                intent.ended = trio.Event()
            await intent.ended.wait()

    def finish(self, intent: Intent) -> None:
        """`intent` is resolved (its close scan ended): forget it if still current."""
        self._record(intent)  # ended unresolved: its record stays for the drain
        _end(intent)
        intent.prev = None
        if self._by_path.get(intent.path) is intent:
            del self._by_path[intent.path]

    def pop(self, path: str) -> Intent | None:
        """Drop the path's intent (the file was unlinked or renamed over)."""
        intent = self._by_path.pop(path, None)
        if intent is not None:
            self._record(intent)
            _end(intent)
        return intent

    def move(self, old: str, new: str, *, displace: bool = True) -> None:
        """The file at `old` is now at `new`, with its intent (if any). `displace=False`:
        an unrecorded intent stays so, its close scan following it (filter.keeping)."""
        self.pop(new)
        intent = self._by_path.pop(old, None)
        if intent is not None:
            if displace:
                self._record(intent)  # at `old`: the journal's rename moves it
            intent.path = new
            self._by_path[new] = intent

    def relocate(self, moves: dict[str, str]) -> None:
        """Move several intents at once (old path -> new path; an exchange swaps them)."""
        for old in moves:
            self._record(self._by_path.get(old))
        taken = [(self._by_path.pop(old), new) for old, new in moves.items()
                 if old in self._by_path]
        for intent, new in taken:
            intent.path = new
            self._by_path[new] = intent

    def move_tree(self, old_dir: str, new_dir: str) -> None:
        prefix = old_dir + "/"
        for path in [p for p in self._by_path if p.startswith(prefix)]:
            self.move(path, new_dir + "/" + path[len(prefix):])

    def roll_back(self, intent: Intent) -> None:
        """The operation `intent` was made for failed, or ended with no handle to close.

        The journal entry stays for the drain. If an older intent of the path is
        still waiting for its close, it is current again and resolves the entry.
        """
        self._record(intent)  # its entry stays for the drain
        if intent.done or intent.closing:
            return
        _end(intent)
        if self._by_path.get(intent.path) is not intent:
            return  # a newer intent replaced it; it skips this one when rolled back itself
        prev = intent.prev
        while prev is not None and prev.done:
            prev = prev.prev
        intent.prev = None
        if prev is None:
            del self._by_path[intent.path]
        else:
            prev.seq = max(prev.seq, intent.seq)
            self._by_path[intent.path] = prev


def _end(intent: Intent) -> None:
    intent.done = True
    if intent.ended is not None:
        intent.ended.set()
