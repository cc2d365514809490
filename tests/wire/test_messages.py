"""Round trips and refusals of the wire codec."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wire.errors import DecodeError
from wire.messages import (
    SCHEMA_VERSION,
    Report,
    SessionEvent,
    SessionInfo,
    decode,
    decode_entry,
    encode,
    stream_fields,
    to_map,
)

NOW = 1_795_000_000.5


def sample_report(**changes: object) -> Report:
    fields: dict[str, object] = {
        "host": "bbs-01",
        "agent_version": "0.1.0",
        "epoch": 1_795_000_000_000,
        "seq": 42,
        "observed_at": NOW,
        "dropped": 3,
        "interval": 30.0,
        "checks": {
            "database": {"healthy": True, "integrity": "ok", "size_bytes": 5483520,
                         "size_mb": 5.23, "table_count": 8, "path": "data/mtbbs.db"},
            "sessions": {"healthy": True, "active_sessions": 1, "sessions": (
                {"client_id": "192.168.1.100:54321", "user_id": "guest",
                 "state": "logged_in", "connected_at": "2026-11-28T10:00:00Z"},)},
            "disk_space": {"healthy": False, "percent_used": 92.5, "warning_threshold": 90},
            "memory": {"healthy": True, "process_rss_mb": 45.2, "error": None},
        },
    }
    fields.update(changes)
    return Report(**fields)  # type: ignore[arg-type]


def raw(doc: dict[str, object]) -> bytes:
    return msgpack.packb(doc, use_bin_type=True)


def test_report_round_trip() -> None:
    report = sample_report()
    assert decode(encode(report)) == report


def test_report_keeps_japanese_text() -> None:
    broken = {"database": {"healthy": False, "error": "データベースが壊れています"}}
    report = sample_report(checks=broken)
    assert decode(encode(report)) == report


@pytest.mark.parametrize(
    "event",
    [
        SessionEvent("bbs-01", 7, 1, NOW, "connected", client_id="10.0.0.1:2323", state="connected",
                     connected_at=NOW),
        SessionEvent("bbs-01", 7, 2, NOW, "logged_in", client_id="10.0.0.1:2323", user_id="guest",
                     state="logged_in"),
        SessionEvent("bbs-01", 7, 3, NOW, "state", client_id="10.0.0.1:2323", user_id="taro"),
        SessionEvent("bbs-01", 7, 4, NOW, "disconnected", client_id="10.0.0.1:2323"),
        SessionEvent("bbs-01", 7, 5, NOW, "snapshot", sessions=(
            SessionInfo("10.0.0.1:2323", "guest", "logged_in", NOW),
            SessionInfo("10.0.0.2:4000", None, "connected", NOW),
        )),
        SessionEvent("bbs-01", 7, 6, NOW, "snapshot"),
    ],
)
def test_session_event_round_trip(event: SessionEvent) -> None:
    assert decode(encode(event)) == event


def test_stream_entry_round_trip_with_bytes_keys() -> None:
    report = sample_report()
    fields = {k.encode(): v for k, v in stream_fields(report).items()}
    assert decode_entry(fields) == report


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: d.update(v=2), "unsupported schema version"),
        (lambda d: d.update(checks={"disk": {"healthy": True, "a,b": 1}}),
         "a check or field name is not valid"),
        (lambda d: d.update(checks={"disk": {"healthy": True, "a" * 33: 1}}),
         "a check or field name is not valid"),
        (lambda d: d.update(v=True), "$.v"),
                (lambda d: d.update(t="bogus"), "Invalid value 'bogus' - at `$.t`"),
        (lambda d: d.update(t=["x"]), "$.t"),
        (lambda d: d.update(host="bad host\r\nX-Header: y"), "matching regex"),
        (lambda d: d.update(host=5), "Expected `str`, got `int` - at `$.host`"),
        (lambda d: d.update(seq=-1), "Expected `int` >= 0 - at `$.seq`"),
        (lambda d: d.update(seq=1.5), "Expected `int`, got `float` - at `$.seq`"),
        (lambda d: d.update(seq=True), "Expected `int`, got `bool` - at `$.seq`"),
        (lambda d: d.update(observed_at=float("nan")), "$.observed_at"),
        (lambda d: d.update(observed_at=1e300), "$.observed_at"),
        (lambda d: d.pop("checks"), "missing required field `checks`"),
        (lambda d: d.update(interval=0), "$.interval"),
        (lambda d: d.update(checks=[]), "Expected `object`, got `array` - at `$.checks`"),
        (lambda d: d.update(checks={"disk": {"percent": 1}}), "lacks a boolean 'healthy'"),
        (lambda d: d.update(checks={"Disk!": {"healthy": True}}), "name is not valid"),
        (lambda d: d.update(checks={"disk": {"healthy": True, "x": "y" * 5000}}), "length <= 1024"),
        (lambda d: d.update(checks={"disk": {"healthy": True, "x": {"nested": 1}}}),
         "$.checks[...][...]"),
    ],
)
def test_report_refusals(mutate: object, reason: str) -> None:
    doc = to_map(sample_report())
    mutate(doc)  # type: ignore[operator]
    with pytest.raises(DecodeError) as caught:
        decode(raw(doc))
    assert reason in caught.value.reason


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"kind": "exploded"}, "not a session event kind"),
        ({"kind": ["connected"]}, "Expected `str`, got `array` - at `$.kind`"),
        ({"client_id": ""}, "needs a client_id"),
        ({"state": "dancing"}, "not a session state"),
        ({"sessions": [{"client_id": "a", "user_id": None, "state": "connected",
                        "connected_at": NOW}]},
         "only a snapshot carries sessions"),
    ],
)
def test_session_event_refusals(changes: dict[str, object], reason: str) -> None:
    doc = to_map(SessionEvent("bbs-01", 1, 1, NOW, "connected", client_id="1.2.3.4:5"))
    doc.update(changes)
    with pytest.raises(DecodeError) as caught:
        decode(raw(doc))
    assert reason in caught.value.reason


@pytest.mark.parametrize(
    "payload",
    [b"", b"\xc1", b"\x93\x01\x02", "text", None, b"\xff" * 10, raw([1, 2, 3]),
     raw({"v": 1, "t": "report"}), b"\x00" * (300 * 1024)],
)
def test_garbage_is_refused_with_decode_error(payload: object) -> None:
    with pytest.raises(DecodeError):
        decode(payload)


def test_encode_refuses_an_invalid_message() -> None:
    with pytest.raises(DecodeError):
        encode(sample_report(host="no spaces allowed"))


def test_entry_without_payload() -> None:
    with pytest.raises(DecodeError, match="no field 'm'"):
        decode_entry({b"x": b"y"})


def test_schema_version_is_written() -> None:
    assert msgpack.unpackb(encode(sample_report()))["v"] == SCHEMA_VERSION


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_raise_only_decode_error(data: bytes) -> None:
    try:
        decode(data)
    except DecodeError:
        pass


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(["v", "t", "host", "seq", "epoch", "observed_at",
                                        "checks", "kind", "client_id", "sessions", "state",
                                        "agent_version", "user_id", "dropped"]),
                       msgpack_values, max_size=14),
       st.sampled_from(["report", "session"]))
def test_structured_garbage_raises_only_decode_error(doc: dict[str, object], kind: str) -> None:
    doc.setdefault("v", 1)
    doc.setdefault("t", kind)
    try:
        decode(msgpack.packb(doc, use_bin_type=True))
    except DecodeError:
        pass
