"""What a live mount does for each control-plane command.

`Commands` is the handler the control server calls with (cmd, args, uid). It
owns no state of its own: it reads and steers the gate, the window, the drain,
the pool and the journal that the mount built. Argument checking happens here,
so a malformed command is a clear error, never an exception in the server.

The quiesce procedure (DESIGN.md "Windows") lives here because it touches
everything: open the window (the gate cancels every wait on an appliance at
once, so blocked opens take their fail mode), give the cancelled requests a
bounded moment to finish journaling, then sync the journal and the source.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from vfile.control import ControlError
from vfile.filter.drain import Drain
from vfile.filter.gate import Gate
from vfile.filter.window import MAX_WINDOW, Window
from vfile.journal.records import deferred_to_json, quarantine_to_json
from vfile.journal.store import Journal
from vfile.limits import (
    MAX_BYTES_PER_S,
    MAX_FILES_PER_S,
    MIN_BYTES_PER_S,
    MIN_FILES_PER_S,
    in_range,
)
from vfile.observe import logqueue
from vfile.observe.memwatch import DEFAULT_TOP, MemoryWatch
from vfile.passthrough.syscalls import syncfs
from vfile.scanner.pool import Pool

log = logging.getLogger(__name__)

#: how long quiesce lets cancelled requests finish their journal writes
SETTLE_DEADLINE = 0.5
SYNC_LIMITER = trio.CapacityLimiter(1)
#: the bounds of the control commands' numbers (b27): past them is a typo, not a choice
#: (the drain's rate: vfile.limits)
#: `journal.list`: entries a reply holds (without `limit`; at most) and its JSON's size at
#: most (past one entry); the rest is `more` (a29: a million entries made one reply of
#: hundreds of MB in the server's memory). `vfile journal list --mount` reads them all.
DEFAULT_LIST = 1_000
MAX_LIST = 10_000
REPLY_BYTES = 1 << 20
MAX_TOP = 10_000

@dataclass
class MountInfo:
    source: str
    mountpoint: str
    state_dir: str
    quarantine_dir: str | None
    owner_uid: int
    started: float


def _number(args: dict[str, Any], key: str, *, minimum: float, maximum: float
            ) -> float | None:
    """A number within [minimum, maximum]. JSON brings NaN and Infinity too: a NaN window
    deadline took the whole mount server down, an infinite one never ended (b27)."""
    value = args.get(key)
    if value is None:
        return None
    if not in_range(value, minimum, maximum):  # a bool, a string, NaN too
        shown = repr(value) if len(repr(value)) <= 40 else f"{repr(value)[:37]}..."
        raise ControlError(f"{key!r} must be a number from {minimum:g} to {maximum:g}, "
                           f"not {shown}")
    return float(value)


def _reason(args: dict[str, Any]) -> str:
    """A window's reason: it goes into the log and status, so one short line of text."""
    value = args.get("reason", "quiesce")
    if not isinstance(value, str) or not value.isprintable() or not 0 < len(value) <= 200:
        raise ControlError("'reason' must be one line of at most 200 printable characters")
    return value


class Commands:
    def __init__(self, info: MountInfo, *, gate: Gate, pool: Pool, journal: Journal,
                 window: Window, drain: Drain, source_fd: int,
                 profiles: Callable[[], list[dict[str, Any]]],
                 memory: MemoryWatch | None = None) -> None:
        self.info = info
        self.gate = gate
        self.pool = pool
        self.journal = journal
        self.window = window
        self.drain = drain
        self.source_fd = source_fd
        self.profiles = profiles
        self.memwatch = memory or MemoryWatch()
        self._table: dict[str, Callable[[dict[str, Any]], Any]] = {
            "status": self.status, "quiesce": self.quiesce, "resume": self.resume,
            "drain": self.drain_ctl, "journal.list": self.journal_list,
            "journal.show": self.journal_show, "journal.retry": self.journal_retry,
            "journal.record": self.journal_record,
            "quarantine.list": self.quarantine_list, "memory": self.memory,
        }

    async def __call__(self, cmd: str, args: dict[str, Any], uid: int) -> Any:
        fn = self._table.get(cmd)
        if fn is None:
            raise ControlError(f"unknown command {cmd!r} (known: {', '.join(sorted(self._table))})")
        log.info("control: %s %s from uid %d", cmd, args or "", uid)
        result = fn(args)
        if inspect.isawaitable(result):
            result = await result
        return result

    # --- status ---------------------------------------------------------------------------
    async def status(self, args: dict[str, Any]) -> dict[str, Any]:
        journal_stats = await trio.to_thread.run_sync(self.journal.contents)
        info = self.info
        return {
            "mount": {"source": info.source, "mountpoint": info.mountpoint,
                      "state_dir": info.state_dir, "quarantine_dir": info.quarantine_dir,
                      "pid": os.getpid(), "owner_uid": info.owner_uid,
                      "uptime_s": round(time.time() - info.started, 1)},
            "profiles": self.profiles(),
            "window": self.window.statistics(),
            "appliances": self.pool.statistics(),
            "journal": {**journal_stats, "durability": self.journal.durability()},
            "drain": self.drain.statistics(),
            "gate": self.gate.statistics(),
            "logging": logqueue.statistics(),
            "audit_log": self.gate.observer.statistics(),
        }

    # --- windows --------------------------------------------------------------------------
    async def quiesce(self, args: dict[str, Any]) -> dict[str, Any]:
        started = trio.current_time()
        max_s = _number(args, "max", minimum=0.001, maximum=MAX_WINDOW)
        self.window.open(max_s, reason=_reason(args))
        # Cancelled opens now take their fail mode; `safe` ones write the journal.
        with trio.move_on_after(SETTLE_DEADLINE):
            await self.gate.record_new_files()  # the window made them: committed before the sync
            await self.gate.wait_idle()
        await self.journal.sync()
        await trio.to_thread.run_sync(syncfs, self.source_fd, limiter=SYNC_LIMITER)
        took = trio.current_time() - started
        log.warning("quiesced in %.3fs: journal and source synced", took)
        return {"took_s": round(took, 4), "window": self.window.statistics()}

    async def resume(self, args: dict[str, Any]) -> dict[str, Any]:
        was = self.window.close()
        self.drain.kick()
        # Records of the window's unscanned reads (tier 2) made durable now, if the
        # state disk takes it in time; otherwise the background sync does it.
        with trio.move_on_after(SETTLE_DEADLINE):
            await self.journal.sync_if_dirty()
        return {"was_active": was, "window": self.window.statistics()}

    # --- drain ----------------------------------------------------------------------------
    def drain_ctl(self, args: dict[str, Any]) -> dict[str, Any]:
        action = args.get("action", "status")
        if action == "now":
            self.drain.resume()
        elif action == "pause":
            self.drain.pause()
        elif action == "resume":
            self.drain.resume()
        elif action == "rate":
            files = _number(args, "files_per_s", minimum=MIN_FILES_PER_S,
                            maximum=MAX_FILES_PER_S)
            nbytes = _number(args, "bytes_per_s", minimum=MIN_BYTES_PER_S,
                             maximum=MAX_BYTES_PER_S)
            if files is None and nbytes is None:
                raise ControlError("drain rate needs files_per_s and/or bytes_per_s")
            self.drain.set_rate(files, nbytes)
        elif action != "status":
            raise ControlError(f"drain action must be now, pause, resume, rate or status, "
                               f"not {action!r}")
        return self.drain.statistics()

    # --- journal --------------------------------------------------------------------------
    async def journal_list(self, args: dict[str, Any]) -> dict[str, Any]:
        """The oldest entries, bounded in number and bytes (`REPLY_BYTES`); `more`: not all."""
        value = _number(args, "limit", minimum=1, maximum=MAX_LIST)
        if value is not None and value != int(value):
            raise ControlError(f"'limit' must be a whole number, not {value!r}")
        limit = DEFAULT_LIST if value is None else int(value)
        # New files not recorded yet (filter.newfiles) are listed once their records are in.
        with trio.move_on_after(SETTLE_DEADLINE):
            await self.gate.record_new_files()
        entries = await trio.to_thread.run_sync(
            lambda: self.journal.list_deferred(limit=limit + 1))
        out: list[dict[str, Any]] = []
        size = 0
        for e in entries[:limit]:
            row = deferred_to_json(e)
            size += len(json.dumps(row, default=str))
            if out and size > REPLY_BYTES:
                break
            out.append(row)
        return {"entries": out, "more": len(out) < len(entries)}

    async def journal_record(self, args: dict[str, Any]) -> dict[str, Any]:
        """Every new file's record made and committed (filter.newfiles): a reader of the
        journal from outside (`vfile journal ... --mount`) then finds it."""
        with trio.move_on_after(SETTLE_DEADLINE):
            await self.gate.record_new_files()
        return {}

    async def journal_show(self, args: dict[str, Any]) -> dict[str, Any]:
        path = args.get("path")
        if not isinstance(path, str):
            raise ControlError("journal.show needs a 'path' string")
        with trio.move_on_after(SETTLE_DEADLINE):  # (as journal_list)
            await self.gate.record_new_files()
        entry = self.journal.get_deferred(path)
        if entry is None:
            raise ControlError(f"no journal entry for {path!r}")
        return deferred_to_json(entry)

    async def journal_retry(self, args: dict[str, Any]) -> dict[str, Any]:
        path = args.get("path")
        if path is not None and not isinstance(path, str):
            raise ControlError("journal.retry 'path' must be a string")
        n = await self.journal.retry(path)
        self.drain.kick()
        return {"retried": n}

    # --- memory (issue 19) -------------------------------------------------------------------
    def memory(self, args: dict[str, Any]) -> dict[str, Any]:
        """RSS, heap, top allocation sites; see vfile.observe.memwatch. Args: top (int),
        baseline (bool: take a new baseline after this report), types (bool),
        garbage (bool), group ("lineno" or "traceback")."""
        top = _number(args, "top", minimum=0, maximum=MAX_TOP)
        group = args.get("group", "lineno")
        if group not in ("lineno", "traceback"):
            raise ControlError(f"memory 'group' must be lineno or traceback, not {group!r}")
        return self.memwatch.report(top=DEFAULT_TOP if top is None else int(top),
                                    baseline=bool(args.get("baseline")),
                                    types=bool(args.get("types")),
                                    garbage=bool(args.get("garbage")), group=group)

    def quarantine_list(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        return [quarantine_to_json(r) for r in self.journal.list_quarantine()]


def unreachable_appliance_lines(appliances: list[dict[str, Any]],
                                profiles: list[dict[str, Any]]) -> list[str]:
    """One line per appliance the first probe could not reach, naming the fail modes the
    mount now serves in (pure: from `status`'s "appliances" and "profiles")."""
    modes = ", ".join(f"{p['name']}: {p['fail_mode']}" for p in profiles)
    return [f"appliance {a['url']} is unreachable ({a.get('last_error') or 'no answer'}): "
            f"the mount serves in its fail modes ({modes}) until it answers"
            for a in appliances if not a.get("healthy")]
