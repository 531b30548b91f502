"""Opening a mount's journal for `vfile journal …` / `vfile quarantine …` (cmd_journal.py
says who writes when): by `--state-dir` or through a live mount's control plane, holding
the state directory for an offline write (nl22), and refusing, offline, a journal a
power loss damaged, as the next mount's start would find it (x24), and a journal
another user could have written (s26): its records name the files `quarantine
restore` moves and `quarantine delete` unlinks, so a user's own state directory, with
a record of theirs, made root's `delete` remove any file they named
(tests/t4_input26_test.py). Refused as a mount refuses such a state directory
(journal.statedir): a symlink, owned by neither root nor us, or writable by others."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vfile import control
from vfile.errors import Exit, UserError

if TYPE_CHECKING:
    from vfile.journal import Journal


def call_control(mount: str, cmd: str, args: dict[str, Any] | None = None) -> Any:
    try:
        return control.call(mount, cmd, args)
    except control.ControlError as err:  # Refused included
        raise UserError(str(err), Exit.CONTROL) from None


def resolve_state_dir(state_dir: str | None, mount: str | None) -> str:
    """The state directory named by `--state-dir`, or the live mount's (`--mount`)."""
    if state_dir is not None and mount is not None:
        raise UserError("give --state-dir or --mount, not both", Exit.USAGE)
    if mount is not None:
        status = call_control(mount, "status")
        try:
            return str(status["mount"]["state_dir"])
        except (KeyError, TypeError):
            raise UserError(f"{mount}: the mount's status names no state directory",
                            Exit.CONTROL) from None
    if state_dir is None:
        raise UserError("--state-dir DIR or --mount MOUNTPOINT is required", Exit.USAGE)
    return state_dir


@contextlib.contextmanager
def open_journal(state_dir: str | None, *, readonly: bool, mount: str | None = None,
                 live: bool = False) -> Iterator[Journal]:
    """The journal of `--state-dir` or `--mount`. A write given `--state-dir` (not
    `live`: the caller did not find it through `--mount`) holds the state directory
    as a mount does, and is refused while a mount holds it (cmd_journal.py)."""
    from vfile.journal import Journal, JournalError

    live = live or mount is not None
    state_dir = resolve_state_dir(state_dir, mount)
    _refuse_foreign(Path(state_dir))
    if mount is not None:  # new files not recorded yet (vfile.filter.newfiles): now
        call_control(mount, "journal.record")
    owner = -1 if readonly or live else _own_offline(Path(state_dir))
    try:
        try:
            if not live:
                _refuse_damaged(Path(state_dir), held=owner >= 0)
            journal = Journal.open(state_dir, readonly=readonly)
        except JournalError as err:
            raise UserError(str(err), Exit.JOURNAL) from None
        try:
            yield journal
        except JournalError as err:
            raise UserError(str(err), Exit.JOURNAL) from None
        finally:
            journal.close()
    finally:
        if owner >= 0:
            os.close(owner)


def _refuse_foreign(state_dir: Path) -> None:
    """Refuse a journal another user could have written (module doc); what is missing
    or unreadable is left for the open to name."""
    uid = os.geteuid()
    for p in (state_dir, state_dir / "data.mdb"):
        try:
            st = os.lstat(p)
        except OSError:
            continue
        why = ("is a symlink (give the directory it points to)" if stat.S_ISLNK(st.st_mode)
               else f"belongs to uid {st.st_uid}" if st.st_uid not in (0, uid)
               else f"is writable by other users (mode {stat.S_IMODE(st.st_mode):o})"
               if p == state_dir and st.st_mode & 0o022 else None)
        if why is not None:
            raise UserError(f"{p} {why}: a journal another user could have written is not "
                            "used (run the command as its owner)", Exit.JOURNAL)


def _refuse_damaged(state_dir: Path, *, held: bool) -> None:
    """Refuse a journal a power loss damaged, as a mount's start would find it (the same
    check, journal.torn), before LMDB reads it in this process: it could abort in LMDB's
    C code or print wrong records. Left as it is for the next mount, which moves it aside
    and rebuilds it. Not while a mount holds the state directory (it checked at its
    start, and its journal is being written: the check would race its writes)."""
    from vfile.journal import torn

    if not held and _mount_holds(state_dir):
        return
    why = torn.damage(state_dir)
    if why is not None:
        raise UserError(f"{state_dir}: the journal is damaged ({why}); it is left as it is: "
                        "the next mount moves it aside and rebuilds it", Exit.JOURNAL)


def _mount_holds(state_dir: Path) -> bool:
    """A mount holds `state_dir` now (its OWNER_FILE is locked); nothing is created."""
    import fcntl

    from vfile.journal.statedir import OWNER_FILE

    try:
        fd = os.open(state_dir / OWNER_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
                     | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # (releases the shared lock at once)
    return False


def _own_offline(state_dir: Path) -> int:
    """Hold `state_dir` for an offline write, or refuse: a mount uses it."""
    from vfile.journal.statedir import OWNER_FILE, StateDirInUse, take_state_dir

    try:
        return take_state_dir(state_dir)
    except StateDirInUse as busy:
        raise UserError(f"{state_dir}: a vfile mount (pid {busy.pid}) uses this state "
                        "directory; to change its journal while it runs, give --mount "
                        "MOUNTPOINT instead of --state-dir", Exit.JOURNAL) from None
    except FileNotFoundError:
        return -1  # no state directory: nothing to protect (the open says what is wrong)
    except OSError as err:
        raise UserError(f"{state_dir}: cannot open {OWNER_FILE}: {err.strerror}",
                        Exit.JOURNAL) from None
