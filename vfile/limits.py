"""The one range check, and the limits more than one way in enforces (pure, no imports).

Every number from outside (a command-line option, a control command's JSON argument, a
configuration key, `vfile prewarm`'s pacing) is checked with `in_range`. A NaN passes
click's `min`/`max` and every `x < low` (each comparison with it is false), and an
infinite or absurd value reaches a deadline or an allocation (b27, a28, l28);
`low <= value <= high` is false for all three, so the one comparison refuses them.
Each caller says no in its own way: the command line exits 2 naming the option
(vfile.cli._bounds), a control command replies an error (vfile.commands), the
configuration exits 3 naming the file, the key and its range (vfile.config.reader).

The limits here are the ones written in more than one place before (q29): one
definition, imported by each place that enforces it.
"""

from __future__ import annotations

HOUR = 3600.0
DAY = 86400.0
#: 1 PiB: past any file, scan debt or cache of copies
MAX_BYTES = 1 << 50

#: the drain's rate (`vfile drain MNT rate`, the control command `drain`, b27): below
#: the minimum a file waits past any lease, past the maximum is a typo, not a choice
MIN_FILES_PER_S = 0.001
MIN_BYTES_PER_S = 1.0
MAX_BYTES_PER_S = 1e12
#: the most files per second any rate takes (the drain, `vfile prewarm --rate`, the
#: caching appliance's `--rescan-rate`): no appliance scans a million files a second,
#: and 1e6 is "unlimited" in tests/t4_drain_speed_test.py and bench/drain.py (a28)
MAX_FILES_PER_S = 1e6


def in_range(value: object, low: float, high: float) -> bool:
    """True if `value` is an int or a float (a bool is neither here: JSON's and TOML's
    `true` is not a number to whoever wrote it) with low <= value <= high. NaN is never
    in range, an infinity only within an infinite bound; -0.0 is 0."""
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and low <= value <= high)
