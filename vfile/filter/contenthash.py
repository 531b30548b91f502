"""Close scans of content already scanned: a verdict reused by content hash.

A writer that unpacks, copies or generates files writes the same bytes again
and again (license and template files, empty files, vendored copies). Each
such file used to cost a whole close scan: on the embedded appliance a round
trip through its socket, on the trio thread, as expensive as the create itself
(README "Creates under scanning"). For a small file (at most `HASH_MAX` bytes)
the close scan now reads it once, inline (its pages were just written through
the mount), hashes it (sha256), and if a real scan at the current signature
version gave a verdict for those bytes, takes that verdict instead of asking
the appliance again.

Why that is sound: an appliance's verdict (clamd, ICAP, the built-in one) is a
function of the bytes and of its signatures; the fleet cache (`vfile appliance
cache`) rests on the same. Only whole-file verdicts are remembered (never an
oversize file's verdict on a prefix), only clean or infected ones from a scan
whose verdict was kept (not racy), and only under the signature version they
were given at (a clean one from an appliance of another version is not kept):
a signature update makes every remembered verdict miss. The
file's identity is checked again after the read: content written meanwhile
gets a real scan.

Invariants:
- `lookup` never blocks on anything but one pread of at most HASH_MAX + 1 bytes.
- At most `ENTRIES` hashes are kept (LRU), about 0.2 KiB each.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from dataclasses import dataclass

from vfile.journal.records import Identity
from vfile.scanner.verdict import Verdict

#: files up to this size are hashed inline by the close scan
HASH_MAX = 64 << 10
#: content hashes remembered (LRU)
ENTRIES = 4096


@dataclass(frozen=True, slots=True)
class Looked:
    """What `lookup` found: the content's hash (None: not hashed) and a verdict; the
    bytes hashed (a close scan may have them judged at once: scanner/inline.py)."""

    digest: bytes | None
    verdict: Verdict | None
    data: bytes | None = None


NOTHING = Looked(None, None)


class ContentVerdicts:
    """sha256 of small files' content -> the verdict a real scan gave it (module doc)."""

    def __init__(self, entries: int = ENTRIES) -> None:
        self._by_hash: OrderedDict[tuple[bytes, str], Verdict] = OrderedDict()
        self._entries = entries
        #: close scans answered from here, not by an appliance
        self.reused = 0

    def lookup(self, fd: int, identity: Identity, sig: str) -> Looked:
        if identity.size > HASH_MAX or not sig:
            return NOTHING
        data = os.pread(fd, identity.size + 1, 0)  # one more: it grew meanwhile
        if len(data) != identity.size or Identity.from_stat(os.fstat(fd)) != identity:
            return NOTHING  # written to meanwhile: a real scan
        digest = hashlib.sha256(data).digest()
        verdict = self._by_hash.get((digest, sig))
        if verdict is None:
            return Looked(digest, None, data)
        self._by_hash.move_to_end((digest, sig))
        self.reused += 1
        return Looked(digest, verdict, data)

    def remember(self, looked: Looked, sig: str, verdict: Verdict) -> None:
        """A real scan of the bytes `looked` hashed gave a kept, whole-file `verdict`."""
        if looked.digest is None or not (verdict.is_clean or verdict.is_infected):
            return
        if verdict.is_clean and verdict.sig_version and verdict.sig_version != sig:
            # Another version's clean (a failover to older signatures) is no verdict of
            # `sig`'s; infected stands under any (tests/t1_attack17_contenthash_test.py).
            return
        self._by_hash[(looked.digest, sig)] = verdict
        self._by_hash.move_to_end((looked.digest, sig))
        while len(self._by_hash) > self._entries:
            self._by_hash.popitem(last=False)
