"""A small content already read, judged at once by the embedded engine (`judge_now`).

A close scan of a small file reads it once to hash it (vfile.filter.contenthash).
On the embedded default the engine could then judge those very bytes in the same
call; going through `Pool.scan_fd` instead cost a create's worth of the trio
thread around a ~40 µs engine call (a semaphore, a cancel scope and deadline per
attempt, the liveness watchdog's nursery and task, the hedge's bookkeeping, and
reading the file again: README "Creates under scanning", cr21's profile).

`judge_now` takes that short way only when the pool would have asked the
embedded engine first and at once anyway; in every other case it answers None
and the caller goes the pool's whole way, with its deadlines, retries, breaker
and fail modes:
- the first usable appliance (priority order) is the embedded engine, its
  breaker closed (a half-open trial is the pool's to run), its signature
  version known (else the pool probes it first);
- no fault is set on the engine (`VFILE_EMBEDDED_FAULT`, `set_fault`): a fault
  acts on the pool's path, as on a socket;
- the engine answers: if it fails or its result is malformed, the pool's path
  asks it again and records the failure (the engine is deterministic), so a
  failing engine never gives a clean verdict here.
An answer counts as a scan of the appliance and a breaker success, as the pool's
would; it does not teach the latency model (no I/O was timed: the model is for
the pool's attempts, whose timeouts it sets).

Invariants:
- No I/O and no await: the bytes are the caller's, judged on the trio thread
  (at most `embedded.INLINE_MAX`, ~0.2 ms of hashing).
- Never raises for the engine's trouble: None.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import trio

from vfile.scanner.breaker import State
from vfile.scanner.embedded import INLINE_MAX, EmbeddedClient
from vfile.scanner.verdict import ApplianceError, Outcome, Verdict

if TYPE_CHECKING:
    from vfile.scanner.pool import Pool


def judge_now(pool: Pool, data: bytes, sha256: bytes | None = None) -> Verdict | None:
    """The embedded engine's verdict on the whole content `data` (`sha256`: its digest, if
    the caller hashed it already), or None: ask the pool (module doc)."""
    if len(data) > INLINE_MAX:
        return None
    app = pool.first_usable()
    if app is None or not isinstance(app.client, EmbeddedClient) or not app.sig_version:
        return None
    now = trio.current_time()
    if app.breaker.state(now) is not State.CLOSED or app.client.engine.fault is not None:
        return None
    started = time.perf_counter()
    try:
        outcome, detail = app.client.judge(data, sha256=sha256)
    except ApplianceError:
        return None  # the pool's path meets it again and records it against the engine
    app.scans += 1
    app.latencies.append(time.perf_counter() - started)
    app.live.answered(now)
    pool.record_success(app)
    if outcome is Outcome.CLEAN:
        return Verdict.clean(app.name, app.sig_version)
    if outcome is Outcome.INFECTED:
        return Verdict.infected(detail, app.name, app.sig_version)
    return None  # (the engine reads nothing, so it has no error outcome): the pool decides
