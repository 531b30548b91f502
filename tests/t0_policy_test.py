"""vfile.filter.policy: the decision table, over every combination of its inputs.

`ALL` is the full cross product of `DecisionInputs` fields (every enum member,
both booleans); each invariant of the policy's docstring is checked on every
row, then a few rows are spelled out as documentation.
"""

from __future__ import annotations

import dataclasses
import errno
import itertools
from typing import Any

import pytest

from vfile.config.model import Escalation, FailMode, OversizeRule
from vfile.filter.policy import (
    JOURNAL_REASONS,
    SCANNED_OR_EXEMPT,
    Action,
    Cached,
    Decision,
    DecisionInputs,
    Event,
    QuotaState,
    Reason,
    ScanResult,
    decide,
)


def _domain(f: dataclasses.Field[Any]) -> list[Any]:
    if f.type in ("bool", bool):
        return [False, True]
    default = f.default
    assert isinstance(default, str)  # every non-bool field is a StrEnum
    return list(type(default))


FIELDS = dataclasses.fields(DecisionInputs)
ALL = [DecisionInputs(**dict(zip([f.name for f in FIELDS], combo, strict=True)))
       for combo in itertools.product(*(_domain(f) for f in FIELDS))]
TABLE = [(inp, decide(inp)) for inp in ALL]


def _unscanned(inp: DecisionInputs) -> bool:
    """No current verdict will be known after this decision, unless it says SCAN."""
    return not ((inp.cached is Cached.CLEAN and not inp.write_pending)
                or inp.scan in (ScanResult.CLEAN, ScanResult.INFECTED)
                or inp.cached is Cached.INFECTED)


def test_the_table_covers_every_field_value() -> None:
    # 3 events x 4 cached x 6 scan results x 3 fail modes x 3 oversize rules x 3 quota x 2^9
    assert len(ALL) == 3 * 4 * 6 * 3 * 3 * 3 * 2**9
    assert {f.name for f in FIELDS} == {
        "event", "trigger_enabled", "cached", "write_pending", "writing", "reading", "window",
        "appliance_down", "oversize", "oversize_rule", "scan", "fail_mode", "quota",
        "tainted", "unflushed"}


def test_pure() -> None:
    for inp, dec in TABLE[::97]:
        assert decide(inp) == dec


def test_infected_is_never_allowed() -> None:
    for inp, dec in TABLE:
        if inp.cached is Cached.INFECTED or inp.scan is ScanResult.INFECTED:
            assert dec == Decision(Action.DENY, Reason.INFECTED), inp
            assert dec.errno == errno.EACCES


def test_a_current_clean_verdict_is_always_allowed() -> None:
    for inp, dec in TABLE:
        if (inp.event is Event.OPEN and inp.cached is Cached.CLEAN and not inp.write_pending
                and not (inp.unflushed and inp.reading)
                and inp.scan is not ScanResult.INFECTED
                and not (inp.quota is QuotaState.READ_ONLY and inp.writing
                         and inp.trigger_enabled)):
            assert dec.action is Action.ALLOW and not dec.exposure, inp


def test_a_fresh_clean_scan_is_allowed() -> None:
    for inp, dec in TABLE:
        if (inp.event is Event.OPEN and inp.scan is ScanResult.CLEAN
                and inp.cached is not Cached.INFECTED and not (inp.unflushed and inp.reading)
                and not (inp.quota is QuotaState.READ_ONLY and inp.writing)):
            assert dec.action is Action.ALLOW and dec.reason in SCANNED_OR_EXEMPT, inp


def test_write_pending_hides_a_cached_clean_verdict() -> None:
    for inp, dec in TABLE:
        if inp.event is Event.OPEN and inp.write_pending and inp.trigger_enabled:
            assert dec.reason is not Reason.CACHED, inp


def test_a_window_or_a_known_down_appliance_never_scans() -> None:
    for inp, dec in TABLE:
        if inp.window or inp.appliance_down:
            assert dec.action is not Action.SCAN, inp


def test_scan_only_without_a_result_so_the_loop_ends() -> None:
    for inp, dec in TABLE:
        if dec.action is Action.SCAN:
            assert inp.scan is ScanResult.NOT_ATTEMPTED and inp.event is not Event.WRITE, inp
            assert inp.trigger_enabled or inp.tainted
            assert not inp.window and not inp.appliance_down
            assert inp.reading or inp.event is Event.CLOSE
            assert not (inp.oversize and inp.oversize_rule is not OversizeRule.SCAN_FIRST)
            assert dec.reason is Reason.NEEDS_SCAN


def test_closed_never_allows_an_unscanned_open() -> None:
    for inp, dec in TABLE:
        if inp.event is Event.OPEN and (inp.fail_mode is FailMode.CLOSED
                                        or inp.quota is QuotaState.CLOSED):
            if dec.reason is Reason.GRACE:  # the profile opted into a grace
                assert inp.cached is Cached.GRACE and inp.fail_mode is FailMode.CLOSED, inp
                continue
            assert dec.action is not Action.DEFER, inp
            if dec.action is Action.ALLOW:
                assert dec.reason in SCANNED_OR_EXEMPT and not dec.exposure, inp


def test_safe_allows_unscanned_only_as_defer() -> None:
    for inp, dec in TABLE:
        if inp.event is Event.OPEN and inp.fail_mode is FailMode.SAFE:
            if dec.action is Action.ALLOW:
                assert dec.reason in SCANNED_OR_EXEMPT and not dec.exposure, inp
            if dec.action is Action.DEFER:
                assert dec.exposure, inp


def test_open_allows_unscanned_with_the_exposure_flag() -> None:
    for inp, dec in TABLE:
        if inp.event is Event.OPEN and inp.fail_mode is FailMode.OPEN:
            assert dec.action is not Action.DEFER or dec.reason is Reason.GRACE, inp
            if dec.action is Action.ALLOW and dec.reason not in SCANNED_OR_EXEMPT:
                assert dec.exposure, inp
            if (inp.scan in (ScanResult.ERROR, ScanResult.TIMEOUT, ScanResult.UNAVAILABLE)
                    and _unscanned(inp) and inp.trigger_enabled and inp.reading
                    and not inp.tainted and not inp.unflushed
                    and inp.quota is QuotaState.NONE):
                assert dec == Decision(Action.ALLOW, Reason(inp.scan.value), exposure=True), inp


def test_exposure_exactly_when_an_open_lets_unscanned_content_through() -> None:
    for inp, dec in TABLE:
        expected = (inp.event is Event.OPEN and dec.allows
                    and dec.reason not in SCANNED_OR_EXEMPT)
        assert dec.exposure is expected, (inp, dec)


def test_every_defer_has_a_journal_reason() -> None:
    for _inp, dec in TABLE:
        if dec.action is Action.DEFER:
            assert dec.reason in JOURNAL_REASONS
        if dec.action is Action.DENY:
            assert dec.reason is not Reason.NEEDS_SCAN


def test_journal_reasons_match_the_journal() -> None:
    from vfile.journal.records import Reason as JournalReason
    assert {r.value for r in JournalReason} == {r.value for r in JOURNAL_REASONS}


def test_writes_are_always_journaled_unless_untriggered_or_read_only() -> None:
    for inp, dec in TABLE:
        if inp.event is not Event.WRITE or inp.cached is Cached.INFECTED \
                or inp.scan is ScanResult.INFECTED:
            continue
        if not inp.trigger_enabled:
            assert dec == Decision(Action.ALLOW, Reason.NOT_TRIGGERED)
        elif inp.quota is QuotaState.READ_ONLY:
            assert dec.action is Action.DENY and dec.errno == errno.EROFS
        else:
            assert dec == Decision(Action.DEFER, Reason.MODIFIED), inp


def test_close_without_a_verdict_leaves_the_entry() -> None:
    for inp, dec in TABLE:
        if inp.event is Event.CLOSE and inp.trigger_enabled and _unscanned(inp) \
                and inp.scan is not ScanResult.NOT_ATTEMPTED:
            assert dec.action is Action.DEFER and not dec.exposure, inp
        if inp.event is Event.CLOSE:
            assert dec.action in (Action.ALLOW, Action.DEFER, Action.SCAN) \
                or dec.reason is Reason.INFECTED, inp


def test_read_only_quota_denies_writing_opens_with_erofs() -> None:
    for inp, dec in TABLE:
        if (inp.event is Event.OPEN and inp.quota is QuotaState.READ_ONLY and inp.writing
                and inp.trigger_enabled and inp.cached is not Cached.INFECTED
                and not (inp.tainted and inp.reading)
                and inp.scan is not ScanResult.INFECTED):
            assert dec.action is Action.DENY and dec.errno == errno.EROFS, inp
        if dec.errno == errno.EROFS:
            assert dec.action is Action.DENY and dec.reason is Reason.QUOTA


S = ScanResult
ROWS: list[tuple[dict[str, Any], Decision]] = [
    ({}, Decision(Action.SCAN, Reason.NEEDS_SCAN)),
    ({"cached": Cached.CLEAN}, Decision(Action.ALLOW, Reason.CACHED)),
    ({"cached": Cached.CLEAN, "window": True}, Decision(Action.ALLOW, Reason.CACHED)),
    ({"cached": Cached.INFECTED, "trigger_enabled": False}, Decision(Action.DENY, Reason.INFECTED)),
    ({"trigger_enabled": False}, Decision(Action.ALLOW, Reason.NOT_TRIGGERED)),
    ({"scan": S.CLEAN}, Decision(Action.ALLOW, Reason.CLEAN)),
    ({"scan": S.INFECTED}, Decision(Action.DENY, Reason.INFECTED)),
    ({"scan": S.TIMEOUT}, Decision(Action.DEFER, Reason.TIMEOUT, exposure=True)),
    ({"scan": S.ERROR, "fail_mode": FailMode.CLOSED}, Decision(Action.DENY, Reason.ERROR)),
    ({"scan": S.ERROR, "fail_mode": FailMode.OPEN},
     Decision(Action.ALLOW, Reason.ERROR, exposure=True)),
    ({"window": True}, Decision(Action.DEFER, Reason.WINDOW, exposure=True)),
    ({"window": True, "fail_mode": FailMode.CLOSED}, Decision(Action.DENY, Reason.WINDOW)),
    ({"appliance_down": True}, Decision(Action.DEFER, Reason.UNAVAILABLE, exposure=True)),
    ({"appliance_down": True, "quota": QuotaState.CLOSED}, Decision(Action.DENY, Reason.QUOTA)),
    ({"oversize": True}, Decision(Action.DEFER, Reason.OVERSIZE, exposure=True)),
    ({"oversize": True, "oversize_rule": OversizeRule.DENY},
     Decision(Action.DENY, Reason.OVERSIZE)),
    ({"oversize": True, "oversize_rule": OversizeRule.SCAN_FIRST},
     Decision(Action.SCAN, Reason.NEEDS_SCAN)),
    ({"cached": Cached.CLEAN, "write_pending": True}, Decision(Action.SCAN, Reason.NEEDS_SCAN)),
    ({"event": Event.WRITE, "window": True}, Decision(Action.DEFER, Reason.MODIFIED)),
    ({"event": Event.CLOSE}, Decision(Action.SCAN, Reason.NEEDS_SCAN)),
    ({"event": Event.CLOSE, "window": True}, Decision(Action.DEFER, Reason.WINDOW)),
    ({"event": Event.CLOSE, "scan": S.TIMEOUT, "fail_mode": FailMode.CLOSED},
     Decision(Action.DEFER, Reason.TIMEOUT)),
    ({"event": Event.CLOSE, "scan": S.CLEAN}, Decision(Action.ALLOW, Reason.CLEAN)),
    ({"event": Event.CLOSE, "oversize": True, "oversize_rule": OversizeRule.DENY},
     Decision(Action.DEFER, Reason.OVERSIZE)),
    ({"writing": True, "reading": False}, Decision(Action.ALLOW, Reason.NOT_TRIGGERED)),
    ({"writing": True, "reading": False, "cached": Cached.INFECTED},
     Decision(Action.DENY, Reason.INFECTED)),
    ({"writing": True, "quota": QuotaState.READ_ONLY},
     Decision(Action.DENY, Reason.QUOTA, read_only=True)),
]


@pytest.mark.parametrize(("fields", "expected"), ROWS)
def test_rows(fields: dict[str, Any], expected: Decision) -> None:
    assert decide(DecisionInputs(**fields)) == expected


def test_quota_state_from_escalation() -> None:
    assert QuotaState.escalated(Escalation.CLOSED) is QuotaState.CLOSED
    assert QuotaState.escalated(Escalation.READ_ONLY) is QuotaState.READ_ONLY


def test_a_tainted_file_is_never_read_without_a_clean_verdict() -> None:
    """Found infected, then touched / chmodded / renamed (issue 13): a reading open
    needs a clean verdict of its current content, in every profile, window or not."""
    for inp, dec in TABLE:
        if (inp.tainted and inp.event is Event.OPEN and inp.reading
                and inp.cached is not Cached.CLEAN and inp.scan is not ScanResult.CLEAN):
            assert dec.action in (Action.DENY, Action.SCAN), inp
            if dec.action is Action.DENY:
                assert dec.reason is Reason.INFECTED, inp


def test_unflushed_writes_make_every_reading_open_unscanned() -> None:
    """Another open may hold writes the source does not show yet (writeback cache):
    neither a cached verdict nor a scan speaks for what the reader will see."""
    for inp, dec in TABLE:
        if (inp.unflushed and inp.event is Event.OPEN and inp.reading and inp.trigger_enabled
                and inp.cached is not Cached.INFECTED and inp.scan is not ScanResult.INFECTED
                and not inp.tainted):
            assert dec.action is not Action.SCAN, inp
            assert dec.reason not in (Reason.CLEAN, Reason.CACHED), inp
            if dec.allows:
                assert dec.exposure, inp


def test_grace_carries_a_previous_clean_over_only_as_a_journaled_open() -> None:
    for inp, dec in TABLE:
        if dec.reason is Reason.GRACE:
            # Journaled (the drain rescans it), counted as an exposure, never a plain
            # allow; only from a previous-version clean, never past a pending write,
            # a taint, unflushed writes or an escalated quota.
            assert dec == Decision(Action.DEFER, Reason.GRACE, exposure=True), inp
            assert inp.cached is Cached.GRACE and inp.event is Event.OPEN, inp
            assert inp.scan is ScanResult.NOT_ATTEMPTED and inp.quota is QuotaState.NONE, inp
            assert not (inp.write_pending or inp.tainted or inp.unflushed), inp
        if (inp.cached is Cached.GRACE and inp.event is Event.OPEN and inp.reading
                and inp.trigger_enabled and inp.scan is ScanResult.NOT_ATTEMPTED
                and not (inp.write_pending or inp.tainted or inp.unflushed)
                and inp.quota is QuotaState.NONE):
            assert dec.reason is Reason.GRACE, inp
        if inp.cached is Cached.GRACE and inp.event is not Event.OPEN:
            # After a write a grace means nothing: as if there were no verdict.
            assert dec == decide(dataclasses.replace(inp, cached=Cached.NONE)), inp
