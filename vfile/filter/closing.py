"""The scan after a last close: resolve a write intent with a verdict, or leave it for the drain.

Nobody waits for a close scan, so it first lets the file's last timestamp
tick pass (its verdict then is not "racy", `vfile.filter.racy`). At most
`CLOSE_SCANS` run at once; on-open scans do not wait for them. A verdict
resolves the intent's journal entry (verdict and removal in one transaction)
only if no newer intent replaced it; otherwise the entry stays for the drain,
with the identity of the written file. Journal or file trouble is logged and
leaves the entry in place.

A clean whole-file verdict of the current intent is not waited for in the
journal (`_settle_soon`): its completion is queued behind the intent's record
(journal.store.complete_soon), in the same transaction while a new file's
intent still lingers in the queue; the close scan closes its descriptor and
parks until that commit, when the intent ends (`Gate.wait_idle` covers it). A scanning create
thus costs one share of a transaction rather than two transactions, and a burst
of creates on a frozen state disk holds no descriptor per file (README "Creates
under scanning"). Anything else (infected, a newer intent, the drain's case)
first waits for the intent's commit, at most `MAX_WAITING` at once.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import replace

import trio

from vfile.config.model import Profile
from vfile.filter import racy
from vfile.filter.contenthash import NOTHING, ContentVerdicts
from vfile.filter.flights import Tasks
from vfile.filter.intents import Intent, IntentTable
from vfile.filter.outcomes import Stats
from vfile.filter.policy import (
    Action,
    Decision,
    DecisionInputs,
    Event,
    Reason,
    ScanResult,
    decide,
)
from vfile.filter.scanning import RACY, Scanning
from vfile.filter.settling import Settler
from vfile.journal.ops import PreparedDefer
from vfile.journal.records import Identity, JournalError, VerdictRecord
from vfile.journal.records import Reason as JournalReason
from vfile.journal.store import Journal
from vfile.scanner.verdict import Verdict

#: the gate's logger: operators filter and alert on it (the gate split kept its name)
log = logging.getLogger("vfile.filter.gate")

#: background scans after a last close running at once (on-open scans do not wait for them)
CLOSE_SCANS = 4

#: close scans waiting for their intent's commit (a stalled or frozen state disk), each
#: holding a descriptor; beyond it a close leaves its file to the drain, so a burst of
#: creates cannot take every descriptor from the reads (tests/t5_inflight_attack_test.py)
MAX_WAITING = 256

#: the gate's decision inputs for (event, profile, path, size, cached verdict)
Inputs = Callable[[Event, Profile, str, int, VerdictRecord | None], DecisionInputs]


class CloseScans:
    """The gate's scans after a last close (module doc); `run` is a background task."""

    def __init__(self, *, journal: Journal, intents: IntentTable, scanning: Scanning,
                 settler: Settler, stats: Stats, inputs: Inputs,
                 remember: Callable[[VerdictRecord], None],
                 window: Callable[[], bool]) -> None:
        self._journal = journal
        self._intents = intents
        self._scanning = scanning
        self._settler = settler
        self.stats = stats
        self._inputs = inputs
        self._remember = remember
        self._window = window
        self._slots = trio.Semaphore(CLOSE_SCANS)
        self._waiting = 0  # scans waiting for their intent's commit (MAX_WAITING)
        #: small contents already judged: their verdicts, by sha256
        self.hashes = ContentVerdicts()

    def start(self, tasks: Tasks, path: str, intent: Intent, fd: int,
              profile: Profile) -> None:
        """`run` in `tasks`; `fd` is its own from now on."""
        intent.closing = True
        try:
            tasks.start(self.run, path, intent, fd, profile)
        except BaseException:
            os.close(fd)
            self._intents.finish(intent)
            raise

    async def run(self, path: str, intent: Intent, fd: int, profile: Profile) -> None:
        try:
            async with self._slots:
                scanned = await self._scan(path, intent, fd, profile)
            if scanned is None:
                return
            identity, sig, d, verdict = scanned
            committed = self._settle_soon(path, intent, profile, identity, sig, d, verdict)
            if committed is not None:
                os.close(fd)  # nothing more to read: no descriptor held while it is queued
                fd = -1
                # Parked until its completion is committed: the intent ends then, and
                # the gate's `wait_idle` still covers the verdict's store.
                await committed.wait()
                return
            if not await self._wait_landed(path, intent):
                return
            await self._settle(path, intent, profile, identity=identity, sig=sig, d=d,
                               verdict=verdict)
        except (OSError, JournalError) as err:
            log.error("close scan of %r failed: %s; left to the drain", path, err)
        finally:
            if fd >= 0:
                os.close(fd)
            self._intents.finish(intent)

    async def _wait_landed(self, path: str, intent: Intent) -> bool:
        """Wait until the intent's record is committed (its stored seq is known); False:
        too many wait already, the file is left to the drain."""
        if intent.landed is None or intent.landed.is_set():
            return True
        # Its record is still queued (vfile.filter.newfiles), or failed and is retried;
        # once committed, the drain scans the file if no close scan does.
        if self._waiting >= MAX_WAITING:
            log.info("close scan of %r: its intent is not committed yet; left to the drain",
                     path)
            return False
        self._waiting += 1
        try:
            await intent.landed.wait()
        finally:
            self._waiting -= 1
        return True

    async def _scan(self, path: str, intent: Intent, fd: int, profile: Profile
                    ) -> tuple[Identity, str, Decision, Verdict | None] | None:
        # Nobody waits for a close scan: let the file's last timestamp tick pass first,
        # so its verdict is not "racy" (vfile.filter.racy) and need not be scanned again.
        await trio.sleep(racy.wait_s(Identity.from_stat(os.fstat(fd)), time.time_ns()))
        identity = Identity.from_stat(os.fstat(fd))
        sig = self._scanning.signature()
        inputs = self._inputs(Event.CLOSE, profile, path, identity.size, None)
        d = decide(inputs)
        verdict: Verdict | None = None
        if d.action is Action.SCAN:
            self.stats.close_scans += 1
            result, verdict, keep = await self._scan_or_reuse(fd, identity, sig, profile)
            if self._window() and result not in (ScanResult.CLEAN, ScanResult.INFECTED):
                result = ScanResult.NOT_ATTEMPTED
            if not keep:  # racy clean: the drain scans it again, later
                result, verdict = ScanResult.ERROR, Verdict.error(RACY)
            d = decide(replace(inputs, scan=result, window=self._window()))
        return identity, sig, d, verdict

    def _settle_soon(self, path: str, intent: Intent, profile: Profile,  # noqa: PLR0917
                     identity: Identity, sig: str, d: Decision, verdict: Verdict | None
                     ) -> trio.Event | None:
        """A clean whole-file verdict of the current intent: its completion is queued
        behind the intent's record, not waited for (one transaction for both while the
        record still lingers in the queue: README "Creates under scanning"). The intent
        ends once the completion is committed (the event). None: `_settle` after
        `_wait_landed`."""
        if verdict is None or d.reason is not Reason.CLEAN or profile.is_oversize(identity.size) \
                or self._intents.get(path) is not intent:
            return None
        queued = intent.queued
        if queued is not None and queued.seq == intent.seq:
            seq: int | PreparedDefer = queued  # its stored seq is known once it is applied
        elif intent.landed is None or intent.landed.is_set():
            seq = intent.seq
        else:
            return None  # its record failed and is retried: `_wait_landed` for its seq
        record = self._scanning.record(identity, verdict, sig, profile)
        committed = trio.Event()

        def done(err: JournalError | None) -> None:
            # On the trio thread, from the group committer: must not raise.
            if err is not None:
                log.error("journal: cannot store the verdict for %r: %s; left to the drain",
                          path, err)
            committed.set()

        if not self._settler.resolve_soon(path, record, profile, seq, done):
            return None
        self._remember(record)
        return committed

    async def _scan_or_reuse(self, fd: int, identity: Identity, sig: str, profile: Profile
                             ) -> tuple[ScanResult, Verdict | None, bool]:
        """A scan; or, for small content a real scan already judged at this signature
        version, its verdict (vfile.filter.contenthash)."""
        whole = not profile.is_oversize(identity.size)
        looked = self.hashes.lookup(fd, identity, sig) if whole else NOTHING
        if looked.verdict is not None:
            return (ScanResult.CLEAN if looked.verdict.is_clean else ScanResult.INFECTED,
                    looked.verdict, True)
        scope = trio.CancelScope(deadline=trio.current_time() + profile.deadline)
        result, verdict, keep = await self._scanning.scan(fd, identity, profile, scope)
        if keep and verdict is not None and result in (ScanResult.CLEAN, ScanResult.INFECTED):
            self.hashes.remember(looked, sig, verdict)
        return result, verdict, keep

    async def _settle(self, path: str, intent: Intent, profile: Profile, *,
                      identity: Identity, sig: str, d: Decision,
                      verdict: Verdict | None) -> None:
        current = self._intents.get(path) is intent
        if verdict is not None and d.reason in (Reason.CLEAN, Reason.INFECTED):
            record = self._scanning.record(identity, verdict, sig, profile)
            self._remember(record)
            if profile.is_oversize(identity.size):
                await self._settler.keep_partial(path, record, profile)
            elif current:
                await self._settler.resolve(path, record, profile, intent.seq)
            else:
                # A newer intent (another writer came) keeps its entry: only store the verdict.
                await self._settler.keep(path, record, profile)
            return
        if current and d.action is Action.DEFER:
            # Keep the entry for the drain, now with the identity of the written file.
            # Tier 2: the intent's own record (tier 1 or 1w) is already there; losing
            # this update leaves it, and the drain scans the file as it then is.
            error = verdict.detail if verdict is not None else d.reason.value
            intent.seq = await self._journal.defer(path, identity, JournalReason.MODIFIED,
                                                   profile.name, error=error, durable=False)
