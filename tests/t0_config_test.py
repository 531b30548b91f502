"""vfile.config.model and .reader: TOML → frozen dataclasses, validation messages, globs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from vfile.config import model as C
from vfile.config.model import Config, Escalation, FailMode, InfectedAction, OversizeRule, Trigger
from vfile.config.reader import load_config, parse_config
from vfile.config.syntax import ConfigError, parse_duration, parse_size
from vfile.errors import Exit

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "vfile.toml"


def _error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="t.toml")
    assert info.value.exit_code == Exit.CONFIG
    return info.value.message


def test_no_file_gives_the_documented_defaults() -> None:
    cfg = load_config(None)
    d = cfg.default
    assert d.name == "default"
    assert d.fail_mode is FailMode.SAFE is C.DEFAULT_FAIL_MODE
    assert d.triggers == {Trigger.OPEN, Trigger.CLOSE}
    assert d.deadline == 2.0 == C.DEFAULT_DEADLINE
    assert d.attempt_timeout == C.DEFAULT_ATTEMPT_TIMEOUT <= d.deadline
    assert d.retries == C.DEFAULT_RETRIES
    assert d.max_size == C.DEFAULT_MAX_SIZE
    assert d.infected_action is InfectedAction.QUARANTINE
    assert cfg.mount.appliances == ()
    assert cfg.profiles == ()
    assert cfg.profile_for("any/where.txt") is d


def test_the_example_file_loads_and_documents_every_key() -> None:
    cfg = load_config(str(EXAMPLE))
    assert [p.name for p in cfg.profiles] == ["uploads", "secrets", "scratch"]
    up = cfg.profiles[0]
    assert up.attempt_timeout == 0.5 and up.deadline == 2.0
    assert up.max_size == 64 * 1024 * 1024 and up.scan_first == 16 * 1024 * 1024
    assert up.oversize is OversizeRule.SCAN_FIRST
    assert up.infected_action is InfectedAction.HOOK and up.hook == "/usr/local/bin/on-infected"
    assert up.quota == C.Quota(max_entries=10000, max_bytes=10 * 1024**3, max_age=3600.0,
                               low_water=0.8, escalate=Escalation.CLOSED)
    assert cfg.profiles[1].oversize is OversizeRule.DENY  # closed default
    assert cfg.profiles[2].triggers == frozenset()
    assert cfg.mount.appliances[0].startswith("clamd://")
    assert cfg.pool.breaker_failures == 3
    text = EXAMPLE.read_text()
    # Every field of every section appears in the example.
    for cls in (C.MountConfig, C.PoolConfig, C.Profile, C.Quota):
        for f in dataclasses.fields(cls):
            assert f"{f.name} =" in text or f"[profile.{f.name}]" in text, f.name


def test_frozen() -> None:
    cfg = load_config(None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.default.deadline = 5  # type: ignore[misc]


@pytest.mark.parametrize(("text", "expected"), [
    ('[[profile]]\nname="a"\npaths=["x"]\nfail_mode="sometimes"',
     "t.toml: profile[0].fail_mode: 'sometimes' is not one of closed, open, safe"),
    ('[[profile]]\nname="a"\npaths=["x"]\n[[profile]]\nname="b"\npaths=["y"]\ncolour=1',
     "unknown key: profile[1].colour"),
    ("[mount]\nappliance = []", "unknown key: mount.appliance"),
    ("frobnicate = 1", "unknown key: frobnicate"),
    ('[pool]\nretries = -1', "pool.retries: -1 must be between 0 and 10"),
    ('[pool]\nretries = "2"', "pool.retries: expected an integer"),
    ('[pool]\nbreaker_failures = 0', "pool.breaker_failures: 0 must be between 1 and 1000000"),
    ('[[profile]]\nname="a"\npaths=["x"]\ndeadline="0s"', "profile[0].deadline: must be greater"),
    ('[[profile]]\nname="a"\npaths=["x"]\ndeadline="1s"\nattempt_timeout="2s"',
     "profile[0].attempt_timeout: 2s is longer than the deadline (1s)"),
    ('[[profile]]\nname="a"\npaths=["x"]\nmax_size="12 parsecs"',
     "profile[0].max_size: unknown size unit 'parsecs'"),
    ('[[profile]]\nname="a"\npaths=["x"]\ndeadline="soon"', "profile[0].deadline: 'soon' is not"),
    ('[[profile]]\nname="a"\npaths=["x"]\ntriggers=["open","read"]',
     "profile[0].triggers[1]: 'read' is not one of open, close"),
    ('[[profile]]\nname="a"\npaths=["x"]\ntriggers=["open","open"]', "repeats a trigger"),
    ('[[profile]]\nname="a"\npaths=["x"]\ninfected_action="hook"', "profile[0].hook: "),
    ('[[profile]]\nname="a"\npaths=["x"]\nhook="/bin/true"', "profile[0].hook: only used"),
    ('[[profile]]\nname="a"\npaths=["x"]\nscan_first="1MiB"', "profile[0].scan_first: only"),
    ('[[profile]]\nname="a"\npaths=["x"]\noversize="scan-first"\nmax_size="1MiB"\n'
     'scan_first="2MiB"', "profile[0].scan_first: 2097152 bytes is more than max_size"),
    ('[[profile]]\nname="a"\npaths=["x"]\nfail_mode="closed"\noversize="journal"',
     "profile[0].oversize: 'journal' allows unscanned files"),
    ('[[profile]]\nname="a"\npaths=["x"]\n[profile.quota]\nlow_water=1.5',
     "profile[0].quota.low_water: expected a fraction"),
    ('[[profile]]\nname="a"\npaths=["x"]\n[profile.quota]\nescalate="panic"',
     "profile[0].quota.escalate: 'panic' is not one of closed, read-only"),
    ('[[profile]]\nname="a"\npaths=["x"]\n[profile.quota]\nmax_jobs=1',
     "unknown key: profile[0].quota.max_jobs"),
    ('[[profile]]\npaths=["x"]', "profile[0].name: every profile needs a name"),
    ('[[profile]]\nname="a b"\npaths=["x"]', "profile[0].name: 'a b' may only use"),
    ('[[profile]]\nname="a"\npaths=["x"]\n[[profile]]\nname="a"\npaths=["y"]',
     "profile[1].name: profile 'a' is defined twice"),
    ('[[profile]]\nname="a"', "profile[0].paths: profile 'a' needs at least one path glob"),
    ('[[profile]]\nname="a"\npaths="x"', "profile[0].paths: expected a list"),
    ('[[profile]]\nname="default"\npaths=["x"]', "profile[0].paths: the default profile"),
    ('[mount]\nappliances=["http://x"]',
     "mount.appliances[0]: appliance URL 'http://x': unknown scheme"),
    ("mount = 3", "mount: expected a table"),
    ('profile = "x"', "profile: expected an array of tables"),
    ('[[profile]]\nname="a"\npaths=["x"]\nretries=true', "profile[0].retries: expected an int"),
])
def test_bad_values_are_rejected_naming_the_key(text: str, expected: str) -> None:
    assert expected in _error(text)


def test_toml_syntax_error_names_the_line() -> None:
    message = _error('[mount]\nstate_dir = "/x"\nappliances = [clamd]\n')
    assert message.startswith("t.toml: invalid TOML:")
    assert "line 3" in message
    assert "line 2" in _error('[mount]\nappliances = ["clamd://x"\n')


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "missing.toml"))


def test_named_default_replaces_the_implicit_one_and_matches_last() -> None:
    cfg = parse_config('[[profile]]\nname="default"\nfail_mode="closed"\n'
                       '[[profile]]\nname="up"\npaths=["up/**"]\nfail_mode="open"\n')
    assert cfg.default.fail_mode is FailMode.CLOSED
    assert cfg.default.oversize is OversizeRule.DENY
    assert [p.name for p in cfg.profiles] == ["up"]
    assert cfg.profile_for("up/a").name == "up"
    assert cfg.profile_for("down/a").name == "default"


def test_first_matching_profile_wins() -> None:
    cfg = parse_config('[[profile]]\nname="one"\npaths=["a/**"]\n'
                       '[[profile]]\nname="two"\npaths=["a/b/**", "*.exe"]\n')
    assert cfg.profile_for("a/b/c").name == "one"
    assert cfg.profile_for("x/y.exe").name == "two"
    assert cfg.profile_for("/x/y.exe").name == "two"  # a leading slash is tolerated
    assert cfg.profile_for("a/b/c").name == "one"  # memoised answer is the same


@pytest.mark.parametrize(("pattern", "path", "matches"), [
    ("uploads/**", "uploads/a", True),
    ("uploads/**", "uploads/a/b/c.txt", True),
    ("uploads/**", "uploadsX/a", False),
    ("uploads/**", "x/uploads/a", False),
    ("uploads/*", "uploads/a", True),
    ("uploads/*", "uploads/a/b", False),
    ("*.exe", "setup.exe", True),
    ("*.exe", "deep/down/setup.exe", True),
    ("*.exe", "setup.exe.txt", False),
    ("*.exe", "dir.exe/readme", False),
    ("/setup.exe", "setup.exe", True),
    ("/setup.exe", "a/setup.exe", False),
    ("**/*.key", "k.key", True),
    ("**/*.key", "a/b/k.key", True),
    ("a/**/z", "a/z", True),
    ("a/**/z", "a/b/c/z", True),
    ("a/**/z", "a/b/c/zz", False),
    ("file?.txt", "file1.txt", True),
    ("file?.txt", "file10.txt", False),
    ("d?r/x", "d/r/x", False),
    ("[ab].txt", "a.txt", True),
    ("[ab].txt", "c.txt", False),
    ("[!ab].txt", "c.txt", True),
    ("[!ab].txt", "a.txt", False),
    ("x[/]y", "x/y", False),
    ("a+b(c).txt", "a+b(c).txt", True),
    ("[unclosed", "[unclosed", True),
    # every glob matches every byte of a name but '/' (issue 13: a newline escaped **)
    ("uploads/**", "uploads/a\nb", True),
    ("uploads/**", "uploads/\n/x", True),
    ("**/*.exe", "a\nb/c\n.exe", True),
    ("*.exe", "x\n.exe", True),
    ("a?b", "a\nb", True),
    ("[!x]", "\n", True),
    ("*", "a\r\x7f\udcff", True),
    ("uploads/*", "uploads/a\n/b", False),
])
def test_globs(pattern: str, path: str, matches: bool) -> None:
    cfg = Config(profiles=(C.Profile(name="p", paths=(pattern,)),))
    assert (cfg.profile_for(path).name == "p") is matches


@pytest.mark.parametrize(("value", "size"), [
    (0, 0), (4096, 4096), ("4096", 4096), ("64MiB", 64 * 2**20), ("64M", 64 * 2**20),
    ("1k", 1024), ("1kB", 1000), ("10GiB", 10 * 2**30), ("1.5 KiB", 1536), ("2TB", 2 * 10**12),
])
def test_sizes(value: object, size: int) -> None:
    assert parse_size(value, "k") == size


@pytest.mark.parametrize("value", [-1, "-1MiB", "1 XB", True, None, [1], "MiB"])
def test_bad_sizes(value: object) -> None:
    with pytest.raises(ConfigError, match=r"^k: "):
        parse_size(value, "k")


@pytest.mark.parametrize(("value", "seconds"), [
    (2, 2.0), (0.25, 0.25), ("500ms", 0.5), ("2s", 2.0), ("1h", 3600.0), ("5m", 300.0),
    ("5min", 300.0), ("1d", 86400.0), ("1.5s", 1.5),
])
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value, "k") == pytest.approx(seconds)


@pytest.mark.parametrize("value", [-1, "-2s", "2 fortnights", False, "s", {}])
def test_bad_durations(value: object) -> None:
    with pytest.raises(ConfigError, match=r"^k: "):
        parse_duration(value, "k")


def test_cli_overrides_apply_to_mount_and_default_profile(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[mount]\nappliances=["clamd://127.0.0.1:1"]\n'
                    '[[profile]]\nname="up"\npaths=["up/**"]\nfail_mode="open"\n')
    cfg = load_config(str(path), appliances=["icap://h:1344/av"], fail_mode="closed",
                      deadline=0.5)
    assert cfg.mount.appliances == ("icap://h:1344/av",)
    assert cfg.default.fail_mode is FailMode.CLOSED
    assert cfg.default.oversize is OversizeRule.DENY
    assert cfg.default.deadline == 0.5 and cfg.default.attempt_timeout == 0.5
    assert cfg.profile_for("up/x").fail_mode is FailMode.OPEN  # other profiles untouched
    assert cfg.profile_for("elsewhere").deadline == 0.5


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"fail_mode": "maybe"}, "--fail-mode: 'maybe' is not one of"),
    ({"deadline": 0}, "--timeout: must be greater than 0"),
    ({"appliances": ["ftp://x"]}, "--appliance[0]: appliance URL 'ftp://x'"),
])
def test_bad_cli_overrides(kwargs: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, **kwargs)  # type: ignore[arg-type]
    assert expected in info.value.message


def test_is_oversize() -> None:
    assert C.Profile(max_size=10).is_oversize(11)
    assert not C.Profile(max_size=10).is_oversize(10)
    assert not C.Profile(max_size=0).is_oversize(2**40)
