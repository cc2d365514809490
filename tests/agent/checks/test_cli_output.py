"""The health-check CLI's three output modes against the seed's examples.

The checks are built from the real result types holding the seed's example
figures; the standard and verbose texts must then equal the seed's examples
line for line, and the JSON must carry the seed's fields, in its order, with
its value types.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent.checks import DatabaseResult, DiskResult, MemoryResult, Session, SessionsResult
from agent.healthcheck_cli import render
from wire.status import Status

TIMESTAMP = "2025-01-15T10:30:45.123456"


def seed_checks(**changes: dict[str, Any]) -> dict[str, dict[str, Any]]:
    sessions = (
        Session("192.168.1.100:54321", "test_user", "2025-01-15T10:00:00.000Z", "logged_in"),
        Session("192.168.1.101:54322", "guest", "2025-01-15T10:05:00.000Z", "logged_in"),
        Session("192.168.1.102:54323", "admin", "2025-01-15T10:10:00.000Z", "logged_in"),
    )
    checks = {
        "database": DatabaseResult(healthy=True, path="data/mtbbs.db", integrity="ok",
                                   size_bytes=5483520, size_mb=5.23, table_count=8,
                                   integrity_checked=True, journal_mode="wal").to_fields(),
        "sessions": SessionsResult(healthy=True, available=True, host="bbs-01",
                                   active_sessions=3, sessions=sessions, guests=1, logged_in=2,
                                   not_logged_in=0, top_ip="192.168.1.100",
                                   top_ip_sessions=1).to_fields(),
        "disk_space": DiskResult(healthy=True, path="data", total_gb=500.0, used_gb=250.5,
                                 free_gb=249.5, percent_used=50.1,
                                 warning_threshold=90.0).to_fields(),
        "memory": MemoryResult(healthy=True, process_rss_mb=45.2, process_vms_mb=123.4,
                               system_percent=65.3, warning_threshold_process_mb=500.0,
                               warning_threshold_system_percent=90.0, pid=4242,
                               found_by="pidfile").to_fields(),
    }
    for name, fields in changes.items():
        checks[name].update(fields)
    return checks


def test_standard_output_is_the_seed_example(seed_examples: dict[str, str]) -> None:
    text, status = render(seed_checks(), TIMESTAMP)
    assert status is Status.OK
    assert text.splitlines() == seed_examples["standard"].splitlines()


def test_verbose_output_is_the_seed_example(seed_examples: dict[str, str]) -> None:
    text, _ = render(seed_checks(), TIMESTAMP, verbose=True)
    assert text.splitlines() == seed_examples["verbose"].splitlines()


def test_json_has_the_seed_fields_in_order(seed_examples: dict[str, str]) -> None:
    text, _ = render(seed_checks(), TIMESTAMP, as_json=True)
    ours = json.loads(text)
    seed = json.loads(seed_examples["json"])
    assert list(ours) == list(seed) == ["health", "exit_code", "status"]
    assert list(ours["health"]) == list(seed["health"])
    for name in ("database", "sessions", "disk_space", "memory"):
        seed_fields, our_fields = seed["health"][name], ours["health"][name]
        assert list(our_fields)[:len(seed_fields)] == list(seed_fields), name
        for key, value in seed_fields.items():
            assert type(our_fields[key]) is type(value), f"{name}.{key}"
            if key != "sessions":  # the seed elides the list as [...]
                assert our_fields[key] == value, f"{name}.{key}"
    assert ours["health"]["timestamp"] == seed["health"]["timestamp"]
    assert (ours["exit_code"], ours["status"]) == (0, "OK")
    assert ours["health"]["sessions"]["sessions"][1] == {
        "client_id": "192.168.1.101:54322", "user_id": "guest",
        "connected_at": "2025-01-15T10:05:00.000Z", "state": "logged_in"}


def test_critical_database() -> None:
    checks = seed_checks(database={"healthy": False, "integrity": None,
                                   "error": "Database file not found: data/mtbbs.db"})
    text, status = render(checks, TIMESTAMP)
    assert status is Status.CRITICAL
    lines = text.splitlines()
    assert "Database: ❌ CRITICAL" in lines
    assert "  - Error: Database file not found: data/mtbbs.db" in lines
    assert lines[-1] == "❌ System Status: CRITICAL"
    document = json.loads(render(checks, TIMESTAMP, as_json=True)[0])
    assert (document["exit_code"], document["status"]) == (2, "CRITICAL")


def test_disk_warning_shows_its_figures_without_verbose() -> None:
    checks = seed_checks(disk_space={"healthy": False, "percent_used": 92.5, "used_gb": 462.5,
                                     "free_gb": 37.5})
    text, status = render(checks, TIMESTAMP)
    assert status is Status.WARNING
    section = text.split("Disk Space: ")[1].split("\n\n")[0].splitlines()
    assert section == ["⚠️ WARNING", "  - Total: 500.0 GB", "  - Used: 462.5 GB (92.5%)",
                       "  - Free: 37.5 GB", "  - Threshold: 90%"]
    assert text.splitlines()[-1] == "⚠️ System Status: WARNING"


def test_sessions_over_the_same_ip_limit_say_which_ip() -> None:
    checks = seed_checks(sessions={"healthy": False, "top_ip": "203.0.113.9",
                                   "top_ip_sessions": 5})
    text, status = render(checks, TIMESTAMP)
    assert status is Status.WARNING
    assert "Sessions: ⚠️ WARNING\n  - Active: 3\n  - Most from one IP: 203.0.113.9 (5, limit 3)" \
        in text


def test_sessions_unavailable_is_plain_and_not_a_problem() -> None:
    checks = seed_checks(sessions={"available": False, "active_sessions": None, "sessions": (),
                                   "error": "Redis unreachable: Connection refused."})
    text, status = render(checks, TIMESTAMP)
    assert status is Status.OK
    assert "Sessions: ❔ UNAVAILABLE\n  - Error: Redis unreachable: Connection refused.\n" in text
    assert text.splitlines()[-1] == "✅ System Status: HEALTHY"
    assert render(checks, TIMESTAMP, quiet=True) == ("", Status.OK)


@pytest.mark.parametrize("as_json", [False, True])
def test_quiet_prints_nothing_when_healthy(as_json: bool) -> None:
    assert render(seed_checks(), TIMESTAMP, quiet=True, as_json=as_json) == ("", Status.OK)


def test_quiet_prints_only_the_problems() -> None:
    checks = seed_checks(memory={"healthy": False, "process_rss_mb": 612.0})
    text, status = render(checks, TIMESTAMP, quiet=True)
    assert status is Status.WARNING
    assert text.splitlines() == [
        f"Timestamp: {TIMESTAMP}",
        "Memory: ⚠️ WARNING",
        "  - Process RSS: 612.0 MB",
        "  - System Usage: 65.3%",
        "  - Thresholds: process 500 MB, system 90%",
        "⚠️ System Status: WARNING",
    ]


def test_verbose_marks_sessions_not_yet_logged_in() -> None:
    listed = ({"client_id": "[::1]:2323", "user_id": None, "connected_at": None,
               "state": "connected"},)
    checks = seed_checks(sessions={"active_sessions": 1, "sessions": listed})
    text, _ = render(checks, TIMESTAMP, verbose=True)
    assert "  - Active: 1\n    - [::1]:2323: user=-, state=connected\n" in text
