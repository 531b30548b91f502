"""Every numeric configuration key has a sane range, and a value outside it is refused
naming the key and the range (b27).

Before: a `deadline` of 1e308 s (a hang), a `sync_interval` or `probe_interval` of
1e-300 s (a busy loop), a 400-digit size (an OverflowError out of the reader: a
traceback, not a config error) and a relative `state_dir` (the server's working
directory) were all accepted. The ranges live in `vfile.config.model.RANGES`; the
reader and docs/configuration.md both take them from there.
"""

from __future__ import annotations

import dataclasses
import typing

import pytest

from vfile.config import model as m
from vfile.config.reader import apply_overrides, parse_config
from vfile.config.syntax import ConfigError
from vfile.errors import Exit

SECTIONS = {m.MountConfig: ("[mount]", "mount."), m.PoolConfig: ("[pool]", "pool."),
            m.JournalConfig: ("[journal]", "journal."),
            m.Profile: ('[[profile]]\nname = "default"', "profile[0]."),
            m.Quota: ('[[profile]]\nname = "default"\n[profile.quota]', "profile[0].quota.")}
#: keys whose bounds meet another rule of the same table: what the case also sets
COMPANIONS = {
    (m.Profile, "attempt_timeout"): 'deadline = 3600',
    (m.Profile, "scan_first"): 'oversize = "scan-first"\nmax_size = 0',
    (m.PoolConfig, "adaptive_floor"): "adaptive_cap = 3600",
    (m.PoolConfig, "adaptive_cap"): "adaptive_floor = 0.001",
}
#: exclusive bounds: the bounds themselves are refused
EXCLUSIVE = {(m.Quota, "low_water")}
KEYS = sorted(m.RANGES, key=lambda k: (k[0].__name__, k[1]))


def _numeric(model: type) -> set[str]:
    hints = typing.get_type_hints(model)
    return {f.name for f in dataclasses.fields(model)
            if {int, float} & {hints[f.name], *typing.get_args(hints[f.name])}
            and hints[f.name] is not bool}


def _toml(model: type, key: str, value: str) -> str:
    header = SECTIONS[model][0]
    extra = COMPANIONS.get((model, key), "")
    if model is m.Quota:  # the companion keys belong to the profile, above the quota
        return f"{header.split('[profile.quota]')[0]}{extra}\n[profile.quota]\n{key} = {value}\n"
    return f"{header}\n{extra}\n{key} = {value}\n"


def _error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="/etc/vfile/g.toml")
    assert info.value.exit_code == Exit.CONFIG
    return info.value.message


def _literal(model: type, key: str, x: float) -> str:
    hint = typing.get_type_hints(model)[key]
    return str(int(x)) if int in (hint, *typing.get_args(hint)) else repr(float(x))


def test_every_numeric_key_has_a_range() -> None:
    for model in SECTIONS:
        missing = _numeric(model) - {k for s, k in m.RANGES if s is model}
        assert not missing, f"{model.__name__}: no range for {sorted(missing)}"


@pytest.mark.parametrize(("model", "key"), KEYS, ids=[f"{s.__name__}.{k}" for s, k in KEYS])
def test_values_past_a_range_are_refused_naming_key_file_and_range(model: type,
                                                                    key: str) -> None:
    low, high = m.RANGES[(model, key)]
    path = SECTIONS[model][1] + key
    for bad in (low - 1 if low >= 1 else low / 2 - 1e-9 if low > 0 else -1, high * 2 + 1):
        message = _error(_toml(model, key, _literal(model, key, bad)))
        assert message.startswith(f"/etc/vfile/g.toml: {path}: "), message
        assert "\n" not in message and len(message) < 200, message
    if (model, key) not in EXCLUSIVE:
        for good in (low, high):
            parse_config(_toml(model, key, _literal(model, key, good)))


@pytest.mark.parametrize(("model", "key"), KEYS, ids=[f"{s.__name__}.{k}" for s, k in KEYS])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e308", "1e-300", "9" * 400])
def test_odd_numbers_are_refused_not_raised(model: type, key: str, value: str) -> None:
    if value == "1e-300" and m.RANGES[(model, key)][0] == 0:
        return  # a tiny positive value is within 0..high: nothing odd there
    message = _error(_toml(model, key, value))
    assert SECTIONS[model][1] + key in message and len(message) < 200, message


@pytest.mark.parametrize(("text", "expected"), [
    ('[[profile]]\nname = "default"\ndeadline = 1e308',
     "profile[0].deadline: 1e+308 is out of range: allowed 0.001s to 3600s"),
    ('[journal]\nsync_interval = 1e-300',
     "journal.sync_interval: 1e-300 is out of range: allowed 0.01s to 3600s"),
    ('[pool]\nprobe_interval = "0ms"', "pool.probe_interval: must be greater than 0"),
    ('[pool]\nprobe_interval = 1e-300',
     "pool.probe_interval: 1e-300 is out of range: allowed 0.05s to 86400s"),
    ('[[profile]]\nname = "default"\nmax_size = "2048TiB"',
     "profile[0].max_size: '2048TiB' is out of range: allowed 0 bytes to 1125899906842624 bytes"),
    ('[mount]\nfd_cache = 99999999', "mount.fd_cache: 99999999 must be between 16 and"),
    ('[mount]\nstate_dir = "state"', "mount.state_dir: 'state' is a relative path"),
    ('[mount]\nquarantine_dir = "./q"', "mount.quarantine_dir: './q' is a relative path"),
    ('[pool]\nsafety_factor = inf', "pool.safety_factor: expected a number between 1 and 1000"),
])
def test_messages(text: str, expected: str) -> None:
    assert expected in _error(text)


def test_the_command_line_deadline_has_the_same_range() -> None:
    base = parse_config("")
    assert apply_overrides(base, deadline=3600).default.deadline == 3600
    for bad in (1e308, 3601, "2h"):
        with pytest.raises(ConfigError, match=r"--timeout: .* is out of range"):
            apply_overrides(base, deadline=bad)  # type: ignore[arg-type]
