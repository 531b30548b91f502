"""Liveness evidence that is not a scan timeout: a cheap probe when a scan is overdue.

A scan timeout cannot tell a hung appliance from a slow scan, so detection
by timeouts is bounded below by the appliance's healthy tail (a slow scan of
clamd's, a caching appliance waiting on Redis). So once a scan is overdue
(past twice the model's expected time, or its quantile if sooner), the pool
asks the appliance a question
that costs it nothing, on a fresh connection, with a tight deadline of its own:

- answered: the appliance is alive, the scan is slow (a large archive, a
  caching appliance waiting on Redis, one of clamd's slow scans). It may
  wait up to the configured attempt timeout (`extend_to`), and is asked
  again every `recheck` while it waits, so a hang that starts meanwhile is
  still found by the next probe;
- not answered within its deadline (or refused, reset): overdue scans and a
  silent appliance: it is hung, the pool opens its breaker at once.

Detection is then the overdue point plus the probe's deadline, and the
probe's deadline follows the probe's own tail, not the scans'; but a silent
probe is no hang before the scan is `safety` times its quantile old (the
scans' timeout without the recent-peak term): a delay of every reply, probes
included, 3x the scans' estimate (a loaded appliance, a slow link) is slow,
not hung, and a probe's own deadline, learnt on replies cheaper than a scan,
would read it as a hang.

One probe at a time per appliance: every overdue scan waits on the same one
(`check`). A reply to any request sent after the scan was (another scan's
verdict) is evidence too, and costs no probe (once the probes' own model has
its first samples; the health probes of `Pool.serve` feed it too). A probe given up because its
caller stopped waiting (its scan got its verdict) settles as alive when a
reply arrived meanwhile, else as unknown: waiters then ask again.

Once a scan is overdue its own timeout no longer applies: the probes
decide (it may wait up to `extend_to` while they answer).

The probe's deadline: the probe's own latency model (`LatencyModel` at size
0, fed with answered probes) times the safety factor, and at least
`PEAK_MARGIN` times the probe's fit plus the slowest recent pause (the
probes' own, or the scans': a pause of the whole appliance, a GC or a
stalled host, delays a PING as much as a scan, and a pause the appliance
has shown recently is waited out by the probe too; scans that waited on an
answered probe do not teach that peak, see `LatencyModel.observe(pause=...)`).
Until the probe model has samples, the scans' own attempt timeout for a
zero-byte request. Never below the operator's `adaptive_floor` (the shortest
silence taken for a hang), never above `adaptive_cap`.

A probe deadline noticed late (this process was paused) is no evidence.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from vfile.scanner.clamd import ClamdClient
from vfile.scanner.embedded import EmbeddedClient
from vfile.scanner.icap import IcapClient
from vfile.scanner.latency import (
    MIN_SAMPLES,
    PEAK_MARGIN,
    Adaptive,
    LatencyModel,
    attempt_timeout,
)
from vfile.scanner.verdict import ApplianceError, Outcome

log = logging.getLogger(__name__)

#: a scan is overdue at this multiple of the model's expected time (or its quantile, if
#: sooner): the earlier the question, the earlier the answer; a probe costs the
#: appliance nothing and one probe answers for every scan overdue meanwhile
OVERDUE_FACTOR = 2.0
#: ... but not before this (on a quiet host a scan takes about a millisecond)
OVERDUE_FLOOR = 0.010
#: a probe deadline handled this much later than due (or a quarter of the deadline,
#: if more) means this process was paused: no evidence
STALL = 0.010
#: a scan let wait on a probe's answer is probed again every this many probe deadlines
RECHECK = 4


@dataclass(slots=True, eq=False)
class Flight:
    """One attempt in flight on an appliance (collective detection, liveness watch)."""

    started: float
    #: when it counts as late (the model's quantile), None without a model
    late_after: float | None
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    evicted: bool = False
    #: evicted as late: already recorded as a failure
    counted: bool = False
    #: let wait past its timeout: the appliance answered a probe while it was overdue
    extended: bool = False
    #: when it is overdue (the liveness watch asks); None: never watched
    overdue_after: float | None = None
    #: a silent probe is no hang before this (after `started`): the scan's own
    #: quantile times the safety factor
    silent_after: float = 0.0

    def late(self, now: float) -> bool:
        return self.late_after is not None and now - self.started >= self.late_after

    def overdue(self, now: float) -> bool:
        return self.overdue_after is not None and now - self.started >= self.overdue_after

    def cut(self, *, counted: bool) -> None:
        """Stop waiting (`counted`: recorded as a failure by whoever cut it)."""
        self.evicted, self.counted = True, counted
        self.scope.cancel()


@dataclass(slots=True, eq=False)
class _Round:
    """One probe in flight (or just settled)."""

    started: float
    done: trio.Event = field(default_factory=trio.Event)
    #: True: answered; False: no answer in time (hung); None: unknown (ask again)
    alive: bool | None = None


class Liveness:
    """Per appliance: the probe model, the probe in flight, and its counters."""

    def __init__(self, client: ClamdClient | IcapClient | EmbeddedClient) -> None:
        self.client = client
        self.model = LatencyModel()
        self._round: _Round | None = None
        #: the latest send time of a request that got a reply (scan or probe)
        self.answered_sent = float("-inf")
        self.probes = 0
        self.unanswered = 0
        self.extended = 0  # scans let wait past their timeout on a probe's word
        self.last_deadline: float | None = None

    def answered(self, sent: float) -> None:
        """A request sent at `sent` got a reply: the appliance was alive after `sent`."""
        self.answered_sent = max(self.answered_sent, sent)

    def deadline(self, scans: LatencyModel, knobs: Adaptive) -> float:
        """How long a probe may take before its silence means hung (module docstring)."""
        fit = self.model.expected(0)
        if fit is None:
            return attempt_timeout(scans, 0, knobs, knobs.cap)
        q = self.model.quantile(0) or fit
        pause = max(scans.peak, self.model.peak)
        return min(knobs.cap, max(knobs.floor, knobs.safety * q, PEAK_MARGIN * (fit + pause)))

    async def train(self, limit: float) -> None:
        """Until the probe model has its first samples, one probe before a scan (a
        millisecond, for the first few scans of an appliance; at most `limit`, and an
        unanswered one is no evidence): probes are otherwise only sent when a scan is
        overdue, rare on a quiet appliance, and a deadline without samples can only be
        the scans' own timeout, which a scan-specific slowness (the very thing the
        probe is to tell apart) drives up."""
        if self.model.samples >= MIN_SAMPLES:
            return
        started = trio.current_time()
        with trio.move_on_after(limit), contextlib.suppress(ApplianceError):
            await self._ask()
            now = trio.current_time()
            self.model.observe(0, now - started, now)
            self.answered(started)

    async def _ask(self) -> None:
        if isinstance(self.client, IcapClient):
            await self.client.fetch_options()
        else:
            await self.client.ping()

    async def check(self, since: float, deadline: float) -> bool | None:
        """Whether the appliance answered anything sent at or after `since`; probes (or
        joins the probe in flight) when it did not yet."""
        if self.answered_sent >= since and self.model.samples >= MIN_SAMPLES:
            return True  # (until the probes' own model is trained, probe to train it)
        current = self._round
        if current is not None and current.started >= since:
            if not current.done.is_set():
                await current.done.wait()
            if current.alive is not None:
                return current.alive
        return await self._probe(deadline)

    async def _probe(self, deadline: float) -> bool | None:
        started = trio.current_time()
        current = self._round = _Round(started)
        self.probes += 1
        self.last_deadline = deadline
        try:
            with trio.move_on_after(deadline) as cs:
                try:
                    await self._ask()
                except ApplianceError as err:
                    log.debug("liveness probe to %s: %s", self.client.url, err)
                    current.alive = False
                    self.unanswered += 1
                    return False
            now = trio.current_time()
            if cs.cancelled_caught:
                if now - (started + deadline) > max(STALL, deadline / 4):
                    return None  # handled late: this process was paused
                current.alive = False
                self.unanswered += 1
                return False
            self.model.observe(0, now - started, now)
            self.answered(started)
            current.alive = True
            return True
        finally:
            if current.alive is None and self.answered_sent >= started:
                current.alive = True  # given up, but something else was answered meanwhile
            current.done.set()

    async def watched(self, flight: Flight, scan: Awaitable[tuple[Outcome, str]],
                      extend_to: float | None, deadline: Callable[[], float],
                      hung: Callable[[float], None]) -> tuple[Outcome, str]:
        """`scan`, watched by `_watch` once it is overdue (no watch without a model, or
        without `extend_to`: a background scan's slowness is its own)."""
        if flight.overdue_after is None or extend_to is None:
            return await scan
        error: ApplianceError | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch, flight, extend_to, deadline, hung)
            try:
                result = await scan
            except ApplianceError as err:
                error = err  # raised below: out of the nursery, not in an exception group
            finally:
                nursery.cancel_scope.cancel()
        if error is not None:
            raise error
        return result

    async def _watch(self, flight: Flight, extend_to: float, deadline_of: Callable[[], float],
                     hung: Callable[[float], None]) -> None:
        """Once `flight` is overdue, ask whether the appliance is alive: answered, the
        scan may wait up to `extend_to` (asked again every `RECHECK` deadlines meanwhile);
        unanswered, `hung(deadline)` (the pool stops the overdue scans, opens the breaker)."""
        assert flight.overdue_after is not None
        await trio.sleep_until(flight.started + flight.overdue_after)
        # From here the probes decide, not the scan's own timeout (which, below the
        # scans' healthy tail, would read a slow scan as a hang).
        flight.scope.deadline = max(flight.scope.deadline, flight.started + extend_to)
        since = flight.started
        while True:
            # A probe that slows down with the scans (every reply 3x late: a loaded
            # appliance, a slow link) is no hang within what the scan itself may take.
            not_before = flight.started + flight.silent_after
            deadline = max(deadline_of(), not_before - trio.current_time())
            alive = await self.check(since, deadline)
            if alive is False and trio.current_time() < not_before:
                since = trio.current_time()  # a shorter probe of another scan's: ask anew
                continue
            if alive is False:
                hung(deadline)
                return
            if alive is None:
                continue  # a probe given up or noticed late: ask again
            if not flight.extended:
                flight.extended = True
                self.extended += 1
            since = trio.current_time()
            await trio.sleep(RECHECK * deadline)

    def statistics(self) -> dict[str, object]:
        fit = self.model.expected(0)
        return {"probes": self.probes, "probes_unanswered": self.unanswered,
                "extended": self.extended,
                "probe_estimate_ms": None if fit is None else round(fit * 1000, 3),
                "probe_peak_ms": round(self.model.peak * 1000, 3),
                "probe_deadline_ms": (None if self.last_deadline is None
                                      else round(self.last_deadline * 1000, 3))}
