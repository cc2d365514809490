"""Nagios range parsing and performance data (pure unit tests)."""

from __future__ import annotations

import math

import pytest

from collector.nagios import NagiosRange, RangeError, format_number, perfdata, range_status
from wire.status import Status


@pytest.mark.parametrize(
    ("text", "start", "end", "inside"),
    [
        ("10", 0.0, 10.0, False),
        ("10:", 10.0, math.inf, False),
        ("~:10", -math.inf, 10.0, False),
        ("10:20", 10.0, 20.0, False),
        ("@10:20", 10.0, 20.0, True),
        (":5", 0.0, 5.0, False),
        ("-5:-1", -5.0, -1.0, False),
        ("@~:0.5", -math.inf, 0.5, True),
        (" 90 ", 0.0, 90.0, False),
    ],
)
def test_parse(text: str, start: float, end: float, inside: bool) -> None:
    parsed = NagiosRange.parse(text)
    assert (parsed.start, parsed.end, parsed.inside) == (start, end, inside)


@pytest.mark.parametrize(
    ("text", "alerting", "quiet"),
    [
        # The guideline's table: 10 alerts outside 0..10.
        ("10", [-1, 10.5, 11], [0, 5, 10]),
        ("10:", [-5, 9.99], [10, 10.5, 1e9]),
        ("~:10", [10.01, 11], [-1e9, 0, 10]),
        ("10:20", [9, 21], [10, 15, 20]),
        ("@10:20", [10, 15, 20], [9.9, 20.1]),
    ],
)
def test_alert(text: str, alerting: list[float], quiet: list[float]) -> None:
    parsed = NagiosRange.parse(text)
    assert all(parsed.alert(v) for v in alerting)
    assert not any(parsed.alert(v) for v in quiet)


@pytest.mark.parametrize("text", ["", "@", "abc", "20:10", "1:x", "~", "nan", "inf:", "10:20:30"])
def test_bad_ranges(text: str) -> None:
    with pytest.raises(RangeError):
        NagiosRange.parse(text)


def test_range_status() -> None:
    warning, critical = NagiosRange.parse("80"), NagiosRange.parse("90")
    assert range_status(50, warning, critical) == Status.OK
    assert range_status(85, warning, critical) == Status.WARNING
    assert range_status(95, warning, critical) == Status.CRITICAL
    assert range_status(None, warning, critical) == Status.UNKNOWN
    assert range_status(95, None, None) == Status.OK


def test_perfdata_format() -> None:
    assert perfdata("disk_percent", 92.5, "%", "90", "", 0, 100) == \
        "'disk_percent'=92.5%;90;;0;100"
    assert perfdata("sessions", 3, "", "", "", 0) == "'sessions'=3;;;0"
    assert perfdata("skew", 0.25, "s") == "'skew'=0.25s"
    assert perfdata("it's", 1) == "'it''s'=1"
    assert format_number(1.0) == "1"
    assert format_number(1.23456) == "1.235"
