"""The fast paths of the codec and the state text agree with the careful ones.

``wire.messages.decode`` first tries a fast acceptor of the plain common
shapes and leaves everything else to the careful validators; the formatting
in ``wire.state`` inlines and caches what strftime, ``format_value`` and
``json.dumps`` did. These tests compare both ways on random input: the same
messages accepted, the same values, the same refusal reasons, the same text.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

import msgpack
from hypothesis import example, given, settings
from hypothesis import strategies as st

from wire import messages
from wire.errors import DecodeError
from wire.messages import MAX_TIME, MIN_TIME, Report, SessionInfo, decode
from wire.state import (
    CRITICAL_CHECKS,
    STALE_CRITICAL,
    STALE_NO,
    STALE_WARNING,
    flatten_checks,
    iso_from_ms,
    iso_from_seconds,
    report_fields,
    session_text,
)
from wire.status import Status

NOW = 1_795_000_000.5


def careful(data: bytes) -> Any:
    """What the careful validators alone make of ``data`` (a value or the refusal)."""
    try:
        doc = messages._unpack(data)
    except DecodeError as exc:
        return ("refused", exc.reason)
    if (not isinstance(doc, dict) or doc.get("t") not in (messages.REPORT, messages.SESSION)
            or isinstance(doc.get("v"), bool) or doc.get("v") != messages.SCHEMA_VERSION):
        return fast(data)  # the envelope checks are one code for both paths
    try:
        if doc["t"] == messages.REPORT:
            return messages._decode_report(doc)
        return messages._decode_session(doc)
    except DecodeError as exc:
        return ("refused", exc.reason)


def fast(data: bytes) -> Any:
    try:
        return decode(data)
    except DecodeError as exc:
        return ("refused", exc.reason)


scalars = (st.none() | st.booleans()
           | st.integers(min_value=-(2**63), max_value=2**64 - 1)
           | st.sampled_from([0, 1, -1, 2**63 - 1, -(2**63) + 1, -(2**63), 2**63])
           | st.floats() | st.text(max_size=8)
           | st.sampled_from(["", "x" * 1024, "x" * 1025, "c" * 128, "c" * 129, "データ",
                              "logged_in", "connected"]))
names = st.sampled_from(["healthy", "percent_used", "path", "sessions", "a", "Bad", "x-y",
                         "disk\n", "b" * 32, "b" * 33, "", "ok_2"]) | st.text(max_size=6)
small_maps = st.dictionaries(st.text(max_size=4) | st.just("k" * 65), scalars, max_size=4)
items = st.lists(small_maps | scalars, max_size=3)
any_value = scalars | items | st.dictionaries(st.text(max_size=3), scalars, max_size=2)
check_fields = st.dictionaries(names, scalars | items | any_value, max_size=6)


@st.composite
def report_docs(draw: st.DrawFn) -> dict[str, Any]:
    checks = draw(st.dictionaries(names, check_fields, max_size=5))
    for fields in checks.values():
        if draw(st.booleans()):
            fields["healthy"] = draw(st.booleans())
    doc: dict[str, Any] = {
        "v": 1, "t": "report", "host": draw(st.sampled_from(["bbs-01", "b" * 64, "b" * 65,
                                                              "bad host", "x\n", "-x"])),
        "agent_version": draw(st.sampled_from(["0.1.0", "v" * 64, "v" * 65])),
        "epoch": draw(st.integers(min_value=-1, max_value=2**63)),
        "seq": draw(st.integers(min_value=-1, max_value=2**64 - 1)),
        "observed_at": draw(st.sampled_from([NOW, int(NOW), MIN_TIME, MAX_TIME,
                                             MIN_TIME - 1, math.inf, math.nan])),
        "dropped": draw(st.integers(min_value=-1, max_value=5)),
        "interval": draw(st.sampled_from([60.0, 60, 0.1, 0.09, 86_400, 86_401, math.nan])),
        "checks": checks,
    }
    for key in draw(st.lists(st.sampled_from(sorted(doc)), max_size=2)):
        if draw(st.booleans()):
            doc.pop(key, None)
        else:
            doc[key] = draw(any_value)
    return doc


sessions_lists = st.lists(st.fixed_dictionaries(
    {"client_id": st.sampled_from(["1.2.3.4:5", "c" * 128, "c" * 129, ""]),
     "state": st.sampled_from(["connected", "logged_in", "gone"]),
     "connected_at": st.sampled_from([NOW, int(NOW), 5.0, math.nan])},
    optional={"user_id": st.none() | st.sampled_from(["guest", "u" * 129]) | scalars}), max_size=3)


@st.composite
def session_docs(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "v": 1, "t": "session", "host": draw(st.sampled_from(["bbs-01", "bad host"])),
        "epoch": draw(st.integers(min_value=-1, max_value=3)),
        "seq": draw(st.integers(min_value=-1, max_value=3)),
        "observed_at": draw(st.sampled_from([NOW, int(NOW), 1.0])),
        "kind": draw(st.sampled_from(sorted(messages.SESSION_KINDS) + ["bogus"])),
        "client_id": draw(st.sampled_from(["10.0.0.1:2323", "", "c" * 129])),
        "user_id": draw(st.none() | st.sampled_from(["guest", "u" * 129])),
        "state": draw(st.none() | st.sampled_from(["connected", "logged_in", "dancing"])),
        "connected_at": draw(st.none() | st.sampled_from([NOW, int(NOW), math.inf])),
        "sessions": draw(sessions_lists | st.sampled_from([[], 0, "", {}, None, [1]])),
    }
    for key in draw(st.lists(st.sampled_from(sorted(doc)), max_size=2)):
        if draw(st.booleans()):
            doc.pop(key, None)
        else:
            doc[key] = draw(any_value)
    return doc


@settings(max_examples=600, deadline=None)
@given(report_docs() | session_docs())
def test_fast_decode_agrees_with_the_careful_validators(doc: dict[str, Any]) -> None:
    data = msgpack.packb(doc, use_bin_type=True)
    assert fast(data) == careful(data)


VALID_REPORT: dict[str, Any] = {
    "v": 1, "t": "report", "host": "bbs-01", "agent_version": "0.1.0", "epoch": 1, "seq": 2,
    "observed_at": NOW, "dropped": 0, "interval": 60.0,
    "checks": {"database": {"healthy": True, "integrity": "ok", "size_mb": 5.23},
               "sessions": {"healthy": True, "active_sessions": 1, "sessions": [
                   {"client_id": "1.2.3.4:5", "user_id": "guest", "n": 1}]}},
}
VALID_SNAPSHOT: dict[str, Any] = {
    "v": 1, "t": "session", "host": "bbs-01", "epoch": 1, "seq": 2, "observed_at": NOW,
    "kind": "snapshot", "client_id": "", "user_id": None, "state": None, "connected_at": None,
    "sessions": [{"client_id": "1.2.3.4:5", "user_id": "guest", "state": "logged_in",
                  "connected_at": NOW}],
}


BOUNDARIES = [
    MIN_TIME, MIN_TIME - 0.5, MAX_TIME, MAX_TIME + 1, int(MAX_TIME), 0.1, 0.09, 86_400, 86_400.5,
    2**63 - 1, 2**63, -1, "v" * 64, "v" * 65, "b" * 64, "b" * 65, "b" * 64 + "\n", "bbs-01\n",
    "connected", "logged_in", "disconnected", "state", "snapshot", "report", "session", 1.0,
    [], {}, 0, "", None, True, math.nan, math.inf, "u" * 128, "u" * 129,
]


def test_each_top_level_field_at_its_bounds() -> None:
    for valid in (VALID_REPORT, VALID_SNAPSHOT, {**VALID_SNAPSHOT, "kind": "logged_in",
                                                 "client_id": "1.2.3.4:5", "sessions": []}):
        for key in sorted(set(VALID_REPORT) | set(VALID_SNAPSHOT)):
            for value in BOUNDARIES:
                doc = json.loads(json.dumps(valid))
                doc[key] = value
                data = msgpack.packb(doc, use_bin_type=True)
                assert fast(data) == careful(data), (key, value)


@settings(max_examples=800, deadline=None)
@given(st.sampled_from(["database", "sessions", "new"]), names, scalars | items | any_value,
       st.sampled_from(["client_id", "user_id", "state", "connected_at", "n", "k" * 65]),
       scalars | items)
def test_one_change_from_a_valid_message(check: str, key: str, value: Any, item_key: str,
                                         item_value: Any) -> None:
    # Valid messages changed in one place: the fast path's own bounds are hit.
    doc = json.loads(json.dumps(VALID_REPORT))
    doc["checks"].setdefault(check, {"healthy": False})[key] = value
    data = msgpack.packb(doc, use_bin_type=True)
    assert fast(data) == careful(data)
    doc = json.loads(json.dumps(VALID_REPORT))
    doc["checks"]["sessions"]["sessions"][0][item_key] = item_value
    data = msgpack.packb(doc, use_bin_type=True)
    assert fast(data) == careful(data)
    doc = json.loads(json.dumps(VALID_SNAPSHOT))
    doc["sessions"][0][item_key] = item_value
    data = msgpack.packb(doc, use_bin_type=True)
    assert fast(data) == careful(data)


def test_the_plain_shapes_take_the_fast_path_and_decode_equal() -> None:
    report = {"v": 1, "t": "report", "host": "bbs-01", "agent_version": "0.1.0", "epoch": 1,
              "seq": 2, "observed_at": NOW, "dropped": 0, "interval": 60.0,
              "checks": {"sessions": {"healthy": True, "active_sessions": 1, "sessions": [
                  {"client_id": "1.2.3.4:5", "user_id": "guest", "connected_at": "x"}]}}}
    data = msgpack.packb(report)
    decoded = messages._report(msgpack.unpackb(data))
    assert decoded == careful(data)
    assert decoded.checks["sessions"]["sessions"] == (
        {"client_id": "1.2.3.4:5", "user_id": "guest", "connected_at": "x"},)


# -- the state text --------------------------------------------------------


def reference_iso_from_ms(ms: int | float) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def reference_iso_from_seconds(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def reference_format(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(round(value, 3)) if math.isfinite(value) else ""
    if isinstance(value, tuple | list):
        return json.dumps([dict(v) for v in value], ensure_ascii=False)
    return str(value)


def reference_report_fields(report: Report, entry_ms: int, stale: str) -> dict[str, str]:
    status = Status.worst(
        Status.OK if f.get("healthy") else
        (Status.CRITICAL if n in CRITICAL_CHECKS else Status.WARNING)
        for n, f in report.checks.items())
    stale_level = {STALE_WARNING: Status.WARNING, STALE_CRITICAL: Status.CRITICAL}
    status = Status.worst([status, stale_level.get(stale, Status.OK)])
    fields = {
        "status": status.name,
        "last_seen": reference_iso_from_ms(entry_ms),
        "last_seen_ms": str(entry_ms),
        "observed_at": reference_iso_from_seconds(report.observed_at),
        "epoch": str(report.epoch),
        "seq": str(report.seq),
        "agent_version": report.agent_version,
        "clock_skew_s": reference_format(round(report.observed_at - entry_ms / 1000, 3)),
        "stale": stale,
        "interval_s": reference_format(report.interval),
        "checks": ",".join(sorted(report.checks)),
        "unhealthy": ",".join(sorted(n for n, f in report.checks.items()
                                     if not f.get("healthy"))),
    }
    for name, checks in report.checks.items():
        for key, value in checks.items():
            if not isinstance(value, tuple | list):
                fields[f"{name}.{key}"] = reference_format(value)
    return fields


times = (st.floats(min_value=0.0, max_value=253_402_300_799.0)
         | st.floats(min_value=MIN_TIME, max_value=MAX_TIME)
         | st.integers(min_value=0, max_value=253_402_300_799).map(float)
         | st.integers(min_value=0, max_value=10**7).map(lambda n: n + 0.9999995)
         | st.integers(min_value=0, max_value=10**7).map(lambda n: n + 0.0005))


@settings(max_examples=1000, deadline=None)
@given(times)
@example(1_795_000_000.9999995)
@example(1_795_000_000.0004999)
@example(1_795_000_000.629)
@example(253_402_300_798.9999999)
@example(-1.5)
def test_iso_from_seconds_is_strftime(seconds: float) -> None:
    assert iso_from_seconds(seconds) == reference_iso_from_seconds(seconds)


@settings(max_examples=500, deadline=None)
@given(st.integers(min_value=-(10**12), max_value=253_402_300_799_999)
       | st.floats(min_value=0.0, max_value=1e13))
@example(1_795_000_000_999)
@example(0)
def test_iso_from_ms_is_strftime(ms: int | float) -> None:
    assert iso_from_ms(ms) == reference_iso_from_ms(ms)


texts = st.text(max_size=12) | st.sampled_from(['"', "\\", "\u2028", "\x1b[2J", "ゲスト"])


@settings(max_examples=400, deadline=None)
@given(texts, st.none() | texts, st.sampled_from(["connected", "logged_in"]) | texts, times)
def test_session_text_is_json_dumps(client_id: str, user_id: str | None, state: str,
                                    connected_at: float) -> None:
    info = SessionInfo(client_id, user_id, state, connected_at)
    expected = json.dumps({"client_id": client_id, "user_id": user_id, "state": state,
                           "connected_at": reference_iso_from_seconds(connected_at)},
                          ensure_ascii=False, sort_keys=True)
    assert session_text(info) == expected
    assert json.loads(session_text(info))["user_id"] == user_id


report_values = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63)
                 | st.floats() | st.text(max_size=6)
                 | st.lists(st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
                            max_size=2).map(tuple))


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(["database", "disk_space", "memory", "sessions", "x"]),
                       st.dictionaries(st.sampled_from(["healthy", "percent_used", "path",
                                                        "sessions", "error", "n"]),
                                       report_values, max_size=5), max_size=5),
       st.floats(min_value=MIN_TIME, max_value=MAX_TIME),
       st.sampled_from([0.1, 60.0, 86_400.0, 7.12345]),
       st.integers(min_value=946_684_800_000, max_value=7_258_118_400_000),
       st.sampled_from([STALE_NO, STALE_WARNING, STALE_CRITICAL, "bogus"]))
def test_report_fields_as_before(checks: dict[str, dict[str, Any]], observed_at: float,
                                 interval: float, entry_ms: int, stale: str) -> None:
    report = Report("bbs-01", "0.1.0", 3, 9, observed_at, checks, 0, interval)
    assert report_fields(report, entry_ms, stale) == reference_report_fields(report, entry_ms,
                                                                             stale)
    flat = flatten_checks(checks)
    assert flat == {k: v for k, v in reference_report_fields(report, entry_ms, stale).items()
                    if "." in k}
