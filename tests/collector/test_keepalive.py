"""Keepalive: hosts silent past their thresholds turn stale, by Redis's clock."""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest
import redis
from rq import Queue

from collector import keepalive
from collector.settings import CollectorSettings
from wire.keys import RQ_SERIALIZER
from wire.replies import server_time_ms
from wire.state import STALE_CRITICAL, STALE_NO, STALE_WARNING
from wire.status import Status


def test_stale_level_thresholds() -> None:
    settings = CollectorSettings(stale_warning_intervals=3, stale_critical_intervals=5)
    assert keepalive.stale_level(179, 60, settings) == STALE_NO
    assert keepalive.stale_level(181, 60, settings) == STALE_WARNING
    assert keepalive.stale_level(301, 60, settings) == STALE_CRITICAL
    assert keepalive.worse_stale(STALE_WARNING, STALE_NO) == STALE_WARNING
    assert keepalive.worse_stale(STALE_WARNING, STALE_CRITICAL) == STALE_CRITICAL


# Silent for exactly N intervals is not yet past N: stale only beyond it
# (docs/collector.md). At 60 s intervals every figure below is exact in binary.
BOUNDARY_CASES = [
    pytest.param(180_000, STALE_NO, id="exactly-3-intervals"),
    pytest.param(180_001, STALE_WARNING, id="just-past-3-intervals"),
    pytest.param(300_000, STALE_WARNING, id="exactly-5-intervals"),
    pytest.param(300_001, STALE_CRITICAL, id="just-past-5-intervals"),
]


@pytest.mark.parametrize(("silent_ms", "level"), BOUNDARY_CASES)
def test_stale_level_at_the_thresholds(silent_ms: int, level: str) -> None:
    settings = CollectorSettings(stale_warning_intervals=3, stale_critical_intervals=5)
    assert keepalive.stale_level(silent_ms / 1000, 60, settings) == level


def test_the_sweep_and_the_readers_agree_at_the_thresholds(
        redis_client: redis.Redis, keys: Any, publish: Any, report: Any, make_collector: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from collector.fleet import read_hosts

    collector = make_collector(stale_warning_intervals=3, stale_critical_intervals=5)
    hosts = {f"bbs-{index}": case.values for index, case in enumerate(BOUNDARY_CASES)}
    for host in hosts:
        publish(report(host, 1, interval=60.0))
    collector.drain()
    # One moment of judgement, each host last seen its case's silence before it.
    now_ms = server_time_ms(redis_client)
    for host, (silent_ms, _) in hosts.items():
        redis_client.hset(keys.host(host), "last_seen_ms", str(now_ms - silent_ms))
    # Hashes changed by hand are not rescheduled: make them all due now.
    redis_client.zadd(keys.hosts_due(), dict.fromkeys(hosts, now_ms))
    # Those last-seen times lie before this Redis started: that would read as
    # an outage and grant a grace, which is tested on its own above.
    monkeypatch.setattr(keepalive, "detect_outage", lambda *args, **kwargs: None)
    expected = {host: level for host, (_, level) in hosts.items()}

    views, missing = read_hosts(redis_client, keys, collector.settings, now_ms, list(hosts))
    assert not missing
    assert {view.host: view.stale for view in views} == expected

    made = keepalive.sweep(redis_client, keys, collector.settings, now_ms)
    assert {t.host: t.after for t in made} == {
        host: level for host, level in expected.items() if level != STALE_NO}
    assert {host: stale_of(redis_client, keys, host) for host in hosts} == {
        host: level.encode() for host, level in expected.items()}


def test_host_status_includes_staleness() -> None:
    fields = {"report_status": "OK", "unhealthy": ""}
    assert keepalive.host_status(fields, STALE_WARNING) == Status.WARNING
    assert keepalive.host_status({"unhealthy": "database"}, STALE_NO) == Status.CRITICAL
    assert keepalive.host_status({"report_status": "WARNING"}, STALE_CRITICAL) == Status.CRITICAL


def jobs_for(client: redis.Redis, keys: Any, host: str) -> int:
    queue = Queue(keys.evaluate_queue(), connection=client, serializer=RQ_SERIALIZER)
    return sum(1 for job in queue.get_jobs() if host in job.args)


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


def test_a_lone_report_is_handed_to_the_alerter_at_once(redis_client: redis.Redis, keys: Any,
                                                        publish: Any, report: Any,
                                                        make_collector: Any) -> None:
    # Caught up, the collector waits for its scripts' replies before the next
    # (blocking) read: the job of a report arriving alone must not wait for
    # the next entry or the end of that read.
    collector = make_collector(block_ms=300, sweep_interval_s=60, heartbeat_interval_s=60,
                               ring_timeout_s=120, claim_interval_s=60)
    # The host has reported before: its stream is known (a new host's stream
    # is found by the next discovery pass, which is not what this is about).
    publish(report("bbs-01", 1))
    collector.setup()
    assert collector.step() == 1  # read with the first round's inspection and heartbeat
    redis_client.delete(keys.evaluation_pending("bbs-01"))  # the alerter took its job
    publish(report("bbs-01", 2, disk=95.0))
    assert collector.step() == 1
    assert jobs_for(redis_client, keys, "bbs-01") == 2
    assert collector.counters.applied == 2


def test_a_report_as_before_still_ends_the_staleness(redis_client: redis.Redis, keys: Any,
                                                     publish: Any, report: Any,
                                                     make_collector: Any) -> None:
    # Its status did not change, so the difference does not carry it: the
    # script writes it because the sweep marked the host stale meanwhile.
    publish(report("bbs-01", 1, interval=0.2))
    collector = make_collector()
    collector.drain()
    wait_until(lambda: bool(collector.sweep()))
    fields = redis_client.hgetall(keys.host("bbs-01"))
    assert (fields[b"stale"], fields[b"status"], fields[b"report_status"]) == (
        b"warning", b"WARNING", b"OK")
    publish(report("bbs-01", 2, interval=0.2))
    collector.drain()
    fields = redis_client.hgetall(keys.host("bbs-01"))
    assert (fields[b"stale"], fields[b"status"], fields[b"report_status"], fields[b"seq"]) == (
        b"no", b"OK", b"OK", b"2")


def test_a_sweep_never_overwrites_a_fresh_report(redis_client: redis.Redis, keys: Any,
                                                 publish: Any, report: Any,
                                                 make_collector: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from collector.scripts import STALE

    publish(report("bbs-01", 1, interval=0.2))
    collector = make_collector()
    collector.drain()
    last_seen = int(redis_client.hget(keys.host("bbs-01"), "last_seen_ms"))  # type: ignore[arg-type]
    # Judged 50 intervals after report 1: the sweep reads it and means CRITICAL.
    judged_at = last_seen + 10_000

    read_rows = keepalive._rows

    def a_report_lands_meanwhile(*args: Any, **kwargs: Any) -> Any:
        # Called for the sweep's read of the hashes: report 2 lands right after.
        rows = read_rows(*args, **kwargs)
        publish(report("bbs-01", 2, interval=0.2))
        collector.drain()
        return rows

    writes: list[Any] = []
    register_script = redis_client.register_script

    def recording_register_script(source: str) -> Any:
        script = register_script(source)
        if source != STALE:
            return script

        def recorded(keys: Any = None, args: Any = None, client: Any = None) -> Any:
            writes.append([str(arg) for arg in args])
            return script(keys=keys, args=args, client=client)
        return recorded

    # No outage: the whole silence counts.
    monkeypatch.setattr(keepalive, "detect_outage", lambda *args, **kwargs: None)
    monkeypatch.setattr(keepalive, "_rows", a_report_lands_meanwhile)
    monkeypatch.setattr(redis_client, "register_script", recording_register_script)
    assert keepalive.sweep(redis_client, keys, collector.settings, judged_at) == []
    # The sweep did try to write its level, judged on report 1...
    assert writes == [["bbs-01", str(last_seen), STALE_CRITICAL, "CRITICAL", ""]]
    # ... and the script refused it: report 2 stands.
    fields = redis_client.hgetall(keys.host("bbs-01"))
    assert (fields[b"seq"], fields[b"stale"], fields[b"status"]) == (b"2", b"no", b"OK")


def test_no_sweep_while_working_off_a_backlog(redis_client: redis.Redis, keys: Any,
                                              publish: Any, report: Any,
                                              make_collector: Any) -> None:
    from collector.ingest import MIN_PER_STREAM

    publish(report("bbs-01", 1, interval=0.2))
    collector = make_collector(batch_size=1)
    collector.drain()
    time.sleep(1.1)
    # A read takes at least MIN_PER_STREAM entries of a stream: more than
    # two reads' worth leaves a backlog after the step below.
    for seq in range(2, 3 * MIN_PER_STREAM + 2):
        publish(report("bbs-01", seq, interval=0.2, observed_at=time.time()))
    collector.read(None)
    assert collector.caught_up is False
    collector._next_sweep = 0
    collector.step()  # reads one more, backlog remains: no sweep
    assert redis_client.hget(keys.host("bbs-01"), "stale") == b"no"
    collector.drain()
    assert collector.caught_up is True


def test_hosts_deleted_by_hand_leave_the_indexes_when_due(
        redis_client: redis.Redis, keys: Any, publish: Any, report: Any,
        make_collector: Any) -> None:
    publish(report("bbs-01", 1, interval=0.2))
    collector = make_collector()
    collector.drain()
    redis_client.delete(keys.host("bbs-01"))
    time.sleep(0.7)  # due three intervals after its report
    assert collector.sweep() == []
    assert redis_client.zcard(keys.hosts_index()) == 0
    assert redis_client.zcard(keys.hosts_due()) == 0


# -- after an outage of Redis ---------------------------------------------------------------


def test_judged_stale_holds_but_never_lowers_a_level() -> None:
    settings = CollectorSettings(stale_warning_intervals=3, stale_critical_intervals=5)
    # Silent 400 s at a 60 s interval, but only 10 s of it count: no new level...
    assert keepalive.judged_stale(400, 10, 60, STALE_NO, settings) == STALE_NO
    # ... and a level reached before the outage stays.
    assert keepalive.judged_stale(400, 10, 60, STALE_WARNING, settings) == STALE_WARNING
    # Counting silence raises it as far as it goes.
    assert keepalive.judged_stale(400, 400, 60, STALE_WARNING, settings) == STALE_CRITICAL
    assert keepalive.judged_stale(400, 200, 60, STALE_NO, settings) == STALE_WARNING
    # A host that reported (real silence short) is judged by that.
    assert keepalive.judged_stale(5, 5, 60, STALE_CRITICAL, settings) == STALE_NO
    assert keepalive.judged_age_s(10_000, 4_000, None) == 6.0
    assert keepalive.judged_age_s(10_000, 4_000, 8_000) == 2.0
    assert keepalive.judged_age_s(10_000, 4_000, 12_000) == 0.0
    assert keepalive.grace_until({"grace_until_ms": "123"}) == 123
    assert keepalive.grace_until({"grace_until_ms": "x"}) is None


def test_the_grace_is_as_long_as_the_outage_up_to_a_cap() -> None:
    assert keepalive.Outage(ended_ms=100_000, lasted_ms=3_000).grace_until_ms == 103_000
    cap = int(keepalive.OUTAGE_GRACE_MAX_S * 1000)
    assert keepalive.Outage(ended_ms=100_000, lasted_ms=3_600_000).grace_until_ms == \
        100_000 + cap
    settings = CollectorSettings(sweep_interval_s=5.0)
    assert keepalive.contact_gap_ms(settings) == 11_000


def stale_of(client: redis.Redis, keys: Any, host: str) -> bytes | None:
    return client.hget(keys.host(host), "stale")  # type: ignore[return-value]


def test_a_redis_restart_does_not_make_hosts_stale(redis_server_factory: Any, keys: Any,
                                                   report: Any, make_collector: Any) -> None:
    """Redis killed and restarted from its AOF while the hosts' agents could not
    report: nobody goes stale for that; a host already stale stays so; without
    reports after the grace, the silence counts again."""
    from wire.messages import encode

    server = redis_server_factory("--appendonly", "yes", "--appendfsync", "always")
    client = server.client(socket_timeout=2, socket_connect_timeout=2)
    collector = make_collector(client=client, name="restart")

    def publish(host: str, seq: int) -> None:
        client.xadd(keys.reports_stream(host), {"m": encode(report(host, seq, interval=0.2))})

    publish("bbs-dead", 1)
    collector.drain()

    def swept_to_critical() -> bool:
        collector.sweep()
        return stale_of(client, keys, "bbs-dead") == b"critical"

    wait_until(swept_to_critical)
    publish("bbs-live", 1)
    collector.drain()
    assert collector.sweep() == []
    server.stop(signal.SIGKILL)
    time.sleep(1.2)  # the agents cannot report: past 5 x 0.2 s of silence
    server.start()
    wait_until(lambda: _answers(client))
    assert collector.sweep() == []  # no transition at all
    assert stale_of(client, keys, "bbs-live") == b"no"
    assert stale_of(client, keys, "bbs-dead") == b"critical"
    grace = int(client.hget(keys.host("bbs-live"), "grace_until_ms") or 0)
    assert grace > server_time_ms(client)
    assert client.hget(keys.host("bbs-live"), "grace_until") is not None
    # The readers judge the same way.
    from collector.fleet import read_fleet

    views = {v.host: v for v in read_fleet(client, keys, collector.settings).hosts}
    assert views["bbs-live"].stale == STALE_NO and views["bbs-live"].age_s > 1.0
    assert views["bbs-dead"].stale == STALE_CRITICAL
    # A report drops the grace with the rest of the old hash.
    publish("bbs-live", 2)
    collector.drain()
    assert client.hget(keys.host("bbs-live"), "grace_until_ms") is None
    # Silent from then on: judged stale once the grace has passed.
    wait_until(lambda: bool(collector.sweep()) and
               stale_of(client, keys, "bbs-live") != b"no", timeout=15)


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def test_a_collector_cut_off_from_redis_grants_the_grace(redis_client: redis.Redis, keys: Any,
                                                         publish: Any, report: Any,
                                                         make_collector: Any) -> None:
    """No restart, but this collector's sweeps stopped for longer than
    contact_gap_ms (it could not reach Redis): silence up to now does not count."""
    publish(report("bbs-01", 1, interval=0.2))
    collector = make_collector()  # sweep_interval_s 0.05: a gap over 1.1 s is an outage
    collector.drain()
    assert collector.sweep() == []
    time.sleep(1.3)
    assert collector.sweep() == []
    assert stale_of(redis_client, keys, "bbs-01") == b"no"
    assert int(redis_client.hget(keys.host("bbs-01"), "grace_until_ms") or 0) > 0
    # Sweeping regularly again, the silence counts from the grace's end on.
    wait_until(lambda: bool(collector.sweep()), timeout=10)
    assert stale_of(redis_client, keys, "bbs-01") in (b"warning", b"critical")


def test_a_sweep_without_info_still_works(redis_client: redis.Redis, keys: Any, publish: Any,
                                         report: Any, make_collector: Any,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """An ACL or proxy refusing INFO: no restart detection, the sweep goes on."""
    publish(report("bbs-01", 1, interval=0.2))
    collector = make_collector()
    collector.drain()

    def refused(*args: Any, **kwargs: Any) -> Any:
        raise redis.exceptions.NoPermissionError("this user has no permissions to run 'info'")

    monkeypatch.setattr(redis_client, "info", refused)
    assert keepalive.redis_started_ms(redis_client, 0) is None
    wait_until(lambda: bool(collector.sweep()))
    assert stale_of(redis_client, keys, "bbs-01") == b"warning"
