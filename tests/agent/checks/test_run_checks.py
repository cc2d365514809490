"""run_checks (the agent daemon's entry) and the [checks] settings."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from agent.checks import CheckSettings, default_host_id, run_checks
from wire.config import describe, load_section
from wire.errors import ConfigError
from wire.keys import KeySpace, valid_host_id
from wire.messages import Report, SessionInfo, decode, encode
from wire.state import report_status, session_text
from wire.status import Status

KEYS = KeySpace()


def settings_for(db: Path, fake_bbs, **extra) -> CheckSettings:
    return load_section(CheckSettings, {"checks": {
        "host": "bbs-01", "db": str(db), "data_dir": str(db.parent), "bbs_pid": fake_bbs.pid,
        "disk_percent": 100, "system_memory_percent": 100, **extra}}, "checks", env={})


def test_healthy_host_in_seed_order(mtbbs_db: Path, fake_bbs, redis_client: redis.Redis) -> None:
    redis_client.hset(KEYS.host_sessions("bbs-01"), "10.0.0.1:2323",
                      session_text(SessionInfo("10.0.0.1:2323", "guest", "logged_in",
                                               time.time())))
    checks = run_checks(settings_for(mtbbs_db, fake_bbs), redis_client=redis_client, keys=KEYS)
    assert list(checks) == ["database", "sessions", "disk_space", "memory"]
    assert all(fields["healthy"] for fields in checks.values()), checks
    assert checks["database"]["integrity"] == "ok"
    assert checks["sessions"]["active_sessions"] == 1
    assert checks["memory"]["pid"] == fake_bbs.pid
    assert report_status(checks) is Status.OK


def test_fields_travel_in_a_report(mtbbs_db: Path, fake_bbs, redis_client: redis.Redis) -> None:
    redis_client.hset(KEYS.host_sessions("bbs-01"), "[::1]:2323",
                      session_text(SessionInfo("[::1]:2323", None, "connected", time.time())))
    checks = run_checks(settings_for(mtbbs_db, fake_bbs), redis_client=redis_client, keys=KEYS)
    report = Report(host="bbs-01", agent_version="test", epoch=1, seq=1,
                    observed_at=time.time(), checks=checks)
    decoded = decode(encode(report))
    assert decoded == report


def test_failures_travel_too(tmp_path: Path, unreachable_redis_url: str) -> None:
    settings = load_section(CheckSettings, {}, "checks", env={}, overrides={
        "db": str(tmp_path / "absent.db"), "data_dir": str(tmp_path / "absent"),
        "bbs_pidfile": str(tmp_path / "absent.pid"), "host": "bbs-01"})
    client = redis.Redis.from_url(unreachable_redis_url, socket_connect_timeout=2)
    checks = run_checks(settings, redis_client=client, keys=KEYS)
    assert [f["healthy"] for f in checks.values()] == [False, True, False, False]
    assert all("error" in f for f in checks.values())
    assert report_status(checks) is Status.CRITICAL
    report = Report(host="bbs-01", agent_version="test", epoch=1, seq=2,
                    observed_at=time.time(), checks=checks)
    assert decode(encode(report)) == report


def test_integrity_can_be_skipped(mtbbs_db: Path, fake_bbs) -> None:
    settings = settings_for(mtbbs_db, fake_bbs)
    skipped = run_checks(settings, redis_client=None, keys=KEYS, run_integrity=False)
    assert skipped["database"]["integrity"] == "not checked"
    assert skipped["database"]["integrity_checked"] is False
    carried = run_checks(settings, redis_client=None, keys=KEYS, run_integrity=False,
                         previous_integrity="ok")
    assert carried["database"]["integrity"] == "ok" and carried["database"]["healthy"]
    assert carried["sessions"]["available"] is False


def test_settings_defaults() -> None:
    settings = load_section(CheckSettings, {}, "checks", env={})
    assert settings.db == Path("data/mtbbs.db") and settings.data_dir == Path("data")
    assert (settings.disk_percent, settings.process_rss_mb, settings.system_memory_percent) == (
        90, 500, 90)
    assert (settings.max_sessions, settings.max_same_ip) == (100, 3)
    assert settings.bbs_match == "uvicorn app.main:app" and settings.bbs_pid is None
    assert settings.bbs_port is None
    assert valid_host_id(settings.host) and settings.host == default_host_id()


def test_settings_precedence_file_env_flags() -> None:
    document = {"checks": {"max_sessions": 50, "disk_percent": 80, "db": "/srv/bbs.db"}}
    env = {"MTBBS_CHECKS_MAX_SESSIONS": "60", "MTBBS_CHECKS_BBS_PID": "42"}
    settings = load_section(CheckSettings, document, "checks", env=env,
                            overrides={"max_sessions": 70})
    assert settings.max_sessions == 70
    assert settings.disk_percent == 80
    assert settings.bbs_pid == 42
    assert settings.db == Path("/srv/bbs.db")


@pytest.mark.parametrize(
    ("section", "setting"),
    [({"disk_percent": 120}, "checks.disk_percent"),
     ({"max_same_ip": -1}, "checks.max_same_ip"),
     ({"host": "bad host!"}, "checks.host"),
     ({"bbs_pid": 0}, "checks.bbs_pid"),
     ({"db_timeout": "soon"}, "checks.db_timeout"),
     ({"no_such": 1}, "checks.no_such")],
)
def test_bad_settings_name_the_setting(section: dict, setting: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_section(CheckSettings, {"checks": section}, "checks", env={})
    assert caught.value.setting == setting


def test_every_setting_is_documented() -> None:
    rows = describe(CheckSettings, "checks")
    assert len(rows) == 13
    assert all(doc for *_, doc in rows)
    assert rows[8][:3] == ("checks.max_same_ip", "MTBBS_CHECKS_MAX_SAME_IP", "3")


def test_the_documented_settings_table_matches_the_code() -> None:
    doc = Path(__file__).resolve().parents[3] / "docs" / "healthcheck.md"
    rows = {}
    for line in doc.read_text(encoding="utf-8").splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[1].startswith("MTBBS_CHECKS_"):
            rows[f"checks.{cells[0]}"] = (cells[1], cells[3])
    expected = {name: (env, text) for name, env, _default, text in describe(CheckSettings,
                                                                            "checks")}
    assert rows == expected


def test_a_failing_check_does_not_lose_the_others(mtbbs_db: Path, fake_bbs, monkeypatch,
                                                  caplog) -> None:
    import agent.checks

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("statvfs exploded")

    monkeypatch.setattr(agent.checks, "check_disk", broken)
    checks = run_checks(settings_for(mtbbs_db, fake_bbs), redis_client=None, keys=KEYS)
    assert checks["disk_space"] == {"healthy": False,
                                    "error": "check failed: RuntimeError: statvfs exploded"}
    assert checks["database"]["healthy"] and checks["memory"]["healthy"]
    assert "the disk_space check failed unexpectedly" in caplog.text
