"""The gate's decisions, made once per distinct inputs and kept (c29).

`policy.decide` is a pure function of `DecisionInputs`, and both are immutable, so
a decision made for one set of inputs holds for every later request with the same
inputs. Every create asked it three times (its write intent, its close scan before
and after the scan) and built a frozen `DecisionInputs` each time (a frozen
dataclass's `__init__` sets each of its 15 fields through `object.__setattr__`;
`dataclasses.replace` more): ~30 µs of the one thread that serves FUSE per create,
against ~3 µs for a tuple key and a dict lookup.

Nothing is invalidated: the key is every field the gate sets, read fresh per
request (the window, the quota, the pool's availability, a pending intent), and
the inputs of a miss are built from that same key, so a cached decision can only
be the one `decide` would make now. The key space is small (enums and booleans);
the memo is still bounded (`LIMIT`), emptied when full.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from vfile.filter.policy import Decision, DecisionInputs, ScanResult, decide

#: the DecisionInputs fields a key holds, in its order (the rest keep their defaults)
FIELDS = ("event", "trigger_enabled", "window", "cached", "write_pending", "writing",
          "reading", "appliance_down", "oversize", "oversize_rule", "fail_mode", "quota")
#: distinct inputs kept at most (far more than the enums and booleans combine to in use)
LIMIT = 4096


class Judged:
    """One set of inputs and `decide`'s decision on them; `after`: once scanned."""

    __slots__ = ("_after", "decision", "inputs")

    def __init__(self, inputs: DecisionInputs) -> None:
        self.inputs = inputs
        self.decision = decide(inputs)
        self._after: dict[tuple[ScanResult, bool], Decision] = {}

    def after(self, scan: ScanResult, window: bool) -> Decision:
        """The decision once the scan said `scan`, with the window as it is now."""
        d = self._after.get((scan, window))
        if d is None:
            d = self._after[scan, window] = decide(replace(self.inputs, scan=scan,
                                                           window=window))
        return d


class Decisions:
    """Judged inputs by key (a tuple of FIELDS' values)."""

    __slots__ = ("_memo",)

    def __init__(self) -> None:
        self._memo: dict[tuple[object, ...], Judged] = {}

    def judged(self, key: tuple[object, ...]) -> Judged:
        j = self._memo.get(key)
        if j is None:
            if len(self._memo) >= LIMIT:
                self._memo.clear()
            fields: dict[str, Any] = dict(zip(FIELDS, key, strict=True))
            j = self._memo[key] = Judged(DecisionInputs(**fields))
        return j

    def __len__(self) -> int:
        return len(self._memo)
