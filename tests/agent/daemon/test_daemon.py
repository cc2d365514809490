"""The daemon's cycle: schedule of the integrity check and metrics, the seed's
log lines, the uptime entry, and checks that misbehave."""

from __future__ import annotations

import logging
import math
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis

from agent.checks import CheckSettings
from agent.daemon import Daemon, HostChecks, exit_status, uptime_fields
from agent.publisher import Publisher
from agent.settings import AgentSettings, ProbeSettings
from agent.spool import Spool
from wire.keys import KeySpace
from wire.messages import Report
from wire.status import Status


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now



def test_integrity_runs_when_due_and_its_result_is_repeated_between(
        redis_url: str, make_agent: Callable[..., Any]) -> None:
    made = make_agent(redis_url, interval=0.2, integrity_interval=0.6)
    clock = FakeClock()
    made.daemon.clock = clock
    reports = []
    for _ in range(7):
        reports.append(made.daemon.cycle())
        clock.now += 0.2
    assert made.integrity_flags == [True, False, False, True, False, False, True]
    for report, ran in zip(reports, made.integrity_flags, strict=True):
        database = report.checks["database"]
        assert database["integrity_checked"] is ran
        assert database["integrity"] == "ok"
        assert database["healthy"] is True


def test_integrity_interval_zero_checks_every_cycle(
        redis_url: str, make_agent: Callable[..., Any]) -> None:
    made = make_agent(redis_url, interval=0.2, integrity_interval=0)
    for _ in range(3):
        made.daemon.cycle()
    assert made.integrity_flags == [True, True, True]


def test_the_seed_cadence_health_every_5_metrics_every_10_minutes(
        redis_url: str, make_agent: Callable[..., Any]) -> None:
    made = make_agent(redis_url, interval=300, integrity_interval=300, metrics_interval=600)
    clock = FakeClock()
    made.daemon.clock = clock
    uptime = []
    for _ in range(5):
        report = made.daemon.cycle()
        uptime.append("uptime" in report.checks)
        clock.now += 300.2  # a little late, as real cycles are
    assert made.integrity_flags == [True] * 5
    assert uptime == [True, False, True, False, True]


def test_uptime_carries_boot_time_and_the_bbs_process_uptime(
        redis_url: str, tmp_path: Path, bbs_db: Path,
        bbs_process: subprocess.Popen[bytes]) -> None:
    settings = CheckSettings(host="bbs-test", db=bbs_db, data_dir=bbs_db.parent,
                             bbs_pid=bbs_process.pid)
    from agent.checks import run_checks

    client = redis.Redis.from_url(redis_url)
    with Spool(tmp_path / "s.db", max_reports=10) as spool:
        daemon = Daemon(AgentSettings(interval=1), ProbeSettings(enabled=False),
                        host="bbs-test", spool=spool,
                        publisher=Publisher(client, KeySpace(), spool, host="bbs-test",
                                            maxlen=100),
                        run_checks=lambda i, p: run_checks(settings, redis_client=client,
                                                           keys=KeySpace(), run_integrity=i,
                                                           previous_integrity=p),
                        boot_time=lambda: 1_700_000_000.0)
        report = daemon.cycle()
    uptime = report.checks["uptime"]
    assert report.checks["memory"]["pid"] == bbs_process.pid
    assert uptime["boot_time"] == "2023-11-14T22:13:20Z"
    assert isinstance(uptime["uptime_seconds"], int) and uptime["uptime_seconds"] > 0
    assert uptime["bbs_pid"] == bbs_process.pid
    assert isinstance(uptime["bbs_uptime_seconds"], int)
    assert 0 <= uptime["bbs_uptime_seconds"] < 120
    assert isinstance(uptime["bbs_started_at"], str)
    assert uptime["healthy"] is True


def test_uptime_fields_without_a_bbs_process() -> None:
    fields = uptime_fields({"healthy": False, "pid": None}, now=1_700_000_100.0,
                           boot_time=1_700_000_000.0)
    assert fields == {"healthy": True, "boot_time": "2023-11-14T22:13:20Z",
                      "uptime_seconds": 100, "bbs_pid": None, "bbs_started_at": None,
                      "bbs_uptime_seconds": None}
    gone = uptime_fields({"pid": 4242}, now=1_700_000_100.0, boot_time=1_700_000_000.0,
                         start_time=lambda pid: None)
    assert gone["bbs_pid"] is None and gone["bbs_uptime_seconds"] is None
    found = uptime_fields({"pid": 4242}, now=1_700_000_100.0, boot_time=1_700_000_000.0,
                          start_time=lambda pid: 1_700_000_040.0)
    assert (found["bbs_pid"], found["bbs_uptime_seconds"]) == (4242, 60)


def _daemon(tmp_path: Path, run_checks: Callable[..., Any]) -> tuple[Daemon, Spool]:
    spool = Spool(tmp_path / "s.db", max_reports=10)
    client = redis.Redis(port=1)  # never used: these tests only spool
    publisher = Publisher(client, KeySpace(), spool, host="bbs-test", maxlen=100)
    return Daemon(AgentSettings(interval=1), ProbeSettings(enabled=False), host="bbs-test",
                  spool=spool, publisher=publisher, run_checks=run_checks), spool


def test_a_failing_check_runner_becomes_an_unhealthy_agent_entry(tmp_path: Path) -> None:
    def broken(integrity: bool, previous: str | None) -> dict[str, Any]:
        raise RuntimeError("boom")

    daemon, spool = _daemon(tmp_path, broken)
    with spool:
        report = daemon.cycle()
    assert report.checks["agent"] == {"healthy": False, "error": "checks failed: RuntimeError"}
    assert exit_status(report) == Status.WARNING


def test_a_result_the_wire_refuses_is_replaced_not_fatal(tmp_path: Path) -> None:
    def odd(integrity: bool, previous: str | None) -> dict[str, Any]:
        return {"disk_space": {"healthy": True, "percent_used": 50.0},
                "memory": {"healthy": True, "process_rss_mb": math.nan}}

    daemon, spool = _daemon(tmp_path, odd)
    with spool:
        report = daemon.cycle()
        assert len(spool) == 1
    assert report.checks["disk_space"] == {"healthy": True, "percent_used": 50.0}
    assert report.checks["memory"]["healthy"] is False
    assert "invalid result" in str(report.checks["memory"]["error"])


def test_exit_status_follows_the_seed_codes() -> None:
    def report(checks: dict[str, Any]) -> Report:
        return Report(host="h", agent_version="t", epoch=1, seq=1, observed_at=1.8e9,
                      checks=checks)

    assert exit_status(None) == Status.UNKNOWN
    assert exit_status(report({"database": {"healthy": True}})) == Status.OK
    assert exit_status(report({"telnet": {"healthy": False}})) == Status.WARNING
    assert exit_status(report({"database": {"healthy": False},
                               "telnet": {"healthy": False}})) == Status.CRITICAL


def test_the_bbs_found_by_name_is_looked_up_by_pid_until_it_changes(
        tmp_path: Path, bbs_db: Path, redis_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    script = tmp_path / "fake_bbs_for_cache_test.py"
    script.write_text("import time\ntime.sleep(60)\n")
    scans = []
    real_iter = psutil.process_iter

    def counting_iter(*args: Any, **kwargs: Any) -> Any:
        scans.append(1)
        return real_iter(*args, **kwargs)

    monkeypatch.setattr(psutil, "process_iter", counting_iter)
    settings = CheckSettings(host="bbs-test", db=bbs_db, data_dir=bbs_db.parent,
                             bbs_match="fake_bbs_for_cache_test")
    checks = HostChecks(settings, redis_client=redis.Redis.from_url(redis_url),
                        keys=KeySpace())
    first = subprocess.Popen([sys.executable, str(script)])
    second = None
    try:
        a = checks(False, None)["memory"]
        b = checks(False, None)["memory"]
        assert a["pid"] == b["pid"] == first.pid
        assert a["found_by"] == b["found_by"] == "match"
        assert len(scans) == 1
        first.kill()
        first.wait(10)
        second = subprocess.Popen([sys.executable, str(script)])
        c = checks(False, None)["memory"]
        assert c["pid"] == second.pid and c["found_by"] == "match"
        assert len(scans) == 2
    finally:
        for process in (first, second):
            if process is not None:
                process.kill()
                process.wait(10)


def test_a_spool_that_cannot_be_written_does_not_stop_the_agent(
        tmp_path: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    daemon, spool = _daemon(tmp_path, lambda i, p: {"disk_space": {"healthy": False}})

    def full(make: Any) -> Report:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(spool, "add", full)
    with spool, caplog.at_level(logging.ERROR, logger="agent.daemon"):
        daemon.settings = AgentSettings(interval=0.1)
        assert daemon.run(max_cycles=3) is None
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 3
    assert "database or disk is full" in errors[0]
