"""Pure parts of the journal: record encoding, keys, backoff, state-dir naming."""

from __future__ import annotations

import dataclasses
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vfile.journal import keys, queue, statedir
from vfile.journal.records import (
    VALUE_FORMAT,
    DeferredEntry,
    Exposure,
    Identity,
    JournalCorrupt,
    QuarantineRecord,
    Reason,
    VerdictRecord,
    decode_deferred,
    decode_quarantine,
    decode_verdict,
    encode_deferred,
    encode_new_deferred,
    encode_quarantine,
    encode_verdict,
    leased,
    surely_unclaimable,
)

u64 = st.integers(0, 2**64 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)
floats = st.floats(allow_nan=False)
# Paths as os gives them: any text, including lone surrogates from undecodable bytes.
texts = st.text(st.characters(codec=None, exclude_categories=()), max_size=300)
identities = st.builds(Identity, u64, u64, i64, i64, i64)
exposures = st.builds(Exposure, st.integers(0, 2**32), st.integers(0, 2**31), texts, floats)
deferred = st.builds(
    DeferredEntry, path=texts, seq=st.integers(0, 2**63), identity=st.none() | identities,
    reason=st.sampled_from(Reason), profile=texts, first_deferred=floats, last_deferred=floats,
    attempts=st.integers(0, 1000), last_error=texts, exposures=st.tuples(exposures, exposures),
    not_before=floats, lease_until=floats, poisoned=st.booleans(), order=st.integers(0, 2**63))
verdicts = st.builds(VerdictRecord, identities, texts, st.sampled_from(["clean", "infected"]),
                     texts, texts, floats)
quarantines = st.builds(QuarantineRecord, texts, texts, texts, texts, floats,
                        st.none() | identities, texts)


@given(deferred)
def test_deferred_round_trips(e: DeferredEntry) -> None:
    assert decode_deferred(encode_deferred(e)) == e


@given(deferred, floats)
def test_the_claims_quick_look_agrees_with_the_decoded_entry(e: DeferredEntry,
                                                            now: float) -> None:
    # A claim passes entries on this look alone: it must say exactly what decoding says.
    busy = e.poisoned or e.lease_until > now or e.not_before > now
    assert surely_unclaimable(encode_deferred(e), now) == busy


@given(deferred, st.integers(0, 400), st.binary(max_size=3), floats)
def test_the_quick_look_at_a_damaged_entry_never_raises(e: DeferredEntry, cut: int,
                                                        junk: bytes, now: float) -> None:
    # (A valid encoding left by the damage is judged exactly: the test above.)
    assert surely_unclaimable(encode_deferred(e)[:cut] + junk, now) in (True, False)


@given(deferred, floats)
def test_leased_changes_only_the_lease(e: DeferredEntry, until: float) -> None:
    assert leased(e, until) == dataclasses.replace(e, lease_until=until)


@given(st.builds(DeferredEntry, path=texts, seq=st.integers(1, 2**63),
                 identity=st.none() | identities, reason=st.sampled_from(Reason),
                 profile=texts, first_deferred=floats | st.integers(0, 2**40),
                 last_deferred=st.just(0.0), attempts=st.just(0), last_error=texts,
                 exposures=st.just(()) | st.tuples(exposures), not_before=st.just(0.0),
                 lease_until=st.just(0.0), poisoned=st.just(False)))
def test_new_entry_encoding_matches_the_record(e: DeferredEntry) -> None:
    # The group commit stores these bytes as they are: they must be the record's encoding.
    now = e.first_deferred
    entry = dataclasses.replace(e, last_deferred=now, order=e.seq)
    exp = e.exposures[0] if e.exposures else None
    assert encode_new_deferred(e.path, e.seq, e.identity, reason=e.reason, profile=e.profile,
                               now=now, error=e.last_error,
                               exposure=exp) == encode_deferred(entry)


@given(verdicts)
def test_verdict_round_trips(v: VerdictRecord) -> None:
    assert decode_verdict(encode_verdict(v)) == v


@given(quarantines)
def test_quarantine_round_trips(q: QuarantineRecord) -> None:
    assert decode_quarantine(encode_quarantine(q)) == q


@given(st.binary(max_size=200))
def test_garbage_decodes_to_journal_corrupt_only(data: bytes) -> None:
    for decode in (decode_deferred, decode_verdict, decode_quarantine):
        with pytest.raises(JournalCorrupt):
            decode(data)


@given(deferred, st.integers(0, 400), st.binary(max_size=3))
def test_damaged_values_never_decode_wrongly(e: DeferredEntry, cut: int, junk: bytes) -> None:
    raw = encode_deferred(e)
    damaged = raw[:cut] + junk
    try:
        got = decode_deferred(damaged)
    except JournalCorrupt:
        return
    # Only a damage that happens to leave a valid encoding may decode, and then exactly.
    assert encode_deferred(got) == damaged


def test_unknown_version_is_corrupt() -> None:
    raw = encode_verdict(VerdictRecord(Identity(1, 2, 3, 4, 5), "v", "clean", "", "a", 1.0))
    assert raw[0] == VALUE_FORMAT
    with pytest.raises(JournalCorrupt, match="format"):
        decode_verdict(bytes([VALUE_FORMAT + 1]) + raw[1:])


def test_wrong_types_are_corrupt() -> None:
    with pytest.raises(JournalCorrupt):
        decode_verdict(bytes([VALUE_FORMAT]) + b'[[1,2,3,4,"x"],"v","clean","","a",1.0]')
    with pytest.raises(JournalCorrupt, match="outcome"):
        decode_verdict(bytes([VALUE_FORMAT]) + b'[[1,2,3,4,5],"v","maybe","","a",1.0]')
    with pytest.raises(JournalCorrupt):  # bool is not an int
        decode_verdict(bytes([VALUE_FORMAT]) + b'[[true,2,3,4,5],"v","clean","","a",1.0]')


def test_identity_from_stat(tmp_path: os.PathLike[str]) -> None:
    st_ = os.stat(tmp_path)
    ident = Identity.from_stat(st_)
    assert (ident.dev, ident.ino, ident.mtime_ns) == (st_.st_dev, st_.st_ino, st_.st_mtime_ns)


@given(texts)
def test_path_keys_fit_lmdb_whatever_the_path_length(path: str) -> None:
    key = keys.path_key(keys.path_hash(path), 7)
    assert len(key) == keys.PATH_KEY_LEN
    assert keys.disambiguator(key) == 7
    assert keys.order_key_split(keys.order_key(42, key)) == (42, key)


def test_long_paths_get_distinct_keys() -> None:
    a, b = "/x" * 5000 + "a", "/x" * 5000 + "b"
    assert keys.path_hash(a) != keys.path_hash(b)
    with pytest.raises(ValueError):
        keys.path_key(keys.path_hash(a), keys.MAX_DISAMBIGUATOR + 1)


def test_order_keys_sort_oldest_first() -> None:
    k = keys.path_key(keys.path_hash("/p"), 0)
    assert keys.order_key(2, k) < keys.order_key(10, k) < keys.order_key(2**40, k)


@given(identities, texts, texts)
def test_verdict_keys_separate_signature_versions(i: Identity, a: str, b: str) -> None:
    assert (keys.verdict_key(i, a) == keys.verdict_key(i, b)) == (a == b) or a != b


def test_backoff_grows_and_is_capped() -> None:
    values = [queue.backoff(n) for n in range(0, 40)]
    assert values[0] == 0.0
    assert values[1] == queue.BACKOFF_BASE
    assert values[2] == 2 * queue.BACKOFF_BASE
    assert values == sorted(values)
    assert max(values) == queue.BACKOFF_CAP
    assert queue.backoff(10**9) == queue.BACKOFF_CAP


@pytest.mark.parametrize(("mount", "name"), [
    ("/srv/data", "srv-data"), ("/", "-"), ("/srv/my-data", "srv-my\\x2ddata"),
    ("/a//b/", "a-b"), ("/srv/.hidden", "srv-.hidden"), ("/.x", "\\x2ex"),
])
def test_escape_mountpoint(mount: str, name: str) -> None:
    assert statedir.escape_mountpoint(mount) == name


@given(st.lists(st.text("ab-/\\.x", min_size=1, max_size=8), min_size=2, max_size=2,
                unique=True))
def test_escape_is_injective(pair: list[str]) -> None:
    a, b = ("/" + p for p in pair)
    if os.path.normpath(a).lstrip("/") != os.path.normpath(b).lstrip("/"):  # same dir
        assert statedir.escape_mountpoint(a) != statedir.escape_mountpoint(b)


def test_default_state_dir_by_user(monkeypatch: pytest.MonkeyPatch, tmp_path: str) -> None:
    assert statedir.default_state_dir("/srv/x", uid=0) == statedir.ROOT_STATE / "srv-x"
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert str(statedir.default_state_dir("/srv/x", uid=1000)) == f"{tmp_path}/vfile/srv-x"
    made = statedir.ensure_state_dir(statedir.default_state_dir("/srv/x", uid=1000))
    assert made.is_dir() and (made.stat().st_mode & 0o777) == 0o700
