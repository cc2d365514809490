"""The status scale, key names and the text form of host state."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wire.keys import KeySpace, valid_host_id
from wire.messages import Report
from wire.state import (
    check_severity,
    entry_id_ms,
    iso_from_ms,
    parse_host_state,
    report_fields,
    report_status,
)
from wire.status import Status


def test_worst_orders_like_nagios() -> None:
    assert Status.worst([Status.OK, Status.WARNING]) is Status.WARNING
    assert Status.worst([Status.CRITICAL, Status.WARNING, Status.OK]) is Status.CRITICAL
    assert Status.worst([Status.CRITICAL, Status.UNKNOWN]) is Status.UNKNOWN
    assert Status.worst([]) is Status.OK
    assert [int(s) for s in Status] == [0, 1, 2, 3]


def test_status_parse() -> None:
    assert Status.parse("warning") is Status.WARNING
    assert Status.parse("garbage") is Status.UNKNOWN


def test_keys_share_one_prefix() -> None:
    keys = KeySpace("fleet2:")
    names = [keys.host("bbs-01"), keys.host_sessions("bbs-01"), keys.hosts_index(),
             keys.reports_stream("bbs-01"), keys.sessions_stream("bbs-01"),
             keys.reports_stream("bbs-02"), keys.dead_letter_stream(),
             keys.alert("bbs-01", "disk_space"), keys.silences(), keys.evaluate_queue(),
             keys.collectors_index(), keys.collector_ring()]
    assert all(name.startswith("fleet2:") for name in names)
    assert len(set(names)) == len(names)
    assert KeySpace().host("bbs-01") == "mtbbs:host:bbs-01"


def test_each_host_has_its_own_streams_under_its_hash_tag() -> None:
    keys = KeySpace()
    assert keys.host_streams("bbs-01") == ("mtbbs:{bbs-01}:reports", "mtbbs:{bbs-01}:sessions")
    assert keys.stream_host("mtbbs:{bbs-01}:reports") == ("bbs-01", "reports")
    assert keys.stream_host("mtbbs:{bbs-01}:sessions") == ("bbs-01", "sessions")
    for other in ("mtbbs:stream:dead", "mtbbs:{bbs-01}:other", "mtbbs:{bad host}:reports",
                  "fleet2:{bbs-01}:reports", "mtbbs:host:bbs-01"):
        assert keys.stream_host(other) is None, other
    from fnmatch import fnmatchcase

    assert fnmatchcase(keys.reports_stream("bbs-01"), keys.host_streams_pattern())
    assert not fnmatchcase(keys.dead_letter_stream(), keys.host_streams_pattern())


def test_host_ids() -> None:
    assert valid_host_id("bbs-01.example")
    for bad in ["", "-x", "a b", "a\r\nb", "x" * 65, "ホスト", "a:b"]:
        assert not valid_host_id(bad)


def test_report_fields_round_trip_through_text() -> None:
    report = Report("bbs-01", "0.1.0", 1, 9, 1_795_000_000.0, {
        "disk_space": {"healthy": False, "percent_used": 92.5, "warning_threshold": 90},
        "database": {"healthy": True, "integrity": "ok", "error": None},
    })
    fields = report_fields(report, entry_ms=1_795_000_002_000)
    assert fields["status"] == "WARNING"
    assert fields["disk_space.percent_used"] == "92.5"
    assert fields["database.healthy"] == "true"
    assert fields["clock_skew_s"] == "-2.0"
    assert fields["last_seen"] == iso_from_ms(1_795_000_002_000)
    assert fields["unhealthy"] == "disk_space"
    assert all(isinstance(v, str) for v in fields.values())
    state = parse_host_state("bbs-01", {k.encode(): v.encode() for k, v in fields.items()})
    assert state.status is Status.WARNING
    # A reader sees the severity of every unhealthy check, rated here when
    # the agent did not write one.
    assert state.check_fields("disk_space") == {"healthy": False, "percent_used": 92.5,
                                                "warning_threshold": 90, "severity": "warning"}
    assert state.clock_skew_s == -2.0
    assert state.last_seen_ms == 1_795_000_002_000


def test_database_problem_is_critical() -> None:
    assert report_status({"database": {"healthy": False}, "disk_space": {"healthy": False}}) \
        is Status.CRITICAL
    assert report_status({"memory": {"healthy": False}}) is Status.WARNING


def test_entry_id_ms() -> None:
    assert entry_id_ms(b"1795000000123-4") == 1_795_000_000_123


@pytest.mark.parametrize(("name", "fields", "expected"), [
    # The BBS does not answer: refused, timed out, silent.
    ("telnet", {"healthy": False, "banner_ms": None, "error": "connection refused"},
     Status.CRITICAL),
    # It answers, slowly.
    ("telnet", {"healthy": False, "banner_ms": 2500.0}, Status.WARNING),
    # No BBS process.
    ("memory", {"healthy": False, "process_rss_mb": None, "error": "no BBS process found"},
     Status.CRITICAL),
    ("memory", {"healthy": False, "pid": 42, "process_rss_mb": 600.0}, Status.WARNING),
    ("database", {"healthy": False, "error": "Database is corrupted"}, Status.CRITICAL),
    # The agent's own rating wins: a locked database is only WARNING.
    ("database", {"healthy": False, "severity": "warning"}, Status.WARNING),
    ("telnet", {"healthy": False, "banner_ms": 2500.0, "severity": "critical"},
     Status.CRITICAL),
    ("disk_space", {"healthy": False}, Status.WARNING),
    ("telnet", {"healthy": True}, Status.OK),
])
def test_the_fleet_severity_policy(name: str, fields: dict[str, Any], expected: Status) -> None:
    assert check_severity(name, fields) is expected


def test_the_seed_exit_codes_stay_for_the_health_check() -> None:
    # A locked database is still the seed's exit 2, a missing process its 1.
    assert report_status({"database": {"healthy": False, "severity": "warning"}}) \
        is Status.CRITICAL
    assert report_status({"memory": {"healthy": False, "severity": "critical"}}) \
        is Status.WARNING


def test_report_status_fields_follow_the_severity_policy() -> None:
    report = Report("bbs-01", "0.1.0", 1, 9, 1_795_000_000.0, {
        "telnet": {"healthy": False, "severity": "critical"},
        "database": {"healthy": False, "severity": "warning"},
    })
    assert report_fields(report, entry_ms=1_795_000_002_000)["status"] == "CRITICAL"
    report = Report("bbs-01", "0.1.0", 1, 9, 1_795_000_000.0, {
        "database": {"healthy": False, "severity": "warning"},
    })
    assert report_fields(report, entry_ms=1_795_000_002_000)["status"] == "WARNING"
@settings(max_examples=2000, deadline=None)
@given(st.floats(min_value=946_684_800.0, max_value=7_258_118_400.0))
def test_iso_from_seconds_is_datetimes_text(seconds: float) -> None:
    from datetime import UTC, datetime

    from wire.state import iso_from_seconds

    expected = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    assert iso_from_seconds(seconds) == expected


@settings(max_examples=2000, deadline=None)
@given(st.floats(allow_nan=True, allow_infinity=True))
def test_float_text_is_the_rounded_repr(value: float) -> None:
    import math

    from wire.state import float_text

    if not math.isfinite(value):
        assert float_text(value) == ""
    else:
        assert float(float_text(value)) == round(value, 3) or float_text(value) == "0.0"


def test_plural_counts_in_words() -> None:
    from wire.state import plural

    assert plural(1, "host") == "1 host"
    assert plural(0, "host") == "0 hosts"
    assert plural(2, "alert") == "2 alerts"
