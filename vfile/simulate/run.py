"""Running the migration scenario: one mode at a time, the same timeline each.

`run_migration(params, report_dir)` generates the guest once, starts the
appliance (or the fault proxy), and for each mode: copies the guest into a
fresh source, mounts it with the mode's configuration, runs the workload and
the timeline (see vfile.simulate.scenario), samples the mount's status and
journal four times a second, waits for the drain, audits what was never
scanned, and unmounts. The results (`ModeResult`) go to vfile.simulate.report.

Nothing outlives a run: every mount, server and appliance is taken down in
`finally`, and the temporary area is removed (the report stays).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vfile import control
from vfile.journal import Journal, JournalError
from vfile.journal.records import Identity
from vfile.simulate import guest as guest_mod
from vfile.simulate.harness import ApplianceProcess, MountProcess, interrupt_as_exception
from vfile.simulate.scenario import Params, describe_mode, mode_config
from vfile.simulate.workload import Op, Recorder, Workload, rewrite_file, run_command

log = logging.getLogger(__name__)

#: entries a `journal.list` reply holds at most (vfile.commands.MAX_LIST)
MAX_LIST = 10_000

SAMPLE_INTERVAL = 0.25
#: the gate's log line for an infected file found by the drain (vfile/filter/gate.py `resolve`)
_DRAIN_CAUGHT = re.compile(r"drain: '(.+?)' found infected")
Progress = Callable[[str], None]


@dataclass
class Sample:
    t: float
    depth: int
    #: entries deferred before the appliance came back (None before it did)
    old_depth: int | None
    healthy: bool
    breaker: str
    window: bool


@dataclass
class ModeResult:
    mode: str
    description: str
    ops: list[Op]
    samples: list[Sample]
    #: what happened at each timeline point (seconds from the workload start)
    events: dict[str, float]
    quiesce: dict[str, Any]
    #: path -> exposures vfile journaled for it (who opened it unscanned)
    exposures: dict[str, list[dict[str, Any]]]
    quarantine: list[dict[str, Any]]
    remaining: list[str]
    unscanned: list[str]
    exposed: list[str]
    coverage_s: float | None
    gate: dict[str, Any]
    drain: dict[str, Any]
    infected: dict[str, str]
    log_tail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class _Sampler:
    """Polls `status` and `journal.list` on the live mount from a thread."""

    def __init__(self, mount: MountProcess, rec: Recorder) -> None:
        self.mount = mount
        self.rec = rec
        self.samples: list[Sample] = []
        self.exposures: dict[str, dict[tuple[int, int, float], dict[str, Any]]] = {}
        self.return_wall: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sim-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def sample(self) -> Sample | None:
        t = self.rec.now()
        try:
            status = self.mount.call("status", timeout=5)
            entries = self.mount.call("journal.list", {"limit": MAX_LIST}, timeout=5)["entries"]
        except control.ControlError as err:
            log.debug("sample failed: %s", err)
            return None
        for e in entries:
            trail = self.exposures.setdefault(e["path"], {})
            for x in e["exposures"]:
                trail[(x["uid"], x["pid"], x["time"])] = x
        ret = self.return_wall
        old = None if ret is None else sum(1 for e in entries if e["first_deferred"] < ret)
        apps = status["appliances"]
        s = Sample(t, len(entries), old, all(a["healthy"] for a in apps) and
                   all(a["state"] == "closed" for a in apps),
                   ",".join(str(a["state"]) for a in apps), bool(status["window"]["active"]))
        self.samples.append(s)
        return s

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(SAMPLE_INTERVAL)


@dataclass
class _Timeline:
    """One mode's run: the actors of the timeline share these."""

    rec: Recorder
    mount: MountProcess
    appliance: ApplianceProcess
    sampler: _Sampler
    guest: guest_mod.Guest
    params: Params
    mode: str
    stop: threading.Event = field(default_factory=threading.Event)
    events: dict[str, float] = field(default_factory=dict)
    quiesce: dict[str, Any] = field(default_factory=dict)

    def at(self, t: float) -> bool:
        """Sleep until `t` seconds into the run; False if stopped first."""
        delay = t - self.rec.now()
        return not (delay > 0 and self.stop.wait(delay))

    def mark(self, event: str) -> None:
        self.events[event] = self.rec.now()

    def user_steps(self) -> None:
        """The user: opens EICAR before the outage, attachments and plants during it."""
        g, mnt, rec = self.guest, self.mount.mountpoint, self.rec
        if not self.at(self.params.pre_touch):
            return
        self.mark("eicar_opened")
        run_command(rec, "user", ["cat", str(mnt / g.eicar)], g.eicar)
        if not self.at(self.params.outage_touch):
            return
        self.mark("outage_touch")
        for name in g.planted:
            rel = f"planted/{name}"
            run_command(rec, "user", ["cp", str(g.plant_dir / name), str(mnt / rel)], rel,
                        write=True)
        for rel in [*g.attachments, *(f"planted/{n}" for n in g.planted)]:
            run_command(rec, "user", ["cat", str(mnt / rel)], rel)

    def migration(self) -> None:
        """The hypervisor's freeze, flush and sync at the window's start; thaw at its end."""
        params, q = self.params, self.quiesce
        if not self.at(params.window.start):
            return
        self.mark("quiesce_start")
        start = self.rec.now()
        if self.mode != "legacy":
            hook_start = time.perf_counter()
            result = self.mount.call("quiesce", {"max": params.window.duration + 60})
            q["hook_s"] = time.perf_counter() - hook_start
            q["server_took_s"] = result["took_s"]
        else:
            q["hook_s"] = 0.0  # a legacy filter has no window to open
        flush_start = time.perf_counter()
        q["flush_ok"] = sum(rewrite_file(self.rec, "flush", self.mount.mountpoint, rel,
                                         os.urandom(4096), fsync=True)
                            for rel in self.guest.state)
        q["flush_total"] = len(self.guest.state)
        q["flush_s"] = time.perf_counter() - flush_start
        sync_start = time.perf_counter()
        os.sync()
        q["sync_s"] = time.perf_counter() - sync_start
        self.mark("quiesced")
        q["total_s"] = self.rec.now() - start
        if not self.at(params.window.end):
            return
        self.mark("resume")
        if self.mode != "legacy":
            self.mount.call("resume")

    def outage(self) -> None:
        if not self.at(self.params.outage.start):
            return
        self.appliance.set_fault(self.params.fault)
        self.mark("outage_start")
        if not self.at(self.params.outage.end):
            return
        self.sampler.return_wall = time.time()
        self.appliance.set_fault("none")
        self.mark("outage_end")


def _wait_drained(mount: MountProcess, sampler: _Sampler, rec: Recorder,
                  timeout: float) -> float | None:
    """Wait until the journal is empty; the run time at which it first was, or None."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        s = sampler.sample()
        if s is not None and s.depth == 0:
            status = mount.call("status", timeout=5)
            if status["drain"]["in_flight"] == 0 and status["gate"]["pending_intents"] == 0:
                return s.t
        time.sleep(SAMPLE_INTERVAL)
    return None


def _audit(state_dir: Path, source: Path, *, exposed: set[str], remaining: set[str],
           quarantined: set[str], sig: str) -> list[str]:
    """Files opened or written unscanned during the outage that have no verdict now."""
    unscanned = []
    try:
        journal = Journal.open(state_dir, readonly=True)
    except JournalError as err:
        log.warning("cannot audit the journal in %s: %s", state_dir, err)
        return sorted(exposed - quarantined)
    try:
        for rel in sorted(exposed):
            if rel in quarantined:
                continue
            if rel in remaining:
                unscanned.append(rel)
                continue
            try:
                st = os.stat(source / rel)
            except FileNotFoundError:
                continue
            if journal.get_verdict(Identity.from_stat(st), sig) is None:
                unscanned.append(rel)
    finally:
        journal.close()
    return unscanned


def run_mode(mode: str, params: Params, g: guest_mod.Guest, appliance: ApplianceProcess, *,
             work: Path, progress: Progress) -> ModeResult:
    base = work / mode
    source, mnt, state_dir = base / "source", base / "mnt", base / "state"
    shutil.copytree(g.root, source)
    mnt.mkdir()
    cfg = base / "vfile.toml"
    cfg.write_text(mode_config(mode, params.scale, str(base / "quarantine")))
    appliance.set_fault("none")
    with MountProcess(source, mnt, config=cfg, appliance_url=appliance.url,
                      state_dir=state_dir, log_path=base / "server.log") as mount:
        rec = Recorder()
        sampler = _Sampler(mount, rec)
        tl = _Timeline(rec, mount, appliance, sampler, g, params, mode)
        workload = Workload(rec, mount.mountpoint, hot=g.hot, cold=g.cold, state=g.state,
                            readers=params.readers, duration=params.duration, seed=params.seed)
        steps = [threading.Thread(target=fn, name=f"sim-{fn.__name__}", daemon=True)
                 for fn in (tl.user_steps, tl.migration, tl.outage)]
        try:
            sampler.start()
            workload.start()
            for t in steps:
                t.start()
            tl.at(params.duration)
            tl.mark("workload_end")
        finally:
            tl.stop.set()
            workload.stop(timeout=60)
            for t in steps:
                t.join(60)
            appliance.set_fault("none")
        progress(f"  {mode}: workload done at {rec.now():.1f}s; waiting for the drain")
        drained_at = _wait_drained(mount, sampler, rec, params.drain_timeout)
        sampler.stop()
        tl.events["drained"] = drained_at if drained_at is not None else rec.now()
        status = mount.call("status")
        quarantine = mount.call("quarantine.list")
        listed = mount.call("journal.list", {"limit": MAX_LIST})
        if listed["more"]:
            log.warning("more than %d entries remain: the report counts the oldest", MAX_LIST)
        remaining = {e["path"] for e in listed["entries"]}
        sig = next((a["sig_version"] for a in status["appliances"] if a["sig_version"]), "")
    ops = rec.snapshot()
    events, quiesce = tl.events, tl.quiesce
    outage_start = events.get("outage_start", params.outage.start)
    outage_end = events.get("outage_end", params.outage.end)
    exposed = {op.path for op in ops if op.ok and op.kind == "open"
               and outage_start <= op.t < outage_end}
    quarantined = {q["original_path"].lstrip("/") for q in quarantine}
    unscanned = _audit(state_dir, source, exposed=exposed, remaining=remaining,
                       quarantined=quarantined, sig=sig)
    coverage = next((s.t - outage_end for s in sampler.samples
                     if s.t >= outage_end and s.old_depth == 0), None)
    log_text = (base / "server.log").read_text(errors="replace")
    return ModeResult(
        mode=mode, description=describe_mode(mode, params.scale), ops=ops,
        samples=sampler.samples, events=events, quiesce=quiesce,
        exposures={p: sorted(t.values(), key=lambda x: x["time"])
                   for p, t in sampler.exposures.items()},
        quarantine=[{**q, "t": q["time"] - (time.time() - rec.now())} for q in quarantine],
        remaining=sorted(remaining), unscanned=unscanned, exposed=sorted(exposed),
        coverage_s=coverage, gate=status["gate"], drain=status["drain"],
        infected=g.all_infected(), log_tail="\n".join(log_text.splitlines()[-20:]),
        extra={"wall_t0": time.time() - rec.now(),
               # when the pool's breakers opened from closed (wall clock), and how often
               "breaker_opened_walls": sorted(t for a in status["appliances"]
                                              for t in a.get("breaker_opened_times", [])),
               "breaker_opens": sum(a.get("breaker_opens", 0) for a in status["appliances"]),
               "drain_caught": sorted(set(_DRAIN_CAUGHT.findall(log_text)))})


def run_migration(params: Params, *, logs_to: Path | None = None,
                  progress: Progress = print) -> list[ModeResult]:
    """Run every mode of `params` in turn; returns their results (no report written).
    Each mode's mount server log is copied to `logs_to`, if given."""
    work = Path(tempfile.mkdtemp(prefix="vfile-sim-"))
    results: list[ModeResult] = []
    # SIGTERM unwinds like Ctrl-C, so the `finally` blocks below take every mount down.
    guard = interrupt_as_exception() if threading.current_thread() is threading.main_thread() \
        else contextlib.nullcontext()
    with guard:
        _run_all(params, work, results, logs_to=logs_to, progress=progress)
    return results


def _run_all(params: Params, work: Path, results: list[ModeResult], *, logs_to: Path | None,
             progress: Progress) -> None:
    try:
        g = guest_mod.generate(work, files=params.files, writers=params.writers,
                               seed=params.seed)
        progress(f"guest: {len(g.hot) + len(g.cold) + len(g.state) + len(g.infected)} files "
                 f"in {g.root} ({len(g.all_infected())} infected, "
                 f"{len(g.planted)} planted during the outage)")
        sigs = g.signatures if params.appliance == "builtin" else None
        with ApplianceProcess(work, params.appliance, sigs) as appliance:
            progress(f"appliance: {appliance.description} at {appliance.url}")
            for mode in params.modes:
                progress(f"mode {mode}: {describe_mode(mode, params.scale)}")
                results.append(run_mode(mode, params, g, appliance, work=work, progress=progress))
        if logs_to is not None:
            logs_to.mkdir(parents=True, exist_ok=True)
            for mode in params.modes:
                src = work / mode / "server.log"
                if src.exists():
                    shutil.copyfile(src, logs_to / f"{mode}-server.log")
    finally:
        shutil.rmtree(work, ignore_errors=True)
