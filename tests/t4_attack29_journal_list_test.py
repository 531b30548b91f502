"""The control plane's `journal.list` reply is bounded (a29).

Without a `limit` the reply held every deferred entry: a journal of a million entries
(an outage's backlog) made one reply of hundreds of MB, built in the mount server's
memory while it served. Now a reply holds at most `limit` entries (default
`DEFAULT_LIST`, at most `MAX_LIST`) and about `REPLY_BYTES` of JSON, and says
whether there is `more`. Through a real mount, its entries made during a window.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from filtering import filtering

from vfile import control
from vfile.commands import DEFAULT_LIST, MAX_LIST, REPLY_BYTES

pytestmark = pytest.mark.mount

#: path components of the deep, non-UTF-8 names (each 255 bytes)
DEPTH = 12


def listed(mnt: Path, args: dict[str, Any]) -> dict[str, Any]:
    reply: dict[str, Any] = control.call(mnt, "journal.list", args, timeout=60)
    return reply


def test_journal_list_is_bounded_and_says_more(tmp_path: Path) -> None:
    with filtering(tmp_path) as f:
        control.call(f.mnt, "quiesce", {"max": 600}, timeout=60)
        n = DEFAULT_LIST + 5
        d = f.mnt / "many"
        d.mkdir()
        for i in range(n):
            (d / f"f{i:05d}").write_bytes(b"%d\n" % i)
        # No limit: the default's worth, and more (before a29: a list of all n).
        got = listed(f.mnt, {})
        assert (len(got["entries"]), got["more"]) == (DEFAULT_LIST, True)
        assert got["entries"][0]["path"] == "many/f00000"  # oldest first
        got = listed(f.mnt, {"limit": 10})
        assert (len(got["entries"]), got["more"]) == (10, True)
        got = listed(f.mnt, {"limit": n})  # every one, no more
        assert (len(got["entries"]), got["more"]) == (n, False)
        assert f.status()["journal"]["deferred"] == n
        with pytest.raises(control.ControlError, match="limit"):
            listed(f.mnt, {"limit": MAX_LIST + 1})
        for bad in (0, -0.0, 1.5, "10", True):
            with pytest.raises(control.ControlError, match="limit"):
                listed(f.mnt, {"limit": bad})
        control.call(f.mnt, "resume", {}, timeout=60)


def test_journal_list_of_long_names_is_bounded_in_bytes(tmp_path: Path) -> None:
    with filtering(tmp_path) as f:
        control.call(f.mnt, "quiesce", {"max": 600}, timeout=60)
        # Non-UTF-8 bytes come back escaped (\udcff: 6 characters a byte): ~18 KB a path.
        part = b"\xff" * 255
        deep = os.path.join(os.fsencode(f.mnt), *[part] * DEPTH)
        os.makedirs(deep)
        n = REPLY_BYTES // (6 * 255 * DEPTH) + 20
        for i in range(n):
            with open(os.path.join(deep, b"%03d" % i + part[:250]), "wb") as out:
                out.write(b"x")
        got = listed(f.mnt, {"limit": MAX_LIST})
        size = len(control.encode_reply(True, got))
        assert got["more"] is True and 0 < len(got["entries"]) < n, len(got["entries"])
        assert size <= REPLY_BYTES + 64 * 1024, size  # within one entry of the cap
        control.call(f.mnt, "resume", {}, timeout=60)
