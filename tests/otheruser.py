"""Running vfile's code as another user (READER_UID) for the peer tests: an appliance
served by someone who is neither root nor the mount's owner."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from lifecycle import READER_UID


@contextlib.contextmanager
def searchable_checkout() -> Iterator[None]:
    """Let the other user reach this checkout's code: a clone in a private directory
    (`mktemp -d`, 0700) is not searchable by others, and the appliance it runs there
    then fails to import vfile. Search bits only, taken back afterwards."""
    import vfile
    changed = []
    for d in Path(vfile.__file__).resolve().parents:
        mode = d.stat().st_mode
        if not mode & 0o001:
            d.chmod(mode | 0o001)
            changed.append((d, mode))
    try:
        yield
    finally:
        for d, mode in changed:
            d.chmod(mode & 0o7777)


@contextlib.contextmanager
def appliance_serving(listen: str, uid: int | None = READER_UID) -> Iterator[str]:
    """`vfile appliance serve --listen LISTEN` as `uid` (None: as we are); yields the
    URL it reports it listens on."""
    who = [] if uid is None else ["setpriv", f"--reuid={uid}", f"--regid={uid}",
                                  "--clear-groups"]
    with searchable_checkout():
        app = subprocess.Popen([*who, sys.executable, "-m", "vfile", "appliance", "serve",
                                "--listen", listen], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
        try:
            assert app.stdout is not None
            deadline = time.monotonic() + 30
            line = ""
            while "listening on" not in line:
                assert app.poll() is None and time.monotonic() < deadline, f"no appliance: {line}"
                line = app.stdout.readline()
            yield line.split("listening on ", 1)[1].split()[0]
        finally:
            app.kill()
            app.wait(10)


#: a closed profile whose one attempt ends within a second: an appliance refused (another
#: user's) denies at once
CLOSED = ('[[profile]]\nname = "default"\nfail_mode = "closed"\ndeadline = 2\n'
          "attempt_timeout = 1\nretries = 0\n")


def closed_tree(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A source holding root's 0600 `secret`, a mount point and a `CLOSED` config."""
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    (src / "secret").write_bytes(b"root's secret\n")
    (src / "secret").chmod(0o600)
    conf = tmp_path / "vfile.toml"
    conf.write_text(CLOSED)
    return src, mnt, conf
