"""The vfile demo: a migration with the scan appliance gone, end to end, in about a minute.

Run it with `make demo` (which sets everything up first). Part 1 walks through
one fail-safe mount with the real command line, exactly as an operator would:

    vfile appliance serve ...         the built-in appliance, with a fault switch
    vfile mount GUEST MNT ...         mount a copy of examples/sample-data
    cat MNT/hello.txt                 scanned on open: clean
    cat MNT/downloads/eicar.com       infected: EACCES, quarantined
    (appliance black-holed)           the outage begins
    vfile quiesce MNT                 the migration window: milliseconds, not minutes
    read, write through the mount     allowed at once, journaled with who opened what
    vfile journal list                the deferred scans
    vfile resume MNT; appliance back  the drain scans the backlog
    vfile quarantine list             the dropper written during the outage, caught after the fact
    vfile unmount MNT

Part 2 runs `vfile simulate migration` on a small scale: the same outage under
legacy (hypervisor-style fail-closed), closed, open and safe, side by side,
and writes a report (Markdown, JSON, one PNG timeline per mode) under
./reports/. Everything started here is stopped again, even if a step fails.
`--walkthrough-only` runs part 1 alone.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SAMPLE = HERE / "sample-data"
EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
CONFIG = """\
[pool]
attempt_timeout = "250ms"
breaker_cooldown = "1s"
probe_interval = "500ms"

[[profile]]
name = "default"
fail_mode = "safe"
deadline = "500ms"
infected_action = "quarantine"
"""


def step(text: str) -> None:
    print(f"\n== {text}")


def vfile(*args: str, check: bool = True) -> str:
    """Run a vfile command as a user would; print it and its output."""
    print(f"$ vfile {' '.join(args)}")
    res = subprocess.run([sys.executable, "-m", "vfile", *args], capture_output=True,
                         text=True, check=False)
    for line in (res.stdout + res.stderr).rstrip().splitlines():
        print(f"  {line}")
    if check and res.returncode != 0:
        raise SystemExit(f"demo: `vfile {args[0]}` failed with exit status {res.returncode}")
    return res.stdout


def timed_read(path: Path) -> str:
    """Open, read and close a file through the mount; say how long the open took."""
    start = time.perf_counter()
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as err:
        took = (time.perf_counter() - start) * 1000
        return f"{err.strerror} after {took:.0f} ms"
    took = (time.perf_counter() - start) * 1000
    size = len(os.read(fd, 1 << 20))
    os.close(fd)
    return f"open {took:.1f} ms, read {size} bytes"


def status(mnt: Path) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "vfile", "status", str(mnt), "--json"],
                         capture_output=True, text=True, check=True).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def wait_for(what: str, ok: Callable[[], bool], timeout: float = 20.0) -> float:
    """Poll `ok` until it holds; how long that took."""
    start = time.monotonic()
    while not ok():
        if time.monotonic() - start > timeout:
            raise SystemExit(f"demo: {what} did not happen within {timeout:g}s")
        time.sleep(0.1)
    return time.monotonic() - start


def is_mounted(path: Path) -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == str(path) for line in f)


def walkthrough(work: Path) -> None:
    guest, mnt, state = work / "guest", work / "mnt", work / "state"
    shutil.copytree(SAMPLE, guest)
    (guest / "downloads").mkdir()
    (guest / "downloads" / "eicar.com").write_bytes(EICAR)
    mnt.mkdir()
    (work / "vfile.toml").write_text(CONFIG)
    fault = work / "fault"
    fault.write_text("none\n")
    sock = work / "appliance.sock"

    step("1. start the built-in scan appliance (a clamd-protocol server) with a fault switch")
    appliance = subprocess.Popen(
        [sys.executable, "-m", "vfile", "appliance", "serve", "--listen", f"unix://{sock}",
         "--fault-file", str(fault)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True)
    try:
        assert appliance.stdout is not None
        print(f"  {appliance.stdout.readline().strip()}")

        def set_fault(mode: str) -> None:
            fault.write_text(mode + "\n")
            appliance.send_signal(signal.SIGUSR1)

        step("2. mount a copy of examples/sample-data through vfile (fail-safe profile)")
        vfile("mount", str(guest), str(mnt), "--appliance", f"clamd://{sock}", "--config",
              str(work / "vfile.toml"), "--state-dir", str(state), "--log-file",
              str(work / "server.log"))
        try:
            step("3. open files: scanned on open, clean ones pass, EICAR is denied")
            print(f"  hello.txt:          {timed_read(mnt / 'hello.txt')} (scanned: clean)")
            print(f"  hello.txt again:    {timed_read(mnt / 'hello.txt')} (cached verdict)")
            print(f"  downloads/eicar.com: {timed_read(mnt / 'downloads' / 'eicar.com')}")
            wait_for("the quarantine", lambda: not (guest / "downloads" / "eicar.com").exists())
            print("  downloads/eicar.com is gone from the source: moved to quarantine")

            step("4. the appliance goes down (black-holed: it accepts and never answers)")
            set_fault("blackhole")
            print(f"  docs/guide.txt:     {timed_read(mnt / 'docs' / 'guide.txt')} "
                  "(waited out the 0.5 s deadline once, then fail-safe)")
            waited = wait_for("the health probe", lambda: not status(mnt)["appliances"][0][
                "healthy"])
            print(f"  the mount knows the appliance is down ({waited:.1f}s later)")

            step("5. the migration's freeze hook: quiesce (no appliance contact until resume)")
            vfile("quiesce", str(mnt), "--max", "10m")
            print(f"  inventory.csv:      {timed_read(mnt / 'inventory.csv')} "
                  "(allowed at once, journaled)")
            print(f"  docs/notes.md:      {timed_read(mnt / 'docs' / 'notes.md')}")
            start = time.perf_counter()
            (mnt / "dropper.com").write_bytes(EICAR)
            print(f"  wrote dropper.com (EICAR) through the mount in "
                  f"{(time.perf_counter() - start) * 1000:.1f} ms")
            start = time.perf_counter()
            subprocess.run(["cat", str(mnt / "dropper.com")], stdout=subprocess.DEVNULL,
                           check=True)
            print(f"  cat dropper.com:    {(time.perf_counter() - start) * 1000:.1f} ms "
                  "(served unscanned: the journal records that `cat` opened it)")

            step("6. the deferred-scan journal: what could not be scanned, and who opened it")
            vfile("journal", "list", "--state-dir", str(state))

            step("7. the migration is done: resume, and the appliance comes back")
            vfile("resume", str(mnt))
            set_fault("none")
            took = wait_for("the drain", lambda: status(mnt)["journal"]["deferred"] == 0)
            print(f"  journal drained {took:.1f}s after the appliance returned")

            step("8. what the drain found: quarantined after the fact")
            vfile("quarantine", "list", "--state-dir", str(state))
            print(f"  dropper.com still in the source: {(guest / 'dropper.com').exists()}")
            for line in (work / "server.log").read_text().splitlines():
                if "after the fact" in line:
                    print(f"  log: {line.split(': ', 1)[1]}")
        finally:
            if is_mounted(mnt):
                step("9. unmount")
                vfile("unmount", str(mnt), check=False)
    finally:
        appliance.terminate()
        appliance.wait(10)


def main(argv: list[str]) -> int:
    work = Path(tempfile.mkdtemp(prefix="vfile-demo-"))
    try:
        print("Part 1: one fail-safe mount through an appliance outage and a migration window")
        walkthrough(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if "--walkthrough-only" in argv:  # the tests run part 2 on their own
        return 0

    report = Path("reports") / f"demo-{datetime.now():%Y%m%d-%H%M%S}"
    print("\nPart 2: the same outage under every fail mode, side by side "
          "(legacy = hypervisor-style fail-closed)")
    print("  (about 30 s: four mounts in turn; timeouts scaled x0.25)\n")
    res = subprocess.run([sys.executable, "-m", "vfile", "simulate", "migration", "--quick",
                          "--files", "60", "--outage", "2:3", "--window", "2.5:1.5",
                          "--after", "1.5", "--report", str(report)], check=False)
    if res.returncode != 0:
        return res.returncode
    print(f"\nthe report (Markdown, JSON, a PNG timeline per mode): {report.resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
