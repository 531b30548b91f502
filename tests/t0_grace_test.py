"""vfile.filter.grace: when a grace starts, how long it runs, what it carries."""

from __future__ import annotations

from vfile.config.model import Profile
from vfile.filter.grace import Grace
from vfile.journal.records import Identity, VerdictOutcome, VerdictRecord

ID = Identity(1, 2, 3, 4, 5)


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def _grace(verdicts: dict[str, VerdictOutcome]) -> tuple[Grace, Clock]:
    clock = Clock()

    def find(identity: Identity, sig: str) -> VerdictRecord | None:
        outcome = verdicts.get(sig)
        return None if outcome is None else VerdictRecord(
            identity=identity, sig_version=sig, outcome=outcome, signature="",
            appliance="a", time=0.0)

    return Grace([Profile(grace=60), Profile(name="p", paths=("x",), grace=10)],
                 find=find, clock=clock), clock


def test_a_new_version_opens_a_bounded_grace_per_profile() -> None:
    g, clock = _grace({"A": VerdictOutcome.CLEAN})
    long_, short = Profile(grace=60), Profile(name="p", paths=("x",), grace=10)
    g.observe("A")
    assert not g.carries(ID, long_)  # the first version seen: nothing to carry
    g.observe("B")
    assert g.carries(ID, long_) and g.carries(ID, short)
    assert g.signatures() == ["A"]
    clock.now += 10
    assert g.carries(ID, long_) and not g.carries(ID, short)
    clock.now += 50
    assert not g.carries(ID, long_) and g.signatures() == []
    assert not g.carries(ID, Profile(grace=0))


def test_infected_never_carries_over() -> None:
    g, _ = _grace({"A": VerdictOutcome.INFECTED})
    g.assume("A")  # the version persisted by an earlier run
    g.observe("B")
    assert g.previous == "A" and not g.carries(ID, Profile(grace=60))


def test_a_version_flapping_back_ends_the_grace() -> None:
    g, clock = _grace({"A": VerdictOutcome.CLEAN, "B": VerdictOutcome.CLEAN})
    g.observe("A")
    g.observe("B")
    clock.now += 30
    g.observe("A")  # a pool at mixed versions during a rolling update
    g.observe("B")
    assert not g.carries(ID, Profile(grace=60)) and g.statistics()["active"] is False


def test_pending_follows_the_drain() -> None:
    g, _ = _grace({})
    g.carried_over("a")
    g.carried_over("b")
    g.moved("b", "c")
    g.settled("a")
    assert g.statistics()["carried"] == 2 and g.statistics()["carried_pending"] == 1
    g.settled("c")
    assert g.statistics()["carried_pending"] == 0
