"""A close scan judged inline hands the engine the sha256 it already computed for the
verdict-by-hash lookup (vfile.filter.contenthash), so the engine hashes the bytes once
less (README "Creates under scanning", cr22). Through a real mount on the embedded
engine with hash signatures: a small file matching an `.hsb` (sha256) signature and
one matching an `.hdb` (md5) signature are both found infected inline and
quarantined; a clean file of the same size is not."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest
from filtering import assert_quarantined, filtering, stored_verdict, write_settled
from mounting import wait_for

pytestmark = pytest.mark.mount

SHA_NAME = "Vfile.Test.Sha256-1"
MD5_NAME = "Vfile.Test.Md5-1"


def test_inline_judgement_matches_sha256_and_md5_signatures(tmp_path: Path) -> None:
    rnd = random.Random(22)
    by_sha, by_md5, clean = (rnd.randbytes(3000 + i) for i in range(3))
    sigs = tmp_path / "sigs"
    sigs.mkdir()
    (sigs / "cr22.hsb").write_text(
        f"{hashlib.sha256(by_sha).hexdigest()}:{len(by_sha)}:{SHA_NAME}\n")
    (sigs / "cr22.hdb").write_text(f"{hashlib.md5(by_md5).hexdigest()}:{len(by_md5)}:{MD5_NAME}\n")
    with filtering(tmp_path, "--signatures", str(sigs)) as f:
        (app,) = f.status()["appliances"]
        assert app["url"] == "embedded", app
        write_settled(f, "clean.bin", clean)
        write_settled(f, "by-sha.bin", by_sha)
        write_settled(f, "by-md5.bin", by_md5)
        gate = f.gate()
        assert gate["close_scans_inline"] == 3, gate
        assert_quarantined(f, "by-sha.bin", by_sha, SHA_NAME)
        assert_quarantined(f, "by-md5.bin", by_md5, MD5_NAME)
        wait_for("clean.bin's verdict", lambda: stored_verdict(f, "clean.bin") == "clean", 30)
        assert (f.src / "clean.bin").read_bytes() == clean
