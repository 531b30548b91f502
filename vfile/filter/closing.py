"""The scan after a last close: resolve a write intent with a verdict, or leave it for the drain.

Nobody waits for a close scan, so it first lets the file's last timestamp
tick pass (its verdict then is not "racy", `vfile.filter.racy`). At most
`CLOSE_SCANS` run at once; on-open scans do not wait for them. A verdict
resolves the intent's journal entry (verdict and removal in one transaction)
only if no newer intent replaced it; otherwise the entry stays for the drain,
with the identity of the written file. Journal or file trouble is logged and
leaves the entry in place.

Closes are judged in batches (`submit`, `_batch`; or by the next close: `_due_now`)
in close order once their tick has passed, a small file at once, without a task of
its own: by its hash, or on the embedded engine by the bytes it hashed
(scanner/inline.py). Anything else (a larger file, another appliance, infected, a
window, a newer intent) gets its own task (`run`).

A clean whole-file verdict of the current intent is not waited for in the
journal (`_settle_soon`): its completion is queued behind the intent's record
(journal.store.complete_soon), or stands for it when a new file has none
(vfile.filter.newfiles); the descriptor is closed and the intent ends once
that commit is done (`Gate.wait_idle` covers it). Anything else (infected, a
newer intent, the drain's case) first waits for the intent's commit, at most
`MAX_WAITING` at once (README "Creates under scanning").
"""

from __future__ import annotations

import logging
import os
import resource
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace

import trio

from vfile.config.model import Profile
from vfile.filter import closelimits, racy
from vfile.filter.closelimits import BATCH, CLOSE_SCANS, HELD_MAX_NS, MAX_WAITING, holding_max
from vfile.filter.contenthash import HASH_MAX, NOTHING, ContentVerdicts, Looked
from vfile.filter.intents import Intent, IntentTable
from vfile.filter.newfiles import IntentRecords
from vfile.filter.outcomes import Stats
from vfile.filter.policy import Action, Decision, DecisionInputs, Event, Reason, ScanResult, decide
from vfile.filter.scanning import RACY, Scanning
from vfile.filter.settling import Settler
from vfile.journal.ops import PreparedDefer
from vfile.journal.records import Identity, JournalError, VerdictRecord
from vfile.journal.records import Reason as JournalReason
from vfile.journal.store import Journal
from vfile.scanner.verdict import Verdict

#: the gate's logger: operators filter and alert on it (the gate split kept its name)
log = logging.getLogger("vfile.filter.gate")

#: the gate's decision inputs for (event, profile, path, size, cached verdict)
Inputs = Callable[[Event, Profile, str, int, VerdictRecord | None], DecisionInputs]
#: the gate's background tasks: start(fn, *args)
Start = Callable[..., None]
#: a close scan's judgement: the file's identity, the signature version, the decision
Scanned = tuple[Identity, str, Decision, Verdict | None]
#: one batch's decisions: (profile name, scan result or None before the scan) ->
#: (the inputs, the decision)
_Decided = dict[tuple[str, ScanResult | None], tuple[DecisionInputs, Decision]]


@dataclass(slots=True)
class _Closed:
    """A close scan queued for the batch: judged from `due_ns` on (its tick passed)."""

    path: str
    intent: Intent
    fd: int
    profile: Profile
    due_ns: int
    first_ns: int  # its first due time: `unread` holds it back HELD_MAX_NS past it at most


class CloseScans:
    """The gate's scans after a last close (module doc); `run` is a background task."""

    def __init__(self, *, journal: Journal, intents: IntentTable, scanning: Scanning,
                 settler: Settler, stats: Stats, inputs: Inputs,
                 remember: Callable[[VerdictRecord], None],
                 window: Callable[[], bool], start: Start, records: IntentRecords) -> None:
        self._journal = journal
        #: new files' records, made only when the close scan does not cover the file
        self._records = records
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
        #: close scans whose bytes the embedded engine judged at once (scanner/inline.py)
        self.inline = 0
        self.by_a_close = 0  # judged in a close's trio step, its own or a later one (k27)
        self._start = start
        self._queue: deque[_Closed] = deque()  # closes waiting for their tick (`_batch`)
        self._batching = False  # the batch task runs
        self._wake = trio.Event()  # the batch task is idle: a close, or all committed
        self._timer: trio.CancelScope | None = None  # its wait for the head's tick
        self._parked = 0  # judged at once, their completions not committed yet
        self._running = 0  # `run` tasks started, not ended (each holds its descriptor)
        self._holding_max = holding_max(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        #: closes left to the drain because too many close scans held descriptors
        self.left_to_drain = 0

    # --- the batch: close scans judged at once, without a task each ---------------------

    def start(self, path: str, intent: Intent, fd: int, profile: Profile,
              st: os.stat_result | None = None) -> None:
        """The close scan of `path` begins, owning `fd` (closed here and the intent ended
        if it cannot be queued); `st`: the file's stat at its last close, if known."""
        intent.closing = True
        if len(self._queue) + self._running >= self._holding_max:
            # Its intent's record stays: the drain scans the file (as `_wait_landed`).
            os.close(fd)
            self._intents.finish(intent)
            if not self.left_to_drain % 1000:  # rate-limited: one line per thousand
                log.warning("close scans: %d hold a descriptor; %r and later closes are "
                            "left to the drain (%d so far)", self._holding_max, path,
                            self.left_to_drain + 1)
            self.left_to_drain += 1
            return
        try:
            self.submit(path, intent, fd, profile, st)
        except BaseException:
            os.close(fd)
            self._intents.finish(intent)
            raise
        self._due_now(time.time_ns())

    def submit(self, path: str, intent: Intent, fd: int, profile: Profile,
               st: os.stat_result | None = None) -> None:
        """Queue the close scan of `path` (our descriptor `fd`, now the batch's), judged
        once its last tick passed (`st`: its stat at the last close, for the due time
        only). Raises RuntimeError (nothing queued) when the gate is not serving."""
        now = time.time_ns()
        try:
            due = now + int(racy.wait_s(Identity.from_stat(st or os.fstat(fd)), now) * 1e9)
        except OSError:
            due = now  # the batch's own fstat meets it: left to the drain
        self._queue.append(_Closed(path, intent, fd, profile, due, due))
        if self._batching:
            if len(self._queue) == 1:
                self._wake.set()  # the batch task waits with no timer: it sets one
            return
        try:
            self._start(self._batch)
        except BaseException:
            self._queue.pop()
            raise
        self._batching = True

    def _due_now(self, now: int) -> None:
        """The closes whose tick passed, judged in this close's trio step, not by a wake-up
        of the batch task (k27: its event and timer cost more than the judgement)."""
        if not self._batching or not (n := self._judge_due(now)):
            return
        self.by_a_close += n
        if self._timer is not None and self._queue:
            self._timer.deadline = trio.current_time() + closelimits.timer_s(
                self._queue[0].due_ns, now)

    def unread(self, intent: Intent, path: str = "") -> bool:
        """The close scan of `intent` is queued, the file unread (stat and bytes in one trio step,
        a tick on at the earliest): it judges a change made now (keeping); `path`: a new name.
        It goes to the back: a file changed faster than a tick must not hold back the closes
        behind it (t26). False once it was due HELD_MAX_NS ago (closelimits): the change
        waits, as before rs24, so a file changed in a loop cannot postpone its scan (u26)."""
        now = time.time_ns()
        for i in range(len(self._queue) - 1, -1, -1):
            if (c := self._queue[i]).intent is intent:
                if now - c.first_ns > HELD_MAX_NS:
                    return False
                c.due_ns, c.path = max(c.due_ns, now + racy.TICK_NS + 1), path or c.path
                del self._queue[i]
                self._queue.append(c)
                return True
        return False

    async def _batch(self) -> None:
        """The batch task, while closes are queued or their completions uncommitted."""
        try:
            while self._queue or self._parked:
                if not self._queue:
                    self._wake = trio.Event()
                    await self._wake.wait()  # a close, or the last completion committed
                    continue
                now = time.time_ns()
                if not closelimits.is_due(self._queue[0].due_ns, now):
                    # Fires only when no close comes (`_due_now` judges, moves it on).
                    self._wake = trio.Event()
                    with trio.move_on_after(closelimits.timer_s(self._queue[0].due_ns, now)) \
                            as self._timer:
                        await self._wake.wait()
                    self._timer = None
                    continue
                self._judge_due(now)
                await trio.lowlevel.checkpoint()  # the requests go on between batches
        finally:
            self._batching = False
            while self._queue:  # cancelled (the mount stops): left to the drain
                c = self._queue.popleft()
                os.close(c.fd)
                self._intents.finish(c.intent)

    def _judge_due(self, now: int) -> int:
        decided: _Decided = {}  # one batch, one trio step: the same inputs
        n = 0
        while n < BATCH and self._queue and closelimits.is_due(self._queue[0].due_ns, now):
            self._close_now(self._queue.popleft(), decided)
            n += 1
        return n

    def _close_now(self, c: _Closed, decided: _Decided) -> None:
        """`c`'s close scan at once if it needs no wait: a small file's verdict by hash or
        inline (scanner/inline.py), clean, its completion queued behind its intent; its
        intent ends when that is committed. Anything else: its own task (`run`)."""
        fd: int | None = c.fd
        try:
            if self._judge_now(c, decided) is None:
                fd = None  # the task owns it
                return
            fd = None
            os.close(c.fd)  # nothing more to read while its completion is queued
        except (OSError, JournalError) as err:
            log.error("close scan of %r failed: %s; left to the drain", c.path, err)
        except Exception:  # a bug must not stop the batch: its entry stays for the drain
            log.exception("close scan of %r failed; left to the drain", c.path)
        if fd is not None:
            os.close(fd)
            self._intents.finish(c.intent)

    def _judge_now(self, c: _Closed, decided: _Decided) -> bool | None:
        """True: judged, its completion queued (the descriptor is the caller's to close);
        None: handed to its own task with the descriptor (what was read goes along).
        `decided`: the decisions made in this batch, by (profile, scan result)."""
        st = os.fstat(c.fd)
        identity = Identity.from_stat(st)
        looked = NOTHING
        scanned = None
        if racy.wait_s(identity, time.time_ns()) == 0 and identity.size <= HASH_MAX \
                and not c.profile.is_oversize(identity.size):
            sig = self._scanning.signature()
            # For a small file and no verdict yet (the batch's case), the decision does
            # not depend on the path: once per profile and batch (README, cr22).
            if (c.profile.name, None) not in decided:
                inputs = self._inputs(Event.CLOSE, c.profile, c.path, identity.size, None)
                decided[c.profile.name, None] = (inputs, decide(inputs))
            inputs, first = decided[c.profile.name, None]
            if first.action is Action.SCAN:
                read_ns = time.time_ns()
                looked = self.hashes.lookup(c.fd, identity, sig)
                scanned = self._reuse_or_now(looked, identity, sig, read_ns)
        if scanned is not None:
            result, verdict, keep = scanned
            self.stats.close_scans += 1
            if not keep:  # (cannot be: its tick passed before the read) the drain's
                result, verdict = ScanResult.ERROR, Verdict.error(RACY)
            if (c.profile.name, result) not in decided:
                decided[c.profile.name, result] = (
                    inputs, decide(replace(inputs, scan=result, window=self._window())))
            d = decided[c.profile.name, result][1]
            done = self._unparked(c.intent)  # counted parked from here
            try:
                queued = self._settle_soon(c.path, c.intent, c.profile, identity, sig, d,
                                           verdict, done, fd=c.fd, nlink=st.st_nlink)
            except BaseException:
                done()  # its completion may be queued: `done` ends it once, whoever is first
                raise
            if queued:
                return True
            self._parked -= 1  # not queued: `done` is never called, `run` owns the intent
            self._start_run(c.path, c.intent, c.fd, c.profile, None,
                            (identity, sig, d, verdict))
            return None
        self._start_run(c.path, c.intent, c.fd, c.profile,
                        None if looked.digest is None else (identity, looked))
        return None

    def _start_run(self, path: str, intent: Intent, *args: object) -> None:
        self._records.record_now(intent)  # not judged at once: no waiting for its record
        self._running += 1  # until `run` ends (`start`'s bound)
        try:
            self._start(self.run, path, intent, *args)
        except BaseException:
            self._running -= 1
            raise

    def _reuse_or_now(self, looked: Looked, identity: Identity, sig: str, read_ns: int
                      ) -> tuple[ScanResult, Verdict, bool] | None:
        """The verdict of the bytes `looked` read: by their hash, or judged inline."""
        if looked.verdict is not None:
            return (ScanResult.CLEAN if looked.verdict.is_clean else ScanResult.INFECTED,
                    looked.verdict, True)
        now = None if looked.data is None else \
            self._scanning.scan_now(looked.data, identity, read_ns, looked.digest)
        if now is not None:
            self.inline += 1
            if now[2]:
                self.hashes.remember(looked, sig, now[1])
        return now

    def _unparked(self, intent: Intent) -> Callable[[], None]:
        self._parked += 1
        ended = False

        def done() -> None:  # its completion is committed (or failed): the intent ends
            nonlocal ended
            if ended:
                return  # (an error path ended it first)
            ended = True
            self._intents.finish(intent)
            self._parked -= 1
            if not self._parked and not self._queue:  # else it is woken for those
                self._wake.set()
        return done

    # --- one close scan as its own task -------------------------------------------------

    async def run(self, path: str, intent: Intent, fd: int, profile: Profile,  # noqa: PLR0917
                  looked: tuple[Identity, Looked] | None = None,
                  scanned: Scanned | None = None) -> None:
        """The close scan of `path` the whole way; `looked`: its small content already
        read (used if the file is still as it was), `scanned`: already judged."""
        try:
            if scanned is None:
                async with self._slots:
                    scanned = await self._scan(path, intent, fd, profile, looked)
            if scanned is None:
                return
            identity, sig, d, verdict = scanned
            committed = trio.Event()
            try:
                queued = self._settle_soon(path, intent, profile, identity, sig, d,
                                           verdict, committed.set, fd=fd)
            except (OSError, JournalError):
                raise
            except Exception as err:
                # Not the file's nor the journal's (no thread for the journal's writer:
                # RuntimeError): the task must not die with a traceback. Its entry stays
                # (or a completion queued before the error resolves it).
                log.error("close scan of %r: cannot queue its verdict (%s: %s); left to "
                          "the drain", path, type(err).__name__, err)
                return
            if queued:
                os.close(fd)  # nothing more to read: no descriptor held while it is queued
                fd = -1
                # Parked until its completion is committed: the intent ends then, and
                # the gate's `wait_idle` still covers the verdict's store.
                await committed.wait()
                return
            if not await self._wait_landed(path, intent):
                return
            await self._settle(path, intent, profile, identity=identity, sig=sig, d=d,
                               verdict=verdict, fd=fd)
        except (OSError, JournalError) as err:
            log.error("close scan of %r failed: %s; left to the drain", path, err)
        finally:
            self._running -= 1
            if fd >= 0:
                os.close(fd)
            self._intents.finish(intent)

    async def _wait_landed(self, path: str, intent: Intent) -> bool:
        """Wait for the intent's record's commit (its seq); False: too many wait (drain)."""
        self._records.record_now(intent)  # (if not made yet: it is waited for below)
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

    async def _scan(self, path: str, intent: Intent, fd: int, profile: Profile,
                    looked: tuple[Identity, Looked] | None = None) -> Scanned | None:
        # Nobody waits for a close scan: let the file's last timestamp tick pass first,
        # so its verdict is not "racy" (vfile.filter.racy) and need not be scanned again.
        await trio.sleep(racy.wait_s(Identity.from_stat(os.fstat(fd)), time.time_ns()))
        identity = Identity.from_stat(os.fstat(fd))
        # Read after its tick passed: still this identity, still those bytes.
        read = looked[1] if looked is not None and looked[0] == identity else None
        sig = self._scanning.signature()
        inputs = self._inputs(Event.CLOSE, profile, path, identity.size, None)
        d = decide(inputs)
        verdict: Verdict | None = None
        if d.action is Action.SCAN:
            self.stats.close_scans += 1
            result, verdict, keep = await self._scan_or_reuse(fd, identity, sig, profile, read)
            if self._window() and result not in (ScanResult.CLEAN, ScanResult.INFECTED):
                result = ScanResult.NOT_ATTEMPTED
            if not keep:  # racy clean: the drain scans it again, later
                result, verdict = ScanResult.ERROR, Verdict.error(RACY)
            d = decide(replace(inputs, scan=result, window=self._window()))
        return identity, sig, d, verdict

    def _settle_soon(self, path: str, intent: Intent, profile: Profile,  # noqa: PLR0917
                     identity: Identity, sig: str, d: Decision, verdict: Verdict | None,
                     committed: Callable[[], None], *, fd: int,
                     nlink: int | None = None) -> bool:
        """A clean whole-file verdict of the current intent: its completion queued behind
        the intent's record, not waited for (one transaction while the record lingers:
        README "Creates under scanning"); the intent ends once it is committed
        (`committed`, on the trio thread). False: `_settle` after `_wait_landed`."""
        if verdict is None or d.reason is not Reason.CLEAN or profile.is_oversize(identity.size) \
                or self._intents.get(path) is not intent:
            return False
        queued = intent.queued
        unrecorded = intent.unrecorded
        if unrecorded:
            seq: int | PreparedDefer = 0  # no entry (filter.newfiles): the verdict covers it
        elif queued is not None and queued.seq == intent.seq:
            seq = queued  # its stored seq is known once it is applied
        elif intent.landed is None or intent.landed.is_set():
            seq = intent.seq
        else:
            return False  # its record failed and is retried: `_wait_landed` for its seq
        record = self._scanning.record(identity, verdict, sig, profile)

        def done(err: JournalError | None) -> None:
            # On the trio thread, from the group committer: must not raise.
            if err is not None:
                log.error("journal: cannot store the verdict for %r: %s; left to the drain",
                          path, err)
                self._records.record_now(intent)
            elif unrecorded:
                self._records.covered(intent)  # committed: no record needed
            committed()

        if not self._settler.resolve_soon(path, record, profile, seq, done):
            return False
        self._remember_linked(record, fd, nlink)
        return True

    def _remember_linked(self, record: VerdictRecord, fd: int, nlink: int | None = None
                         ) -> None:
        """Cache the verdict unless the file is deleted: its FORGET may have dropped its
        verdicts before this judgement (a tick later), and the entry would stay until
        evicted. `nlink`: from a stat in this same trio step (no request ran since)."""
        if (os.fstat(fd).st_nlink if nlink is None else nlink) > 0:
            self._remember(record)

    async def _scan_or_reuse(self, fd: int, identity: Identity, sig: str, profile: Profile,
                             read: Looked | None = None
                             ) -> tuple[ScanResult, Verdict | None, bool]:
        """A scan; or, for small content a real scan judged at this signature version,
        its verdict (vfile.filter.contenthash); else, on the embedded engine, the hashed
        bytes judged at once (scanner/inline.py). `read`: those bytes, read by the batch."""
        whole = not profile.is_oversize(identity.size)
        looked = read if read is not None else NOTHING
        if read is None and whole:
            read_ns = time.time_ns()  # the bytes judged inline are read from here on (racy)
            looked = self.hashes.lookup(fd, identity, sig)
            now = self._reuse_or_now(looked, identity, sig, read_ns)
            if now is not None:
                return now
        scope = trio.CancelScope(deadline=trio.current_time() + profile.deadline)
        result, verdict, keep = await self._scanning.scan(fd, identity, profile, scope)
        if keep and verdict is not None and result in (ScanResult.CLEAN, ScanResult.INFECTED):
            self.hashes.remember(looked, sig, verdict)
        return result, verdict, keep

    async def _settle(self, path: str, intent: Intent, profile: Profile, *,
                      identity: Identity, sig: str, d: Decision,
                      verdict: Verdict | None, fd: int) -> None:
        current = self._intents.get(path) is intent
        if verdict is not None and d.reason in (Reason.CLEAN, Reason.INFECTED):
            record = self._scanning.record(identity, verdict, sig, profile)
            self._remember_linked(record, fd)
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
