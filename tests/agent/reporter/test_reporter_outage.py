"""The session reporter while Redis is unreachable, restarted or overloaded.

Nothing here measures time: the calls "return at once" is shown by the
counters and the bounded queue (a call that blocked would never have let
the loop finish with Redis down), speed is in bench/bench_reporter.py.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

import pytest
import redis

from .conftest import STREAM

FAST_RETRY = {"backoff_initial": 0.05, "backoff_max": 0.2, "snapshot_interval": 3600.0}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_redis_down_calls_return_and_memory_stays_bounded(make_reporter: Any,
                                                          until: Any) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    reporter = make_reporter(url, max_queue=100, max_sessions=50, batch_size=20, **FAST_RETRY)
    calls = 0
    for n in range(20_000):
        client_id = f"10.0.0.{n % 7}:{n % 40}"
        reporter.register_session(client_id)
        reporter.update_session_state(client_id, user_id="guest", state="logged_in")
        reporter.unregister_session(client_id)
        calls += 3
    for n in range(500):  # more distinct sessions than max_sessions
        reporter.register_session(f"10.1.0.1:{n}")
    stats = reporter.stats()
    assert stats["queue"] <= 100
    assert stats["pending"] <= 20 + 1
    assert stats["sessions"] == 50
    assert stats["refused"] == 450
    assert stats["dropped"] > 0
    assert stats["queued"] + stats["dropped"] == calls + 50
    assert stats["sent"] == 0
    assert until(lambda: reporter.errors > 0), "the sender never tried Redis"
    assert reporter.running


def test_close_with_redis_down_returns(make_reporter: Any, until: Any) -> None:
    reporter = make_reporter(f"redis://127.0.0.1:{free_port()}/0", **FAST_RETRY)
    reporter.register_session("10.0.0.1:1")
    assert until(lambda: reporter.errors > 0)
    reporter.close(timeout=5)
    assert not reporter.running
    assert reporter.stats()["sent"] == 0


def test_close_with_redis_down_logs_what_it_could_not_send(
        make_reporter: Any, until: Any, caplog: pytest.LogCaptureFixture) -> None:
    reporter = make_reporter(f"redis://127.0.0.1:{free_port()}/0", **FAST_RETRY)
    for n in range(5):
        reporter.register_session(f"10.0.0.1:{n}")
    assert until(lambda: reporter.errors > 0)
    with caplog.at_level(logging.INFO, logger="agent.reporter"):
        reporter.close(timeout=5)
    # Five events and the start-up snapshot were held when Redis refused them.
    assert reporter.stats()["unsent"] == 6
    closing = [r for r in caplog.records if "closed" in r.getMessage()]
    assert len(closing) == 1
    assert closing[0].levelno == logging.WARNING
    assert closing[0].getMessage().startswith(
        "session reporter closed: 0 events sent, 6 not sent (Redis redis://127.0.0.1:")
    assert closing[0].getMessage().endswith("did not take them), 0 dropped earlier (queue full)")


def test_close_with_redis_up_says_nothing_was_lost(
        make_reporter: Any, redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    reporter = make_reporter(redis_url, **FAST_RETRY)
    reporter.register_session("10.0.0.2:1")
    with caplog.at_level(logging.INFO, logger="agent.reporter"):
        reporter.close(timeout=5)
    assert reporter.stats()["unsent"] == 0
    assert "session reporter closed: 2 events sent, none lost" in caplog.text


def test_sending_resumes_after_a_redis_restart(make_reporter: Any, redis_server_factory: Any,
                                               events: Any, until: Any) -> None:
    server = redis_server_factory()
    reporter = make_reporter(server.url, **FAST_RETRY)
    reporter.register_session("10.0.0.1:1", user_id="taro", state="logged_in")
    assert reporter.flush(10)
    assert [e.kind for e in events(server.client())] == ["snapshot", "logged_in"]

    server.stop()
    reporter.register_session("10.0.0.2:2")
    reporter.update_session_state("10.0.0.2:2", user_id="guest", state="logged_in")
    reporter.register_session("10.0.0.3:3")
    reporter.unregister_session("10.0.0.1:1")
    assert until(lambda: reporter.errors > 0)
    assert reporter.sent == 2

    server.start()  # same port, empty data
    assert reporter.flush(15), reporter.stats()
    seen = events(server.client())
    assert [(e.kind, e.client_id) for e in seen[:4]] == [
        ("connected", "10.0.0.2:2"), ("logged_in", "10.0.0.2:2"),
        ("connected", "10.0.0.3:3"), ("disconnected", "10.0.0.1:1"),
    ]
    # Once Redis answers again a snapshot follows, so anything lost heals.
    assert seen[-1].kind == "snapshot"
    assert [(s.client_id, s.user_id) for s in seen[-1].sessions] == [
        ("10.0.0.2:2", "guest"), ("10.0.0.3:3", None)]
    assert [e.seq for e in seen] == sorted(e.seq for e in seen)
    assert reporter.dropped == 0


def test_overflow_is_healed_by_the_snapshot(make_reporter: Any, redis_server_factory: Any,
                                            events: Any, until: Any) -> None:
    server = redis_server_factory()
    reporter = make_reporter(server.url, max_queue=5, **FAST_RETRY)
    assert reporter.flush(10)
    server.stop()
    for n in range(30):
        reporter.register_session(f"10.0.0.1:{n}", user_id=f"u{n}", state="logged_in")
    assert until(lambda: reporter.errors > 0)
    assert reporter.stats()["queue"] <= 5
    # At most one batch (itself at most 5) was taken from the queue before Redis failed.
    assert reporter.dropped >= 30 - 5 - 5

    server.start()
    assert reporter.flush(15), reporter.stats()
    seen = events(server.client())
    snapshots = [e for e in seen if e.kind == "snapshot"]
    assert snapshots, [e.kind for e in seen]
    assert sorted(s.client_id for s in snapshots[-1].sessions) == sorted(
        f"10.0.0.1:{n}" for n in range(30))
    # Fewer events than calls arrived: the dropped ones are only in the snapshot.
    assert len([e for e in seen if e.kind == "logged_in"]) < 30


def test_a_redis_error_reply_is_retried_not_fatal(make_reporter: Any, redis_url: str,
                                                  redis_client: redis.Redis, events: Any,
                                                  until: Any) -> None:
    # The stream key holds a string: every XADD fails with WRONGTYPE until
    # the sysop fixes it; the reporter keeps its batch and resumes afterwards.
    stream = STREAM
    redis_client.set(stream, "oops")
    reporter = make_reporter(redis_url, **FAST_RETRY)
    reporter.register_session("10.0.0.1:1")
    assert until(lambda: reporter.errors >= 2)
    assert reporter.sent == 0 and reporter.running
    redis_client.delete(stream)
    assert reporter.flush(10), reporter.stats()
    assert [e.kind for e in events(redis_client)][:2] == ["snapshot", "connected"]
