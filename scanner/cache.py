"""The fleet verdict cache on Redis: content-addressed, per signature version.

Keys (the `{digest}` hash tag keeps a verdict and its lock on one Redis
Cluster shard):

    vfc1:v:{<sha256 hex>}:<sha256(signature version) hex, 32 chars>   the verdict
    vfc1:l:{<sha256 hex>}:<same>                                       the scan lock

A value is one JSON object naming its own format, digest and signature
version; `decode()` accepts only exactly that shape, so a value written by
anything else (a planted key, another program, a truncated write, an older
format) is a miss, never a clean. Errors are never stored: an error says
nothing about the bytes.

Authenticity: a value in exactly our format can be written by anyone who can
write to Redis (a guest on its network, another tenant of a shared Redis), and
would make an infected content come back clean. With a key (`--key-file`,
shared by the fleet's caching appliances), every value carries "m", an
HMAC-SHA256 of the other fields under that key, and `decode` accepts only a
value whose HMAC checks: a forged or replayed-across-keys value is a miss.
Without a key, values are unauthenticated and Redis must be trusted (the
appliance says so at start).

Threading: redis.asyncio needs asyncio and vfile runs on trio, so the well-
kept synchronous client runs in worker threads through one named
`CapacityLimiter` (REDIS_CALLS), with socket and connect timeouts so no
thread waits on Redis for longer than `timeout`; the trio side abandons a
thread on cancellation (the socket timeout still ends it). The client does
no retries of its own: a failure feeds a breaker, and while it is open the
cache is skipped with no I/O, so a dead Redis costs one timeout, not one per
scan. There is one breaker per server a key lives on: behind a Cluster URL a
dead shard makes only its own keys uncached, the other shards keep serving
(tests/t4_fleet_topologies_test.py, against a real Sentinel and Cluster).

Invariants: every public method returns within about `timeout` (or the
caller's cancel scope, whichever is sooner) and raises only `CacheDown` for
Redis trouble; `get` returns a `Verdict` only for a well-formed value whose
digest and version equal the ones asked for.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import redis
import trio
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from vfile.scanner.breaker import Breaker, State
from vfile.scanner.cache_defaults import DEFAULT_LOCK_TTL, DEFAULT_TIMEOUT, DEFAULT_TTL
from vfile.scanner.verdict import Verdict

log = logging.getLogger(__name__)

FORMAT = "vfile-cache/1"
#: Redis calls in flight from one process (each holds a pooled connection)
REDIS_CALLS = trio.CapacityLimiter(16)
#: shortest HMAC key accepted (bytes)
MIN_KEY = 16
_HEX64 = re.compile(r"[0-9a-f]{64}")
_SIG = re.compile(r"[!-~]{1,256}")
_RELEASE = ("if redis.call('get', KEYS[1]) == ARGV[1] then "
            "return redis.call('del', KEYS[1]) else return 0 end")

T = TypeVar("T")


class CacheDown(Exception):
    """Redis could not be asked (down, slow, refused, breaker open)."""


# --- pure: keys and values ---------------------------------------------------


def _vtag(version: str) -> str:
    return hashlib.sha256(version.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def verdict_key(digest: str, version: str) -> str:
    return f"vfc1:v:{{{digest}}}:{_vtag(version)}"


def lock_key(digest: str, version: str) -> str:
    return f"vfc1:l:{{{digest}}}:{_vtag(version)}"


def carried_key(version: str) -> str:
    """The set of digests answered clean from the previous version while `version` was new."""
    return f"vfc1:c:{_vtag(version)}"


#: the sorted set of opens per digest, shared by the fleet (scanner.cache_hot)
HOT_KEY = "vfc1:hot"


_FIELDS = frozenset({"f", "d", "v", "o", "s", "a", "t"})


def _mac(key: bytes, fields: dict[str, Any]) -> str:
    """HMAC-SHA256 of the canonical JSON of a value's fields (without "m")."""
    body = json.dumps(fields, separators=(",", ":"), sort_keys=True).encode()
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def encode(digest: str, verdict: Verdict, now: float | None = None,
           key: bytes | None = None) -> bytes:
    """The stored form of a clean or infected verdict (never an error); with `key`,
    authenticated by an HMAC in "m"."""
    if verdict.is_error or not verdict.sig_version or not _HEX64.fullmatch(digest):
        raise ValueError("only a clean or infected verdict with a version is stored")
    obj: dict[str, Any] = {
        "f": FORMAT, "d": digest, "v": verdict.sig_version, "o": str(verdict.outcome),
        "s": verdict.detail, "a": verdict.appliance,
        "t": round(time.time() if now is None else now, 3),
    }
    if key is not None:
        obj["m"] = _mac(key, obj)
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def decode(raw: bytes, digest: str, version: str,
           key: bytes | None = None) -> Verdict | None:
    """The verdict in `raw` if it is exactly our format for (digest, version) (and,
    with `key`, carries a valid HMAC under it), else None."""
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(obj, dict):
        return None
    if key is None:
        if set(obj) != _FIELDS:
            return None
    else:
        mac = obj.pop("m", None)
        if set(obj) != _FIELDS or not isinstance(mac, str) \
                or not hmac.compare_digest(mac, _mac(key, obj)):
            return None
    if obj["f"] != FORMAT or obj["d"] != digest or obj["v"] != version:
        return None
    appliance = obj["a"]
    if not isinstance(appliance, str) or not isinstance(obj["t"], int | float):
        return None
    if obj["o"] == "clean" and obj["s"] == "":
        return Verdict.clean(appliance, version)
    if obj["o"] == "infected" and isinstance(obj["s"], str) and _SIG.fullmatch(obj["s"]):
        return Verdict.infected(obj["s"], appliance, version)
    return None


# --- connecting --------------------------------------------------------------


def connect(url: str, timeout: float = DEFAULT_TIMEOUT) -> Any:
    """A client for `url`; nothing is contacted yet, except by a Cluster client, which
    asks its start node for the slot map (RedisVerdicts makes that one on first use).

    redis://, rediss://, unix:// — one server (redis.Redis.from_url);
    redis+sentinel://H1:P1,H2:P2/SERVICE[/DB] — the master Sentinel names;
    redis+cluster://HOST:PORT — a Redis Cluster (any node to start from).
    """
    no_retry = Retry(NoBackoff(), 0)
    opts: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout,
                            "retry": no_retry, "health_check_interval": 0}
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("redis", "rediss", "unix"):
        return redis.Redis.from_url(url, **opts)
    if scheme == "redis+cluster":
        from redis.cluster import RedisCluster
        return RedisCluster.from_url("redis://" + url.split("://", 1)[1],
                                     socket_timeout=timeout, socket_connect_timeout=timeout)
    if scheme == "redis+sentinel":
        from redis.sentinel import Sentinel
        hosts = []
        for hp in parts.netloc.split(","):
            host, _, port = hp.rpartition(":")
            hosts.append((host, int(port or 26379)))
        service, _, db = parts.path.strip("/").partition("/")
        if not service:
            raise ValueError(f"Redis URL {url!r}: redis+sentinel://HOST:PORT,…/SERVICE[/DB]")
        sentinel = Sentinel(hosts, socket_timeout=timeout, socket_connect_timeout=timeout)
        return sentinel.master_for(service, db=int(db or 0), **opts)
    raise ValueError(f"Redis URL {url!r}: expected redis://, rediss://, unix://, "
                     "redis+sentinel:// or redis+cluster://")


# --- the cache ---------------------------------------------------------------


@dataclass(slots=True)
class CacheStats:
    hits: int = 0
    misses: int = 0
    corrupt: int = 0  # a value that is not ours: counted as a miss too
    stores: int = 0
    redis_errors: int = 0
    bypassed: int = 0  # lookups skipped: Redis down (breaker open)


class RedisVerdicts:
    """Verdicts by (SHA-256 digest, signature version) in Redis, plus short scan locks."""

    def __init__(self, url: str, *, ttl: float = DEFAULT_TTL, lock_ttl: float = DEFAULT_LOCK_TTL,
                 timeout: float = DEFAULT_TIMEOUT, breaker_cooldown: float = 1.0,
                 client: Any = None, key: bytes | None = None) -> None:
        if ttl <= 0 or lock_ttl <= 0 or timeout <= 0:
            raise ValueError("ttl, lock_ttl and timeout must be > 0")
        if key is not None and len(key) < MIN_KEY:
            raise ValueError(f"the cache key must be at least {MIN_KEY} bytes")
        self.key = key
        self.url = url
        self.ttl = ttl
        self.lock_ttl = lock_ttl
        self.timeout = timeout
        # Made on first use, in a worker thread: a Cluster client contacts its nodes
        # when it is made, and a cluster that is down when the appliance starts must
        # cost uncached scans, not the start (tests/t4_fleet_topologies_test.py).
        self._made: Any = client
        if client is None and not url.lower().startswith("redis+cluster://"):
            self._made = connect(url, timeout)  # contacts nothing; a bad URL fails here
        self._making = threading.Lock()
        self._cooldown = breaker_cooldown
        #: one breaker per Redis server a key lives on: a dead Cluster shard makes only
        #: its own keys uncached ("" : the one server of a plain or Sentinel URL)
        self._breakers: dict[str, Breaker] = {}
        self.stats = CacheStats()

    @property
    def _client(self) -> Any:
        """The client (made here on first use: call from a worker thread)."""
        with self._making:
            if self._made is None:
                self._made = connect(self.url, self.timeout)
            return self._made

    def _release(self, *, keys: list[str], args: list[str]) -> Any:
        return self._client.eval(_RELEASE, len(keys), *keys, *args)

    def _shard(self, key: str) -> str:
        """The server `key` lives on, as far as the client knows (no I/O)."""
        made = self._made
        if made is None or not hasattr(made, "get_node_from_key"):
            return ""
        try:
            return str(made.get_node_from_key(key).name)
        except (redis.RedisError, RedisClusterException, AttributeError, KeyError, IndexError):
            return ""  # slots not known yet (or being refreshed)

    def _breaker_for(self, key: str) -> Breaker:
        shard = self._shard(key)
        breaker = self._breakers.get(shard)
        if breaker is None:
            breaker = self._breakers[shard] = Breaker(1, self._cooldown)
        return breaker

    @property
    def up(self) -> bool:
        """False while Redis (any shard of it) is known to be down (no I/O until the
        cooldown ends)."""
        now = trio.current_time()
        return all(b.would_allow(now) for b in self._breakers.values())

    async def _call(self, key: str, fn: Callable[[], T]) -> T:
        breaker = self._breaker_for(key)
        if not breaker.allow(trio.current_time()):
            self.stats.bypassed += 1
            raise CacheDown("Redis unavailable (retrying after a cooldown)")
        settled = False
        try:
            # the socket timeouts end the thread; the outer scope bounds the wait for it
            with trio.move_on_after(self.timeout * 4) as cs:
                result = await trio.to_thread.run_sync(fn, limiter=REDIS_CALLS,
                                                       abandon_on_cancel=True)
            if cs.cancelled_caught:
                raise redis.TimeoutError(f"no answer within {self.timeout * 4:g}s")
        except (redis.RedisError, RedisClusterException, OSError) as err:
            settled = True
            self.stats.redis_errors += 1
            was = breaker.state(trio.current_time())
            breaker.record_failure(trio.current_time())
            if was is State.CLOSED:
                log.warning("Redis %s unavailable, scanning without the cache: %s",
                            self.url, err)
            raise CacheDown(str(err)) from None
        else:
            settled = True
            if breaker.state(trio.current_time()) is not State.CLOSED:
                log.warning("Redis %s available again%s", self.url,
                            f" ({self._shard(key)})" if self._shard(key) else "")
            breaker.record_success()
            return result
        finally:
            if not settled:
                breaker.release()

    async def get(self, digest: str, version: str, *, count: bool = True) -> Verdict | None:
        """The cached verdict, or None (absent, or not in our format). Raises CacheDown.

        `count=False` for a re-look at a key already counted (waiting on another
        proxy's scan, or once more after taking the lock).
        """
        key = verdict_key(digest, version)
        raw = await self._call(key, lambda: self._client.get(key))
        verdict = None if raw is None else decode(raw, digest, version, self.key)
        if raw is not None and verdict is None and count:
            self.stats.corrupt += 1
            log.warning("ignoring a cache value for %s that is not in %s format", key, FORMAT)
        if count:
            if verdict is None:
                self.stats.misses += 1
            else:
                self.stats.hits += 1
        return verdict

    async def put(self, digest: str, verdict: Verdict) -> None:
        """Store a clean or infected verdict under its own signature version. Raises CacheDown."""
        value = encode(digest, verdict, key=self.key)
        key = verdict_key(digest, verdict.sig_version)
        ttl_ms = int(self.ttl * 1000)
        await self._call(key, lambda: self._client.set(key, value, px=ttl_ms))
        self.stats.stores += 1

    async def try_lock(self, digest: str, version: str) -> str | None:
        """Take the scan lock (SET NX PX); the token to release it with, or None if held."""
        key = lock_key(digest, version)
        token = os.urandom(16).hex()
        ttl_ms = int(self.lock_ttl * 1000)
        ok = await self._call(key, lambda: self._client.set(key, token, nx=True, px=ttl_ms))
        return token if ok else None

    async def locked(self, digest: str, version: str) -> bool:
        key = lock_key(digest, version)
        return bool(await self._call(key, lambda: self._client.exists(key)))

    async def unlock(self, digest: str, version: str, token: str) -> None:
        """Release the lock if it is still ours (compare-and-delete in one script)."""
        key = lock_key(digest, version)
        await self._call(key, lambda: self._release(keys=[key], args=[token]))

    async def carry(self, digest: str, version: str) -> None:
        """Record that `digest` was answered from the previous version (grace)."""
        key = carried_key(version)
        ttl_ms = int(self.ttl * 1000)

        def run() -> None:
            pipe = self._client.pipeline(transaction=False)
            pipe.sadd(key, digest)
            pipe.pexpire(key, ttl_ms)
            pipe.execute()

        await self._call(key, run)

    async def covered(self, digest: str, version: str) -> None:
        """A carried-over digest has its own verdict under `version` now."""
        key = carried_key(version)
        await self._call(key, lambda: self._client.srem(key, digest))

    async def carried_pending(self, version: str) -> int:
        """Carried-over digests not yet rescanned under `version`."""
        key = carried_key(version)
        return int(await self._call(key, lambda: self._client.scard(key)))

    async def count_opens(self, counts: dict[str, int], *, track: int, top: int) -> list[str]:
        """Add `counts` (opens per digest) to the fleet's sorted set, trim it to its
        `track` highest members, and return the `top` highest digests. One pipeline on
        one key (one Cluster shard). Raises CacheDown."""
        def run() -> list[str]:
            pipe = self._client.pipeline(transaction=False)
            for digest, n in counts.items():
                pipe.zincrby(HOT_KEY, n, digest)
            pipe.zremrangebyrank(HOT_KEY, 0, -(track + 1))
            pipe.zrevrange(HOT_KEY, 0, top - 1)
            found = pipe.execute()[-1]
            names = [m.decode() if isinstance(m, bytes) else str(m) for m in found]
            return [d for d in names if _HEX64.fullmatch(d)]  # anything else is not ours

        return await self._call(HOT_KEY, run)

    def close(self) -> None:
        if self._made is not None:
            self._made.close()
