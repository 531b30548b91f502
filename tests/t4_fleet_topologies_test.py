"""The caching appliance through Redis Sentinel and Redis Cluster URLs, against real
servers on loopback (tests/redis_topologies.py): a miss stores, the next request hits,
and losing a master or a shard costs uncached scans, never an error or a wrong answer.

Requests go straight to the caching appliance's clamd socket (INSTREAM); the upstream
is the built-in appliance in its own process.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from fleet_servers import instream, running_cache
from mounting import wait_for
from outage import running_appliance
from redis_topologies import client, running_cluster, running_sentinel

from vfile.scanner.cache import verdict_key


def _content(i: int) -> bytes:
    return f"fleet content {i}\n".encode() * 50


def test_sentinel_url_misses_stores_hits_and_follows_a_failover(tmp_path: Path) -> None:
    with running_sentinel(tmp_path / "redis") as sentinel, running_appliance() as upstream, \
            running_cache([upstream.url], sentinel.url) as cache:
        data = _content(1)
        assert instream(cache, data) == b"stream: OK"
        stats = cache.stats()
        assert stats["upstream_scans"] == 1 and stats["cache"]["misses"] == 1
        assert stats["cache"]["stores"] == 1, stats
        assert instream(cache, data) == b"stream: OK"
        stats = cache.stats()
        assert stats["upstream_scans"] == 1 and stats["served_from_cache"] == 1, stats
        version = stats["sig_version"]
        key = verdict_key(hashlib.sha256(data).hexdigest(), version)
        old = sentinel.master_port()
        assert json.loads(client(old).get(key) or b"{}")["o"] == "clean"
        replica = next(p for p in sentinel.ports if p != old)
        wait_for("the verdict on the replica", lambda: client(replica).get(key) is not None)

        sentinel.kill_master()
        new = sentinel.wait_failover(old)
        assert new == replica
        # While Redis is away scans go upstream uncached; once the client follows the
        # sentinel to the new master, the replicated verdict hits again.
        wait_for("a hit from the new master", lambda: instream(cache, data) == b"stream: OK"
                 and cache.stats()["served_from_cache"] >= 2, 60)
        other = _content(2)
        assert instream(cache, other) == b"stream: OK"
        wait_for("a store on the new master", lambda: client(new).get(
            verdict_key(hashlib.sha256(other).hexdigest(), version)) is not None)


def test_cluster_url_spreads_verdicts_over_shards_and_survives_a_dead_shard(
        tmp_path: Path) -> None:
    contents = [_content(i) for i in range(24)]
    # The cluster is not up yet when the caching appliance starts: it serves
    # uncached, then uses the cluster once it is there.
    with running_cluster(tmp_path / "redis", start=False) as cluster, \
            running_appliance() as upstream, \
            running_cache([upstream.url], cluster.url) as cache:
        assert instream(cache, contents[0]) == b"stream: OK"
        assert cache.stats()["uncached"] == 1
        cluster.start()
        wait_for("a store in the cluster", lambda: instream(cache, contents[0])
                 == b"stream: OK" and cache.stats()["cache"]["stores"] >= 1, 60)
        for data in contents[1:]:
            assert instream(cache, data) == b"stream: OK"
        stats = cache.stats()
        version = stats["sig_version"]
        assert stats["cache"]["stores"] == len(contents), stats
        keys = {i: verdict_key(hashlib.sha256(d).hexdigest(), version)
                for i, d in enumerate(contents)}
        shards = {i: cluster.node_of(k) for i, k in keys.items()}
        assert set(shards.values()) == set(cluster.ports)  # spread over all three
        for i, k in keys.items():
            assert json.loads(client(shards[i]).get(k) or b"{}")["o"] == "clean"
        upstream_before = stats["upstream_scans"]
        for data in contents:
            assert instream(cache, data) == b"stream: OK"
        stats = cache.stats()
        assert stats["upstream_scans"] == upstream_before, stats
        assert stats["served_from_cache"] == len(contents), stats

        # One shard dies: its contents go upstream uncached; the others still hit.
        dead = cluster.ports[1]
        cluster.kill(dead)
        before = cache.stats()
        for _ in range(2):
            for data in contents:
                assert instream(cache, data) == b"stream: OK"
        after = cache.stats()
        live = sum(1 for p in shards.values() if p != dead)
        assert after["served_from_cache"] - before["served_from_cache"] == 2 * live, after
        assert after["upstream_scans"] - before["upstream_scans"] == \
            2 * (len(contents) - live), after
