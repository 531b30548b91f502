"""`vfile status`, `vfile quiesce`, `vfile resume`, `vfile drain`: a live mount's
control plane (vfile.control). Only root and the mount's owner are served."""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated, Any

import typer

from vfile.cli._app import app, user_errors
from vfile.cli._bounds import within
from vfile.config.syntax import parse_duration
from vfile.control import ControlError, Refused, call
from vfile.errors import Exit, UserError
from vfile.limits import DAY

Mountpoint = Annotated[str, typer.Argument(help="A live vfile mountpoint.")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def _call(mountpoint: str, cmd: str, args: dict[str, Any] | None = None,
          timeout: float = 30.0) -> Any:
    try:
        return call(mountpoint, cmd, args, timeout=timeout)
    except Refused as err:
        raise UserError(str(err), Exit.CONTROL) from None
    except ControlError as err:
        raise UserError(str(err), Exit.CONTROL) from None


def _fmt_ms(v: object) -> str:
    return "-" if v is None else f"{v}ms"


def _adaptive_line(ad: dict[str, Any]) -> str:
    """The appliance's latency model: estimate and attempt timeout for a small file."""
    if not ad["enabled"]:
        return "adaptive    off (fixed attempt timeouts)"
    if ad.get("estimate_4KiB_ms") is None:
        est = f"learning ({ad['samples']} samples)"
    else:
        est = (f"estimate 4KiB {_fmt_ms(ad['estimate_4KiB_ms'])} "
               f"({_fmt_ms(ad['fixed_ms'])} + {ad['per_mib_ms']}ms/MiB "
               f"± {_fmt_ms(ad['deviation_ms'])})")
    return (f"adaptive    {est}, timeout 4KiB {_fmt_ms(ad['timeout_4KiB_ms'])} "
            f"1MiB {_fmt_ms(ad['timeout_1MiB_ms'])}, hedges {ad['hedges']} "
            f"(won {ad['hedge_wins']}), cut short {ad['evicted']}")


def render_status(s: dict[str, Any]) -> str:
    """The status as a readable table (pure)."""
    m, w, j, d, g = s["mount"], s["window"], s["journal"], s["drain"], s["gate"]
    lines = [f"mount       {m['source']} -> {m['mountpoint']} (pid {m['pid']}, "
             f"up {m['uptime_s']}s)",
             f"state       {m['state_dir']}  quarantine {m['quarantine_dir']}"]
    if w["active"]:
        lines.append(f"window      ACTIVE ({w['reason']}), ends within {w['remaining_s']:.0f}s")
    else:
        lines.append(f"window      none ({w['windows_total']} so far)")
    lines.append("profiles")
    for p in s["profiles"]:
        q = p.get("quota") or {}
        qtext = f"quota {q.get('state', 'none')}" if q else "no quota"
        gtext = f"  grace {p['grace_s']:g}s" if p.get("grace_s") else ""
        lines.append(f"  {p['name']:<14} fail-{p['fail_mode']:<7} deadline {p['deadline_s']:g}s  "
                     f"infected: {p['infected_action']:<10} {qtext}{gtext}")
    lines.append("appliances")
    for a in s["appliances"]:
        health = "up" if a["healthy"] else "DOWN"
        lines.append(f"  {a['url']:<44} {health:<4} breaker {a['state']:<9} "
                     f"p50 {_fmt_ms(a['p50_ms'])} p99 {_fmt_ms(a['p99_ms'])} "
                     f"scans {a['scans']} errors {a['errors']}"
                     + (f"  last error: {a['last_error']}" if a["last_error"] else ""))
        if (ad := a.get("adaptive")) is not None:
            lines.append("    " + _adaptive_line(ad))
    oldest = j.get("oldest_age_s")
    lines.append(f"journal     {j.get('deferred', 0)} deferred ({j.get('poisoned', 0)} poisoned), "
                 f"oldest {'-' if oldest is None else f'{oldest:.0f}s'}, "
                 f"{j.get('quarantined', 0)} quarantined, {j.get('verdicts', 0)} verdicts")
    done = d["done"]
    lines.append(f"drain       {'paused' if d['paused'] else 'running'}, "
                 f"{d['files_per_s']:g} files/s, done: {done['clean']} clean, "
                 f"{done['infected']} infected, {done['gone']} gone, {done['error']} errors, "
                 f"{done.get('writing', 0)} still being written")
    rate = g.get("cache_hit_rate")
    lines.append(f"gate        scans {g['scans']} (+{g['close_scans']} after write), "
                 f"cache hit rate {'-' if rate is None else f'{rate:.1%}'}, "
                 f"infections {g['infections']}, exposures {g['exposures']}, "
                 f"deferrals {g['deferrals']}, denials {g['denials']}")
    if (gr := g.get("grace")) and (gr["active"] or gr["carried"]):
        state = f"ACTIVE, {gr['remaining_s']:.0f}s left" if gr["active"] else "over"
        lines.append(f"grace       {state} after {gr['previous'] or '-'} -> {gr['current']}: "
                     f"{gr['carried']} opens carried over, {gr['carried_pending']} files "
                     "still to rescan (journal reason 'grace')")
    if g.get("journal_full"):
        lines.append(f"JOURNAL FULL {g['journal_full']} opens/writes failed with EIO: "
                     f"free space in {m['state_dir']}")
    return "\n".join(lines)


@app.command()
@user_errors
def status(mountpoint: Mountpoint, json_: Json = False) -> None:
    """Show a live mount's fail modes, window, appliances, journal, drain and counters.

    Example: vfile status /mnt/guest --json
    """
    result = _call(mountpoint, "status")
    typer.echo(json.dumps(result, indent=2, sort_keys=True) if json_ else render_status(result))


@app.command()
@user_errors
def quiesce(
    mountpoint: Mountpoint,
    max_: Annotated[str | None, typer.Option(
        "--max", help="End the window by itself after this long (e.g. 90s, 10m) "
        "[default: 1h].")] = None,
) -> None:
    """Start a quiesce/migration window: no appliance is contacted until `vfile resume`.

    Returns once no request waits on an appliance and the journal and source are
    synced. Example (a hypervisor freeze hook): vfile quiesce /mnt/guest --max 10m
    """
    args: dict[str, Any] = {}
    if max_ is not None:
        try:
            args["max"] = parse_duration(max_, "--max")
        except UserError as err:
            raise UserError(str(err), Exit.USAGE) from None
    result = _call(mountpoint, "quiesce", args)
    remaining = result["window"].get("remaining_s")
    if remaining is None:  # a --max shorter than the quiesce took: over already
        typer.echo(f"quiesced in {result['took_s'] * 1000:.0f} ms; the window has already "
                   "ended (--max)")
        return
    typer.echo(f"quiesced in {result['took_s'] * 1000:.0f} ms; window ends within "
               f"{remaining:.0f}s unless resumed")


@app.command()
@user_errors
def resume(mountpoint: Mountpoint) -> None:
    """End the quiesce/migration window; scanning and the drain resume.

    Example (a hypervisor thaw hook): vfile resume /mnt/guest
    """
    result = _call(mountpoint, "resume")
    typer.echo("window ended" if result["was_active"] else "no window was active")


@app.command()
@user_errors
def drain(  # noqa: PLR0917 - typer maps parameters to options
    mountpoint: Mountpoint,
    action: Annotated[str, typer.Argument(help="now | pause | resume | rate | status")] = "status",
    files_per_s: Annotated[float | None, typer.Option(help="With `rate`: files per second.")
                           ] = None,
    bytes_per_s: Annotated[float | None, typer.Option(help="With `rate`: bytes per second.")
                           ] = None,
    json_: Json = False,
    wait: Annotated[bool, typer.Option(
        "--wait", help="Then wait until the journal holds nothing left to drain "
        "(poisoned entries excepted), with a progress bar on a terminal.")] = False,
    wait_timeout: Annotated[float, typer.Option(
        help="With --wait: give up after this many seconds (exit 8).")] = 3600.0,
) -> None:
    """Steer the drain of deferred scans on a live mount.

    Example: vfile drain /mnt/guest rate --files-per-s 50
    Example: vfile drain /mnt/guest now --wait
    """
    within("--wait-timeout", wait_timeout, 0, 30 * DAY, " seconds")
    args: dict[str, Any] = {"action": action}
    if files_per_s is not None:
        args["files_per_s"] = files_per_s
    if bytes_per_s is not None:
        args["bytes_per_s"] = bytes_per_s
    result = _call(mountpoint, "drain", args)
    if wait:
        _wait_drained(mountpoint, wait_timeout)
        result = _call(mountpoint, "drain", {"action": "status"})
    if json_:
        typer.echo(json.dumps(result, indent=2, sort_keys=True))
        return
    done = result["done"]
    typer.echo(f"drain {'paused' if result['paused'] else 'running'} at "
               f"{result['files_per_s']:g} files/s; done {sum(done.values())} "
               f"({done['clean']} clean, {done['infected']} infected, {done['gone']} gone, "
               f"{done['error']} errors, {done.get('writing', 0)} still being written), "
               f"in flight {result['in_flight']}")


def _pending(mountpoint: str) -> int:
    j = _call(mountpoint, "status")["journal"]
    return int(j.get("deferred", 0)) - int(j.get("poisoned", 0))


def _wait_drained(mountpoint: str, timeout: float) -> None:
    """Poll the mount until nothing drainable is left, showing progress."""
    deadline = time.monotonic() + timeout
    first = left = _pending(mountpoint)
    bar = typer.progressbar(length=max(first, 1), label="draining", file=sys.stderr) \
        if sys.stderr.isatty() else None
    try:
        while left > 0:
            if time.monotonic() > deadline:
                raise UserError(f"{left} entries still to drain after {timeout:g}s", Exit.CONTROL)
            time.sleep(0.5)
            now = _pending(mountpoint)
            if bar is not None and now < left:
                bar.update(min(left, first) - max(now, 0))
            left = now
    finally:
        if bar is not None:
            bar.render_finish()
