"""An online, size-aware latency model of one appliance, and what the pool derives from it.

The model (pure, synchronous, no clock of its own: the pool feeds it samples):

    latency(bytes) ~ fixed + per_byte * bytes           (the fit)
    deviation      ~ EWMA of |latency - fit(bytes)|     (TCP's RTTVAR, on the residual)
    quantile(bytes) = fit(bytes) + K * deviation        (TCP's SRTT + 4 * RTTVAR)

The fit is an exponentially weighted least-squares line over recent
successful scans (forgetting factor `DECAY` per sample, so a changed farm is
learnt within a few dozen scans), kept as a running weighted mean and
covariance (West's update: no catastrophic cancellation with sizes of 1e9).
A size-independent deviation is deliberate: the noise of a small scan is
scheduling jitter, not throughput, and the safety factor covers throughput.

The deviation follows the last few scans (TCP's gain), so after a run of
quick scans it forgets that the appliance pauses now and then (a GC, a host
whose CPUs are busy): the next pause, hitting every scan in flight at once,
then looks like a hang. So the model also keeps the slowest recent residual
(`peak`: a maximum of latency - fit over healthy small scans that halves every
`PEAK_HALF_LIFE` seconds of the caller's clock: pauses recur in time, every
few seconds on a busy host, not every so many scans), and no attempt timeout
is below `PEAK_MARGIN` times fit + peak: a pause the appliance has shown
recently is waited out. This trades detection time for no false outages on a
host that stalls: detection rises to about 1.5 times the host's worst recent
stall (README "How fast a hung appliance is noticed"). Replayed over recorded
scan latencies (4 scanners, load 6 on 2 cores), healthy scans that would have
timed out fell from 25-29 to 0-3 in 6,000-9,000.

What the pool asks:
- `attempt_timeout(...)`: the model's quantile for this size times the safety
  factor, floored and capped by configuration; the configured attempt
  timeout whenever the model cannot speak (disabled, fewer than
  `MIN_SAMPLES` samples, or a size beyond both `SMALL` and `RANGE_SLACK`
  times the largest size seen recently: a slope learnt on 4 KiB files says nothing about a
  64 MiB file, and guessing low there would open a breaker on a healthy
  appliance). The caller's cancel scope (the profile's deadline) still bounds
  every attempt whatever this returns.
  Never below `PEAK_MARGIN` times the recent peak (above).
- `quantile(...)`: when an attempt becomes "late" (hedge point; evidence for
  collective detection).
- `HedgeBudget`: a token bucket, so hedges stay a fixed share of scans and
  cannot double the load on a farm that is slow but alive.

Invariants: every estimate is finite and >= 0; `quantile >= expected`; the
model never returns a timeout below the floor or above the cap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: per-sample forgetting factor of the fit (~32 samples of memory)
DECAY = 1.0 - 1.0 / 32
#: gain of the deviation EWMA (TCP's beta, RFC 6298)
DEV_GAIN = 1.0 / 4
#: deviations added to the fit for the high quantile (TCP's K)
K = 4.0
#: samples before the model is trusted (cold start: the configured attempt timeout)
MIN_SAMPLES = 8
#: the model speaks for sizes up to this multiple of the largest recent size
RANGE_SLACK = 2.0
#: sizes the model always speaks for once trained: the per-byte part of a scan this
#: small is a fraction of a millisecond on any appliance, far below the floor
SMALL = 64 * 1024
#: the "largest recent size" halves after this many smaller samples
SPAN_HALF_LIFE = 256
_SPAN_DECAY = 0.5 ** (1.0 / SPAN_HALF_LIFE)
#: sizes are fitted in MiB: numbers of order 1, slopes in s/MiB
_MIB = float(1 << 20)
#: below this spread of sizes (std, in MiB: ~1 KiB) the slope is unknown, not fitted
_MIN_SPREAD = 1.0 / 1024
#: hedges a bucket can hold (a burst after a quiet period)
HEDGE_BURST = 4.0
#: the recent peak residual halves every this many seconds (of the `now` the caller
#: passes to `observe`)
PEAK_HALF_LIFE = 15.0
#: no attempt timeout below this multiple of fit + recent peak residual
PEAK_MARGIN = 1.5

#: Defaults of the knobs (vfile's `[pool]` section repeats them for the docs).
DEFAULT_FLOOR = 0.025
DEFAULT_CAP = 10.0
DEFAULT_SAFETY = 4.0
DEFAULT_HEDGE_BUDGET = 0.05


@dataclass(frozen=True, slots=True)
class Adaptive:
    """The operator's knobs. `enabled=False` restores fixed attempt timeouts, no hedges
    and no collective detection: the pool behaves as it did before the model."""

    enabled: bool = True
    floor: float = DEFAULT_FLOOR
    cap: float = DEFAULT_CAP
    safety: float = DEFAULT_SAFETY
    #: hedges allowed per scan (0.05: at most about one scan in twenty gets a hedge)
    hedge_budget: float = DEFAULT_HEDGE_BUDGET

    def __post_init__(self) -> None:
        for name in ("floor", "cap", "safety", "hedge_budget"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"adaptive {name} must be finite")
        if self.floor <= 0 or self.cap < self.floor:
            raise ValueError("adaptive floor must be > 0 and cap >= floor")
        if self.safety < 1:
            raise ValueError("adaptive safety factor must be >= 1")
        if not 0 <= self.hedge_budget <= 1:
            raise ValueError("hedge budget must be between 0 and 1")


class LatencyModel:
    """fixed + per_byte * bytes, with a deviation; fed with successful scans only."""

    __slots__ = ("_cxx", "_cxy", "_dev", "_mx", "_my", "_peak", "_peak_at", "_span", "_w",
                 "samples")

    def __init__(self) -> None:
        self.samples = 0
        self._w = 0.0  # total weight
        self._mx = 0.0  # weighted mean size (MiB)
        self._my = 0.0  # weighted mean latency (s)
        self._cxx = 0.0  # weighted co-moments
        self._cxy = 0.0
        self._dev = 0.0
        self._span = 0.0  # decayed largest size (MiB)
        self._peak = 0.0  # decayed largest residual (s): the slowest recent pause
        self._peak_at: float | None = None  # the caller's clock at the last sample

    def observe(self, nbytes: int, seconds: float, now: float | None = None, *,
                pause: bool = True) -> None:
        """One successful scan of `nbytes` bytes that took `seconds`, ending at `now`
        (any monotonic clock; without it the recent peak does not decay). `pause=False`:
        the appliance answered a liveness probe while this scan waited, so its lateness
        was this scan's own (scanner/liveness.py), not a pause of the appliance: it
        does not raise the recent peak."""
        if not (math.isfinite(seconds) and seconds >= 0) or nbytes < 0:
            return
        x = nbytes / _MIB
        # The residual against the fit *before* this sample, as TCP measures RTTVAR.
        if self.samples == 0:
            self._dev = seconds / 2
            excess = seconds
        else:
            excess = seconds - self._fit(x)
            self._dev += DEV_GAIN * (abs(excess) - self._dev)
        if now is not None:
            if self._peak_at is not None and now > self._peak_at:
                self._peak *= 0.5 ** ((now - self._peak_at) / PEAK_HALF_LIFE)
            self._peak_at = now
        if nbytes <= SMALL and pause:
            # Small scans only: their time is the appliance's fixed cost and its pauses;
            # a large file's own spread (or a size the fit cannot speak for yet) must not
            # widen every small file's timeout.
            self._peak = max(excess, self._peak)
        self.samples += 1
        self._w = DECAY * self._w + 1.0
        dx = x - self._mx
        self._mx += dx / self._w
        dy = seconds - self._my
        self._my += dy / self._w
        self._cxx = DECAY * self._cxx + dx * (x - self._mx)
        self._cxy = DECAY * self._cxy + dx * (seconds - self._my)
        self._span = max(x, self._span * _SPAN_DECAY)

    def coefficients(self) -> tuple[float, float]:
        """(fixed seconds, seconds per MiB), both >= 0."""
        if self._w <= 0:
            return 0.0, 0.0
        slope = 0.0
        if self._cxx / self._w > _MIN_SPREAD ** 2:
            slope = max(0.0, self._cxy / self._cxx)
        fixed = self._my - slope * self._mx
        if fixed < 0:
            # The line would cross zero: keep it through the origin instead, at the
            # slope that still fits the mean (an under-estimate here would mean timeouts).
            fixed = 0.0
            slope = self._my / self._mx if self._mx > 0 else 0.0
        return fixed, slope

    def _fit(self, x: float) -> float:
        fixed, slope = self.coefficients()
        return fixed + slope * x

    @property
    def deviation(self) -> float:
        return self._dev

    @property
    def peak(self) -> float:
        """The slowest recent residual of a small scan (seconds, decayed)."""
        return self._peak

    def trusted(self, nbytes: int) -> bool:
        return self.samples >= MIN_SAMPLES and (
            nbytes <= SMALL or nbytes / _MIB <= RANGE_SLACK * self._span)

    def expected(self, nbytes: int) -> float | None:
        """The fit for this size; None when the model cannot speak for it."""
        return self._fit(nbytes / _MIB) if self.trusted(nbytes) else None

    def quantile(self, nbytes: int) -> float | None:
        """A high quantile (fit + K deviations); None when the model cannot speak."""
        fit = self.expected(nbytes)
        return None if fit is None else fit + K * self._dev

    def recent_peak(self, nbytes: int) -> float | None:
        """The fit plus the slowest recent residual; None when the model cannot speak."""
        fit = self.expected(nbytes)
        return None if fit is None else fit + self._peak

    def statistics(self) -> dict[str, float | int]:
        fixed, slope = self.coefficients()
        return {"samples": self.samples, "fixed_ms": round(fixed * 1000, 3),
                "per_mib_ms": round(slope * 1000, 3), "deviation_ms": round(self._dev * 1000, 3),
                "peak_ms": round(self._peak * 1000, 3),
                "range_bytes": int(RANGE_SLACK * self._span * _MIB)}


def attempt_timeout(model: LatencyModel, nbytes: int, knobs: Adaptive,
                    configured: float) -> float:
    """The timeout of one attempt scanning `nbytes` bytes (see the module docstring)."""
    if not knobs.enabled:
        return configured
    q = model.quantile(nbytes)
    peak = model.recent_peak(nbytes)
    if q is None or peak is None:
        return configured
    return min(knobs.cap, max(knobs.floor, knobs.safety * q, PEAK_MARGIN * peak))


class HedgeBudget:
    """A token bucket: each scan earns `ratio` of a hedge, a hedge spends one."""

    __slots__ = ("_tokens", "ratio", "spent")

    def __init__(self, ratio: float) -> None:
        self.ratio = ratio
        self._tokens = min(1.0, HEDGE_BURST) if ratio > 0 else 0.0
        self.spent = 0

    def earn(self) -> None:
        self._tokens = min(HEDGE_BURST, self._tokens + self.ratio)

    def try_spend(self) -> bool:
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        self.spent += 1
        return True
