"""The appliance pool: priority order, deadlines, retries, breakers, health probes.

Invariants:
- `scan_fd` never raises for appliance trouble: it returns `Verdict.error`.
  It never extends the caller's deadline: every attempt runs inside the
  caller's cancel scope, bounded further by the per-attempt timeout; the
  number of attempts is bounded by (1 + retries) per appliance.
- An appliance is skipped without any I/O when its breaker is open or its
  last health probe failed; with none left, the error comes back at once.
- Health probes (clamd VERSION, ICAP OPTIONS) run in `serve()`, in the
  caller's nursery, and also learn each appliance's signature version.
- An appliance that answers with a well-formed error (a size limit, say) is
  healthy: that counts as a breaker success, and the next appliance is tried.

Adaptive mode (`Adaptive.enabled`, the default; see scanner/latency.py for the model):
- Attempt timeout: each appliance's latency model (fed with successful scans)
  sets it per size; the configured attempt timeout is the cold-start value. A
  retry on the same appliance doubles it (TCP's back-off).
- Hedge: when an attempt passes the model's high quantile and another appliance
  is usable, the same scan goes there too (within the hedge budget); the first
  clean/infected verdict wins, the loser is cancelled and counted as neither
  success nor failure.
- Collective detection: when an attempt times out, every other attempt waiting
  on that appliance that is already late is cancelled (its cancel scope) and
  counted as a failure too, so the breaker opens on the evidence of all of
  them at once; once it is open every attempt still waiting there is
  cancelled and goes to the next appliance or the caller's fail mode.
- Liveness (scanner/liveness.py): an attempt past its quantile probes the
  appliance (PING / OPTIONS on a fresh connection, one probe shared by all).
  Answered: it may wait up to the configured attempt timeout. Unanswered within
  the probe's own deadline: hung, `_hung` stops the overdue attempts and opens
  the breaker at once (half-open again after `RETRIAL` probe deadlines).
- Half-open by probe: while `serve()` runs, a half-open breaker's first trial is a
  liveness probe of the pool's own (`_retrials`), so no open waits the detection time
  as a trial; until one is answered scans skip the appliance; unanswered, the breaker
  opens again (doubling the retry); answered, the next request is the trial.
- A timeout noticed much later than it was due (this process was paused, not
  the appliance) is no evidence: neither a failure nor a trigger.
- `scan_fd(count_timeouts=False)` (the drain's slow scans of large files): a
  timeout is no evidence the appliance is down, so it is not recorded against
  the breaker (nor evicts others); refusals, resets and bad replies still are.
  Such a scan gets the caller's timeout as it is: no adaptive timeout, no hedge.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence

import trio

from vfile.scanner import batch, scanpath
from vfile.scanner.appliance import Appliance, EmbeddedClient, client_for
from vfile.scanner.breaker import Breaker, State
from vfile.scanner.icap import IcapClient
from vfile.scanner.latency import Adaptive, HedgeBudget, attempt_timeout
from vfile.scanner.liveness import OVERDUE_FACTOR, OVERDUE_FLOOR, Flight
from vfile.scanner.verdict import ApplianceError, Outcome, Verdict

log = logging.getLogger(__name__)

#: a timeout handled this much later than due (or a quarter of the attempt timeout,
#: if more) means this process was paused: no evidence against the appliance
STALL = 0.010
#: a training probe (before the first scans, scanner/liveness.py) waits at most this many
#: adaptive floors
TRAIN_LIMIT = 4
#: after a probe found an appliance hung, its breaker is half-open again after this many
#: probe deadlines
RETRIAL = 8


class Pool:
    def __init__(self, urls: Sequence[str | EmbeddedClient], *,  # embedded: scanner/embedded.py
                 attempt_timeout: float = 1.0, retries: int = 1,
                 breaker_failures: int = 3, breaker_cooldown: float = 5.0,
                 probe_interval: float = 1.0, max_concurrency: int = 16,
                 adaptive: Adaptive | None = None) -> None:
        if isinstance(urls, str):
            urls = [urls]
        if not urls:
            raise ValueError("no appliance given (e.g. --appliance clamd:///run/clamav/clamd.ctl)")
        if attempt_timeout <= 0 or retries < 0 or probe_interval <= 0 or max_concurrency < 1:
            raise ValueError("attempt_timeout and probe_interval must be > 0, retries >= 0, "
                             "max_concurrency >= 1")
        self.attempt_timeout = attempt_timeout
        self.retries = retries
        self.probe_interval = probe_interval
        self.adaptive = Adaptive() if adaptive is None else adaptive
        self._budget = HedgeBudget(self.adaptive.hedge_budget if self.adaptive.enabled else 0.0)
        self._apps = [
            Appliance(c.url, c, Breaker(breaker_failures, breaker_cooldown))
            for c in (client_for(target) for target in urls)
        ]
        self._slots = trio.Semaphore(max_concurrency)
        self._changed = trio.Event()
        self._quiet = False
        self._serving = False  # `serve` runs: half-open trials by probe (`_retrials`)

    # --- state, no I/O (public: scanner/batch.py runs its flights with these) ---

    def usable(self, app: Appliance) -> bool:
        now = trio.current_time()
        return app.healthy and app.breaker.would_allow(now) and not self._awaits_probe(app, now)

    def _awaits_probe(self, app: Appliance, now: float) -> bool:
        """Half-open, and its first trial is the pool's probe (`_retrials`), not a scan."""
        return (self._serving and self.adaptive.enabled and not app.probed
                and app.breaker.state(now) is State.HALF_OPEN)

    def first_usable(self) -> Appliance | None:
        """The appliance a scan would try first now (priority order), if any."""
        return next((a for a in self._apps if self.usable(a)), None)

    def available(self) -> bool:
        return self.first_usable() is not None

    def signature_version(self) -> str:
        return next((a.sig_version for a in self._apps if self.usable(a)), "")

    def statistics(self) -> list[dict[str, object]]:
        now = trio.current_time()
        return [a.statistics(now, self.adaptive, self.attempt_timeout) for a in self._apps]

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_available(self) -> None:
        while not self.available():
            # breakers also change state with time (open → half-open), so look again
            with trio.move_on_after(self.probe_interval):
                await self._changed.wait()

    def record_failure(self, app: Appliance, reason: str, count: int = 1, *,
                       trip: float | None = None) -> None:
        """`count` failures; `trip`: open the breaker now whatever the count, half-open
        after `trip` seconds, doubled per trip since a success (a liveness probe's
        evidence, see `_hung`)."""
        was = self.usable(app)
        closed = app.breaker.state(trio.current_time()) is State.CLOSED
        app.errors += count
        app.last_error = reason
        app.probed = False  # (re)opened: its next half-open starts with a probe
        for _ in range(count):
            app.breaker.record_failure(trio.current_time())
        if trip is not None:
            app.breaker.trip(trio.current_time(), trip)
        log.debug("appliance %s failed (x%d): %s", app.name, count, reason)
        if closed and app.breaker.state(trio.current_time()) is not State.CLOSED:
            app.breaker_opened()
        if was and not self.usable(app):
            log.warning("appliance %s unavailable: %s", app.name, reason)
            # Nothing still waiting there can succeed in time (a probe or a timeout
            # said so): background scans included, which have no model to go by.
            # (Adaptive off is the classic pool: each attempt waits out its own timer.)
            for f in app.flights if self.adaptive.enabled else ():
                if not f.evicted:
                    f.cut(counted=False)
            self._notify()

    def record_success(self, app: Appliance) -> None:
        was = self.usable(app)
        app.breaker.record_success()
        if not was and self.usable(app):
            log.warning("appliance %s available again", app.name)
            self._notify()

    # --- health probes -----------------------------------------------------

    async def _probe(self, app: Appliance) -> None:
        now = trio.current_time()
        if app.breaker.state(now) is State.OPEN or self._awaits_probe(app, now) \
                or not app.breaker.allow(now):
            return  # cooling down, or the half-open trial is someone else's
        reason = ""
        try:
            with trio.move_on_after(self.attempt_timeout) as cs:
                version = await app.client.probe()
                # a request that costs the appliance nothing: the liveness probes' model
                app.live.model.observe(0, trio.current_time() - now, trio.current_time())
        except ApplianceError as err:
            reason = str(err)
        else:
            if cs.cancelled_caught:
                reason = f"no probe reply within {self.attempt_timeout:g}s"
        if reason:
            was = self.usable(app)
            app.healthy = False
            self.record_failure(app, f"probe: {reason}")
            if was:
                # Logged here: `record_failure` sees the appliance already unhealthy, so the
                # one "unavailable" line an operator needs was never written.
                log.warning("appliance %s unavailable: probe: %s", app.name, reason)
                self._notify()
            return
        if version != app.sig_version and app.sig_version:
            log.info("appliance %s signature version %s -> %s", app.name, app.sig_version, version)
        app.sig_version = version
        was = self.usable(app)
        app.healthy = True
        app.breaker.record_success()  # not `record_success`: it would judge `was` too late
        if not was and self.usable(app):
            log.warning("appliance %s available again", app.name)
            self._notify()

    async def _probe_round(self) -> None:
        async with trio.open_nursery() as nursery:
            for app in self._apps:
                nursery.start_soon(self._probe, app)

    def set_quiet(self, quiet: bool) -> None:
        """While quiet (a quiesce window), health probes contact no appliance."""
        self._quiet = quiet
        self._notify()  # half-open trials waited for the window's end (`_retrials`)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Probe every appliance now and every probe_interval, and half-open breakers'
        trials as they fall due (`_retrials`); runs until cancelled."""
        async with trio.open_nursery() as nursery:
            self._serving = True
            try:
                nursery.start_soon(self._retrials)
                await self._probe_round()  # each probe is bounded by attempt_timeout
                task_status.started()
                while True:
                    await trio.sleep(self.probe_interval)
                    if not self._quiet:
                        await self._probe_round()
            finally:
                self._serving = False

    async def _retrials(self) -> None:
        """A half-open breaker's first trial, as soon as it falls due (not in a window):
        a liveness probe, so that no open waits on a trial (module docstring)."""
        async with trio.open_nursery() as nursery:
            while True:
                now = trio.current_time()
                for app in self._apps:
                    if not self._quiet and self._awaits_probe(app, now) \
                            and app.breaker.allow(now):
                        nursery.start_soon(self._retry, app)
                due = [t for a in self._apps if not a.probed
                       and (t := a.breaker.half_open_at()) is not None and t > now]
                with trio.move_on_at(min(due, default=now + self.probe_interval)):
                    await self._changed.wait()

    async def _retry(self, app: Appliance) -> None:
        """The half-open trial (taken by the caller): a liveness probe. Answered: the
        next request is the trial; silent: open again, as `_hung` does."""
        deadline = app.live.deadline(app.model, self.adaptive)
        alive = None
        try:
            alive = await app.live.check(trio.current_time(), deadline)
        finally:
            if alive is not False:
                app.breaker.release()
        app.probed = bool(alive)
        if alive is False:
            self.record_failure(app, "half-open: no reply to a liveness probe within "
                                f"{deadline:.3g}s", trip=RETRIAL * deadline)
        self._notify()  # `_retrials` looks again: the next trial, or scans may go

    # --- scanning ----------------------------------------------------------

    def timeout_for(self, app: Appliance, nbytes: int, configured: float | None = None) -> float:
        """An attempt's timeout on `app` for `nbytes` (adaptive; `configured`: cold start)."""
        return attempt_timeout(app.model, nbytes, self.adaptive,
                               self.attempt_timeout if configured is None else configured)

    def _evict(self, app: Appliance, origin: Flight, now: float) -> None:
        """Collective detection: `origin` timed out on `app`. Every other attempt there
        that is already late stops waiting and is a failure too; once the breaker is
        open, every attempt still waiting there stops (it cannot succeed in time)."""
        others = [f for f in app.flights if f is not origin and not f.evicted]
        late = [f for f in others if f.late(now)]
        for f in late:
            f.cut(counted=True)
        if late:
            self.record_failure(app, f"{len(late)} more scans late after a timeout",
                                count=len(late))
        if not app.breaker.would_allow(now):
            for f in others:
                if not f.evicted:
                    f.evicted = True
                    f.scope.cancel()
        app.evicted += sum(f.evicted for f in others)

    async def _attempt(self, app: Appliance, fd: int, size: int,  # noqa: PLR0917
                       limit: int | None, timeout: float,
                       count_timeouts: bool = True,
                       extend_to: float | None = None) -> Verdict | None:
        """One attempt; None when the appliance failed (recorded against it), or when it
        was cut short by collective detection. `count_timeouts=False`: a timeout is
        not recorded against the appliance."""
        adaptive = self.adaptive.enabled
        if adaptive and extend_to is not None:
            await app.live.train(TRAIN_LIMIT * self.adaptive.floor)
        started = trio.current_time()
        nbytes = size if limit is None else min(size, limit)
        # A drain scan (count_timeouts=False) is never "late" for collective detection:
        # its long deadline is its own, and slowness there is no sign of a hang.
        late_after = app.model.quantile(nbytes) if adaptive and count_timeouts else None
        flight = Flight(started, late_after, trio.CancelScope(deadline=started + timeout))
        if late_after is not None and extend_to is not None:
            expected = app.model.expected(nbytes) or late_after
            flight.overdue_after = max(OVERDUE_FLOOR, min(late_after, OVERDUE_FACTOR * expected))
            flight.silent_after = self.adaptive.safety * late_after
            # Watched: the probes decide. Its own timer fired first only after a stall of
            # ours: a late timeout, no evidence, and a hung appliance never probed.
            flight.scope.deadline = started + max(timeout, extend_to)
        settled = False
        probed = False
        app.flights.add(flight)
        try:
            reason = ""
            with flight.scope:
                try:
                    if not app.sig_version:
                        probed = True
                        app.sig_version = await app.client.probe()
                    version = app.sig_version  # a probe may learn an update before the reply
                    outcome, detail = await app.live.watched(
                        flight, app.client.scan_fd(fd, size=size, limit=limit), extend_to,
                        lambda: app.live.deadline(app.model, self.adaptive),
                        lambda deadline: self._hung(app, deadline))
                except ApplianceError as err:
                    reason = str(err)
            app.flights.discard(flight)
            now = trio.current_time()
            timed_out = False
            if flight.scope.cancelled_caught:
                if flight.evicted:
                    settled = flight.counted  # else: released in `finally`
                    app.scans += flight.counted
                    return None
                # (a scan let wait on a probe's answer has a later deadline than `timeout`)
                timeout = flight.scope.deadline - started
                lag = now - flight.scope.deadline
                if adaptive and lag > max(STALL, timeout / 4):
                    # Handled late: this process was paused, not necessarily the appliance.
                    log.debug("appliance %s: timeout handled %.3fs late; not counted",
                              app.name, lag)
                    return None
                reason = f"no reply within {timeout:g}s"
                if not count_timeouts:
                    app.scans += 1
                    app.last_error = reason
                    return None  # `finally` releases a half-open trial: no verdict either way
                timed_out = True
            app.scans += 1
            settled = True
            if reason:
                self.record_failure(app, reason)
                if timed_out and adaptive:
                    self._evict(app, flight, now)
                return None
            if not probed and outcome is not Outcome.ERROR:
                # An answered error (a size limit, say) may come back before the
                # appliance read the whole file: it would teach the model a low slope.
                app.model.observe(nbytes, now - started, now, pause=not flight.extended)
            app.live.answered(started)
            app.latencies.append(now - started)
            self.record_success(app)
            if isinstance(app.client, IcapClient) and app.client.istag:
                app.sig_version = version = app.client.istag
            if outcome is Outcome.CLEAN:
                return Verdict.clean(app.name, version)
            if outcome is Outcome.INFECTED:
                return Verdict.infected(detail, app.name, version)
            return Verdict.error(detail, app.name)
        finally:
            app.flights.discard(flight)
            if not settled:
                app.breaker.release()  # cancelled: neither success nor failure

    def _hung(self, app: Appliance, deadline: float) -> None:
        """Overdue scans and a silent probe: the overdue scans stop and count as failures,
        and the breaker opens at once, half-open again after `RETRIAL` probe deadlines
        (a false opening then costs one trial scan, not a cooldown), twice that after
        a failed trial, and so on up to the cooldown."""
        now = trio.current_time()
        waiting = [f for f in app.flights if not f.evicted]
        late = [f for f in waiting if f.overdue(now)]
        for f in late:
            f.cut(counted=True)
        self.record_failure(app, f"{len(late)} scans overdue and no reply to a liveness probe "
                     f"within {deadline:.3g}s", count=max(1, len(late)),
                     trip=RETRIAL * deadline)
        app.evicted += sum(f.evicted for f in waiting)  # the others: cut by the opening

    def _hedge_target(self, primary: Appliance) -> Appliance | None:
        return next((a for a in self._apps if a is not primary and self.usable(a)), None)

    async def _attempt_hedged(self, app: Appliance, fd: int, size: int, limit: int | None,
                              configured: float, *, retry: int,
                              count_timeouts: bool = True) -> Verdict | None:
        """An attempt on `app`; past the model's quantile, the same scan on another usable
        appliance too (budget permitting). The first clean/infected verdict wins.

        The `retry`-th retry on one appliance doubles the model's timeout each time
        (TCP's back-off): one late reply (a loaded host) then costs a retry, not the
        fail mode, while a hung appliance is found by the first timeouts of every scan."""
        nbytes = size if limit is None else min(size, limit)
        if not count_timeouts:
            # A background scan: patient (batch.PATIENCE), never hedged, its timeouts no
            # evidence against the appliance; the caller's deadline still bounds it.
            return await self._attempt(app, fd, size, limit,
                                       min(configured, batch.patient(self, app, nbytes)),
                                       count_timeouts=False)
        timeout = self.timeout_for(app, nbytes, configured)
        if retry and self.adaptive.enabled and app.model.quantile(nbytes) is not None:
            timeout = min(self.adaptive.cap, timeout * 2 ** retry)
        hedge_at = app.model.quantile(nbytes) if self.adaptive.enabled else None
        if hedge_at is None or hedge_at >= timeout or self._hedge_target(app) is None:
            return await self._attempt(app, fd, size, limit, timeout, extend_to=configured)
        results: dict[int, Verdict | None] = {}
        first_done = trio.Event()
        winner: list[Appliance] = []

        async def run(target: Appliance, t: float, key: int,
                      nursery: trio.Nursery) -> None:
            verdict = await self._attempt(target, fd, size, limit, t, extend_to=configured)
            results[key] = verdict
            first_done.set()
            if verdict is not None and not verdict.is_error:
                winner.append(target)
                nursery.cancel_scope.cancel()  # cancel the loser

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, app, timeout, 0, nursery)
            with trio.move_on_after(hedge_at):
                await first_done.wait()
            other = None if first_done.is_set() else self._hedge_target(app)
            if other is not None and self._budget.try_spend() \
                    and other.breaker.allow(trio.current_time()):
                other.hedges += 1
                log.debug("hedging a %d-byte scan from %s to %s after %.3fs", nbytes,
                          app.name, other.name, hedge_at)
                nursery.start_soon(run, other, self.timeout_for(other, nbytes, configured), 1,
                                   nursery)
        if winner:
            if winner[0] is not app:
                winner[0].hedge_wins += 1
            return results[0] if winner[0] is app else results[1]
        return results.get(0)

    async def scan_fd(self, fd: int, *, size: int, limit: int | None = None,
                      attempt_timeout: float | None = None, retries: int | None = None,
                      count_timeouts: bool = True) -> Verdict:
        timeout = self.attempt_timeout if attempt_timeout is None else attempt_timeout
        tries = 1 + (self.retries if retries is None else retries)
        result: Verdict | None = None
        self._budget.earn()
        # Background (drain) scans are bounded by the drain's own concurrency and do not
        # take the on-open slots: a patient drain scan must never starve an open.
        async with self._slots if count_timeouts else contextlib.nullcontext():
            for app in self._apps:
                for retry in range(tries):
                    now = trio.current_time()
                    if not app.healthy or self._awaits_probe(app, now) \
                            or not app.breaker.allow(now):
                        break
                    verdict = await self._attempt_hedged(app, fd, size, limit, timeout,
                                                         retry=retry,
                                                         count_timeouts=count_timeouts)
                    if verdict is None:
                        result = Verdict.error(f"{app.last_error}", app.name)
                        continue
                    if not verdict.is_error:
                        return verdict
                    result = verdict  # the appliance answered with an error: try the next
                    break
        if result is None:
            why = "; ".join(f"{a.name}: {a.last_error}" for a in self._apps if a.last_error)
            return Verdict.error("no appliance available (all down or circuit open)"
                                 + (f": {why}" if why else ""))
        return result

    def pipelines(self) -> bool:
        """Whether `scan_fds` would pipeline now (scanner/batch.py)."""
        return batch.pipelines(self)

    async def scan_fds(self, items: Sequence[tuple[int, int]],
                       attempt_timeout: float) -> list[Verdict] | None:
        """The drain's pipelined scans of (fd, size) `items`; None: one by one (batch.py)."""
        return await batch.scan_fds(self, items, attempt_timeout)

    async def scan_path(self, path: str, *, limit: int | None = None,
                        attempt_timeout: float | None = None,
                        retries: int | None = None) -> Verdict:
        """Open `path` (a regular file) and scan it (scanner/scanpath.py)."""
        return await scanpath.scan_path(self, path, limit=limit,
                                        attempt_timeout=attempt_timeout, retries=retries)
