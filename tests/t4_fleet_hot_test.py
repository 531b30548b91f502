"""The caching appliance's background rescan of the fleet's most-opened contents
(scanner.cache_hot), against a real redis-server and the built-in appliance as upstream.

Scan requests go straight to the caching appliance's clamd socket (INSTREAM):
what is measured is what the appliance and Redis do, not a guest's cache.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from fleet_servers import instream, running_cache, running_redis
from mounting import wait_for
from outage import running_appliance

from vfile.scanner.cache import HOT_KEY, verdict_key


def test_after_an_update_the_most_opened_contents_are_rescanned_in_the_background(
        tmp_path: Path) -> None:
    sigdir = tmp_path / "sigs"
    sigdir.mkdir()
    (sigdir / "a.hdb").write_text(f"{'0' * 32}:1:Vfile.Test.Nothing\n")
    contents = {name: f"content {name}\n".encode() * 300 for name in "abcd"}
    opens = {"a": 5, "b": 4, "c": 1, "d": 1}
    digests = {n: hashlib.sha256(d).hexdigest() for n, d in contents.items()}
    hot_dir = tmp_path / "hot"
    with running_redis(tmp_path / "redis") as redis, \
            running_appliance(sigdir) as upstream, \
            running_cache([upstream.url], redis.url, "--hot-dir", str(hot_dir),
                          "--hot-top", "2", "--hot-interval", "0.2",
                          "--rescan-rate", "50") as cache:
        for name, n in opens.items():
            for _ in range(n):
                assert instream(cache, contents[name]) == b"stream: OK"
        assert cache.stats()["upstream_scans"] == 4
        client = redis.client()
        # Opens are counted per digest in Redis (every request, hit or miss).
        wait_for("the open counts in Redis", lambda: all(
            client.zscore(HOT_KEY, digests[n]) == opens[n] for n in opens))
        # The top two are hot: their next request keeps a copy (named by SHA-256).
        for name in "ab":
            assert instream(cache, contents[name]) == b"stream: OK"
        wait_for("copies of the top two", lambda: cache.stats()["hot"]["kept"] == 2)
        assert sorted(p.name for p in hot_dir.iterdir()) == sorted(digests[n] for n in "ab")
        old = cache.stats()["sig_version"]

        (sigdir / "b.hdb").write_text(f"{'1' * 32}:1:Vfile.Test.Other\n")
        upstream.reload()
        wait_for("the background rescan after the update",
                 lambda: cache.stats()["hot"]["passes"] == 1, 60)
        stats = cache.stats()
        new = stats["sig_version"]
        assert new != old
        assert stats["hot"]["last_pass"] == {"version": new, "rescanned": 2, "bad_copies": 0,
                                             "errors": 0}, stats
        assert stats["upstream_scans"] == 6, stats
        # The new version's verdicts are stored for the top two, not for the rest.
        for name in "ab":
            raw = client.get(verdict_key(digests[name], new))
            assert raw is not None and json.loads(raw)["o"] == "clean", name
        for name in "cd":
            assert client.get(verdict_key(digests[name], new)) is None
        # So the storm after the update hits for the most-opened contents.
        for name in "ab":
            assert instream(cache, contents[name]) == b"stream: OK"
        assert cache.stats()["upstream_scans"] == 6
        assert instream(cache, contents["c"]) == b"stream: OK"
        assert cache.stats()["upstream_scans"] == 7


def test_a_tampered_copy_is_deleted_never_rescanned_under_its_name(tmp_path: Path) -> None:
    sigdir = tmp_path / "sigs"
    sigdir.mkdir()
    (sigdir / "a.hdb").write_text(f"{'0' * 32}:1:Vfile.Test.Nothing\n")
    data = b"hot content\n" * 100
    digest = hashlib.sha256(data).hexdigest()
    hot_dir = tmp_path / "hot"
    with running_redis(tmp_path / "redis") as redis, \
            running_appliance(sigdir) as upstream, \
            running_cache([upstream.url], redis.url, "--hot-dir", str(hot_dir),
                          "--hot-top", "1", "--hot-interval", "0.2") as cache:
        assert instream(cache, data) == b"stream: OK"
        wait_for("the digest to be hot", lambda: cache.stats()["hot"]["top"] == 1)
        assert instream(cache, data) == b"stream: OK"
        wait_for("its copy", lambda: (hot_dir / digest).exists()
                 and cache.stats()["hot"]["kept"] == 1)
        (hot_dir / digest).write_bytes(b"other bytes under that name\n")
        (sigdir / "b.hdb").write_text(f"{'1' * 32}:1:Vfile.Test.Other\n")
        upstream.reload()
        wait_for("the pass", lambda: cache.stats()["hot"]["passes"] == 1, 60)
        stats = cache.stats()
        assert stats["hot"]["last_pass"]["bad_copies"] == 1, stats
        assert not (hot_dir / digest).exists()
        assert redis.client().get(verdict_key(digest, stats["sig_version"])) is None
