"""The worker's own behaviour around rq: restarts, stop signals, heartbeat TTLs, the job
allow-list."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from rq.exceptions import StopRequested
from rq.worker import WorkerStatus

from alerter import worker as worker_module
from alerter.worker import (
    ALLOWED_JOBS,
    PUBSUB_STOP_WAIT_S,
    AlerterJob,
    RefusedJob,
    build_worker,
)
from wire.keys import EVALUATE_JOB, RQ_SERIALIZER

HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGALRM)


class FakeWorker:
    """rq's work() as run_worker sees it; ``signal_at_start`` is delivered inside it."""

    def __init__(self, stop_signal: int | None = None,
                 signal_at_start: int | None = None) -> None:
        self.stop_signal = stop_signal
        self.signal_at_start = signal_at_start
        self.name = "fake"
        self.queues: list[Any] = []
        self.worked = 0

    def note_stop(self, signum: int) -> None:
        self.stop_signal = signum

    def work(self, **kwargs: Any) -> bool:
        self.worked += 1
        if self.signal_at_start is not None:
            signal.raise_signal(self.signal_at_start)  # the handler runs before this returns
        return True


@pytest.fixture
def guarded_signals() -> Iterator[list[int]]:
    """Handlers of our own for SIGTERM/SIGINT/SIGALRM during the test (a signal the
    code under test fails to catch lands here instead of ending pytest); the list
    collects what reached them. The handlers found before are put back after."""
    seen: list[int] = []
    before = {number: signal.getsignal(number) for number in HANDLED}

    def record(signum: int, frame: Any) -> None:
        seen.append(signum)

    for number in HANDLED:
        signal.signal(number, record)
    try:
        yield seen
    finally:
        for number, handler in before.items():
            signal.signal(number, handler)


def test_an_unexpected_end_of_rqs_loop_starts_a_new_worker(make_context: Any,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           guarded_signals: list[int]) -> None:
    ctx = make_context()
    made = [FakeWorker(), FakeWorker(signal_at_start=signal.SIGTERM)]
    monkeypatch.setattr(worker_module, "build_worker", lambda *a, **k: made.pop(0))
    pauses: list[float] = []
    monkeypatch.setattr(worker_module.time, "sleep", pauses.append)
    assert worker_module.run_worker(ctx) == 0
    assert made == [] and pauses == [1.0]
    # A burst run ends when the queues are empty, without a restart.
    burst = [FakeWorker()]
    monkeypatch.setattr(worker_module, "build_worker", lambda *a, **k: burst.pop(0))
    assert worker_module.run_worker(ctx, burst=True) == 0
    assert guarded_signals == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_is_not_taken_for_a_crash(make_context: Any,
                                                monkeypatch: pytest.MonkeyPatch,
                                                guarded_signals: list[int], signum: int) -> None:
    """A signal while rq's work() starts up (before its own handlers) is noted in
    the worker; run_worker returns 0 without starting another one."""
    ctx = make_context()
    made = [FakeWorker(signal_at_start=signum), FakeWorker()]
    monkeypatch.setattr(worker_module, "build_worker", lambda *a, **k: made.pop(0))
    monkeypatch.setattr(worker_module.time, "sleep", lambda s: pytest.fail("restarted"))
    assert worker_module.run_worker(ctx) == 0
    assert len(made) == 1 and guarded_signals == []
    assert all(signal.getsignal(n) is not None for n in HANDLED)


def test_a_stop_signal_during_the_restart_pause_ends_at_once(make_context: Any,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             guarded_signals: list[int]) -> None:
    ctx = make_context()
    made = [FakeWorker(), FakeWorker()]
    monkeypatch.setattr(worker_module, "build_worker", lambda *a, **k: made.pop(0))
    monkeypatch.setattr(worker_module.time, "sleep",
                        lambda s: signal.raise_signal(signal.SIGTERM))
    assert worker_module.run_worker(ctx) == 0
    assert len(made) == 1 and guarded_signals == []


def test_run_worker_puts_back_the_signal_handlers_it_found(make_context: Any,
                                                          guarded_signals: list[int]) -> None:
    """rq's work() installs request_stop for SIGTERM/SIGINT and resets SIGALRM,
    and leaves them so; run_worker restores the caller's."""
    ctx = make_context()
    ours = {number: signal.getsignal(number) for number in HANDLED}
    started = time.monotonic()
    assert worker_module.run_worker(ctx, burst=True) == 0
    # An empty burst takes about a second; rq's teardown once held it a minute.
    assert time.monotonic() - started < 15
    assert {number: signal.getsignal(number) for number in HANDLED} == ours


def test_rqs_stop_handler_is_remembered(make_context: Any, guarded_signals: list[int]) -> None:
    """The handler rq installs records the signal and never raises into the code it
    interrupts; an idle worker stops at its next stop point (before any wait for a
    job); during a batch of evaluations the worker counts as busy, so the batch
    finishes; after teardown, nothing of rq runs any more."""
    ctx = make_context()
    idle = build_worker(ctx)
    idle.request_stop(signal.SIGTERM, None)  # no exception: it would land anywhere
    assert idle.stop_signal == signal.SIGTERM
    with pytest.raises(StopRequested):
        idle.dequeue_job_and_maintain_ttl(60)  # raised before BLPOP, not after a minute

    batching = build_worker(ctx)
    batching._batching = True
    assert batching.get_state() == WorkerStatus.BUSY
    batching.request_stop(signal.SIGINT, None)
    assert batching.stop_signal == signal.SIGINT
    assert batching.shutdown_requested_date is not None  # rq's warm shutdown, noted in Redis
    batching.stop_if_requested()  # busy: the batch goes on

    finished = build_worker(ctx)
    finished.teardown()
    with pytest.raises(worker_module._Stopped):
        finished.request_stop(signal.SIGTERM, None)


class SwallowsEverything:
    """Stands for redis-py's ``Pipeline.__del__``, which runs whenever one of rq's
    maintenance pipelines goes away and ignores any Exception raised in it (a
    signal handler's included)."""

    def __init__(self, signum: int | None) -> None:
        self.signum = signum

    def __del__(self) -> None:
        try:
            if self.signum is not None:
                signal.raise_signal(self.signum)  # the handler runs in here
        except Exception:  # as the finalizer does
            pass


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_a_stop_signal_inside_code_that_swallows_exceptions_still_stops_the_worker(
        make_context: Any, monkeypatch: pytest.MonkeyPatch, guarded_signals: list[int],
        signum: int) -> None:
    """rq's handler raised StopRequested into whatever code was running; inside a
    finalizer it was lost, and rq's wait for jobs never looks at a stop flag, so
    the idle worker went on forever. The signal arrives here during a maintenance
    round of that wait; the worker must stop before the next round."""
    ctx = make_context({"alerter": {"maintenance_interval": 1.0}})
    worker = build_worker(ctx, name="swallowed-stop")
    rounds: list[str] = []
    rescue = worker_module.dispatch.rescue

    def round_with_a_signal(*args: Any) -> None:
        rounds.append("round")
        if len(rounds) == 2:  # the first round inside rq's wait for a job
            SwallowsEverything(signum)  # dropped at once: __del__ runs now
        elif len(rounds) > 4:
            # Ends rq's loop if the stop was lost (rq catches everything, a
            # BaseException included, and quits), so that the test fails rather than hangs.
            raise KeyboardInterrupt("still running after the stop signal")
        rescue(*args)

    monkeypatch.setattr(worker_module.dispatch, "rescue", round_with_a_signal)
    started = time.monotonic()
    worker.work(with_scheduler=True)
    assert worker.stop_signal == signum
    assert len(rounds) == 2, "maintenance rounds went on after the stop signal"
    assert time.monotonic() - started < 10
    assert guarded_signals == []


def test_a_suspended_worker_stops_on_a_signal(make_context: Any,
                                              monkeypatch: pytest.MonkeyPatch,
                                              guarded_signals: list[int]) -> None:
    """While ``rq suspend`` is in force the worker pauses a second at a time; a stop
    signal during a pause ends it after that pause."""
    from rq.suspension import resume, suspend

    ctx = make_context({"alerter": {"maintenance_interval": 1.0}})
    worker = build_worker(ctx, name="suspended-stop")
    suspend(worker.connection)
    pauses: list[float] = []

    def pause(seconds: float) -> None:
        pauses.append(seconds)
        if len(pauses) == 1:
            signal.raise_signal(signal.SIGTERM)
        elif len(pauses) > 3:
            resume(worker.connection)  # the stop was lost: let the test fail, not hang

    monkeypatch.setattr(worker_module.time, "sleep", pause)
    try:
        worker.work()
    finally:
        resume(worker.connection)
    assert worker.stop_signal == signal.SIGTERM
    assert pauses == [1]


def test_a_failed_heartbeat_is_a_stop_point(make_context: Any,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """While Redis is unreachable rq's wait for a job retries the heartbeat after
    pauses of up to a minute; a stop asked for meanwhile ends the wait there."""
    import redis

    worker = build_worker(make_context())

    def unreachable(*args: Any, **kwargs: Any) -> None:
        raise redis.ConnectionError("Redis is down")

    monkeypatch.setattr(worker.connection, "hset", unreachable)
    with pytest.raises(redis.ConnectionError):
        worker.heartbeat()
    worker.note_stop(signal.SIGTERM)
    with pytest.raises(StopRequested):
        worker.heartbeat()


class WaitForSubscriptionSeen(threading.Event):
    """redis-py's ``subscribed_event``, telling when a thread waits for a subscription."""

    def __init__(self) -> None:
        super().__init__()
        self.waited = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        if not self.is_set():
            self.waited.set()
        return super().wait(timeout)


def test_teardown_does_not_wait_a_minute_for_rqs_pubsub_thread(
        make_context: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The order of events that held a ``worker --burst`` for a minute on a busy
    machine, made certain: rq's command thread reads the reply to the
    unsubscribe and is back in the pubsub before the teardown stops it."""
    worker = build_worker(make_context())
    worker.subscribe()
    pubsub, thread = worker.pubsub, worker.pubsub_thread
    subscription = WaitForSubscriptionSeen()
    subscription.set()  # subscribed, as rq's subscribe() left it
    pubsub.subscribed_event = subscription
    send_unsubscribe = pubsub.unsubscribe

    def unsubscribe_then_let_the_thread_run_first(*args: Any) -> Any:
        sent = send_unsubscribe(*args)
        # The thread handles the reply, then either ends or waits (up to
        # 60 s) for a subscription; only then does the teardown go on.
        deadline = time.monotonic() + 10
        while thread.is_alive() and not subscription.waited.is_set():
            assert time.monotonic() < deadline, "the thread neither ended nor waited"
            time.sleep(0.01)
        return sent

    monkeypatch.setattr(pubsub, "unsubscribe", unsubscribe_then_let_the_thread_run_first)
    started = time.monotonic()
    teardown = threading.Thread(target=worker.teardown, daemon=True)
    teardown.start()
    teardown.join(timeout=PUBSUB_STOP_WAIT_S + 5)
    assert not teardown.is_alive(), "the teardown waits for rq's pubsub thread"
    assert time.monotonic() - started < PUBSUB_STOP_WAIT_S + 2
    # The thread was told to end before the reply came, so it ended then.
    assert not subscription.waited.is_set()
    assert not thread.is_alive()


def test_teardown_waits_a_bounded_time_for_a_pubsub_thread_that_does_not_end(
        make_context: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """rq's command thread already waiting for a subscription when the teardown
    comes (nothing will wake it for a minute): the teardown goes on after
    PUBSUB_STOP_WAIT_S and leaves the daemon thread to end on its own."""
    monkeypatch.setattr(worker_module, "PUBSUB_STOP_WAIT_S", 0.3)
    worker = build_worker(make_context())
    worker.subscribe()
    pubsub, thread = worker.pubsub, worker.pubsub_thread
    subscription = WaitForSubscriptionSeen()  # never set: the subscription never comes
    pubsub.subscribed_event = subscription
    # A command rq ignores wakes the thread; back in the loop, it waits.
    worker.connection.publish(worker.pubsub_channel_name, '{"command": "none"}')
    assert subscription.waited.wait(timeout=10)
    started = time.monotonic()
    teardown = threading.Thread(target=worker.teardown, daemon=True)
    teardown.start()
    teardown.join(timeout=10)
    assert not teardown.is_alive(), "the teardown waits for rq's pubsub thread"
    assert time.monotonic() - started < 0.3 + 2
    assert thread.is_alive()  # still waiting: the bound, not the thread, ended the wait


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
    assert ours.perform() == {"hosts": 0, "missing": 1, "dropped": 0, "transitions": 0,
                              "notices": []}


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
