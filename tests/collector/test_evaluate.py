"""The evaluation hand-off: coalescing marks, and jobs sent from rq's recorded templates
that leave in Redis what ``Queue.enqueue_many`` leaves and that rq workers run."""

from __future__ import annotations

import base64
import logging
import subprocess
import uuid
import zlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
import rq
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry
from rq.utils import utcparse

from collector import evaluate
from collector.evaluate import FAILURE_TTL_S, JOB_TTL_S, Evaluations
from wire.keys import EVALUATE_JOB, RQ_SERIALIZER, KeySpace

# Host ids as agents may send them, odd ones included (the alerter's tests
# use the header-injection one).
HOSTS = ["bbs-01", "bbs-02", "bbs-01\r\nBcc: victim@example.org", "掲示板-3"]
# The fields of an rq job hash that hold a time.
TIME_FIELDS = (b"created_at", b"enqueued_at")


def reference_enqueue(client: redis.Redis, keys: KeySpace, hosts: list[str]) -> None:
    """What the collector asks of rq, through rq's own enqueue_many."""
    queue = Queue(keys.evaluate_queue(), connection=client, serializer=RQ_SERIALIZER)
    queue.enqueue_many([
        Queue.prepare_data(EVALUATE_JOB, args=(host,), description=f"evaluate {host}",
                           result_ttl=0, ttl=JOB_TTL_S, failure_ttl=FAILURE_TTL_S)
        for host in sorted(hosts)])


def snapshot(client: redis.Redis, keys: KeySpace, since: datetime) -> dict[bytes, Any]:
    """Every key with its type, value and TTL (in minutes, rounded up); job ids are
    replaced by their place in the queue, times (checked) by a placeholder, and
    a job's compressed call by the call (the lean path compresses it its own way)."""
    queue_key = f"rq:queue:{keys.evaluate_queue()}".encode()
    ids = client.lrange(queue_key, 0, -1)
    assert len(set(ids)) == len(ids)

    def name(value: bytes) -> bytes:
        for place, job_id in enumerate(ids):
            value = value.replace(job_id, b"<job %d>" % place)
        return value

    until = datetime.now(UTC) + timedelta(seconds=1)
    state: dict[bytes, Any] = {}
    for key in client.keys("*"):
        kind = client.type(key)
        value: Any
        if kind == b"hash":
            value = {name(field): name(text) for field, text in client.hgetall(key).items()}
            for field in TIME_FIELDS:
                moment = utcparse(value.pop(field).decode())
                assert since - timedelta(seconds=1) <= moment <= until
            value[b"data"] = zlib.decompress(value[b"data"])
        elif kind == b"list":
            value = [name(item) for item in client.lrange(key, 0, -1)]
        elif kind == b"set":
            value = sorted(name(member) for member in client.smembers(key))
        elif kind == b"string":
            value = client.get(key)
        else:  # pragma: no cover - rq 3.0 writes none of the others on enqueue
            value = f"unexpected {kind!r}"
        ttl = client.ttl(key)
        state[name(key)] = (kind, value, ttl if ttl < 0 else -(-ttl // 60))
    return state


@pytest.fixture
def evaluations(redis_client: redis.Redis, keys: KeySpace) -> Evaluations:
    made = Evaluations(redis_client, keys)
    assert made.lean, f"rq {rq.__version__} is not verified for the lean path"
    return made


@pytest.mark.parametrize("derive", ["read", "to_dict", None],
                         ids=["derived", "derived-through-to_dict", "each-recorded"])
def test_the_lean_path_writes_what_enqueue_many_writes(
        redis_client: redis.Redis, keys: KeySpace, evaluations: Evaluations,
        monkeypatch: pytest.MonkeyPatch, derive: str | None) -> None:
    if derive is None:  # as if two recordings did not tell how hosts differ
        monkeypatch.setattr(Evaluations, "_learn", lambda self, first, second: None)
    elif derive == "to_dict":  # as if they did not tell how to read the values off a Job
        monkeypatch.setattr(evaluate, "_readers", lambda fields, probes, encode: None)
    since = datetime.now(UTC)
    reference_enqueue(redis_client, keys, HOSTS)
    expected = snapshot(redis_client, keys, since)
    assert len(expected) == len(HOSTS) + 2  # the jobs, the queue, rq's queues set
    redis_client.flushdb()
    # The first time makes the templates (two hosts recorded, the others
    # derived or recorded too), the second sends from them.
    for _ in range(2):
        since = datetime.now(UTC)
        assert evaluations.enqueue(HOSTS) == len(HOSTS)
        assert snapshot(redis_client, keys, since) == expected
        redis_client.flushdb()
    assert evaluations.lean
    if derive is not None:
        # What differs between hosts in rq 3.0: the compressed call, the description.
        assert evaluations._slots is not None
        assert {slot.field for slot in evaluations._slots} == {"data", "description"}
        assert (evaluations._readers is None) is (derive == "to_dict")
    else:
        assert evaluations._slots is None


def test_derived_hosts_are_read_off_the_job_without_to_dict(
        redis_client: redis.Redis, keys: KeySpace, evaluations: Evaluations,
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert evaluations.enqueue(["bbs-01", "bbs-02"]) == 2  # recorded: the slots learnt
    assert evaluations._readers == {"data": evaluate._compressed,
                                    "description": evaluate._as_is}

    def refuse(self: Job, *args: Any, **kwargs: Any) -> dict[str, Any]:
        raise AssertionError("to_dict called for a derived host")

    monkeypatch.setattr(Job, "to_dict", refuse)
    # A plain host id takes the place of the recorded one's; any other host
    # (not a host id of the wire contract) is read off a Job.
    assert evaluations._frames is not None
    assert set(evaluations._frames) == {"data", "description"}
    read_off_a_job: list[str] = []
    job_values = Evaluations._job_values

    def counting(self: Evaluations, host: str) -> dict[str, bytes]:
        read_off_a_job.append(host)
        return job_values(self, host)

    monkeypatch.setattr(Evaluations, "_job_values", counting)
    assert evaluations.enqueue(["bbs-03", "掲示板-4"]) == 2
    assert read_off_a_job == ["掲示板-4"]
    queue = Queue(keys.evaluate_queue(), connection=redis_client, serializer=RQ_SERIALIZER)
    derived = [job for job in queue.get_jobs() if job.args[0] in ("bbs-03", "掲示板-4")]
    assert sorted(job.description for job in derived) == ["evaluate bbs-03", "evaluate 掲示板-4"]


def test_a_value_that_is_neither_as_is_nor_compressed_is_left_to_to_dict(
        redis_client: redis.Redis) -> None:
    job = Job.create(EVALUATE_JOB, args=("bbs-01",), description="evaluate bbs-01",
                     connection=redis_client, serializer=RQ_SERIALIZER)
    values = {"description": b"evaluate bbs-01", "data": zlib.compress(job.data)}
    encode = redis_client.get_encoder().encode
    assert evaluate._readers(["description", "data"], [(job, values)], encode) == {
        "description": evaluate._as_is, "data": evaluate._compressed}
    assert zlib.decompress(evaluate._compressed(job, "data", encode)) == job.data
    # Stored as it is, it is read as it is; stored some other way (here: as
    # base64), it is not read off the job.
    assert evaluate._readers(["data"], [(job, {"data": job.data})], encode) == {
        "data": evaluate._as_is}
    assert evaluate._readers(["data"], [(job, {"data": base64.b64encode(job.data)})],
                             encode) is None
    assert evaluate._readers(["description"], [(job, {"description": b"other"})],
                             encode) is None


def test_frames_put_a_host_id_where_both_recordings_had_theirs() -> None:
    frames = evaluate._frames
    as_is = {"x": evaluate._as_is}
    # The recorded id "a" also stands elsewhere: only the place where the
    # other recording has its own id is the host's.
    found = frames(as_is, (("a", {"x": b"[a] a!"}), ("b", {"x": b"[a] b!"})))
    assert found == {"x": evaluate._Frame(b"[a] ", b"!", False)}
    assert found["x"].value(b"bbs-9") == b"[a] bbs-9!"
    # The call, stored as a zlib stream: framed inside, compressed again.
    one, other = b'["f", null, ["bbs-01"], {}]', b'["f", null, ["bbs-02"], {}]'
    stored = frames({"x": evaluate._compressed}, (("bbs-01", {"x": zlib.compress(one)}),
                                                   ("bbs-02", {"x": zlib.compress(other)})))
    assert stored is not None
    assert zlib.decompress(stored["x"].value(b"x.y_z-1")) == b'["f", null, ["x.y_z-1"], {}]'
    # No frame when the values differ elsewhere too, when an id is not in its
    # value, or when a recorded host is not a plain id (its text may be escaped).
    assert frames(as_is, (("a", {"x": b"a 1"}), ("b", {"x": b"b 2"}))) is None
    assert frames(as_is, (("a", {"x": b"none"}), ("b", {"x": b"none"}))) is None
    assert frames(as_is, (("a\"", {"x": b"a\\\""}), ("b", {"x": b"b"}))) is None
    assert frames(as_is, (("a", {}), ("b", {}))) is None


def test_job_ids_are_uuid4_texts_as_rq_makes_them() -> None:
    ids = evaluate._job_ids(500)
    assert len(set(ids)) == 500
    for job_id in ids:
        made = uuid.UUID(job_id.decode())
        assert made.version == 4 and made.variant == uuid.RFC_4122
        assert str(made).encode() == job_id
    assert evaluate._job_ids(0) == []


def test_lean_jobs_read_back_through_rq(redis_client: redis.Redis, keys: KeySpace,
                                        evaluations: Evaluations) -> None:
    evaluations.enqueue(["bbs-02", "bbs-01"])
    evaluations.enqueue(["bbs-01"])
    queue = Queue(keys.evaluate_queue(), connection=redis_client, serializer=RQ_SERIALIZER)
    jobs = queue.get_jobs()
    assert [job.args for job in jobs] == [["bbs-01"], ["bbs-02"], ["bbs-01"]]
    assert len({job.id for job in jobs}) == 3
    for job in jobs:
        assert job.func_name == EVALUATE_JOB and job.kwargs == {}
        assert job.description == f"evaluate {job.args[0]}"
        assert (job.result_ttl, job.ttl, job.failure_ttl) == (0, JOB_TTL_S, FAILURE_TTL_S)
        assert job.origin == keys.evaluate_queue() and job.get_status() == JobStatus.QUEUED
        assert job.timeout == Queue.DEFAULT_TIMEOUT
        assert job.enqueued_at is not None and job.created_at <= job.enqueued_at
        assert 0 < redis_client.ttl(job.key) <= JOB_TTL_S
    assert redis_client.sismember("rq:queues", queue.key)


def test_the_same_host_twice_in_a_batch_is_one_job(redis_client: redis.Redis, keys: KeySpace,
                                                    evaluations: Evaluations) -> None:
    assert evaluations.enqueue(["bbs-01", "bbs-01", "bbs-02"]) == 2
    assert evaluations.enqueue([]) == 0
    assert redis_client.llen(f"rq:queue:{keys.evaluate_queue()}") == 2


def test_request_takes_the_marks_and_coalesces(redis_client: redis.Redis, keys: KeySpace,
                                               evaluations: Evaluations) -> None:
    assert evaluations.request(["bbs-01", "bbs-02", "bbs-01"]) == 2
    assert evaluations.request(["bbs-01", "bbs-02"]) == 0
    assert 0 < redis_client.ttl(keys.evaluation_pending("bbs-01")) <= 60
    redis_client.delete(keys.evaluation_pending("bbs-01"))  # as the job does
    assert evaluations.request(["bbs-01", "bbs-02"]) == 1
    assert redis_client.llen(f"rq:queue:{keys.evaluate_queue()}") == 3


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "enqueue_many"])
def test_a_failed_enqueue_frees_the_marks_and_raises(
        redis_client: redis.Redis, keys: KeySpace, monkeypatch: pytest.MonkeyPatch,
        lean: bool) -> None:
    if not lean:
        monkeypatch.setattr(evaluate, "VERIFIED_RQ_VERSIONS", frozenset())
    evaluations = Evaluations(redis_client, keys)
    assert evaluations.lean is lean
    assert evaluations.request(["bbs-01"]) == 1  # records the template (lean)
    # The queue key holding a string makes rq's push fail inside the transaction.
    queue_key = f"rq:queue:{keys.evaluate_queue()}"
    redis_client.delete(queue_key, keys.evaluation_pending("bbs-01"))
    redis_client.set(queue_key, "not a list")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        evaluations.request(["bbs-01", "bbs-02"])
    assert not redis_client.exists(keys.evaluation_pending("bbs-01"),
                                   keys.evaluation_pending("bbs-02"))
    redis_client.delete(queue_key)
    assert evaluations.request(["bbs-01", "bbs-02"]) == 2
    assert evaluations.lean is lean


def test_enqueue_raises_when_redis_is_unreachable(keys: KeySpace) -> None:
    client = redis.Redis(port=1, socket_connect_timeout=1)  # nothing listens on port 1
    with pytest.raises(redis.ConnectionError):
        Evaluations(client, keys).enqueue(["bbs-01"])


def test_an_unverified_rq_version_uses_enqueue_many(
        redis_client: redis.Redis, keys: KeySpace, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(evaluate, "VERIFIED_RQ_VERSIONS", frozenset({"0.0.0"}))
    with caplog.at_level(logging.INFO, logger="collector.evaluate"):
        evaluations = Evaluations(redis_client, keys)
    assert not evaluations.lean
    assert "using Queue.enqueue_many" in caplog.text
    since = datetime.now(UTC)
    assert evaluations.enqueue(HOSTS) == len(HOSTS)
    assert not evaluations._templates
    got = snapshot(redis_client, keys, since)
    redis_client.flushdb()
    reference_enqueue(redis_client, keys, HOSTS)
    assert got == snapshot(redis_client, keys, since)


def test_a_recording_not_understood_falls_back_for_good(
        redis_client: redis.Redis, keys: KeySpace, evaluations: Evaluations,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    real = evaluations.queue.enqueue_many

    def enqueue_many(datas: Any, pipeline: Any = None, **kwargs: Any) -> list[Job]:
        jobs = real(datas, pipeline=pipeline, **kwargs)
        if pipeline is not None:  # as if rq wrote the job some way we do not know
            pipeline.command_stack.clear()
        return jobs

    monkeypatch.setattr(evaluations.queue, "enqueue_many", enqueue_many)
    with caplog.at_level(logging.WARNING, logger="collector.evaluate"):
        assert evaluations.enqueue(["bbs-01", "bbs-02"]) == 2
    assert "no command names the job" in caplog.text
    assert not evaluations.lean
    assert evaluations.enqueue(["bbs-03"]) == 1
    queue = Queue(keys.evaluate_queue(), connection=redis_client, serializer=RQ_SERIALIZER)
    assert [job.args for job in queue.get_jobs()] == [["bbs-01"], ["bbs-02"], ["bbs-03"]]


def test_the_templates_kept_are_bounded(redis_client: redis.Redis, keys: KeySpace,
                                        evaluations: Evaluations,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(evaluate, "MAX_TEMPLATES", 2)
    assert evaluations.enqueue(["bbs-01", "bbs-02", "bbs-03"]) == 3
    assert len(evaluations._templates) == 2
    assert evaluations.enqueue(["bbs-01", "bbs-04"]) == 2
    assert len(evaluations._templates) == 2
    queue = Queue(keys.evaluate_queue(), connection=redis_client, serializer=RQ_SERIALIZER)
    assert sorted(job.args[0] for job in queue.get_jobs()) == [
        "bbs-01", "bbs-01", "bbs-02", "bbs-03", "bbs-04"]


def test_the_debug_line(evaluations: Evaluations, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="collector.evaluate"):
        evaluations.enqueue(["bbs-01", "bbs-02"])
    assert "enqueued evaluation of 2 host(s)" in caplog.messages


@pytest.mark.e2e
@pytest.mark.parametrize("lean", [True, False], ids=["lean", "enqueue_many"])
def test_an_alerter_worker_runs_the_jobs_and_they_free_the_marks(
        redis_client: redis.Redis, redis_url: str, keys: KeySpace,
        command: Callable[[str], str], clean_env: dict[str, str],
        monkeypatch: pytest.MonkeyPatch, lean: bool) -> None:
    if not lean:
        monkeypatch.setattr(evaluate, "VERIFIED_RQ_VERSIONS", frozenset())
    evaluations = Evaluations(redis_client, keys)
    assert evaluations.lean is lean
    assert evaluations.request(["bbs-01", "bbs-02"]) == 2
    redis_client.delete(keys.evaluation_pending("bbs-01"))
    assert evaluations.request(["bbs-01", "bbs-03"]) == 2  # bbs-01 from its template
    queue = Queue(keys.evaluate_queue(), connection=redis_client, serializer=RQ_SERIALIZER)
    assert queue.count == 4
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
