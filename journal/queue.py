"""Queue semantics for the drain: claim with a lease, release with backoff, poison.

Invariants:
- A claim hands out the oldest entries (by `order`, the seq of their first
  defer) that are not poisoned, not leased (`lease_until <= now`) and past
  their backoff (`not_before <= now`), and leases them until `now + lease`.
  A lease is only a timestamp: after a crash it simply expires, so nothing
  stays claimed forever and no recovery pass is needed. A lease granted before
  the mount's run began (`run_started`) is over at once: only the mount's drain
  claims, and the run that granted it is gone (a stop or a crash left it).
- A release (failed attempt) counts an attempt only if the entry still has
  the claimed seq; a re-deferred entry (new content) is left for a fresh try.
- After `max_attempts` failed attempts an entry is poisoned: kept, listed,
  counted in stats, never claimed and never dropped silently; `retry` brings
  it back, `purge` removes it.
- Backoff is `BACKOFF_BASE * 2**(attempts-1)`, capped at `BACKOFF_CAP`: a pure
  function, so tests and the CLI can show when an entry is next due.
"""

from __future__ import annotations

import dataclasses

from vfile.journal import keys
from vfile.journal.records import (
    DeferredEntry,
    JournalCorrupt,
    decode_deferred,
    encode_leased,
    leased,
    remember_deferred,
    surely_unclaimable,
)
from vfile.journal.tables import Tables, Txn, delete_entry, find, iter_entries, put_entry

BACKOFF_BASE = 5.0
BACKOFF_CAP = 3600.0
#: s: a lease granted at the very start of a run is still this run's (op_claim)
_EPSILON = 0.001
#: s: a clock stepped back by less (NTP steps from 128 ms) keeps this run's leases (op_claim)
_STEP = 1.0


def backoff(attempts: int, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP) -> float:
    """Seconds to wait after the `attempts`-th failed attempt."""
    if attempts <= 0:
        return 0.0
    # min() before the power would overflow for absurd attempt counts.
    return min(cap, base * 2.0 ** min(attempts - 1, 60))


def op_claim(txn: Txn, t: Tables, n: int, lease: float, now: float, *,
             run_started: float | None = None) -> list[DeferredEntry]:
    """Lease up to `n` claimable entries until `now + lease`. `run_started`: when this
    mount's run began; a lease granted before it was an earlier run's (only the mount's
    drain claims), whose drain is gone: over, not waited out (r27: a stop left the
    entries of the batches in flight leased for the 1,260 s of the default lease)."""
    claimed: list[DeferredEntry] = []
    # A lease of this run ends at or after run_started + lease; an earlier run's before.
    lease_now = now if run_started is None else max(now, run_started + lease - _EPSILON)
    # ... and at most a lease from now: one ending later was granted under a clock ahead
    # of this one (an earlier run's, the clock since stepped back: a28, it waited out the
    # step too), over as well. (A step back within this run by more than _STEP makes its
    # own leases in flight claimable again: a second scan, as when a lease expires.)
    lease_max = now + lease + _STEP
    if n <= 0:
        return claimed
    for okey in txn.cursor(db=t.order).iternext(keys=True, values=False):
        _, pkey = keys.order_key_split(okey)
        raw = txn.get(pkey, db=t.deferred)
        if raw is None:  # cannot happen while the index invariant holds
            continue
        if surely_unclaimable(raw, now, lease_now, lease_max):
            continue  # in flight (leased) or backing off: passed without a decode
        try:
            entry = decode_deferred(raw)
        except JournalCorrupt:
            continue  # logged by the readers; never hand out garbage
        if entry.poisoned or lease_now < entry.lease_until <= lease_max \
                or entry.not_before > now:
            continue
        lent = leased(entry, now + lease)
        value = encode_leased(raw, lent)
        put_entry(txn, t, pkey, entry, lent, value)
        # Its completion finds these very bytes (unless re-deferred meanwhile): no decode.
        remember_deferred(value, lent)
        claimed.append(lent)
        if len(claimed) >= n:
            break
    return claimed


def op_release(txn: Txn, t: Tables, *, path: str, seq: int, error: str, now: float,
               max_attempts: int) -> bool:
    """Record a failed attempt; returns whether the entry is now poisoned."""
    found = find(txn, t, path)
    if found is None:
        return False
    key, entry = found
    if entry.seq != seq:
        put_entry(txn, t, key, entry, dataclasses.replace(entry, lease_until=0.0))
        return False
    attempts = entry.attempts + 1
    poisoned = attempts >= max_attempts
    put_entry(txn, t, key, entry, dataclasses.replace(
        entry, attempts=attempts, last_error=error, lease_until=0.0,
        not_before=now + backoff(attempts), poisoned=poisoned))
    return poisoned


def _targets(txn: Txn, t: Tables, path: str | None) -> list[tuple[bytes, DeferredEntry]]:
    """The entry of `path` (none if it has none), or every entry when `path` is None."""
    if path is not None:
        found = find(txn, t, path)
        return [] if found is None else [found]
    return list(iter_entries(txn, t))


def op_retry(txn: Txn, t: Tables, path: str | None) -> int:
    count = 0
    for key, entry in _targets(txn, t, path):
        if entry.poisoned or entry.attempts or entry.not_before:
            put_entry(txn, t, key, entry, dataclasses.replace(
                entry, poisoned=False, attempts=0, not_before=0.0, lease_until=0.0))
            count += 1
    return count


def op_purge(txn: Txn, t: Tables, path: str | None, poisoned_only: bool) -> int:
    count = 0
    for key, entry in _targets(txn, t, path):
        if poisoned_only and not entry.poisoned:
            continue
        delete_entry(txn, t, key, entry)
        count += 1
    return count
