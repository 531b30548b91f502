"""The simulated migration's parameters, its timeline and each mode's configuration (pure).

Every mode runs the same timeline, in seconds from the start of the workload:

    0            readers, writers and an indexer start
    pre_touch    a user opens downloads/eicar.com (scanned and denied in every mode)
    outage.start the appliance goes down (fault switch: blackhole or refuse)
    +touch       during the outage a user opens two mail attachments that carry a
                 generated signature, and a dropper is planted through the mount
    window.start the migration's freeze hook: `vfile quiesce` (legacy: no-op), then
                 the guest flushes its state files (open, write, fsync, close), sync
    window.end   the thaw hook: `vfile resume` (legacy: no-op)
    outage.end   the appliance comes back
    +after       the workload stops; then the drain is waited for

Modes: ``closed``, ``open`` and ``safe`` are vfile's fail modes with its
circuit breaker, health probe and window. ``legacy`` is a hypervisor-style
fail-closed filter built from the same mount: long attempt timeout with
retries, a breaker that never opens, a health probe that never runs again
after boot, and no window. Its journal still records writes (vfile's intent
journal cannot be switched off), which only flatters it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from vfile.limits import DAY, HOUR, in_range

MODES: tuple[str, ...] = ("legacy", "closed", "open", "safe")
FAULTS: tuple[str, ...] = ("blackhole", "refuse")

#: Full-length defaults (seconds).
DEFAULT_FILES = 400
DEFAULT_WRITERS = 2
DEFAULT_READERS = 3
DEFAULT_OUTAGE = "10:20"
DEFAULT_WINDOW = "12:8"
DEFAULT_AFTER = 10.0
#: --quick: a smaller guest and a shorter timeline, every timeout scaled by QUICK_SCALE.
QUICK_FILES = 80
QUICK_OUTAGE = "3:5"
QUICK_WINDOW = "4:2"
QUICK_AFTER = 3.0
QUICK_SCALE = 0.25

#: vfile's profiles: the shipped defaults (vfile/config/model.py).
VFILE_ATTEMPT = 1.0
VFILE_DEADLINE = 2.0
VFILE_RETRIES = 1
VFILE_BREAKER_FAILURES = 3
VFILE_BREAKER_COOLDOWN = 5.0
VFILE_PROBE_INTERVAL = 1.0
#: the legacy filter: 5 s per attempt, 2 retries (3 attempts, 15 s per open).
LEGACY_ATTEMPT = 5.0
LEGACY_RETRIES = 2
#: "never": a breaker threshold and a probe period no run reaches.
NEVER_FAILURES = 1_000_000
NEVER_PROBE = "1d"


@dataclass(frozen=True, slots=True)
class Span:
    start: float
    duration: float

    @property
    def end(self) -> float:
        return self.start + self.duration

    def contains(self, t: float) -> bool:
        return self.start <= t < self.end

    def __str__(self) -> str:
        return f"{self.start:g}:{self.duration:g}"


def parse_span(text: str, what: str) -> Span:
    """`START:DURATION` in seconds (`10:20`) → Span; ValueError names `what`."""
    start_s, sep, dur_s = text.partition(":")
    try:
        start, duration = float(start_s), float(dur_s)
    except ValueError:
        start = duration = math.nan
    if not sep or not (math.isfinite(start) and math.isfinite(duration)) \
            or start < 0 or duration <= 0:
        raise ValueError(f"{what}: expected START:DURATION in seconds (e.g. 10:20), "
                         f"got {text!r}")
    return Span(start, duration)


@dataclass(frozen=True, slots=True)
class Params:
    files: int = DEFAULT_FILES
    writers: int = DEFAULT_WRITERS
    readers: int = DEFAULT_READERS
    outage: Span = field(default_factory=lambda: parse_span(DEFAULT_OUTAGE, "--outage"))
    window: Span = field(default_factory=lambda: parse_span(DEFAULT_WINDOW, "--window"))
    after: float = DEFAULT_AFTER
    fault: str = "blackhole"
    modes: tuple[str, ...] = MODES
    #: "builtin", or an appliance URL to put the fault proxy in front of
    appliance: str = "builtin"
    #: multiplies every timeout (vfile's and legacy's alike)
    scale: float = 1.0
    quick: bool = False
    seed: int = 7
    #: how long to wait for the drain after the workload stops
    drain_timeout: float = 120.0

    @property
    def duration(self) -> float:
        """The workload's length: until `after` seconds past the outage (and window)."""
        return max(self.outage.end, self.window.end) + self.after

    # --- derived timeline points ---
    @property
    def pre_touch(self) -> float:
        return min(1.0, self.outage.start / 2)

    @property
    def outage_touch(self) -> float:
        return self.outage.start + min(0.5, self.outage.duration / 4)

    def check(self) -> None:
        unknown = [m for m in self.modes if m not in MODES]
        if unknown or not self.modes:
            raise ValueError(f"--modes: {','.join(unknown) or 'nothing'} is not a mode "
                             f"(choose from {','.join(MODES)})")
        if self.fault not in FAULTS:
            raise ValueError(f"--fault: {self.fault!r} is not one of {', '.join(FAULTS)}")
        if not in_range(self.files, 20, 1_000_000):
            raise ValueError("--files: between 20 and 1000000")
        if not in_range(self.after, 0, HOUR):  # NaN too
            raise ValueError("--after: between 0 and 3600 seconds")
        if not in_range(self.drain_timeout, 1, DAY):
            raise ValueError("--drain-timeout: between 1 and 86400 seconds")
        if not in_range(self.writers, 1, 16):
            raise ValueError("--writers: between 1 and 16")
        if not self.window.start < self.outage.end:
            raise ValueError("--window must start before the outage ends (the appliance "
                             "is down during the window)")
        if self.outage.start < 1.0:
            raise ValueError("--outage must start at least 1 s in (something is scanned "
                             "first)")


def make_params(*, files: int | None = None, writers: int | None = None,
                outage: str | None = None, window: str | None = None,
                after: float | None = None, fault: str = "blackhole",
                modes: str | None = None, appliance: str = "builtin",
                quick: bool = False, drain_timeout: float | None = None) -> Params:
    """Command-line values (None: the default, or the --quick default) → checked Params."""
    p = Params(
        files=files if files is not None else QUICK_FILES if quick else DEFAULT_FILES,
        writers=writers if writers is not None else DEFAULT_WRITERS,
        outage=parse_span(outage or (QUICK_OUTAGE if quick else DEFAULT_OUTAGE), "--outage"),
        window=parse_span(window or (QUICK_WINDOW if quick else DEFAULT_WINDOW), "--window"),
        after=after if after is not None else QUICK_AFTER if quick else DEFAULT_AFTER,
        fault=fault,
        modes=tuple(m.strip() for m in modes.split(",") if m.strip()) if modes else MODES,
        appliance=appliance, scale=QUICK_SCALE if quick else 1.0, quick=quick,
        drain_timeout=drain_timeout if drain_timeout is not None else 30.0 if quick else 120.0,
    )
    p = replace(p, readers=2 if quick else DEFAULT_READERS)
    p.check()
    return p


def _d(seconds: float) -> str:
    return f'"{seconds * 1000:.0f}ms"'


def mode_config(mode: str, scale: float, quarantine_dir: str) -> str:
    """The TOML configuration a mode mounts with (its default profile)."""
    if mode == "legacy":
        attempt = LEGACY_ATTEMPT * scale
        retries = LEGACY_RETRIES
        deadline = attempt * (retries + 1)
        pool = (f"attempt_timeout = {_d(attempt)}\nretries = {retries}\n"
                f"breaker_failures = {NEVER_FAILURES}\nbreaker_cooldown = {_d(attempt)}\n"
                f'probe_interval = "{NEVER_PROBE}"\n'
                "adaptive = false\n")  # fixed timeouts: no latency model, no hedges
        fail_mode = "closed"
    else:
        attempt = VFILE_ATTEMPT * scale
        retries = VFILE_RETRIES
        deadline = VFILE_DEADLINE * scale
        pool = (f"attempt_timeout = {_d(attempt)}\nretries = {retries}\n"
                f"breaker_failures = {VFILE_BREAKER_FAILURES}\n"
                f"breaker_cooldown = {_d(VFILE_BREAKER_COOLDOWN * scale)}\n"
                f"probe_interval = {_d(VFILE_PROBE_INTERVAL * scale)}\n")
        fail_mode = mode
    return (f"# vfile simulate migration: mode {mode}\n"
            f"[mount]\nquarantine_dir = \"{quarantine_dir}\"\n\n[pool]\n{pool}\n"
            f"[[profile]]\nname = \"default\"\nfail_mode = \"{fail_mode}\"\n"
            f"attempt_timeout = {_d(attempt)}\ndeadline = {_d(deadline)}\n"
            f"retries = {retries}\ninfected_action = \"quarantine\"\n")


def describe_mode(mode: str, scale: float) -> str:
    if mode == "legacy":
        a = LEGACY_ATTEMPT * scale
        return (f"fail-closed, {a:g}s x {LEGACY_RETRIES + 1} attempts, no breaker, "
                "no health probe, no adaptive timeouts, no window")
    return (f"fail-{mode}, {VFILE_ATTEMPT * scale:g}s attempts, {VFILE_DEADLINE * scale:g}s "
            f"deadline, breaker after {VFILE_BREAKER_FAILURES}, window")
