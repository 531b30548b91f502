"""Pure protocol, URL, fault, breaker and signature functions, on byte fixtures."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vfile.scanner import clamd_proto as cp
from vfile.scanner import icap_proto as ip
from vfile.scanner.breaker import Breaker, State
from vfile.scanner.faults import Fault, parse_duration, parse_fault
from vfile.scanner.signatures import EICAR, EICAR_NAME, Signatures, is_eicar, load
from vfile.scanner.urls import parse_appliance_url, parse_listen_url
from vfile.scanner.verdict import Outcome


@pytest.mark.parametrize(("reply", "expected"), [
    (b"stream: OK", (Outcome.CLEAN, "")),
    (b"fd[12]: OK", (Outcome.CLEAN, "")),
    (b"stream: Win.Test.EICAR_HDB-1 FOUND", (Outcome.INFECTED, "Win.Test.EICAR_HDB-1")),
    (b"INSTREAM size limit exceeded. ERROR", (Outcome.ERROR, "INSTREAM size limit exceeded.")),
    (b"stream: Can't allocate memory ERROR", (Outcome.ERROR, "Can't allocate memory")),
])
def test_clamd_scan_replies(reply: bytes, expected: tuple[Outcome, str]) -> None:
    assert cp.parse_scan_reply(reply) == expected


@pytest.mark.parametrize("reply", [
    b"", b"OK", b"stream: ok", b"stream: OK ", b"stream:OK", b"stream: FOUND",
    b"stream:  FOUND", b"stream: a b FOUND", b"stream: OK\x00junk", b"stream: \xffOK",
    b"PONG", b"UNKNOWN COMMAND", b"stream: OK\r", b"x" * 5000 + b": OK",
])
def test_clamd_unknown_replies_raise(reply: bytes) -> None:
    with pytest.raises(cp.ProtocolError):
        cp.parse_scan_reply(reply)


@given(st.binary(max_size=300))
def test_clamd_hostile_reply_never_clean_unless_exact(reply: bytes) -> None:
    try:
        outcome, _ = cp.parse_scan_reply(reply)
    except cp.ProtocolError:
        return
    if outcome is Outcome.CLEAN:
        assert reply.endswith(b": OK") and reply.isascii()


@given(st.binary(max_size=6000))
def test_clamd_split_reply_bounded(buf: bytes) -> None:
    try:
        out = cp.split_reply(buf)
    except cp.ProtocolError:
        assert len(buf) > cp.MAX_REPLY
        return
    if out is not None:
        assert len(out[0]) <= cp.MAX_REPLY


def test_clamd_framing_and_version() -> None:
    assert cp.command("PING") == b"zPING\0"
    assert cp.chunk(b"abc") == b"\0\0\0\x03"
    assert cp.split_reply(b"PONG\0rest") == (b"PONG", b"rest")
    assert cp.split_reply(b"PON") is None
    v = cp.parse_version(b"ClamAV 1.4.6/27000/Thu Nov 20 09:00:00 2026")
    assert (v.engine, v.db_version, v.signature_version) == ("ClamAV 1.4.6", "27000",
                                                             "ClamAV 1.4.6/27000")
    assert cp.parse_version(b"ClamAV 1.4.6").signature_version == "ClamAV 1.4.6"
    assert cp.split_command(b"nPING\nzVERSION\0") == ("PING", "\n", b"zVERSION\0")
    assert cp.split_command(b"zINSTREAM\0\0\0\0\x01x") == ("INSTREAM", "\0", b"\0\0\0\x01x")
    with pytest.raises(cp.ProtocolError):
        cp.split_command(b"z" + b"A" * 2000)


OPTIONS_HEAD = (b'ICAP/1.0 200 OK\r\nMethods: RESPMOD, REQMOD\r\nISTag: "CI0001-abc"\r\n'
                b"Options-TTL: 3600\r\nPreview: 1024\r\nAllow: 204\r\nMax-Connections: 50\r\n"
                b"Encapsulated: null-body=0")
INFECTED_HEAD = (b"ICAP/1.0 200 OK\r\nISTag: \"CI0001-abc\"\r\n"
                 b"X-Infection-Found: Type=0; Resolution=2; Threat=Test.EICAR.HDB.UNOFFICIAL;\r\n"
                 b"X-Violations-Found: 1\r\n\t-\r\n\tTest.EICAR.HDB.UNOFFICIAL\r\n\t0\r\n\t0\r\n"
                 b"Encapsulated: res-hdr=0, res-body=161")


def test_icap_options_and_verdicts() -> None:
    opts = ip.parse_options(ip.parse_head(OPTIONS_HEAD))
    assert (opts.istag, opts.preview, opts.allow_204, opts.ttl, opts.max_connections) == (
        "CI0001-abc", 1024, True, 3600.0, 50)
    resp = ip.parse_head(INFECTED_HEAD)
    assert ip.respmod_verdict(resp) == (Outcome.INFECTED, "Test.EICAR.HDB.UNOFFICIAL")
    assert ip.has_signature(resp)
    only_violations = ip.parse_head(b"ICAP/1.0 200 OK\r\nX-Violations-Found: 1\r\n\tf\r\n\tSig.X"
                                    b"\r\n\t0\r\n\t0")
    assert ip.respmod_verdict(only_violations) == (Outcome.INFECTED, "Sig.X")
    assert ip.respmod_verdict(ip.parse_head(b"ICAP/1.0 204 No Content")) == (Outcome.CLEAN, "")
    assert ip.respmod_verdict(ip.parse_head(b"ICAP/1.0 200 OK"))[0] is Outcome.INFECTED
    assert ip.respmod_verdict(ip.parse_head(b"ICAP/1.0 500 Server Error"))[0] is Outcome.ERROR
    assert ip.parse_encapsulated("res-hdr=0, res-body=136") == {"res-hdr": 0, "res-body": 136}
    assert ip.parse_chunk_size(b"1a4; ieof") == 0x1A4


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 204 No Content", b"ICAP/1.0 20 OK", b"ICAP/1.0 204\r\nbad header",
    b"ICAP/1.0 204 OK\r\n continuation-first", b"ICAP/1.0 204 \xff",
])
def test_icap_bad_heads(head: bytes) -> None:
    with pytest.raises(cp.ProtocolError):
        ip.parse_head(head)


@given(st.binary(max_size=2000))
def test_icap_hostile_heads_never_clean_unless_204(head: bytes) -> None:
    try:
        resp = ip.parse_head(head)
        outcome, _ = ip.respmod_verdict(resp)
    except cp.ProtocolError:
        return
    if outcome is Outcome.CLEAN:
        assert head.startswith((b"ICAP/1.0 204", b"ICAP/1.1 204"))


def test_icap_head_size_bound() -> None:
    with pytest.raises(cp.ProtocolError):
        ip.split_head(b"ICAP/1.0 204 OK\r\nX: " + b"a" * (ip.MAX_HEAD + 10))
    assert ip.split_head(b"ICAP/1.0 204 OK\r\n") is None


def test_urls() -> None:
    u = parse_appliance_url("clamd://127.0.0.1:3310")
    assert (u.kind, u.address.host, u.address.port) == ("clamd", "127.0.0.1", 3310)
    assert parse_appliance_url("clamd:///run/clamd.ctl").address.path == "/run/clamd.ctl"
    i = parse_appliance_url("icap://localhost/avscan")
    assert (i.address.port, i.service) == (1344, "avscan")
    assert parse_listen_url("tcp://127.0.0.1:0").port == 0
    for bad, words in [("clamd://host", "port is required"), ("http://x:1", "unknown scheme"),
                       ("icap://h:1344", "missing ICAP service"), ("clamd://h:99999", "port"),
                       ("clamd://relative.sock", "port")]:
        with pytest.raises(ValueError, match=words):
            parse_appliance_url(bad)
    with pytest.raises(ValueError, match="listen URL"):
        parse_listen_url("unix://relative")


def test_faults() -> None:
    assert parse_fault("none") is None
    assert parse_fault("delay=200ms") == Fault("delay", 0.2)
    assert parse_fault("BLACKHOLE") == Fault("blackhole")
    assert parse_duration("2m") == 120
    for bad in ("delay", "explode", "reset=1", "delay=fast"):
        with pytest.raises(ValueError):
            parse_fault(bad)
    with pytest.raises(ValueError):
        parse_fault("trickle", allowed=("refuse",))


def test_breaker_cycle() -> None:
    b = Breaker(failures=2, cooldown=5)
    assert b.allow(0) and b.state(0) is State.CLOSED
    b.record_failure(0)
    assert b.state(0) is State.CLOSED
    b.record_failure(1)
    assert b.state(2) is State.OPEN and not b.allow(2)
    assert b.state(6) is State.HALF_OPEN
    assert b.allow(6) and not b.allow(6)  # one trial at a time
    b.record_failure(6)  # failed trial: open again
    assert b.state(7) is State.OPEN
    assert b.allow(11.5)
    b.record_success()
    assert b.state(12) is State.CLOSED


def test_breaker_trip_retries_soon_then_backs_off() -> None:
    """A trip (a silent liveness probe) opens at once whatever the count; half-open after
    `retry_after`, doubled per trip without a success, at most the cooldown."""
    b = Breaker(failures=3, cooldown=60)
    b.trip(0, 0.2)
    assert b.state(0.1) is State.OPEN and b.state(0.2) is State.HALF_OPEN
    assert b.allow(0.2)
    b.trip(0.3, 0.2)  # the trial met a silent probe too
    assert b.state(0.6) is State.OPEN and b.state(0.7) is State.HALF_OPEN
    for _ in range(20):
        b.trip(1, 0.2)
    assert b.state(60.9) is State.OPEN and b.state(61) is State.HALF_OPEN
    b.record_success()
    b.trip(100, 0.2)
    assert b.state(100.2) is State.HALF_OPEN  # a success resets the back-off


def test_signatures(tmp_path: Path) -> None:
    assert is_eicar(EICAR + b"\r\n", len(EICAR) + 2)
    assert not is_eicar(EICAR + b"x", len(EICAR) + 1)
    assert Signatures().match(len(EICAR), EICAR, "", "") == EICAR_NAME
    d = tmp_path
    data = b"hello"
    (d / "a.hdb").write_text(f"{hashlib.md5(data).hexdigest()}:5:Test.Hello\n")
    sigs = load(str(d))
    assert sigs.match(5, data, hashlib.md5(data).hexdigest(), "") == "Test.Hello"
    (d / "b.hsb").write_text(f"{hashlib.sha256(b'x').hexdigest()}:*:Test.X\n")
    assert load(str(d)).version != sigs.version
    (d / "c.hdb").write_text("nothex:1:Bad\n")
    with pytest.raises(ValueError, match=r"c\.hdb:1"):
        load(str(d))


def test_clamd_limits_exceeded_is_an_error_not_an_infection() -> None:
    from vfile.scanner.clamd_proto import parse_scan_reply
    from vfile.scanner.verdict import Outcome

    for sig in ("Heuristics.Limits.Exceeded.MaxFileSize", "Heuristics.Limits.Exceeded"):
        outcome, detail = parse_scan_reply(f"stream: {sig} FOUND".encode())
        assert outcome is Outcome.ERROR and "size limit" in detail and sig in detail
    assert parse_scan_reply(b"stream: Eicar-Signature FOUND")[0] is Outcome.INFECTED


def _split_by_loop(buf: bytes) -> tuple[bytes, bytes] | None:
    """split_reply as it was, a byte at a time: the reference for the faster one."""
    for i, b in enumerate(buf[: cp.MAX_REPLY + 1]):
        if b in (0, 10):
            return buf[:i], buf[i + 1:]
    if len(buf) > cp.MAX_REPLY:
        raise cp.ProtocolError("too long")
    return None


@given(st.binary(max_size=64) | st.lists(st.sampled_from([b"1: fd[9]: OK", b"\0", b"\n", b"x",
                                                          b"x" * 1500]),
                                         max_size=8).map(b"".join))
def test_split_reply_splits_as_a_byte_loop_would(buf: bytes) -> None:
    try:
        want = _split_by_loop(buf)
    except cp.ProtocolError:
        with pytest.raises(cp.ProtocolError):
            cp.split_reply(buf)
        return
    assert cp.split_reply(buf) == want
    assert cp.split_reply(bytearray(buf)) == want
