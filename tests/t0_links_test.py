"""The profile a multiply-linked file is judged by (vfile.passthrough.links): pure."""

from __future__ import annotations

from vfile.config.model import Config, FailMode, OversizeRule, Profile, Trigger
from vfile.passthrough.links import ProfileChooser, strictest

EXCLUDED = Profile(name="tmp", paths=("tmp/**",), triggers=frozenset())
CLOSED = Profile(name="uploads", paths=("uploads/**",), fail_mode=FailMode.CLOSED,
                 oversize=OversizeRule.DENY)
OPEN = Profile(name="open", paths=("pub/**",), fail_mode=FailMode.OPEN)
SAFE = Profile(name="default")


def test_an_exclusion_is_the_weakest_and_closed_the_strictest() -> None:
    assert strictest([EXCLUDED, SAFE]) is SAFE
    assert strictest([EXCLUDED, CLOSED, SAFE]) is CLOSED
    assert strictest([OPEN, SAFE]) is SAFE
    assert strictest([OPEN, EXCLUDED]) is OPEN


def test_scanning_on_open_outranks_a_closed_fail_mode_that_never_scans_reads() -> None:
    close_only = Profile(name="w", paths=("w/**",), fail_mode=FailMode.CLOSED,
                         triggers=frozenset({Trigger.CLOSE}))
    assert strictest([close_only, SAFE]) is SAFE


def test_smaller_size_limit_and_stricter_oversize_rule_win_ties() -> None:
    small = Profile(name="small", paths=("s/**",), max_size=1024)
    assert strictest([SAFE, small]) is small
    deny = Profile(name="deny", paths=("d/**",), oversize=OversizeRule.DENY)
    assert strictest([SAFE, deny]) is deny


def test_one_name_is_judged_by_its_path_several_by_the_strictest() -> None:
    chooser = ProfileChooser(Config(profiles=(EXCLUDED, CLOSED), default=SAFE))
    assert chooser.profile_for("tmp/x", 1) is EXCLUDED
    assert chooser.profile_for("tmp/x", 2) is CLOSED
    assert chooser.profile_for("other", 3) is CLOSED
    assert chooser.profile_for("other", 1) is SAFE
