"""The drain: scan deferred journal entries once an appliance is back.

The drain owns *scheduling* only: when to run (an appliance is available, no
window is active, not paused), how many at once (its own concurrency budget,
separate from on-open scans so a backlog never starves interactive opens),
and how fast (a token bucket on files/s and bytes/s, whose rate backs off
multiplicatively when appliance latency rises and recovers additively, so a
returning appliance is not buried in a scan storm). What "scan one entry"
means — reopen the file safely, scan it, apply the infected action, complete
or release the journal entry — is the `resolve` callable the gate provides.

Invariants:
- Entries are claimed with a lease; a stop or a crash leaves them leased, and
  the next run (the journal's `begin_run`) or the lease expiring makes them
  claimable again. A stop pauses the drain first: nothing is claimed after it.
  A resolve that raises releases the entry with the error (backoff and
  poisoning are the journal's business).
- The drain never waits on an appliance without a deadline: `resolve` runs
  under `scan_deadline`.
- `concurrency` bounds the scans in flight, not the journal writes that settle
  them: `resolve` calls `scan_done()` once the appliance's part is over, which
  frees the slot for the next scan while its completion commits (measured: the
  commit was a third of a resolve's time on a busy disk). At most
  `SETTLING_FACTOR` times `concurrency` entries are in flight in all.
- The next batch is claimed while the current one is scanned (one batch
  ahead, leased like the current one), so no scan slot waits for a claim's
  transaction; completions linger a few ms to share a transaction
  (vfile.journal.commit, below the settling capacity above); a batch's clean
  completions are one journal operation (vfile.filter.resolution).
- With `resolve_batch` (the mount's), while `batchable()` (the appliance can take
  a batch at once: clamd on a unix socket), the drain hands over `BATCH_FILES` entries
  at a time (fewer at a low rate: never more than the bucket's burst; large files
  alone, see `BATCH_BYTES`) and runs `LANES` such batches at once: one batch's
  scans go to the appliance together, in one task, instead of a task, scopes and
  checkpoints per file (the server's trio thread was the drain's bottleneck:
  bench/drain.py --scale). Tokens are taken for a whole batch before it starts,
  so the rate holds as before.
"""

from __future__ import annotations

import contextvars
import enum
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from vfile.journal.records import DeferredEntry, JournalError

log = logging.getLogger(__name__)

#: scans the drain runs at once. 8 keeps clamd (MaxThreads 8 by default) busy and the
#: group commit batching completions: bench/drain.py --quick measured a drain/clamdscan
#: time ratio of about 1.7-2.1 with 4 and about 1.0 with 8. The pool runs 16 scans at
#: once: the other 8 stay for on-open scans.
DEFAULT_CONCURRENCY = 8
DEFAULT_FILES_PER_S = 500.0
DEFAULT_BYTES_PER_S = 256.0 * 1024 * 1024
DEFAULT_BATCH = 64
DEFAULT_LEASE = 120.0
DEFAULT_SCAN_DEADLINE = 30.0
#: recent latency above this multiple of the long-run latency halves the rate.
BACKOFF_FACTOR = 3.0
#: weights of the recent and of the long-run latency averages (per scan)
FAST_WEIGHT = 0.2
SLOW_WEIGHT = 0.02
IDLE_POLL = 0.5
#: seconds between claims while the journal's state disk fails
JOURNAL_RETRY = 1.0
#: entries in flight (scanning or settling) per scan slot
SETTLING_FACTOR = 4
#: batches scanned at once with `resolve_batch`. The lane is free once a batch's replies
#: are in (its files settle after), so the next batch goes out while they do
LANES = 1
#: files per batch with `resolve_batch`. bench/drain.py --scale --files 20000, one after
#: the other (branch dr21, README "Drain"): 2 lanes x 16, 1 x 32 and 1 x 64 drained 3,424,
#: 3,533 and 3,804 files/s with 0.232, 0.192 and 0.172 ms of server CPU per file, and
#: clamd's CPU per file the same (0.24, 0.24, 0.23 ms): fewer, larger batches cost the
#: server less per file (a claim, a send, a wake-up and a completion per batch) and cost
#: clamd nothing more (bench/clamd_access.py). At most `BATCH_BYTES` queue in clamd at
#: once (2 MiB before, with 2 lanes)
BATCH_FILES = 64
#: a batch holds more than one file only up to this many bytes (as journaled): its scans
#: all sit in the appliance's queue at once, where on-open scans wait behind them. A
#: larger file is scanned alone, as without batches (`concurrency` such scans at once)
BATCH_BYTES = 1 << 20

#: Set by the drain around each `resolve`: call it when the scan is over (see the
#: module docstring); calling it again, or not at all, is harmless.
scan_done: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar(
    "drain_scan_done", default=None)


#: the resolver's detail for a file a writer still holds (its intent is pending): released
#: and retried like an error, but counted apart (`done["writing"]`), since it is no failure
WRITING = "still being written"


class Outcome(enum.StrEnum):
    CLEAN = "clean"
    INFECTED = "infected"
    GONE = "gone"
    ERROR = "error"
    #: the profile's oversize rule forbids a verdict from a partial scan: the entry stays,
    #: listed (poisoned) with the reason, instead of being retried until poisoned
    UNSCANNABLE = "unscannable"


@dataclass(frozen=True, slots=True)
class Resolution:
    outcome: Outcome
    nbytes: int = 0
    detail: str = ""


class JournalQueue(Protocol):
    async def claim(self, n: int, *, lease: float) -> list[DeferredEntry]: ...
    async def release(self, path: str, seq: int, error: str, *,
                      poison: bool = False) -> None: ...


Resolve = Callable[[DeferredEntry], Awaitable[Resolution]]
ResolveBatch = Callable[[list[DeferredEntry]], Awaitable[list[Resolution]]]


class _Slot:
    """A token of `semaphore` held by a scan: freed once, by `scan_done` or at its end."""

    def __init__(self, semaphore: trio.Semaphore) -> None:
        self._semaphore = semaphore
        self._freed_at: float | None = None

    def free(self) -> None:
        if self._freed_at is None:
            self._freed_at = trio.current_time()
            self._semaphore.release()

    @property
    def freed_at(self) -> float:
        """When the scan was over (its latency's end; now if not yet freed)."""
        return trio.current_time() if self._freed_at is None else self._freed_at


class TokenBucket:
    """Tokens refill at `rate`/s up to `burst`; `take` waits for enough tokens.

    Taking more than `burst` at once (one large file) is allowed: it empties
    the bucket into debt, which the refill pays back before anyone else runs.
    """

    def __init__(self, rate: float, burst: float, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._stamp = clock()
        self._changed = trio.Event()  # `retune`: a waiting `take` looks again

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def delay_for(self, amount: float) -> float:
        """Seconds until `amount` may be taken (0 if now). Pure given the clock."""
        if self.rate <= 0 or math.isinf(self.rate):
            return 0.0
        self._refill()
        need = min(amount, self.burst) - self._tokens
        return max(0.0, need / self.rate)

    def retune(self, rate: float, burst: float) -> None:
        """A new rate: a `take` waiting at the old one waits again at this one."""
        self._refill()  # the time so far at the old rate
        self.rate, self.burst = rate, burst
        self._changed.set()

    async def take(self, amount: float) -> None:
        # Only the drain loop takes tokens, so nobody can spend the refill while we
        # wait. A wait computed at a rate set by mistake (0.001 files/s: 1,000 s) ends
        # when the rate is set again (a28: it slept on through the correction).
        while (delay := self.delay_for(amount)) > 0:
            self._changed = trio.Event()
            with trio.move_on_after(delay):
                await self._changed.wait()
        self._refill()
        self._tokens -= amount


class Drain:
    def __init__(self, queue: JournalQueue, resolve: Resolve, *,
                 ready: Callable[[], bool],
                 concurrency: int = DEFAULT_CONCURRENCY,
                 files_per_s: float = DEFAULT_FILES_PER_S,
                 bytes_per_s: float = DEFAULT_BYTES_PER_S,
                 batch: int = DEFAULT_BATCH, lease: float = DEFAULT_LEASE,
                 scan_deadline: float = DEFAULT_SCAN_DEADLINE,
                 resolve_batch: ResolveBatch | None = None,
                 batchable: Callable[[], bool] = lambda: True) -> None:
        self._queue = queue
        self._resolve = resolve
        self._resolve_batch = resolve_batch
        self._batchable = batchable
        self._concurrency = concurrency
        self._lanes = trio.Semaphore(LANES)
        self._lanes_settling = trio.Semaphore(LANES * SETTLING_FACTOR)
        self._ready = ready
        self._slots = trio.Semaphore(concurrency)
        self._inflight = trio.Semaphore(concurrency * SETTLING_FACTOR)
        self._files = TokenBucket(files_per_s, max(1.0, files_per_s), trio.current_time)
        self._bytes = TokenBucket(bytes_per_s, max(1.0, bytes_per_s), trio.current_time)
        self._configured_files_per_s = files_per_s
        self._batch = batch
        #: files per batch now: BATCH_FILES, down to 1 after a batch that failed whole
        #: (an appliance answering in turn may not get through 64 within the deadline),
        #: doubling back with each success
        self.batch_files = BATCH_FILES
        self._lease = lease
        self._scan_deadline = scan_deadline
        self._paused = False
        self._kick = trio.Event()
        self._fast_latency = 0.0  # recent average (EWMA); 0: no sample yet
        self._slow_latency = 0.0  # long-run average: the baseline
        self._last_backoff = -math.inf
        self.done: dict[Outcome, int] = dict.fromkeys(Outcome, 0)
        self.writing = 0  # ERROR results that were only WRITING (not in `done`)
        self.bytes_done = 0
        self.in_flight = 0
        self.last_error = ""

    # --- control --------------------------------------------------------
    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        self.kick()

    def kick(self) -> None:
        """Look at the journal now rather than at the next poll."""
        self._kick.set()

    def set_rate(self, files_per_s: float | None = None, bytes_per_s: float | None = None) -> None:
        if files_per_s is not None:
            self._configured_files_per_s = files_per_s
            self._files.retune(files_per_s, max(1.0, files_per_s))
        if bytes_per_s is not None:
            self._bytes.retune(bytes_per_s, max(1.0, bytes_per_s))

    @property
    def paused(self) -> bool:
        return self._paused

    def statistics(self) -> dict[str, Any]:
        return {"paused": self._paused, "in_flight": self.in_flight,
                "batch_files": self.batch_files,
                "files_per_s": self._files.rate, "bytes_per_s": self._bytes.rate,
                "configured_files_per_s": self._configured_files_per_s,
                "done": {**{k.value: v for k, v in self.done.items()},
                         "writing": self.writing},
                "bytes_done": self.bytes_done, "last_error": self.last_error}

    # --- the loop -------------------------------------------------------
    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        # The next batch is claimed while this one is scanned: a claim is a journal
        # transaction, and waiting for it between batches left every scan slot idle.
        send, batches = trio.open_memory_channel[list[DeferredEntry]](0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._claim_ahead, send)
            async for entries in batches:
                if self._resolve_batch is not None and self._batchable():
                    await self._start_batches(nursery, entries)
                    continue
                for entry in entries:
                    # Window opened, appliance lost or paused mid-batch: hold the rest
                    # of the batch (still leased) until we may go on. Releasing it
                    # instead would count a failed attempt against each entry, with
                    # backoff, and after `max_attempts` pauses poison it: a file
                    # never scanned because of windows. A lease that expires while we
                    # wait is harmless: only this drain claims, and `complete` goes
                    # by seq.
                    while self._paused or not self._ready():
                        await self._idle()
                    size = entry.identity.size if entry.identity else 0
                    await self._files.take(1)
                    await self._bytes.take(size)
                    await self._inflight.acquire()
                    await self._slots.acquire()
                    nursery.start_soon(self._one, entry)

    async def _start_batches(self, nursery: trio.Nursery, entries: list[DeferredEntry]) -> None:
        """Hand `entries` to `_run_batch` tasks, a few at a time (module docstring)."""
        while entries:
            while self._paused or not self._ready():  # as in `serve`: hold the rest
                await self._idle()
            # Never more than the bucket's burst at once: the count done stays within it.
            n = nbytes = 0
            for entry in entries[:max(1, min(self.batch_files, int(self._files.burst)))]:
                size = entry.identity.size if entry.identity else 0
                if n and nbytes + size > BATCH_BYTES:
                    break  # large files go a few at a time (see BATCH_BYTES)
                n, nbytes = n + 1, nbytes + size
            batch, entries = entries[:n], entries[n:]
            await self._files.take(n)
            await self._bytes.take(nbytes)
            if n == 1:  # a large file (or a slow rate): scanned alone, as without batches
                await self._inflight.acquire()
                await self._slots.acquire()
                nursery.start_soon(self._one, batch[0])
                continue
            await self._lanes_settling.acquire()
            await self._lanes.acquire()
            nursery.start_soon(self._run_batch, batch)

    async def _run_batch(self, entries: list[DeferredEntry]) -> None:
        """Resolve a batch; every entry not resolved is released here, exactly once."""
        assert self._resolve_batch is not None
        self.in_flight += len(entries)
        started = trio.current_time()
        lane = _Slot(self._lanes)
        scan_done.set(lane.free)  # this task's own context
        results: list[Resolution] = []
        detail = "no resolution"
        failed: list[tuple[DeferredEntry, Resolution]] = []
        try:
            try:
                with trio.move_on_after(self._scan_deadline) as scope:
                    results = await self._resolve_batch(entries)
                if scope.cancelled_caught:
                    results = []
                    detail = f"no verdict within {self._scan_deadline:g}s"
            except Exception as err:  # a resolver bug must not stop the drain
                log.exception("drain: resolving a batch of %d failed", len(entries))
                detail = f"{type(err).__name__}: {err}"
            finally:
                lane.free()
                self._lanes_settling.release()
            if len(results) != len(entries):
                results = [Resolution(Outcome.ERROR, detail=detail)] * len(entries)
            # Counted before `in_flight` drops, with no checkpoint in between: whoever sees
            # the journal empty and nothing in flight sees every resolved file counted.
            nbytes = 0
            for entry, result in zip(entries, results, strict=True):
                if result.outcome in (Outcome.ERROR, Outcome.UNSCANNABLE):
                    failed.append((entry, result))
                else:
                    self._count(result)
                    nbytes += result.nbytes
        finally:
            self.in_flight -= len(entries)
        if len(failed) < len(entries):
            # The appliance's latency for the batch, per file of its average size.
            self._adapt(lane.freed_at - started, nbytes // len(entries))
            self.batch_files = min(BATCH_FILES, 2 * self.batch_files)
        else:  # the same batch would fail the same way: one file at a time, then grow
            self.batch_files = 1
        async with trio.open_nursery() as releases:  # releases linger: let them share
            for entry, result in failed:
                releases.start_soon(self._settle, entry, result, None)

    async def _claim_ahead(self, send: trio.MemorySendChannel[list[DeferredEntry]]) -> None:
        """Claim batches while we may run, each handed over once the one before is taken:
        one batch (leased) waits while the other is scanned."""
        async with send:
            while True:
                if self._paused or not self._ready():
                    await self._idle()
                    continue
                try:
                    entries = await self._queue.claim(self._claim_size(), lease=self._lease)
                except JournalError as err:
                    # The state disk failed (EIO, full): the drain waits, the mount
                    # serves on; the entries stay in the journal for the next claim.
                    self.last_error = f"journal: {err}"
                    log.warning("drain: claiming failed, retrying in %gs: %s",
                                JOURNAL_RETRY, err)
                    await trio.sleep(JOURNAL_RETRY)
                    continue
                if not entries:
                    await self._idle()
                    continue
                await send.send(entries)

    def _claim_size(self) -> int:
        """The batch size, smaller at a slow rate: the batch scanned and the one claimed
        ahead must both be done well within their lease (else their entries would be
        claimable again while still waiting here, and scanned twice)."""
        rate = self._files.rate
        if rate <= 0 or math.isinf(rate):
            return self._batch
        return max(1, min(self._batch, int(rate * self._lease / 4)))

    async def _idle(self) -> None:
        with trio.move_on_after(IDLE_POLL):
            await self._kick.wait()
        self._kick = trio.Event()

    async def _one(self, entry: DeferredEntry) -> None:
        """Resolve one entry. `resolve` completes the entry on a verdict or when
        the file is gone; every error path releases it here, exactly once."""
        self.in_flight += 1
        started = trio.current_time()
        slot = _Slot(self._slots)
        scan_done.set(slot.free)  # this task's own context: only its resolve sees it
        try:
            with trio.move_on_after(self._scan_deadline) as scope:
                result = await self._resolve(entry)
            if scope.cancelled_caught:
                result = Resolution(Outcome.ERROR,
                                    detail=f"no verdict within {self._scan_deadline:g}s")
        except Exception as err:  # a resolver bug must not stop the drain
            log.exception("drain: resolving %r failed", entry.path)
            result = Resolution(Outcome.ERROR, detail=f"{type(err).__name__}: {err}")
        finally:
            self.in_flight -= 1
            slot.free()
            self._inflight.release()
        # The appliance's latency: until the scan was over, not the journal write.
        await self._settle(entry, result, slot.freed_at - started)

    async def _settle(self, entry: DeferredEntry, result: Resolution,
                      latency: float | None) -> None:
        """Count a resolution; release the entry if it was not resolved."""
        try:
            if result.outcome is Outcome.ERROR:
                self.last_error = result.detail
                await self._queue.release(entry.path, entry.seq, result.detail)
            elif result.outcome is Outcome.UNSCANNABLE:
                await self._queue.release(entry.path, entry.seq, result.detail, poison=True)
        except JournalError as err:
            # Not released: the entry stays leased, claimable again when the lease ends.
            log.warning("drain: releasing %r failed: %s", entry.path, err)
        if result.outcome not in (Outcome.ERROR, Outcome.UNSCANNABLE) and latency is not None:
            self._adapt(latency, result.nbytes)
            self.batch_files = min(BATCH_FILES, 2 * self.batch_files)
        self._count(result)

    def _count(self, result: Resolution) -> None:
        if result.outcome is Outcome.ERROR and result.detail == WRITING:
            self.writing += 1
        else:
            self.done[result.outcome] += 1
        self.bytes_done += result.nbytes

    def _adapt(self, latency: float, nbytes: int) -> None:
        """AIMD on the file rate: halve when latency climbs, creep back when not.

        Latency is compared per MiB-ish unit of work, so one large file taking
        longer than a small one is not mistaken for an appliance in trouble. The
        baseline is a slow moving average, not the best latency ever seen (one
        lucky scan made every later one look slow, and the rate collapsed to its
        floor: issue 20 measured 160 files/s against a rate of 500); and the rate
        is halved at most once per recent latency, not once per slow completion
        (8 completions in flight would otherwise divide it by 256)."""
        latency /= 1 + nbytes / (1024 * 1024)
        if not self._slow_latency:
            self._fast_latency = self._slow_latency = latency
        self._fast_latency += FAST_WEIGHT * (latency - self._fast_latency)
        self._slow_latency += SLOW_WEIGHT * (latency - self._slow_latency)
        floor = max(1.0, self._configured_files_per_s / 64)
        now = trio.current_time()
        if self._fast_latency > BACKOFF_FACTOR * max(self._slow_latency, 0.005):
            if now - self._last_backoff >= self._fast_latency:
                self._last_backoff = now
                self._files.rate = max(floor, self._files.rate / 2)
        else:
            self._files.rate = min(self._configured_files_per_s,
                                   self._files.rate + self._configured_files_per_s / 32)
