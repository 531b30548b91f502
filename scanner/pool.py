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
- `scan_fd(count_timeouts=False)` (the drain's slow scans of large files): a
  timeout is no evidence the appliance is down, so it is not recorded against
  the breaker; refusals, resets and bad replies still are.
"""

from __future__ import annotations

import logging
import os
import stat
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

from scanner.breaker import Breaker, State
from scanner.clamd import ClamdClient
from scanner.icap import IcapClient
from scanner.urls import ApplianceURL, parse_appliance_url
from scanner.verdict import ApplianceError, Outcome, Verdict

log = logging.getLogger(__name__)

#: latency samples kept per appliance for p50/p99
SAMPLES = 1024


@dataclass(slots=True, eq=False)
class _Appliance:
    url: ApplianceURL
    client: ClamdClient | IcapClient
    breaker: Breaker
    healthy: bool = True  # optimistic until the first probe says otherwise
    sig_version: str = ""
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=SAMPLES))
    scans: int = 0
    errors: int = 0
    last_error: str = ""

    @property
    def name(self) -> str:
        return str(self.url)


def _client(url: ApplianceURL) -> ClamdClient | IcapClient:
    return ClamdClient(url) if url.kind == "clamd" else IcapClient(url)


def _percentile(samples: Sequence[float], q: float) -> float | None:
    if not samples:
        return None
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Pool:
    def __init__(self, urls: Sequence[str], *, attempt_timeout: float = 1.0, retries: int = 1,
                 breaker_failures: int = 3, breaker_cooldown: float = 5.0,
                 probe_interval: float = 1.0, max_concurrency: int = 16) -> None:
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
        self._apps = [
            _Appliance(u, _client(u), Breaker(breaker_failures, breaker_cooldown))
            for u in (parse_appliance_url(text) for text in urls)
        ]
        self._slots = trio.Semaphore(max_concurrency)
        self._changed = trio.Event()
        self._quiet = False

    # --- state, no I/O ---------------------------------------------------

    def _usable(self, app: _Appliance) -> bool:
        return app.healthy and app.breaker.would_allow(trio.current_time())

    def available(self) -> bool:
        return any(self._usable(a) for a in self._apps)

    def signature_version(self) -> str:
        for app in self._apps:
            if self._usable(app):
                return app.sig_version
        return ""

    def statistics(self) -> list[dict[str, object]]:
        now = trio.current_time()
        out: list[dict[str, object]] = []
        for app in self._apps:
            p50, p99 = _percentile(app.latencies, 0.5), _percentile(app.latencies, 0.99)
            out.append({
                "url": app.name, "state": str(app.breaker.state(now)), "healthy": app.healthy,
                "p50_ms": None if p50 is None else round(p50 * 1000, 3),
                "p99_ms": None if p99 is None else round(p99 * 1000, 3),
                "scans": app.scans, "errors": app.errors, "last_error": app.last_error,
                "sig_version": app.sig_version,
            })
        return out

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_available(self) -> None:
        while not self.available():
            # breakers also change state with time (open → half-open), so look again
            with trio.move_on_after(self.probe_interval):
                await self._changed.wait()

    # --- health probes -----------------------------------------------------

    def _failed(self, app: _Appliance, reason: str) -> None:
        was = self._usable(app)
        app.errors += 1
        app.last_error = reason
        app.breaker.record_failure(trio.current_time())
        log.debug("appliance %s failed: %s", app.name, reason)
        if was and not self._usable(app):
            log.warning("appliance %s unavailable: %s", app.name, reason)
            self._notify()

    def _succeeded(self, app: _Appliance) -> None:
        was = self._usable(app)
        app.breaker.record_success()
        if not was and self._usable(app):
            log.warning("appliance %s available again", app.name)
            self._notify()

    async def _probe(self, app: _Appliance) -> None:
        now = trio.current_time()
        if app.breaker.state(now) is State.OPEN or not app.breaker.allow(now):
            return  # cooling down, or a scan holds the half-open trial
        reason = ""
        try:
            with trio.move_on_after(self.attempt_timeout) as cs:
                version = await app.client.probe()
        except ApplianceError as err:
            reason = str(err)
        else:
            if cs.cancelled_caught:
                reason = f"no probe reply within {self.attempt_timeout:g}s"
        if reason:
            was = self._usable(app)
            app.healthy = False
            self._failed(app, f"probe: {reason}")
            if was:
                # Logged here: `_failed` sees the appliance already unhealthy, so the
                # one "unavailable" line an operator needs was never written.
                log.warning("appliance %s unavailable: probe: %s", app.name, reason)
                self._notify()
            return
        if version != app.sig_version and app.sig_version:
            log.info("appliance %s signature version %s -> %s", app.name, app.sig_version,
                     version)
        app.sig_version = version
        was = self._usable(app)
        app.healthy = True
        app.breaker.record_success()  # not `_succeeded`: it would judge `was` too late
        if not was and self._usable(app):
            log.warning("appliance %s available again", app.name)
            self._notify()

    async def _probe_round(self) -> None:
        async with trio.open_nursery() as nursery:
            for app in self._apps:
                nursery.start_soon(self._probe, app)

    def set_quiet(self, quiet: bool) -> None:
        """While quiet (a quiesce window), health probes contact no appliance."""
        self._quiet = quiet

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Probe every appliance now and every probe_interval; runs until cancelled."""
        await self._probe_round()  # each probe is bounded by attempt_timeout
        task_status.started()
        while True:
            await trio.sleep(self.probe_interval)
            if not self._quiet:
                await self._probe_round()

    # --- scanning ----------------------------------------------------------

    async def _attempt(self, app: _Appliance, fd: int, size: int,  # noqa: PLR0917
                       limit: int | None, timeout: float,
                       count_timeouts: bool = True) -> Verdict | None:
        """One attempt; None when the appliance failed (recorded against it)."""
        started = trio.current_time()
        settled = False
        try:
            reason = ""
            with trio.move_on_after(timeout) as cs:
                try:
                    if not app.sig_version:
                        app.sig_version = await app.client.probe()
                    outcome, detail = await app.client.scan_fd(fd, size=size, limit=limit)
                except ApplianceError as err:
                    reason = str(err)
            if cs.cancelled_caught:
                reason = f"no reply within {timeout:g}s"
                if not count_timeouts:
                    app.scans += 1
                    app.last_error = reason
                    return None  # `finally` releases a half-open trial: no verdict either way
            app.scans += 1
            settled = True
            if reason:
                self._failed(app, reason)
                return None
            app.latencies.append(trio.current_time() - started)
            self._succeeded(app)
            if isinstance(app.client, IcapClient) and app.client.istag:
                app.sig_version = app.client.istag
            if outcome is Outcome.CLEAN:
                return Verdict.clean(app.name, app.sig_version)
            if outcome is Outcome.INFECTED:
                return Verdict.infected(detail, app.name, app.sig_version)
            return Verdict.error(detail, app.name)
        finally:
            if not settled:
                app.breaker.release()  # cancelled from outside: neither success nor failure

    async def scan_fd(self, fd: int, *, size: int, limit: int | None = None,
                      attempt_timeout: float | None = None, retries: int | None = None,
                      count_timeouts: bool = True) -> Verdict:
        timeout = self.attempt_timeout if attempt_timeout is None else attempt_timeout
        tries = 1 + (self.retries if retries is None else retries)
        result: Verdict | None = None
        async with self._slots:
            for app in self._apps:
                for _ in range(tries):
                    if not app.healthy or not app.breaker.allow(trio.current_time()):
                        break
                    verdict = await self._attempt(app, fd, size, limit, timeout,
                                                  count_timeouts)
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

    async def scan_path(self, path: str, *, limit: int | None = None,
                        attempt_timeout: float | None = None,
                        retries: int | None = None) -> Verdict:
        """Open `path` (a regular file) and scan it; errors opening it are error verdicts."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
        except OSError as err:
            return Verdict.error(f"cannot open: {err.strerror or err}")
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return Verdict.error("not a regular file")
            return await self.scan_fd(fd, size=st.st_size, limit=limit,
                                      attempt_timeout=attempt_timeout, retries=retries)
        finally:
            os.close(fd)
