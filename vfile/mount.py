"""The composition root: check the request, build everything, serve, shut down.

`serve` is the whole life of a mount server, in one trio task tree:

    check FUSE and the paths -> open the source root -> open the hooks
    (the caller's opener: the plain passthrough, or vfile.service's scanning one)
    -> pyfuse3.init (the mount appears) -> report ready -> pyfuse3.main
    until unmounted or SIGTERM/SIGINT -> unmount, close hooks, close fds.

Invariants:
- Nothing is left mounted when `serve` returns or raises: the unmount is in a
  `finally`, and every check that can fail runs before the mount exists.
- The background mode (`start_background`) never forks a running trio loop
  (or an open LMDB environment): the parent starts a *fresh* interpreter
  running ``vfile mount --foreground --ready-fd N`` and waits on the pipe
  for one line, ``OK`` or ``ERR <exit code> <message>``.
- The server process runs with umask 0: the caller's umask is applied to
  every object it creates (see vfile.passthrough.fs).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import resource
import select
import signal
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

import pyfuse3
import trio

from vfile.errors import Exit, UserError
from vfile.hooks import FileHooks, NoHooks
from vfile.journal.statedir import below
from vfile.notify import notify, watchdog, watchdog_interval
from vfile.observe.private import open_private_append
from vfile.options import MountOptions
from vfile.passthrough.fs import VFileOperations

log = logging.getLogger(__name__)

#: The filesystem type in /proc/mounts is "fuse." + this.
SUBTYPE = "vfile"
#: How long `vfile mount` waits for the server to report ready.
READY_TIMEOUT = 60.0
#: seconds a thread running Python keeps the GIL while another waits (see run_foreground)
SWITCH_INTERVAL = 0.0005
#: Readahead for the mount's backing device info, in KiB (None: kernel default).
READ_AHEAD_KB: int | None = 1024
#: Overridable so tests can simulate a machine without FUSE.
FUSE_DEVICE_ENV = "VFILE_FUSE_DEVICE"


HooksOpener = Callable[[MountOptions, int], AbstractAsyncContextManager[FileHooks]]


@contextlib.asynccontextmanager
async def open_passthrough_hooks(opts: MountOptions, root_fd: int) -> AsyncIterator[FileHooks]:
    """The plain passthrough. The scanning step replaces this with an opener
    that starts the journal and the scanner pool in a nursery and yields the gate."""
    yield NoHooks()


# -- checks (before anything is mounted) -------------------------------------


def check_fuse(device: str | None = None) -> None:
    device = device or os.environ.get(FUSE_DEVICE_ENV, "/dev/fuse")
    try:
        st = os.stat(device)
    except OSError as exc:
        raise UserError(f"FUSE is not available: {device}: {exc.strerror}", Exit.FUSE) from None
    if not stat.S_ISCHR(st.st_mode):
        raise UserError(f"FUSE is not available: {device} is not a character device", Exit.FUSE)
    if os.geteuid() != 0 and not _which("fusermount3"):
        raise UserError("FUSE is not available: fusermount3 not found", Exit.FUSE)


def _which(name: str) -> bool:
    return any(os.access(os.path.join(d, name), os.X_OK)
               for d in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep))


def overlaps(a: str, b: str) -> bool:
    """Whether one absolute, normalised path is the other or inside it (pure)."""
    return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")


def check_paths(source: str, mountpoint: str) -> tuple[str, str]:
    """Return (source, mountpoint) resolved, or raise the UserError for a bad start."""
    src = os.path.realpath(source)
    if not os.path.exists(src):
        raise UserError(f"source {source!r} does not exist", Exit.SOURCE)
    if not os.path.isdir(src):
        raise UserError(f"source {source!r} is not a directory", Exit.SOURCE)
    if not os.access(src, os.R_OK | os.X_OK):
        raise UserError(f"source {source!r} is not readable", Exit.SOURCE)
    try:
        st = os.stat(mountpoint)
    except FileNotFoundError:
        raise UserError(f"mountpoint {mountpoint!r} does not exist", Exit.MOUNTPOINT) from None
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            raise UserError(f"mountpoint {mountpoint!r} is a dead FUSE mount; run "
                            f"'vfile unmount {mountpoint}'", Exit.MOUNTPOINT) from None
        raise UserError(f"mountpoint {mountpoint!r}: {exc.strerror}", Exit.MOUNTPOINT) from None
    if not stat.S_ISDIR(st.st_mode):
        raise UserError(f"mountpoint {mountpoint!r} is not a directory", Exit.MOUNTPOINT)
    mnt = os.path.realpath(mountpoint)
    if os.path.ismount(mnt):
        raise UserError(f"mountpoint {mountpoint!r} is busy (already a mountpoint)",
                        Exit.MOUNTPOINT)
    # The strings, and where each really lies: a bind mount of one of the source's
    # subdirectories puts a mountpoint below it in the source (x24,
    # tests/t4_state_bind24_test.py).
    if overlaps(src, mnt) or below(mnt, [src]) or below(src, [mnt]):
        raise UserError(f"source {src!r} and mountpoint {mnt!r} overlap", Exit.MOUNTPOINT)
    return src, mnt


def fuse_options(opts: MountOptions, source: str) -> set[str]:
    """Mount options. `default_permissions`: the kernel checks mode bits for
    every caller, so the daemon (root) only does what the caller may do."""
    escaped = source.replace("\\", "\\\\").replace(",", "\\,")
    out = {"default_permissions", f"fsname={escaped}", f"subtype={SUBTYPE}"}
    if opts.allow_other:
        out.add("allow_other")
    return out


def parse_mounts(text: str) -> list[tuple[str, str]]:
    """(mountpoint, fstype) pairs from /proc/mounts text, octal escapes undone (pure)."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3:
            out.append((_unescape(parts[1]), parts[2]))
    return out


def mount_device(mountinfo: str, mountpoint: str) -> str | None:
    """The "major:minor" of the last mount on `mountpoint` in /proc/self/mountinfo (pure)."""
    found = None
    for line in mountinfo.splitlines():
        parts = line.split()
        if len(parts) > 4 and _unescape(parts[4]) == mountpoint:
            found = parts[2]
    return found


def _unescape(field: str) -> str:
    return field.encode().decode("unicode_escape").encode("latin-1").decode(
        "utf-8", "surrogateescape")


def is_vfile_mount(mountpoint: str) -> bool:
    with open("/proc/self/mounts") as f:
        mounts = parse_mounts(f.read())
    return (mountpoint, f"fuse.{SUBTYPE}") in mounts


def _tune_readahead(mountpoint: str) -> None:
    """Raise the mount's readahead from the kernel's 128 KiB default (root only):
    bigger FUSE reads, fewer round trips for sequential reads (bench/passthrough.py)."""
    if READ_AHEAD_KB is None or os.geteuid() != 0:
        return
    # Not os.stat(mountpoint): that is a FUSE request, and nobody serves yet.
    with open("/proc/self/mountinfo") as f:
        dev = mount_device(f.read(), mountpoint)
    if dev is None:
        return
    path = f"/sys/class/bdi/{dev}/read_ahead_kb"
    try:
        with open(path, "w") as f:
            f.write(str(READ_AHEAD_KB))
    except OSError as exc:
        log.info("cannot set %s: %s", path, exc.strerror)


def _raise_fd_limit() -> None:
    # Open files cost a descriptor each, and the inode table's cache is sized
    # from the limit (see vfile.passthrough.fdcache): take all we may.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# -- the server ---------------------------------------------------------------


async def serve(opts: MountOptions, *, open_hooks: HooksOpener = open_passthrough_hooks,
                task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Mount, report ready, serve until unmounted or signalled, unmount."""
    check_fuse()
    src, mnt = check_paths(opts.source, opts.mountpoint)
    os.umask(0)
    _raise_fd_limit()
    root_fd = os.open(src, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        await _serve(opts, src, mnt, root_fd, open_hooks, task_status=task_status)
    finally:
        # Closed last: the hooks' stop (a scanning service's drain and stores) still
        # resolves paths from it after the unmount.
        os.close(root_fd)


async def _serve(opts: MountOptions, src: str, mnt: str, root_fd: int,
                 open_hooks: HooksOpener, *, task_status: trio.TaskStatus[None]) -> None:
    # Signals are caught from before the mount exists, so a SIGTERM at any
    # moment leads through the unmount below rather than killing us mounted.
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with open_hooks(opts, root_fd) as hooks:
            ops = VFileOperations(root_fd, os.fsencode(src), hooks, writeback=opts.writeback,
                                  xattr=opts.xattr, fd_cache=_fd_cache_size(opts),
                                  cache_timeout=opts.cache_timeout)
            try:
                pyfuse3.init(ops, mnt, fuse_options(opts, src))
            except RuntimeError as exc:
                ops.close()
                raise UserError(f"cannot mount on {mnt!r}: {exc}", Exit.FUSE) from None
            _tune_readahead(mnt)
            log.info("serving %r on %r", src, mnt)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_terminate_on_signal, signals)
                    task_status.started()
                    # systemd (Type=notify): serving now; no-ops without $NOTIFY_SOCKET.
                    notify(f"READY=1\nSTATUS=serving {src} on {mnt}")
                    if (interval := watchdog_interval()) is not None:
                        nursery.start_soon(watchdog, interval)
                    await pyfuse3.main()
                    nursery.cancel_scope.cancel()
            finally:
                notify("STOPPING=1")
                pyfuse3.close(unmount=True)
                ops.close()
                log.info("unmounted %r", mnt)


def _fd_cache_size(opts: MountOptions) -> int | None:
    """--fd-cache, else [mount] fd_cache, else None (a default from the limit)."""
    if opts.fd_cache is not None or opts.config is None:
        return opts.fd_cache
    from vfile.config.reader import load_config  # parsed (and checked) again by the service

    return load_config(opts.config).mount.fd_cache


async def _terminate_on_signal(signals: AsyncIterator[int]) -> None:
    async for signum in signals:
        log.info("%s: unmounting", signal.Signals(signum).name)
        pyfuse3.terminate()
        return


def run_foreground(opts: MountOptions, open_hooks: HooksOpener,
                   ready_fd: int | None = None) -> None:
    """Serve in this process with the hooks `open_hooks` yields (the caller picks the
    assembly: vfile.service's scanning hooks, or `open_passthrough_hooks`); tell
    `ready_fd` (if any) ``OK`` or ``ERR code msg``."""
    hooks_opener = open_hooks
    # The trio thread gives up the GIL for every syscall and must then wait for any
    # thread running Python (the journal writer applying a batch) to drop it, which
    # takes up to the switch interval (5 ms by default) per syscall. A shorter
    # interval cut the drain's server CPU per file by about a seventh and raised its
    # rate by a sixth (bench/drain.py --scale --files 5000, README "Drain").
    sys.setswitchinterval(SWITCH_INTERVAL)

    reported = ready_fd is None

    async def main() -> None:
        nonlocal reported
        async with trio.open_nursery() as nursery:
            await nursery.start(functools.partial(serve, opts, open_hooks=hooks_opener))
            _report(ready_fd, "OK")
            reported = True

    try:
        try:
            trio.run(main)
        except BaseExceptionGroup as group:
            raise _user_error_in(group) or group from None
    except UserError as err:
        if not reported:
            _report(ready_fd, f"ERR {int(err.exit_code)} {err.message}")
        raise
    except BaseException:
        if not reported:
            _report(ready_fd, f"ERR {int(Exit.RUNTIME)} the mount server failed; see its log")
        raise


def _user_error_in(group: BaseExceptionGroup[BaseException]) -> UserError | None:
    """The first UserError in a (nested) exception group: what the operator needs."""
    for exc in group.exceptions:
        if isinstance(exc, UserError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _user_error_in(exc)
            if found is not None:
                return found
    return None


def _report(fd: int | None, line: str) -> None:
    if fd is None:
        return
    try:
        os.write(fd, line.replace("\n", " ").encode() + b"\n")
    finally:
        os.close(fd)


# -- the client side of `vfile mount` / `vfile unmount` -------------------------


def default_log_file(mountpoint: str, uid: int, home: str) -> str:
    """Where a background server logs (pure): one file per mountpoint."""
    slug = os.path.abspath(mountpoint).strip("/").replace("/", "_") or "root"
    base = "/var/log/vfile" if uid == 0 else os.path.join(home, ".local/state/vfile")
    return os.path.join(base, f"{slug}.log")


def child_argv(opts: MountOptions, ready_fd: int) -> list[str]:
    """The command line of the server process; new MountOptions fields go here too."""
    argv = [sys.executable, "-m", "vfile", "mount", "--foreground", "--ready-fd", str(ready_fd)]
    if opts.allow_other:
        argv += ["-o", "allow_other"]
    if not opts.writeback:
        argv += ["-o", "no_writeback"]
    if not opts.xattr:
        argv += ["-o", "noxattr"]
    argv += ["-v"] * opts.verbose
    if not opts.scan:
        argv.append("--no-scan")
    for flag, value in (("--config", opts.config), ("--fail-mode", opts.fail_mode),
                        ("--state-dir", opts.state_dir), ("--signatures", opts.signatures),
                        ("--metrics", opts.metrics), ("--audit-log", opts.audit_log),
                        ("--log-format", None if opts.log_format == "plain" else opts.log_format),
                        ("--timeout", None if opts.timeout is None else repr(opts.timeout)),
                        ("--fd-cache", None if opts.fd_cache is None else str(opts.fd_cache)),
                        ("--cache-timeout",
                         None if opts.cache_timeout is None else repr(opts.cache_timeout))):
        if value is not None:
            argv += [flag, value]
    for url in opts.appliances:
        argv += ["--appliance", url]
    return [*argv, "--", opts.source, opts.mountpoint]


def start_background(opts: MountOptions, log_file: str) -> int:
    """Start a server process and wait until it serves; return its pid."""
    check_fuse()
    src, mnt = check_paths(opts.source, opts.mountpoint)
    opts = MountOptions(**{**opts.__dict__, "source": src, "mountpoint": mnt})
    try:
        # Root writes lines naming files there: never through a symlink, 0600, in a
        # directory no other user may write (x24, tests/t4_log_file24_test.py).
        logf = os.fdopen(open_private_append(log_file), "ab")
    except OSError as exc:
        raise UserError(f"cannot open log file {log_file!r}: {exc.strerror}", Exit.CONFIG) \
            from None
    r, w = os.pipe()
    try:
        with logf:
            proc = subprocess.Popen(child_argv(opts, w), pass_fds=(w,), stdin=subprocess.DEVNULL,
                                    stdout=logf, stderr=logf, start_new_session=True)
        os.close(w)
        w = -1
        line = _read_line(r, READY_TIMEOUT)
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    if line == "OK":
        return proc.pid
    if line.startswith("ERR "):
        code, _, msg = line[4:].partition(" ")
        proc.wait()
        known = code.isdigit() and int(code) in Exit._value2member_map_
        raise UserError(msg, Exit(int(code)) if known else Exit.RUNTIME)
    if proc.poll() is None:
        proc.terminate()
    rc = proc.wait()
    if is_vfile_mount(mnt):  # it died half-way: leave nothing mounted
        subprocess.run(["fusermount3", "-u", "-z", mnt], capture_output=True, check=False)
    raise UserError(f"the mount server did not start (exit status {rc}); see {log_file}",
                    Exit.RUNTIME)


def _read_line(fd: int, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return ""
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
    return buf.split(b"\n", 1)[0].decode(errors="replace")


def unmount(mountpoint: str) -> None:
    mnt = os.path.join(os.path.realpath(os.path.dirname(os.path.abspath(mountpoint))),
                       os.path.basename(os.path.abspath(mountpoint)))
    if not is_vfile_mount(mnt):
        raise UserError(f"{mountpoint!r} is not a vfile mount", Exit.MOUNTPOINT)
    res = subprocess.run(["fusermount3", "-u", mnt], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        why = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "failed"
        raise UserError(f"cannot unmount {mountpoint!r}: {why}", Exit.MOUNTPOINT)
