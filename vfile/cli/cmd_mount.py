"""`vfile mount`, `vfile unmount`, `vfile version`.

`vfile mount` without `--foreground` starts the server as a fresh process
(see vfile.mount.start_background) and exits 0 once the mount serves; the
server logs to `--log-file`. With `--foreground` this process is the server
and logs to stderr (for systemd and tests).
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

from vfile.cli._app import StateDir, Verbose, app, setup_logging, user_errors
from vfile.cli._bounds import within
from vfile.config.model import DEFAULT_DEADLINE, DEFAULT_FAIL_MODE, RANGES, MountConfig
from vfile.errors import Exit, UserError
from vfile.limits import DAY

#: The -o options `vfile mount` understands.
MOUNT_OPTIONS = ("allow_other", "no_writeback", "noxattr")


def parse_o(values: list[str]) -> set[str]:
    out: set[str] = set()
    for value in values:
        for opt in filter(None, (v.strip() for v in value.split(","))):
            if opt not in MOUNT_OPTIONS:
                raise UserError(f"unknown mount option {opt!r} (known: "
                                f"{', '.join(MOUNT_OPTIONS)})", Exit.USAGE)
            out.add(opt)
    return out


#: a day, like libfuse's passthrough examples' `-o timeout`: beyond it nothing is gained
MAX_CACHE_TIMEOUT = DAY


def check_cache_timeout(value: float | None) -> float | None:
    within("--cache-timeout", value, 0, MAX_CACHE_TIMEOUT, " seconds")
    return value


def check_fd_cache(value: int | None) -> int | None:
    """[mount] fd_cache's range: typer's `min` alone took 2^32 (q29), which the
    configuration file refuses (b27)."""
    within("--fd-cache", value, *RANGES[(MountConfig, "fd_cache")])
    return value


@app.command()
@user_errors
def mount(  # noqa: PLR0917 - typer maps parameters to options
    source: Annotated[str, typer.Argument(help="The directory to mirror.")],
    mountpoint: Annotated[str, typer.Argument(help="Where to mount it (an empty directory).")],
    foreground: Annotated[bool, typer.Option(
        "--foreground", "-f", help="Stay attached and log to stderr.")] = False,
    options: Annotated[list[str] | None, typer.Option(
        "-o", help="Mount options, comma separated: allow_other (let other users in), "
        "no_writeback (no kernel writeback cache), noxattr (no extended attributes: much "
        "faster small writes, but POSIX ACLs are not enforced).")] = None,
    log_file: Annotated[str | None, typer.Option(
        "--log-file", help="Background server log (default: /var/log/vfile/<mountpoint>.log "
        "as root, else ~/.local/state/vfile/<mountpoint>.log).")] = None,
    config: Annotated[str | None, typer.Option(
        "--config", "-c", help="TOML configuration (profiles, appliances, pool); see "
        "examples/vfile.toml.")] = None,
    appliance: Annotated[list[str] | None, typer.Option(
        "--appliance", "-a", help="Appliance URL, repeatable, in priority order: "
        "clamd://HOST:PORT, clamd:///path/clamd.sock, icap://HOST:PORT/SERVICE. "
        "Default: the embedded built-in appliance.")] = None,
    fail_mode: Annotated[str | None, typer.Option(
        "--fail-mode", help=f"Default profile's fail mode: closed, open or safe "
        f"[default: {DEFAULT_FAIL_MODE}].")] = None,
    timeout: Annotated[float | None, typer.Option(
        "--timeout", help=f"Default profile's total scan deadline in seconds "
        f"[default: {DEFAULT_DEADLINE:g}].")] = None,
    state_dir: StateDir = None,
    signatures: Annotated[str | None, typer.Option(
        "--signatures", help="Signature directory (.hdb/.hsb) for the embedded built-in "
        "appliance.")] = None,
    no_scan: Annotated[bool, typer.Option(
        "--no-scan", help="A plain passthrough: no appliance, no journal (for comparison).")
    ] = False,
    metrics: Annotated[str | None, typer.Option(
        "--metrics", help="Serve Prometheus metrics at http://ADDR/metrics; ADDR is PORT "
        "(loopback) or HOST:PORT, e.g. 127.0.0.1:9310. Default: off.")] = None,
    audit_log: Annotated[str | None, typer.Option(
        "--audit-log", help="Append one JSON line per verdict and action (deny, unscanned "
        "open, infected action) to this file. Default: off.")] = None,
    log_format: Annotated[str, typer.Option(
        "--log-format", help="Server log lines: plain, or json (one object per line).")
    ] = "plain",
    fd_cache: Annotated[int | None, typer.Option(
        "--fd-cache", min=16, help="O_PATH descriptors kept open for known inodes; others "
        "are reopened by file handle [default: 4096, or a quarter of the descriptor limit "
        "if less].")] = None,
    cache_timeout: Annotated[float | None, typer.Option(
        "--cache-timeout", help="Seconds the kernel keeps a name and a file's attributes "
        "without asking the server (stat and open get faster); changes made to the source "
        "behind the mount's back are seen that much later [default: 1].")] = None,
    ready_fd: Annotated[int | None, typer.Option("--ready-fd", hidden=True)] = None,
    verbose: Verbose = 0,
) -> None:
    """Mount SOURCE on MOUNTPOINT through vfile; returns once the mount serves.

    Example: vfile mount /srv/guest-data /mnt/guest --appliance clamd:///run/clamav/clamd.ctl

    Example (systemd, see examples/vfile@.service): vfile mount --foreground
    --log-format json --metrics 127.0.0.1:9310 /srv/guest-data /mnt/guest
    """
    from vfile import mount as mount_mod
    from vfile.observe.logfmt import LOG_FORMATS
    from vfile.options import MountOptions

    opts_o = parse_o(options or [])
    opts = MountOptions(source=source, mountpoint=mountpoint,
                                  allow_other="allow_other" in opts_o,
                                  writeback="no_writeback" not in opts_o,
                        xattr="noxattr" not in opts_o, verbose=verbose,
                                  scan=not no_scan, config=config,
                                  appliances=tuple(appliance or ()), fail_mode=fail_mode,
                                  timeout=timeout, state_dir=state_dir, signatures=signatures,
                                  metrics=metrics, audit_log=audit_log, log_format=log_format,
                                  fd_cache=check_fd_cache(fd_cache),
                                  cache_timeout=check_cache_timeout(cache_timeout))
    if log_format not in LOG_FORMATS:
        raise UserError(f"--log-format must be one of {', '.join(LOG_FORMATS)}, not "
                        f"{log_format!r}", Exit.USAGE)
    if metrics is not None:
        from vfile.observe.metrics import parse_address

        parse_address(metrics)  # a bad address fails here, before anything starts
    if foreground:
        setup_logging(verbose, log_format, queued=True)
        if opts.scan:
            from vfile.service import open_scanning_hooks as opener
        else:
            opener = mount_mod.open_passthrough_hooks
        mount_mod.run_foreground(opts, opener, ready_fd)
        return
    setup_logging(verbose, log_format)
    log_path = log_file or mount_mod.default_log_file(mountpoint, os.geteuid(),
                                                      os.path.expanduser("~"))
    mount_mod.start_background(opts, log_path)
    if opts.scan:
        _warn_unreachable(mountpoint)


def _warn_unreachable(mountpoint: str) -> None:
    """Say on stderr, once, which appliances the mount could not reach at start."""
    import sys

    from vfile import control
    from vfile.commands import unreachable_appliance_lines

    try:
        st = control.call(mountpoint, "status", timeout=10)
    except control.ControlError:
        return  # the mount is up (start_background said so); status is best effort
    for line in unreachable_appliance_lines(st["appliances"], st["profiles"]):
        print(f"vfile: warning: {line}", file=sys.stderr)


@app.command()
@user_errors
def unmount(
    mountpoint: Annotated[str, typer.Argument(help="A vfile mountpoint.")],
) -> None:
    """Unmount a vfile mount (its server then exits).

    Example: vfile unmount /mnt/guest
    """
    from vfile import mount as mount_mod

    mount_mod.unmount(mountpoint)


@app.command()
def version() -> None:
    """Print vfile's version.

    Example: vfile version
    """
    import vfile

    print(vfile.__version__)
