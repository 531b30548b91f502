"""`vfile scan` and `vfile appliance serve|proxy` through the command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from servers import Clamd, Samples
from typer.testing import CliRunner

from vfile.cli import app
from vfile.errors import Exit

runner = CliRunner()


def test_scan_exit_codes_and_lines(clamd_server: Clamd, samples: Samples) -> None:
    url = clamd_server.unix_url
    r = runner.invoke(app, ["scan", str(samples.clean), "-a", url])
    assert r.exit_code == Exit.OK and r.stdout.strip() == f"{samples.clean}: OK"
    r = runner.invoke(app, ["scan", str(samples.dir), "-a", url])  # recursive
    assert r.exit_code == Exit.INFECTED, r.output
    assert f"{samples.eicar}: Vfile.Test.EICAR.UNOFFICIAL FOUND" in r.stdout
    assert f"{samples.generated}: Vfile.Test.Generated.UNOFFICIAL FOUND" in r.stdout
    r = runner.invoke(app, ["scan", str(samples.clean), "--json", "-a", clamd_server.tcp_url])
    assert json.loads(r.stdout)["outcome"] == "clean"


def test_scan_errors(samples: Samples, tmp_path: Path) -> None:
    r = runner.invoke(app, ["scan", str(samples.clean), "-a", "clamd://127.0.0.1:1",
                            "--timeout", "1"])
    assert r.exit_code == 2 and f"{samples.clean}: ERROR" in r.stdout
    r = runner.invoke(app, ["scan", str(tmp_path / "missing"), "-a", "clamd://127.0.0.1:1"])
    assert r.exit_code == 2
    r = runner.invoke(app, ["scan", str(samples.clean), "-a", "http://x"])
    assert r.exit_code == Exit.USAGE and "unknown scheme" in r.output


def test_appliance_serve_and_proxy_processes(samples: Samples) -> None:
    d = tempfile.mkdtemp(prefix="vfc-")
    sock, psock, fault_file = f"{d}/b.sock", f"{d}/p.sock", f"{d}/fault"
    vfile = [sys.executable, "-m", "vfile"]
    serve = subprocess.Popen([*vfile, "appliance", "serve", "--listen", f"unix://{sock}",
                              "--signatures", str(samples.sigdir)], stdout=subprocess.PIPE)
    proxy = subprocess.Popen([*vfile, "appliance", "proxy", "--listen", f"unix://{psock}",
                              "--upstream", f"unix://{sock}", "--fault-file", fault_file],
                             stdout=subprocess.PIPE)
    try:
        assert serve.stdout is not None and proxy.stdout is not None
        assert b"listening on" in serve.stdout.readline()
        assert b"listening on" in proxy.stdout.readline()
        r = runner.invoke(app, ["scan", str(samples.eicar), "-a", f"clamd://{psock}"])
        assert r.exit_code == Exit.INFECTED and "Eicar-Test-Signature FOUND" in r.stdout
        Path(fault_file).write_text("garbage\n")
        proxy.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while True:  # the signal is handled asynchronously
            r = runner.invoke(app, ["scan", str(samples.clean), "-a", f"clamd://{psock}",
                                    "--timeout", "1"])
            if r.exit_code == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert r.exit_code == 2, r.output
    finally:
        for p in (serve, proxy):
            p.terminate()
            p.wait(10)
        for f in (sock, psock, fault_file):
            if os.path.exists(f):
                os.unlink(f)
        os.rmdir(d)
