"""The configuration reference (docs/configuration.md), rendered from the config model.

Keys, types, allowed values and defaults come from the frozen dataclasses and
enums of vfile.config.model; only the one-line help and an example value per key
live here, in `HELP`. tests/t0_config_doc_test.py fails when a dataclass
field has no help (or help names a field that is gone), when an example does
not parse, and when the committed docs/configuration.md differs from
`render()`. Regenerate with:

    .venv/bin/python -m vfile.config.reference > docs/configuration.md
"""

from __future__ import annotations

import dataclasses
import enum
import sys
import typing
from dataclasses import dataclass
from typing import Any

from vfile.config import model as c
from vfile.config.syntax import MiB


@dataclass(frozen=True)
class Key:
    kind: str  # how the value is written: duration, size, integer, string, ...
    help: str
    example: str  # a TOML value


@dataclass(frozen=True)
class Section:
    header: str  # the TOML table header
    model: type
    intro: str


SECTIONS = (
    Section("[mount]", c.MountConfig,
            "Where the mount scans and keeps its state. Command-line options override "
            "these: `--appliance` (repeatable) replaces `appliances`, `--state-dir` "
            "replaces `state_dir`."),
    Section("[pool]", c.PoolConfig,
            "The appliance pool: failover in priority order, a circuit breaker and a "
            "background health probe per appliance. Also used by the drain."),
    Section("[journal]", c.JournalConfig,
            "The journal's durability (README \"Durability of journal records\"). Write "
            "intents are fsynced before the operation returns (a write-open without "
            "`O_TRUNC`: before its first write reaches the source); records of unscanned "
            "reads are committed at once and fsynced in the background."),
    Section("[[profile]]", c.Profile,
            "Policy for a set of paths, one table per profile. The first profile whose "
            "`paths` match a file wins; the default profile catches everything else. A "
            "profile named `default` replaces the implicit one (and takes no `paths`). "
            "`--fail-mode` and `--timeout` apply to the default profile."),
    Section("[profile.quota]", c.Quota,
            "Optional scan-debt quota of the profile just above it: when the profile's "
            "deferred scans pass a limit, its opens escalate until the drain brings the "
            "debt under `low_water` of every limit. 0 means no limit on that measure."),
)

HELP: dict[tuple[type, str], Key] = {
    (c.MountConfig, "appliances"): Key(
        "list of appliance URLs",
        "Scan appliances in priority order: `clamd://HOST:PORT`, `clamd:///path/clamd.sock`, "
        "`icap://HOST:PORT/SERVICE`. Empty: the mount runs vfile's built-in appliance.",
        '["clamd:///run/clamav/clamd.ctl", "icap://127.0.0.1:1344/avscan"]'),
    (c.MountConfig, "state_dir"): Key(
        "path", "The state directory holding the journal (outside the source and the "
        "mountpoint). Default: derived from the mountpoint under /var/lib/vfile/.",
        '"/var/lib/vfile/guest"'),
    (c.MountConfig, "quarantine_dir"): Key(
        "path", "Where quarantined files go (created 0700; outside the source). Default: "
        "`quarantine/` in the state directory.", '"/var/lib/vfile/quarantine"'),
    (c.MountConfig, "fd_cache"): Key(
        "integer", f"O_PATH descriptors the server keeps open for inodes the kernel knows "
        f"(>= {c.MIN_FD_CACHE}); evicted ones are reopened from a file handle (needs root). "
        "Default: 4096, or a quarter of the descriptor limit if less. `--fd-cache` "
        "overrides it.", "4096"),
    (c.JournalConfig, "sync_interval"): Key(
        "duration", "How often records of unscanned reads (and verdicts) are fsynced in the "
        "background; a power loss can lose at most this much of them (a process crash "
        "none). Also done at quiesce, resume and unmount.", '"1s"'),
    (c.PoolConfig, "attempt_timeout"): Key(
        "duration", "One attempt against one appliance (health probes and the drain).",
        '"1s"'),
    (c.PoolConfig, "retries"): Key(
        "integer", f"Further attempts after a failed one (0..{c.MAX_RETRIES}).", "1"),
    (c.PoolConfig, "breaker_failures"): Key(
        "integer", "Consecutive failures that open an appliance's circuit breaker (>= 1).",
        "3"),
    (c.PoolConfig, "breaker_cooldown"): Key(
        "duration", "How long an open breaker waits before letting a trial request through.",
        '"5s"'),
    (c.PoolConfig, "probe_interval"): Key(
        "duration", "Period of the background health probe of each appliance.", '"1s"'),
    (c.PoolConfig, "adaptive"): Key(
        "boolean", "Learn each appliance's latency (fixed + per-byte cost, with a variance "
        "term) and derive per-scan attempt timeouts from it, hedge slow scans to another "
        "appliance and stop every late scan on an appliance once one times out. `false`: "
        "fixed `attempt_timeout`s, no hedges (see the README, Fail modes).", "true"),
    (c.PoolConfig, "adaptive_floor"): Key(
        "duration", "Shortest adaptive attempt timeout.", '"25ms"'),
    (c.PoolConfig, "adaptive_cap"): Key(
        "duration", "Longest adaptive attempt timeout (a scan's deadline still bounds it).",
        '"10s"'),
    (c.PoolConfig, "safety_factor"): Key(
        "number", "Adaptive attempt timeout = the model's high quantile (estimate + 4 "
        "deviations) times this (1..1000).", "4"),
    (c.PoolConfig, "hedge_budget"): Key(
        "fraction", "Share of scans that may be hedged to a second appliance (0..1; 0: no "
        "hedges).", "0.05"),
    (c.Profile, "name"): Key(
        "string", "Required, unique: letters, digits, `_`, `.`, `-` (at most 64). Shown in "
        "logs, status and metrics.", '"uploads"'),
    (c.Profile, "paths"): Key(
        "list of globs", "Paths relative to the source root. `*` stays within a directory, "
        "`**` crosses directories, a glob without `/` matches the file name at any depth, a "
        "leading `/` anchors it to the root. Required except for `default`.",
        '["uploads/**", "*.exe"]'),
    (c.Profile, "triggers"): Key(
        "list", "When to scan: on open, after a write (last close). `[]` excludes the "
        "paths from scanning.", '["open", "close"]'),
    (c.Profile, "fail_mode"): Key(
        "choice", "What happens when no verdict can be had in time: `closed` denies "
        "(EACCES), `open` allows and logs the exposure, `safe` allows, journals the file "
        "durably and scans it later.", '"safe"'),
    (c.Profile, "attempt_timeout"): Key(
        "duration", "One attempt against one appliance; at most the `deadline` (default: "
        "the smaller of 1s and the deadline).", '"500ms"'),
    (c.Profile, "deadline"): Key(
        "duration", "Total time an open waits for a verdict; retries never extend it.",
        '"2s"'),
    (c.Profile, "drain_deadline"): Key(
        "duration", "How long the drain waits for one deferred file's verdict (no user "
        "waits on it: a large file may take minutes). Its timeouts do not count against "
        "the appliance's circuit breaker.", '"10m"'),
    (c.Profile, "grace"): Key(
        "duration", "After a signature update, for this long a file whose verdict under the "
        "previous version was clean (never infected) opens at once, with a journal entry "
        "(reason `grace`) so the drain rescans it under the new version at its rate limit. "
        f"0 (the default) turns it off; keep it 0 for `closed` profiles that must not serve "
        f"content the new signatures have not seen. At most {c.MAX_GRACE:g}s.", '"10m"'),
    (c.Profile, "retries"): Key(
        "integer", f"Further attempts within the deadline (0..{c.MAX_RETRIES}).", "1"),
    (c.Profile, "max_size"): Key(
        "size", "Files larger than this are oversize (0: no limit).", '"64MiB"'),
    (c.Profile, "oversize"): Key(
        "choice", "What an oversize file gets: `deny`, `journal` (allow, scan later) or "
        "`scan-first` (scan its first `scan_first` bytes). Default `journal`; `deny` for a "
        "closed profile, which refuses `journal`.", '"scan-first"'),
    (c.Profile, "scan_first"): Key(
        "size", "Bytes scanned of an oversize file (only with `oversize = \"scan-first\"`; "
        "at most `max_size`).", '"16MiB"'),
    (c.Profile, "infected_action"): Key(
        "choice", "What is done to an infected file (opens of it are always denied): "
        "`deny` only, `quarantine` (move it to the quarantine directory), `rename` (to "
        "NAME.infected), `delete`, or run `hook`.", '"hook"'),
    (c.Profile, "hook"): Key(
        "command", "Run for an infected file (only with `infected_action = \"hook\"`), with "
        "VFILE_PATH, VFILE_SIGNATURE, VFILE_PROFILE and VFILE_APPLIANCE in its environment.",
        '"/usr/local/bin/on-infected"'),
    (c.Profile, "quota"): Key(
        "table", "The profile's scan-debt quota: see `[profile.quota]`.", "{}"),
    (c.Quota, "max_entries"): Key("integer", "Deferred scans allowed.", "10000"),
    (c.Quota, "max_bytes"): Key("size", "Bytes of deferred scans allowed.", '"10GiB"'),
    (c.Quota, "max_age"): Key("duration", "Age of the oldest deferred scan allowed.", '"1h"'),
    (c.Quota, "low_water"): Key(
        "fraction", "Escalation ends when the debt is below this fraction of every limit "
        "(between 0 and 1, exclusive).", "0.8"),
    (c.Quota, "escalate"): Key(
        "choice", "What the profile becomes while over quota: `closed` (deny unscanned "
        "opens) or `read-only` (refuse writes).", '"closed"'),
}


def _default(model: type, field: dataclasses.Field[Any], kind: str) -> str:
    if model is c.Profile and field.name == "name":
        return "required"  # the dataclass default is the implicit default profile's
    value = field.default
    if value is dataclasses.MISSING:
        value = field.default_factory() if field.default_factory is not dataclasses.MISSING \
            else None
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, enum.Enum):
        return f'`"{value.value}"`'
    if isinstance(value, frozenset | tuple):
        items = sorted(v.value if isinstance(v, enum.Enum) else str(v) for v in value)
        return "`[" + ", ".join(f'"{v}"' for v in items) + "]`"
    if kind == "duration":
        return f'`"{value:g}s"`'
    if kind == "size":
        return f'`"{value // MiB}MiB"`' if value and value % MiB == 0 else f"`{value}`"
    if isinstance(value, str):
        return f'`"{value}"`'
    return f"`{value}`"


def _choices(model: type, name: str) -> str:
    hint = typing.get_type_hints(model)[name]
    for arg in (hint, *typing.get_args(hint)):
        if isinstance(arg, type) and issubclass(arg, enum.Enum):
            return ", ".join(f"`{m.value}`" for m in arg)
    return ""


def _allowed(model: type, name: str, kind: str) -> str:
    """A numeric key's range (model.RANGES), or a choice key's values."""
    if (model, name) not in c.RANGES:
        return _choices(model, name)
    low, high = c.RANGES[(model, name)]
    if kind == "duration":
        return f"{_seconds(low)}..{_seconds(high)}"
    if kind == "size":
        return f"{int(low)}..{int(high) >> 50}PiB"  # (every size's high is 1 PiB)
    if (model, name) == (c.Quota, "low_water"):
        return f"{low:g} < x < {high:g}"
    return f"{low:g}..{high:g}" if kind != "integer" else f"{int(low)}..{int(high)}"


def _seconds(x: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600)):
        if x >= size and x % size == 0:
            return f"{x / size:g}{unit}"
    return f"{x:g}s"


def render() -> str:
    out = ["# Configuration reference", "",
           "<!-- Generated by `python -m vfile.config.reference` from vfile/config/model.py; "
           "do not edit: tests/t0_config_doc_test.py checks it is current. -->", "",
           "vfile reads one TOML file (`vfile mount --config FILE`); every key is optional "
           "and an unknown key or a bad value is an error naming the key (exit code 3). "
           "examples/vfile.toml shows every key in use.", "",
           "- **size**: bytes as an integer, or a string with a unit: `\"4096\"`, "
           "`\"64MiB\"`, `\"1GB\"` (k/M/G/T and KiB/MiB/GiB/TiB are powers of 1024; "
           "kB/MB/GB/TB powers of 1000).",
           "- **duration**: seconds as a number, or a string: `\"500ms\"`, `\"2s\"`, "
           "`\"5m\"`, `\"1h\"`, `\"1d\"`.",
           "- **choice**: one of the listed values (`_` may stand for `-`).", ""]
    for section in SECTIONS:
        out += [f"## `{section.header}`", "", section.intro, "",
                "| key | type | default | allowed | meaning |",
                "|---|---|---|---|---|"]
        for field in dataclasses.fields(section.model):
            key = HELP[(section.model, field.name)]
            out.append(f"| `{field.name}` | {key.kind} | {_default(section.model, field, key.kind)}"
                       f" | {_allowed(section.model, field.name, key.kind) or '-'} | {key.help} |")
        out.append("")
    out += ["## Example", "", "```toml", example_toml().rstrip(), "```", ""]
    return "\n".join(out)


def example_toml() -> str:
    """Every key with its example value (tests parse it: the examples stay valid)."""
    lines: list[str] = []
    for section in SECTIONS:
        lines += ["", section.header]
        for field in dataclasses.fields(section.model):
            if field.name != "quota":  # the table follows as [profile.quota]
                lines.append(f"{field.name} = {HELP[(section.model, field.name)].example}")
    return "\n".join(lines).lstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
