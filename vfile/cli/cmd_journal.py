"""`vfile journal …` and `vfile quarantine …`: a mount's journal, live or offline.

Commands are thin over `journal.Journal`. Every command takes either
`--state-dir DIR` (offline, or any journal on disk) or `--mount MOUNTPOINT`
(a live mount: its state directory comes from the control plane's `status`,
so only root and the mount's owner get it, and a refusal is exit code
`Exit.CONTROL`). Every `JournalError` becomes one line and `Exit.JOURNAL`.

Who writes, on a live mount:
- Reads (list, show, stats, export, quarantine list/show) open the journal
  read-only, directly: LMDB serves readers in several processes.
- `retry` goes through the control plane (`journal.retry`): the live process
  resets the entries and kicks its drain at once (without un-pausing a drain
  an administrator paused), instead of the drain noticing at its next poll.
- `purge` and `quarantine restore|delete` (and `retry`, `gc`, `exposures
  --clear` given `--state-dir`) open the journal read-write directly. Given
  `--state-dir`, such a write holds state_dir/mount.lock as a mount does and
  is refused while a mount holds it (naming its pid): whoever gave `--state-
  dir` meant a stopped mount (nl22). Given `--mount`, next to the live
  process. That is safe: LMDB serialises write transactions across processes
  (its lock file); these operations take no seq (the one value the live
  process caches in memory -- and its counter adopts the stored `meta.seq` in
  every transaction that allocates one); the live process copes with an entry
  that vanished under its drain (`complete` of a missing entry only stores the
  verdict) and with a map another process grew (`MapResizedError` is handled
  by its reads and its committer).

Names (and commands, signatures, errors) in text output are other people's: one that
is not printable is shown quoted and escaped (`vfile.observe.logfmt.shown`), so a
newline in a file name cannot print a forged row (s26, tests/t4_input26_test.py);
`--json` gives them exactly.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from vfile.cli._app import StateDir, journal_app, quarantine_app, run_async, user_errors
from vfile.cli.journal_open import call_control, open_journal, resolve_state_dir
from vfile.errors import Exit, UserError
from vfile.observe.logfmt import shown

if TYPE_CHECKING:
    from vfile.journal import DeferredEntry, Exposure, Journal, QuarantineRecord

# The journal (lmdb), the filter and the service are imported by the commands that
# use them, not here: `import vfile.cli` stays light for `vfile version`, `status`
# and `quiesce` (issue 12; tests/t0_cli_imports_test.py).

Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
Mount = Annotated[str | None, typer.Option(
    "--mount", help="A live vfile mountpoint: find its journal through its control plane "
    "(root and the mount's owner only).")]


def _when(t: float) -> str:
    if not t:
        return "-"
    return datetime.datetime.fromtimestamp(t).isoformat(sep=" ", timespec="seconds")


def _state(e: DeferredEntry) -> str:
    return "poisoned" if e.poisoned else f"attempts={e.attempts}" if e.attempts else "queued"


def _print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, sort_keys=True))


# --- journal ---------------------------------------------------------------------------------

@journal_app.command("list")
@user_errors
def journal_list(state_dir: StateDir = None, mount: Mount = None, json_: Json = False,
                 limit: Annotated[int | None, typer.Option(
                     min=1, help="At most this many (at least 1).")] = None
                 ) -> None:
    """List deferred scans, oldest first.

    Example: vfile journal list --mount /mnt/guest --limit 20
    """
    from vfile.journal.records import deferred_to_json

    with open_journal(state_dir, readonly=True, mount=mount) as j:
        entries = j.list_deferred(limit=limit)
    if json_:
        _print_json([deferred_to_json(e) for e in entries])
        return
    for e in entries:
        typer.echo(f"{_when(e.first_deferred)}  {e.reason.value:<11} {_state(e):<12} "
                   f"{len(e.exposures):>3} opened  {shown(e.path)}")
    typer.echo(f"{len(entries)} deferred", err=True)


@journal_app.command("show")
@user_errors
def journal_show(path: Annotated[str, typer.Argument(help="Path as journaled.")],
                 state_dir: StateDir = None, mount: Mount = None, json_: Json = False
                 ) -> None:
    """Show one deferred scan, with who opened the file while it was unscanned.

    Example: vfile journal show uploads/setup.exe --mount /mnt/guest
    """
    from vfile.journal.records import deferred_to_json

    with open_journal(state_dir, readonly=True, mount=mount) as j:
        e = j.get_deferred(path)
    if e is None:
        raise UserError(f"no deferred scan for {path!r}", Exit.USAGE)
    if json_:
        _print_json(deferred_to_json(e))
        return
    ident = e.identity
    lines = [
        f"path:            {shown(e.path)}",
        f"reason:          {e.reason.value}",
        f"profile:         {e.profile}",
        f"state:           {_state(e)}",
        f"first deferred:  {_when(e.first_deferred)}",
        f"last deferred:   {_when(e.last_deferred)}",
        f"attempts:        {e.attempts}",
        f"last error:      {shown(e.last_error or '-')}",
        f"next attempt:    {_when(e.not_before)}",
        "identity:        " + ("-" if ident is None else
                                f"dev={ident.dev} ino={ident.ino} size={ident.size} "
                                f"mtime_ns={ident.mtime_ns} ctime_ns={ident.ctime_ns}"),
        f"exposures:       {len(e.exposures)} (opened while unscanned)",
    ]
    lines += _exposure_lines(e.exposures)
    typer.echo("\n".join(lines))


def _exposure_lines(exposures: tuple[Exposure, ...]) -> list[str]:
    return [f"  {_when(x.first_time)} .. {_when(x.time)}  {x.count:>4}x  uid={x.uid} "
            f"pid={x.pid} {shown(x.command)}{' (wrote it)' if x.wrote else ''}"
            for x in exposures]


@journal_app.command("exposures")
@run_async
async def journal_exposures(
        state_dir: StateDir = None, mount: Mount = None, json_: Json = False,
        clear: Annotated[str | None, typer.Option(
            "--clear", metavar="PATH", help="Clear the exposure record of this path.")] = None,
        clear_all: Annotated[bool, typer.Option(
            "--clear-all", help="Clear every kept exposure record.")] = False) -> None:
    """Who opened files unscanned whose entries ended without a clean verdict for what
    they read (unlinked or renamed over before a scan, infected, changed): kept until
    an administrator clears them.

    Example: vfile journal exposures --mount /mnt/guest
    Example: vfile journal exposures --mount /mnt/guest --clear uploads/setup.exe
    """
    from vfile.journal.records import exposed_to_json

    if clear is not None and clear_all:
        raise UserError("give --clear PATH or --clear-all, not both", Exit.USAGE)
    if clear is not None or clear_all:
        # Read-write next to a live mount is safe: see the module docstring.
        with open_journal(state_dir, readonly=False, mount=mount) as j:
            n = await j.clear_exposed(clear)
        typer.echo(f"{n} cleared")
        return
    with open_journal(state_dir, readonly=True, mount=mount) as j:
        records = j.list_exposed()
    if json_:
        _print_json([exposed_to_json(r) for r in records])
        return
    for r in records:
        what = f"{r.outcome} {r.detail}".strip()
        typer.echo(f"{_when(r.time)}  {shown(what):<24} {shown(r.path)}")
        typer.echo("\n".join(_exposure_lines(r.exposures)))
    typer.echo(f"{len(records)} kept", err=True)


@journal_app.command("gc")
@run_async
async def journal_gc(
        state_dir: StateDir = None, mount: Mount = None,
        source: Annotated[str | None, typer.Option(
            "--source", help="The mount's source directory (default with --mount: the live "
            "mount's).")] = None,
        signature: Annotated[list[str] | None, typer.Option(
            "--signature", help="A signature version in use (default: the one the mount "
            "last recorded in its state directory).")] = None) -> None:
    """Collect stored verdicts of files that no longer exist and of old signature
    versions (a live mount also does this in the background).

    Example: vfile journal gc --state-dir /var/lib/vfile/guest --source /srv/guest
    """
    from vfile.filter import verdict_gc
    from vfile.service import SIG_FILE

    if source is None and mount is not None:
        source = str(call_control(mount, "status")["mount"]["source"])
    if source is None:
        raise UserError("--source DIR (or --mount) is required: verdicts are kept for the "
                        "files it holds", Exit.USAGE)
    state = resolve_state_dir(state_dir, mount)
    sigs = list(signature or [])
    if not sigs:
        with contextlib.suppress(OSError):
            sigs = [(Path(state) / SIG_FILE).read_text().strip()]
    with open_journal(state, readonly=False, live=mount is not None) as j:
        done = await verdict_gc.collect(j, source=source, signatures=sigs)
    typer.echo(f"{done.collected} of {done.examined} verdicts collected in {done.seconds:.1f}s"
               + ("" if any(sigs) else " (no signature version known: kept every version)"))


@journal_app.command("stats")
@user_errors
def journal_stats(state_dir: StateDir = None, mount: Mount = None, json_: Json = False
                  ) -> None:
    """Counts, oldest age and size of the journal.

    Example: vfile journal stats --state-dir /var/lib/vfile/guest --json
    """
    with open_journal(state_dir, readonly=True, mount=mount) as j:
        stats = j.contents()
    if json_:
        _print_json(stats)
        return
    for key, value in stats.items():
        typer.echo(f"{key + ':':<14}{'-' if value is None else value}")


@journal_app.command("retry")
@run_async
async def journal_retry(
        path: Annotated[str | None, typer.Argument(help="Only this path (default: all).")] = None,
        state_dir: StateDir = None, mount: Mount = None) -> None:
    """Un-poison entries and reset their backoff so the drain tries them again now.

    Example: vfile journal retry --mount /mnt/guest
    """
    if mount is not None and state_dir is None:
        # The live process resets them and kicks its drain (module docstring).
        n = int(call_control(mount, "journal.retry", {} if path is None else {"path": path})
                ["retried"])
    else:
        with open_journal(state_dir, readonly=False, mount=mount) as j:
            n = await j.retry(path)
    typer.echo(f"{n} entr{'y' if n == 1 else 'ies'} reset")


@journal_app.command("purge")
@run_async
async def journal_purge(
        path: Annotated[str | None, typer.Argument(help="Only this path (default: all).")] = None,
        state_dir: StateDir = None, mount: Mount = None,
        poisoned: Annotated[bool, typer.Option("--poisoned", help="Only poisoned entries.")]
        = False,
        yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False) -> None:
    """Drop deferred scans: those files will NOT be scanned later.

    Example: vfile journal purge --poisoned --mount /mnt/guest --yes
    """
    what = path or ("every poisoned entry" if poisoned else "EVERY deferred scan")
    state_dir = resolve_state_dir(state_dir, mount)
    if not yes and not typer.confirm(f"Drop {what}? Those files will not be scanned later"):
        raise UserError("nothing purged", Exit.USAGE)
    with open_journal(state_dir, readonly=False, live=mount is not None) as j:
        n = await j.purge(path, poisoned_only=poisoned)
    typer.echo(f"{n} entr{'y' if n == 1 else 'ies'} purged")


@journal_app.command("export")
@user_errors
def journal_export(
        state_dir: StateDir = None, mount: Mount = None,
        output: Annotated[Path | None, typer.Option("--output", "-o",
                                                    help="Write here (default: stdout).")]
        = None) -> None:
    """Every deferred scan as JSON lines, oldest first.

    Example: vfile journal export --state-dir /var/lib/vfile/guest -o deferred.jsonl
    """
    from vfile.journal.records import deferred_to_json

    with open_journal(state_dir, readonly=True, mount=mount) as j:
        entries = j.list_deferred()
    lines = "".join(json.dumps(deferred_to_json(e), sort_keys=True) + "\n" for e in entries)
    if output is None:
        sys.stdout.write(lines)
    else:
        try:
            output.write_text(lines)
        except OSError as err:
            raise UserError(f"{output}: {err.strerror}", Exit.USAGE) from None


# --- quarantine ------------------------------------------------------------------------------

def _get_record(j: Journal, rec_id: str) -> QuarantineRecord:
    rec = j.get_quarantine(rec_id)
    if rec is None:
        raise UserError(f"no quarantine record {rec_id!r}", Exit.USAGE)
    return rec


@quarantine_app.command("list")
@user_errors
def quarantine_list(state_dir: StateDir = None, mount: Mount = None, json_: Json = False
                    ) -> None:
    """List quarantined files.

    Example: vfile quarantine list --mount /mnt/guest
    """
    from vfile.journal.records import quarantine_to_json

    with open_journal(state_dir, readonly=True, mount=mount) as j:
        recs = j.list_quarantine()
    if json_:
        _print_json([quarantine_to_json(r) for r in recs])
        return
    for r in recs:
        typer.echo(f"{r.id}  {_when(r.time)}  {shown(r.signature)}  {shown(r.original_path)}")
    typer.echo(f"{len(recs)} quarantined", err=True)


@quarantine_app.command("show")
@user_errors
def quarantine_show(rec_id: Annotated[str, typer.Argument(metavar="ID")],
                    state_dir: StateDir = None, mount: Mount = None, json_: Json = False
                    ) -> None:
    """Show one quarantine record.

    Example: vfile quarantine show 3f2a9c --mount /mnt/guest
    """
    from vfile.journal.records import quarantine_to_json

    with open_journal(state_dir, readonly=True, mount=mount) as j:
        rec = _get_record(j, rec_id)
    if json_:
        _print_json(quarantine_to_json(rec))
        return
    for key, value in quarantine_to_json(rec).items():
        if key != "exposures":
            typer.echo(f"{key + ':':<17}{shown(str(value))}")
    typer.echo(f"{'exposures:':<17}{len(rec.exposures)} (opened while unscanned)")
    if rec.exposures:
        typer.echo("\n".join(_exposure_lines(rec.exposures)))


@quarantine_app.command("restore")
@run_async
async def quarantine_restore(
        rec_id: Annotated[str, typer.Argument(metavar="ID")], state_dir: StateDir = None,
        mount: Mount = None,
        to: Annotated[Path | None, typer.Option("--to", help="Restore here instead of the "
                                                "original place.")] = None,
        source: Annotated[str | None, typer.Option(
            "--source", help="The mount's source directory (default with --mount: the live "
            "mount's), where the file goes back to its original place.")] = None) -> None:
    """Move a quarantined file back (never over an existing file) and drop its record.

    Without --to the file goes back into the source at its original place.

    Example: vfile quarantine restore 3f2a9c --mount /mnt/guest
    Example: vfile quarantine restore 3f2a9c --mount /mnt/guest --to /tmp/recovered
    """
    from vfile.filter.restore import RestoreError, restore_into

    if source is None and mount is not None and to is None:
        source = str(call_control(mount, "status")["mount"]["source"])
    with open_journal(state_dir, readonly=False, mount=mount) as j:
        rec = _get_record(j, rec_id)
        quarantined = Path(rec.quarantine_path)
        if to is not None or os.path.isabs(rec.original_path):
            target = to if to is not None else Path(rec.original_path)
            _move_no_overwrite(quarantined, target)
        elif source is None:
            raise UserError(f"{rec_id}: its path {rec.original_path!r} is relative to the "
                            "mount's source: give --mount, --source DIR or --to PATH",
                            Exit.USAGE)
        else:
            if not quarantined.exists():
                raise UserError(f"{quarantined}: quarantined file is missing", Exit.USAGE)
            try:
                target = restore_into(source, rec.original_path, quarantined)
            except RestoreError as err:
                raise UserError(str(err), Exit.USAGE) from None
        await j.remove_quarantine(rec_id)
    typer.echo(f"restored {rec_id} to {target}")


def _move_no_overwrite(src: Path, dst: Path) -> None:
    if not src.exists():
        raise UserError(f"{src}: quarantined file is missing", Exit.USAGE)
    try:
        # link() fails if dst exists: no window in which an existing file is replaced.
        os.link(src, dst)
        os.unlink(src)
    except FileExistsError:
        raise UserError(f"{dst} exists; refusing to overwrite it (use --to)", Exit.USAGE) from None
    except OSError:
        if dst.exists() or dst.is_symlink():
            raise UserError(f"{dst} exists; refusing to overwrite it (use --to)",
                            Exit.USAGE) from None
        try:  # another filesystem: copy, then remove the quarantined copy
            shutil.move(src, dst)
        except OSError as err:
            raise UserError(f"cannot restore to {dst}: {err.strerror}", Exit.USAGE) from None


@quarantine_app.command("delete")
@run_async
async def quarantine_delete(rec_id: Annotated[str, typer.Argument(metavar="ID")],
                            state_dir: StateDir = None, mount: Mount = None) -> None:
    """Delete a quarantined file and its record.

    Example: vfile quarantine delete 3f2a9c --mount /mnt/guest
    """
    with open_journal(state_dir, readonly=False, mount=mount) as j:
        rec = _get_record(j, rec_id)
        try:
            os.unlink(rec.quarantine_path)
        except FileNotFoundError:
            typer.echo(f"vfile: {rec.quarantine_path} was already gone", err=True)
        except OSError as err:
            raise UserError(f"{rec.quarantine_path}: {err.strerror}", Exit.USAGE) from None
        await j.remove_quarantine(rec_id)
    typer.echo(f"deleted {rec_id}")
