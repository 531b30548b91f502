"""Settling a verdict: store it (resolving the journal entry it answers), act if infected.

Three named operations replace the old `_settle(persist, seq)` flag pair:

- `resolve(seq)`: the verdict answers journal entry `seq` (the drain's, or a
  close scan's own write intent): verdict stored and entry removed in one
  transaction.
- `keep`: a whole-file verdict from a scan nobody's entry asked for (an open's
  scan, or a close scan a newer writer overtook): stored, and it resolves the
  path's entry only if that entry is for this very identity and no write is
  pending on the path.
- `keep_partial`: a verdict on a prefix (an oversize file): it answers no entry
  and a clean one is not stored; an infected one is (a prefix is enough to
  know a file is infected).

Each then updates the sticky taint (before any action moves the file), audits
the verdict and, when infected, applies the profile's action with who opened
the file unscanned. Journal trouble is logged, never raised: the entry stays
for the drain.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from vfile.config.model import Profile
from vfile.filter import sticky
from vfile.filter.actions import Actions
from vfile.filter.intents import IntentTable
from vfile.filter.outcomes import Stats, exposures_json
from vfile.journal.ops import PreparedDefer
from vfile.journal.records import (
    DeferredEntry,
    Exposure,
    JournalError,
    VerdictOutcome,
    VerdictRecord,
)
from vfile.journal.store import Journal
from vfile.observe.observers import Observer

#: the gate's logger: operators filter and alert on it (the gate split kept its name)
log = logging.getLogger("vfile.filter.gate")

#: how a verdict goes into the journal, given the path's deferred entry (if any)
Store = Callable[[DeferredEntry | None], Awaitable[None]]


class Settler:
    """Settles verdicts for the gate; shares its journal, intents, counters and observer."""

    def __init__(self, journal: Journal, intents: IntentTable, actions: Actions, *,
                 open_source: Callable[[str], int], observer: Observer, stats: Stats,
                 clock: Callable[[], float]) -> None:
        self._journal = journal
        self._intents = intents
        self._actions = actions
        self._open_source = open_source
        self._observer = observer
        self._stats = stats
        self._clock = clock

    async def resolve(self, path: str, record: VerdictRecord, profile: Profile,
                      seq: int, *, linger: bool = False) -> None:
        """Store `record` and remove journal entry `seq` of `path` in one transaction;
        `linger`: the transaction may wait a few ms to be shared (the drain's)."""
        async def store(entry: DeferredEntry | None) -> None:
            await self._journal.complete(path, seq, record, linger=linger)
        # `store` goes by seq: the entry is read only for an infected file's exposures.
        await self._settle(path, record, profile, store,
                           needs_entry=record.outcome == VerdictOutcome.INFECTED)

    async def resolve_clean(self, items: Sequence[tuple[str, VerdictRecord, Profile, int]]
                            ) -> None:
        """`resolve` of many clean verdicts (the drain's batches: (path, record, profile,
        seq) each): their entries removed and verdicts stored in one journal operation,
        not one per file (bench/drain.py --scale: a task, an operation and a wake-up per
        file). Journal trouble is logged once for the batch; the entries stay."""
        try:
            for path, record, _, _ in items:
                await sticky.update_taint(self._journal, self._open_source, path, record,
                                          self._clock())
            await self._journal.complete_many([(path, seq, record)
                                               for path, record, _, seq in items])
        except JournalError as err:
            log.error("journal: cannot store the verdicts for %r and %d more: %s",
                      items[0][0], len(items) - 1, err)
        for path, record, profile, _ in items:
            self._audit_clean(path, record, profile)

    def resolve_soon(self, path: str, record: VerdictRecord, profile: Profile,
                     seq: int | PreparedDefer,
                     on_done: Callable[[JournalError | None], None]) -> bool:
        """`resolve` of a clean verdict without waiting for the journal: the completion is
        queued (journal.store.complete_soon; `seq` may be a create's intent still queued,
        whose transaction it then joins) and `on_done(error)` runs once it is committed.
        False, nothing done: not a case for it (infected, a taint to clear, a full
        queue); the caller `resolve`s."""
        if record.outcome != VerdictOutcome.CLEAN:
            return False
        try:
            if self._journal.get_taint(record.identity.dev, record.identity.ino) is not None:
                return False  # clearing the taint is a write to wait for (filter.sticky)
            if not self._journal.complete_soon(path, seq, record, on_done):
                return False
        except JournalError as err:
            log.error("journal: cannot store the verdict for %r: %s", path, err)
            return False
        self._observer.audit("verdict", path, verdict=record.outcome,
                             appliance=record.appliance, profile=profile.name, action="none")
        return True

    async def keep(self, path: str, record: VerdictRecord, profile: Profile) -> None:
        """Store a whole-file verdict; it resolves the path's entry only if that entry is
        for the same identity and no write is pending on the path."""
        async def store(entry: DeferredEntry | None) -> None:
            if entry is not None and entry.identity == record.identity \
                    and path not in self._intents:
                await self._journal.complete(path, entry.seq, record)
            else:
                await self._journal.put_verdict(record)
        await self._settle(path, record, profile, store)

    async def keep_partial(self, path: str, record: VerdictRecord, profile: Profile) -> None:
        """A verdict on a prefix: resolves nothing; stored only if infected."""
        async def store(entry: DeferredEntry | None) -> None:
            if record.outcome == VerdictOutcome.INFECTED:
                await self._journal.put_verdict(record)
        await self._settle(path, record, profile, store)

    async def _settle(self, path: str, record: VerdictRecord, profile: Profile,
                      store: Store, *, needs_entry: bool = True) -> None:
        """Store a verdict (resolving a journal entry it answers), act if infected.
        `needs_entry`: read the path's entry for `store` and the exposures (False: a
        clean verdict whose `store` goes by seq; a read per drained file saved)."""
        exposures: tuple[Exposure, ...] = ()
        try:
            await sticky.update_taint(self._journal, self._open_source, path, record,
                                      self._clock())
            entry = self._journal.get_deferred(path) if needs_entry else None
            if entry is not None:
                exposures = entry.exposures  # kept by the journal; shown with the action
            await store(entry)
        except JournalError as err:
            log.error("journal: cannot store the verdict for %r: %s", path, err)
        if record.outcome != VerdictOutcome.INFECTED:
            self._audit_clean(path, record, profile)
            return
        self._stats.infections += 1
        done = await self._actions.apply(profile.infected_action, path, record,
                                         profile=profile.name, hook=profile.hook,
                                         exposures=exposures)
        self._observer.audit("verdict", path, verdict="infected", signature=record.signature,
                             appliance=record.appliance, profile=profile.name,
                             action=profile.infected_action.value, result=done,
                             exposures=exposures_json(exposures))
        log.warning("infected: %r signature %s (profile %s, action %s: %s)", path,
                    record.signature, profile.name, profile.infected_action.value, done)

    def _audit_clean(self, path: str, record: VerdictRecord, profile: Profile) -> None:
        self._observer.audit("verdict", path, verdict=record.outcome,
                             appliance=record.appliance, profile=profile.name, action="none")
