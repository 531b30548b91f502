"""The fleet cache's keys and values (scanner.cache) and reply text (scanner.cache_server): pure."""

from __future__ import annotations

import hashlib
import json

import pytest

from vfile.scanner import clamd_proto as proto
from vfile.scanner.cache import decode, encode, lock_key, verdict_key
from vfile.scanner.cache_server import reply_for, version_reply
from vfile.scanner.verdict import Outcome, Verdict

D = hashlib.sha256(b"x").hexdigest()
V = "ClamAV 1.4.6/27000"


def test_round_trip_clean_and_infected() -> None:
    for verdict in (Verdict.clean("clamd://a", V), Verdict.infected("Win.Test-1", "c", V)):
        assert decode(encode(D, verdict), D, V) == verdict


def test_errors_and_versionless_verdicts_are_never_stored() -> None:
    with pytest.raises(ValueError):
        encode(D, Verdict.error("timeout"))
    with pytest.raises(ValueError):
        encode(D, Verdict.clean("a", ""))
    with pytest.raises(ValueError):
        encode("not-a-digest", Verdict.clean("a", V))


@pytest.mark.parametrize("mutate", [
    lambda o: {**o, "f": "vfile-cache/2"}, lambda o: {**o, "d": "0" * 64},
    lambda o: {**o, "v": V + "1"}, lambda o: {**o, "o": "CLEAN"}, lambda o: {**o, "o": "error"},
    lambda o: {**o, "s": "sig"}, lambda o: {**o, "o": "infected", "s": ""},
    lambda o: {**o, "o": "infected", "s": "bad sig"}, lambda o: {**o, "z": 1},
    lambda o: {k: v for k, v in o.items() if k != "t"}, lambda o: [o], lambda o: "clean",
    lambda o: {**o, "a": 1}, lambda o: {**o, "t": "now"},
])
def test_anything_but_our_exact_format_is_a_miss(mutate: object) -> None:
    ours = json.loads(encode(D, Verdict.clean("a", V)))
    raw = json.dumps(mutate(ours)).encode()  # type: ignore[operator]
    assert decode(raw, D, V) is None


K = b"k" * 32


def test_with_a_key_only_a_value_under_that_key_is_a_verdict() -> None:
    clean, infected = Verdict.clean("a", V), Verdict.infected("Win.Test-1", "c", V)
    assert decode(encode(D, clean, key=K), D, V, K) == clean
    assert decode(encode(D, infected, key=K), D, V, K) == infected
    assert decode(encode(D, clean), D, V, K) is None  # unauthenticated: forged by anyone
    assert decode(encode(D, clean, key=b"x" * 32), D, V, K) is None  # another key
    assert decode(encode(D, clean, key=K), D, V) is None  # a keyless reader: not its shape
    # an authenticated infected value changed to clean, or moved to another digest
    tampered = json.loads(encode(D, infected, key=K))
    tampered.update(o="clean", s="")
    assert decode(json.dumps(tampered).encode(), D, V, K) is None
    other = hashlib.sha256(b"y").hexdigest()
    moved = json.loads(encode(D, clean, key=K))
    moved["d"] = other
    assert decode(json.dumps(moved).encode(), other, V, K) is None
    for mac in (None, 1, "", "0" * 64):
        bad = json.loads(encode(D, clean, key=K))
        bad["m"] = mac
        assert decode(json.dumps(bad).encode(), D, V, K) is None


@pytest.mark.parametrize("raw", [b"", b"clean", b"\xff\xfe", b"{", b"null", b"1"])
def test_garbage_is_a_miss(raw: bytes) -> None:
    assert decode(raw, D, V) is None


def test_keys_separate_versions_and_share_a_cluster_slot() -> None:
    assert verdict_key(D, V) != verdict_key(D, V + "x")
    assert verdict_key(D, V) != lock_key(D, V)
    assert f"{{{D}}}" in verdict_key(D, V) and f"{{{D}}}" in lock_key(D, V)


@pytest.mark.parametrize("version", ["ClamAV 1.4.6/27000", "ClamAV 1.4.6", "vfile-builtin 1/abc",
                                     "CI0001-a/b/c"])
def test_version_reply_parses_back(version: str) -> None:
    parsed = proto.parse_version(version_reply(version)).signature_version
    assert parsed == version if version.count("/") <= 1 else parsed.startswith("CI0001-a/")


def test_replies_parse_back_and_errors_stay_errors() -> None:
    assert proto.parse_scan_reply(reply_for(Verdict.clean("a", V), "stream"))[0] is Outcome.CLEAN
    out = proto.parse_scan_reply(reply_for(Verdict.infected("Sig-1", "a", V), "fd[3]"))
    assert out == (Outcome.INFECTED, "Sig-1")
    for reason in ("timeout", "x: OK", "bad\nline OK", "\0", ""):
        assert proto.parse_scan_reply(reply_for(Verdict.error(reason), "stream"))[0] \
            is Outcome.ERROR
