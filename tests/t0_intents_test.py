"""The in-memory intent table: every intent ends, and rolling one back never
leaves an older writer's intent without a current entry."""

from __future__ import annotations

from vfile.filter.intents import IntentTable


def test_roll_back_alone_leaves_nothing() -> None:
    t = IntentTable()
    i = t.begin("a")
    i.seq = 5
    t.roll_back(i)
    assert len(t) == 0 and "a" not in t


def test_roll_back_restores_an_open_writers_intent_with_the_newest_seq() -> None:
    t = IntentTable()
    writer = t.begin("a")
    writer.seq = 1
    failed = t.begin("a")
    failed.seq = 2
    t.roll_back(failed)
    assert t.get("a") is writer and writer.seq == 2
    t.finish(writer)
    assert len(t) == 0


def test_roll_back_skips_finished_intents() -> None:
    t = IntentTable()
    old = t.begin("a")
    old.closing = True
    failed = t.begin("a")
    t.finish(old)  # its close scan ended while the failed one was current
    assert t.get("a") is failed
    t.roll_back(failed)
    assert len(t) == 0


def test_an_intent_claimed_by_a_close_scan_is_not_rolled_back() -> None:
    t = IntentTable()
    i = t.begin("a")
    i.closing = True
    t.roll_back(i)
    assert t.get("a") is i
    t.finish(i)
    assert len(t) == 0


def test_rolled_back_older_intent_is_skipped_later() -> None:
    t = IntentTable()
    w = t.begin("a")
    mid = t.begin("a")
    new = t.begin("a")
    t.roll_back(mid)  # not current: only marked
    assert t.get("a") is new
    t.roll_back(new)
    assert t.get("a") is w


def test_move_and_pop() -> None:
    t = IntentTable()
    t.begin("d/x")
    t.begin("y")
    t.move_tree("d", "e")
    assert "e/x" in t and "d/x" not in t
    t.move("y", "e/x")
    assert list(t) == ["e/x"]
    assert t.pop("e/x") is not None and len(t) == 0


def test_a_move_that_keeps_an_unrecorded_intent_unrecorded() -> None:
    """A rename before its close scan read the file (filter.keeping) moves the intent
    without making its record; any other move makes it, and so does the pop of an
    intent at the target name."""
    t = IntentTable()
    recorded: list[str] = []
    t.displaced = lambda intent: recorded.append(intent.path)
    a = t.begin("a")
    a.unrecorded = True
    t.move("a", "b", displace=False)
    assert t.get("b") is a and a.path == "b" and recorded == []
    c = t.begin("c")
    c.unrecorded = True
    t.move("c", "b", displace=False)  # (the target's intent popped: displaced)
    assert recorded == ["b"] and t.get("b") is c
    t.move("b", "d")
    assert recorded == ["b", "b"] and t.get("d") is c
