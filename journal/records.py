"""The journal's records and their byte encoding: pure, no I/O.

Invariants:
- Every stored value starts with one byte, the value format version
  (`VALUE_FORMAT`), followed by compact JSON of a positional list. A value
  whose first byte is not a known version, or whose body does not decode to
  exactly the expected shape and types, raises `JournalCorrupt` -- never any
  other exception, and never a half-filled record.
- Paths are `str` as Python's os module gives them (undecodable bytes are lone
  surrogates); JSON with `ensure_ascii` round-trips them exactly.
- Records are frozen: the store replaces a record, it never mutates one.

JSON was chosen over struct/msgpack by measurement: one DeferredEntry encodes
in a few microseconds, well below the per-record cost of the group commit, and
it needs no extra dependency and no hand-written field layout.
"""

from __future__ import annotations

import enum
import json
import math
import os
import threading
from dataclasses import dataclass
from typing import Any

#: Version byte at the start of every stored value.
VALUE_FORMAT = 1
#: How many exposures (who opened a file unscanned, one per uid and command) a record
#: keeps: the first opener always, then the most recent others.
MAX_EXPOSURES = 32


class JournalError(Exception):
    """A journal could not be opened or written; the message names the path."""


class JournalCorrupt(JournalError):
    """The file is not a readable LMDB environment, or a value does not decode."""


class JournalForeign(JournalError):
    """An LMDB environment that is not a vfile journal."""


class JournalTooNew(JournalError):
    """A journal written by a newer vfile, in a format this one does not know."""


class JournalUnreadable(JournalError):
    """The state directory or its files cannot be read (permissions, I/O)."""


class JournalFull(JournalError):
    """The disk holding the journal is full; nothing was written."""


@dataclass(frozen=True, slots=True)
class Identity:
    """What makes a verdict valid for a file's content (with the signature version)."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def from_stat(cls, st: os.stat_result) -> Identity:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class VerdictOutcome(enum.StrEnum):
    """What a stored verdict says (encoded in the journal as its string value)."""

    CLEAN = "clean"
    INFECTED = "infected"


class Reason(enum.StrEnum):
    UNAVAILABLE = "unavailable"
    TIMEOUT = "timeout"
    WINDOW = "window"
    MODIFIED = "modified"
    QUOTA = "quota"
    OVERSIZE = "oversize"
    ERROR = "error"
    #: opened on the previous signature version's clean verdict during a grace
    GRACE = "grace"


@dataclass(frozen=True, slots=True)
class Exposure:
    """Who opened a file while it had no verdict: one uid and command, aggregated."""

    uid: int
    #: the pid of the latest open
    pid: int
    command: str
    #: the latest open
    time: float
    #: the first open (0.0: the same as `time`)
    first: float = 0.0
    count: int = 1
    #: it opened the file to write it (a write intent), not to read unscanned content
    wrote: bool = False

    @property
    def first_time(self) -> float:
        return self.first or self.time

    def key(self) -> tuple[int, str]:
        return (self.uid, self.command)


def merge_exposures(old: tuple[Exposure, ...], new: Exposure, *, same_batch: bool = False,
                    limit: int = MAX_EXPOSURES) -> tuple[Exposure, ...]:
    """`old` with `new` counted in: one aggregate per (uid, command), in order of first
    open, at most `limit`, never dropping the first opener (index 0).

    `same_batch`: `new` is a later copy of an aggregate already counted (the same
    first time): it replaces it rather than adding to its count.
    """
    out = list(old)
    for i, x in enumerate(out):
        if x.key() == new.key():
            if same_batch and x.first_time == new.first_time:
                count = max(x.count, new.count)
            else:
                count = x.count + new.count
            latest = new if new.time >= x.time else x
            out[i] = Exposure(x.uid, latest.pid, x.command, max(x.time, new.time),
                              min(x.first_time, new.first_time), count,
                              x.wrote and new.wrote)
            return tuple(out)
    out.append(new)
    while len(out) > max(1, limit):
        # Drop the other opener seen least recently; the first opener stays.
        stale = min(range(1, len(out)), key=lambda i: out[i].time)
        del out[stale]
    return tuple(out)


@dataclass(frozen=True, slots=True)
class DeferredEntry:
    path: str
    #: Bumped (journal-wide counter) at every defer; `complete` matches on it.
    seq: int
    identity: Identity | None
    reason: Reason
    profile: str
    first_deferred: float
    last_deferred: float
    attempts: int
    last_error: str
    exposures: tuple[Exposure, ...]
    not_before: float
    lease_until: float
    poisoned: bool
    #: The seq of the first defer; the oldest-first order of the queue. Kept on re-defer,
    #: so a file deferred again and again is not pushed to the back.
    order: int = 0


@dataclass(frozen=True, slots=True)
class VerdictRecord:
    identity: Identity
    sig_version: str
    outcome: VerdictOutcome
    signature: str
    appliance: str
    time: float
    #: bytes the scan covered: -1 the whole file; else a prefix (vfile.filter.coverage)
    covered: int = -1


@dataclass(frozen=True, slots=True)
class QuarantineRecord:
    id: str
    original_path: str
    quarantine_path: str
    signature: str
    time: float
    identity: Identity | None
    profile: str
    #: who opened the file while it had no verdict
    exposures: tuple[Exposure, ...] = ()


@dataclass(frozen=True, slots=True)
class ExposureRecord:
    """Exposures kept after their deferred entry ended without a clean verdict for the
    content they read: the file was unlinked or renamed over before a scan, found
    infected, or changed before a scan. Kept, one per path, until an administrator
    clears them."""

    path: str
    #: "unlinked" | "overwritten" | "infected" | "changed" | "gone"
    outcome: str
    detail: str
    first: float
    time: float
    exposures: tuple[Exposure, ...]


# --- encoding -----------------------------------------------------------------------------

_dumps = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), check_circular=False).encode
_PREFIX = bytes([VALUE_FORMAT])


def _pack(obj: list[Any]) -> bytes:
    return _PREFIX + _dumps(obj).encode("ascii")


def _unpack(data: bytes, kind: str, length: int) -> list[Any]:
    if not data or data[0] != VALUE_FORMAT:
        version = data[0] if data else None
        raise JournalCorrupt(f"{kind} record has unknown value format {version!r}")
    body = bytes(data[1:])
    if body[:1] != b"[" or body[-1:] != b"]":  # json.loads would skip stray whitespace
        raise JournalCorrupt(f"{kind} record has the wrong shape")
    try:
        obj = json.loads(body.decode("ascii"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise JournalCorrupt(f"{kind} record does not decode: {err}") from None
    if not isinstance(obj, list) or len(obj) != length:
        raise JournalCorrupt(f"{kind} record has the wrong shape")
    return obj


def _int(v: object) -> int:
    if type(v) is not int:
        raise JournalCorrupt(f"expected an integer, got {type(v).__name__}")
    return v


def _float(v: object) -> float:
    if type(v) is float or type(v) is int:
        return float(v)
    raise JournalCorrupt(f"expected a number, got {type(v).__name__}")


def _str(v: object) -> str:
    if type(v) is not str:
        raise JournalCorrupt(f"expected a string, got {type(v).__name__}")
    return v


def _identity_obj(ident: Identity | None) -> list[int] | None:
    if ident is None:
        return None
    return [ident.dev, ident.ino, ident.size, ident.mtime_ns, ident.ctime_ns]


def _identity(v: object) -> Identity | None:
    if v is None:
        return None
    if not isinstance(v, list) or len(v) != 5:
        raise JournalCorrupt("identity has the wrong shape")
    # Inline type tests (the drain decodes an identity per claimed entry and verdict).
    dev, ino, size, mtime, ctime = v
    if type(dev) is int and type(ino) is int and type(size) is int \
            and type(mtime) is int and type(ctime) is int:
        return Identity(dev, ino, size, mtime, ctime)
    raise JournalCorrupt("identity has the wrong shape: expected integers")


def _exposure(v: object) -> Exposure:
    if not isinstance(v, list) or len(v) not in (4, 7):
        raise JournalCorrupt("exposure has the wrong shape")
    if len(v) == 4:  # written before exposures were aggregated
        return Exposure(_int(v[0]), _int(v[1]), _str(v[2]), _float(v[3]))
    uid, pid, command, when, first, count, wrote = v
    if type(uid) is int and type(pid) is int and type(command) is str \
            and type(count) is int and type(wrote) is bool:
        return Exposure(uid, pid, command, _float(when), _float(first), count, wrote)
    raise JournalCorrupt("exposure has the wrong shape")


def _exposure_obj(x: Exposure) -> list[Any]:
    return [x.uid, x.pid, x.command, x.time, x.first, x.count, x.wrote]


def exposure_to_json(x: Exposure) -> dict[str, Any]:
    return {"uid": x.uid, "pid": x.pid, "command": x.command, "time": x.time,
            "first": x.first_time, "last": x.time, "count": x.count, "wrote": x.wrote}


def encode_deferred(e: DeferredEntry) -> bytes:
    return _pack([e.path, e.seq, _identity_obj(e.identity), e.reason.value, e.profile,
                  e.first_deferred, e.last_deferred, e.attempts, e.last_error,
                  [_exposure_obj(x) for x in e.exposures],
                  e.not_before, e.lease_until, e.poisoned, e.order])


def encode_new_deferred(path: str, seq: int, identity: Identity | None, *, reason: Reason,
                        profile: str, now: float, error: str,
                        exposure: Exposure | None) -> bytes:
    """`encode_deferred` of a first defer, without building the DeferredEntry.

    The same bytes as `encode_deferred(DeferredEntry(path, seq, identity, reason,
    profile, now, now, 0, error, exposures, 0.0, 0.0, False, order=seq))` (tested):
    the group commit encodes on the trio thread, before the writer thread needs it.
    """
    return _PREFIX + _dumps([
        path, seq, _identity_obj(identity), reason.value, profile, now, now, 0, error,
        [] if exposure is None else [_exposure_obj(exposure)],
        0.0, 0.0, False, seq]).encode("ascii")


_REASONS = {r.value: r for r in Reason}


#: how many `remember_deferred` entries are kept at most (the drain's entries in flight
#: are a few hundred; older ones are dropped first)
RECENT_MAX = 4096
_recent: dict[bytes, DeferredEntry] = {}
_recent_lock = threading.Lock()


def remember_deferred(data: bytes, entry: DeferredEntry) -> None:
    """Note that `data` is `encode_deferred(entry)`: the next `decode_deferred(data)` returns
    `entry` without decoding (and forgets it). A claim stores each entry it hands out and
    the completion decoded it again (bench/drain.py --scale, py-spy); a memo of a pure
    function, so whatever is stored under those bytes later decodes the same."""
    with _recent_lock:
        while len(_recent) >= RECENT_MAX:  # drop the oldest: never read back (re-deferred)
            try:
                _recent.pop(next(iter(_recent)), None)
            except (RuntimeError, StopIteration):
                continue  # another thread's `decode_deferred` took one meanwhile
        _recent[data] = entry


def decode_deferred(data: bytes) -> DeferredEntry:
    # dict.pop with bytes keys runs no Python code: atomic under the GIL, any thread.
    hit = _recent.pop(data, None) if _recent and type(data) is bytes else None
    if hit is not None:
        return hit
    v = _unpack(data, "deferred", 14)
    path, seq, ident, reason, profile, first, last, attempts, error, exposures, \
        not_before, lease_until, poisoned, order = v
    # The same checks as `_str`, `_int` and `_float`, inline: the drain decodes every
    # entry it claims and completes (bench/drain.py --scale, py-spy).
    if not (type(path) is str and type(seq) is int and type(profile) is str
            and type(attempts) is int and type(error) is str and type(order) is int):
        raise JournalCorrupt("deferred record has the wrong shape: a field's type")
    known = _REASONS.get(reason) if type(reason) is str else None
    if known is None:
        raise JournalCorrupt(f"deferred record has unknown reason {reason!r}")
    if not isinstance(exposures, list) or type(poisoned) is not bool:
        raise JournalCorrupt("deferred record has the wrong shape")
    return DeferredEntry(
        path, seq, _identity(ident), known, profile, _float(first), _float(last), attempts,
        error, tuple([_exposure(x) for x in exposures]), _float(not_before),
        _float(lease_until), poisoned, order)


def surely_unclaimable(data: bytes, now: float, lease_now: float | None = None,
                       lease_max: float = math.inf) -> bool:
    """Whether an encoded DeferredEntry is poisoned, leased or backing off at `now`, read
    off its last four fields (`not_before, lease_until, poisoned, order`: numbers and a
    bool, so no comma inside) without decoding the rest. False when unsure (damaged):
    the caller decodes it. A claim passes the entries in flight (leased) at the front
    of the queue on every call: decoding each was most of a claim's cost. `lease_now`:
    the time leases are compared with, if not `now` (queue.op_claim); a lease ending
    after `lease_max` is over too."""
    try:
        _, not_before, lease_until, poisoned, _ = data.rsplit(b",", 4)
        return poisoned == b"true" or (now if lease_now is None else lease_now) < float(
            lease_until) <= lease_max or float(not_before) > now
    except ValueError:
        return False


def leased(e: DeferredEntry, until: float) -> DeferredEntry:
    """`e` leased until `until` (`dataclasses.replace` costs as much as a decode)."""
    return DeferredEntry(e.path, e.seq, e.identity, e.reason, e.profile, e.first_deferred,
                         e.last_deferred, e.attempts, e.last_error, e.exposures,
                         e.not_before, until, e.poisoned, e.order)


def encode_leased(data: bytes, lent: DeferredEntry) -> bytes:
    """`encode_deferred(lent)` where `data` encodes `lent` but for its lease: `data` with its
    lease field replaced (the fourth from the end; the last four are numbers and a bool,
    so no comma inside). A claim leases every entry it hands out, and re-encoding each was
    about a fifth of a claim's time (bench/drain.py --scale, py-spy). The same bytes
    as encoding it (tested); encoded in full if `data` does not split so."""
    parts = data.rsplit(b",", 4)
    if len(parts) != 5:
        return encode_deferred(lent)
    parts[2] = _dumps(lent.lease_until).encode("ascii")
    return b",".join(parts)


def decode_deferred_path(data: bytes) -> str:
    """Only the path of an encoded DeferredEntry (for collision checks)."""
    return decode_deferred(data).path


def encode_verdict(r: VerdictRecord) -> bytes:
    return _pack([_identity_obj(r.identity), r.sig_version, r.outcome, r.signature,
                  r.appliance, r.time, r.covered])


def decode_verdict(data: bytes) -> VerdictRecord:
    try:
        v = _unpack(data, "verdict", 7)
    except JournalCorrupt:
        # Written before verdicts recorded their coverage: only whole-file verdicts
        # were stored then... except by the drain, on a prefix: count those as a prefix
        # of unknown length, never as the whole file (issue 13).
        v = [*_unpack(data, "verdict", 6), 0]
    ident = _identity(v[0])
    if ident is None:
        raise JournalCorrupt("verdict record has no identity")
    try:
        outcome = VerdictOutcome(_str(v[2]))
    except ValueError:
        raise JournalCorrupt(f"verdict record has unknown outcome {v[2]!r}") from None
    return VerdictRecord(ident, _str(v[1]), outcome, _str(v[3]), _str(v[4]), _float(v[5]),
                         _int(v[6]))


def encode_quarantine(r: QuarantineRecord) -> bytes:
    return _pack([r.id, r.original_path, r.quarantine_path, r.signature, r.time,
                  _identity_obj(r.identity), r.profile,
                  [_exposure_obj(x) for x in r.exposures]])


def _exposures(v: object) -> tuple[Exposure, ...]:
    if not isinstance(v, list):
        raise JournalCorrupt("exposures have the wrong shape")
    return tuple(_exposure(x) for x in v)


def decode_quarantine(data: bytes) -> QuarantineRecord:
    try:
        v = _unpack(data, "quarantine", 8)
    except JournalCorrupt:
        v = [*_unpack(data, "quarantine", 7), []]  # written before exposures were kept
    return QuarantineRecord(_str(v[0]), _str(v[1]), _str(v[2]), _str(v[3]), _float(v[4]),
                            _identity(v[5]), _str(v[6]), _exposures(v[7]))


def encode_exposed(r: ExposureRecord) -> bytes:
    return _pack([r.path, r.outcome, r.detail, r.first, r.time,
                  [_exposure_obj(x) for x in r.exposures]])


def decode_exposed(data: bytes) -> ExposureRecord:
    v = _unpack(data, "exposure", 6)
    return ExposureRecord(_str(v[0]), _str(v[1]), _str(v[2]), _float(v[3]), _float(v[4]),
                          _exposures(v[5]))


def exposed_to_json(r: ExposureRecord) -> dict[str, Any]:
    return {"path": r.path, "outcome": r.outcome, "detail": r.detail, "first": r.first,
            "time": r.time, "exposures": [exposure_to_json(x) for x in r.exposures]}


def deferred_to_json(e: DeferredEntry) -> dict[str, Any]:
    """A plain dict for `journal export` / `--json` output."""
    return {
        "path": e.path, "seq": e.seq,
        "identity": None if e.identity is None else _identity_dict(e.identity),
        "reason": e.reason.value, "profile": e.profile, "first_deferred": e.first_deferred,
        "last_deferred": e.last_deferred, "attempts": e.attempts, "last_error": e.last_error,
        "exposures": [exposure_to_json(x) for x in e.exposures],
        "not_before": e.not_before, "lease_until": e.lease_until, "poisoned": e.poisoned,
    }


def quarantine_to_json(r: QuarantineRecord) -> dict[str, Any]:
    return {"id": r.id, "original_path": r.original_path, "quarantine_path": r.quarantine_path,
            "signature": r.signature, "time": r.time, "profile": r.profile,
            "identity": None if r.identity is None else _identity_dict(r.identity),
            "exposures": [exposure_to_json(x) for x in r.exposures]}


def _identity_dict(i: Identity) -> dict[str, int]:
    return {"dev": i.dev, "ino": i.ino, "size": i.size, "mtime_ns": i.mtime_ns,
            "ctime_ns": i.ctime_ns}
