"""Ingestion against the real redis-server: state, ordering, idempotency,
dead letters, signatures, evaluation hand-off and Redis trouble."""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

import msgpack
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from rq import Queue

from collector.settings import CollectorSettings
from wire import auth
from wire.keys import COLLECTOR_GROUP, EVALUATE_JOB, RQ_SERIALIZER
from wire.messages import SessionInfo, encode
from wire.state import STALE_NO, entry_id_ms, iso_from_ms, parse_host_state

MAX_ENTRY_BYTES = CollectorSettings().max_entry_bytes


def pending(client: redis.Redis, stream: str) -> int:
    return int(client.xpending(stream, COLLECTOR_GROUP)["pending"])


def test_aggregates_several_hosts(redis_client: redis.Redis, keys: Any, publish: Any,
                                  report: Any, make_collector: Any) -> None:
    ids = {}
    for index, host in enumerate(["bbs-01", "bbs-02", "bbs-03"]):
        for seq in (1, 2):
            ids[host] = publish(report(host, seq, disk=40.0 + index * 30 + seq,
                                       sessions=index + seq))
    collector = make_collector()
    assert collector.drain() == 6
    assert redis_client.zrange(keys.hosts_index(), 0, -1) == [b"bbs-01", b"bbs-02", b"bbs-03"]
    for host, entry_id in ids.items():
        state = parse_host_state(host, redis_client.hgetall(keys.host(host)))
        assert state.last_seen_ms == entry_id_ms(entry_id)
        assert redis_client.zscore(keys.hosts_index(), host) == entry_id_ms(entry_id)
        assert state.raw["seq"] == "2"
        assert state.stale == STALE_NO
    statuses = {h: redis_client.hget(keys.host(h), "status") for h in ids}
    assert statuses == {"bbs-01": b"OK", "bbs-02": b"OK", "bbs-03": b"WARNING"}
    history = redis_client.lrange(keys.host_history("bbs-02"), 0, -1)
    assert [line.decode().split(",")[1:] for line in history] == [
        ["3", "72.0", "45.2"], ["2", "71.0", "45.2"]]
    assert pending(redis_client, keys.reports_stream("bbs-01")) == 0
    assert collector.counters.applied == 6


def test_fields_are_plain_text_for_redis_cli(redis_client: redis.Redis, keys: Any,
                                            publish: Any, report: Any, make_collector: Any,
                                            cli: Any) -> None:
    entry_id = publish(report("bbs-01", 7, disk=92.5))
    make_collector().drain()
    assert cli("HGET", keys.host("bbs-01"), "status").strip() == "WARNING"
    assert cli("HGET", keys.host("bbs-01"), "disk_space.percent_used").strip() == "92.5"
    assert cli("HGET", keys.host("bbs-01"), "memory.process_rss_mb").strip() == "45.2"
    assert cli("HGET", keys.host("bbs-01"), "last_seen").strip() == \
        iso_from_ms(entry_id_ms(entry_id))
    pairs = cli("HGETALL", keys.host("bbs-01")).split("\n")
    fields = dict(zip(pairs[0::2], pairs[1::2], strict=False))
    assert fields["unhealthy"] == "disk_space"
    assert fields["sessions.active_sessions"] == "3"
    assert fields["database.healthy"] == "true"
    assert "clock_skew_s" in fields
    assert cli("ZSCORE", keys.hosts_index(), "bbs-01").strip() == str(entry_id_ms(entry_id))
    line = cli("LINDEX", keys.host_history("bbs-01"), "0").strip()
    assert line == f"{iso_from_ms(entry_id_ms(entry_id))},3,92.5,45.2"


def test_replay_and_older_reports_never_overwrite(redis_client: redis.Redis, keys: Any,
                                                  publish: Any, report: Any,
                                                  make_collector: Any) -> None:
    publish(report("bbs-01", 5, disk=60.0))
    collector = make_collector()
    collector.drain()
    before = redis_client.hgetall(keys.host("bbs-01"))
    # An older report of the same run, then the agent sending the stored one
    # again (its reply was lost): both skipped.
    publish(report("bbs-01", 4, disk=99.0))
    publish(report("bbs-01", 5, disk=99.0))
    collector.drain()
    assert redis_client.hgetall(keys.host("bbs-01")) == before
    assert redis_client.llen(keys.host_history("bbs-01")) == 1
    assert collector.counters.skipped == 2
    # Another run (a new spool, a manual --once, a clock far off) is ordered
    # by the stream, whatever its epoch: each report later on the stream is newer.
    publish(report("bbs-01", 1, epoch=0, disk=70.0))
    collector.drain()
    assert redis_client.hget(keys.host("bbs-01"), "disk_space.percent_used") == b"70.0"
    publish(report("bbs-01", 1, epoch=2, disk=71.0))
    collector.drain()
    assert redis_client.hget(keys.host("bbs-01"), "disk_space.percent_used") == b"71.0"
    assert redis_client.llen(keys.host_history("bbs-01")) == 3
    assert pending(redis_client, keys.reports_stream("bbs-01")) == 0


def test_huge_sequence_numbers_order_exactly(redis_client: redis.Redis, keys: Any,
                                             publish: Any, report: Any,
                                             make_collector: Any) -> None:
    # Above 2**53 a double cannot tell these apart; the scripts compare text.
    big = 2**62
    publish(report("bbs-01", big + 1, disk=61.0))
    publish(report("bbs-01", big, disk=62.0))
    make_collector().drain()
    assert redis_client.hget(keys.host("bbs-01"), "seq") == str(big + 1).encode()


def test_a_check_that_disappears_leaves_no_stale_fields(redis_client: redis.Redis, keys: Any,
                                                        publish: Any, report: Any,
                                                        make_collector: Any) -> None:
    from wire.messages import Report

    publish(report("bbs-01", 1))
    first = report("bbs-01", 2)
    publish(Report(host="bbs-01", agent_version="0.1.0", epoch=1, seq=2,
                   observed_at=first.observed_at, dropped=4,
                   checks={"database": dict(first.checks["database"])}))
    make_collector().drain()
    state = redis_client.hgetall(keys.host("bbs-01"))
    assert b"disk_space.percent_used" not in state
    assert state[b"checks"] == b"database"
    assert state[b"dropped_total"] == b"4"


def test_history_is_bounded(redis_client: redis.Redis, keys: Any, publish: Any, report: Any,
                            make_collector: Any) -> None:
    for seq in range(1, 8):
        publish(report("bbs-01", seq, sessions=seq))
    make_collector(history_length=3).drain()
    lines = redis_client.lrange(keys.host_history("bbs-01"), 0, -1)
    assert [line.split(b",")[1] for line in lines] == [b"7", b"6", b"5"]


def test_clock_skew_is_recorded_not_trusted(redis_client: redis.Redis, keys: Any, publish: Any,
                                            report: Any, make_collector: Any) -> None:
    entry_id = publish(report("bbs-01", 1, observed_at=time.time() - 3600))
    make_collector().drain()
    state = parse_host_state("bbs-01", redis_client.hgetall(keys.host("bbs-01")))
    assert state.last_seen_ms == entry_id_ms(entry_id)
    assert state.clock_skew_s is not None and -3700 < state.clock_skew_s < -3500


def sessions_of(client: redis.Redis, keys: Any, host: str = "bbs-01") -> dict[str, Any]:
    return {k.decode(): json.loads(v) for k, v in client.hgetall(keys.host_sessions(host)).items()}


def test_session_events(redis_client: redis.Redis, keys: Any, publish: Any, event: Any,
                        make_collector: Any) -> None:
    start = time.time() - 60
    publish(event("connected", 1, client_id="192.0.2.1:5000", connected_at=start))
    publish(event("connected", 2, client_id="192.0.2.2:5001", connected_at=start))
    # logged_in without connected_at keeps the time of the connection
    publish(event("logged_in", 3, client_id="192.0.2.1:5000", user_id="alice"))
    publish(event("disconnected", 4, client_id="192.0.2.2:5001"))
    collector = make_collector()
    collector.drain()
    sessions = sessions_of(redis_client, keys)
    assert list(sessions) == ["192.0.2.1:5000"]
    alice = sessions["192.0.2.1:5000"]
    assert alice["user_id"] == "alice" and alice["state"] == "logged_in"
    assert alice["connected_at"] == iso_from_ms(start * 1000)[:-1] + \
        alice["connected_at"][19:]  # same second, milliseconds kept
    # A late 'connected' of the disconnected client must not resurrect it.
    publish(event("connected", 2, client_id="192.0.2.2:5001", connected_at=start))
    collector.drain()
    assert list(sessions_of(redis_client, keys)) == ["192.0.2.1:5000"]


def test_snapshot_replaces_and_heals(redis_client: redis.Redis, keys: Any, publish: Any,
                                     event: Any, make_collector: Any) -> None:
    now = time.time()
    publish(event("connected", 1, client_id="192.0.2.9:1"))
    publish(event("snapshot", 5, sessions=(
        SessionInfo("192.0.2.1:5000", "guest", "logged_in", now),
        SessionInfo("192.0.2.3:5002", None, "connected", now))))
    # Events older than the snapshot are history; newer ones apply.
    publish(event("disconnected", 4, client_id="192.0.2.1:5000"))
    publish(event("logged_in", 6, client_id="192.0.2.3:5002", user_id="bob"))
    collector = make_collector()
    collector.drain()
    sessions = sessions_of(redis_client, keys)
    assert sorted(sessions) == ["192.0.2.1:5000", "192.0.2.3:5002"]
    assert sessions["192.0.2.3:5002"]["user_id"] == "bob"
    # A replayed older snapshot changes nothing.
    publish(event("snapshot", 5, sessions=()))
    collector.drain()
    assert sorted(sessions_of(redis_client, keys)) == ["192.0.2.1:5000", "192.0.2.3:5002"]


def test_events_the_reporter_sends_again_are_skipped(redis_client: redis.Redis, keys: Any,
                                                     publish: Any, event: Any,
                                                     make_collector: Any) -> None:
    # The reporter lost Redis's reply to a batch and sent it again: the copies
    # come later on the stream, but their seqs tell them apart.
    batch = [event("connected", 1, client_id="192.0.2.7:7000"),
             event("connected", 2, client_id="192.0.2.1:5000"),
             event("disconnected", 3, client_id="192.0.2.7:7000")]
    for message in batch:
        publish(message)
    collector = make_collector()
    collector.drain()
    for message in batch:
        publish(message)
    collector.drain()
    assert list(sessions_of(redis_client, keys)) == ["192.0.2.1:5000"]
    assert collector.counters.skipped == 3
    # A new run of the reporter (another epoch) starts its seqs again.
    publish(event("connected", 1, epoch=2, client_id="192.0.2.9:9000"))
    collector.drain()
    assert sorted(sessions_of(redis_client, keys)) == ["192.0.2.1:5000", "192.0.2.9:9000"]


def test_a_snapshot_replaces_the_events_before_it_in_a_batch(
        redis_client: redis.Redis, keys: Any, publish: Any, event: Any,
        make_collector: Any) -> None:
    # Working off a backlog, the events a later snapshot overwrites are only
    # acknowledged; the snapshot and the events after it are written.
    publish(event("connected", 1, client_id="192.0.2.7:7000"))
    publish(event("logged_in", 2, client_id="192.0.2.7:7000", user_id="alice"))
    publish(event("snapshot", 3, sessions=(
        SessionInfo("192.0.2.1:5000", "guest", "logged_in", time.time()),)))
    publish(event("connected", 4, client_id="192.0.2.2:5001"))
    collector = make_collector()
    collector.drain()
    assert sorted(sessions_of(redis_client, keys)) == ["192.0.2.1:5000", "192.0.2.2:5001"]
    assert (collector.counters.skipped, collector.counters.applied) == (2, 2)
    assert pending(redis_client, keys.sessions_stream("bbs-01")) == 0


def test_a_batch_writes_each_host_hash_once_and_every_history_line(
        redis_client: redis.Redis, keys: Any, publish: Any, report: Any,
        make_collector: Any) -> None:
    for seq in range(1, 6):
        publish(report("bbs-01", seq, sessions=seq, disk=50.0 + seq, dropped=1))
    collector = make_collector()
    collector.drain()
    state = redis_client.hgetall(keys.host("bbs-01"))
    assert (state[b"seq"], state[b"disk_space.percent_used"]) == (b"5", b"55.0")
    assert state[b"dropped_total"] == b"5"
    lines = redis_client.lrange(keys.host_history("bbs-01"), 0, -1)
    assert [int(line.split(b",")[1]) for line in lines] == [5, 4, 3, 2, 1]
    assert collector.counters.applied == 5
    # A copy of a report that only reached the history is still told apart.
    publish(report("bbs-01", 3, sessions=3))
    collector.drain()
    assert redis_client.llen(keys.host_history("bbs-01")) == 5


def test_merge_conflict_is_retried(redis_client: redis.Redis, keys: Any, publish: Any,
                                   event: Any, make_collector: Any,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    publish(event("connected", 1, client_id="192.0.2.1:5000", connected_at=time.time() - 5))
    collector = make_collector()
    collector.drain()
    publish(event("state", 2, client_id="192.0.2.1:5000", state="logged_in"))
    # Someone changes the session between the collector's read and its write.
    from collector.plan import Planner

    writes = Planner.writes

    def change_then_plan(planner: Planner, decoded: Any, stored: Any) -> Any:
        redis_client.hset(keys.host_sessions("bbs-01"), "192.0.2.1:5000",
                          json.dumps({"client_id": "192.0.2.1:5000", "user_id": "carol",
                                      "state": "connected",
                                      "connected_at": "2026-01-01T00:00:00.000Z"}))
        return writes(planner, decoded, stored)

    monkeypatch.setattr(Planner, "writes", change_then_plan)
    collector.drain()
    assert collector.counters.conflicts == 1
    session = sessions_of(redis_client, keys)["192.0.2.1:5000"]
    assert (session["user_id"], session["state"]) == ("carol", "logged_in")
    assert pending(redis_client, keys.sessions_stream("bbs-01")) == 0


GARBAGE: list[tuple[str, dict[str, Any], str]] = [
    ("raw bytes", {"m": b"\xc1\xff\x00garbage"}, "undecodable"),
    ("not a map", {"m": msgpack.packb([1, 2, 3])}, "Expected `object`"),
    ("wrong schema", {"m": msgpack.packb({"v": 99, "t": "report"})}, "undecodable"),
    ("missing m", {"x": b"1"}, "no field 'm'"),
    ("wrong types", {"m": msgpack.packb({"v": 1, "t": "report", "host": 5, "agent_version": "x",
                                         "epoch": "1", "seq": 1, "observed_at": 1e9,
                                         "checks": {}})}, "$.host"),
    ("huge", {"m": b"\x00" * (MAX_ENTRY_BYTES + 1)}, "exceeds max_entry_bytes"),
    ("bad host id", {"m": msgpack.packb({"v": 1, "t": "session", "host": "../etc",
                                         "epoch": 1, "seq": 1, "observed_at": 1.8e9,
                                         "kind": "snapshot"})}, "$.host"),
]


def test_garbage_is_dead_lettered_while_good_messages_flow(
        redis_client: redis.Redis, keys: Any, publish: Any, report: Any,
        make_collector: Any) -> None:
    expected: dict[bytes, str] = {}
    for seq, (_, fields, reason) in enumerate(GARBAGE, start=1):
        expected[redis_client.xadd(keys.reports_stream("bbs-01"), fields)] = reason
        publish(report("bbs-01", seq))
    redis_client.xadd(keys.sessions_stream("bbs-01"), {"m": encode(report("bbs-02", 1))[:10]})
    collector = make_collector()
    collector.drain()
    assert redis_client.hget(keys.host("bbs-01"), "seq") == str(len(GARBAGE)).encode()
    letters = redis_client.xrange(keys.dead_letter_stream())
    assert len(letters) == len(GARBAGE) + 1
    # Entry ids are unique per stream only: the sessions stream's entry may
    # share its id with a reports entry.
    by_id = {(fields[b"stream"], fields[b"id"]): fields for _, fields in letters}
    reports = keys.reports_stream("bbs-01").encode()
    for entry_id, reason in expected.items():
        letter = by_id[(reports, entry_id)]
        assert reason in letter[b"reason"].decode(), letter[b"reason"]
        assert len(letter[b"payload"]) <= 4096
    assert int(by_id[(reports, next(i for i, r in expected.items() if "exceeds" in r))]
               [b"payload_bytes"]) == MAX_ENTRY_BYTES + 1
    assert collector.counters.dead_lettered == len(GARBAGE) + 1
    assert pending(redis_client, keys.reports_stream("bbs-01")) == 0
    assert pending(redis_client, keys.sessions_stream("bbs-01")) == 0


def test_a_bad_signature_text_costs_only_its_own_entry(
        redis_client: redis.Redis, keys: Any, publish: Any, report: Any,
        make_collector: Any) -> None:
    # A non-ASCII signature makes hmac's comparison raise TypeError: that
    # entry is dead-lettered, the genuine entries of other hosts beside it
    # in the same batch are applied.
    host_keys = {f"bbs-0{n}": bytes([48 + n]) * 32 for n in range(1, 4)}
    for host, key in host_keys.items():
        message = report(host, 1)
        if host == "bbs-02":
            publish(message, sig="署名")
        else:
            publish(message, sig=auth.sign(key, encode(message)))
    collector = make_collector(host_keys=host_keys)
    assert collector.drain() == 3
    assert redis_client.zrange(keys.hosts_index(), 0, -1) == [b"bbs-01", b"bbs-03"]
    [(_, letter)] = redis_client.xrange(keys.dead_letter_stream())
    assert letter[b"reason"] == b"missing or bad signature for host bbs-02"
    assert (collector.counters.applied, collector.counters.dead_lettered) == (2, 1)
    assert pending(redis_client, keys.reports_stream("bbs-01")) == 0


def test_a_failure_while_planning_one_entry_dead_letters_it_alone(
        redis_client: redis.Redis, keys: Any, publish: Any, report: Any,
        make_collector: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from collector.plan import Planner

    report_write = Planner.report_write

    def fail_for_bbs_02(planner: Planner, stream: str, entry_id: str, message: Any,
                        **options: Any) -> Any:
        if message.host == "bbs-02":
            raise KeyError("a bug of ours")
        return report_write(planner, stream, entry_id, message, **options)

    monkeypatch.setattr(Planner, "report_write", fail_for_bbs_02)
    for host in ("bbs-01", "bbs-02", "bbs-03"):
        publish(report(host, 1))
    collector = make_collector()
    collector.drain()
    assert redis_client.zrange(keys.hosts_index(), 0, -1) == [b"bbs-01", b"bbs-03"]
    [(_, letter)] = redis_client.xrange(keys.dead_letter_stream())
    assert letter[b"reason"].startswith(b"collector error: KeyError")
    assert pending(redis_client, keys.reports_stream("bbs-01")) == 0


def test_an_oversized_entry_is_dead_lettered_with_a_prefix_of_its_payload(
        redis_client: redis.Redis, keys: Any, publish: Any, report: Any,
        make_collector: Any) -> None:
    big = redis_client.xadd(keys.reports_stream("bbs-01"), {"m": b"\x81" + b"x" * 5000})
    publish(report("bbs-01", 1))
    collector = make_collector(max_entry_bytes=4096, dead_letter_payload_bytes=100)
    collector.drain()
    [(_, letter)] = redis_client.xrange(keys.dead_letter_stream())
    assert letter[b"id"] == big
    assert letter[b"reason"] == b"entry of 5002 bytes exceeds max_entry_bytes (4096)"
    assert letter[b"payload_bytes"] == b"5001"
    assert letter[b"payload"] == (b"\x81" + b"x" * 5000)[:100]
    assert redis_client.hget(keys.host("bbs-01"), "seq") == b"1"


def test_dead_letter_stream_is_trimmed(redis_client: redis.Redis, keys: Any,
                                       make_collector: Any) -> None:
    for _ in range(400):
        redis_client.xadd(keys.reports_stream("bbs-01"), {"m": b"junk"})
    make_collector(dead_letter_maxlen=100).drain()
    assert 100 <= redis_client.xlen(keys.dead_letter_stream()) < 400


def test_signatures(redis_client: redis.Redis, keys: Any, publish: Any, report: Any,
                    make_collector: Any) -> None:
    host_keys = {"bbs-01": b"k" * 32, "bbs-02": b"q" * 32}
    good = report("bbs-01", 1)
    publish(good, sig=auth.sign(host_keys["bbs-01"], encode(good)))
    spoofed = report("bbs-02", 1)  # signed with bbs-01's key
    publish(spoofed, sig=auth.sign(host_keys["bbs-01"], encode(spoofed)))
    publish(report("bbs-02", 2))  # unsigned
    publish(report("bbs-03", 1), sig="00")  # a host without a key
    collector = make_collector(host_keys=host_keys)
    collector.drain()
    assert redis_client.zrange(keys.hosts_index(), 0, -1) == [b"bbs-01"]
    reasons = sorted(f[b"reason"].decode() for _, f in
                     redis_client.xrange(keys.dead_letter_stream()))
    assert reasons == ["missing or bad signature for host bbs-02"] * 2 + [
        "no key for host bbs-03 in the host keys file"]
    assert collector.counters.spoofed == 3


def test_evaluations_are_coalesced(redis_client: redis.Redis, keys: Any, publish: Any,
                                   report: Any, event: Any, make_collector: Any) -> None:
    publish(report("bbs-01", 1))
    publish(report("bbs-02", 1))
    collector = make_collector()
    collector.drain()
    publish(report("bbs-01", 2))
    publish(event("connected", 1, client_id="192.0.2.1:1"))
    collector.drain()
    queue = Queue(keys.evaluate_queue(), connection=redis_client, serializer=RQ_SERIALIZER)
    jobs = queue.get_jobs()
    assert [list(job.args) for job in jobs] == [["bbs-01", "bbs-02"]]
    assert {job.func_name for job in jobs} == {EVALUATE_JOB}
    assert redis_client.ttl(keys.evaluation_pending("bbs-01")) > 0
    # The job deletes the mark first thing; the next change enqueues again.
    redis_client.delete(keys.evaluation_pending("bbs-01"))
    publish(report("bbs-01", 3))
    collector.drain()
    assert [list(job.args) for job in queue.get_jobs()] == [["bbs-01", "bbs-02"], ["bbs-01"]]
    # An older report changes nothing, so it enqueues nothing.
    redis_client.delete(keys.evaluation_pending("bbs-02"))
    publish(report("bbs-02", 1))
    collector.drain()
    assert len(queue.get_jobs()) == 2
    assert collector.counters.evaluations == 3


def test_no_evaluations_when_disabled(redis_client: redis.Redis, keys: Any, publish: Any,
                                      report: Any, make_collector: Any) -> None:
    publish(report("bbs-01", 1))
    make_collector(evaluate=False).drain()
    assert Queue(keys.evaluate_queue(), connection=redis_client).count == 0
    assert not redis_client.exists(keys.evaluation_pending("bbs-01"))


def history_sessions(client: redis.Redis, keys: Any, host: str) -> list[int]:
    """The sessions figure of each history line, oldest first (reports here
    carry their seq as that figure, so this is the order they were applied in)."""
    lines = client.lrange(keys.host_history(host), 0, -1)
    return [int(line.decode().split(",")[1]) for line in reversed(lines)]


def test_entries_of_a_collector_that_left_the_ring_are_claimed_and_applied_first(
        redis_client: redis.Redis, keys: Any, publish: Any, report: Any,
        make_collector: Any) -> None:
    stream = keys.reports_stream("bbs-01")
    for seq in range(1, 31):
        publish(report("bbs-01", seq, sessions=seq))
    for index in range(2, 6):
        publish(report(f"bbs-{index:02d}", 1))
    # A collector that is not in the ring (it died) read twenty and never applied them.
    redis_client.xgroup_create(stream, COLLECTOR_GROUP, id="0")
    redis_client.xreadgroup(COLLECTOR_GROUP, "dead", {stream: ">"}, count=20)
    heir = make_collector(name="heir", batch_size=7)
    heir.drain()
    # The later ten waited for them: the host's order holds, nothing is lost.
    assert history_sessions(redis_client, keys, "bbs-01") == list(range(1, 31))
    assert redis_client.hget(keys.host("bbs-01"), "seq") == b"30"
    assert redis_client.zcard(keys.hosts_index()) == 5
    assert pending(redis_client, stream) == 0
    assert heir.counters.reclaimed == 20
    assert heir.counters.waits >= 1


def test_overdelivered_and_trimmed_entries_are_dead_lettered(
        redis_client: redis.Redis, keys: Any, publish: Any, report: Any,
        make_collector: Any) -> None:
    stream = keys.reports_stream("bbs-01")
    poison = publish(report("bbs-01", 1))
    gone = publish(report("bbs-01", 2))
    kept = publish(report("bbs-01", 3))
    collector = make_collector(name="heir", max_deliveries=3)
    collector.setup()
    for round_ in range(3):
        redis_client.xreadgroup(COLLECTOR_GROUP, f"crashy-{round_}",
                                {stream: "0" if round_ else ">"}, count=2)
        if round_:
            redis_client.xclaim(stream, COLLECTOR_GROUP, f"crashy-{round_}", 0, [poison, gone])
    redis_client.xdel(stream, gone)
    collector.drain()
    letters = {f[b"id"]: f[b"reason"].decode()
               for _, f in redis_client.xrange(keys.dead_letter_stream())}
    assert set(letters) == {poison, gone}
    assert "times without acknowledgement" in letters[poison]
    assert "no longer in the stream" in letters[gone]
    assert redis_client.hget(keys.host("bbs-01"), "stream_id") == kept
    assert pending(redis_client, stream) == 0


def test_own_pending_entries_are_resumed(redis_client: redis.Redis, keys: Any, publish: Any,
                                         report: Any, make_collector: Any) -> None:
    stream = keys.reports_stream("bbs-01")
    publish(report("bbs-01", 1, sessions=1))
    publish(report("bbs-01", 2, sessions=2))
    redis_client.xgroup_create(stream, COLLECTOR_GROUP, id="0")
    redis_client.xreadgroup(COLLECTOR_GROUP, "fixed", {stream: ">"})
    gone = publish(report("bbs-01", 3, sessions=3))
    publish(report("bbs-02", 1))
    redis_client.xreadgroup(COLLECTOR_GROUP, "fixed", {stream: ">"})
    redis_client.xdel(stream, gone)
    # Restarted under the same name: its own pending entries come first.
    make_collector(name="fixed").setup()
    assert history_sessions(redis_client, keys, "bbs-01") == [1, 2]
    assert redis_client.xlen(keys.dead_letter_stream()) == 1
    assert pending(redis_client, stream) == 0


def test_scripts_flushed_are_reloaded(redis_client: redis.Redis, keys: Any, publish: Any,
                                      report: Any, make_collector: Any) -> None:
    collector = make_collector()
    collector.setup()
    redis_client.script_flush()
    publish(report("bbs-01", 1))
    collector.drain()
    assert redis_client.hget(keys.host("bbs-01"), "seq") == b"1"


def test_group_deleted_under_a_running_collector(redis_client: redis.Redis, keys: Any,
                                                 publish: Any, report: Any,
                                                 make_collector: Any) -> None:
    collector = make_collector()
    stop = threading.Event()
    worker = threading.Thread(target=collector.run, args=(stop,))
    worker.start()
    try:
        publish(report("bbs-01", 1))
        _wait(lambda: redis_client.exists(keys.host("bbs-01")))
        redis_client.delete(keys.reports_stream("bbs-01"))
        publish(report("bbs-02", 1))
        _wait(lambda: redis_client.exists(keys.host("bbs-02")))
    finally:
        stop.set()
        worker.join(10)
    assert not worker.is_alive()
    assert redis_client.hget(keys.collector(collector.name), "state") == b"stopped"


def _wait(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("condition not met in time")
        time.sleep(0.02)


def test_redis_outage_is_retried(redis_server_factory: Any, keys: Any, report: Any,
                                 make_collector: Any, caplog: pytest.LogCaptureFixture) -> None:
    server = redis_server_factory()
    # Without redis-py's own retries, so that the collector's loop meets the outage.
    client = server.client(socket_timeout=1, socket_connect_timeout=1,
                           retry=Retry(NoBackoff(), 0))
    collector = make_collector(client=client)
    stop = threading.Event()
    worker = threading.Thread(target=collector.run, args=(stop,))
    worker.start()
    try:
        client.xadd(keys.reports_stream("bbs-01"), {"m": encode(report("bbs-01", 1))})
        _wait(lambda: client.exists(keys.host("bbs-01")))
        server.stop()
        time.sleep(1.0)
        assert worker.is_alive()
        server.start()
        client.xadd(keys.reports_stream("bbs-02"), {"m": encode(report("bbs-02", 1))})
        _wait(lambda: client.exists(keys.host("bbs-02")))
    finally:
        stop.set()
        worker.join(10)
    assert not worker.is_alive()
    warnings = [r for r in caplog.records if "retrying in" in r.getMessage()]
    assert warnings and all(r.exc_info is None for r in warnings)


def test_heartbeat(redis_client: redis.Redis, keys: Any, publish: Any, report: Any,
                   make_collector: Any) -> None:
    publish(report("bbs-01", 1))
    redis_client.xadd(keys.reports_stream("bbs-01"), {"m": b"junk"})
    collector = make_collector(name="hb")
    collector.drain()
    publish(report("bbs-01", 2))  # not yet delivered: lag 1
    collector.heartbeat()
    beat = {k.decode(): v.decode() for k, v in redis_client.hgetall(keys.collector("hb")).items()}
    assert beat["state"] == "running"
    assert (beat["processed"], beat["dead_lettered"], beat["lag"]) == ("2", "1", "0")
    assert (beat["pending"], beat["streams"], beat["collectors"]) == ("0", "1", "1")
    assert float(beat["lag_s"]) == 0
    assert redis_client.zscore(keys.collectors_index(), "hb") == int(beat["heartbeat_ms"])
    assert redis_client.ttl(keys.collector("hb")) > 0
    # A running collector is a member of the ring that shares the hosts.
    assert redis_client.zscore(keys.collector_ring(), "hb") == int(beat["heartbeat_ms"])
    collector.heartbeat("stopped")
    assert redis_client.zscore(keys.collector_ring(), "hb") is None


def test_an_entry_redis_refuses_ends_as_a_dead_letter(redis_client: redis.Redis, keys: Any,
                                                      publish: Any, report: Any,
                                                      make_collector: Any) -> None:
    # Someone made the host's key a string: the script fails for that entry only.
    redis_client.set(keys.host("bbs-01"), "not a hash")
    poison = publish(report("bbs-01", 1))
    publish(report("bbs-02", 1))
    collector = make_collector(max_deliveries=2)
    collector.drain()
    assert redis_client.exists(keys.host("bbs-02"))
    assert collector.counters.errors == 1
    assert pending(redis_client, keys.reports_stream("bbs-01")) == 1
    for _ in range(2):
        time.sleep(0.25)  # claim_min_idle_s = 0.2
        collector.reclaim()
    letters = redis_client.xrange(keys.dead_letter_stream())
    assert [f[b"id"] for _, f in letters] == [poison]
    assert b"delivered 2 times" in letters[0][1][b"reason"]
    assert pending(redis_client, keys.reports_stream("bbs-01")) == 0


def _backlog(publish: Any, report: Any, event: Any, hosts: int, reports: int) -> int:
    count = 0
    for seq in range(1, reports + 1):
        for index in range(hosts):
            host = f"bbs-{index:03d}"
            publish(report(host, seq, disk=40.0 + seq))
            publish(event("connected", seq, host=host, client_id=f"192.0.2.{seq}:5000",
                          connected_at=time.time()))
            count += 2
    return count


def _assert_backlog_applied(redis_client: redis.Redis, keys: Any, hosts: int,
                            reports: int) -> None:
    assert redis_client.zcard(keys.hosts_index()) == hosts
    for index in range(hosts):
        host = f"bbs-{index:03d}"
        assert redis_client.hget(keys.host(host), "seq") == str(reports).encode()
        assert redis_client.llen(keys.host_history(host)) == reports
        assert redis_client.hlen(keys.host_sessions(host)) == reports
        assert pending(redis_client, keys.reports_stream(host)) == 0
        assert pending(redis_client, keys.sessions_stream(host)) == 0


def test_a_backlog_is_applied_in_batches_of_many_calls(
        redis_client: redis.Redis, keys: Any, publish: Any, report: Any, event: Any,
        make_collector: Any) -> None:
    # More entries per read than one call of the apply script takes, and
    # batches applied while the next are read: every report in the history,
    # every session, nothing pending.
    from collector.apply import CALL_ENTRIES

    total = _backlog(publish, report, event, hosts=130, reports=4)
    collector = make_collector(batch_size=CALL_ENTRIES + 60)
    assert collector.drain() == total
    _assert_backlog_applied(redis_client, keys, hosts=130, reports=4)
    assert collector.counters.applied == total
    assert collector.counters.evaluations == 130


def test_entries_read_survive_a_restart(
        redis_client: redis.Redis, keys: Any, publish: Any, report: Any, event: Any,
        make_collector: Any) -> None:
    # What was read but not applied when the connection is dropped (a Redis
    # error) stays pending for this consumer and is processed after setup().
    _backlog(publish, report, event, hosts=10, reports=6)
    collector = make_collector(batch_size=7)
    collector.setup()
    streams = [stream for index in range(10) for stream in keys.host_streams(f"bbs-{index:03d}")]
    for _ in range(3):
        redis_client.xreadgroup(COLLECTOR_GROUP, collector.name, dict.fromkeys(streams, ">"),
                                count=2)
    collector.setup()
    collector.drain()
    _assert_backlog_applied(redis_client, keys, hosts=10, reports=6)


def test_a_failed_batch_drops_the_batches_after_it_unapplied(
        redis_client: redis.Redis, keys: Any, publish: Any, report: Any,
        make_collector: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Nothing is applied out of order: after a batch met a connection error,
    # the batches handed over behind it stay pending until setup() re-reads them.
    for seq in range(1, 7):
        publish(report("bbs-01", seq))
    collector = make_collector(batch_size=2)
    collector.setup()
    apply = collector.applier.apply
    calls: list[int] = []

    def failing_once(writes: Any) -> None:
        calls.append(len(writes))
        if len(calls) == 1:
            raise redis.ConnectionError("connection lost")
        apply(writes)

    monkeypatch.setattr(collector.applier, "apply", failing_once)
    with pytest.raises(redis.ConnectionError):
        collector.drain()
    assert not redis_client.exists(keys.host("bbs-01"))
    collector.setup()
    collector.drain()
    history = redis_client.lrange(keys.host_history("bbs-01"), 0, -1)
    assert len(history) == 6
    assert redis_client.hget(keys.host("bbs-01"), "seq") == b"6"


def test_the_garbage_collector_is_tuned_for_the_ingest_loop() -> None:
    import subprocess
    import sys

    code = ("import gc; from collector.ingest import GC_YOUNG_THRESHOLD, tune_garbage_collector; "
            "before = gc.get_threshold(); tune_garbage_collector(); "
            "print(gc.get_threshold()[0] == GC_YOUNG_THRESHOLD > before[0], "
            "gc.get_threshold()[1:] == before[1:], gc.get_freeze_count() > 1000)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.split() == ["True", "True", "True"]


def test_host_state_is_the_same_in_the_tuned_redis_and_uses_hash_tables(
        redis_client: redis.Redis, redis_server_factory: Any, keys: Any, report: Any,
        event: Any) -> None:
    # The stack's Redis keeps host hashes as hash tables (HASH_TUNING); what
    # the collector writes there is what it writes into a Redis left at its
    # defaults.
    from collector.ingest import Collector
    from collector.settings import CollectorSettings
    from stack.embedded import HASH_TUNING
    from wire.messages import stream_fields

    tuned = redis.Redis.from_url(redis_server_factory(*HASH_TUNING).url)
    messages = [report("bbs-01", seq, disk=40.0 + seq, sessions=seq) for seq in range(1, 5)]
    messages.append(event("connected", 1, client_id="192.0.2.7:5000", connected_at=1.8e9))
    states = []
    for client in (redis_client, tuned):
        for message in messages:
            stream = (keys.sessions_stream("bbs-01") if message in messages[-1:]
                      else keys.reports_stream("bbs-01"))
            client.xadd(stream, dict(stream_fields(message)))  # type: ignore[arg-type]
        collector = Collector(client, keys, CollectorSettings(evaluate=False), name="t")
        assert collector.drain() == len(messages)
        state = client.hgetall(keys.host("bbs-01"))
        # Redis's own clock: the entry times differ between the two servers.
        for name in (b"last_seen", b"last_seen_ms", b"stream_id", b"clock_skew_s"):
            state.pop(name)
        states.append((state, client.hgetall(keys.host_sessions("bbs-01"))))
    assert states[0] == states[1]
    assert tuned.object("encoding", keys.host("bbs-01")) == b"hashtable"
    assert redis_client.object("encoding", keys.host("bbs-01")) != b"hashtable"


def test_the_run_command_tunes_the_garbage_collector(
        redis_url: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from collector import cli, ingest

    calls: list[bool] = []
    monkeypatch.setattr(ingest, "tune_garbage_collector", lambda: calls.append(True))
    for name in [n for n in os.environ if n.startswith("MTBBS_")]:
        monkeypatch.delenv(name)
    assert cli.main(["run", "--once", "--name", "gc", "--redis-url", redis_url]) == 0
    assert calls == [True]
    assert "processed 0 entries" in capsys.readouterr().out


def test_the_planner_and_the_apply_script_follow_one_table_of_names(
        keys: Any, report: Any, event: Any) -> None:
    # Every entry map carries exactly the names scripts.PROTOCOL lists for
    # its kind, and the script reads each of them by that name.
    from collector.plan import Planner
    from collector.scripts import APPLY, PROTOCOL

    planner = Planner(keys, CollectorSettings(), COLLECTOR_GROUP, "c")
    now = time.time()
    writes = [
        planner.report_write("s", "1800000000000-0", report("bbs-01", 1)),
        planner.report_write("s", "1800000000001-0", report("bbs-01", 2)),
        planner.session_write("s", "1800000000002-0",
                              event("connected", 1, client_id="192.0.2.1:1"), {}),
        planner.session_write("s", "1800000000003-0", event("snapshot", 2, sessions=(
            SessionInfo("192.0.2.1:1", None, "connected", now),)), {}),
        planner.dead_letter("s", "1800000000004-0", {b"m": b"x"}, "why"),
    ]
    assert [write.kind for write in writes] == ["report", "report", "session", "snapshot",
                                               "dead_letter"]
    for write in writes:
        names = PROTOCOL["common"] + PROTOCOL[write.kind]
        assert sorted(write.entry) == sorted(names), write.kind
        for name in PROTOCOL[write.kind]:
            assert f"e.{name}" in APPLY, name


def test_applied_entries_are_trimmed_from_the_hosts_stream(
        redis_client: redis.Redis, keys: Any, make_collector: Any) -> None:
    from tests.collector.conftest import make_report
    from wire.messages import stream_fields

    stream = keys.reports_stream("bbs-01")
    pipe = redis_client.pipeline(transaction=False)
    for seq in range(1, 1001):
        pipe.xadd(stream, dict(stream_fields(make_report("bbs-01", seq))))
    pipe.execute()
    make_collector().drain()
    assert redis_client.hget(keys.host("bbs-01"), "seq") == b"1000"
    # Whole nodes of applied entries go (MINID ~): what is left is at most
    # about one node (stream-node-max-entries, 100 by default).
    assert redis_client.xlen(stream) <= 200


def test_the_pending_figure_is_the_last_whole_inspection_pass(
        redis_client: redis.Redis, keys: Any, publish: Any, report: Any,
        make_collector: Any) -> None:
    publish(report("bbs-01", 1))
    publish(report("bbs-02", 1))
    collector = make_collector(name="counting", claim_min_idle_s=60)
    collector.drain()
    # One entry delivered to this consumer and not applied (as after a
    # dropped connection): pending, and not idle long enough to be claimed.
    stream = keys.reports_stream("bbs-01")
    publish(report("bbs-01", 2))
    redis_client.xreadgroup(COLLECTOR_GROUP, "counting", {stream: ">"})
    for _ in range(4):
        collector.reclaim()
    collector.heartbeat()
    assert redis_client.hget(keys.collector("counting"), "pending") == b"1"
