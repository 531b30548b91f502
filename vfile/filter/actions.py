"""What happens to a file found infected: deny, quarantine, rename, delete, hook.

Invariants:
- Every path is resolved relative to the source root's directory fd, one
  component at a time with O_NOFOLLOW: an action never follows a symlink, so
  a link planted in the source cannot make it move or delete a file elsewhere.
  Only regular files are acted on.
- Quarantine moves the file into `quarantine_dir` (created 0700, never inside
  the source), as mode 0600 under a unique name, and records it in the
  journal. Across filesystems the move is copy + fsync + unlink, so a crash
  leaves at worst two copies, never none.
- Rename gives `NAME.infected` (never replacing an existing file) with mode
  000, and stores the infected verdict for the renamed file's new identity so
  it is not scanned and renamed again.
- A hook runs with VFILE_PATH, VFILE_SIGNATURE, VFILE_PROFILE, VFILE_APPLIANCE and
  VFILE_EXPOSURES (JSON: who opened the file while it had no verdict) in
  its environment under `HOOK_DEADLINE`; its failure is logged, never raised.
- `apply` never raises for a failed action: the file stays denied by its
  cached infected verdict, and the failure is logged and reported.
- Blocking file work runs in threads through one named CapacityLimiter.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shlex
import stat
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import trio

from vfile.config.model import InfectedAction
from vfile.errors import Exit, UserError
from vfile.journal.records import (
    Exposure,
    Identity,
    QuarantineRecord,
    VerdictRecord,
    exposure_to_json,
)
from vfile.journal.statedir import below
from vfile.journal.store import Journal
from vfile.observe.ratelog import RateLimited

log = logging.getLogger(__name__)

T = TypeVar("T")

#: a hook that has not finished after this many seconds is killed
HOOK_DEADLINE = 10.0
#: threads doing quarantine/rename/delete file work at once
ACTION_THREADS = 2
#: seconds the kernel gets to drop its entry for a name an action removed (it waits
#: only for requests in that directory, which the mount goes on serving)
FORGET_NAME_TIMEOUT = 5.0
#: at most one warning a minute about entries it did not drop in time
FORGET_LOG_INTERVAL = 60.0
_COPY_CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_parent(root_fd: int, path: str) -> tuple[int, str]:
    """An fd of `path`'s parent directory (caller closes it) and its last component.

    Walks from `root_fd` one component at a time without following symlinks.
    """
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise OSError(errno.EINVAL, f"not a file path below the source: {path!r}")
    # The first directory straight from the root (an open of "." first was one more
    # openat and close per drained file); "." only for a file at the top.
    fd = os.open(parts[0] if len(parts) > 1 else ".", _DIR_FLAGS, dir_fd=root_fd)
    try:
        for part in parts[1:-1]:
            nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd, parts[-1]


def _regular(dir_fd: int, name: str, judged: Identity) -> os.stat_result:
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if not stat.S_ISREG(st.st_mode):
        raise OSError(errno.EINVAL, f"not a regular file: {name!r}")
    if (st.st_dev, st.st_ino) != (judged.dev, judged.ino):
        # Another file under the name since the judgement (an atomic save, a decoy): never
        # act on it; the infected one, renamed, is scanned again at its next open (x22,
        # tests/t1_attack22_actions_test.py).
        raise OSError(errno.ESTALE, f"not the file judged infected: {name!r}")
    return st


def prepare_quarantine_dir(quarantine_dir: str, source_fd: int) -> Path:
    """Create `quarantine_dir` 0700 if needed; refuse one inside the source."""
    where = Path(quarantine_dir).resolve()
    # By inode and by real location: a symlink or a bind mount of one of the source's
    # subdirectories counts (x24, tests/t4_state_bind24_test.py).
    if below(where, [f"/proc/self/fd/{source_fd}"]):
        raise UserError(f"quarantine directory {quarantine_dir!r} is inside the source",
                        Exit.CONFIG)
    try:
        # Parents 0755 one by one: `mkdir(parents=True)` gives them the umask's mode, and
        # the mount server's is 0 (a 0777 parent let a user put their own directory in
        # the quarantine's place: x23, tests/t4_server_modes23_test.py).
        for d in reversed([where, *where.parents]):
            try:
                os.mkdir(d, 0o700 if d == where else 0o755)
            except FileExistsError:
                continue
            os.chmod(d, 0o700 if d == where else 0o755)
        st = os.lstat(where)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise OSError(errno.EPERM, f"not a directory of ours (uid {st.st_uid})")
        os.chmod(where, 0o700)
    except OSError as err:
        raise UserError(f"cannot create quarantine directory {quarantine_dir!r}: "
                        f"{err.strerror or err}", Exit.CONFIG) from None
    return where


def _copy_out(src_dir: int, name: str, dest: Path) -> None:
    """Copy a file to `dest` (new, 0600) durably, then unlink the original."""
    src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src_dir)
    try:
        dst = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                      0o600)
        try:
            while chunk := os.read(src, _COPY_CHUNK):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(dst, view):]
            os.fsync(dst)
        except BaseException:
            # A partial copy is no quarantine (the original stays, refused): left, it kept
            # its disk full, the state disk's journal too (a29: ENOSPC on purpose)
            with contextlib.suppress(OSError):
                os.unlink(dest)
            raise
        finally:
            os.close(dst)
    finally:
        os.close(src)
    _fsync_dir(dest.parent)
    os.unlink(name, dir_fd=src_dir)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, _DIR_FLAGS)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Actions:
    """Carries out a profile's infected action on a file below the source root."""

    def __init__(self, source_fd: int, journal: Journal, *, quarantine_dir: str | None,
                 clock: Callable[[], float] = time.time) -> None:
        self._root = source_fd
        self._journal = journal
        self._qdir_text = quarantine_dir
        self._qdir: Path | None = None
        self._clock = clock
        self._limiter: trio.CapacityLimiter | None = None
        #: makes the kernel drop its entry for a source-relative name we removed (the
        #: filesystem binds it, vfile.hooks `bind_kernel`); None: no mount (the CLI)
        self.forget_name: Callable[[bytes], Awaitable[None]] | None = None
        #: names the kernel did not drop within FORGET_NAME_TIMEOUT (`vfile status`)
        self.entries_not_dropped = 0
        self._slow_log = RateLimited(FORGET_LOG_INTERVAL, log)

    def prepare(self) -> None:
        """Create and check the quarantine directory now (the mount calls this at start)."""
        if self._qdir_text is not None and self._qdir is None:
            self._qdir = prepare_quarantine_dir(self._qdir_text, self._root)

    async def _thread(self, fn: Callable[[], T]) -> T:
        if self._limiter is None:
            self._limiter = trio.CapacityLimiter(ACTION_THREADS)
        return await trio.to_thread.run_sync(fn, limiter=self._limiter)

    async def apply(self, action: InfectedAction, path: str, verdict: VerdictRecord, *,
                    profile: str, hook: str | None = None,
                    exposures: tuple[Exposure, ...] = ()) -> str:
        """Do `action` to `path`; return what was done, for the log line. `exposures`
        (who opened it unscanned) go into the quarantine record and the hook's env."""
        try:
            if action is InfectedAction.DENY:
                return "denied"
            if action is InfectedAction.QUARANTINE:
                return await self._quarantine(path, verdict, profile, exposures)
            if action is InfectedAction.RENAME:
                return await self._rename(path, verdict)
            if action is InfectedAction.DELETE:
                await self._thread(lambda: self._delete(path, verdict.identity))
                await self._name_gone(path)
                await self._journal.forget_path(path, "infected")
                return "deleted"
            return await self._hook(hook, path, verdict, profile, exposures)
        except (OSError, UserError) as err:
            log.error("infected action %s on %r failed: %s", action.value, path, err)
            return f"{action.value} failed ({err}); denied"

    async def _name_gone(self, path: str) -> None:
        """The file left `path`: the kernel must not go on resolving the name to it
        (for its entry timeout) once the drain says it is done."""
        if self.forget_name is None:
            return
        with trio.move_on_after(FORGET_NAME_TIMEOUT) as waited:
            await self.forget_name(os.fsencode(path))
        if waited.cancelled_caught:
            # The kernel drops an entry under its directory's lock, which a request in
            # that directory waiting in the server (its journal fsync on a frozen state
            # disk) holds: the action goes on, the name may resolve for the entry timeout.
            self.entries_not_dropped += 1
            self._slow_log("forget", logging.WARNING,
                           "the kernel did not drop its entry for %r within %g s (a request "
                           "in its directory waits in the server): the name may reach the "
                           "moved file for up to the mount's entry timeout", path,
                           FORGET_NAME_TIMEOUT)

    def _delete(self, path: str, judged: Identity) -> None:
        dir_fd, name = open_parent(self._root, path)
        try:
            _regular(dir_fd, name, judged)
            os.unlink(name, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)

    async def _quarantine(self, path: str, verdict: VerdictRecord, profile: str,
                          exposures: tuple[Exposure, ...]) -> str:
        if self._qdir_text is None:
            raise UserError("no quarantine directory configured")
        rec_id = uuid.uuid4().hex
        base = path.rsplit("/", 1)[-1][:100]

        def move() -> tuple[Path, Identity]:
            self.prepare()
            assert self._qdir is not None
            dest = self._qdir / f"{rec_id}-{base}"
            dir_fd, name = open_parent(self._root, path)
            try:
                st = _regular(dir_fd, name, verdict.identity)
                try:
                    os.rename(name, dest, src_dir_fd=dir_fd)
                except OSError as err:
                    if err.errno != errno.EXDEV:
                        raise
                    _copy_out(dir_fd, name, dest)
                os.chmod(dest, 0o600)
                _fsync_dir(self._qdir)
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
            return dest, Identity.from_stat(st)

        dest, identity = await self._thread(move)
        await self._name_gone(path)
        await self._journal.add_quarantine(QuarantineRecord(
            id=rec_id, original_path=path, quarantine_path=str(dest),
            signature=verdict.signature, time=self._clock(), identity=identity,
            profile=profile, exposures=exposures))
        await self._journal.forget_path(path, "infected")
        return f"quarantined as {dest}"

    async def _rename(self, path: str, verdict: VerdictRecord) -> str:
        def move() -> tuple[str, os.stat_result]:
            dir_fd, name = open_parent(self._root, path)
            try:
                _regular(dir_fd, name, verdict.identity)
                for n in range(100):
                    new = f"{name}.infected" if n == 0 else f"{name}.{n}.infected"
                    try:
                        # link + unlink, because link never replaces an existing file.
                        os.link(name, new, src_dir_fd=dir_fd, dst_dir_fd=dir_fd,
                                follow_symlinks=False)
                    except FileExistsError:
                        continue
                    break
                else:
                    raise OSError(errno.EEXIST, f"no free name for {name}.infected")
                os.unlink(name, dir_fd=dir_fd)
                fd = os.open(new, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
                try:
                    os.fchmod(fd, 0)
                    st = os.fstat(fd)
                finally:
                    os.close(fd)
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
            parent = path.rsplit("/", 1)[0] + "/" if "/" in path else ""
            return parent + new, st

        new_path, st = await self._thread(move)
        await self._name_gone(path)
        await self._journal.forget_path(path, "infected")
        # The chmod changed the identity: record the verdict for the new one too.
        await self._journal.put_verdict(replace(verdict, identity=Identity.from_stat(st)))
        return f"renamed to {new_path!r}"

    async def _hook(self, hook: str | None, path: str, verdict: VerdictRecord,
                    profile: str, exposures: tuple[Exposure, ...]) -> str:
        if not hook:
            raise UserError("no hook command configured")
        env = {**os.environ, "VFILE_PATH": path, "VFILE_SIGNATURE": verdict.signature,
               "VFILE_PROFILE": profile, "VFILE_APPLIANCE": verdict.appliance,
               "VFILE_EXPOSURES": json.dumps([exposure_to_json(x) for x in exposures])}
        with trio.move_on_after(HOOK_DEADLINE) as cs:
            done = await trio.run_process(shlex.split(hook), env=env, check=False,
                                          stdin=subprocess.DEVNULL)
        if cs.cancelled_caught:
            log.error("infected hook %r for %r killed after %gs", hook, path, HOOK_DEADLINE)
            return f"hook killed after {HOOK_DEADLINE:g}s"
        if done.returncode != 0:
            log.error("infected hook %r for %r exited with %d", hook, path, done.returncode)
        return f"hook exited {done.returncode}"
