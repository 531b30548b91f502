"""Prometheus metrics of a live mount, served over HTTP on an opt-in address.

Two kinds of metric, in one registry per mount (never the global one, so two
mounts in one process do not collide):

- Instrumented: the gate calls `opened` and `scanned` (through
  vfile.observe.observers), which feed the open-latency and scan-latency histograms and
  the scans-by-result-and-appliance counter. Children are cached per label
  set, so an observation is a dict lookup and a locked add.
- Read at scrape time: `_StatusCollector` turns the same `statistics()` the
  `vfile status` command shows into gauges and counters. The journal's
  figures cost a walk over every deferred entry, so they are cached for
  `JOURNAL_STATS_TTL` seconds and refreshed in a worker thread.

The HTTP endpoint is a small trio server (GET /metrics), not
`prometheus_client.start_http_server`: the collector then runs on the trio
thread and may call the trio-time-based `statistics()` of the pool and the
window, which must not be called from another thread. A scrape that does not
send its request within `REQUEST_DEADLINE` is dropped, and at most `MAX_CLIENTS`
are served at once: any local user can connect, and 1500 silent connections held
1500 of the server's descriptors for 5 s each (the mount's own opens fail at its
limit); more wait in the kernel's listen queue, costing the server nothing (s26,
tests/t4_input26_test.py).

Invariant: metrics are opt-in (`--metrics ADDR`) and bind to loopback unless
the operator names another address.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import trio
from prometheus_client import CollectorRegistry, Counter, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from vfile.errors import Exit, UserError

log = logging.getLogger(__name__)

#: host used when `--metrics` names only a port
DEFAULT_METRICS_HOST = "127.0.0.1"
#: `--metrics` example in help texts (9310: no clash in Prometheus's port registry)
EXAMPLE_METRICS_ADDR = "127.0.0.1:9310"
JOURNAL_STATS_TTL = 5.0
REQUEST_DEADLINE = 5.0
MAX_REQUEST = 8192
#: scrapes served at once (Prometheus sends one at a time per target)
MAX_CLIENTS = 16
#: retry interval of accept() when the server is out of descriptors
ACCEPT_BACKOFF = 0.1
OPEN_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                0.5, 1.0, 2.5, 5.0, 10.0)
SCAN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                30.0)
BREAKER_STATES = ("closed", "open", "half-open")
QUOTA_STATES = ("none", "closed", "read-only")


def parse_address(text: str) -> tuple[str, int]:
    """``PORT``, ``:PORT``, ``HOST:PORT`` or ``[V6]:PORT`` → (host, port) (pure).

    No host means loopback: exposing metrics beyond the machine is a choice."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not port.isdigit() or int(port) > 65535:
        raise UserError(f"--metrics: {text!r} is not PORT or HOST:PORT (e.g. "
                        f"{EXAMPLE_METRICS_ADDR})", Exit.CONFIG)
    return host or DEFAULT_METRICS_HOST, int(port)


class Metrics:
    """The registry, the instruments the gate feeds, and the HTTP endpoint."""

    def __init__(self, status: dict[str, Callable[[], Any]],
                 journal_stats: Callable[[], dict[str, Any]],
                 info: dict[str, str] | None = None) -> None:
        """`status` maps gate, appliances, drain, window, quota to their
        `statistics` callables; `journal_stats` is the (slow) journal one;
        `info` labels the constant `vfile_info` metric (version, source, mountpoint)."""
        self.registry = CollectorRegistry(auto_describe=False)
        Info("vfile", "The mount this server serves", registry=self.registry).info(info or {})
        self._open = Histogram("vfile_open_duration_seconds",
                               "Time an open of a regular file spent in the gate, by decision",
                               ["decision"], buckets=OPEN_BUCKETS, registry=self.registry)
        self._scan = Histogram("vfile_scan_duration_seconds",
                               "Time of a scan through the appliance pool, by result",
                               ["result"], buckets=SCAN_BUCKETS, registry=self.registry)
        self._scans = Counter("vfile_scans", "Scans through the appliance pool, by result "
                              "(clean, infected, error, unavailable, timeout) and appliance",
                              ["result", "appliance"], registry=self.registry)
        self._children: dict[tuple[str, ...], Any] = {}
        self._journal_stats = journal_stats
        self.journal: dict[str, Any] = {}
        self._journal_at = -JOURNAL_STATS_TTL
        self.registry.register(_StatusCollector(status, lambda: self.journal))
        self.address: tuple[str, int] | None = None

    # --- instruments (called by the gate through vfile.observe.observers) ---------------
    def _child(self, key: tuple[str, ...], make: Callable[[], Any]) -> Any:
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = make()
        return child

    def opened(self, decision: str, seconds: float) -> None:
        self._child(("open", decision), lambda: self._open.labels(decision)).observe(seconds)

    def scanned(self, result: str, appliance: str, seconds: float) -> None:
        self._child(("scan", result), lambda: self._scan.labels(result)).observe(seconds)
        appliance = appliance or "none"
        self._child(("scans", result, appliance),
                    lambda: self._scans.labels(result, appliance)).inc()

    # --- exposition --------------------------------------------------------------------------
    async def render(self) -> bytes:
        """The exposition text, with journal figures at most JOURNAL_STATS_TTL old."""
        now = trio.current_time()
        if now - self._journal_at >= JOURNAL_STATS_TTL:
            try:
                self.journal = await trio.to_thread.run_sync(self._journal_stats)
            except Exception as err:  # a scrape must not take the mount down
                log.warning("metrics: cannot read journal statistics: %s", err)
            self._journal_at = now
        return generate_latest(self.registry)

    async def serve(self, address: str, *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        host, port = parse_address(address)
        try:
            listeners = await trio.open_tcp_listeners(port, host=host)
        except OSError as err:
            raise UserError(f"--metrics: cannot listen on {address!r}: {err.strerror}",
                            Exit.CONFIG) from None
        sockname = listeners[0].socket.getsockname()
        self.address = (sockname[0], sockname[1])
        log.info("metrics on http://%s:%d/metrics", *self.address)
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(self._accept, listener, trio.Semaphore(MAX_CLIENTS))
            task_status.started()

    async def _accept(self, listener: trio.SocketListener, slots: trio.Semaphore) -> None:
        """trio.serve_listeners with a bound (module doc): a slot is taken before the
        accept, so beyond `MAX_CLIENTS` connections stay in the listen queue."""
        warned = False
        async with trio.open_nursery() as nursery:
            while True:
                await slots.acquire()
                try:
                    stream = await listener.accept()
                except OSError as err:  # out of descriptors: as trio.serve_listeners
                    slots.release()
                    if not warned:  # once until an accept succeeds again
                        log.warning("metrics: accept failed (%s); retrying", err.strerror)
                        warned = True
                    await trio.sleep(ACCEPT_BACKOFF)
                    continue
                except BaseException:
                    slots.release()
                    raise
                warned = False
                nursery.start_soon(self._serve_one, stream, slots)

    async def _serve_one(self, stream: trio.SocketStream, slots: trio.Semaphore) -> None:
        try:
            await self._handle(stream)
        finally:
            slots.release()

    async def _handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            request = b""
            with trio.move_on_after(REQUEST_DEADLINE):
                while b"\r\n\r\n" not in request and len(request) < MAX_REQUEST:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        break
                    request += chunk
            parts = request.split(b"\r\n", 1)[0].split()
            if len(parts) < 2:
                return
            method, path = parts[0], parts[1].split(b"?", 1)[0]
            if method not in (b"GET", b"HEAD") or path not in (b"/metrics", b"/"):
                await _respond(stream, 404, b"text/plain", b"not found; try /metrics\n")
                return
            body = await self.render()
            await _respond(stream, 200, CONTENT_TYPE_LATEST.encode(),
                           b"" if method == b"HEAD" else body, length=len(body))


async def _respond(stream: trio.SocketStream, code: int, ctype: bytes, body: bytes, *,
                   length: int | None = None) -> None:
    reason = b"OK" if code == 200 else b"Not Found"
    head = (b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n" % (code, reason, ctype,
                                            len(body) if length is None else length))
    try:
        with trio.move_on_after(REQUEST_DEADLINE):
            await stream.send_all(head + body)
    except trio.BrokenResourceError:
        pass


def _gauge(name: str, doc: str, value: float | None) -> Iterator[Metric]:
    if value is not None:
        yield GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float | None) -> Iterator[Metric]:
    if value is not None:
        yield CounterMetricFamily(name, doc, value=value)


class _StatusCollector(Collector):
    """Gauges and counters from the status pieces, read at scrape time (trio thread)."""

    def __init__(self, status: dict[str, Callable[[], Any]],
                 journal: Callable[[], dict[str, Any]]) -> None:
        self._status = status
        self._journal = journal

    def collect(self) -> Iterator[Metric]:
        yield from self._gate(self._status["gate"]())
        yield from self._appliances(self._status["appliances"]())
        yield from self._journal_metrics(self._journal())
        yield from self._drain(self._status["drain"]())
        yield from self._window(self._status["window"]())
        yield from self._quota(self._status["quota"]())

    def _gate(self, g: dict[str, Any]) -> Iterator[Metric]:
        for key, name, doc in (
                ("cache_hits", "vfile_verdict_cache_hits", "Opens answered by a cached verdict"),
                ("cache_misses", "vfile_verdict_cache_misses", "Verdict lookups that missed"),
                ("shared_scans", "vfile_shared_scans", "Opens that joined a scan in flight"),
                ("close_scans", "vfile_close_scans", "Scans after a write (last close)"),
                ("infections", "vfile_infections", "Files found infected"),
                ("exposures", "vfile_exposures", "Opens allowed without a verdict "
                 "(fail-open, or fail-safe and journaled)"),
                ("deferrals", "vfile_deferrals", "Opens allowed and journaled for a later scan"),
                ("denials", "vfile_denials", "Opens and writes denied"),
                ("write_intents", "vfile_write_intents", "Write intents journaled"),
                ("writes_awaiting_intent_fsync", "vfile_writes_awaiting_intent_fsync",
                 "Writes that waited for their write-open's intent to be fsynced"),
                ("intent_fsync_failures", "vfile_intent_fsync_failures", "Writes failed "
                 "with EIO because their intent could not be fsynced"),
                ("journal_full", "vfile_journal_full", "Opens and writes failed with EIO "
                 "because the journal was full"),
                ("kernel_entries_not_dropped", "vfile_kernel_entries_not_dropped", "Names "
                 "an infected action removed whose kernel entry was not dropped in time")):
            yield from _counter(name, doc, g.get(key))
        yield from _gauge("vfile_scans_in_flight", "Scans in flight", g.get("in_flight"))
        yield from _gauge("vfile_pending_write_intents", "Files being written, not yet scanned",
                          g.get("pending_intents"))
        yield from _gauge("vfile_cached_verdicts", "Verdicts in the in-memory cache",
                          g.get("cached_verdicts"))

    def _appliances(self, apps: list[dict[str, Any]]) -> Iterator[Metric]:
        up = GaugeMetricFamily("vfile_appliance_up", "1 if the appliance's health probe "
                               "passes", labels=["appliance"])
        breaker = GaugeMetricFamily("vfile_appliance_breaker_state", "1 for the current "
                                    "state of the appliance's circuit breaker",
                                    labels=["appliance", "state"])
        requests = CounterMetricFamily("vfile_appliance_requests", "Requests the pool sent "
                                       "to the appliance", labels=["appliance"])
        errors = CounterMetricFamily("vfile_appliance_errors", "Failed requests to the "
                                     "appliance", labels=["appliance"])
        estimate = GaugeMetricFamily("vfile_appliance_latency_estimate_seconds", "The "
                                     "adaptive model's expected scan time, by reference size "
                                     "(absent while it learns)", labels=["appliance", "size"])
        timeout = GaugeMetricFamily("vfile_appliance_attempt_timeout_seconds", "The attempt "
                                    "timeout the pool uses now, by reference size",
                                    labels=["appliance", "size"])
        hedges = CounterMetricFamily("vfile_appliance_hedges", "Scans hedged to this "
                                     "appliance after another one was late", labels=["appliance"])
        evicted = CounterMetricFamily("vfile_appliance_attempts_cut_short", "Attempts stopped "
                                      "because another attempt on the appliance timed out",
                                      labels=["appliance"])
        for a in apps:
            url = str(a["url"])
            up.add_metric([url], 1.0 if a["healthy"] else 0.0)
            for state in BREAKER_STATES:
                breaker.add_metric([url, state], 1.0 if a["state"] == state else 0.0)
            requests.add_metric([url], a["scans"])
            errors.add_metric([url], a["errors"])
            ad = a.get("adaptive")
            if ad is None:
                continue
            for size in ("4KiB", "1MiB"):
                if (est := ad.get(f"estimate_{size}_ms")) is not None:
                    estimate.add_metric([url, size], est / 1000)
                timeout.add_metric([url, size], ad[f"timeout_{size}_ms"] / 1000)
            hedges.add_metric([url], ad["hedges"])
            evicted.add_metric([url], ad["evicted"])
        yield from (up, breaker, requests, errors, estimate, timeout, hedges, evicted)

    def _journal_metrics(self, j: dict[str, Any]) -> Iterator[Metric]:
        yield from _gauge("vfile_journal_deferred", "Deferred scans in the journal (its depth)",
                          j.get("deferred"))
        yield from _gauge("vfile_journal_poisoned", "Deferred entries set aside after "
                          "repeated failures", j.get("poisoned"))
        # No entry: the oldest is 0 s old, so alerts on age clear when the journal drains.
        if j:
            yield from _gauge("vfile_journal_oldest_age_seconds", "Age of the oldest deferred "
                              "scan", j.get("oldest_age_s") or 0.0)
        yield from _gauge("vfile_journal_deferred_bytes", "Bytes awaiting a deferred scan",
                          j.get("bytes"))
        yield from _gauge("vfile_journal_verdicts", "Verdicts stored", j.get("verdicts"))
        yield from _counter("vfile_verdicts_collected", "Stored verdicts collected (old "
                            "signature versions, files that no longer exist)",
                            j.get("verdicts_collected"))
        yield from _gauge("vfile_journal_quarantined", "Quarantine records", j.get("quarantined"))
        yield from _gauge("vfile_journal_map_used_bytes", "LMDB map in use", j.get("map_used"))
        yield from _gauge("vfile_journal_map_size_bytes", "LMDB map size", j.get("map_size"))
        yield from _gauge("vfile_journal_rebuilt", "1 if this mount replaced a journal a power "
                          "loss had torn (journal.torn)", j.get("rebuilt"))

    def _drain(self, d: dict[str, Any]) -> Iterator[Metric]:
        done = CounterMetricFamily("vfile_drain_resolved", "Journal entries the drain "
                                   "resolved, by outcome", labels=["outcome"])
        for outcome, n in sorted(d.get("done", {}).items()):
            done.add_metric([outcome], n)
        yield done
        yield from _counter("vfile_drain_bytes", "Bytes the drain scanned", d.get("bytes_done"))
        yield from _gauge("vfile_drain_rate_files_per_second", "The drain's current rate "
                          "limit (adapts to appliance latency)", d.get("files_per_s"))
        yield from _gauge("vfile_drain_paused", "1 if the drain is paused",
                          float(bool(d.get("paused"))))
        yield from _gauge("vfile_drain_in_flight", "Drain scans in flight", d.get("in_flight"))

    def _window(self, w: dict[str, Any]) -> Iterator[Metric]:
        yield from _gauge("vfile_window_active", "1 while a quiesce/migration window is open",
                          float(bool(w.get("active"))))
        yield from _gauge("vfile_window_remaining_seconds", "Time until the open window "
                          "ends by itself (0 when none)", w.get("remaining_s") or 0.0)
        yield from _counter("vfile_windows", "Windows opened", w.get("windows_total"))

    def _quota(self, q: dict[str, Any]) -> Iterator[Metric]:
        state = GaugeMetricFamily("vfile_quota_state", "1 for the profile's current "
                                  "scan-debt state", labels=["profile", "state"])
        entries = GaugeMetricFamily("vfile_quota_debt_entries", "Deferred scans of the "
                                    "profile", labels=["profile"])
        nbytes = GaugeMetricFamily("vfile_quota_debt_bytes", "Bytes of the profile's "
                                   "deferred scans", labels=["profile"])
        for profile, s in sorted(q.items()):
            for name in QUOTA_STATES:
                state.add_metric([profile, name], 1.0 if s["state"] == name else 0.0)
            entries.add_metric([profile], s["entries"])
            nbytes.add_metric([profile], s["bytes"])
        yield from (state, entries, nbytes)
