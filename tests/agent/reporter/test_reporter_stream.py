"""The session reporter against a real redis-server: what arrives on the stream."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import Any

import redis

from agent.reporter import ReporterSettings, SessionReporter
from wire import auth
from wire.config import RedisSettings, load_document, load_section
from wire.keys import KeySpace
from wire.messages import SessionInfo

from .conftest import HOST, STREAM

QUIET = {"snapshot_interval": 3600.0}


def without_snapshots(events: list[Any]) -> list[Any]:
    return [e for e in events if e.kind != "snapshot"]


def test_events_read_back_equal_the_calls(make_reporter: Any, redis_url: str,
                                          redis_client: redis.Redis, events: Any) -> None:
    reporter = make_reporter(redis_url, **QUIET)
    reporter.register_session("192.168.1.100:54321")
    reporter.register_session("192.168.1.101:54322", user_id="taro", state="logged_in")
    reporter.update_session_state("192.168.1.100:54321", user_id="guest", state="logged_in")
    reporter.update_session_state("192.168.1.101:54322", user_id="hanako")
    reporter.unregister_session("192.168.1.100:54321")
    reporter.unregister_session("192.168.1.101:54322")
    assert reporter.flush(10)

    seen = events(redis_client)
    # The first message of a run is a snapshot: it clears what a previous run left.
    assert seen[0].kind == "snapshot" and seen[0].sessions == ()
    got = [(e.kind, e.client_id, e.user_id, e.state) for e in without_snapshots(seen)]
    assert got == [
        ("connected", "192.168.1.100:54321", None, "connected"),
        ("logged_in", "192.168.1.101:54322", "taro", "logged_in"),
        ("logged_in", "192.168.1.100:54321", "guest", "logged_in"),
        ("logged_in", "192.168.1.101:54322", "hanako", "logged_in"),
        ("disconnected", "192.168.1.100:54321", "guest", None),
        ("disconnected", "192.168.1.101:54322", "hanako", None),
    ]
    assert {e.host for e in seen} == {"bbs-01"}
    assert {e.epoch for e in seen} == {reporter.epoch}
    assert [e.seq for e in seen] == list(range(1, len(seen) + 1))
    connected = without_snapshots(seen)
    # A login keeps the time the session connected.
    assert connected[2].connected_at == connected[0].connected_at
    assert reporter.stats()["sent"] == len(seen)
    assert reporter.stats()["sessions"] == 0


def test_state_change_without_login_is_a_state_event(make_reporter: Any, redis_url: str,
                                                      redis_client: redis.Redis,
                                                      events: Any) -> None:
    reporter = make_reporter(redis_url, **QUIET)
    reporter.register_session("10.0.0.1:1000", user_id="taro", state="logged_in")
    reporter.update_session_state("10.0.0.1:1000", state="connected")
    reporter.update_session_state("10.0.0.1:1000", state="logged_in")
    assert reporter.flush(10)
    kinds = [(e.kind, e.state) for e in without_snapshots(events(redis_client))]
    assert kinds == [("logged_in", "logged_in"), ("state", "connected"),
                     ("logged_in", "logged_in")]


def test_unknown_sessions_are_ignored_and_counted(make_reporter: Any, redis_url: str,
                                                  redis_client: redis.Redis,
                                                  events: Any) -> None:
    reporter = make_reporter(redis_url, **QUIET)
    reporter.update_session_state("10.0.0.9:1", user_id="ghost", state="logged_in")
    reporter.unregister_session("10.0.0.9:1")
    assert reporter.flush(10)
    assert without_snapshots(events(redis_client)) == []
    assert reporter.unknown == 2
    assert reporter.sessions() == []


def test_queued_events_go_out_in_batches(make_reporter: Any, redis_url: str,
                                         redis_client: redis.Redis, events: Any) -> None:
    # Calls made before start() wait in the queue; the first round drains all
    # of them, then adds the start-up snapshot, in pipelines of batch_size.
    reporter = make_reporter(redis_url, start=False, batch_size=10, **QUIET)
    for n in range(45):
        reporter.register_session(f"10.0.0.1:{2000 + n}", user_id=f"user{n}",
                                  state="logged_in")
    assert reporter.stats()["queue"] == 45
    reporter.start()
    assert reporter.flush(10)
    seen = events(redis_client)
    assert len(seen) == 46
    assert reporter.batches == math.ceil(46 / 10)
    assert [e.client_id for e in seen[:45]] == [f"10.0.0.1:{2000 + n}" for n in range(45)]
    assert seen[-1].kind == "snapshot" and len(seen[-1].sessions) == 45


def test_periodic_snapshot_lists_the_table(make_reporter: Any, redis_url: str,
                                           redis_client: redis.Redis, events: Any,
                                           until: Any) -> None:
    reporter = make_reporter(redis_url, snapshot_interval=0.2)
    reporter.register_session("10.0.0.1:1")
    reporter.register_session("10.0.0.2:2")
    reporter.update_session_state("10.0.0.2:2", user_id="guest", state="logged_in")
    reporter.register_session("10.0.0.3:3", user_id="taro", state="logged_in")
    reporter.unregister_session("10.0.0.3:3")

    def full_snapshot() -> Any:
        found = [e for e in events(redis_client) if e.kind == "snapshot" and len(e.sessions) == 2]
        return found[-1] if found else None

    snapshot = until(full_snapshot)
    assert snapshot is not None
    assert snapshot.client_id == "" and snapshot.user_id is None
    table = reporter.sessions()
    assert list(snapshot.sessions) == table
    assert [(s.client_id, s.user_id, s.state) for s in table] == [
        ("10.0.0.1:1", None, "connected"),
        ("10.0.0.2:2", "guest", "logged_in"),
    ]
    assert all(isinstance(s, SessionInfo) for s in snapshot.sessions)
    assert reporter.snapshots >= 2


def test_request_snapshot(make_reporter: Any, redis_url: str, redis_client: redis.Redis,
                          events: Any) -> None:
    reporter = make_reporter(redis_url, **QUIET)
    reporter.register_session("10.0.0.1:1")
    assert reporter.flush(10)
    reporter.request_snapshot()
    assert reporter.flush(10)
    seen = events(redis_client)
    assert [e.kind for e in seen] == ["snapshot", "connected", "snapshot"]
    assert [s.client_id for s in seen[-1].sessions] == ["10.0.0.1:1"]


def test_events_are_signed_with_the_host_key(make_reporter: Any, redis_url: str,
                                             redis_client: redis.Redis) -> None:
    key = b"0123456789abcdef-bbs-01"
    reporter = make_reporter(redis_url, host_key=key, **QUIET)
    reporter.register_session("10.0.0.1:1")
    assert reporter.flush(10)
    entries = redis_client.xrange(STREAM)
    assert len(entries) == 2
    for _entry_id, fields in entries:
        assert auth.verify(key, fields[b"m"], fields[b"sig"])
        assert not auth.verify(b"another-key-of-16-chars", fields[b"m"], fields[b"sig"])


def test_unsigned_without_a_key(make_reporter: Any, redis_url: str,
                                redis_client: redis.Redis) -> None:
    reporter = make_reporter(redis_url, **QUIET)
    reporter.register_session("10.0.0.1:1")
    assert reporter.flush(10)
    for _entry_id, fields in redis_client.xrange(STREAM):
        assert set(fields) == {b"m"}


def test_stream_is_trimmed(make_reporter: Any, redis_url: str,
                           redis_client: redis.Redis) -> None:
    reporter = make_reporter(redis_url, stream_maxlen=50, batch_size=100, **QUIET)
    for n in range(1500):
        reporter.register_session(f"10.0.0.1:{n % 100}")
    assert reporter.flush(20)
    assert reporter.sent == 1501
    # MAXLEN ~ trims whole stream nodes (100 entries each by default).
    assert redis_client.xlen(STREAM) < 400


def test_prefix_and_settings_from_a_config_file(tmp_path: Path, redis_url: str,
                                                redis_client: redis.Redis,
                                                events: Any) -> None:
    key_file = tmp_path / "host.key"
    key_file.write_text("bbs-07 a-secret-of-sixteen-chars\n")
    config = tmp_path / "mtbbs.toml"
    config.write_text(f"[redis]\nurl = '{redis_url}'\nprefix = 'fleet2:'\n"
                      f"[reporter]\nbatch_size = 7\nsnapshot_interval = 900\n"
                      f"host_key_file = '{key_file}'\n")
    document = load_document(config, env={})
    redis_settings = load_section(RedisSettings, document, "redis", env={})
    settings = load_section(ReporterSettings, document, "reporter", env={})
    assert settings.batch_size == 7
    reporter = SessionReporter.from_settings(redis_settings, "bbs-07", settings)
    try:
        assert reporter.enabled and reporter.problem is None
        reporter.start()
        reporter.register_session("10.0.0.7:7")
        assert reporter.flush(10)
    finally:
        reporter.close()
    stream = KeySpace("fleet2:").sessions_stream("bbs-07")
    seen = events(redis_client, stream)
    assert [e.kind for e in seen] == ["snapshot", "connected"]
    assert {e.host for e in seen} == {"bbs-07"}
    _entry_id, fields = redis_client.xrange(stream)[0]
    assert auth.verify(b"a-secret-of-sixteen-chars", fields[b"m"], fields[b"sig"])


def test_unreadable_host_key_disables_sending(tmp_path: Path, redis_url: str) -> None:
    settings = ReporterSettings(host_key_file=tmp_path / "missing.key")
    reporter = SessionReporter.from_settings(RedisSettings(url=redis_url), "bbs-01", settings)
    assert not reporter.enabled
    assert reporter.problem is not None and "missing.key" in reporter.problem
    reporter.start()
    reporter.register_session("10.0.0.1:1")  # still accepted, never raises
    assert reporter.sessions()[0].client_id == "10.0.0.1:1"
    reporter.close()


def test_usable_from_asyncio(redis_url: str, redis_client: redis.Redis, events: Any) -> None:
    async def bbs() -> dict[str, int]:
        async with SessionReporter(redis_url, "bbs-01", **QUIET) as reporter:
            for n in range(20):
                reporter.register_session(f"10.0.0.1:{n}")
                await asyncio.sleep(0)
                reporter.update_session_state(f"10.0.0.1:{n}", user_id="guest",
                                              state="logged_in")
            assert await asyncio.to_thread(reporter.flush, 10)
            return reporter.stats()

    stats = asyncio.run(bbs())
    assert stats["sent"] == 41
    assert len(events(redis_client)) == 41


def test_calls_after_close_are_ignored(make_reporter: Any, redis_url: str,
                                       redis_client: redis.Redis) -> None:
    reporter = make_reporter(redis_url, **QUIET)
    reporter.register_session("10.0.0.1:1")
    reporter.close()
    assert not reporter.running
    reporter.register_session("10.0.0.1:2")
    reporter.unregister_session("10.0.0.1:1")
    reporter.close()
    assert redis_client.xlen(STREAM) == 2


def test_an_oversized_snapshot_keeps_what_fits(make_reporter: Any, redis_url: str,
                                               redis_client: redis.Redis, events: Any,
                                               caplog: Any) -> None:
    reporter = make_reporter(redis_url, start=False, max_sessions=3000, max_queue=10,
                             **QUIET)
    for n in range(3000):
        reporter.register_session(f"10.0.{n // 250}.{n % 250}:{3000 + n}",
                                  user_id=f"{n:04d}" + "u" * 124, state="logged_in")
    reporter.start()
    assert reporter.flush(20)
    snapshot = [e for e in events(redis_client) if e.kind == "snapshot"][-1]
    assert 0 < len(snapshot.sessions) < 3000
    # The longest-lived sessions are the ones kept.
    assert [s.client_id for s in snapshot.sessions] == [
        s.client_id for s in reporter.sessions()[: len(snapshot.sessions)]]
    assert "exceeds" in caplog.text


def test_events_leave_promptly_while_active_and_after_the_sender_parked(
        make_reporter: Any, redis_url: str, redis_client: Any, events: Any, until: Any) -> None:
    """Calls never wake the sender while it polls; once parked, a call wakes it."""
    prefix = "prompt:"
    stream = KeySpace(prefix).sessions_stream(HOST)
    redis_client.delete(stream)
    reporter = make_reporter(redis_url, prefix=prefix, linger=0.02, park_after=0.2,
                             snapshot_interval=3600.0)
    assert until(lambda: reporter.stats()["sent"] == 1)  # the start-up snapshot
    reporter.register_session("10.0.0.9:1")  # the sender is polling
    assert until(lambda: len(events(redis_client, stream)) == 2, 2.0)
    time.sleep(0.5)  # quiet for longer than park_after: the sender sleeps
    reporter.unregister_session("10.0.0.9:1")
    assert until(lambda: len(events(redis_client, stream)) == 3, 2.0)
    assert [e.kind for e in events(redis_client, stream)] == ["snapshot", "connected",
                                                               "disconnected"]
