"""The small languages inside the configuration: sizes, durations, path globs.

Pure functions; every error is a `ConfigError` whose message starts with the
key path it was given. See `vfile.config.model` for how globs match.
"""

from __future__ import annotations

import math
import re

from vfile.errors import Exit, UserError

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


class ConfigError(UserError):
    """The configuration file or an option value is invalid."""

    def __init__(self, message: str) -> None:
        super().__init__(message, Exit.CONFIG)


# --- globs -------------------------------------------------------------------

def glob_to_regex(pattern: str) -> str:
    """Translate a profile glob (see `vfile.config.model`'s docstring) into a regex."""
    if pattern.startswith("/"):
        pattern = pattern.lstrip("/")
    elif "/" not in pattern:
        pattern = "**/" + pattern
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            end = pattern.find("]", i + 2 if pattern[i + 1:i + 2] in ("!", "]") else i + 1)
            if end < 0:
                out.append(re.escape(c))
                i += 1
                continue
            body = pattern[i + 1:end]
            negate = body.startswith("!")
            body = body[1:] if negate else body
            body = body.replace("\\", "\\\\").replace("^", "\\^")
            out.append(f"[^/{body}]" if negate else f"(?!/)[{body}]")
            i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    # DOTALL: `.` (from `**`) must match a newline too, or `uploads/a\nb` would fall
    # out of `uploads/**` into a weaker profile (issue 13). Every glob matches every
    # byte of a name but `/`.
    return "(?s)" + "".join(out)


# --- values ------------------------------------------------------------------

_SIZE_UNITS = {"": 1, "b": 1, "k": KiB, "kib": KiB, "kb": 1000, "m": MiB, "mib": MiB,
               "mb": 1000**2, "g": GiB, "gib": GiB, "gb": 1000**3, "t": 1024 * GiB,
               "tib": 1024 * GiB, "tb": 1000**4}
_DURATION_UNITS = {"": 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0,
                   "d": 86400.0}
_NUMBER_UNIT = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([A-Za-z]*)\s*")


def shown_value(value: object) -> str:
    """A value for an error message, cut short: a 400-digit number in one line says
    nothing more than its first digits."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def _number(value: object, key: str, what: str, example: str) -> tuple[float, str]:
    """The number and unit of a size or duration (not yet checked for its sign)."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a {what}, got {value!r}")
    try:
        if isinstance(value, int | float):
            return float(value), ""
        if isinstance(value, str) and (m := _NUMBER_UNIT.fullmatch(value)):
            return float(m[1]), m[2].lower()
    except OverflowError:  # TOML integers have no bound: float() of 10**400 raises (b27)
        raise ConfigError(f"{key}: {shown_value(value)} is not a finite {what}") from None
    raise ConfigError(f"{key}: {shown_value(value)} is not a {what} (e.g. {example})")


def parse_size(value: object, key: str) -> int:
    """Bytes from an int or a string such as ``"64MiB"`` (k/M/G/T are binary)."""
    number, unit = _number(value, key, "size", '4096, "64MiB", "1GB"')
    if unit not in _SIZE_UNITS:
        raise ConfigError(f"{key}: unknown size unit {unit!r} in {shown_value(value)}")
    if not math.isfinite(number):  # TOML `nan` / `inf`: int() of them raises, uncaught
        raise ConfigError(f"{key}: {value!r} is not a finite size")
    if number < 0:
        raise ConfigError(f"{key}: {value!r} is negative")
    return int(number * _SIZE_UNITS[unit])


def parse_duration(value: object, key: str) -> float:
    """Seconds from a number or a string such as ``"500ms"``, ``"2s"``, ``"1h"``."""
    number, unit = _number(value, key, "duration", '2, "500ms", "1h"')
    if unit not in _DURATION_UNITS:
        raise ConfigError(f"{key}: unknown duration unit {unit!r} in {shown_value(value)}")
    # TOML has `inf` and `nan`: an infinite deadline is a hang, and NaN passes every
    # `< 0` / `<= 0` check below and in the callers (tests/t4_badinput_test.py).
    if not math.isfinite(number):
        raise ConfigError(f"{key}: {value!r} is not a finite duration")
    if number < 0:
        raise ConfigError(f"{key}: {value!r} is negative")
    return number * _DURATION_UNITS[unit]
