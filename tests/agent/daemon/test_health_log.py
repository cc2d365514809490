"""HealthLog in-process: which reports make a line, and what the line says."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

from agent.healthlog import HealthLog, detail, duration_text

Checks = dict[str, dict[str, Any]]


def disk(percent: float, limit: float = 90) -> dict[str, Any]:
    return {"healthy": percent < limit, "percent_used": percent, "warning_threshold": limit,
            "path": "/srv"}


def database(error: str | None = None) -> dict[str, Any]:
    if error:
        return {"healthy": False, "integrity": None, "error": error}
    return {"healthy": True, "integrity": "ok"}


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> Callable[..., list[tuple[str, str]]]:
    """``logged(reports)``: feed a fresh HealthLog; its lines above DEBUG."""

    def feed(*reports: Checks, clock: Callable[[], float] = lambda: 0.0) -> list[tuple[str, str]]:
        health = HealthLog(clock)
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="agent.healthlog"):
            for checks in reports:
                health.update(checks)
        return [(r.levelname, r.getMessage()) for r in caplog.records
                if r.levelno > logging.DEBUG]

    return feed


def test_healthy_cycles_make_one_line_in_all(logged: Callable[..., Any]) -> None:
    healthy = {"database": database(), "disk_space": disk(50.0)}
    assert logged(*[healthy] * 10) == [
        ("INFO", "Health: all 2 checks healthy (database, disk_space)")]


def test_a_change_is_one_line_naming_it(logged: Callable[..., Any]) -> None:
    # Asked when the host turns unhealthy and when it recovers.
    times = iter([10.0, 200.0])
    lines = logged(
        {"database": database(), "disk_space": disk(50.0)},
        {"database": database(), "disk_space": disk(92.5)},
        {"database": database(), "disk_space": disk(93.1)},  # figures only: no line
        {"database": database(), "disk_space": disk(85.0)},
        clock=lambda: next(times))
    assert lines == [
        ("INFO", "Health: all 2 checks healthy (database, disk_space)"),
        ("WARNING", "disk_space: healthy -> unhealthy (92.5% used, limit 90%)"),
        ("INFO", "disk_space: unhealthy -> healthy (85% used, limit 90%); all checks healthy "
                 "again after 3 min 10 s"),
    ]


def test_the_database_is_critical_and_a_new_reason_is_a_change(
        logged: Callable[..., Any]) -> None:
    lines = logged(
        {"database": database("Database file not found: /srv/mtbbs.db")},
        {"database": database("Database file not found: /srv/mtbbs.db")},
        {"database": database("Database is locked")},
        {"database": database()})
    assert lines == [
        ("ERROR", "database: unhealthy (Database file not found: /srv/mtbbs.db)"),
        ("ERROR", "database: unhealthy (Database file not found: /srv/mtbbs.db) -> unhealthy "
                  "(Database is locked)"),
        ("INFO", "database: unhealthy -> healthy (integrity ok); all checks healthy again "
                 "after 0 s"),
    ]


def test_the_full_report_goes_to_debug_every_cycle(caplog: pytest.LogCaptureFixture) -> None:
    health = HealthLog()
    sessions = {"healthy": True, "active_sessions": 3, "sessions": ({"client_id": "a"},) * 3}
    with caplog.at_level(logging.DEBUG, logger="agent.healthlog"):
        for _ in range(3):
            health.update({"disk_space": disk(92.5), "sessions": sessions})
    full = [r.getMessage() for r in caplog.records
            if r.levelno == logging.DEBUG and r.getMessage().startswith("Full health report")]
    assert len(full) == 3
    assert "'percent_used': 92.5" in full[0] and "[3 items]" in full[0]


def test_a_broken_check_runner_and_its_end(logged: Callable[..., Any]) -> None:
    healthy = {"database": database(), "disk_space": disk(50.0)}
    lines = logged(healthy, {"agent": {"healthy": False, "error": "checks failed: KeyError"}},
                   healthy)
    assert lines[1:] == [
        ("WARNING", "agent: unhealthy (checks failed: KeyError)"),
        ("INFO", "agent: unhealthy -> healthy; all checks healthy again after 0 s"),
    ]


@pytest.mark.parametrize(("name", "fields", "text"), [
    ("memory", {"healthy": False, "process_rss_mb": 612.0, "system_percent": 40.0,
                "warning_threshold_process_mb": 500, "warning_threshold_system_percent": 90},
     "BBS process RSS 612 MB, limit 500 MB"),
    ("memory", {"healthy": False, "process_rss_mb": 100.0, "system_percent": 95.5,
                "warning_threshold_process_mb": 500, "warning_threshold_system_percent": 90},
     "system memory 95.5% used, limit 90%"),
    ("memory", {"healthy": False, "error": "no BBS process found whose program matches 'x'"},
     "no BBS process found whose program matches 'x'"),
    ("sessions", {"healthy": False, "active_sessions": 4, "max_sessions": 100,
                  "top_ip": "192.0.2.7", "top_ip_sessions": 4, "max_same_ip": 3},
     "4 sessions from 192.0.2.7, limit 3"),
    ("sessions", {"healthy": False, "active_sessions": 101, "max_sessions": 100,
                  "top_ip": "192.0.2.7", "top_ip_sessions": 1, "max_same_ip": 3},
     "101 active sessions, limit 100"),
    ("telnet", {"healthy": False, "banner_ms": 2500.0, "threshold_ms": 2000.0,
                "error": "banner after 2500 ms, threshold 2000 ms"},
     "banner after 2500 ms, threshold 2000 ms"),
    ("telnet", {"healthy": True, "banner_ms": 3.2, "threshold_ms": 2000.0, "error": None},
     "banner after 3.2 ms, limit 2000 ms"),
    ("database", {"healthy": False, "integrity": "*** in database main ***", "error": None},
     "integrity: *** in database main ***"),
    ("uptime", {"healthy": True, "uptime_seconds": 5}, ""),
])
def test_details_name_what_is_wrong(name: str, fields: dict[str, Any], text: str) -> None:
    assert detail(name, fields) == text


def test_a_slower_banner_is_not_a_new_state(logged: Callable[..., Any]) -> None:
    def slow(ms: int) -> Checks:
        return {"telnet": {"healthy": False, "banner_ms": float(ms), "threshold_ms": 2000.0,
                           "error": f"banner after {ms} ms, threshold 2000 ms"}}

    assert logged(slow(2500), slow(2400), slow(3100)) == [
        ("WARNING", "telnet: unhealthy (banner after 2500 ms, threshold 2000 ms)")]


def test_durations_read_like_a_person_writes_them() -> None:
    assert [duration_text(s) for s in (0.4, 59.6, 190, 8040, 90061)] == [
        "0 s", "1 min 0 s", "3 min 10 s", "2 h 14 min", "25 h 1 min"]
