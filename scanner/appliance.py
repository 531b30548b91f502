"""One appliance as the pool sees it: its client, breaker, models and counters.

Pure state (no I/O); the pool (scanner/pool.py) decides, this keeps score and
reports it (`statistics`: `vfile status`, metrics, bench figures).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from vfile.scanner.breaker import Breaker
from vfile.scanner.clamd import ClamdClient
from vfile.scanner.embedded import EmbeddedClient
from vfile.scanner.icap import IcapClient
from vfile.scanner.latency import Adaptive, LatencyModel, attempt_timeout
from vfile.scanner.liveness import Flight, Liveness
from vfile.scanner.urls import ApplianceURL, parse_appliance_url

#: latency samples kept per appliance for p50/p99
SAMPLES = 1024
#: breaker openings remembered per appliance (their wall times)
OPENED_KEPT = 16
#: reference sizes `statistics()` reports the model's estimate and timeout for
REPORT_SIZES = {"4KiB": 4096, "1MiB": 1 << 20}


#: what the pool talks to: a socket client, or the embedded engine (scanner/embedded.py)
Client = ClamdClient | IcapClient | EmbeddedClient


def client_for(target: str | EmbeddedClient) -> Client:
    """The client for an appliance URL; an embedded client is its own."""
    if isinstance(target, EmbeddedClient):
        return target
    url = parse_appliance_url(target)
    return ClamdClient(url) if url.kind == "clamd" else IcapClient(url)


def _percentile(samples: Sequence[float], q: float) -> float | None:
    if not samples:
        return None
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


@dataclass(slots=True, eq=False)
class Appliance:
    url: ApplianceURL
    client: Client
    breaker: Breaker
    healthy: bool = True  # optimistic until the first probe says otherwise
    sig_version: str = ""
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=SAMPLES))
    scans: int = 0
    errors: int = 0
    last_error: str = ""
    model: LatencyModel = field(default_factory=LatencyModel)
    flights: set[Flight] = field(default_factory=set)
    hedges: int = 0  # hedges sent to this appliance
    hedge_wins: int = 0  # of which gave the verdict
    evicted: int = 0  # attempts cut short by another attempt's timeout or a silent probe
    #: wall times the breaker opened from closed (the last few), for detection figures
    opened: deque[float] = field(default_factory=lambda: deque(maxlen=OPENED_KEPT))
    opens: int = 0
    #: a liveness probe answered since the breaker last opened (the half-open trial's
    #: first step, scanner.pool `_retrials`)
    probed: bool = False
    live: Liveness = field(init=False)

    def __post_init__(self) -> None:
        self.live = Liveness(self.client)

    @property
    def name(self) -> str:
        return str(self.url)

    def breaker_opened(self) -> None:
        self.opens += 1
        self.opened.append(time.time())

    def statistics(self, now: float, knobs: Adaptive, configured: float) -> dict[str, object]:
        return {
            "url": self.name, "state": str(self.breaker.state(now)), "healthy": self.healthy,
            "p50_ms": _ms(_percentile(self.latencies, 0.5)),
            "p99_ms": _ms(_percentile(self.latencies, 0.99)),
            "scans": self.scans, "errors": self.errors, "last_error": self.last_error,
            "sig_version": self.sig_version,
            "adaptive": self._adaptive(knobs, configured),
            "breaker_opens": self.opens,
            "breaker_opened_at": self.opened[-1] if self.opened else None,
            "breaker_opened_times": list(self.opened),
        }

    def _adaptive(self, knobs: Adaptive, configured: float) -> dict[str, object]:
        """The model's current estimate and attempt timeout at reference sizes."""
        out: dict[str, object] = {"enabled": knobs.enabled, **self.model.statistics(),
                                  "hedges": self.hedges, "hedge_wins": self.hedge_wins,
                                  "evicted": self.evicted, **self.live.statistics()}
        for label, size in REPORT_SIZES.items():
            out[f"estimate_{label}_ms"] = _ms(self.model.expected(size) if knobs.enabled
                                              else None)
            out[f"timeout_{label}_ms"] = _ms(attempt_timeout(self.model, size, knobs,
                                                             configured))
        return out
