"""Reading the configuration: TOML text (or the dict it parses to) into the
frozen dataclasses of model.py, and the command-line overrides on top.

Invariants:
- Every key is known: an unknown key, a wrong type or a bad value raises
  `ConfigError` whose message names the key path (``profile[1].fail_mode``).
  Profile indexes in messages count from 0, in file order.
- Sizes are bytes (an int, or a string like ``"64MiB"``, ``"10GB"``); durations
  are seconds (a number, or a string like ``"500ms"``, ``"2s"``, ``"1h"``).
- A file that does not name a ``"default"`` profile gets the implicit one
  (`Profile()`); the command-line fail mode and deadline apply to the default
  profile only.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from enum import StrEnum
from typing import Any, TypeVar

from vfile.config.model import (
    DEFAULT_ATTEMPT_TIMEOUT,
    DEFAULT_BREAKER_COOLDOWN,
    DEFAULT_BREAKER_FAILURES,
    DEFAULT_DEADLINE,
    DEFAULT_DRAIN_DEADLINE,
    DEFAULT_FAIL_MODE,
    DEFAULT_GRACE,
    DEFAULT_INFECTED_ACTION,
    DEFAULT_MAX_SIZE,
    DEFAULT_OVERSIZE,
    DEFAULT_OVERSIZE_CLOSED,
    DEFAULT_PROBE_INTERVAL,
    DEFAULT_PROFILE_NAME,
    DEFAULT_QUOTA_ESCALATE,
    DEFAULT_QUOTA_LOW_WATER,
    DEFAULT_RETRIES,
    DEFAULT_SCAN_FIRST,
    DEFAULT_SYNC_INTERVAL,
    DEFAULT_TRIGGERS,
    MAX_RETRIES,
    MIN_FD_CACHE,
    RANGES,
    Config,
    Escalation,
    FailMode,
    InfectedAction,
    JournalConfig,
    MountConfig,
    OversizeRule,
    PoolConfig,
    Profile,
    Quota,
    Trigger,
)
from vfile.config.syntax import (
    ConfigError,
    glob_to_regex,
    parse_duration,
    parse_size,
    shown_value,
)
from vfile.limits import in_range
from vfile.scanner import latency
from vfile.scanner.trusted import UntrustedPath, read_trusted
from vfile.scanner.urls import parse_appliance_url

log = logging.getLogger(__name__)

_PROFILE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")

E = TypeVar("E", bound=StrEnum)


def _choice(enum: type[E], value: object, key: str) -> E:
    # Accept "scan_first" for "scan-first" and "read_only" for "read-only".
    text = value.replace("_", "-") if isinstance(value, str) else value
    for member in enum:
        if member.value == text:
            return member
    choices = ", ".join(m.value for m in enum)
    raise ConfigError(f"{key}: {value!r} is not one of {choices}")


def _no_nul(value: str | None, key: str) -> None:
    # TOML allows \u0000 in a string; no path, glob or command can hold one (it was a
    # ValueError in the mount server: exit 10 and "see its log", s26)
    if value is not None and "\0" in value:
        raise ConfigError(f"{key}: {value!r} contains a NUL character")


def _bound(x: float, unit: str) -> str:
    return f"{int(x)}{unit}" if unit == " bytes" else f"{x:g}{unit}"


class _Table:
    """A TOML table read key by key; `done()` rejects whatever was not read."""

    def __init__(self, data: object, key: str, model: type = object) -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{key}: expected a table, got {type(data).__name__}")
        self.data: Mapping[str, Any] = data
        self.key = key
        #: the dataclass this table fills: its keys' ranges are model.RANGES
        self.model = model
        self.seen: set[str] = set()

    def path(self, name: str) -> str:
        return f"{self.key}.{name}" if self.key else name

    def get(self, name: str) -> Any:
        self.seen.add(name)
        return self.data.get(name)

    def has(self, name: str) -> bool:
        return name in self.data

    def string(self, name: str) -> str | None:
        value = self.get(name)
        if value is not None and (not isinstance(value, str) or not value):
            raise ConfigError(f"{self.path(name)}: expected a non-empty string, got {value!r}")
        _no_nul(value, self.path(name))
        return value

    def directory(self, name: str) -> str | None:
        """An absolute path: a relative one would name a place below whatever directory
        the server was started in (b27)."""
        value = self.string(name)
        if value is not None and not value.startswith("/"):
            raise ConfigError(f"{self.path(name)}: {shown_value(value)} is a relative path; "
                              "give an absolute one")
        return value

    def strings(self, name: str) -> tuple[str, ...] | None:
        value = self.get(name)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{self.path(name)}: expected a list of non-empty strings, "
                              f"got {value!r}")
        for v in value:
            _no_nul(v, self.path(name))
        return tuple(value)

    def within(self, name: str, number: float, shown: object, unit: str = "") -> None:
        """Refuse `number` (the key's value, written `shown`) outside the key's range."""
        low, high = RANGES.get((self.model, name), (-math.inf, math.inf))
        if not in_range(number, low, high):  # NaN too
            raise ConfigError(f"{self.path(name)}: {shown_value(shown)} is out of range: "
                              f"allowed {_bound(low, unit)} to {_bound(high, unit)}")

    def integer(self, name: str, default: int, *, low: int = 0, high: int | None = None) -> int:
        value = self.get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{self.path(name)}: expected an integer, got "
                              f"{shown_value(value)}")
        if (self.model, name) in RANGES:
            low, high = (int(b) for b in RANGES[(self.model, name)])
        if not in_range(value, low, math.inf if high is None else high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise ConfigError(f"{self.path(name)}: {shown_value(value)} must be {bound}")
        return value

    def size(self, name: str, default: int) -> int:
        value = self.get(name)
        if value is None:
            return default
        size = parse_size(value, self.path(name))
        self.within(name, size, value, " bytes")
        return size

    def duration(self, name: str, default: float, *, positive: bool = False) -> float:
        value = self.get(name)
        if value is None:
            return default
        seconds = parse_duration(value, self.path(name))
        if positive and seconds <= 0:
            raise ConfigError(f"{self.path(name)}: must be greater than 0, got {value!r}")
        self.within(name, seconds, value, "s")
        return seconds

    def boolean(self, name: str, default: bool) -> bool:
        value = self.get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ConfigError(f"{self.path(name)}: expected true or false, got {value!r}")
        return value

    def number(self, name: str, default: float, *, low: float, high: float) -> float:
        """A finite number within [low, high]."""
        value = self.get(name)
        if value is None:
            return default
        low, high = RANGES.get((self.model, name), (low, high))
        if not in_range(value, low, high):  # a bool, a string, NaN too
            raise ConfigError(f"{self.path(name)}: expected a number between {low:g} and "
                              f"{high:g}, got {shown_value(value)}")
        return float(value)

    def choice(self, name: str, enum: type[E], default: E) -> E:
        value = self.get(name)
        return default if value is None else _choice(enum, value, self.path(name))

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            names = ", ".join(self.path(k) for k in unknown)
            raise ConfigError(f"unknown key{'s' if len(unknown) > 1 else ''}: {names}")


def _quota(data: object, key: str) -> Quota:
    t = _Table(data, key, Quota)
    low_water = t.get("low_water")
    if low_water is None:
        low_water = DEFAULT_QUOTA_LOW_WATER
    elif isinstance(low_water, bool) or not isinstance(low_water, int | float) \
            or not 0 < low_water < 1:
        raise ConfigError(f"{t.path('low_water')}: expected a fraction between 0 and 1 "
                          f"(exclusive), got {shown_value(low_water)}")
    quota = Quota(
        max_entries=t.integer("max_entries", 0),
        max_bytes=t.size("max_bytes", 0),
        max_age=t.duration("max_age", 0.0),
        low_water=float(low_water),
        escalate=t.choice("escalate", Escalation, DEFAULT_QUOTA_ESCALATE),
    )
    t.done()
    return quota


def _profile(data: object, key: str, names: set[str]) -> Profile:
    t = _Table(data, key, Profile)
    name = t.string("name")
    if name is None:
        raise ConfigError(f"{t.path('name')}: every profile needs a name")
    if not _PROFILE_NAME.fullmatch(name):
        raise ConfigError(f"{t.path('name')}: {name!r} may only use letters, digits, '_', "
                          "'.', '-' (at most 64)")
    if name in names:
        raise ConfigError(f"{t.path('name')}: profile {name!r} is defined twice")
    names.add(name)
    paths = t.strings("paths") or ()
    if name == DEFAULT_PROFILE_NAME and paths:
        raise ConfigError(f"{t.path('paths')}: the default profile matches every path no "
                          "other profile matches; it takes no paths")
    if name != DEFAULT_PROFILE_NAME and not paths:
        raise ConfigError(f"{t.path('paths')}: profile {name!r} needs at least one path glob")
    for i, pattern in enumerate(paths):
        try:
            re.compile(glob_to_regex(pattern))
        except re.error as err:
            raise ConfigError(f"{t.path('paths')}[{i}]: bad glob {pattern!r}: {err}") from None
    raw_triggers = t.strings("triggers")
    triggers = DEFAULT_TRIGGERS
    if raw_triggers is not None:
        chosen = [_choice(Trigger, v, f"{t.path('triggers')}[{i}]")
                  for i, v in enumerate(raw_triggers)]
        if len(set(chosen)) != len(chosen):
            raise ConfigError(f"{t.path('triggers')}: {list(raw_triggers)!r} repeats a trigger")
        triggers = frozenset(chosen)
    fail_mode = t.choice("fail_mode", FailMode, DEFAULT_FAIL_MODE)
    deadline = t.duration("deadline", DEFAULT_DEADLINE, positive=True)
    attempt_timeout = t.duration("attempt_timeout", min(DEFAULT_ATTEMPT_TIMEOUT, deadline),
                                 positive=True)
    if attempt_timeout > deadline:
        raise ConfigError(f"{t.path('attempt_timeout')}: {attempt_timeout:g}s is longer than "
                          f"the deadline ({deadline:g}s); retries never extend the deadline")
    default_oversize = DEFAULT_OVERSIZE_CLOSED if fail_mode is FailMode.CLOSED \
        else DEFAULT_OVERSIZE
    oversize = t.choice("oversize", OversizeRule, default_oversize)
    if fail_mode is FailMode.CLOSED and oversize is OversizeRule.JOURNAL:
        raise ConfigError(f"{t.path('oversize')}: 'journal' allows unscanned files, which a "
                          "closed profile never does; use deny or scan-first")
    max_size = t.size("max_size", DEFAULT_MAX_SIZE)
    scan_first = t.size("scan_first", DEFAULT_SCAN_FIRST)
    if t.has("scan_first") and oversize is not OversizeRule.SCAN_FIRST:
        raise ConfigError(f"{t.path('scan_first')}: only used with oversize = \"scan-first\"")
    if scan_first <= 0:
        raise ConfigError(f"{t.path('scan_first')}: must be greater than 0")
    if max_size and oversize is OversizeRule.SCAN_FIRST and scan_first > max_size:
        if t.has("scan_first"):
            raise ConfigError(f"{t.path('scan_first')}: {scan_first} bytes is more than "
                              f"max_size ({max_size})")
        scan_first = max_size
    action = t.choice("infected_action", InfectedAction, DEFAULT_INFECTED_ACTION)
    hook = t.string("hook")
    if action is InfectedAction.HOOK and hook is None:
        raise ConfigError(f"{t.path('hook')}: infected_action = \"hook\" needs a hook command")
    if hook is not None and action is not InfectedAction.HOOK:
        raise ConfigError(f"{t.path('hook')}: only used with infected_action = \"hook\"")
    quota = _quota(t.get("quota"), t.path("quota")) if t.has("quota") else None
    grace = t.duration("grace", DEFAULT_GRACE)  # at most MAX_GRACE: a bounded exposure
    profile = Profile(
        name=name, paths=paths, triggers=triggers, fail_mode=fail_mode,
        attempt_timeout=attempt_timeout, deadline=deadline,
        retries=t.integer("retries", DEFAULT_RETRIES, high=MAX_RETRIES),
        drain_deadline=t.duration("drain_deadline", DEFAULT_DRAIN_DEADLINE, positive=True),
        grace=grace, max_size=max_size, oversize=oversize, scan_first=scan_first,
        infected_action=action, hook=hook, quota=quota,
    )
    t.done()
    return profile


def _appliances(urls: Sequence[str], key: str) -> tuple[str, ...]:
    for i, url in enumerate(urls):
        try:
            parse_appliance_url(url)
        except ValueError as err:
            raise ConfigError(f"{key}[{i}]: {err}") from None
    return tuple(urls)


def config_from_dict(data: Mapping[str, Any]) -> Config:
    """Validate parsed TOML (a dict) into a `Config`."""
    top = _Table(data, "")
    mount = MountConfig()
    if top.has("mount"):
        t = _Table(top.get("mount"), "mount", MountConfig)
        mount = MountConfig(
            appliances=_appliances(t.strings("appliances") or (), t.path("appliances")),
            state_dir=t.directory("state_dir"),
            quarantine_dir=t.directory("quarantine_dir"),
            fd_cache=(t.integer("fd_cache", 0, low=MIN_FD_CACHE) if t.has("fd_cache")
                      else None),
        )
        t.done()
    pool = PoolConfig()
    if top.has("pool"):
        t = _Table(top.get("pool"), "pool", PoolConfig)
        pool = PoolConfig(
            attempt_timeout=t.duration("attempt_timeout", DEFAULT_ATTEMPT_TIMEOUT, positive=True),
            retries=t.integer("retries", DEFAULT_RETRIES, high=MAX_RETRIES),
            breaker_failures=t.integer("breaker_failures", DEFAULT_BREAKER_FAILURES, low=1),
            breaker_cooldown=t.duration("breaker_cooldown", DEFAULT_BREAKER_COOLDOWN,
                                        positive=True),
            probe_interval=t.duration("probe_interval", DEFAULT_PROBE_INTERVAL, positive=True),
            adaptive=t.boolean("adaptive", True),
            adaptive_floor=t.duration("adaptive_floor", latency.DEFAULT_FLOOR, positive=True),
            adaptive_cap=t.duration("adaptive_cap", latency.DEFAULT_CAP, positive=True),
            safety_factor=t.number("safety_factor", latency.DEFAULT_SAFETY, low=1, high=1000),
            hedge_budget=t.number("hedge_budget", latency.DEFAULT_HEDGE_BUDGET, low=0, high=1),
        )
        t.done()
        if pool.adaptive_cap < pool.adaptive_floor:
            raise ConfigError("pool.adaptive_cap: must be at least pool.adaptive_floor "
                              f"({pool.adaptive_floor:g}s)")
    journal = JournalConfig()
    if top.has("journal"):
        t = _Table(top.get("journal"), "journal", JournalConfig)
        journal = JournalConfig(
            sync_interval=t.duration("sync_interval", DEFAULT_SYNC_INTERVAL, positive=True))
        t.done()
    raw_profiles = top.get("profile")
    if raw_profiles is None:
        raw_profiles = []
    if not isinstance(raw_profiles, list):
        raise ConfigError("profile: expected an array of tables ([[profile]])")
    names: set[str] = set()
    profiles = [_profile(p, f"profile[{i}]", names) for i, p in enumerate(raw_profiles)]
    top.done()
    default = next((p for p in profiles if p.name == DEFAULT_PROFILE_NAME), Profile())
    others = tuple(p for p in profiles if p.name != DEFAULT_PROFILE_NAME)
    return Config(mount=mount, pool=pool, journal=journal, profiles=others, default=default)


def parse_config(text: str, *, source: str = "<config>") -> Config:
    """Parse TOML text; errors name `source`, and for syntax errors the line."""
    import tomllib  # here, not at the top: every `vfile` command imports this module (issue 12)

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        detail = str(err)
        if "line" not in detail:  # tomllib says "(at end of document)": give the line too
            detail += f" (line {len(text.splitlines()) or 1})"
        raise ConfigError(f"{source}: invalid TOML: {detail}") from None
    try:
        return config_from_dict(data)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err.message}") from None


def apply_overrides(config: Config, *, appliances: Sequence[str] = (),
                    fail_mode: str | None = None, deadline: float | None = None) -> Config:
    """The simple-case command-line options: appliances replace the file's list;
    fail mode and deadline apply to the default profile."""
    mount = config.mount
    if appliances:
        mount = replace(mount, appliances=_appliances(appliances, "--appliance"))
    default = config.default
    if fail_mode is not None:
        mode = _choice(FailMode, fail_mode, "--fail-mode")
        oversize = default.oversize
        if mode is FailMode.CLOSED and oversize is OversizeRule.JOURNAL:
            oversize = DEFAULT_OVERSIZE_CLOSED  # closed never allows unscanned files
        default = replace(default, fail_mode=mode, oversize=oversize)
    if deadline is not None:
        seconds = parse_duration(deadline, "--timeout")
        low, high = RANGES[(Profile, "deadline")]
        if seconds <= 0:
            raise ConfigError(f"--timeout: must be greater than 0, got {deadline!r}")
        if not in_range(seconds, low, high):
            raise ConfigError(f"--timeout: {seconds:g}s is out of range: allowed {low:g}s "
                              f"to {high:g}s")
        # The per-attempt timeout never outlives the total deadline.
        default = replace(default, deadline=seconds,
                          attempt_timeout=min(default.attempt_timeout, seconds))
    return Config(mount=mount, pool=config.pool, journal=config.journal,
                  profiles=config.profiles, default=default)


def load_config(path: str | None, *, appliances: Sequence[str] = (),
                fail_mode: str | None = None, deadline: float | None = None) -> Config:
    """Read the config file at `path` (None: all defaults), then apply CLI overrides."""
    config = Config()
    if path is not None:
        try:
            # Only a file no other user could have written: one who can would turn
            # scanning off (s26, vfile/scanner/trusted.py).
            text = read_trusted(path).decode("utf-8")
        except UntrustedPath as err:
            raise ConfigError(f"{path}: refused: {err.strerror} (a configuration must be "
                              "writable by root or the mount's owner only, and so must "
                              "every directory above it)") from None
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path}: cannot read the configuration: {err}") from None
        config = parse_config(text, source=path)
    config = apply_overrides(config, appliances=appliances, fail_mode=fail_mode,
                             deadline=deadline)
    log.debug("configuration: %d profile(s) plus default, %d appliance(s)",
              len(config.profiles), len(config.mount.appliances))
    return config
