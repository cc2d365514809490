"""Reading a big fleet: in chunks, and whole only where the output needs it."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

from collector import fleet as fleet_module
from collector import status as check
from collector.fleet import SUMMARY_FIELDS, FleetView, read_fleet, read_hosts
from collector.settings import CollectorSettings
from wire.replies import server_time_ms


@pytest.fixture
def mixed_fleet(redis_client: redis.Redis, keys: Any, publish: Any, report: Any, event: Any,
                make_collector: Any) -> list[str]:
    """Seven hosts: healthy ones, a full disk, a damaged database, a big process,
    one with sessions tracked by its BBS, one silent for an hour."""
    publish(report("bbs-01", 1, sessions=2))
    publish(report("bbs-02", 1, disk=95.0))
    publish(report("bbs-03", 1, database_ok=False))
    publish(report("bbs-04", 1, rss=700.0))
    publish(report("bbs-05", 1, sessions=9))
    publish(event("connected", 1, host="bbs-05", client_id="192.0.2.9:4000",
                  state="connected", connected_at=time.time()))
    publish(report("bbs-06", 1))
    publish(report("bbs-07", 1))
    make_collector().drain()
    silent_ms = server_time_ms(redis_client) - 3_600_000
    redis_client.hset(keys.host("bbs-06"), "last_seen_ms", str(silent_ms))
    return [f"bbs-0{n}" for n in range(1, 8)]


@pytest.mark.parametrize("chunk", [1, 3, 1000])
def test_a_summary_read_judges_as_the_whole_read(
        redis_client: redis.Redis, keys: Any, mixed_fleet: list[str], chunk: int,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fleet_module, "READ_CHUNK", chunk)
    settings = CollectorSettings()
    # Both read at one moment, so that every age agrees to the millisecond.
    now_ms = server_time_ms(redis_client)

    def fleet_view(whole: bool) -> FleetView:
        views, missing = read_hosts(redis_client, keys, settings, now_ms, mixed_fleet, whole)
        return FleetView(now_ms, views, [], [], 0, missing)

    whole, summary = fleet_view(True), fleet_view(False)
    assert [v.host for v in summary.hosts] == mixed_fleet
    for before, after in zip(whole.hosts, summary.hosts, strict=True):
        assert (after.status, after.stale, after.sessions, after.age_s) == (
            before.status, before.stale, before.sessions, before.age_s), after.host
        assert after.check_statuses() == before.check_statuses(), after.host
    # A host with an unhealthy check is read whole: its problem names its limit.
    assert summary.hosts[1].state.raw == whole.hosts[1].state.raw
    # A healthy one holds its summary only.
    assert set(summary.hosts[0].state.raw) < set(whole.hosts[0].state.raw)
    assert set(summary.hosts[0].state.raw) <= {*SUMMARY_FIELDS, *(
        f"{name}.healthy" for name in whole.hosts[0].state.checks)}
    thresholds = check.Thresholds()
    assert check.fleet_result(summary, thresholds, settings, detail=False).first_line() == \
        check.fleet_result(whole, thresholds, settings).first_line()
    for metric in check.METRICS:
        limits = check.Thresholds(metric, critical=check.NagiosRange.parse("1"))
        assert check.fleet_result(summary, limits, settings, detail=False).first_line() == \
            check.fleet_result(whole, limits, settings).first_line(), metric


def test_hosts_without_state_are_missing_in_either_read(
        redis_client: redis.Redis, keys: Any, mixed_fleet: list[str]) -> None:
    redis_client.zadd(keys.hosts_index(), {"bbs-gone": 1})
    for whole in (True, False):
        view = read_fleet(redis_client, keys, CollectorSettings(), whole=whole)
        assert view.missing == ["bbs-gone"]
        assert len(view.hosts) == len(mixed_fleet)


def test_the_collectors_figures_are_those_of_running_collectors_heartbeats(
        redis_client: redis.Redis, keys: Any) -> None:
    from collector.selfmon import write_heartbeat

    settings = CollectorSettings()
    now_ms = server_time_ms(redis_client)
    figures = {"streams": 3, "streams_known": 6, "collectors": 2, "pending": 0, "lag": 0,
               "lag_s": 0.0, "oldest_pending_s": 0.0, "processed": 10}
    # c1 works off a backlog 75 s old; c2 is caught up; c3 stopped and c4 went
    # silent past ring_timeout_s: their last figures no longer count.
    write_heartbeat(redis_client, keys, "c1", now_ms, {
        **figures, "state": "running", "lag": 500, "lag_s": 75.0, "pending": 3})
    write_heartbeat(redis_client, keys, "c2", now_ms, {**figures, "state": "running"})
    write_heartbeat(redis_client, keys, "c3", now_ms, {
        **figures, "state": "stopped", "lag": 900, "lag_s": 900.0})
    silent_ms = now_ms - int(settings.ring_timeout_s * 1000) - 1000
    write_heartbeat(redis_client, keys, "c4", silent_ms, {
        **figures, "state": "running", "lag": 700, "lag_s": 700.0})
    fleet = read_fleet(redis_client, keys, settings)
    assert sorted(stats.collector for stats in fleet.running) == ["c1", "c2"]
    status, problems = check.judge_collectors(fleet, settings)
    assert status.name == "WARNING"
    assert problems == ["collector behind (c1: read 500 entries up to 75 s old with more "
                        "waiting; 3 pending)"]
    long = check._collector_long(fleet, settings)
    [c1] = [line for line in long if line.startswith("collector c1:")]
    assert c1.endswith(", reads 3 of 6 host streams, 2 collectors sharing the hosts, "
                       "lag 500 (oldest 75 s), 3 pending (oldest held 0 s)")
    [c3] = [line for line in long if line.startswith("collector c3:")]
    assert "reads" not in c3 and "lag" not in c3
    assert long[-1] == ("running collectors: 2, lag 500 (oldest 75 s), 3 pending (oldest held "
                        "0 s), 0 dead letters")
    # Caught up, c1 says so in its next heartbeat, and nothing is behind.
    write_heartbeat(redis_client, keys, "c1", now_ms, {**figures, "state": "running"})
    assert check.judge_collectors(read_fleet(redis_client, keys, settings), settings)[1] == []
    # An entry held past the claim time for an older one is behind too.
    write_heartbeat(redis_client, keys, "c2", now_ms, {
        **figures, "state": "running", "pending": 1, "oldest_pending_s": 900.0})
    assert check.judge_collectors(read_fleet(redis_client, keys, settings), settings)[1] == [
        "collector behind (c2: 1 pending; one held 900 s for an older entry of its stream)"]
