"""Hung-appliance detection through a real mount (issue 16): the adaptive pool.

The built-in appliance runs behind the fault proxy (both processes); the mount
uses a long configured attempt timeout (`ATTEMPT`, what the old pool waited out
on every open at the start of an outage) and probes too rare to help, so only
the scans themselves can tell the appliance is hung. Asserted on counters
(breaker state, attempts cut short, deferrals, errors) and on one generous
bound: no open waits out the configured attempt timeout (the model's timeout
for these files is a few tens of milliseconds).
"""

from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from mounting import mounted, vfile_cmd, wait_for
from outage import running_appliance, running_proxy, status, unaccounted
from servers import Samples

pytestmark = pytest.mark.mount

ATTEMPT = 5.0  # configured attempt timeout (cold start)
DEADLINE = 12.0  # the profile's deadline: generous
WARM = 40  # opens of distinct files that teach the model
PARALLEL = 6
#: a pause of the appliance (every reply held back this long): many times what a quick
#: scan teaches the deviation term, well within the configured attempt timeout
PAUSE = 0.4


def _config(path: Path, *, breaker_failures: int = 3, adaptive: bool = True) -> Path:
    path.write_text(
        "[pool]\n"
        f'attempt_timeout = "{ATTEMPT}s"\nretries = 1\nbreaker_failures = {breaker_failures}\n'
        'breaker_cooldown = "60s"\nprobe_interval = "60s"\n'
        f"adaptive = {'true' if adaptive else 'false'}\n"
        "\n[[profile]]\n"
        f'name = "default"\nfail_mode = "safe"\ndeadline = "{DEADLINE}s"\n'
        f'attempt_timeout = "{ATTEMPT}s"\nretries = 1\n')
    return path


def _files(src: Path, prefix: str, n: int) -> list[str]:
    names = [f"{prefix}{i}.txt" for i in range(n)]
    for name in names:
        (src / name).write_bytes(f"{name}: a small clean file\n".encode() * 40)
    # Older than a timestamp tick before they are scanned: a verdict on a file stamped
    # within the tick of its scan is not kept ("racy clean", vfile.filter.racy), and
    # the test counts kept verdicts.
    time.sleep(0.05)
    return names


def _open(path: Path) -> float:
    started = time.monotonic()
    with open(path, "rb") as f:
        f.read()
    return time.monotonic() - started


def _appliance(mnt: Path) -> dict[str, Any]:
    app: dict[str, Any] = status(mnt)["appliances"][0]
    return app


def _warm(mnt: Path, src: Path) -> dict[str, Any]:
    for name in _files(src, "warm", WARM):
        _open(mnt / name)
    ad: dict[str, Any] = _appliance(mnt)["adaptive"]
    assert ad["enabled"] and ad["estimate_4KiB_ms"] is not None, ad
    assert ad["timeout_4KiB_ms"] < ATTEMPT * 1000, ad
    return ad


def test_black_hole_opens_the_breaker_without_waiting_the_attempt_timeout(
        tmp_path: Path, samples: Samples) -> None:
    src, mnt, state = tmp_path / "src", tmp_path / "mnt", tmp_path / "state"
    src.mkdir()
    mnt.mkdir()
    cfg = _config(tmp_path / "vfile.toml")
    with running_appliance(samples.sigdir) as app, running_proxy(app.url) as proxy, \
            mounted(src, mnt, "--appliance", proxy.url, "--config", str(cfg),
                    "--state-dir", str(state)), ThreadPoolExecutor(PARALLEL) as pool:
        _warm(mnt, src)
        names = _files(src, "outage", PARALLEL * 2)
        proxy.set_fault("blackhole")
        took = list(pool.map(_open, [mnt / n for n in names]))
        a = _appliance(mnt)
        gate = status(mnt)["gate"]
        # The scans told: the breaker is open (probes run once a minute), and the
        # attempts waiting when the first timed out were cut short with it.
        assert a["state"] == "open", a
        assert a["adaptive"]["evicted"] >= 1, a
        # fail-safe: every open went on, journaled
        assert gate["deferrals"] == len(names), gate
        assert max(took) < ATTEMPT, took  # the old pool waited ATTEMPT (x retries) here
        assert unaccounted(src, state, a["sig_version"]) == []
        proxy.set_fault("none")
    print(f"black hole: slowest open {max(took) * 1000:.0f} ms; appliance {a}")


#: half-open trials (each a silent probe) the next test waits for during the black hole
TRIALS = 3


def test_no_open_is_a_half_open_trial_while_the_appliance_is_hung(
        tmp_path: Path, samples: Samples) -> None:
    """A breaker opened on a silent probe is half-open again after a few probe
    deadlines (a false opening costs one trial, not the cooldown), again and again
    while the appliance stays hung. Each trial is a liveness probe the pool sends
    itself: opens meanwhile never contact the appliance and go to their fail mode at
    once. (Before, the first open at each half-open was the trial: it scanned, and
    waited the whole detection time; in `bench/failmodes.py` those opens made the p99.)
    Once the appliance answers again, a probe says so and the next open is scanned."""
    src, mnt, state = tmp_path / "src", tmp_path / "mnt", tmp_path / "state"
    src.mkdir()
    mnt.mkdir()
    cfg = _config(tmp_path / "vfile.toml")
    with running_appliance(samples.sigdir) as app, running_proxy(app.url) as proxy, \
            mounted(src, mnt, "--appliance", proxy.url, "--config", str(cfg),
                    "--state-dir", str(state)):
        _warm(mnt, src)
        proxy.set_fault("blackhole")
        _open(mnt / _files(src, "first", 1)[0])
        a = _appliance(mnt)
        assert a["breaker_opens"] == 1, (a["last_error"], a["adaptive"])
        scans, silent = a["scans"], a["adaptive"]["probes_unanswered"]
        took = []
        n = 0
        end = time.monotonic() + 60  # "does not hang"; trials come every few hundred ms
        while _appliance(mnt)["adaptive"]["probes_unanswered"] < silent + TRIALS:
            assert time.monotonic() < end, _appliance(mnt)
            took.append(_open(mnt / _files(src, f"during{n}-", 1)[0]))
            n += 1
        a = _appliance(mnt)
        assert a["scans"] == scans, "an open was a half-open trial: it scanned the hung appliance"
        assert status(mnt)["gate"]["deferrals"] >= n + 1
        assert max(took) < ATTEMPT, took
        proxy.set_fault("none")
        last = _files(src, "back", 1)[0]

        def scanned_again() -> bool:
            _open(mnt / last)
            return bool(_appliance(mnt)["state"] == "closed")

        wait_for("a scan after the appliance answers again", scanned_again, 60)
        assert unaccounted(src, state, _appliance(mnt)["sig_version"]) == []


def test_slow_but_alive_appliance_opens_no_breaker(tmp_path: Path,
                                                   samples: Samples) -> None:
    """Replies 3x the model's estimate late (the proxy's delay fault) on a few opens at
    once: every open is scanned, no attempt times out, the breaker stays closed, even
    with `breaker_failures = 1`."""
    src, mnt, state = tmp_path / "src", tmp_path / "mnt", tmp_path / "state"
    src.mkdir()
    mnt.mkdir()
    cfg = _config(tmp_path / "vfile.toml", breaker_failures=1)
    with running_appliance(samples.sigdir) as app, \
            running_proxy(app.url, fault="delay=20ms") as proxy, \
            mounted(src, mnt, "--appliance", proxy.url, "--config", str(cfg),
                    "--state-dir", str(state)), ThreadPoolExecutor(PARALLEL) as pool:
        ad = _warm(mnt, src)
        est = ad["estimate_4KiB_ms"]
        shown = subprocess.run(vfile_cmd("status", str(mnt)), capture_output=True, text=True,
                               timeout=60, check=True).stdout
        assert "adaptive    estimate 4KiB" in shown, shown
        proxy.set_fault(f"delay={3 * est:.0f}ms")
        names = _files(src, "slow", PARALLEL * 2)
        list(pool.map(_open, [mnt / n for n in names]))
        a = _appliance(mnt)
        gate = status(mnt)["gate"]
        assert a["state"] == "closed" and a["errors"] == 0, a
        assert a["adaptive"]["evicted"] == 0, a
        assert gate["deferrals"] == 0, gate  # every open got its verdict
        # and a black hole after it is still found by the scans
        proxy.set_fault("blackhole")
        _open(mnt / _files(src, "after", 1)[0])
        assert _appliance(mnt)["state"] == "open"
        proxy.set_fault("none")


def test_pauses_the_appliance_has_shown_open_no_breaker(tmp_path: Path,
                                                       samples: Samples) -> None:
    """A healthy appliance that pauses now and then (a GC, a loaded host: every reply
    held back `PAUSE`, far beyond what its quick scans teach the deviation term) is
    not taken for hung once it has shown such a pause: opens in flight during the next
    pause wait it out and get their verdicts, the breaker stays closed. (Before, the
    timeout followed the last few scans only: after some quick ones it was back at a
    few tens of ms, the first paused reply timed out, the other opens, late too, were
    counted with it, and the breaker opened on a healthy appliance.)"""
    src, mnt, state = tmp_path / "src", tmp_path / "mnt", tmp_path / "state"
    src.mkdir()
    mnt.mkdir()
    cfg = _config(tmp_path / "vfile.toml")
    with running_appliance(samples.sigdir) as app, running_proxy(app.url) as proxy, \
            mounted(src, mnt, "--appliance", proxy.url, "--config", str(cfg),
                    "--state-dir", str(state)), ThreadPoolExecutor(PARALLEL) as pool:
        for name in _files(src, "first", 2):  # cold start: the configured timeout
            _open(mnt / name)
        proxy.set_fault(f"delay={PAUSE * 1000:.0f}ms")  # the first pause, on one scan
        _open(mnt / _files(src, "pause1-", 1)[0])
        proxy.set_fault("none")
        ad = _warm(mnt, src)  # quick scans since: the deviation term has forgotten it
        assert ad["timeout_4KiB_ms"] < ATTEMPT * 1000, ad
        proxy.set_fault(f"delay={PAUSE * 1000:.0f}ms")  # the same pause again
        names = _files(src, "pause2-", PARALLEL * 2)
        list(pool.map(_open, [mnt / n for n in names]))
        proxy.set_fault("none")
        a = _appliance(mnt)
        gate = status(mnt)["gate"]
        assert a["state"] == "closed" and a["errors"] == 0, a
        assert a["breaker_opens"] == 0, a
        assert gate["deferrals"] == 0, gate  # every open got its verdict
        # ... and, once quick scans taught the model again, a black hole is still found
        # by the scans, without waiting out the configured attempt timeout
        for name in _files(src, "again", WARM):
            _open(mnt / name)
        proxy.set_fault("blackhole")
        took = list(pool.map(_open, [mnt / n for n in _files(src, "after", PARALLEL)]))
        assert _appliance(mnt)["state"] == "open"
        assert max(took) < ATTEMPT, took
        proxy.set_fault("none")


def test_adaptive_off_waits_the_configured_timeout(tmp_path: Path,
                                                   samples: Samples) -> None:
    """`adaptive = false` is the old pool: the status says so, nothing is cut short."""
    src, mnt, state = tmp_path / "src", tmp_path / "mnt", tmp_path / "state"
    src.mkdir()
    mnt.mkdir()
    cfg = _config(tmp_path / "vfile.toml", adaptive=False)
    with running_appliance(samples.sigdir) as app, \
            mounted(src, mnt, "--appliance", app.url, "--config", str(cfg),
                    "--state-dir", str(state)):
        for name in _files(src, "warm", 10):
            _open(mnt / name)
        ad = _appliance(mnt)["adaptive"]
        assert ad["enabled"] is False and ad["timeout_4KiB_ms"] == ATTEMPT * 1000, ad
        assert ad["evicted"] == 0 and ad["hedges"] == 0


def test_slow_appliance_is_hedged_to_the_next(tmp_path: Path,
                                              samples: Samples) -> None:
    """Two appliances; the first turns slow (replies 2 s late): opens get their verdicts
    from the second, hedged there once the first is late; the losers are cancelled, not
    failures, so the first's breaker stays closed; nothing goes to the fail mode."""
    src, mnt, state = tmp_path / "src", tmp_path / "mnt", tmp_path / "state"
    src.mkdir()
    mnt.mkdir()
    cfg = _config(tmp_path / "vfile.toml")
    # The floor keeps the first appliance's own attempt timeout (1 s) far beyond the
    # hedge point (its quantile, milliseconds), however loaded the host.
    cfg.write_text(cfg.read_text().replace(
        "adaptive = true\n", 'adaptive = true\nhedge_budget = 1.0\nadaptive_floor = "1s"\n'))
    with running_appliance(samples.sigdir) as first, running_proxy(first.url) as proxy, \
            running_appliance(samples.sigdir) as second, \
            mounted(src, mnt, "--appliance", proxy.url, "--appliance", second.url,
                    "--config", str(cfg), "--state-dir", str(state)):
        _warm(mnt, src)
        before = status(mnt)["appliances"][1]["adaptive"]["hedges"]
        proxy.set_fault("delay=2s")
        # one at a time: the hedge budget's burst (a few hedges at once) stays out of it
        for name in _files(src, "hedged", PARALLEL):
            _open(mnt / name)
        slow, fast = status(mnt)["appliances"]
        gate = status(mnt)["gate"]
        assert fast["adaptive"]["hedges"] >= before + PARALLEL, fast
        assert fast["adaptive"]["hedge_wins"] >= 1, fast
        assert gate["deferrals"] == 0 and gate["denials"] == 0, gate
        assert slow["state"] == "closed" and slow["errors"] == 0, (slow["last_error"], slow)
        proxy.set_fault("none")


#: scans held back this long while PING answers at once (a caching appliance in a Redis
#: stall, clamd busy with an archive): many times the model's timeout for these files
SLOW_SCAN = 1.0


def test_overdue_scans_on_an_appliance_that_answers_its_probe_open_no_breaker(
        tmp_path: Path, samples: Samples) -> None:
    """Scans far later than the model's timeout on an appliance that still answers a
    liveness probe (PING on a fresh connection) are slow, not hung: they wait (within
    the configured attempt timeout) and get their verdicts, the breaker stays closed
    even with `breaker_failures = 1`. (Before, the first one timed out at the model's
    timeout, a few tens of ms, and the breaker opened on a healthy appliance.) Then,
    once quick scans taught the model again, a black hole (PING unanswered too) opens
    it on the probe's evidence, without waiting out the configured attempt timeout."""
    src, mnt, state = tmp_path / "src", tmp_path / "mnt", tmp_path / "state"
    src.mkdir()
    mnt.mkdir()
    cfg = _config(tmp_path / "vfile.toml", breaker_failures=1)
    with running_appliance(samples.sigdir) as app, \
            mounted(src, mnt, "--appliance", app.url, "--config", str(cfg),
                    "--state-dir", str(state)), ThreadPoolExecutor(PARALLEL) as pool:
        ad = _warm(mnt, src)
        # the premise: without the probe these scans would time out
        assert ad["timeout_4KiB_ms"] < SLOW_SCAN * 1000 / 2, ad
        app.set_fault(f"slowscan={SLOW_SCAN * 1000:.0f}ms")
        names = _files(src, "slow", PARALLEL * 2)
        list(pool.map(_open, [mnt / n for n in names]))
        a = _appliance(mnt)
        gate = status(mnt)["gate"]
        assert a["state"] == "closed" and a["errors"] == 0, (a["last_error"], a["adaptive"])
        assert gate["deferrals"] == 0, gate  # every open got its verdict
        assert a["adaptive"]["probes"] >= 1 and a["adaptive"]["extended"] >= 1, a
        app.set_fault("none")
        for name in _files(src, "again", WARM):  # quick scans again: the model relearns
            _open(mnt / name)
        app.set_fault("blackhole")
        took = list(pool.map(_open, [mnt / n for n in _files(src, "after", PARALLEL)]))
        a = _appliance(mnt)
        assert a["state"] == "open", (a["last_error"], a["adaptive"])
        assert a["adaptive"]["probes_unanswered"] >= 1, (a["last_error"], a["adaptive"])
        assert max(took) < ATTEMPT, took
        assert unaccounted(src, state, a["sig_version"]) == []
        app.set_fault("none")
