"""The worker's own behaviour around rq: restarts, heartbeat TTLs, the job allow-list."""

from __future__ import annotations

from typing import Any

import pytest

from alerter import worker as worker_module
from alerter.worker import ALLOWED_JOBS, AlerterJob, RefusedJob, build_worker
from wire.keys import EVALUATE_JOB, RQ_SERIALIZER


class FakeWorker:
    def __init__(self, stop_requested: bool) -> None:
        self._stop_requested = stop_requested
        self.name = "fake"
        self.queues: list[Any] = []
        self.worked = 0

    def work(self, **kwargs: Any) -> bool:
        self.worked += 1
        return True


def test_an_unexpected_end_of_rqs_loop_starts_a_new_worker(make_context: Any,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    ctx = make_context()
    made = [FakeWorker(stop_requested=False), FakeWorker(stop_requested=True)]
    monkeypatch.setattr(worker_module, "build_worker", lambda *a, **k: made.pop(0))
    pauses: list[float] = []
    monkeypatch.setattr(worker_module.time, "sleep", pauses.append)
    monkeypatch.setattr(worker_module.signal, "signal", lambda *a: None)
    assert worker_module.run_worker(ctx) == 0
    assert made == [] and pauses == [1.0]
    # A burst run ends when the queues are empty, without a restart.
    burst = [FakeWorker(stop_requested=False)]
    monkeypatch.setattr(worker_module, "build_worker", lambda *a, **k: burst.pop(0))
    assert worker_module.run_worker(ctx, burst=True) == 0


def test_heartbeat_ttls_follow_the_grace(make_context: Any) -> None:
    ctx = make_context({"alerter": {"abandoned_grace": 4.0, "maintenance_interval": 3.0}})
    simple = build_worker(ctx)
    job = AlerterJob.create(EVALUATE_JOB, args=("bbs-01",), connection=ctx.client,
                            serializer=RQ_SERIALIZER, timeout=20)
    assert simple.get_heartbeat_ttl(job) == 24
    assert simple.dequeue_timeout == 3
    fork = build_worker(ctx, worker_class="fork")
    assert fork.get_heartbeat_ttl(job) == 3 + 4


def test_only_the_alerters_jobs_run(make_context: Any) -> None:
    ctx = make_context()
    assert {"alerter.jobs.evaluate_host", "alerter.jobs.deliver",
            "alerter.jobs.flush_channel"} == set(ALLOWED_JOBS)
    foreign = AlerterJob.create("os.getcwd", connection=ctx.client, serializer=RQ_SERIALIZER)
    with pytest.raises(RefusedJob, match="not an alerter job"):
        foreign.perform()
    assert foreign.failure_callback is None and foreign.success_callback is None
    ours = AlerterJob.create(EVALUATE_JOB, args=("bbs-01",), connection=ctx.client,
                             serializer=RQ_SERIALIZER)
    assert ours.perform() == {"hosts": 0, "missing": 1, "transitions": 0, "notices": []}


def test_evaluation_jobs_are_read_from_their_stored_call(make_context: Any) -> None:
    import zlib

    from rq.serializers import resolve_serializer

    from alerter.worker import evaluation_host

    serializer = resolve_serializer(RQ_SERIALIZER)
    job = AlerterJob.create(EVALUATE_JOB, args=("bbs-01",), connection=make_context().client,
                            serializer=RQ_SERIALIZER)
    stored = job.to_dict()["data"]
    assert evaluation_host(stored, serializer) == "bbs-01"
    assert evaluation_host(job.data, serializer) == "bbs-01"  # not compressed
    for call in (["os.system", None, ["bbs-01"], {}], [EVALUATE_JOB, None, ["a", "b"], {}],
                 [EVALUATE_JOB, None, [1], {}], [EVALUATE_JOB, None, ["a"], {"x": 1}]):
        assert evaluation_host(zlib.compress(serializer.dumps(call)), serializer) is None
    assert evaluation_host(b"\x80\x04garbage", serializer) is None
