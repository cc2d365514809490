"""Helpers for the session reporter tests: reading the sessions stream back."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from agent.reporter import SessionReporter
from wire.keys import KeySpace
from wire.messages import SessionEvent, decode_entry

# The host the reporters of these tests serve unless a test names another.
HOST = "bbs-01"
STREAM = KeySpace().sessions_stream(HOST)


def read_events(client: redis.Redis, stream: str = STREAM) -> list[SessionEvent]:
    """Every event on a sessions stream (``HOST``'s by default), decoded with the wire codec."""
    events = []
    for _entry_id, fields in client.xrange(stream):
        message = decode_entry(fields)
        assert isinstance(message, SessionEvent)
        events.append(message)
    return events


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll ``predicate`` until it returns something true (bounded in time)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.02)


@pytest.fixture
def make_reporter() -> Iterator[Callable[..., SessionReporter]]:
    """``make_reporter(url, **options)``: a started reporter, closed after the test."""
    made: list[SessionReporter] = []

    def make(url: str | None, host: str = HOST, *, start: bool = True,
             **options: Any) -> SessionReporter:
        reporter = SessionReporter(url, host, **options)
        made.append(reporter)
        return reporter.start() if start else reporter

    yield make
    for reporter in made:
        reporter.close(timeout=2)


@pytest.fixture
def events() -> Callable[..., list[SessionEvent]]:
    """``events(client)``: the decoded events of ``HOST``'s sessions stream."""
    return read_events


@pytest.fixture
def until() -> Callable[..., Any]:
    """``until(predicate, timeout)``: bounded polling."""
    return wait_for
