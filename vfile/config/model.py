"""The configuration as frozen dataclasses: the choices (enums), the defaults,
a profile's settings, and which profile governs a path. Reading a file into
them is reader.py.

Invariants:
- Every default is a named module constant, so the CLI help can show it.
- A `Config` always has a default profile (``Config.default``): the implicit one
  built from the defaults, or the profile the file names ``"default"``.
  `Config.profile_for` tries the other profiles in file order; the first whose
  glob matches wins, and the default profile catches everything else.

Globs (`glob_to_regex`) are matched against the path relative to the source
root, with no leading slash:

- ``*`` matches any run of characters except ``/``; ``?`` one such character;
  ``[abc]`` / ``[!abc]`` a character class (never ``/``);
- ``**`` matches across directories: ``uploads/**`` is everything below
  ``uploads``, ``**/x`` is ``x`` at any depth (including the root);
- a pattern without ``/`` matches the basename at any depth (``*.exe``);
  a leading ``/`` anchors it to the root instead (``/setup.exe``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from vfile.config.syntax import (
    MiB,
    glob_to_regex,
)
from vfile.limits import DAY, HOUR, MAX_BYTES
from vfile.scanner import latency


class FailMode(StrEnum):
    """What happens when no verdict can be had in time."""

    CLOSED = "closed"
    OPEN = "open"
    SAFE = "safe"


class Trigger(StrEnum):
    OPEN = "open"
    CLOSE = "close"


class OversizeRule(StrEnum):
    DENY = "deny"
    JOURNAL = "journal"
    SCAN_FIRST = "scan-first"


class InfectedAction(StrEnum):
    DENY = "deny"
    QUARANTINE = "quarantine"
    RENAME = "rename"
    DELETE = "delete"
    HOOK = "hook"


class Escalation(StrEnum):
    """What a profile becomes while its scan debt is over quota."""

    CLOSED = "closed"
    READ_ONLY = "read-only"


DEFAULT_PROFILE_NAME = "default"
DEFAULT_FAIL_MODE = FailMode.SAFE
DEFAULT_TRIGGERS: frozenset[Trigger] = frozenset({Trigger.OPEN, Trigger.CLOSE})
DEFAULT_DEADLINE = 2.0
DEFAULT_ATTEMPT_TIMEOUT = 1.0
DEFAULT_RETRIES = 1
#: how long the drain waits for one deferred file's verdict: a large file over ICAP or a
#: deep archive may take minutes, and the drain has no user waiting on it
DEFAULT_DRAIN_DEADLINE = 600.0
#: after a signature update, how long a file clean under the previous version opens
#: at once (journaled for a rescan; vfile.filter.grace); 0 = off
DEFAULT_GRACE = 0.0
#: the longest grace a profile may take: the exposure it accepts is bounded
MAX_GRACE = 86400.0
DEFAULT_MAX_SIZE = 64 * MiB
#: `journal` for open/safe profiles; a closed profile never allows unscanned
#: files, so its default oversize rule is `deny`.
DEFAULT_OVERSIZE = OversizeRule.JOURNAL
DEFAULT_OVERSIZE_CLOSED = OversizeRule.DENY
DEFAULT_SCAN_FIRST = 16 * MiB
DEFAULT_INFECTED_ACTION = InfectedAction.QUARANTINE
DEFAULT_BREAKER_FAILURES = 3
DEFAULT_BREAKER_COOLDOWN = 5.0
DEFAULT_PROBE_INTERVAL = 1.0
DEFAULT_QUOTA_LOW_WATER = 0.8
DEFAULT_QUOTA_ESCALATE = Escalation.CLOSED
MAX_RETRIES = 10
#: The smallest `[mount] fd_cache` (vfile.passthrough.fdcache.MIN_CAPACITY;
#: config imports no fs code).
MIN_FD_CACHE = 16
#: how often unscanned-read journal records (tier 2) are fsynced in the background
DEFAULT_SYNC_INTERVAL = 1.0
#: `Config.profile_for` remembers this many path → profile answers.
PROFILE_CACHE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class Quota:
    """Scan-debt limits of a profile; 0 means no limit on that measure."""

    max_entries: int = 0
    max_bytes: int = 0
    max_age: float = 0.0
    low_water: float = DEFAULT_QUOTA_LOW_WATER
    escalate: Escalation = DEFAULT_QUOTA_ESCALATE


@dataclass(frozen=True, slots=True)
class Profile:
    name: str = DEFAULT_PROFILE_NAME
    paths: tuple[str, ...] = ()
    triggers: frozenset[Trigger] = DEFAULT_TRIGGERS
    fail_mode: FailMode = DEFAULT_FAIL_MODE
    attempt_timeout: float = DEFAULT_ATTEMPT_TIMEOUT
    deadline: float = DEFAULT_DEADLINE
    retries: int = DEFAULT_RETRIES
    drain_deadline: float = DEFAULT_DRAIN_DEADLINE
    #: seconds after a signature update during which a previous-version clean verdict
    #: opens the file at once (journaled, rescanned by the drain); 0 = off
    grace: float = DEFAULT_GRACE
    #: bytes; 0 = unlimited
    max_size: int = DEFAULT_MAX_SIZE
    oversize: OversizeRule = DEFAULT_OVERSIZE
    scan_first: int = DEFAULT_SCAN_FIRST
    infected_action: InfectedAction = DEFAULT_INFECTED_ACTION
    hook: str | None = None
    quota: Quota | None = None

    def is_oversize(self, size: int) -> bool:
        return self.max_size > 0 and size > self.max_size


@dataclass(frozen=True, slots=True)
class PoolConfig:
    attempt_timeout: float = DEFAULT_ATTEMPT_TIMEOUT
    retries: int = DEFAULT_RETRIES
    breaker_failures: int = DEFAULT_BREAKER_FAILURES
    breaker_cooldown: float = DEFAULT_BREAKER_COOLDOWN
    probe_interval: float = DEFAULT_PROBE_INTERVAL
    # The adaptive latency model (scanner/latency.py): per-appliance, size-aware
    # attempt timeouts, hedged scans and collective hang detection.
    adaptive: bool = True
    adaptive_floor: float = latency.DEFAULT_FLOOR
    adaptive_cap: float = latency.DEFAULT_CAP
    safety_factor: float = latency.DEFAULT_SAFETY
    hedge_budget: float = latency.DEFAULT_HEDGE_BUDGET

    def adaptive_knobs(self) -> latency.Adaptive:
        return latency.Adaptive(enabled=self.adaptive, floor=self.adaptive_floor,
                                cap=self.adaptive_cap, safety=self.safety_factor,
                                hedge_budget=self.hedge_budget)


@dataclass(frozen=True, slots=True)
class MountConfig:
    #: empty: the mount uses its built-in appliance
    appliances: tuple[str, ...] = ()
    state_dir: str | None = None
    quarantine_dir: str | None = None
    #: O_PATH descriptors kept open for known inodes; None: from the descriptor limit
    fd_cache: int | None = None


@dataclass(frozen=True, slots=True)
class JournalConfig:
    #: seconds between background fsyncs of tier-2 records (README "Durability")
    sync_interval: float = DEFAULT_SYNC_INTERVAL


#: The sane range (inclusive) of every numeric key, by (section, key): outside it the
#: configuration is refused, naming the key and the range (b27). A value past them is a
#: typo or an attack, never a choice: a deadline of 1e308 s is a hang, an interval of
#: 1e-300 s a busy loop, a size or count past these overflows what it is handed to.
#: Durations in seconds, sizes in bytes. tests/t0_config_bounds27_test.py checks every
#: int and float field has one; docs/configuration.md shows them ("allowed").
MAX_COUNT = 10**12
MAX_FD_CACHE = 1 << 20  # the kernel's default nr_open
RANGES: dict[tuple[type, str], tuple[float, float]] = {
    (MountConfig, "fd_cache"): (MIN_FD_CACHE, MAX_FD_CACHE),
    (PoolConfig, "attempt_timeout"): (0.001, HOUR),
    (PoolConfig, "retries"): (0, MAX_RETRIES),
    (PoolConfig, "breaker_failures"): (1, 1_000_000),  # simulate's legacy: "never"
    (PoolConfig, "breaker_cooldown"): (0.01, HOUR),
    (PoolConfig, "probe_interval"): (0.05, DAY),  # simulate's legacy: "1d"
    (PoolConfig, "adaptive_floor"): (0.001, HOUR),
    (PoolConfig, "adaptive_cap"): (0.001, HOUR),
    (PoolConfig, "safety_factor"): (1, 1000),
    (PoolConfig, "hedge_budget"): (0, 1),
    (JournalConfig, "sync_interval"): (0.01, HOUR),
    (Profile, "attempt_timeout"): (0.001, HOUR),
    (Profile, "deadline"): (0.001, HOUR),
    (Profile, "retries"): (0, MAX_RETRIES),
    (Profile, "drain_deadline"): (0.001, DAY),
    (Profile, "grace"): (0, MAX_GRACE),
    (Profile, "max_size"): (0, MAX_BYTES),
    (Profile, "scan_first"): (1, MAX_BYTES),
    (Quota, "max_entries"): (0, MAX_COUNT),
    (Quota, "max_bytes"): (0, MAX_BYTES),
    (Quota, "max_age"): (0, 365 * DAY),
    (Quota, "low_water"): (0, 1),  # exclusive at both ends (reader._quota)
}


class _Matcher:
    """Compiled profile globs plus a bounded path → profile memo."""

    def __init__(self, profiles: Sequence[Profile], default: Profile) -> None:
        self._rules = [(re.compile(glob_to_regex(p)), prof) for prof in profiles
                       for p in prof.paths]
        self._default = default
        self._memo: dict[str, Profile] = {}

    def match(self, path: str) -> Profile:
        hit = self._memo.get(path)
        if hit is not None:
            return hit
        rel = path.lstrip("/")
        found = next((prof for rx, prof in self._rules if rx.fullmatch(rel)), self._default)
        if len(self._memo) >= PROFILE_CACHE_SIZE:
            self._memo.clear()  # crude but bounded; the rules are cheap to re-run
        self._memo[path] = found
        return found


@dataclass(frozen=True)
class Config:
    mount: MountConfig = MountConfig()
    pool: PoolConfig = PoolConfig()
    journal: JournalConfig = JournalConfig()
    #: the non-default profiles, in match order
    profiles: tuple[Profile, ...] = ()
    default: Profile = Profile()
    _matcher: _Matcher = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_matcher", _Matcher(self.profiles, self.default))

    def profile_for(self, path: str) -> Profile:
        """The profile governing `path` (relative to the source root)."""
        return self._matcher.match(path)

    def all_profiles(self) -> tuple[Profile, ...]:
        return (*self.profiles, self.default)
