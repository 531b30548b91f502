"""The points where the filesystem calls out to the scanning gate.

`vfile.passthrough.fs` (the pyfuse3 Operations) calls a `FileHooks` object at the few
moments the gate cares about; the gate implements it without importing
pyfuse3. Invariants the Operations keep for every hook:

- Paths are relative to the source root, as bytes, without a leading slash
  (the root itself is ``b""``).
- `on_open` runs for opens of regular files only, after the file is opened
  and before the open returns (`unflushed`: another open may have written
  bytes the kernel's writeback cache holds but the source does not yet);
  raising `Denied` fails the open with its errno and the file descriptor is
  closed by the caller, not by the hook.
- `on_write_intent` runs *before* anything that can change a file's content
  takes effect (open for writing, create, truncate, rename onto, link): when it
  returns, the intent must be durable -- for a new name (`st` None: create,
  mknod) durable by the watermark rule (journal.watermark, tier 1w), so a
  create that opened an existing file after all asks again with its stat.
  Raising `Denied` stops the operation. With `lazy` (a write-open of an
  existing file without O_TRUNC: its content changes only through the handle)
  the intent need only be committed when it returns; `intent_durable(token)`
  then runs before each request that can change content through the handle
  (WRITE) and returns once the intent is durable (raising OSError(EIO) if the
  journal could not make it so); `intent_pending(token)` says, without waiting,
  whether it is still not known durable.
  It returns a token (None when no intent was made). The filesystem passes it
  to `release_intent` when the operation failed, or succeeded without leaving
  a writer whose last close resolves it (mknod, link, an exchange); every
  intent ends in a last close, an unlink, a rename or that release.
- `on_last_close` runs when the last writer of an inode releases it (or after
  a truncate done without an open handle, then with ``fd=None``).
- `on_metadata_change` runs `change` (chown, chmod, utimens of a regular file;
  it returns the file's new stat) itself, between journaling and keeping the
  verdict, so the file always has one or the other; `writing` says a writer
  has the file open.
- `on_unlink` / `on_rename` / `on_exchange` run after the operation succeeded;
  `on_unlink` gets `survivor`, another live name of the file, when the file
  is still linked elsewhere (its journal entry moves there).
- `name_dropping(st)` runs before an unlink or a rename that may take one name
  from the file `st`; its token goes to `on_name_dropped` and, once the operation
  is over (done or failed), to `release_intent`.
- `on_name_dropped` runs after an unlink or a rename took one name from a file
  that lives on as `survivor` (the kernel gave it a new ctime then); `before`
  is its stat before the operation; `noted`, `name_dropping`'s token.

- `bind_kernel` runs once, when the filesystem is built: it hands the hooks
  `forget_name(path)`, which makes the kernel drop its entry for a name the
  hooks removed from the source themselves (an infected file moved away).

Any other exception a hook raises is a bug: it is logged and becomes EIO.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class RequestCtx:
    """Who asked: the caller of the syscall the kernel forwarded."""

    uid: int
    gid: int
    pid: int
    umask: int


class CallerLike(Protocol):
    """Anything with the caller's ids (pyfuse3's RequestContext, RequestCtx, a test fake)."""

    @property
    def uid(self) -> int: ...
    @property
    def gid(self) -> int: ...
    @property
    def pid(self) -> int: ...
    @property
    def umask(self) -> int: ...


def request_ctx(ctx: CallerLike) -> RequestCtx:
    """Copy a caller description into the plain frozen form hooks receive."""
    return RequestCtx(uid=ctx.uid, gid=ctx.gid, pid=ctx.pid, umask=ctx.umask)


class Denied(Exception):
    """A hook refuses the operation: the syscall fails with `errno`."""

    def __init__(self, err: int = errno.EACCES, reason: str = "denied") -> None:
        super().__init__(err, reason)
        self.errno = err
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.reason} ({errno.errorcode.get(self.errno, self.errno)})"


class FileHooks(Protocol):
    """What the filesystem calls; see the module docstring for the contract."""

    #: True when every hook is a no-op, so the filesystem may skip computing paths.
    trivial: bool

    def allows_cached_nowait(self, st: os.stat_result, flags: int) -> bool:
        """The warm path: True when this open is allowed by a current verdict alone,
        so `on_open` (and the path it needs) can be skipped. Never blocks."""
        ...

    def forget_file(self, key: tuple[int, int]) -> None:
        """The kernel forgot the file (st_dev, st_ino): per-file state may go."""
        ...

    def bind_kernel(self, forget_name: Callable[[bytes], Awaitable[None]]) -> None: ...

    async def on_open(self, path: bytes, fd: int, st: os.stat_result, flags: int,
                      ctx: RequestCtx, *, unflushed: bool = False) -> None: ...

    async def on_write_intent(self, path: bytes, st: os.stat_result | None,
                              ctx: RequestCtx, *, lazy: bool = False,
                              moved_from: bytes | None = None) -> object: ...

    async def intent_durable(self, token: object) -> None: ...

    def intent_pending(self, token: object) -> bool: ...

    def release_intent(self, token: object) -> None: ...

    async def on_last_close(self, path: bytes, fd: int | None, st: os.stat_result) -> None: ...

    async def on_unlink(self, path: bytes, survivor: bytes | None = None,
                        gone: tuple[int, int] | None = None) -> None:
        """`path` was unlinked; `survivor`: another name the file lives on under;
        `gone`: (st_dev, st_ino) of a file that had no other name (its verdicts are dead)."""
        ...

    def name_dropping(self, st: os.stat_result) -> object: ...

    async def on_name_dropped(self, survivor: bytes, before: os.stat_result,
                              noted: object = None) -> None: ...

    async def on_rename(self, old: bytes, new: bytes,
                        gone: tuple[int, int] | None = None) -> None:
        """`old` was renamed onto `new`; `gone`: (st_dev, st_ino) of the file the rename
        replaced at `new`, which had no other name (its verdicts are dead)."""
        ...

    async def on_exchange(self, a: bytes, b: bytes) -> None: ...

    async def on_metadata_change(self, path: bytes, st: os.stat_result, ctx: RequestCtx,
                                 change: Callable[[], os.stat_result], *,
                                 writing: bool) -> None: ...


class NoHooks:
    """The plain passthrough: every hook does nothing."""

    trivial = True

    def allows_cached_nowait(self, st: os.stat_result, flags: int) -> bool:
        return True

    def forget_file(self, key: tuple[int, int]) -> None:
        pass

    def bind_kernel(self, forget_name: Callable[[bytes], Awaitable[None]]) -> None:
        pass

    async def on_open(self, path: bytes, fd: int, st: os.stat_result, flags: int,
                      ctx: RequestCtx, *, unflushed: bool = False) -> None:
        return None

    async def on_write_intent(self, path: bytes, st: os.stat_result | None,
                              ctx: RequestCtx, *, lazy: bool = False,
                              moved_from: bytes | None = None) -> object:
        return None

    async def intent_durable(self, token: object) -> None:
        return None

    def intent_pending(self, token: object) -> bool:
        return False

    def release_intent(self, token: object) -> None:
        return None

    async def on_last_close(self, path: bytes, fd: int | None, st: os.stat_result) -> None:
        return None

    async def on_unlink(self, path: bytes, survivor: bytes | None = None,
                        gone: tuple[int, int] | None = None) -> None:
        return None

    def name_dropping(self, st: os.stat_result) -> object:
        return None

    async def on_name_dropped(self, survivor: bytes, before: os.stat_result,
                              noted: object = None) -> None:
        return None

    async def on_rename(self, old: bytes, new: bytes,
                        gone: tuple[int, int] | None = None) -> None:
        return None

    async def on_exchange(self, a: bytes, b: bytes) -> None:
        return None

    async def on_metadata_change(self, path: bytes, st: os.stat_result, ctx: RequestCtx,
                                 change: Callable[[], os.stat_result], *,
                                 writing: bool) -> None:
        change()
