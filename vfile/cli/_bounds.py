"""The range check every numeric command-line option goes through (pure).

A NaN passes click's and typer's `min`/`max` (every comparison with it is false), and
an infinite or absurd value reaches a deadline or an allocation: `vfile scan --timeout
nan` was a traceback, `--timeout inf` an appliance waited on for ever (a28, l28).
`vfile.limits.in_range` refuses all three; here a refusal is the usage error."""

from __future__ import annotations

from vfile.errors import Exit, UserError
from vfile.limits import in_range


def within(option: str, value: float | None, low: float, high: float, unit: str = "") -> None:
    """Refuse `value` of `option` (exit 2, the usage error) unless low <= value <= high;
    None (the option not given) passes."""
    if value is not None and not in_range(value, low, high):
        raise UserError(f"{option} must be between {low:g} and {high:g}{unit}, not {value!r}",
                        Exit.USAGE)
