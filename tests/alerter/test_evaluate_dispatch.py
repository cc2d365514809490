"""Evaluation, storm control and delivery against the real redis-server (no worker)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import redis
from rq import Queue, Retry
from rq.registry import ScheduledJobRegistry

from alerter import dispatch
from alerter import silences as silence_store
from alerter.evaluate import active_hosts, evaluate_hosts
from wire.keys import RQ_SERIALIZER, KeySpace


def slack_doc(sink: Any, **alerter: Any) -> dict[str, Any]:
    return {"slack": {"webhook_url": sink.url}, "alerter": alerter}


def alert(client: redis.Redis, keys: KeySpace, host: str, check: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in client.hgetall(keys.alert(host, check)).items()}


def buffered(client: redis.Redis, keys: KeySpace, channel: str = "slack") -> list[dict[str, Any]]:
    return [json.loads(x) for x in client.lrange(keys.digest_buffer(channel), 0, -1)]


def notify_jobs(client: redis.Redis, keys: KeySpace) -> list[Any]:
    return Queue(keys.notify_queue(), connection=client, serializer=RQ_SERIALIZER).get_jobs()


def log(client: redis.Redis, keys: KeySpace) -> list[dict[str, Any]]:
    return [json.loads(x) for x in client.lrange(keys.notification_log(), 0, -1)][::-1]


def test_a_breach_is_stored_and_its_notice_buffered_in_the_same_step(
        make_context: Any, sink: Any, hosts: Any, redis_client: redis.Redis,
        keys: KeySpace) -> None:
    ctx = make_context(slack_doc(sink))
    hosts.write("bbs-01", disk=95.0)
    redis_client.set(keys.evaluation_pending("bbs-01"), 1)
    outcome = evaluate_hosts(ctx, ["bbs-01"], drain_channels=False)
    assert not redis_client.exists(keys.evaluation_pending("bbs-01"))
    assert outcome.transitions == 1
    state = alert(redis_client, keys, "bbs-01", "disk_space")
    assert state["state"] == "firing" and state["severity"] == "warning"
    assert state["notified"] == "firing:warning"
    assert redis_client.sismember(keys.alerts_index(), "bbs-01/disk_space")
    [notice] = buffered(redis_client, keys)
    assert notice["id"] == outcome.notices[0] and notice["kind"] == "firing"
    assert notice["figures"]["disk_space.percent_used"] == "95.0"
    assert [e["outcome"] for e in log(redis_client, keys)] == ["queued"]
    # The same report again: nothing new.
    assert evaluate_hosts(ctx, ["bbs-01"], drain_channels=False).notices == []
    assert len(buffered(redis_client, keys)) == 1


def test_a_healthy_fleet_writes_no_alert_state(make_context: Any, hosts: Any,
                                                redis_client: redis.Redis, keys: KeySpace
                                                ) -> None:
    ctx = make_context()
    for index in range(20):
        hosts.write(f"bbs-{index:02d}")
    outcome = evaluate_hosts(ctx, [f"bbs-{i:02d}" for i in range(20)] + ["ghost", "bad id!"])
    assert outcome.hosts == 20 and outcome.missing == 1 and outcome.transitions == 0
    assert redis_client.keys(f"{keys.prefix}alert:*") == []


def test_concurrent_evaluations_fire_once(make_context: Any, sink: Any, hosts: Any,
                                          redis_client: redis.Redis, keys: KeySpace) -> None:
    ctx = make_context(slack_doc(sink))
    hosts.write("bbs-01", database=False)
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait(5)
            evaluate_hosts(ctx, ["bbs-01"], drain_channels=False)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert not errors
    notices = buffered(redis_client, keys)
    assert [(n["check"], n["kind"], n["severity"]) for n in notices] == \
        [("database", "firing", "critical")]
    assert alert(redis_client, keys, "bbs-01", "database")["seq"] == "1"


def test_a_stale_host_inhibits_its_other_checks(make_context: Any, sink: Any, hosts: Any,
                                                redis_client: redis.Redis, keys: KeySpace
                                                ) -> None:
    ctx = make_context(slack_doc(sink))
    hosts.write("bbs-01", disk=95.0)
    evaluate_hosts(ctx, ["bbs-01"], drain_channels=False)
    # Stale: the disk figure is old news; its alert neither resolves nor repeats.
    hosts.write("bbs-01", disk=50.0, stale="warning")
    evaluate_hosts(ctx, ["bbs-01"], drain_channels=False)
    hosts.write("bbs-01", disk=50.0, stale="critical")
    evaluate_hosts(ctx, ["bbs-01"], drain_channels=False)
    kinds = [(n["check"], n["kind"], n["severity"]) for n in buffered(redis_client, keys)]
    assert kinds == [("disk_space", "firing", "warning"), ("stale", "firing", "warning"),
                     ("stale", "firing", "critical")]
    assert alert(redis_client, keys, "bbs-01", "disk_space")["state"] == "firing"
    # A host that breaches only while stale fires nothing for that check.
    hosts.write("bbs-02", database=False, stale="warning")
    evaluate_hosts(ctx, ["bbs-02"], drain_channels=False)
    assert not redis_client.exists(keys.alert("bbs-02", "database"))
    # Back: fresh data is judged again.
    hosts.write("bbs-01", disk=50.0, stale="no")
    evaluate_hosts(ctx, ["bbs-01"], drain_channels=False)
    kinds = [(n["check"], n["kind"]) for n in buffered(redis_client, keys)
             if n["host"] == "bbs-01"][3:]
    assert sorted(kinds) == [("disk_space", "resolved"), ("stale", "resolved")]


def test_a_silence_suppresses_and_logs(make_context: Any, sink: Any, hosts: Any,
                                       redis_client: redis.Redis, keys: KeySpace) -> None:
    ctx = make_context(slack_doc(sink))
    now = dispatch.now_ms(redis_client)
    silence = silence_store.make_silence(host="bbs-*", check="disk_space", now_ms=now,
                                         duration_s=3600, reason="disk swap")
    silence_store.add(redis_client, keys, silence)
    hosts.write("bbs-01", disk=95.0, database=False)
    evaluate_hosts(ctx, ["bbs-01"], drain_channels=False)
    assert [n["check"] for n in buffered(redis_client, keys)] == ["database"]
    suppressed = [e for e in log(redis_client, keys) if e["outcome"] == "suppressed"]
    assert [(e["check"], e["detail"]) for e in suppressed] == \
        [("disk_space", f"silence {silence.id}")]
    assert alert(redis_client, keys, "bbs-01", "disk_space")["state"] == "firing"


def test_notices_nobody_routes_are_logged(make_context: Any, sink: Any, hosts: Any,
                                          redis_client: redis.Redis, keys: KeySpace) -> None:
    ctx = make_context({**slack_doc(sink),
                        "rules": {"routes": [{"severity": ["critical"], "channels": ["slack"]}]}})
    hosts.write("bbs-01", disk=95.0)
    evaluate_hosts(ctx, ["bbs-01"], drain_channels=False)
    assert buffered(redis_client, keys) == []
    assert [e["outcome"] for e in log(redis_client, keys)] == ["unrouted"]


def test_a_rule_that_stops_applying_resolves(make_context: Any, sink: Any, hosts: Any,
                                             redis_client: redis.Redis, keys: KeySpace) -> None:
    ctx = make_context(slack_doc(sink))
    hosts.write("bbs-01", disk=95.0)
    evaluate_hosts(ctx, ["bbs-01"], drain_channels=False)
    ctx = make_context({**slack_doc(sink), "rules": {"disk_space": {"enabled": False}}})
    hosts.write("bbs-01", disk=95.0)
    evaluate_hosts(ctx, ["bbs-01"], drain_channels=False)
    assert [n["kind"] for n in buffered(redis_client, keys)] == ["firing", "resolved"]


def test_the_first_alert_goes_at_once_and_a_storm_waits_for_one_digest(
        make_context: Any, sink: Any, hosts: Any, redis_client: redis.Redis,
        keys: KeySpace) -> None:
    ctx = make_context(slack_doc(sink, digest_window=30.0))
    for index in range(12):
        hosts.write(f"bbs-{index:02d}", database=False)
        evaluate_hosts(ctx, [f"bbs-{index:02d}"])
    [first] = notify_jobs(redis_client, keys)
    channel, delivery = first.args
    assert channel == "slack" and len(delivery["notifications"]) == 1
    assert len(buffered(redis_client, keys)) == 11
    assert redis_client.exists(keys.digest_due("slack"))
    scheduled = ScheduledJobRegistry(keys.notify_queue(), connection=redis_client,
                                     serializer=RQ_SERIALIZER).get_job_ids()
    assert len(scheduled) == 1  # one flush for the whole storm
    # The flush, once due, sends the eleven as one message.
    redis_client.delete(keys.channel_rate("slack"))
    assert dispatch.flush(ctx, "slack") == "sent"
    jobs = notify_jobs(redis_client, keys)
    assert [len(j.args[1]["notifications"]) for j in jobs] == [1, 11]
    assert buffered(redis_client, keys) == []


def test_the_rate_limit_defers_to_a_digest(make_context: Any, sink: Any, hosts: Any,
                                           redis_client: redis.Redis, keys: KeySpace) -> None:
    ctx = make_context(slack_doc(sink, rate_limit=2, rate_period=60.0, digest_max=3))
    for index in range(7):
        hosts.write(f"bbs-{index:02d}", database=False)
        evaluate_hosts(ctx, [f"bbs-{index:02d}"])
    assert [len(j.args[1]["notifications"]) for j in notify_jobs(redis_client, keys)] == [1, 1]
    assert len(buffered(redis_client, keys)) == 5
    ttl = redis_client.pttl(keys.digest_due("slack"))
    assert 50_000 < ttl <= 60_000 + dispatch.DUE_GRACE_MS
    # digest_max caps one message; the rest follows the window.
    redis_client.delete(keys.channel_rate("slack"))
    dispatch.flush(ctx, "slack")
    assert [len(j.args[1]["notifications"]) for j in notify_jobs(redis_client, keys)] == \
        [1, 1, 3, 2]


def test_an_overdue_flush_is_rescued(make_context: Any, sink: Any, hosts: Any,
                                     redis_client: redis.Redis, keys: KeySpace) -> None:
    ctx = make_context(slack_doc(sink, digest_window=30.0))
    for index in range(3):
        hosts.write(f"bbs-{index:02d}", database=False)
        evaluate_hosts(ctx, [f"bbs-{index:02d}"])
    assert len(notify_jobs(redis_client, keys)) == 1
    dispatch.rescue(ctx, ["slack"])  # not overdue: left to its flush
    assert len(notify_jobs(redis_client, keys)) == 1
    redis_client.set(keys.digest_due("slack"), "1")  # due long ago: its flush was lost
    redis_client.delete(keys.channel_rate("slack"))
    dispatch.rescue(ctx, ["slack"])
    assert [len(j.args[1]["notifications"]) for j in notify_jobs(redis_client, keys)] == [1, 2]


def delivery_of(ctx: Any, hosts: Any, host: str = "bbs-01") -> dict[str, Any]:
    hosts.write(host, database=False)
    evaluate_hosts(ctx, [host], drain_channels=False)
    notes = [json.loads(x) for x in ctx.client.lrange(ctx.keys.digest_buffer("slack"), 0, -1)]
    return {"id": dispatch.new_delivery_id(1), "notifications": notes}


def test_delivery_is_deduplicated(make_context: Any, sink: Any, hosts: Any,
                                  redis_client: redis.Redis, keys: KeySpace) -> None:
    ctx = make_context(slack_doc(sink))
    delivery = delivery_of(ctx, hosts)
    first = dispatch.run_delivery(ctx, "slack", delivery, token="job-a", attempt=1)
    second = dispatch.run_delivery(ctx, "slack", delivery, token="job-b", attempt=1)
    assert first["sent"] == 1 and second == {"delivery": delivery["id"], "sent": 0,
                                              "duplicates": 1}
    assert len(sink.all_requests()) == 1
    note_id = delivery["notifications"][0]["id"]
    assert redis_client.get(keys.notification_sent(f"slack/{note_id}")).startswith(b"sent:")


def test_a_rerun_of_a_crashed_job_takes_over_its_claim(make_context: Any, sink: Any,
                                                       hosts: Any, redis_client: redis.Redis,
                                                       keys: KeySpace) -> None:
    ctx = make_context(slack_doc(sink))
    delivery = delivery_of(ctx, hosts)
    note_id = delivery["notifications"][0]["id"]
    # A job died after claiming (before or after sending): another job must not
    # send it too, but the re-run of the same job does (at least once).
    redis_client.set(keys.notification_sent(f"slack/{note_id}"), "sending:job-a", px=60_000)
    other = dispatch.run_delivery(ctx, "slack", delivery, token="job-b", attempt=1)
    assert other["sent"] == 0 and sink.all_requests() == []
    rerun = dispatch.run_delivery(ctx, "slack", delivery, token="job-a", attempt=1)
    assert rerun["sent"] == 1 and len(sink.all_requests()) == 1


def test_a_permanent_failure_is_recorded_and_not_retried(make_context: Any, sink: Any,
                                                         hosts: Any, redis_client: redis.Redis,
                                                         keys: KeySpace) -> None:
    ctx = make_context(slack_doc(sink))
    delivery = delivery_of(ctx, hosts)
    sink.default = type(sink.default)(status=404, body="no_service")
    result = dispatch.run_delivery(ctx, "slack", delivery, token="job-a", attempt=1)
    assert result["permanent"] is True
    record = json.loads(redis_client.hget(keys.notifications_failed(), delivery["id"]))
    assert record["permanent"] and "404" in record["error"] and record["attempts"] == 1
    assert record["notifications"][0]["check"] == "database"
    note_id = delivery["notifications"][0]["id"]
    assert not redis_client.exists(keys.notification_sent(f"slack/{note_id}"))
    assert log(redis_client, keys)[-1]["outcome"] == "failed"


def test_a_temporary_failure_retries_with_backoff_then_gives_up(
        make_context: Any, sink: Any, hosts: Any, redis_client: redis.Redis,
        keys: KeySpace) -> None:
    ctx = make_context(slack_doc(sink, retry_intervals=["2", "10", "30"], retry_max=3))
    delivery = delivery_of(ctx, hosts)
    sink.default = type(sink.default)(status=500, body="oops")
    retry = dispatch.run_delivery(ctx, "slack", delivery, token="job-a", attempt=1)
    # One second more each: rq truncates its schedule to whole seconds, and a
    # retry must not run before its configured delay.
    assert isinstance(retry, Retry) and retry.max == 3 and retry.intervals == [3, 11, 31]
    assert redis_client.hlen(keys.notifications_failed()) == 0
    sink.default = type(sink.default)(status=429, body="", headers={"Retry-After": "7"})
    retry = dispatch.run_delivery(ctx, "slack", delivery, token="job-a", attempt=2)
    assert isinstance(retry, Retry) and retry.intervals == [8]
    sink.default = type(sink.default)(status=503)
    given_up = dispatch.run_delivery(ctx, "slack", delivery, token="job-a", attempt=4)
    assert given_up["permanent"] is False
    record = json.loads(redis_client.hget(keys.notifications_failed(), delivery["id"]))
    assert record["attempts"] == 4 and not record["permanent"]


def test_failed_deliveries_are_bounded(make_context: Any, redis_client: redis.Redis,
                                       keys: KeySpace) -> None:
    ctx = make_context({"alerter": {"failed_max": 3}})
    error = dispatch.DeliveryError("HTTP 404", permanent=True)
    for at in range(5):
        dispatch.record_failure(ctx, "slack", {"id": f"{1000 + at}-aaaaaa",
                                               "notifications": []}, error, 1, 1000 + at)
    assert sorted(k.decode() for k in redis_client.hkeys(keys.notifications_failed())) == \
        ["1002-aaaaaa", "1003-aaaaaa", "1004-aaaaaa"]


def test_the_tick_finds_hosts_with_active_alerts(make_context: Any, sink: Any, hosts: Any,
                                                 redis_client: redis.Redis, keys: KeySpace
                                                 ) -> None:
    ctx = make_context(slack_doc(sink))
    hosts.write("bbs-01", disk=95.0)
    hosts.write("bbs-02", disk=95.0)
    evaluate_hosts(ctx, ["bbs-01", "bbs-02"], drain_channels=False)
    hosts.write("bbs-02", disk=10.0)
    evaluate_hosts(ctx, ["bbs-02"], drain_channels=False)
    redis_client.sadd(keys.alerts_index(), "gone/disk_space")
    assert active_hosts(ctx) == ["bbs-01"]
    assert not redis_client.sismember(keys.alerts_index(), "gone/disk_space")


def test_evaluation_time_is_redis_time(make_context: Any, hosts: Any, redis_client: redis.Redis,
                                       keys: KeySpace) -> None:
    ctx = make_context()
    hosts.write("bbs-01", database=False)
    before = dispatch.now_ms(redis_client)
    evaluate_hosts(ctx, ["bbs-01"], drain_channels=False)
    since = int(alert(redis_client, keys, "bbs-01", "database")["since_ms"])
    assert before <= since <= dispatch.now_ms(redis_client)
    assert abs(since - time.time() * 1000) < 60_000


def test_a_forgotten_host_loses_its_alerts(make_context: Any, sink: Any, hosts: Any,
                                           redis_client: redis.Redis, keys: KeySpace) -> None:
    ctx = make_context(slack_doc(sink))
    hosts.write("bbs-01", disk=95.0)
    evaluate_hosts(ctx, ["bbs-01"], drain_channels=False)
    assert active_hosts(ctx) == ["bbs-01"]
    redis_client.delete(keys.host("bbs-01"))  # mtbbs-collector forget
    evaluate_hosts(ctx, ["bbs-01"], drain_channels=False)
    assert not redis_client.exists(keys.alert("bbs-01", "disk_space"))
    assert active_hosts(ctx) == []
