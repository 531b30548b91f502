"""`vfile appliance cache` and `vfile prewarm`: usage errors are one line and exit code 2."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from vfile.cli._app import app


@pytest.mark.parametrize(("args", "words"), [
    (["--redis", "http://127.0.0.1:6379"], "Redis URL"),
    (["--redis", "redis+sentinel://127.0.0.1:26379"], "SERVICE"),
    (["--redis", "redis://127.0.0.1:6379/0", "--ttl", "0"], "ttl"),
    (["--redis", "redis://127.0.0.1:6379/0", "--grace", "10", "--rescan-rate", "0"], "rescan"),
])
def test_cache_usage_errors(args: list[str], words: str) -> None:
    res = CliRunner().invoke(app, ["appliance", "cache", "--listen", "tcp://127.0.0.1:0",
                                   "--upstream", "clamd://127.0.0.1:1", *args])
    assert res.exit_code == 2, res.output
    assert words in res.output


def test_cache_bad_upstream_is_a_usage_error() -> None:
    res = CliRunner().invoke(app, ["appliance", "cache", "--listen", "tcp://127.0.0.1:0",
                                   "--upstream", "ftp://x", "--redis", "redis://127.0.0.1/0"])
    assert res.exit_code == 2 and "appliance URL" in res.output, res.output


def test_prewarm_bad_rate_is_a_usage_error() -> None:
    res = CliRunner().invoke(app, ["prewarm", "/nonexistent-mount", "--rate", "0"])
    assert res.exit_code == 2 and "rate" in res.output, res.output


def test_prewarm_of_something_that_is_no_vfile_mount(tmp_path: object) -> None:
    res = CliRunner().invoke(app, ["prewarm", str(tmp_path), "--checkpoint",
                                   f"{tmp_path}/ckpt.json"])
    assert res.exit_code == 8, res.output  # Exit.CONTROL: no control socket answers
