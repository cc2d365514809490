"""Keepalive: hosts silent past their thresholds turn stale, by Redis's clock."""

from __future__ import annotations

import time
from typing import Any

import redis
from rq import Queue

from collector import keepalive
from collector.selfmon import server_time_ms
from collector.settings import CollectorSettings
from wire.keys import RQ_SERIALIZER
from wire.state import STALE_CRITICAL, STALE_NO, STALE_WARNING
from wire.status import Status


def test_stale_level_thresholds() -> None:
    settings = CollectorSettings(stale_warning_intervals=3, stale_critical_intervals=5)
    assert keepalive.stale_level(179, 60, settings) == STALE_NO
    assert keepalive.stale_level(181, 60, settings) == STALE_WARNING
    assert keepalive.stale_level(301, 60, settings) == STALE_CRITICAL
    assert keepalive.worse_stale(STALE_WARNING, STALE_NO) == STALE_WARNING
    assert keepalive.worse_stale(STALE_WARNING, STALE_CRITICAL) == STALE_CRITICAL


def test_host_status_includes_staleness() -> None:
    fields = {"report_status": "OK", "unhealthy": ""}
    assert keepalive.host_status(fields, STALE_WARNING) == Status.WARNING
    assert keepalive.host_status({"unhealthy": "database"}, STALE_NO) == Status.CRITICAL
    assert keepalive.host_status({"report_status": "WARNING"}, STALE_CRITICAL) == Status.CRITICAL


def jobs_for(client: redis.Redis, keys: Any, host: str) -> int:
    queue = Queue(keys.evaluate_queue(), connection=client, serializer=RQ_SERIALIZER)
    return sum(1 for job in queue.get_jobs() if list(job.args) == [host])


def wait_until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_transitions_and_recovery(redis_client: redis.Redis, keys: Any, publish: Any,
                                  report: Any, make_collector: Any) -> None:
    publish(report("bbs-01", 1, disk=95.0, interval=0.2))
    publish(report("bbs-02", 1, interval=60.0))
    collector = make_collector()
    collector.drain()
    assert collector.sweep() == []
    assert jobs_for(redis_client, keys, "bbs-01") == 1

    def stale(host: str) -> bytes | None:
        return redis_client.hget(keys.host(host), "stale")  # type: ignore[return-value]

    # Silent past 3 x 0.2 s: WARNING (it already was, for its disk).
    redis_client.delete(keys.evaluation_pending("bbs-01"))  # as the alerter's job does
    wait_until(lambda: bool(collector.sweep()))
    assert stale("bbs-01") == b"warning"
    assert redis_client.hget(keys.host("bbs-01"), "status") == b"WARNING"
    assert jobs_for(redis_client, keys, "bbs-01") == 2
    # Past 5 x 0.2 s: CRITICAL.
    redis_client.delete(keys.evaluation_pending("bbs-01"))
    wait_until(lambda: bool(collector.sweep()))
    assert stale("bbs-01") == b"critical"
    assert redis_client.hget(keys.host("bbs-01"), "status") == b"CRITICAL"
    assert jobs_for(redis_client, keys, "bbs-01") == 3
    # Nothing changes on the next sweep: no new transition, no new job.
    redis_client.delete(keys.evaluation_pending("bbs-01"))
    assert collector.sweep() == []
    assert jobs_for(redis_client, keys, "bbs-01") == 3
    # The next report clears it.
    publish(report("bbs-01", 2, disk=50.0, interval=0.2))
    collector.drain()
    assert stale("bbs-01") == b"no"
    assert redis_client.hget(keys.host("bbs-01"), "status") == b"OK"
    assert jobs_for(redis_client, keys, "bbs-01") == 4
    assert stale("bbs-02") == b"no"
    assert collector.counters.stale_transitions == 2


def test_a_sweep_never_overwrites_a_fresh_report(redis_client: redis.Redis, keys: Any,
                                                 publish: Any, report: Any,
                                                 make_collector: Any) -> None:
    publish(report("bbs-01", 1, interval=0.2))
    collector = make_collector()
    collector.drain()
    time.sleep(0.5)
    judged_at = server_time_ms(redis_client)
    # A report lands between the sweep's read and its write.
    publish(report("bbs-01", 2, interval=0.2))
    collector.drain()
    from collector.scripts import STALE_SCRIPT

    old_last_seen = "1"
    assert STALE_SCRIPT.call(redis_client, [keys.host("bbs-01")],
                             [old_last_seen, STALE_CRITICAL, "CRITICAL"]) == 0
    assert keepalive.sweep(redis_client, keys, collector.settings, judged_at) == []
    assert redis_client.hget(keys.host("bbs-01"), "stale") == b"no"


def test_no_sweep_while_working_off_a_backlog(redis_client: redis.Redis, keys: Any,
                                              publish: Any, report: Any,
                                              make_collector: Any) -> None:
    publish(report("bbs-01", 1, interval=0.2))
    collector = make_collector(batch_size=1)
    collector.drain()
    time.sleep(1.1)
    for seq in range(2, 5):
        publish(report("bbs-01", seq, interval=0.2, observed_at=time.time()))
    collector.read(None)
    assert collector.caught_up is False
    collector._next_sweep = 0
    collector.step()  # reads one more, backlog remains: no sweep
    assert redis_client.hget(keys.host("bbs-01"), "stale") == b"no"
    collector.drain()
    assert collector.caught_up is True


def test_forgotten_hosts_leave_the_index(redis_client: redis.Redis, keys: Any, publish: Any,
                                        report: Any, make_collector: Any) -> None:
    publish(report("bbs-01", 1))
    collector = make_collector()
    collector.drain()
    redis_client.delete(keys.host("bbs-01"))
    collector.sweep()
    assert redis_client.zcard(keys.hosts_index()) == 0
