"""Scan-debt quota: how much unscanned exposure a profile may accumulate.

The debt of a profile is what its journal entries add up to: how many, how
many bytes, how old the oldest. Over any limit, the profile *escalates*
(`closed` for new unscanned opens, or `read-only`) until the debt falls below
the low-water mark on every measure — hysteresis, so the state does not flap
at the limit. `evaluate` is pure; `QuotaMonitor` measures the journal
periodically (from counters the journal keeps in the same transactions as
its entries: constant cost whatever the journal's size) and publishes the
states.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import trio

from vfile.config.model import Escalation, Profile, Quota
from vfile.filter.policy import QuotaState
from vfile.journal.records import DeferredEntry

log = logging.getLogger(__name__)

#: how often the monitor measures the debt
INTERVAL = 1.0


@dataclass(frozen=True, slots=True)
class Debt:
    entries: int = 0
    bytes: int = 0
    oldest_age: float = 0.0


def debts(entries: Iterable[DeferredEntry], now: float) -> dict[str, Debt]:
    """Debt per profile name (pure)."""
    acc: dict[str, list[float]] = {}
    for e in entries:
        d = acc.setdefault(e.profile, [0, 0, 0.0])
        d[0] += 1
        d[1] += e.identity.size if e.identity else 0
        d[2] = max(d[2], now - e.first_deferred)
    return {name: Debt(int(n), int(b), age) for name, (n, b, age) in acc.items()}


def _over(debt: Debt, q: Quota, scale: float) -> bool:
    return ((q.max_entries > 0 and debt.entries > q.max_entries * scale)
            or (q.max_bytes > 0 and debt.bytes > q.max_bytes * scale)
            or (q.max_age > 0 and debt.oldest_age > q.max_age * scale))


def evaluate(debt: Debt, quota: Quota | None, current: QuotaState) -> QuotaState:
    """The next quota state of a profile (pure): escalate over the limit, recover
    only once below `low_water` times every limit."""
    if quota is None:
        return QuotaState.NONE
    escalated = (QuotaState.CLOSED if quota.escalate is Escalation.CLOSED
                 else QuotaState.READ_ONLY)
    if current is QuotaState.NONE:
        return escalated if _over(debt, quota, 1.0) else QuotaState.NONE
    return escalated if _over(debt, quota, quota.low_water) else QuotaState.NONE


class QuotaMonitor:
    def __init__(self, profiles: Iterable[Profile],
                 read_debts: Callable[[], Mapping[str, tuple[int, int, float]]],
                 clock: Callable[[], float] = time.time) -> None:
        """`read_debts`: (entries, bytes, oldest age) per profile, as the journal keeps
        them incrementally (`Journal.profile_debts`): no walk of the journal."""
        self._profiles = {p.name: p for p in profiles}
        self._read = read_debts
        self._clock = clock
        self.states: dict[str, QuotaState] = dict.fromkeys(self._profiles, QuotaState.NONE)
        self.debts: dict[str, Debt] = {}

    def state(self, profile: str) -> QuotaState:
        return self.states.get(profile, QuotaState.NONE)

    def update(self, debts_now: Mapping[str, Debt]) -> None:
        self.debts = dict(debts_now)
        for name, profile in self._profiles.items():
            old = self.states[name]
            new = evaluate(debts_now.get(name, Debt()), profile.quota, old)
            if new is not old:
                d = debts_now.get(name, Debt())
                if new is QuotaState.NONE:
                    log.warning("quota: profile %s recovered (debt %d entries, %d bytes, "
                                "oldest %.0fs)", name, d.entries, d.bytes, d.oldest_age)
                else:
                    log.warning("quota: profile %s over its scan-debt quota (%d entries, "
                                "%d bytes, oldest %.0fs): now %s", name, d.entries, d.bytes,
                                d.oldest_age, new.value)
                self.states[name] = new

    async def measure(self) -> None:
        # O(profiles) reads (counters and one index lookup each): on the trio thread.
        self.update({name: Debt(n, b, age) for name, (n, b, age) in self._read().items()})

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if not any(p.quota for p in self._profiles.values()):
            task_status.started()
            return  # nothing to watch
        await self.measure()
        task_status.started()
        while True:
            await trio.sleep(INTERVAL)
            await self.measure()

    def statistics(self) -> dict[str, Any]:
        return {name: {"state": self.state(name).value,
                       "entries": self.debts.get(name, Debt()).entries,
                       "bytes": self.debts.get(name, Debt()).bytes,
                       "oldest_age_s": round(self.debts.get(name, Debt()).oldest_age, 1)}
                for name in self._profiles}
