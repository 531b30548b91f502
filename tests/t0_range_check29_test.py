"""The one range check (q29): `vfile.limits.in_range`, and the callers that say no with it.

Before q29 four helpers each wrote `low <= value <= high` with their own wording (the
command line's `within`, the control commands' `_number`, the configuration reader's
range checks, `check_pacing` of `vfile prewarm`). They now share one predicate; each
caller keeps its own error (exit 2 naming the option, a control reply, exit 3 naming
the file, key and range). The caller cases below passed before the change too: they
pin that nothing a user sees moved.
"""

from __future__ import annotations

import inspect
import math

import pytest
from typer.testing import CliRunner

from vfile import limits
from vfile.cli import cmd_cache
from vfile.cli._app import app
from vfile.cli._bounds import within
from vfile.commands import Commands, _number
from vfile.config.reader import parse_config
from vfile.config.syntax import ConfigError
from vfile.control import ControlError
from vfile.errors import Exit, UserError
from vfile.limits import in_range
from vfile.prewarm_defaults import check_pacing

INF = math.inf
NAN = math.nan


@pytest.mark.parametrize(("value", "low", "high"), [
    (0, 0, 1), (1, 0, 1), (0.0, 0.0, 0.0), (-0.0, 0, 1), (0.5, -0.0, 1), (0.001, 0.001, 3600),
    (3600, 0.001, 3600), (1e6, 0.01, 1e6), (10**12, 1, 1e12), (INF, -INF, INF),
    (-INF, -INF, INF), (-5, -INF, 0), (1 << 50, 0, 1 << 50),
])
def test_within_the_bounds_passes(value: float, low: float, high: float) -> None:
    assert in_range(value, low, high)


@pytest.mark.parametrize(("value", "low", "high"), [
    (NAN, 0, 1), (NAN, -INF, INF), (INF, 0, 1e12), (-INF, 0, 1e12), (-INF, -1e12, 0),
    (-1e-300, 0, 1), (1.0000000001, 0, 1), (0.0009999, 0.001, 3600), (3600.001, 0.001, 3600),
    (10**400, 0, 1e12), (-(10**400), -1e12, 0), (2, 1, 1),
])
def test_outside_the_bounds_or_nan_fails(value: float, low: float, high: float) -> None:
    assert not in_range(value, low, high)


@pytest.mark.parametrize("value", [True, False, "1", b"1", None, [1], 1j])
def test_anything_but_an_int_or_a_float_fails(value: object) -> None:
    """JSON and TOML bring `true` and strings; a bool is an int to Python, not a number
    to whoever wrote it (the control commands and the reader refused both before)."""
    assert not in_range(value, -INF, INF)
    assert not in_range(value, 0, 1)


class _Drain:
    def __init__(self) -> None:
        self.rates: list[tuple[float | None, float | None]] = []

    def set_rate(self, files_per_s: float | None = None,
                 bytes_per_s: float | None = None) -> None:
        self.rates.append((files_per_s, bytes_per_s))

    def statistics(self) -> dict[str, object]:
        return {}


def test_the_drain_rate_bounds_are_the_control_commands() -> None:
    """One definition (vfile.limits): the control command `drain rate` takes its bounds
    and refuses just past them."""
    commands = object.__new__(Commands)
    commands.drain = drain = _Drain()  # type: ignore[assignment]
    for files, nbytes in ((limits.MIN_FILES_PER_S, limits.MIN_BYTES_PER_S),
                          (limits.MAX_FILES_PER_S, limits.MAX_BYTES_PER_S)):
        commands.drain_ctl({"action": "rate", "files_per_s": files, "bytes_per_s": nbytes})
    assert drain.rates == [(0.001, 1.0), (1e6, 1e12)]
    for key, bad in (("files_per_s", 0.00099), ("files_per_s", 1.01e6),
                     ("bytes_per_s", 0.99), ("bytes_per_s", 1.01e12)):
        with pytest.raises(ControlError, match=f"'{key}' must be a number from"):
            commands.drain_ctl({"action": "rate", key: bad})
    assert len(drain.rates) == 2


# --- each caller keeps its own error -----------------------------------------------------

@pytest.mark.parametrize("value", [NAN, INF, -INF, 0.0009, 3601.0])
def test_the_command_line_refuses_with_exit_2_naming_the_option(value: float) -> None:
    with pytest.raises(UserError) as info:
        within("--timeout", value, 0.001, 3600, " seconds")
    assert info.value.exit_code == Exit.USAGE
    assert info.value.message == (f"--timeout must be between 0.001 and 3600 seconds, "
                                  f"not {value!r}")


def test_the_command_line_takes_the_bounds_and_no_option() -> None:
    for value in (None, 0.001, 3600, 3600.0):
        within("--timeout", value, 0.001, 3600, " seconds")
    within("--cache-timeout", -0.0, 0, 86400, " seconds")


@pytest.mark.parametrize(("value", "shown"), [
    (NAN, "nan"), (INF, "inf"), (-INF, "-inf"), (True, "True"), ("5", "'5'"),
    (10**60, f"{str(10**60)[:37]}..."), (0.0001, "0.0001"),
])
def test_a_control_command_replies_an_error(value: object, shown: str) -> None:
    with pytest.raises(ControlError) as info:
        _number({"files_per_s": value}, "files_per_s", minimum=0.001, maximum=1e6)
    assert str(info.value) == f"'files_per_s' must be a number from 0.001 to 1e+06, not {shown}"


def test_a_control_command_takes_the_bounds_and_no_value() -> None:
    assert _number({}, "top", minimum=0, maximum=10_000) is None
    assert _number({"top": 0}, "top", minimum=0, maximum=10_000) == 0.0
    assert _number({"top": -0.0}, "top", minimum=0, maximum=10_000) == 0.0
    assert _number({"top": 10_000}, "top", minimum=0, maximum=10_000) == 10_000.0


def _config_error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="/etc/vfile/g.toml")
    assert info.value.exit_code == Exit.CONFIG
    return info.value.message


@pytest.mark.parametrize(("text", "expected"), [
    ("[pool]\nhedge_budget = nan", "/etc/vfile/g.toml: pool.hedge_budget: expected a number "
     "between 0 and 1, got nan"),
    ("[pool]\nhedge_budget = true", "/etc/vfile/g.toml: pool.hedge_budget: expected a number "
     "between 0 and 1, got True"),
    ("[pool]\nhedge_budget = -inf", "/etc/vfile/g.toml: pool.hedge_budget: expected a number "
     "between 0 and 1, got -inf"),
    ("[pool]\nretries = -1", "/etc/vfile/g.toml: pool.retries: -1 must be between 0 and"),
    ("[pool]\nretries = true", "/etc/vfile/g.toml: pool.retries: expected an integer, got True"),
    ("[mount]\nfd_cache = 15", "/etc/vfile/g.toml: mount.fd_cache: 15 must be between 16 and"),
    ("[journal]\nsync_interval = 3601", "/etc/vfile/g.toml: journal.sync_interval: 3601 is out "
     "of range: allowed 0.01s to 3600s"),
])
def test_the_configuration_refuses_with_exit_3_naming_file_key_and_range(
        text: str, expected: str) -> None:
    assert _config_error(text).startswith(expected)


def test_the_configuration_takes_the_bounds() -> None:
    config = parse_config("[pool]\nhedge_budget = -0.0\nretries = 0\n"
                          "[journal]\nsync_interval = 3600\n"
                          '[[profile]]\nname = "default"\nmax_size = -0.0\n')
    assert config.pool.hedge_budget == 0.0 and config.pool.retries == 0
    assert config.journal.sync_interval == 3600
    assert config.default.max_size == 0


@pytest.mark.parametrize(("rate", "concurrency"), [
    (NAN, 4), (INF, 4), (-INF, 4), (0.0099, 4), (1.01e6, 4), (50.0, 0), (50.0, 257),
])
def test_prewarm_pacing_says_why(rate: float, concurrency: int) -> None:
    assert check_pacing(rate, concurrency) == ("--rate must be from 0.01 to 1e+06 files/s and "
                                               "--concurrency from 1 to 256")


def test_prewarm_pacing_takes_the_bounds() -> None:
    for rate, concurrency in ((0.01, 1), (1e6, 256), (50.0, 4)):
        assert check_pacing(rate, concurrency) is None


# --- `vfile appliance cache`: every numeric option, by its own call ---------------------

#: an upstream no pool takes: an option left unchecked ends at it (exit 2, another
#: message), not in a served appliance
CACHE = ["appliance", "cache", "--listen", "tcp://127.0.0.1:0", "--upstream", "ftp://x",
         "--redis", "redis://127.0.0.1:1/0"]
NUMERIC = [name for name, p in inspect.signature(cmd_cache.cache).parameters.items()
           if str(p.annotation).startswith(("Annotated[float", "Annotated[int"))]


def test_the_cache_has_numeric_options() -> None:
    assert len(NUMERIC) >= 13, NUMERIC


@pytest.mark.parametrize("name", NUMERIC)
def test_every_numeric_cache_option_is_range_checked(name: str) -> None:
    """A numeric option added without its check would be taken as given: NaN, -1."""
    option = "--" + name.replace("_", "-")
    annotation = str(inspect.signature(cmd_cache.cache).parameters[name].annotation)
    bad = "nan" if annotation.startswith("Annotated[float") else "-1"
    res = CliRunner().invoke(app, [*CACHE, option, bad])
    assert res.exit_code == Exit.USAGE, res.output
    assert f"{option} must be between" in res.output, res.output
