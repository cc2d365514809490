"""The session reporter never raises into the BBS, whatever it is given."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.reporter import MAX_ID_CHARS, ReporterSettings, SessionReporter
from wire.keys import KeySpace

HUGE = "長" * 1_000_000

GARBAGE: list[Any] = [
    None, "", 0, 12, -1.5, float("nan"), True, b"10.0.0.1:1", bytearray(b"\xff\xfe"),
    ("10.0.0.1", 2323), ("::1", 2323, 0, 0), (), ["x"], {"a": 1}, object(),
    "x" * (MAX_ID_CHARS + 1), HUGE, "bad\udcffsurrogate", "nul\x00byte", "ゲスト",
]


class Exploding:
    """An argument whose str() raises."""

    def __str__(self) -> str:
        raise RuntimeError("boom")

    __repr__ = __str__


@pytest.mark.parametrize("value", [*GARBAGE, Exploding()],
                         ids=lambda v: type(v).__name__)
def test_garbage_arguments_never_raise(value: Any, make_reporter: Any, redis_url: str,
                                       redis_client: redis.Redis, events: Any) -> None:
    reporter = make_reporter(redis_url, snapshot_interval=3600.0)
    reporter.register_session(value)
    reporter.register_session("10.0.0.1:1", user_id=value, state=value)
    reporter.update_session_state(value, user_id=value, state=value)
    reporter.update_session_state("10.0.0.1:1", user_id=value, state=value)
    reporter.unregister_session(value)
    reporter.request_snapshot()
    assert reporter.flush(10), reporter.stats()
    # Everything that was sent decodes with the wire codec (events() checks).
    seen = events(redis_client)
    assert seen[-1].kind == "snapshot"
    for event in seen:
        assert len(event.client_id) <= MAX_ID_CHARS
        assert event.user_id is None or len(event.user_id) <= MAX_ID_CHARS
    assert reporter.running


def test_oversized_ids_are_truncated_and_counted(make_reporter: Any, redis_url: str,
                                                 redis_client: redis.Redis,
                                                 events: Any) -> None:
    reporter = make_reporter(redis_url, snapshot_interval=3600.0)
    long_client = "1" * 500
    reporter.register_session(long_client, user_id=HUGE, state="logged_in")
    reporter.update_session_state(long_client, user_id="guest")
    reporter.unregister_session(long_client)
    assert reporter.flush(10)
    seen = [e for e in events(redis_client) if e.kind != "snapshot"]
    # A new user on a logged-in session is a new login.
    assert [e.kind for e in seen] == ["logged_in", "logged_in", "disconnected"]
    assert seen[0].client_id == "1" * MAX_ID_CHARS
    assert seen[0].user_id == "長" * MAX_ID_CHARS
    assert seen[1].user_id == "guest"
    assert reporter.truncated == 4


def test_missing_client_ids_are_refused_and_counted(make_reporter: Any) -> None:
    reporter = make_reporter(None, start=False)
    reporter.register_session(None)
    reporter.register_session("")
    reporter.update_session_state(None, state="logged_in")
    reporter.unregister_session("")
    assert reporter.invalid == 4
    assert reporter.stats()["queue"] == 0


def test_unknown_state_keeps_a_valid_one(make_reporter: Any) -> None:
    reporter = make_reporter(None, start=False)
    reporter.register_session("10.0.0.1:1", state="reading_mail")
    reporter.register_session("10.0.0.1:2", user_id="taro", state=7)
    reporter.update_session_state("10.0.0.1:1", state="LOGGED_IN")
    assert [(s.client_id, s.state) for s in reporter.sessions()] == [
        ("10.0.0.1:1", "connected"), ("10.0.0.1:2", "logged_in")]
    assert reporter.invalid == 3


@pytest.mark.parametrize(
    ("args", "options"),
    [
        (("http://nowhere", "bbs-01"), {}),
        (("redis://127.0.0.1:1/0", "not a host id!"), {}),
        (("redis://127.0.0.1:1/0", None), {}),
        (("redis://127.0.0.1:1/0", "bbs-01"), {"max_queue": -1}),
        (("redis://127.0.0.1:1/0", "bbs-01"), {"batch_size": "many"}),
        (("redis://127.0.0.1:1/0", "bbs-01"), {"settings": "not settings"}),
        (("redis://127.0.0.1:1/0", "bbs-01"), {"host_key": "text, not bytes"}),
        (("redis://127.0.0.1:1/0", "bbs-01"), {"prefix": 5}),
    ],
)
def test_bad_construction_disables_without_raising(args: tuple[Any, ...],
                                                   options: dict[str, Any]) -> None:
    reporter = SessionReporter(*args, **options)
    assert not reporter.enabled
    assert reporter.problem
    reporter.start()
    assert not reporter.running
    reporter.register_session("10.0.0.1:1")
    reporter.update_session_state("10.0.0.1:1", user_id="guest", state="logged_in")
    assert reporter.flush(0.05) is False
    reporter.unregister_session("10.0.0.1:1")
    reporter.close()


class BrokenClient:
    """A client whose pipelines fail in ways redis-py never would."""

    def __init__(self) -> None:
        self.calls = 0

    def pipeline(self, transaction: bool = True) -> Any:
        self.calls += 1
        raise TypeError("a bug in the client")

    def close(self) -> None:
        raise OSError("cannot close")


def test_a_broken_client_is_counted_not_fatal(make_reporter: Any, until: Any) -> None:
    client = BrokenClient()
    reporter = make_reporter(None, client=client, backoff_initial=0.01, backoff_max=0.02)
    reporter.register_session("10.0.0.1:1")
    assert until(lambda: client.calls >= 3)
    assert reporter.errors >= 3 and reporter.running
    reporter.close(timeout=2)
    assert not reporter.running


anything = st.one_of(
    st.none(), st.text(max_size=300), st.integers(), st.floats(), st.binary(max_size=50),
    st.booleans(), st.tuples(st.text(max_size=20), st.integers(0, 65535)),
    st.sampled_from(["connected", "logged_in", "10.0.0.1:1", "10.0.0.1:2", "guest"]),
)
call = st.tuples(st.sampled_from(["register", "update", "unregister"]), anything, anything,
                 anything)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(calls=st.lists(call, max_size=40))
def test_random_call_sequences(calls: list[tuple[str, Any, Any, Any]], redis_url: str,
                               events: Any) -> None:
    prefix = f"fuzz-{uuid.uuid4().hex[:8]}:"
    reporter = SessionReporter(redis_url, "bbs-01", prefix=prefix, max_queue=30,
                               max_sessions=10,
                               settings=ReporterSettings(snapshot_interval=3600.0))
    try:
        for name, client_id, user_id, state in calls:
            if name == "register":
                reporter.register_session(client_id, user_id, state)
            elif name == "update":
                reporter.update_session_state(client_id, user_id, state)
            else:
                reporter.unregister_session(client_id)
        stats = reporter.stats()
        assert stats["queue"] <= 30 and stats["sessions"] <= 10
        reporter.start()
        assert reporter.flush(10), reporter.stats()
    finally:
        reporter.close()
    client = redis.Redis.from_url(redis_url)
    try:
        seen = events(client, KeySpace(prefix).sessions_stream("bbs-01"))
    finally:
        client.delete(KeySpace(prefix).sessions_stream("bbs-01"))
        client.close()
    assert len(seen) == reporter.sent
    assert seen[-1].kind == "snapshot"
    assert {s.client_id for s in seen[-1].sessions} == {
        s.client_id for s in reporter.sessions()}
