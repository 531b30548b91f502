"""What a verdict covered and which rules it answers (vfile.filter.coverage): pure."""

from __future__ import annotations

from vfile.config.model import FailMode, OversizeRule, Profile
from vfile.filter.coverage import WHOLE, admits, covered_by, unscannable
from vfile.journal.records import (
    Identity,
    VerdictRecord,
    _pack,
    decode_verdict,
    encode_verdict,
)

MiB = 1 << 20
SIZE = 17 * MiB
IDENT = Identity(1, 2, SIZE, 3, 4)
FIRST = Profile(name="f", paths=("f/**",), max_size=MiB, oversize=OversizeRule.SCAN_FIRST,
                scan_first=16 * MiB)
JOURNAL = Profile(name="j", paths=("j/**",), max_size=MiB, oversize=OversizeRule.JOURNAL)
DENY = Profile(name="d", paths=("d/**",), max_size=MiB, oversize=OversizeRule.DENY,
               fail_mode=FailMode.CLOSED)
UNLIMITED = Profile(name="u", paths=("u/**",), max_size=0)


def _rec(outcome: str, covered: int) -> VerdictRecord:
    return VerdictRecord(IDENT, "sig", outcome, "", "a", 0.0, covered)


def test_covered_by() -> None:
    assert covered_by(None, SIZE) == WHOLE
    assert covered_by(16 * MiB, SIZE) == 16 * MiB
    assert covered_by(16 * MiB, 100) == WHOLE


def test_a_prefix_verdict_admits_only_under_a_rule_asking_for_no_more() -> None:
    prefix = _rec("clean", 16 * MiB)
    assert admits(prefix, FIRST)
    assert not admits(prefix, JOURNAL)
    assert not admits(prefix, DENY)
    assert not admits(prefix, UNLIMITED)
    assert not admits(_rec("clean", MiB), FIRST)  # asked for 16 MiB, has 1 MiB
    for p in (FIRST, JOURNAL, DENY, UNLIMITED):
        assert admits(_rec("clean", WHOLE), p)
        assert admits(_rec("infected", MiB), p)  # infected is infected


def test_the_drain_leaves_whole_file_rules_over_the_limit_unscanned() -> None:
    assert unscannable(JOURNAL, SIZE) and "max_size" in unscannable(JOURNAL, SIZE)
    assert unscannable(DENY, SIZE)
    assert unscannable(FIRST, SIZE) == ""
    assert unscannable(JOURNAL, 100) == ""


def test_verdicts_round_trip_and_old_records_count_as_a_prefix() -> None:
    rec = _rec("clean", 16 * MiB)
    assert decode_verdict(encode_verdict(rec)) == rec
    old = _pack([[1, 2, SIZE, 3, 4], "sig", "clean", "", "a", 0.0])  # no coverage field
    assert not admits(decode_verdict(old), JOURNAL)


def test_racy_clean_rule() -> None:
    from vfile.filter.racy import COARSE_FS_NS, TICK_NS, granularity_ns, is_racy, wait_s

    fine = Identity(1, 2, 3, 10_000_000_123, 10_000_000_456)
    whole = Identity(1, 2, 3, 10_000_000_000, 10_000_000_000)
    assert granularity_ns(fine) == TICK_NS and granularity_ns(whole) == COARSE_FS_NS
    assert is_racy(fine, 10_000_000_456)                      # scanned in the same tick
    assert not is_racy(fine, 10_000_000_456 + TICK_NS + 1)    # a tick later: trusted
    assert is_racy(whole, 11_500_000_000)                     # FAT-like: within 2 s
    assert not is_racy(whole, 12_000_000_001)
    assert wait_s(fine, 10_000_000_456 + TICK_NS + 1) == 0
    assert 0 < wait_s(fine, 10_000_000_456) <= (TICK_NS + 1) / 1e9
    assert wait_s(Identity(1, 2, 3, 10**19, 10**19), 0) <= (COARSE_FS_NS + 1) / 1e9
