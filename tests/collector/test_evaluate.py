"""Evaluation hand-off: rq jobs enqueued through rq's public API, coalesced
by the per-host mark, in chunks of a bounded size, against the real redis-server."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable

import pytest
import redis
from rq import Queue
from rq.job import JobStatus
from rq.registry import FailedJobRegistry

from collector.evaluate import CHUNK_HOSTS, FAILURE_TTL_S, JOB_HOSTS, JOB_TTL_S, Evaluations
from collector.ingest import Collector
from collector.settings import CollectorSettings
from wire.keys import EVALUATE_JOB, RQ_SERIALIZER, KeySpace


@pytest.fixture
def evaluations(redis_client: redis.Redis, keys: KeySpace) -> Evaluations:
    """Evaluations on the test's database."""
    return Evaluations(redis_client, keys)


def test_jobs_read_back_through_rq(redis_client: redis.Redis, keys: KeySpace,
                                        evaluations: Evaluations) -> None:
    evaluations.enqueue(["bbs-02", "bbs-01"])
    evaluations.enqueue(["bbs-01"])
    queue = Queue(keys.evaluate_queue(), connection=redis_client, serializer=RQ_SERIALIZER)
    jobs = queue.get_jobs()
    assert [job.args for job in jobs] == [["bbs-01", "bbs-02"], ["bbs-01"]]
    assert len({job.id for job in jobs}) == 2
    for job in jobs:
        assert job.func_name == EVALUATE_JOB and job.kwargs == {}
        assert job.description == f"evaluate {' '.join(job.args)}"
        assert (job.result_ttl, job.ttl, job.failure_ttl) == (0, JOB_TTL_S, FAILURE_TTL_S)
        assert job.origin == keys.evaluate_queue() and job.get_status() == JobStatus.QUEUED
        assert job.timeout == Queue.DEFAULT_TIMEOUT
        assert job.enqueued_at is not None and job.created_at <= job.enqueued_at
        assert 0 < redis_client.ttl(job.key) <= JOB_TTL_S
    assert redis_client.sismember("rq:queues", queue.key)


def test_a_job_carries_a_bounded_number_of_hosts_each_once(
        redis_client: redis.Redis, keys: KeySpace, evaluations: Evaluations) -> None:
    hosts = [f"bbs-{index:03d}" for index in range(JOB_HOSTS * 2 + 1)]
    assert evaluations.enqueue(["bbs-000", *hosts]) == len(hosts)
    assert evaluations.enqueue([]) == 0
    queue = Queue(keys.evaluate_queue(), connection=redis_client, serializer=RQ_SERIALIZER)
    assert [len(job.args) for job in queue.get_jobs()] == [JOB_HOSTS, JOB_HOSTS, 1]
    assert [host for job in queue.get_jobs() for host in job.args] == hosts


def test_request_takes_the_marks_and_coalesces(redis_client: redis.Redis, keys: KeySpace,
                                               evaluations: Evaluations) -> None:
    assert evaluations.request(["bbs-01", "bbs-02", "bbs-01"]) == 2
    assert evaluations.request(["bbs-01", "bbs-02"]) == 0
    assert 0 < redis_client.ttl(keys.evaluation_pending("bbs-01")) <= 60
    redis_client.delete(keys.evaluation_pending("bbs-01"))  # as the job does
    assert evaluations.request(["bbs-01", "bbs-02"]) == 1
    assert redis_client.llen(f"rq:queue:{keys.evaluate_queue()}") == 2


def test_a_failed_enqueue_frees_the_marks_and_raises(
        redis_client: redis.Redis, keys: KeySpace, evaluations: Evaluations) -> None:
    # The queue key holding a string makes rq's push fail inside the transaction.
    queue_key = f"rq:queue:{keys.evaluate_queue()}"
    redis_client.set(queue_key, "not a list")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        evaluations.request(["bbs-01", "bbs-02"])
    assert not redis_client.exists(keys.evaluation_pending("bbs-01"),
                                   keys.evaluation_pending("bbs-02"))
    redis_client.delete(queue_key)
    assert evaluations.request(["bbs-01", "bbs-02"]) == 2


def test_a_sweep_that_turns_ten_thousand_hosts_stale_evaluates_every_one(
        redis_client: redis.Redis, keys: KeySpace) -> None:
    # A whole fleet silent at once: every host gets its job, in chunks of
    # CHUNK_HOSTS, and no job hash is left without its place in the queue.
    hosts = 10_000
    collector = Collector(redis_client, keys, CollectorSettings(), name="sweeper")
    # A sweep just before, so that the one below sees no outage to forgive.
    assert collector.sweep() == []
    now_ms = int(redis_client.time()[0]) * 1000
    pipe = redis_client.pipeline(transaction=False)
    for index in range(hosts):
        host = f"bbs-{index:05d}"
        last_seen = now_ms - 2000
        pipe.hset(keys.host(host), mapping={
            "last_seen_ms": last_seen, "interval_s": "0.1", "stale": "no",
            "report_status": "OK", "status": "OK", "epoch": 1, "seq": 1})
        pipe.zadd(keys.hosts_index(), {host: last_seen})
        # As the report would have scheduled it: stale three intervals on.
        pipe.zadd(keys.hosts_due(), {host: last_seen + 301})
    pipe.execute()
    made = collector.sweep()
    assert len(made) == hosts > 2 * CHUNK_HOSTS
    queue = Queue(keys.evaluate_queue(), connection=redis_client, serializer=RQ_SERIALIZER)
    assert collector.counters.evaluations == hosts
    job_hashes = set(redis_client.scan_iter("rq:job:*", count=1000))
    assert {f"rq:job:{job_id}".encode() for job_id in queue.get_job_ids()} == job_hashes
    assert sorted(host for job in queue.get_jobs() for host in job.args) == [
        f"bbs-{index:05d}" for index in range(hosts)]


def test_enqueue_raises_when_redis_is_unreachable(keys: KeySpace) -> None:
    client = redis.Redis(port=1, socket_connect_timeout=1)  # nothing listens on port 1
    with pytest.raises(redis.ConnectionError):
        Evaluations(client, keys).enqueue(["bbs-01"])


def test_the_debug_line(evaluations: Evaluations, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="collector.evaluate"):
        evaluations.enqueue(["bbs-01", "bbs-02"])
    assert "enqueued evaluation of 2 host(s)" in caplog.messages


@pytest.mark.e2e
def test_an_alerter_worker_runs_the_jobs_and_they_free_the_marks(
        redis_client: redis.Redis, redis_url: str, keys: KeySpace,
        command: Callable[[str], str], clean_env: dict[str, str],
        ) -> None:
    evaluations = Evaluations(redis_client, keys)
    assert evaluations.request(["bbs-01", "bbs-02"]) == 2
    redis_client.delete(keys.evaluation_pending("bbs-01"))
    assert evaluations.request(["bbs-01", "bbs-03"]) == 2
    queue = Queue(keys.evaluate_queue(), connection=redis_client, serializer=RQ_SERIALIZER)
    assert queue.count == 2
    done = subprocess.run(
        [command("mtbbs-alerter"), "worker", "--burst", "--redis-url", redis_url],
        # A burst takes seconds; rq's teardown once held it a minute longer.
        capture_output=True, text=True, timeout=30, env=clean_env, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert queue.count == 0
    assert FailedJobRegistry(queue=queue).get_job_ids() == []
    for host in ("bbs-01", "bbs-02", "bbs-03"):
        assert not redis_client.exists(keys.evaluation_pending(host)), host
    # result_ttl=0: a job that finished leaves no hash behind.
    assert not redis_client.keys("rq:job:*")
