"""`vfile appliance cache`: the fleet's caching appliance (scanner.cache_server).

Every option can also come from the environment (VFILE_CACHE_*), so a systemd
unit reads one EnvironmentFile (examples/vfile-cache.env). Repeated options
(--listen, --upstream) take space-separated lists there.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import TYPE_CHECKING, Annotated

import typer

from vfile.cli._app import Verbose, appliance_app, run_async, setup_logging
from vfile.cli._bounds import within
from vfile.config.model import RANGES, PoolConfig
from vfile.errors import Exit, UserError
from vfile.limits import DAY, HOUR, MAX_BYTES, MAX_FILES_PER_S
from vfile.scanner.cache_defaults import (
    DEFAULT_LOCK_TTL,
    DEFAULT_MAX_INFLIGHT,
    DEFAULT_RESCAN_RATE,
    DEFAULT_TIMEOUT,
    DEFAULT_TTL,
    UPSTREAM_ADAPTIVE_FLOOR,
)

if TYPE_CHECKING:
    import trio

# trio, redis and the scanner are imported by the command, not here: every `vfile`
# invocation imports this module (issue 12; tests/t0_cli_imports_test.py).

log = logging.getLogger(__name__)


def _opt(env: str, text: str) -> typer.models.OptionInfo:
    return typer.Option(envvar=f"VFILE_CACHE_{env}", help=text)


async def _stop_on_signals(scope: trio.CancelScope) -> None:
    """SIGTERM (systemd) and SIGINT end the service cleanly (exit 0, no traceback)."""
    import trio

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("stopping on %s", signal.Signals(signum).name)
            scope.cancel()
            return


def _read_key(path: str | None) -> bytes | None:
    """The fleet's secret: a key another user could write (or read) lets them forge a
    stored "clean" (s26): refused as a configuration is (vfile/scanner/trusted.py)."""
    if path is None:
        return None
    from vfile.scanner.trusted import open_trusted_file

    try:
        with open(open_trusted_file(path), "rb") as f:
            if os.fstat(f.fileno()).st_mode & 0o004:
                raise UserError(f"cannot use the cache key {path}: it is readable by every "
                                "user (chmod 0600, or 0640 for a group)", Exit.USAGE)
            return f.read().strip()
    except OSError as err:
        raise UserError(f"cannot read the cache key {path}: {err.strerror}", Exit.USAGE) from None


@appliance_app.command("cache")
@run_async
async def cache(  # noqa: PLR0917 - typer maps parameters to options
    listen: Annotated[list[str], _opt(
        "LISTEN", "tcp://HOST:PORT or unix:///path the guests connect to (repeatable).")],
    upstream: Annotated[list[str], _opt(
        "UPSTREAM", "Upstream appliance, in priority order (repeatable): clamd://HOST:PORT, "
        "clamd:///path.sock, icap://HOST:PORT/SERVICE.")],
    redis: Annotated[str, _opt(
        "REDIS", "redis://HOST:6379/0 (also rediss://, unix://, "
        "redis+sentinel://H1:P1,H2:P2/SERVICE/DB, redis+cluster://HOST:PORT).")],
    ttl: Annotated[float, _opt("TTL", "Seconds a stored verdict lives.")] = DEFAULT_TTL,
    lock_ttl: Annotated[float, _opt(
        "LOCK_TTL", "Seconds a scan lock lives (the longest another proxy waits on it).")
    ] = DEFAULT_LOCK_TTL,
    redis_timeout: Annotated[float, _opt(
        "REDIS_TIMEOUT", "Socket timeout of one Redis call, seconds.")] = DEFAULT_TIMEOUT,
    attempt_timeout: Annotated[float, _opt(
        "ATTEMPT_TIMEOUT", "Upstream: deadline of one scan attempt, seconds.")] = 30.0,
    retries: Annotated[int, _opt("RETRIES", "Upstream: retries per appliance.")] = 1,
    probe_interval: Annotated[float, _opt(
        "PROBE_INTERVAL", "Upstream: health probe interval, seconds.")] = 1.0,
    max_concurrency: Annotated[int, _opt(
        "MAX_CONCURRENCY", "Upstream: scans in flight at once.")] = 16,
    max_inflight: Annotated[int, _opt(
        "MAX_INFLIGHT", "Scan requests holding a copy of their bytes at once (memory: this x "
        "64 MiB at most); more wait.")] = DEFAULT_MAX_INFLIGHT,
    grace: Annotated[float, _opt(
        "GRACE", "Seconds after a signature update during which a content clean under the "
        "previous version is answered clean at once and rescanned in the background "
        "(infected never carries over). 0: off.")] = 0.0,
    rescan_rate: Annotated[float, _opt(
        "RESCAN_RATE", "Background rescans per second during a grace.")] = DEFAULT_RESCAN_RATE,
    hot_dir: Annotated[str | None, _opt(
        "HOT_DIR", "Directory for copies of the fleet's most-opened contents (opens per "
        "digest are counted in Redis); after a signature update they are rescanned in the "
        "background at --rescan-rate, storing the new version's verdicts. Unset: off.")] = None,
    hot_top: Annotated[int, _opt(
        "HOT_TOP", "How many of the most-opened contents are kept and rescanned.")] = 1000,
    hot_max_bytes: Annotated[int, _opt(
        "HOT_MAX_BYTES", "Bytes of copies in --hot-dir at most.")] = 1 << 30,
    hot_interval: Annotated[float, _opt(
        "HOT_INTERVAL", "Seconds between flushes of the open counts to Redis (and looks "
        "for a new signature version).")] = 1.0,
    key_file: Annotated[str | None, _opt(
        "KEY_FILE", "A secret (at least 16 bytes) shared by the fleet's caching appliances: "
        "stored verdicts carry an HMAC under it, and a value without a valid one (forged by "
        "whoever can write to Redis) is a miss. Without it, Redis must be trusted.")] = None,
    verbose: Verbose = 0,
) -> None:
    """Run a caching appliance: clamd protocol to guests, one upstream scan per content.

    Example: vfile appliance cache --listen tcp://0.0.0.0:3310 --upstream
    clamd://10.0.0.5:3310 --redis redis://10.0.0.9:6379/0
    """
    import trio

    from vfile.scanner.cache import RedisVerdicts
    from vfile.scanner.cache_grace import Grace
    from vfile.scanner.cache_hot import Hot
    from vfile.scanner.cache_server import CacheAppliance
    from vfile.scanner.latency import Adaptive
    from vfile.scanner.pool import Pool

    setup_logging(verbose)
    # Each numeric option by name, so a renamed parameter is a type error here, not a
    # KeyError at run time; NaN and infinity are outside every range. The upstream pool
    # takes a mount's [pool] ranges.
    within("--ttl", ttl, 1, 365 * DAY, " seconds")
    within("--lock-ttl", lock_ttl, 0.1, DAY, " seconds")
    within("--redis-timeout", redis_timeout, 0.01, HOUR, " seconds")
    within("--attempt-timeout", attempt_timeout, *RANGES[(PoolConfig, "attempt_timeout")],
           " seconds")
    within("--retries", retries, *RANGES[(PoolConfig, "retries")])
    within("--probe-interval", probe_interval, *RANGES[(PoolConfig, "probe_interval")],
           " seconds")
    within("--max-concurrency", max_concurrency, 1, 4096)
    within("--max-inflight", max_inflight, 1, 4096)
    within("--grace", grace, 0, 7 * DAY, " seconds")
    within("--rescan-rate", rescan_rate, 0.01, MAX_FILES_PER_S, " per second")
    within("--hot-top", hot_top, 1, 1_000_000)
    within("--hot-max-bytes", hot_max_bytes, 0, MAX_BYTES, " bytes")
    within("--hot-interval", hot_interval, 0.05, HOUR, " seconds")
    try:
        pool = Pool(upstream, attempt_timeout=attempt_timeout, retries=retries,
                    probe_interval=probe_interval, max_concurrency=max_concurrency,
                    adaptive=Adaptive(floor=min(UPSTREAM_ADAPTIVE_FLOOR, attempt_timeout)))
        key = _read_key(key_file)
        verdicts = RedisVerdicts(redis, ttl=ttl, lock_ttl=lock_ttl, timeout=redis_timeout,
                                 key=key)
        carry = Grace(verdicts, seconds=grace, rate=rescan_rate) if grace > 0 else None
        hot = None if hot_dir is None else Hot(verdicts, hot_dir, top=hot_top,
                                               rate=rescan_rate, max_bytes=hot_max_bytes,
                                               interval=hot_interval)
    except ValueError as err:
        raise UserError(str(err), Exit.USAGE) from None
    if key is None:
        log.warning("no --key-file: cached verdicts are not authenticated, so anyone who "
                    "can write to %s can make any content answer clean", redis)
    appliance = CacheAppliance(pool, verdicts, grace=carry, hot=hot, max_inflight=max_inflight)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signals, nursery.cancel_scope)
            await nursery.start(pool.serve)
            if carry is not None:
                await nursery.start(carry.run, appliance.rescan)
            if hot is not None:
                await nursery.start(hot.run, appliance.upstream_version, appliance.rescan_kept)
            for url in listen:
                try:
                    bound = await nursery.start(appliance.serve, url)
                except (ValueError, OSError) as err:
                    raise UserError(f"cannot listen on {url}: {err}", Exit.USAGE) from None
                print(f"caching appliance listening on {bound} -> {', '.join(upstream)} "
                      f"(cache {redis})", flush=True)
    finally:
        verdicts.close()
