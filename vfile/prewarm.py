"""`vfile prewarm MOUNT`: open every file once, slowly, so the first real opens are warm.

Warming goes through the mount itself: each regular file is opened read-only
through MOUNT, which is exactly the open the gate scans (profiles, triggers,
size rules, infected actions and the verdict store all apply as for any
user), so a file that already has a current verdict costs a cache hit and no
appliance contact, and a file without one is scanned and its verdict stored.
An infected file found this way gets its profile's infected action, as it
would on a user's open. Nothing here reaches around the gate.

Pacing reuses the drain's token bucket (vfile.filter.drain.TokenBucket) with the same
AIMD rule as the drain: the rate halves when an open takes more than
BACKOFF_FACTOR x the best recent one (the appliance is struggling) and creeps
back additively. It waits (polling the control plane's `status`) while a
window is active or no appliance is available, so it never fills the journal.

Resumable: files are visited in a fixed (sorted) order and the last path
below which every file is done is written to a checkpoint file about once a
second and at the end; a new run with the same checkpoint skips up to it.

A run that completes removes its checkpoint, so the next run (after a
signature update, say) walks everything again.

Invariants: at most `concurrency` opens in flight; every open runs in a
worker thread (FUSE opens block) under the run's own limiter; symlinks
are never followed, only regular files are opened (O_NONBLOCK, so a FIFO
swapped in cannot block it).
"""

from __future__ import annotations

import bisect
import contextlib
import json
import logging
import math
import os
import stat
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import trio

from vfile import control
from vfile.filter.drain import BACKOFF_FACTOR, TokenBucket
from vfile.prewarm_defaults import DEFAULT_CONCURRENCY, DEFAULT_RATE, check_pacing
from vfile.scanner.trusted import open_trusted_file

log = logging.getLogger(__name__)

STATUS_EVERY = 1.0
CHECKPOINT_EVERY = 1.0
#: a checkpoint is a mount point, one relative path and a few counters
MAX_CHECKPOINT = 64 * 1024
#: the real open, of the inode an O_PATH|O_NOFOLLOW descriptor pinned (see _open_once)
FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY


@dataclass(slots=True)
class Progress:
    total: int = 0
    skipped: int = 0  # done by an earlier, interrupted run
    opened: int = 0
    denied: int = 0  # EACCES: infected, or a closed profile without a verdict
    failed: int = 0  # vanished, not a regular file any more, other errors
    rate: float = 0.0
    elapsed_s: float = 0.0

    @property
    def done(self) -> int:
        return self.skipped + self.opened + self.denied + self.failed


def walk(root: str) -> list[str]:
    """Relative paths of the regular files under `root`, in sorted order (no symlinks)."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        for name in filenames:
            path = name if rel == "." else os.path.join(rel, name)
            try:
                if stat.S_ISREG(os.lstat(os.path.join(root, path)).st_mode):
                    out.append(path)
            except OSError:
                continue
    out.sort(key=lambda p: p.split(os.sep))
    return out


def default_checkpoint(mountpoint: str) -> Path:
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    name = control.socket_name(mountpoint).removesuffix(".sock")
    return base / "vfile" / f"prewarm-{name}.json"


def load_checkpoint(path: Path, mountpoint: str) -> str | None:
    """Where an earlier run got to, or None: start from the top. A checkpoint decides
    what is skipped, so only one no other user could have written is believed (as a
    config, vfile.scanner.trusted), and only a small JSON object; anything else is
    said and ignored (a full run: nothing is skipped that should not be, b27)."""
    try:
        fd = open_trusted_file(str(path))
    except FileNotFoundError:
        return None
    except OSError as err:
        log.warning("prewarm: ignoring the checkpoint %s: %s; starting from the top",
                    path, err.strerror or err)
        return None
    with os.fdopen(fd, "rb") as f:
        raw = f.read(MAX_CHECKPOINT + 1)
    try:
        data = json.loads(raw) if len(raw) <= MAX_CHECKPOINT else None
    except ValueError:  # (UnicodeDecodeError too)
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("done_through"), str | None):
        log.warning("prewarm: ignoring the checkpoint %s: not one vfile wrote; starting "
                    "from the top", path)
        return None
    if data.get("mountpoint") != mountpoint:
        return None  # another mount's: not ours to resume
    done: str | None = data.get("done_through")
    return done


def save_checkpoint(path: Path, mountpoint: str, done_through: str | None,
                    progress: Progress) -> None:
    """Written to a new temporary file (O_EXCL: never through a name someone else put
    there; a fixed `.tmp` name followed a planted symlink, b27), then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps({"mountpoint": mountpoint, "done_through": done_through,
                                "progress": asdict(progress)}))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _open_once(path: str) -> str:
    """Open and close one file through the mount: 'opened', 'denied' or 'failed'.

    The name is pinned first with O_PATH|O_NOFOLLOW (no open reaches the mount's
    daemon, a symlink swapped in is not followed) and only a regular file is then
    opened, through its /proc magic link. Not O_NOFOLLOW on the real open: vfile
    passes open flags on to its own /proc reopen of the source, where O_NOFOLLOW
    means ELOOP.
    """
    try:
        pin = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        log.debug("prewarm: %r: %s", path, err)
        return "failed"
    try:
        if not stat.S_ISREG(os.fstat(pin).st_mode):
            return "failed"
        try:
            fd = os.open(f"/proc/self/fd/{pin}", FLAGS)
        except PermissionError:
            return "denied"
        except OSError as err:
            log.debug("prewarm: %r: %s", path, err)
            return "failed"
        os.close(fd)
        return "opened"
    finally:
        os.close(pin)


class _Aimd:
    """The drain's rule on the open rate: halve on a latency spike, creep back up."""

    def __init__(self, bucket: TokenBucket, rate: float) -> None:
        self.bucket = bucket
        self.configured = rate
        self.best = math.inf

    def observe(self, latency: float) -> None:
        if math.isinf(self.configured):
            return
        self.best = min(self.best, latency)
        floor = max(0.5, self.configured / 64)
        if latency > BACKOFF_FACTOR * max(self.best, 0.005):
            self.bucket.rate = max(floor, self.bucket.rate / 2)
        else:
            self.bucket.rate = min(self.configured, self.bucket.rate + self.configured / 32)


async def _wait_ready(mountpoint: str) -> None:
    """Until no window is active and some appliance is available (control-plane status)."""
    while True:
        st: dict[str, Any] = await trio.to_thread.run_sync(
            lambda: control.call(mountpoint, "status", timeout=10))
        if not st["window"]["active"] and any(a["healthy"] and a["state"] != "open"
                                              for a in st["appliances"]):
            return
        await trio.sleep(STATUS_EVERY)


async def prewarm(mountpoint: str, *, rate: float = DEFAULT_RATE,
                  concurrency: int = DEFAULT_CONCURRENCY, checkpoint: Path,
                  report: Callable[[Progress], None] = lambda p: None) -> Progress:
    """Open every file under `mountpoint` once; returns the final progress."""
    if (why := check_pacing(rate, concurrency)) is not None:
        raise ValueError(why)
    mountpoint = os.path.realpath(mountpoint)
    await _wait_ready(mountpoint)  # also: a live vfile mount, or ControlError now
    paths = await trio.to_thread.run_sync(walk, mountpoint)
    prog = Progress(total=len(paths), rate=rate)
    resume = load_checkpoint(checkpoint, mountpoint)
    start = 0 if resume is None else bisect.bisect_right(
        [p.split(os.sep) for p in paths], resume.split(os.sep))
    prog.skipped = start
    bucket = TokenBucket(rate, max(1.0, rate), trio.current_time)
    aimd = _Aimd(bucket, rate)
    slots = trio.Semaphore(concurrency)
    opens = trio.CapacityLimiter(concurrency)  # the worker threads of this run
    pending: set[int] = set()  # indexes in flight; the checkpoint stays below the lowest
    next_index = start
    began = trio.current_time()
    last_status = last_save = -math.inf

    def done_through() -> str | None:
        low = min(pending) if pending else next_index
        return paths[low - 1] if low > 0 else resume

    async def one(i: int) -> None:
        t0 = trio.current_time()
        try:
            result = await trio.to_thread.run_sync(
                _open_once, os.path.join(mountpoint, paths[i]), limiter=opens)
        finally:
            slots.release()
        aimd.observe(trio.current_time() - t0)
        setattr(prog, result, getattr(prog, result) + 1)
        pending.discard(i)

    try:
        async with trio.open_nursery() as nursery:
            for i in range(start, len(paths)):
                now = trio.current_time()
                if now - last_status >= STATUS_EVERY:
                    await _wait_ready(mountpoint)
                    last_status = trio.current_time()
                if now - last_save >= CHECKPOINT_EVERY:
                    prog.rate, prog.elapsed_s = bucket.rate, now - began
                    await trio.to_thread.run_sync(save_checkpoint, checkpoint, mountpoint,
                                                  done_through(), prog)
                    report(prog)
                    last_save = now
                await bucket.take(1)
                await slots.acquire()  # released by `one`: at most `concurrency` in flight
                pending.add(i)
                next_index = i + 1
                nursery.start_soon(one, i)
    except BaseException:
        # interrupted (Ctrl-C, SIGTERM, an error): keep where we got to, then go. A
        # small synchronous write: this is a command-line client, no request waits on it.
        save_checkpoint(checkpoint, mountpoint, done_through(), prog)
        raise
    prog.rate, prog.elapsed_s = bucket.rate, trio.current_time() - began
    checkpoint.unlink(missing_ok=True)  # complete: the next run starts from the top
    report(prog)
    return prog
