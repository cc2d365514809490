"""``SessionReporter.from_config``: the agent's file and environment, no code edits."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import redis

from agent.reporter import SessionReporter
from wire import auth
from wire.keys import KeySpace

from .conftest import read_events

SECRET = "a-host-secret-of-some-length"


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "monitor.toml"
    path.write_text(text, encoding="utf-8")
    return path


def report_one(reporter: SessionReporter) -> None:
    try:
        reporter.start()
        reporter.register_session("192.0.2.1:5000")
        assert reporter.flush(timeout=10), reporter.stats()
    finally:
        reporter.close(timeout=2)


def test_the_file_named_by_mtbbs_config_gives_redis_prefix_and_host(
        tmp_path: Path, redis_url: str, redis_client: redis.Redis) -> None:
    config = write_config(tmp_path, f'[redis]\nurl = "{redis_url}"\nprefix = "site1:"\n\n'
                                    '[checks]\nhost = "bbs-07"\n')
    reporter = SessionReporter.from_config(env={"MTBBS_CONFIG": str(config)})
    assert reporter.enabled and reporter.host == "bbs-07"
    report_one(reporter)
    events = read_events(redis_client, KeySpace("site1:").sessions_stream("bbs-07"))
    assert events and {e.host for e in events} == {"bbs-07"}


def test_our_environment_is_read_and_mtbbs_own_redis_url_is_not(
        redis_url: str, redis_client: redis.Redis) -> None:
    env = {"REDIS_URL": "redis://127.0.0.1:1/0",  # MTBBS's own session store
           "MTBBS_REDIS_URL": redis_url, "MTBBS_CHECKS_HOST": "bbs-08"}
    reporter = SessionReporter.from_config(env=env)
    report_one(reporter)
    assert reporter.sent >= 1 and reporter.errors == 0
    assert {e.host for e in read_events(redis_client, KeySpace().sessions_stream("bbs-08"))} == {
        "bbs-08"}


def test_the_agents_key_signs_the_events_when_the_reporter_has_none(
        tmp_path: Path, redis_url: str, redis_client: redis.Redis) -> None:
    keys = tmp_path / "host.key"
    keys.write_text(f"bbs-09 {SECRET}\n", encoding="utf-8")
    config = write_config(tmp_path, f'[redis]\nurl = "{redis_url}"\n\n[checks]\n'
                                    f'host = "bbs-09"\n\n[agent]\nhost_key_file = "{keys}"\n')
    report_one(SessionReporter.from_config(config, env={}))
    entries = redis_client.xrange(KeySpace().sessions_stream("bbs-09"))
    assert entries
    for _entry_id, fields in entries:
        assert auth.verify(SECRET.encode(), fields[b"m"], fields[b"sig"])


def test_a_bad_configuration_disables_the_reporter_without_raising(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = write_config(tmp_path, '[redis]\nurl = "http://not-redis"\n')
    with caplog.at_level(logging.ERROR, logger="agent.reporter"):
        reporter = SessionReporter.from_config(config, env={})
    assert not reporter.enabled
    assert reporter.problem is not None and "redis.url" in reporter.problem
    assert "session reporter disabled" in caplog.text
    reporter.register_session("192.0.2.1:5000")  # still accepted, never sent
    reporter.close(timeout=1)


def test_an_agent_key_file_without_this_host_disables_the_reporter(tmp_path: Path,
                                                                   redis_url: str) -> None:
    keys = tmp_path / "host.key"
    keys.write_text(f"other-host {SECRET}\n", encoding="utf-8")
    config = write_config(tmp_path, f'[redis]\nurl = "{redis_url}"\n\n[checks]\n'
                                    f'host = "bbs-10"\n\n[agent]\nhost_key_file = "{keys}"\n')
    reporter = SessionReporter.from_config(config, env={})
    assert not reporter.enabled
    assert reporter.problem is not None and "no key for host bbs-10" in reporter.problem
