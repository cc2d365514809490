"""A collector with more streams than one XREADGROUP names, against the real
redis-server: it reads them in chunks, and with keyspace events it reads the
streams appended to (finding new hosts at once) instead of all of them."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import pytest
import redis

from collector.ingest import READ_CHUNK, Collector
from collector.settings import CollectorSettings
from tests.collector.conftest import FAST, make_report
from wire.keys import KeySpace
from wire.messages import stream_fields

HOSTS = READ_CHUNK  # two streams each: twice what one read names


def publish(client: redis.Redis, keys: KeySpace, host: str, seq: int) -> None:
    report = make_report(host, seq, sessions=seq)
    client.xadd(keys.reports_stream(host), dict(stream_fields(report)))  # type: ignore[arg-type]


def fleet(client: redis.Redis, keys: KeySpace) -> None:
    pipe = client.pipeline(transaction=False)
    for index in range(HOSTS):
        host = f"bbs-{index:03d}"
        pipe.xadd(keys.reports_stream(host), dict(stream_fields(make_report(host, 1))))
        pipe.xadd(keys.sessions_stream(host), {"m": b"\x80"})  # a dead letter, but a stream
    pipe.execute()


def recording(collector: Collector) -> list[list[str]]:
    """The streams named by each XREADGROUP of ``collector``'s reads of new entries."""
    reads: list[list[str]] = []
    read_chunk = collector._read_chunk

    def record(streams: Sequence[str], per_stream: int, block_ms: int | None) -> Any:
        reads.append(list(streams))
        return read_chunk(streams, per_stream, block_ms)

    collector._read_chunk = record  # type: ignore[method-assign]
    return reads


def make(client: redis.Redis, **settings: Any) -> Collector:
    values = {**FAST, "evaluate": False, "discovery_interval_s": 60.0, **settings}
    return Collector(client, KeySpace(), CollectorSettings(**values), name="wide")


def step_until(collector: Collector, done: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        collector.step()
        if done():
            return
    pytest.fail("not done in time")


def test_without_events_every_stream_is_read_in_chunks(redis_client: redis.Redis) -> None:
    keys = KeySpace()
    fleet(redis_client, keys)
    collector = make(redis_client)
    collector.drain()
    assert redis_client.zcard(keys.hosts_index()) == HOSTS
    reads = recording(collector)
    publish(redis_client, keys, "bbs-007", 2)
    step_until(collector, lambda: redis_client.hget(keys.host("bbs-007"), "seq") == b"2")
    assert reads and max(len(streams) for streams in reads) <= READ_CHUNK
    # A poll looks at every stream, in chunks.
    assert len({stream for streams in reads for stream in streams}) == 2 * HOSTS


@pytest.fixture
def listening(redis_server_factory: Any) -> tuple[redis.Redis, Collector]:
    """A fleet in a Redis that announces appends, and a caught-up collector
    that has heard an announcement."""
    server = redis_server_factory("--notify-keyspace-events", "Et")
    client = server.client()
    fleet(client, KeySpace())
    collector = make(client, poll_interval_ms=5_000, block_ms=200)
    collector.drain()
    collector.step()  # subscribes
    publish(client, KeySpace(), "bbs-001", 2)
    step_until(collector, lambda: collector.wakeups.active
               and client.hget(KeySpace().host("bbs-001"), "seq") == b"2")
    return client, collector


def test_keyspace_events_name_the_streams_to_read(
        listening: tuple[redis.Redis, Collector]) -> None:
    client, collector = listening
    keys = KeySpace()
    # Events heard: the next reads look only at what was appended to.
    reads = recording(collector)
    publish(client, keys, "bbs-007", 2)
    step_until(collector, lambda: client.hget(keys.host("bbs-007"), "seq") == b"2")
    assert [keys.reports_stream("bbs-007")] in reads
    assert all(len(streams) < READ_CHUNK for streams in reads)
    # A host nobody knew is found by its first append, long before discovery.
    publish(client, keys, "newcomer", 1)
    step_until(collector, lambda: client.hget(keys.host("newcomer"), "seq") == b"1")


def test_an_event_lost_delays_an_entry_and_loses_nothing(
        listening: tuple[redis.Redis, Collector]) -> None:
    client, collector = listening
    keys = KeySpace()
    # Events switched off: the append is not announced, the next full read finds it.
    client.config_set("notify-keyspace-events", "")
    publish(client, keys, "bbs-009", 2)
    step_until(collector, lambda: client.hget(keys.host("bbs-009"), "seq") == b"2")


def test_a_flood_of_announcements_is_dropped_for_a_read_of_everything(
        listening: tuple[redis.Redis, Collector]) -> None:
    from collector.wakeups import MAX_EVENTS

    client, collector = listening
    keys = KeySpace()
    # A backlog arriving at once: more announcements than are worth parsing.
    pipe = client.pipeline(transaction=False)
    for seq in range(3, 3 + MAX_EVENTS // HOSTS + 2):
        for index in range(HOSTS):
            host = f"bbs-{index:03d}"
            pipe.xadd(keys.reports_stream(host), dict(stream_fields(make_report(host, seq))))
    pipe.execute()
    reads = recording(collector)
    assert collector.wakeups.take() is None
    collector._note_appended(None)
    last = str(3 + MAX_EVENTS // HOSTS + 1).encode()
    step_until(collector, lambda: all(client.hget(keys.host(f"bbs-{index:03d}"), "seq") == last
                                      for index in range(HOSTS)))
    # It read every stream rather than those announced...
    assert len({stream for streams in reads for stream in streams}) == 2 * HOSTS
    # ... and, caught up, reads what is announced again.
    step_until(collector, lambda: collector.caught_up)
    collector.step()  # listens again
    later = recording(collector)
    publish(client, keys, "bbs-005", int(last) + 1)
    step_until(collector, lambda: client.hget(keys.host("bbs-005"), "seq") == b"%d" % (
        int(last) + 1))
    assert [keys.reports_stream("bbs-005")] in later
