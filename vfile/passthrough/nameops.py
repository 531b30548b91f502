"""Name operations: link, unlink, rmdir, rename (and exchange).

They change what a path holds, so each tells the gate first (a write intent
before the effect) and afterwards (`on_unlink`, `on_rename`, `on_exchange`),
so journal entries and intents follow their files. Split from
`vfile.passthrough.fs` as a pure move; the module docstring there states the
invariants every handler keeps.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import AsyncIterator

import pyfuse3
import trio

from vfile.hooks import CallerLike, request_ctx
from vfile.passthrough import links
from vfile.passthrough.errnos import check_name
from vfile.passthrough.inodes import ROOT_INODE, Inode, stamp_of
from vfile.passthrough.namelock import fixed
from vfile.passthrough.opsbase import OpsCore, handler
from vfile.passthrough.syscalls import RENAME_EXCHANGE, proc_path, renameat2

#: walks for a hard link's surviving name when a directory move made the last one stale
SURVIVOR_TRIES = 3


class NameOps(OpsCore):
    """Handlers that add, remove or move names (see the module docstring)."""

    @handler
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: CallerLike) -> pyfuse3.EntryAttributes:
        node = self.table.get(inode)
        parent = self.table.get(new_parent_inode)
        check_name(new_name)
        if self.hooks.trivial or node.kind != stat.S_IFREG:
            return await self._link(node, parent, new_name, None, ctx)  # no path, no wait
        # Its path must not go stale while it waits (vfile.passthrough.namelock).
        async with self.names.shared(lambda: (self._child_path(parent, new_name),)) as held:
            return await self._link(node, parent, new_name, held[0], ctx)

    async def _link(self, node: Inode, parent: Inode, new_name: bytes, path: bytes | None,
                    ctx: CallerLike) -> pyfuse3.EntryAttributes:
        hooks = self.hooks
        token = None
        if path is not None:
            token = await hooks.on_write_intent(path, os.fstat(node.fd), request_ctx(ctx))
        try:
            # Linking the inode itself (via its /proc magic link), not a name.
            os.link(proc_path(node.fd).encode(), new_name, dst_dir_fd=parent.fd,
                    follow_symlinks=True)
        except BaseException:
            hooks.release_intent(token)
            raise
        node.seen_as(parent.ino, new_name)
        node.lookups += 1
        node.saw_name(parent.ino, new_name)
        st = os.fstat(node.fd)
        node.stamp = stamp_of(st)  # the new link changed ctime, through the mount (see open)
        if path is not None:
            if node.writers == 0:
                await hooks.on_last_close(path, None, st)  # no handle will close it
            else:
                hooks.release_intent(token)  # the entry stays for the drain
        return self._entry(node, st)

    @handler
    async def unlink(self, parent_inode: int, name: bytes, ctx: CallerLike) -> None:
        parent = self.table.get(parent_inode)
        check_name(name)
        if self.hooks.trivial:
            os.unlink(name, dir_fd=parent.fd)  # no path, no wait
            return
        # Its path must not go stale while it waits (vfile.passthrough.namelock).
        async with self.names.shared(lambda: (self._child_path(parent, name),)) as held:
            await self._unlink(parent, name, held[0])

    async def _unlink(self, parent: Inode, name: bytes, path: bytes) -> None:
        before = None
        with contextlib.suppress(OSError):
            before = os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
        # Before its ctime changes: a file living on is in flight until its verdict follows.
        noted = None if before is None else self.hooks.name_dropping(before)
        try:
            os.unlink(name, dir_fd=parent.fd)
            await self._unlinked(path, before, noted)
        finally:
            self.hooks.release_intent(noted)

    async def _unlinked(self, path: bytes, st: os.stat_result | None,
                        noted: object = None) -> None:
        """`on_unlink` of `path`, whose file (`st`, before) may live on under another
        name: its entry and intent move there."""
        # Its last name gone, its verdicts can never match again (a file that reuses the
        # inode number has a new ctime): the journal drops them now, not at the hourly
        # collection (vfile.filter.verdict_gc), so removed trees do not pile up (m27).
        gone = _last_name(st)
        async with self._held_survivor(st, path) as survivor:
            await self.hooks.on_unlink(path, survivor, gone)
            if survivor is not None and st is not None:
                # The kernel gave the file a new ctime as its link count dropped.
                await self.hooks.on_name_dropped(survivor, st, noted)

    @contextlib.asynccontextmanager
    async def _held_survivor(self, st: os.stat_result | None, gone: bytes
                             ) -> AsyncIterator[bytes | None]:
        """`_survivor`, held (vfile.passthrough.namelock) while the caller uses it."""
        if st is None or st.st_nlink <= 1 or not stat.S_ISREG(st.st_mode):
            yield None
            return
        root = self.table.get(ROOT_INODE).fd
        for attempt in range(SURVIVOR_TRIES):
            survivor = await self._survivor(st, gone)
            if survivor is None:
                yield None
                return
            # Found by a walk in a thread, a directory above it may have moved since:
            # held, then checked again (from here on a move waits for the hold). The
            # last try takes it unchecked, as before nl22, rather than loop.
            async with self.names.shared(fixed(survivor), nested=True):
                if attempt == SURVIVOR_TRIES - 1 or links.reaches(root, survivor,
                                                                  (st.st_dev, st.st_ino)):
                    yield survivor
                    return

    async def _survivor(self, st: os.stat_result, gone: bytes) -> bytes | None:
        """Another live name of a regular file whose name `gone` was just unlinked, so
        its journal entry moves there instead of being dropped (issue 13)."""
        node = self.table.find(st)
        if node is not None and (known := self.known_live_name(node, dead=gone)) is not None:
            return known
        key = (st.st_dev, st.st_ino)
        root = self.table.get(ROOT_INODE).fd
        # Never reached through the mount: walk the source, off the trio thread.
        return await trio.to_thread.run_sync(
            lambda: links.find_name(root, key, exclude=gone))

    @handler
    async def rmdir(self, parent_inode: int, name: bytes, ctx: CallerLike) -> None:
        parent = self.table.get(parent_inode)
        os.rmdir(check_name(name), dir_fd=parent.fd)

    @handler
    async def rename(self, parent_inode_old: int, name_old: bytes,  # noqa: PLR0917 (pyfuse3's)
                     parent_inode_new: int, name_new: bytes, flags: int,
                     ctx: CallerLike) -> None:
        old_p = self.table.get(parent_inode_old)
        new_p = self.table.get(parent_inode_new)
        check_name(name_old)
        check_name(name_new)
        if self.hooks.trivial:
            await self._rename(old_p, name_old, new_p, name_new, flags, None, ctx)  # no wait
            return
        # A directory moved (renamed, exchanged) must not meet a name operation at or
        # below it holding paths computed before (vfile.passthrough.namelock).
        moves_dir = _is_dir(old_p, name_old) or bool(flags & RENAME_EXCHANGE
                                                     and _is_dir(new_p, name_new))

        def paths() -> tuple[bytes, bytes]:
            return self._child_path(old_p, name_old), self._child_path(new_p, name_new)

        async with self.names.exclusive(paths) if moves_dir else self.names.shared(paths) \
                as held:
            await self._rename(old_p, name_old, new_p, name_new, flags,
                               (held[0], held[1]), ctx)

    async def _rename(self, old_p: Inode, name_old: bytes,  # noqa: PLR0917
                      new_p: Inode, name_new: bytes, flags: int,
                      paths: tuple[bytes, bytes] | None, ctx: CallerLike) -> None:
        hooks = self.hooks
        tokens: list[object] = []
        #: a name taken from a linked file: its survivor, stat before, `name_dropping` token
        dropped: list[tuple[bytes, os.stat_result, object]] = []
        #: the (dev, ino) of a file whose last name the rename takes (`_last_name`)
        gone: list[tuple[int, int]] = []
        try:
            if paths is not None:
                tokens = await self._rename_intents((old_p, name_old), (new_p, name_new),
                                                    flags, paths, ctx, dropped=dropped,
                                                    gone=gone)
            if flags:
                renameat2(old_p.fd, name_old, new_p.fd, name_new, flags)
            else:
                os.rename(name_old, name_new, src_dir_fd=old_p.fd, dst_dir_fd=new_p.fd)
            self._moved(new_p, name_new)
            if flags & RENAME_EXCHANGE:
                self._moved(old_p, name_old)
            if paths is not None and flags & RENAME_EXCHANGE:
                # The exchange's own intents end first (their entries stay for the drain):
                # an intent they replaced (a writer still has the file open) is current
                # again, and follows its file with its entry (tests/t5_queued_race_test.py).
                for token in tokens:
                    hooks.release_intent(token)
                tokens = []
                await hooks.on_exchange(*paths)  # entries and intents follow their files
            elif paths is not None:
                await hooks.on_rename(*paths, gone[0] if gone else None)
                for survivor, before, noted in dropped:  # its new ctime (link count dropped)
                    await hooks.on_name_dropped(survivor, before, noted)
        finally:
            # A failed rename changed nothing; an exchange's were ended above; a plain
            # rename's on_rename ended them. A dropped name's note ends in any case.
            for token in tokens + [noted for _, _, noted in dropped]:
                hooks.release_intent(token)

    def _moved(self, parent: Inode, name: bytes) -> None:
        """A known non-directory now named `name` in `parent`: remember it (path_of).
        The rename through the mount changed a file's ctime: not a change behind our
        back, so its next open keeps the kernel's cache (see open)."""
        try:
            st = os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
        except OSError:
            return
        node = self.table.find(st)
        if node is not None and node.kind != stat.S_IFDIR:
            node.seen_as(parent.ino, name)
            if stat.S_ISREG(st.st_mode):
                node.stamp = stamp_of(st)

    async def _name_overwritten(self, target: os.stat_result | None,
                                moving: os.stat_result, path: bytes) -> bytes | None:
        """A rename onto `path` takes that name from a file that may have others (hard
        links): the file lives on, so, as for an unlink, its intent and journal entry
        move to a surviving name first. Without it the rename dropped the intent of a
        file a writer still held (or whose close scan was reading it) and replaced its
        entry, and its later bytes had neither (tests/t5_race21_links_test.py)."""
        if target is None or target.st_nlink <= 1 or not stat.S_ISREG(target.st_mode) \
                or (target.st_dev, target.st_ino) == (moving.st_dev, moving.st_ino):
            return None  # no other name; or renaming a name onto another of the same file
        async with self._held_survivor(target, path) as survivor:
            if survivor is not None:
                await self.hooks.on_unlink(path, survivor)
        return survivor

    async def _rename_intents(self, old: tuple[Inode, bytes], new: tuple[Inode, bytes],
                              flags: int, paths: tuple[bytes, bytes],
                              ctx: CallerLike, *,
                              dropped: list[tuple[bytes, os.stat_result, object]],
                              gone: list[tuple[int, int]]) -> list[object]:
        """Renaming a file (onto another or not, or exchanging) changes what a path
        holds: intent first. A file the rename takes a name from and that lives on
        under another is added to `dropped` (its survivor, its stat before); one that
        has no other name, to `gone` (its (dev, ino)).

        Also when nothing is overwritten: the move changes the file's ctime, so its
        clean verdict no longer matches its identity, and without an entry for the
        new path the file would have neither (found by tests/t5_crash_test.py).
        """
        (old_p, name_old), (new_p, name_new) = old, new
        try:
            target: os.stat_result | None = os.stat(name_new, dir_fd=new_p.fd,
                                                    follow_symlinks=False)
        except FileNotFoundError:
            target = None
        moving = os.stat(name_old, dir_fd=old_p.fd, follow_symlinks=False)
        rctx = request_ctx(ctx)
        tokens = []
        try:
            if flags & RENAME_EXCHANGE:
                # Each file's intent under the name it has now: `on_exchange` then swaps
                # the entries with the files, so each keeps its own (issue 13). A crash in
                # between leaves an entry at each name, so both files are still scanned.
                if stat.S_ISREG(moving.st_mode):
                    tokens.append(await self.hooks.on_write_intent(paths[0], moving, rctx))
                if target is not None and stat.S_ISREG(target.st_mode):
                    tokens.append(await self.hooks.on_write_intent(paths[1], target, rctx))
            else:
                survivor = await self._name_overwritten(target, moving, paths[1])
                if survivor is not None and target is not None:
                    # In flight before the rename changes its ctime (filter.keeping).
                    dropped.append((survivor, target, self.hooks.name_dropping(target)))
                if (key := _last_name(target, moving)) is not None:
                    gone.append(key)
                if stat.S_ISREG(moving.st_mode):
                    # `moved_from`: the gate may carry the file's verdict instead (rs23)
                    tokens.append(await self.hooks.on_write_intent(paths[1], moving, rctx,
                                                                   moved_from=paths[0]))
        except BaseException:
            for token in tokens:
                self.hooks.release_intent(token)
            raise
        return tokens


def _last_name(st: os.stat_result | None,
               moving: os.stat_result | None = None) -> tuple[int, int] | None:
    """The (dev, ino) of a regular file `st` whose only name an unlink, or a rename of
    `moving` onto it, takes: its verdicts can never match again (a file that reuses the
    inode number has a new ctime), and the journal drops them with the name (m27, a29),
    not at the hourly collection. Read before the operation: a link(2) racing in between
    leaves a live file without its verdicts, which costs it a scan, never a taint (kept
    by inode, journal.taint). None: another name, not a regular file, or `moving` is the
    same file."""
    if st is None or not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        return None
    if moving is not None and (st.st_dev, st.st_ino) == (moving.st_dev, moving.st_ino):
        return None
    return (st.st_dev, st.st_ino)


def _is_dir(parent: Inode, name: bytes) -> bool:
    try:
        return stat.S_ISDIR(os.stat(name, dir_fd=parent.fd, follow_symlinks=False).st_mode)
    except OSError:
        return False  # the rename fails on its own
