"""Several collectors on one counted backlog, against the real redis-server:
every report of every host is applied once and in the host's order, while
both run, while one stalls, and when one is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from collector.ingest import Collector
from collector.settings import CollectorSettings
from tests.collector.conftest import make_report
from wire.keys import COLLECTOR_GROUP, KeySpace
from wire.messages import stream_fields

HOSTS = 40
REPORTS = 75  # 3,000 reports in all

SHARING = {
    "evaluate": False,
    "block_ms": 50,
    "batch_size": 64,
    "heartbeat_interval_s": 0.1,
    "ring_timeout_s": 0.6,
    "discovery_interval_s": 0.1,
    "claim_interval_s": 0.2,
    "claim_min_idle_s": 30.0,
    "sweep_interval_s": 60.0,
    "max_backoff_s": 0.2,
}


def host_id(index: int) -> str:
    return f"bbs-{index:03d}"


def publish_backlog(client: redis.Redis, keys: KeySpace) -> int:
    """REPORTS reports of each of HOSTS hosts, seq i carrying i as its sessions figure."""
    pipe = client.pipeline(transaction=False)
    for seq in range(1, REPORTS + 1):
        for index in range(HOSTS):
            report = make_report(host_id(index), seq, sessions=seq, disk=40.0 + seq % 50)
            pipe.xadd(keys.reports_stream(report.host), dict(stream_fields(report)))
    pipe.execute()
    return HOSTS * REPORTS


def assert_each_report_applied_once_in_order(client: redis.Redis, keys: KeySpace) -> None:
    for index in range(HOSTS):
        host = host_id(index)
        lines = client.lrange(keys.host_history(host), 0, -1)
        applied = [int(line.decode().split(",")[1]) for line in reversed(lines)]
        assert applied == list(range(1, REPORTS + 1)), host
        assert client.hget(keys.host(host), "seq") == str(REPORTS).encode()
        assert int(client.xpending(keys.reports_stream(host), COLLECTOR_GROUP)["pending"]) == 0


def wait_for(condition: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("condition not met in time")
        time.sleep(0.05)


def all_applied(client: redis.Redis, keys: KeySpace) -> bool:
    return all(client.hget(keys.host(host_id(i)), "seq") == str(REPORTS).encode()
               for i in range(HOSTS))


class Running:
    """Collectors running their loops on threads."""

    def __init__(self) -> None:
        self.stops: list[threading.Event] = []
        self.threads: list[threading.Thread] = []

    def start(self, collector: Collector) -> None:
        stop = threading.Event()
        thread = threading.Thread(target=collector.run, args=(stop,), daemon=True)
        self.stops.append(stop)
        self.threads.append(thread)
        thread.start()

    def stop(self) -> None:
        for stop in self.stops:
            stop.set()
        for thread in self.threads:
            thread.join(10)


@pytest.fixture
def running() -> Iterator[Running]:
    loops = Running()
    yield loops
    loops.stop()


def sharing_collector(url: str, keys: KeySpace, name: str) -> Collector:
    return Collector(redis.Redis.from_url(url), keys, CollectorSettings(**SHARING), name=name)


def test_two_collectors_apply_every_report_once_in_order(redis_url: str,
                                                         redis_client: redis.Redis,
                                                         running: Running) -> None:
    keys = KeySpace()
    total = publish_backlog(redis_client, keys)
    first = sharing_collector(redis_url, keys, "first")
    second = sharing_collector(redis_url, keys, "second")
    running.start(first)
    running.start(second)
    wait_for(lambda: all_applied(redis_client, keys))
    running.stop()
    assert_each_report_applied_once_in_order(redis_client, keys)
    applied = first.counters.applied + second.counters.applied
    assert applied == total
    # Both did part of the work.
    assert first.counters.applied and second.counters.applied


def test_a_stalled_collector_loses_its_hosts_and_nothing_is_lost(redis_url: str,
                                                                 redis_client: redis.Redis,
                                                                 running: Running) -> None:
    keys = KeySpace()
    total = publish_backlog(redis_client, keys)
    healthy = sharing_collector(redis_url, keys, "healthy")
    stalling = sharing_collector(redis_url, keys, "stalling")
    # The stalling collector hangs in the middle of applying a batch (a
    # stopped process, a swapped-out machine) while holding what it read.
    release = threading.Event()
    stalled = threading.Event()
    apply = stalling.applier.apply
    batches = []

    def hang_on_third_batch(writes: Any) -> None:
        batches.append(len(writes))
        if len(batches) == 3:
            stalled.set()
            release.wait(30)
        apply(writes)

    stalling.applier.apply = hang_on_third_batch  # type: ignore[method-assign]
    running.start(stalling)
    wait_for(stalled.is_set)
    running.start(healthy)
    # The healthy one takes every host once the stalled one left the ring,
    # claiming what the stalled one holds.
    wait_for(lambda: all_applied(redis_client, keys))
    assert_each_report_applied_once_in_order(redis_client, keys)
    # The stalled one wakes up and applies its stale batch: nothing changes.
    release.set()
    time.sleep(1.0)
    running.stop()
    assert_each_report_applied_once_in_order(redis_client, keys)
    assert healthy.counters.reclaimed > 0
    assert healthy.counters.applied + stalling.counters.applied == total


def test_a_killed_collector_loses_nothing(redis_server: Any, redis_client: redis.Redis,
                                         running: Running, tmp_path: Any) -> None:
    keys = KeySpace()
    publish_backlog(redis_client, keys)
    config = tmp_path / "collector.toml"
    config.write_text("[collector]\n" + "".join(
        f"{name} = {str(value).lower() if isinstance(value, bool) else value}\n"
        for name, value in SHARING.items()))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MTBBS_")},
           "MTBBS_CONFIG": str(config)}
    process = subprocess.Popen(
        [sys.executable, "-m", "collector", "run", "--name", "doomed", "--redis-url",
         redis_server.url], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Killed once it has applied something and holds more.
        wait_for(lambda: sum(redis_client.llen(keys.host_history(host_id(i)))
                             for i in range(HOSTS)) > 200, timeout=30)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(10)
    survivor = sharing_collector(redis_server.url, keys, "survivor")
    running.start(survivor)
    wait_for(lambda: all_applied(redis_client, keys))
    running.stop()
    assert_each_report_applied_once_in_order(redis_client, keys)
