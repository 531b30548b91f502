"""The fleet's caching appliance through real mounts, a real redis-server and real appliances.

Guests are `vfile mount` processes in the `closed` fail mode, so a lost
verdict shows as EACCES on a clean file and a wrong one as data from an
infected file. Each guest mirrors its own copy of the files (distinct
inodes, same contents), so nothing comes from a guest's own verdict cache.
The upstream is the built-in appliance in a subprocess (faults, SIGHUP
signature reload) or real clamd; the caching appliance is `vfile appliance
cache` in a subprocess, its counters read with its STATS command.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import shutil
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from filtering import Opened, timed_read
from fleet_servers import Cache, restart_redis, running_cache, running_redis
from mounting import Server, mounted, wait_for
from outage import running_appliance
from servers import GENERATED_NAME, Clamd, Samples, free_port

from vfile.scanner.cache import FORMAT, lock_key, verdict_key
from vfile.scanner.signatures import EICAR

pytestmark = pytest.mark.mount

#: a guest's deadline: generous, the machine is loaded; "does not hang" is what we check
GUEST_DEADLINE = 10.0
HANG = GUEST_DEADLINE + 10.0
# The attempt timeout of an open is the profile's (`[pool] attempt_timeout` is for probes
# and the drain): with the 1s default, the first scans of a storm on a loaded machine (a
# Redis connection being made, then a Redis timeout, then the upstream) time out in the
# guest. The adaptive floor stays above what the caching appliance may add while its Redis
# stalls (its socket timeout, 0.25s): a guest that learnt the latency of hits would read
# that stall of every request at once as a hang (collective detection) and deny for the
# breaker cooldown. See the README, "The fleet's caching appliance".
GUEST_TOML = """\
[pool]
attempt_timeout = "5s"
retries = 1
probe_interval = "200ms"
breaker_cooldown = "60s"
adaptive_floor = "1s"

[[profile]]
name = "default"
deadline = "10s"
attempt_timeout = "5s"
"""


@contextlib.contextmanager
def guest(tmp: Path, name: str, appliance: str, files: dict[str, bytes]) -> Iterator[Server]:
    """A guest: its own source copy of `files`, mounted fail-closed through `appliance`."""
    root = tmp / name
    src, mnt, state = root / "src", root / "mnt", root / "state"
    for d in (src, mnt):
        d.mkdir(parents=True)
    for rel, data in files.items():
        (src / rel).write_bytes(data)
    cfg = root / "vfile.toml"
    cfg.write_text(GUEST_TOML)
    with mounted(src, mnt, "--state-dir", str(state), "--config", str(cfg), "--appliance",
                 appliance, "--fail-mode", "closed", "--timeout", str(GUEST_DEADLINE)) as server:
        yield server


def read(server: Server, rel: str) -> Opened:
    return timed_read(server.mountpoint / rel, HANG)


def sig_version(cache: Cache) -> str:
    version: str = cache.stats()["sig_version"]
    return version


CLEAN = b"a clean file the whole fleet has\n" * 200


def test_a_hit_answers_without_upstream_contact(tmp_path: Path, samples: Samples) -> None:
    files = {"clean.txt": CLEAN, "eicar.com": EICAR}
    with running_redis(tmp_path / "redis") as redis, \
            running_appliance(samples.sigdir) as upstream, \
            running_cache([upstream.url], redis.url) as cache:
        with guest(tmp_path, "g1", cache.url, files) as g1:
            assert read(g1, "clean.txt").data == CLEAN
            assert read(g1, "eicar.com").errno == errno.EACCES
        assert cache.stats()["upstream_scans"] == 2
        # Every upstream contact fails from now on: only the cache can answer.
        upstream.set_fault("refuse")
        with guest(tmp_path, "g2", cache.url, files) as g2:
            assert read(g2, "clean.txt").data == CLEAN
            assert read(g2, "eicar.com").errno == errno.EACCES
        stats = cache.stats()
        assert stats["upstream_scans"] == 2, stats
        assert stats["served_from_cache"] == 2, stats
        assert stats["cache"]["hits"] == 2, stats


def test_new_signature_version_misses_and_never_serves_old_clean(
        tmp_path: Path, samples: Samples) -> None:
    sigdir = tmp_path / "sigs"
    sigdir.mkdir()
    (sigdir / "other.hdb").write_text(f"{'0' * 32}:1:Vfile.Test.Nothing\n")
    generated = samples.generated.read_bytes()
    files = {"clean.txt": CLEAN, "generated.bin": generated}
    with running_redis(tmp_path / "redis") as redis, \
            running_appliance(sigdir) as upstream, \
            running_cache([upstream.url], redis.url) as cache, \
            guest(tmp_path, "g1", cache.url, files) as g1:
        # Version 1 does not know the generated file: it is clean there, and cached so.
        assert read(g1, "generated.bin").data == generated
        assert read(g1, "clean.txt").data == CLEAN
        old = sig_version(cache)
        digest = hashlib.sha256(generated).hexdigest()
        assert json.loads(redis.client().get(verdict_key(digest, old)) or b"{}")["o"] == "clean"
        # Version 2 knows it.
        shutil.copy(samples.sigdir / "vfile-test.hdb", sigdir / "vfile-test.hdb")
        upstream.reload()
        wait_for("the cache to see the new version", lambda: sig_version(cache) != old)
        with guest(tmp_path, "g2", cache.url, files) as g2:
            assert read(g2, "generated.bin").errno == errno.EACCES  # never the v1 clean
            assert read(g2, "clean.txt").data == CLEAN
        stats = cache.stats()
        assert stats["upstream_scans"] == 4, stats  # both missed under the new version
        assert stats["served_from_cache"] == 0, stats
        new = json.loads(redis.client().get(verdict_key(digest, sig_version(cache))) or b"{}")
        assert new["o"] == "infected" and GENERATED_NAME in new["s"], new
        # The first guest's own cache is keyed on the version too: it rescans, through a hit.
        wait_for("guest 1 to see the new version", lambda: read(g1, "generated.bin").errno
                 == errno.EACCES)


def _planted(digest: str, version: str) -> list[bytes]:
    ours = {"f": FORMAT, "d": digest, "v": version, "o": "clean", "s": "", "a": "x", "t": 0}
    return [
        b"clean",
        b"OK",
        json.dumps({"verdict": "clean", "sha256": digest}).encode(),
        json.dumps({**ours, "f": "vfile-cache/0"}).encode(),  # another format version
        json.dumps({**ours, "extra": 1}).encode(),  # our shape plus something
        json.dumps({**ours, "v": version + "x"}).encode(),  # another signature version
        json.dumps({**ours, "d": "0" * 64}).encode(),  # another digest
        json.dumps(ours).encode()[:-5],  # truncated
    ]


def test_a_foreign_value_planted_in_redis_is_a_miss_never_clean(
        tmp_path: Path, samples: Samples) -> None:
    digest = hashlib.sha256(EICAR).hexdigest()
    with running_redis(tmp_path / "redis") as redis, \
            running_appliance(samples.sigdir) as upstream, \
            running_cache([upstream.url], redis.url) as cache:
        version = sig_version(cache)
        key = verdict_key(digest, version)
        plants = _planted(digest, version)
        for i, value in enumerate(plants):
            redis.client().set(key, value)
            with guest(tmp_path, f"g{i}", cache.url, {"eicar.com": EICAR}) as g:
                assert read(g, "eicar.com").errno == errno.EACCES, value
            # the scanning proxy replaced the foreign value with its own
            assert json.loads(redis.client().get(key) or b"{}")["o"] == "infected"
        stats = cache.stats()
        assert stats["cache"]["corrupt"] == len(plants), stats
        assert stats["upstream_scans"] == len(plants), stats


def test_a_well_formed_value_forged_in_redis_is_a_miss_with_a_key(
        tmp_path: Path, samples: Samples) -> None:
    """Whoever can write to Redis (a guest on its network, another tenant) can write a
    value in exactly our format saying "clean" for an infected content. With a key file
    shared by the caching appliances, values carry an HMAC, and a forged one is a miss."""
    digest = hashlib.sha256(EICAR).hexdigest()
    key_file = tmp_path / "cache.key"
    key_file.write_bytes(b"0123456789abcdef0123456789abcdef")
    key_file.chmod(0o600)
    with running_redis(tmp_path / "redis") as redis, \
            running_appliance(samples.sigdir) as upstream, \
            running_cache([upstream.url], redis.url, "--key-file", str(key_file)) as cache:
        version = sig_version(cache)
        key = verdict_key(digest, version)
        forged = {"f": FORMAT, "d": digest, "v": version, "o": "clean", "s": "", "a": "x",
                  "t": 0}
        redis.client().set(key, json.dumps(forged, separators=(",", ":"),
                                           sort_keys=True).encode())
        with guest(tmp_path, "g1", cache.url, {"eicar.com": EICAR}) as g:
            assert read(g, "eicar.com").errno == errno.EACCES
        assert cache.stats()["upstream_scans"] == 1
        # what the appliance stored itself is authenticated, and answers the next guest
        stored = json.loads(redis.client().get(key) or b"{}")
        assert stored["o"] == "infected" and stored.get("m"), stored
        upstream.set_fault("refuse")
        with guest(tmp_path, "g2", cache.url, {"eicar.com": EICAR}) as g:
            assert read(g, "eicar.com").errno == errno.EACCES
        assert cache.stats()["served_from_cache"] == 1


@pytest.mark.parametrize("how", ["kill", "stop"])
def test_redis_dying_mid_storm_loses_no_verdict_and_hangs_no_open(
        tmp_path: Path, samples: Samples, clamd_server: Clamd, how: str) -> None:
    files = {f"f{i:03}.bin": hashlib.sha256(b"%d" % i).digest() * 2048 for i in range(60)}
    files["eicar.com"] = EICAR
    with running_redis(tmp_path / "redis") as redis, \
            running_cache([clamd_server.unix_url], redis.url) as cache, \
            guest(tmp_path, "g1", cache.url, files) as g1, \
            ThreadPoolExecutor(12) as pool:
        futures = {rel: pool.submit(read, g1, rel) for rel in files}
        wait_for("the storm to start", lambda: cache.stats()["requests"] >= 5)
        redis.kill(signal.SIGKILL if how == "kill" else signal.SIGSTOP)
        t0 = time.monotonic()
        results = {rel: f.result(timeout=HANG * 3) for rel, f in futures.items()}
        elapsed = time.monotonic() - t0
        for rel, opened in results.items():
            if rel == "eicar.com":
                assert opened.errno == errno.EACCES
            else:
                assert opened.data == files[rel], (rel, opened.errno)
        assert elapsed < HANG * 3
        stats = cache.stats()
        assert stats["cache"]["redis_errors"] >= 1, stats
        assert stats["uncached"] >= 1, stats  # the metric says it scanned without the cache
        assert stats["cache"]["up"] is False or how == "stop", stats
        if how == "kill":
            # A fresh (empty) Redis: the proxy uses it again after its breaker cooldown.
            restart_redis(redis, tmp_path / "redis")
            with guest(tmp_path, "g2", cache.url, {}) as g2:
                tries = iter(range(1000))

                def late_file_is_stored() -> bool:
                    # A new content each time: the guest's own verdict cache would answer
                    # a second open of the same file, and the appliance's Redis breaker
                    # may still be cooling down at the first one.
                    rel = f"late{next(tries)}.txt"
                    data = f"late content {rel}\n".encode()
                    (g2.source / rel).write_bytes(data)
                    return read(g2, rel).data == data and \
                        cache.stats()["cache"]["stores"] > stats["cache"]["stores"]

                wait_for("the cache to be used again", late_file_is_stored)
        else:
            redis.kill(signal.SIGCONT)


def test_concurrent_misses_across_proxies_share_one_upstream_scan(
        tmp_path: Path, samples: Samples) -> None:
    files = {f"f{i:02}.bin": hashlib.sha256(b"shared %d" % i).digest() * 1024 for i in range(20)}
    # Whether a proxy finds the other's lock (and waits) or its stored verdict
    # (a hit) depends on timing; either way each content is scanned once.
    with running_redis(tmp_path / "redis") as redis, \
            running_appliance(samples.sigdir) as upstream, \
            running_cache([upstream.url], redis.url) as c1, \
            running_cache([upstream.url], redis.url) as c2, \
            guest(tmp_path, "g1", c1.url, files) as g1, \
            guest(tmp_path, "g2", c2.url, files) as g2, \
            ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(read, g, rel) for rel in files for g in (g1, g2)]
        for f in futures:
            assert f.result(timeout=HANG * 3).data is not None
        s1, s2 = c1.stats(), c2.stats()
        assert s1["upstream_scans"] + s2["upstream_scans"] == len(files), (s1, s2)
        assert s1["requests"] == s2["requests"] == len(files)


def test_instream_over_tcp_and_fildes_over_unix_share_entries(
        tmp_path: Path, clamd_server: Clamd) -> None:
    files = {"clean.txt": CLEAN, "eicar.com": EICAR, "big.bin": b"\x01\x02" * 700_000}
    port = free_port()
    with running_redis(tmp_path / "redis") as redis, \
            running_cache([clamd_server.tcp_url], redis.url,
                          listen_tcp=f"tcp://127.0.0.1:{port}") as cache:
        # over TCP the guest streams the bytes (INSTREAM, in chunks)
        with guest(tmp_path, "tcp", f"clamd://127.0.0.1:{port}", files) as g1:
            assert read(g1, "clean.txt").data == CLEAN
            assert read(g1, "big.bin").data == files["big.bin"]
            assert read(g1, "eicar.com").errno == errno.EACCES
        assert cache.stats()["upstream_scans"] == 3
        # over the unix socket it passes its descriptor (FILDES): same digests, all hits
        with guest(tmp_path, "unix", cache.url, files) as g2:
            assert read(g2, "clean.txt").data == CLEAN
            assert read(g2, "big.bin").data == files["big.bin"]
            assert read(g2, "eicar.com").errno == errno.EACCES
        stats = cache.stats()
        assert stats["upstream_scans"] == 3, stats
        assert stats["served_from_cache"] == 3, stats


def test_grace_answers_previous_clean_at_once_and_the_rescan_covers_it(
        tmp_path: Path, samples: Samples) -> None:
    sigdir = tmp_path / "sigs"
    sigdir.mkdir()
    (sigdir / "other.hdb").write_text(f"{'0' * 32}:1:Vfile.Test.Nothing\n")
    generated = samples.generated.read_bytes()
    files = {"clean.txt": CLEAN, "generated.bin": generated, "eicar.com": EICAR}
    with running_redis(tmp_path / "redis") as redis, \
            running_appliance(sigdir) as upstream, \
            running_cache([upstream.url], redis.url, "--grace", "20", "--rescan-rate", "50",
                          "--attempt-timeout", "1") as cache, \
            guest(tmp_path, "g1", cache.url, files) as g1, \
            guest(tmp_path, "g2", cache.url, files) as g2:
        assert read(g1, "clean.txt").data == CLEAN
        assert read(g1, "generated.bin").data == generated  # clean under version 1
        assert read(g1, "eicar.com").errno == errno.EACCES
        old = sig_version(cache)
        shutil.copy(samples.sigdir / "vfile-test.hdb", sigdir / "vfile-test.hdb")
        upstream.reload()
        wait_for("the cache to see the new version", lambda: sig_version(cache) != old)
        new = sig_version(cache)
        # No upstream answers from now on: whatever a guest gets comes from the cache.
        upstream.set_fault("blackhole")
        assert read(g2, "clean.txt").data == CLEAN  # at once, from version 1's clean
        # The bounded trade-off of a grace: a content newly infected under version 2
        # is still answered from its version-1 clean while the grace lasts...
        assert read(g2, "generated.bin").data == generated
        # ...but an infected verdict never carries over (no upstream: denied, closed mode).
        assert read(g2, "eicar.com").errno == errno.EACCES
        stats = cache.stats()
        assert stats["carried_over"] == 2, stats
        assert stats["grace"]["active"] and stats["grace"]["carried_pending"] == 2, stats
        # The rescan catches up once the upstream answers, and covers every carried digest.
        upstream.set_fault("none")
        wait_for("the rescan to cover the carried-over digests",
                 lambda: cache.stats()["grace"]["carried_pending"] == 0, deadline=60)
        digest = hashlib.sha256(generated).hexdigest()
        assert json.loads(redis.client().get(verdict_key(digest, new)) or b"{}")["o"] \
            == "infected"
        # After the grace, guests' locally kept verdicts (keyed on "version+grace") end.
        wait_for("the grace to end", lambda: not cache.stats()["grace"]["active"], deadline=60)
        wait_for("guest 2 to deny the newly infected file",
                 lambda: read(g2, "generated.bin").errno == errno.EACCES)
        assert read(g2, "clean.txt").data == CLEAN


def test_a_lock_left_by_a_dead_proxy_delays_an_open_by_at_most_the_lock_ttl(
        tmp_path: Path, samples: Samples) -> None:
    digest = hashlib.sha256(CLEAN).hexdigest()
    with running_redis(tmp_path / "redis") as redis, \
            running_appliance(samples.sigdir) as upstream, \
            running_cache([upstream.url], redis.url, "--lock-ttl", "1") as cache:
        # As if another proxy took the scan lock for this content and died: its lock
        # outlives our own lock TTL by far.
        redis.client().set(lock_key(digest, sig_version(cache)), b"dead-proxy", px=600_000)
        with guest(tmp_path, "g1", cache.url, {"clean.txt": CLEAN}) as g1:
            opened = read(g1, "clean.txt")
            assert opened.data == CLEAN
            assert opened.elapsed < GUEST_DEADLINE  # waited ~1 s for the peer, then scanned
        stats = cache.stats()
        assert stats["upstream_scans"] == 1 and stats["shared_remote"] == 0, stats
        assert json.loads(redis.client().get(verdict_key(digest, sig_version(cache))) or b"{}")[
            "o"] == "clean"
