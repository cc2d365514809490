"""The alerter's rq worker: rq's Worker, tuned for short jobs and quick recovery.

What it adds to rq 3.0 (each documented in docs/alerter.md):

* **Abandoned jobs are found in seconds, not minutes.** rq re-runs (or
  fails) a job whose worker died once its entry in the StartedJobRegistry
  expires, and only during a maintenance round. rq's defaults make that
  "job timeout + 60 s" and "every 10 minutes"; here the grace after the
  timeout is ``[alerter] abandoned_grace`` and maintenance runs every
  ``maintenance_interval`` seconds (the blocking dequeue wakes up that often
  to allow it). Delivery jobs are enqueued with an rq ``Retry`` so that such
  a re-run happens (see :mod:`alerter.dispatch`).
* **Evaluations in batches.** Every report of every host enqueues an
  evaluation job; rq's per-job bookkeeping costs about twenty Redis round
  trips, which caps a worker at a few hundred jobs a second. After running
  one evaluation job the normal way, the worker takes up to
  ``evaluate_batch`` more evaluation jobs off the queue at once (LPOP with a
  count), evaluates their hosts in one pass and deletes the job hashes. An
  evaluation is idempotent and the next report re-enqueues it, so the rare
  loss of a batch to a crash only delays a verdict. Other jobs found on that
  queue are put back untouched.
* **Maintenance of our own**, every round: rescue digest buffers whose flush
  is overdue, and (one worker per ``tick_interval``) re-evaluate hosts with
  pending, firing or flapping alerts so that hold-downs and repeats advance
  even for hosts that stopped reporting.

Workers always run rq's scheduler (one of them holds its lock): retries
with an interval and digest flushes are scheduled jobs. rq 3.0 forks the
scheduler into a child process, which a worker killed with SIGKILL leaves
behind with parent 1, still holding the lock, so that the restarted worker has
no scheduler of its own. Here the scheduler runs in a thread of the worker
(:class:`SchedulerThread`, driving rq's RQScheduler through its public
methods): it cannot outlive its worker. Its lock is held under the worker's
name, so a worker restarted under a fixed ``--name`` takes it over at once,
and a lock whose holder was a worker process on this machine that is gone is
released before the next attempt to acquire it.

**Stopping.** SIGTERM or SIGINT is rq's warm shutdown: a job (or a batch of
evaluations) in progress finishes, then the worker deregisters and
:func:`run_worker` returns 0; a second signal during that job is rq's cold
shutdown. Only an end of rq's loop that nobody asked for (rq quits on a Redis
timeout or an unhandled error) starts a fresh worker, after a pause in which
a signal also ends the process at once. The signal handlers found at the start
are back in place when :func:`run_worker` returns.

rq stops an idle worker by raising StopRequested out of its signal handler,
in whatever code the main thread is running at that moment, and its dequeue
loop never looks at a stop flag. Raised inside a finalizer (redis-py's
``Pipeline.__del__``, run whenever one of rq's maintenance pipelines goes
away) or any other code that catches Exception, the exception is lost: the
worker went on waiting for jobs, stop requested and never acted on, until it
was killed. Here the handler only records the stop; the worker raises
StopRequested itself at points of its own loop where nothing can swallow it
(before each wait for a job, around each maintenance round, between the
pauses of ``rq suspend``, at each retry while Redis is unreachable), and it
waits for jobs at most :data:`STOP_CHECK_INTERVAL_S` at a time, so an idle
worker ends within about that long.

**Teardown in bounded time.** rq listens for its commands on a pubsub
channel in a thread that redis-py runs; at teardown rq unsubscribes and then
stops that thread. If the thread has already read the reply to the
unsubscribe and gone back to wait for a subscription (up to a minute) when
the stop comes, redis-py 8.2's ``stop()``, which waits for the thread without
a limit, holds the worker that long: a ``--burst`` run or a stop signal
ended a minute late whenever the machine was busy. The worker therefore
asks the thread to end *before* it unsubscribes, so the reply to the
unsubscribe wakes a thread that already knows to end, and waits for it at
most :data:`PUBSUB_STOP_WAIT_S`.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import signal
import socket
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import FrameType
from typing import Any

import psutil
import redis
from rq import Queue, SimpleWorker, Worker
from rq.exceptions import SchedulerNotFound, StopRequested
from rq.job import Job
from rq.scheduler import RQScheduler
from rq.scripts import release_lock
from rq.serializers import resolve_serializer
from rq.suspension import is_suspended
from rq.worker import WorkerStatus

from alerter import dispatch
from alerter.context import AlerterContext, set_context
from alerter.evaluate import evaluate_hosts, tick
from wire.config import connect
from wire.keys import EVALUATE_JOB, RQ_SERIALIZER
from wire.replies import text

logger = logging.getLogger(__name__)

# How long a teardown waits for rq's pubsub thread to end. It normally ends as
# soon as the reply to the unsubscribe arrives; a thread that does not is a
# daemon thread and is left to end on its own.
PUBSUB_STOP_WAIT_S = 2.0

# How long a teardown waits for the scheduler thread's current round (a
# Redis round trip or two) before the worker deregisters anyway.
SCHEDULER_STOP_WAIT_S = 5.0

# The longest single wait for a job (seconds, a whole number for BLPOP): a
# stop is acted on between two waits (see the module doc).
STOP_CHECK_INTERVAL_S = 1

# rq's heartbeat TTL for jobs without a timeout.
_NO_TIMEOUT_TTL = 420
# How long one worker keeps draining the evaluation queue before it looks at
# its other queues (and its notifications) again.
_DRAIN_BUDGET_S = 0.5


# The only functions this worker runs. rq imports whatever function path a
# queued job names; anyone able to write to our queues could otherwise run
# code in the alerter.
ALLOWED_JOBS = frozenset({EVALUATE_JOB, dispatch.DELIVER_JOB, dispatch.FLUSH_JOB})


class RefusedJob(Exception):
    """A queued job that is not one of the alerter's; it fails without running."""


class AlerterJob(Job):
    """rq's Job limited to :data:`ALLOWED_JOBS`, without callbacks or webhooks.

    Our jobs use neither; a job that names them was not enqueued by us, and
    rq would import a callback by name or POST to a webhook URL for it.
    """

    @property
    def success_callback(self) -> None:
        return None

    @property
    def failure_callback(self) -> None:
        return None

    @property
    def stopped_callback(self) -> None:
        return None

    def send_webhooks(self, status: Any, *, exc_string: str | None = None) -> None:
        return None

    def perform(self) -> Any:
        """Run the job if it is one of ours, else raise RefusedJob."""
        if self.func_name not in ALLOWED_JOBS or self.instance is not None:
            name = str(self.func_name)[:100]
            logger.error("refusing job %s: %r is not an alerter job", self.id, name)
            raise RefusedJob(f"{name!r} is not an alerter job; refused")
        return super().perform()


def maintenance(ctx: AlerterContext, worker_name: str) -> None:
    """Our part of a maintenance round; it never raises.

    A stop signal does not raise in here (see the module doc): the worker
    acts on it after the round.
    """
    try:
        dispatch.rescue(ctx, ctx.channels)
    except Exception:
        logger.exception("rescuing digest buffers failed")
    try:
        interval_ms = int(ctx.settings.tick_interval * 1000)
        if ctx.client.set(ctx.keys.alerter_tick(), worker_name, nx=True, px=interval_ms):
            hosts = tick(ctx)
            if hosts:
                logger.debug("re-evaluated %d host(s) with active alerts", hosts)
    except Exception:
        logger.exception("periodic re-evaluation failed")


def evaluation_host(data: bytes, serializer: Any) -> str | None:
    """The host of a queued ``evaluate_host(host)`` job from its stored data, else None.

    rq keeps a job's call as ``(function, instance, args, kwargs)`` serialised
    and zlib-compressed in the job hash's ``data`` field. Reading that one
    field is a third of the cost of restoring whole Job objects; anything that
    does not decode to exactly our evaluation call is left to rq's own path.
    ``serializer`` is a resolved serializer (an object with ``loads``).
    """
    try:
        try:
            raw = zlib.decompress(data)
        except zlib.error:
            raw = data
        func, instance, args, kwargs = serializer.loads(raw)
    except Exception:  # noqa: BLE001 - whatever it is, it is not ours to judge
        return None
    if func != EVALUATE_JOB or instance is not None or kwargs:
        return None
    if not isinstance(args, list | tuple) or len(args) != 1 or not isinstance(args[0], str):
        return None
    return args[0]


def take_evaluations(ctx: AlerterContext, connection: Any, queue: Queue, batch: int,
                     serializer: Any, other_queues: Sequence[str] = ()) -> int:
    """Evaluate up to ``batch`` queued evaluation jobs at a time; how many were taken.

    Stops when the queue is empty, after ``_DRAIN_BUDGET_S``, or as soon as
    one of ``other_queues`` (the notify queue) has work: a notification
    never waits behind a backlog of evaluations.
    """
    taken = 0
    serializer = resolve_serializer(serializer)
    deadline = time.monotonic() + _DRAIN_BUDGET_S
    while batch > 0 and time.monotonic() < deadline:
        if other_queues and any(connection.llen(key) for key in other_queues):
            break
        raw_ids = connection.lpop(queue.key, batch)
        if not raw_ids:
            break
        ids = [i.decode() if isinstance(i, bytes) else str(i) for i in raw_ids]
        with connection.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(AlerterJob.key_for(job_id), "data")
            datas = pipe.execute()
        hosts: list[str] = []
        done: list[str] = []
        foreign: list[str] = []
        for job_id, data in zip(ids, datas, strict=True):
            if data is None:
                continue  # expired or deleted meanwhile
            host = evaluation_host(data, serializer)
            if host is None:
                foreign.append(job_id)
            else:
                hosts.append(host)
                done.append(job_id)
        if foreign:
            # Back at the front, in their order, for rq's normal path.
            connection.lpush(queue.key, *reversed(foreign))
        if hosts:
            evaluate_hosts(ctx, hosts)
        if done:
            connection.delete(*(AlerterJob.key_for(job_id) for job_id in done))
        taken += len(done)
        if foreign or len(raw_ids) < batch:
            break
    return taken


def process_gone(pid: int) -> bool:
    """True when no live process has ``pid`` on this machine.

    A zombie counts as gone: a process killed with SIGKILL stays one until its
    parent reaps it, and ``os.kill(pid, 0)`` succeeds on it. A process we may
    not inspect counts as alive.
    """
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False


def _registered_by_dead_process(hostname: str, pid: int) -> bool:
    """A registration (worker or scheduler) made by a process of this machine that is gone.

    Our own pid counts as gone: the registration is a predecessor's (a
    container restarted with the same pid), this process has not made it.
    """
    if hostname != socket.gethostname() or pid <= 0:
        return False
    return pid == os.getpid() or process_gone(pid)


def release_dead_scheduler_locks(connection: Any, queue_names: Sequence[str],
                                 own_name: str) -> list[str]:
    """Release the scheduler locks of ``queue_names`` whose holder's process is gone.

    A scheduler registers its host and pid under its name, and its lock holds
    that name; a holder that ran on this machine and is gone (see
    :func:`_registered_by_dead_process`) would otherwise keep the lock until
    it expires, a minute later. A lock held under ``own_name`` is this
    scheduler's. Returns the queue names released.
    """
    released = []
    dead: dict[str, RQScheduler] = {}
    for queue_name in queue_names:
        lock_key = RQScheduler.get_locking_key(queue_name)
        raw = connection.get(lock_key)
        if raw is None:
            continue
        holder = text(raw)
        if holder == own_name:
            continue
        previous = dead.get(holder)
        if previous is None:
            try:
                previous = RQScheduler.fetch(holder, connection)
            except (SchedulerNotFound, KeyError, ValueError):
                continue  # no (readable) registration: nothing tells where it ran
            if not _registered_by_dead_process(previous.hostname, previous.pid):
                continue
        if release_lock(connection, lock_key, holder):
            dead[holder] = previous
            released.append(queue_name)
            logger.warning("released the scheduler lock of %s held by a dead process "
                           "(%s, pid %d)", queue_name, holder, previous.pid)
    for previous in dead.values():
        previous.register_death()
    return released


class SchedulerThread:
    """rq's scheduler, run in a thread of the worker's own process.

    The thread does what rq's scheduler process does, through RQScheduler's
    public methods: hold or refresh the queues' locks, enqueue the scheduled
    jobs that are due (every ``interval`` seconds, rq's scheduler interval),
    and at the end release the locks. A worker that holds no lock, or not all,
    tries again every ``acquire_interval`` seconds, as rq's maintenance round
    does, after releasing locks left by dead processes of this machine.
    """

    def __init__(self, queues: Sequence[Queue], connection: Any, *, name: str, serializer: Any,
                 acquire_interval: float, logging_level: Any = None) -> None:
        self.scheduler = RQScheduler(queues, connection=connection, name=name,
                                     serializer=serializer, logging_level=logging_level)
        self._queue_names = sorted({q.name for q in queues})
        self._acquire_interval = acquire_interval
        self._registered = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rq-scheduler {name}",
                                        daemon=True)

    def start(self) -> None:
        """Start scheduling in the background."""
        self._thread.start()

    def stop(self, timeout: float = SCHEDULER_STOP_WAIT_S) -> None:
        """End the thread (it releases its locks) and wait for it at most ``timeout``."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("the scheduler thread did not end within %.0f s; its locks "
                               "expire on their own", timeout)

    def run_once(self) -> None:
        """One pass for a burst run: acquire, enqueue what is due, release."""
        scheduler = self.scheduler
        release_dead_scheduler_locks(scheduler.connection, self._queue_names,
                                     scheduler.name)
        if not scheduler.acquire_locks():
            return
        try:
            scheduler.register_birth()
            scheduler.enqueue_scheduled_jobs()
        finally:
            scheduler.release_locks()
            scheduler.register_death()

    def _round(self, acquire: bool) -> None:
        scheduler = self.scheduler
        if acquire:
            release_dead_scheduler_locks(scheduler.connection, self._queue_names,
                                         scheduler.name)
            scheduler.acquire_locks()  # also refreshes the locks already held
        if not scheduler.acquired_locks:
            return
        if not self._registered:
            scheduler.register_birth()
            self._registered = True
        # Refreshes the registration and the locks; drops a lock taken over.
        scheduler.heartbeat()
        scheduler.enqueue_scheduled_jobs()

    def _run(self) -> None:
        scheduler = self.scheduler
        next_acquire = 0.0
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                acquire = set(scheduler.acquired_locks) != set(self._queue_names) \
                    and now >= next_acquire
                if acquire:
                    next_acquire = now + self._acquire_interval
                try:
                    self._round(acquire)
                except redis.RedisError as exc:
                    logger.warning("scheduler round failed: %s", exc)
                except Exception:
                    logger.exception("scheduler round failed")
                self._stop.wait(scheduler.interval)
        finally:
            try:
                scheduler.release_locks()
                if self._registered:
                    scheduler.register_death()
            except redis.RedisError as exc:
                logger.debug("releasing the scheduler locks failed (%s); they expire", exc)


def _end_after_current_read(thread: Any) -> None:
    """Tell redis-py's pubsub thread to end once its current read returns, without waiting.

    redis-py 8.2's ``stop()`` also waits for the thread, without a limit
    unless given a timeout; earlier versions only clear the thread's flag.
    """
    if "timeout" in inspect.signature(thread.stop).parameters:
        thread.stop(timeout=0)
    else:
        thread.stop()


class _Stopped(BaseException):
    """A stop signal outside rq's loop (a BaseException: nothing may swallow it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class BoundedPubsubTeardown:
    """For an rq Worker class: its teardown waits for rq's pubsub thread at most
    :data:`PUBSUB_STOP_WAIT_S` (see the module doc). Put it before rq's class."""

    name: str
    # rq's command channel: set by rq's subscribe() at the start of work().
    pubsub: Any
    pubsub_thread: Any
    pubsub_channel_name: str

    def unsubscribe(self) -> None:
        """rq's unsubscribe from its command channel, never waiting long for the thread.

        The thread is told to end first and the unsubscribe sent after: its
        reply then wakes the thread, which ends instead of waiting for a
        new subscription (see the module doc).
        """
        thread, pubsub = self.pubsub_thread, self.pubsub
        if thread is None or pubsub is None:
            return
        _end_after_current_read(thread)
        if thread.is_alive():
            try:
                pubsub.unsubscribe()
            except redis.RedisError as exc:
                # Closing the connection below unsubscribes as well.
                logger.debug("unsubscribing from %s failed: %s", self.pubsub_channel_name, exc)
            thread.join(timeout=PUBSUB_STOP_WAIT_S)
            if thread.is_alive():
                logger.debug("the pubsub thread of %s did not end within %.0f s; left to end "
                             "on its own", self.name, PUBSUB_STOP_WAIT_S)
        pubsub.close()


class _AlerterWorkerMixin(BoundedPubsubTeardown):
    """What both worker classes add to rq's."""

    alerter_context: AlerterContext
    name: str
    connection: Any
    serializer: Any
    queues: list[Queue]
    # The signal that asked this worker to stop, once one did.
    stop_signal: int | None = None
    # True while a batch of evaluations runs after a job (see execute_job).
    _batching: bool = False
    # True once rq's work() has torn the worker down.
    _finished: bool = False
    # What work() was asked for: the scheduler (ours, in a thread), a burst.
    _with_scheduler: bool = False
    _burst: bool = False
    _logging_level: Any = None
    scheduler_thread: SchedulerThread | None = None

    def __init__(self, *args: Any, alerter_context: AlerterContext, **kwargs: Any) -> None:
        # Set before rq's __init__, which already asks for dequeue_timeout.
        self.alerter_context = alerter_context
        super().__init__(*args, **kwargs)

    def work(self, burst: bool = False, logging_level: Any = None, *args: Any,
             with_scheduler: bool = False, **kwargs: Any) -> bool:
        """rq's work(); ``with_scheduler`` runs the scheduler in a thread of this process
        (see the module doc) instead of rq's child process."""
        self._with_scheduler, self._burst, self._logging_level = \
            with_scheduler, burst, logging_level
        try:
            worked: bool = super().work(burst, logging_level, *args,  # type: ignore[misc]
                                        with_scheduler=False, **kwargs)
            return worked
        finally:
            self.stop_scheduler_thread()

    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        """rq's bootstrap (the worker's registration), then the scheduler.

        The scheduler starts only once rq has accepted the worker's name: it
        holds its locks under that name.
        """
        super().bootstrap(*args, **kwargs)  # type: ignore[misc]
        if not self._with_scheduler:
            return
        ctx = self.alerter_context
        scheduler = SchedulerThread(
            self.queues, self.connection, name=self.name, serializer=self.serializer,
            acquire_interval=ctx.settings.maintenance_interval,
            logging_level=self._logging_level)
        if self._burst:
            scheduler.run_once()
            return
        self.scheduler_thread = scheduler
        scheduler.start()

    def stop_scheduler_thread(self) -> None:
        """End the scheduler thread, if one runs (it releases its locks)."""
        if self.scheduler_thread is not None:
            self.scheduler_thread.stop()
            self.scheduler_thread = None

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        """rq's warm shutdown (its SIGTERM/SIGINT handler), recorded and acted on later.

        rq records the request (in Redis too while a job runs, which then
        finishes), makes a second signal its cold shutdown and, for an idle
        worker, raises StopRequested into whatever code the main thread is
        running. That exception stops here: the worker raises its own at its
        next stop point (see the module doc). ``stop_signal`` also tells
        :func:`run_worker` not to start again.
        """
        if self._finished:
            # rq leaves this handler installed after work() returned; the
            # worker is deregistered, so there is nothing to shut down.
            raise _Stopped(signum)
        self.note_stop(signum)
        try:
            super().request_stop(signum, frame)  # type: ignore[misc]
        except StopRequested:
            pass  # idle: stop_if_requested raises it where nothing swallows it

    def note_stop(self, signum: int) -> None:
        """Record a stop request; the worker stops at its next stop point.

        Also the handler while rq's work() starts up (registration, scheduler),
        before rq installs request_stop: raising there would skip rq's teardown.
        """
        self.stop_signal = signum

    def stop_if_requested(self) -> None:
        """A stop point: raise StopRequested once a stop was asked for, unless busy.

        Called only where rq's loop has no job in hand and where the
        exception reaches rq's loop, which then tears the worker down.
        """
        if self.stop_signal is not None and self.get_state() != WorkerStatus.BUSY:
            raise StopRequested()

    def check_for_suspension(self, burst: bool) -> None:
        """rq's pause while ``rq suspend`` is in force, with stop points.

        rq's own pause ends only on its private stop flag; this one also ends
        on a stop signal. A suspended burst run ends as in rq.
        """
        self.stop_if_requested()
        if burst:
            super().check_for_suspension(burst)  # type: ignore[misc]
            return
        if not is_suspended(self.connection, self):  # type: ignore[arg-type]
            return
        before = self.get_state()
        self.set_state(WorkerStatus.SUSPENDED)  # type: ignore[attr-defined]
        logger.info("worker %s is suspended; `rq resume` resumes it", self.name)
        while is_suspended(self.connection, self):  # type: ignore[arg-type]
            self.stop_if_requested()
            time.sleep(1)
        self.set_state(before)  # type: ignore[attr-defined]

    def dequeue_job_and_maintain_ttl(self, timeout: int | None,
                                     max_idle_time: int | None = None) -> tuple[Job, Queue] | None:
        """rq's wait for a job, in waits of at most STOP_CHECK_INTERVAL_S with a
        stop point before each (see the module doc)."""
        if timeout is None:  # a burst run: one look at the queues, without waiting
            self.stop_if_requested()
            return self._dequeue_with_rq(None, max_idle_time)
        idle_since = time.monotonic()
        while True:
            self.stop_if_requested()
            wait = min(timeout, STOP_CHECK_INTERVAL_S)
            if max_idle_time is not None:
                left = max_idle_time - (time.monotonic() - idle_since)
                if left <= 0:
                    return None
                wait = max(1, min(wait, math.ceil(left)))
            # Given max_idle_time, rq returns None once its wait has run out.
            result = self._dequeue_with_rq(wait, wait)
            if result is not None:
                return result

    def _dequeue_with_rq(self, timeout: int | None,
                         max_idle_time: int | None) -> tuple[Job, Queue] | None:
        """rq's own dequeue_job_and_maintain_ttl."""
        result: tuple[Job, Queue] | None = \
            super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)  # type: ignore[misc]
        return result

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        """rq's heartbeat; when it fails it is also a stop point.

        While Redis is unreachable rq's wait for a job retries the heartbeat
        after a pause, for as long as it takes; a stop asked for meanwhile
        ends the wait there instead.
        """
        try:
            super().heartbeat(timeout, pipeline)  # type: ignore[misc]
        except (redis.ConnectionError, redis.TimeoutError):
            self.stop_if_requested()
            raise

    def teardown(self) -> None:
        """The scheduler, then rq's teardown (deregistration); later signals stop
        run_worker directly."""
        try:
            self.stop_scheduler_thread()
            super().teardown()  # type: ignore[misc]
        finally:
            self._finished = True

    def get_state(self) -> str:
        """rq's state, but BUSY during a batch of evaluations.

        rq's warm shutdown interrupts an idle worker at once and lets a busy
        one finish its job; a batch has its jobs already taken off the queue,
        so it finishes like a job.
        """
        if self._batching:
            return WorkerStatus.BUSY
        state: str = super().get_state()  # type: ignore[misc]
        return state

    @property
    def dequeue_timeout(self) -> int:
        """Wake up at least once per maintenance interval."""
        return max(1, math.ceil(self.alerter_context.settings.maintenance_interval))

    @property
    def _grace(self) -> int:
        return max(1, math.ceil(self.alerter_context.settings.abandoned_grace))

    def run_maintenance_tasks(self) -> None:
        """rq's registry cleaning (abandoned jobs), then ours; stop points around each."""
        self.stop_if_requested()
        try:
            super().run_maintenance_tasks()  # type: ignore[misc]
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # rq would end the worker on this; the dequeue loop already waits
            # for Redis to come back, so skip this round instead.
            logger.warning("maintenance skipped, Redis unreachable: %s", exc)
            return
        self.stop_if_requested()
        maintenance(self.alerter_context, self.name)
        self.stop_if_requested()

    def execute_job(self, job: Job, queue: Queue) -> None:
        """Run the job; after an evaluation job, take a batch of the queued ones."""
        super().execute_job(job, queue)  # type: ignore[misc]
        ctx = self.alerter_context
        if (queue.name == ctx.keys.evaluate_queue() and ctx.settings.evaluate_batch > 0
                and self.stop_signal is None):
            self._batching = True
            try:
                others = [q.key for q in self.queues if q.name != queue.name]
                taken = take_evaluations(ctx, self.connection, queue, ctx.settings.evaluate_batch,
                                         self.serializer, others)
                if taken:
                    logger.debug("evaluated %d queued host(s) in a batch", taken)
            except Exception:
                logger.exception("batch evaluation failed; the jobs' hosts are evaluated "
                                 "again on their next report")
            finally:
                self._batching = False


class SimpleAlerterWorker(_AlerterWorkerMixin, SimpleWorker):
    """Runs jobs in the worker process (no fork per job)."""

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        """No heartbeats during a job: its timeout plus the grace."""
        timeout = job.timeout if job.timeout and job.timeout > 0 else _NO_TIMEOUT_TTL
        return int(timeout) + self._grace


class ForkAlerterWorker(_AlerterWorkerMixin, Worker):
    """rq's forking worker: one child per job."""

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        """Heartbeats every job_monitoring_interval; the grace after the last one."""
        if job.timeout and job.timeout > 0:
            remaining = job.timeout - working_time
            return int(min(remaining, self.job_monitoring_interval)) + self._grace
        return int(self.job_monitoring_interval) + self._grace


def default_worker_name() -> str:
    """``<host>.<pid>``: readable in ``rq info`` and unique per process."""
    return f"alerter.{socket.gethostname()}.{os.getpid()}"


def clear_dead_namesake(connection: Any, name: str) -> bool:
    """Retire a registration of ``name`` left by a dead process on this machine.

    rq refuses to start a worker whose name is still registered without a
    death date, which is what a SIGKILLed worker leaves for minutes; a
    supervisor restarting ``--name bbs-alerter-1`` would be locked out. A
    registration from this host whose process is gone (a zombie included: a
    supervisor may not have reaped its killed child yet), or is this very
    process (a container restarted with the same pid), is marked dead. One
    from another host, or from a live process, is left for rq to refuse.
    """
    key = Worker.redis_worker_namespace_prefix + name
    raw = connection.hgetall(key)
    if not raw or b"death" in raw:
        return False
    hostname = raw.get(b"hostname", b"").decode("utf-8", "replace")
    try:
        pid = int(raw.get(b"pid", b"0") or 0)
    except ValueError:
        return False
    if not _registered_by_dead_process(hostname, pid):
        return False  # another host's, or a live process: a real namesake
    previous = Worker.find_by_key(key, connection=connection)
    if previous is None:
        return False
    previous.register_death()
    logger.warning("worker name %s was left registered by a dead process (pid %d); "
                   "taking it over", name, pid)
    return True


def build_worker(ctx: AlerterContext, *, name: str | None = None,
                 queues: list[str] | None = None, worker_class: str | None = None) -> Any:
    """An alerter worker on the notify and evaluate queues (notify first)."""
    connection = connect(ctx.redis_settings)
    if name:
        clear_dead_namesake(connection, name)
    names = queues or [ctx.keys.notify_queue(), ctx.keys.evaluate_queue()]
    kind = worker_class or ctx.settings.worker_class
    cls: type[Any] = SimpleAlerterWorker if kind == "simple" else ForkAlerterWorker
    interval = max(1, math.ceil(ctx.settings.maintenance_interval))
    worker = cls(names, connection=connection, name=name or default_worker_name(),
                 serializer=RQ_SERIALIZER, maintenance_interval=interval,
                 job_monitoring_interval=min(30, interval), log_job_description=False,
                 job_class=AlerterJob, alerter_context=ctx)
    worker.log_result_lifespan = False
    return worker


def _raise_stopped(signum: int, frame: FrameType | None) -> None:
    raise _Stopped(signum)


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextmanager
def _signal_handlers_restored() -> Iterator[None]:
    """Put back the SIGTERM/SIGINT (and SIGALRM) handlers found on entry.

    rq's work() installs its own and leaves them behind, and its death
    penalty resets SIGALRM; a caller in the same process (a test, an
    embedding program) gets its own handlers back.
    """
    saved = {number: signal.getsignal(number) for number in (*_STOP_SIGNALS, signal.SIGALRM)}
    try:
        yield
    finally:
        for number, handler in saved.items():
            if handler is not None:  # None: set from outside Python, cannot be put back
                signal.signal(number, handler)


def _stop_on_signal() -> None:
    """Outside rq's loop, SIGTERM/SIGINT end run_worker at once."""
    for number in _STOP_SIGNALS:
        signal.signal(number, _raise_stopped)


def _note_stop_in(worker: Any) -> None:
    """While rq's work() starts up, a signal is noted in the worker, not raised.

    Raising there would skip rq's teardown (the registration, the scheduler);
    noted, the signal ends rq's loop at its first turn.
    """

    def handler(signum: int, frame: FrameType | None) -> None:
        worker.note_stop(signum)

    for number in _STOP_SIGNALS:
        signal.signal(number, handler)


def run_worker(ctx: AlerterContext, *, burst: bool = False, name: str | None = None,
               queues: list[str] | None = None, worker_class: str | None = None) -> int:
    """Install the context and work until stopped (or, with ``burst``, until idle).

    Returns 0 after a stop signal (rq's warm shutdown: the job in progress
    finishes) or the end of a burst. An end of rq's loop that no signal asked
    for starts a fresh worker after a pause (1 s, doubling up to 30 s).
    """
    set_context(ctx)
    # rq logs every job at INFO; ours are many and short, so rq speaks up only
    # for warnings unless we are debugging.
    root_level = logging.getLogger().getEffectiveLevel()
    rq_level = root_level if root_level <= logging.DEBUG else max(root_level, logging.WARNING)
    for logger_name in ("rq.worker", "rq.job", "rq.scheduler", "rq.queue"):
        logging.getLogger(logger_name).setLevel(rq_level)
    delay = 1.0
    with _signal_handlers_restored():
        try:
            while True:
                # Outside rq's work() a signal ends us at once: nothing is
                # registered or running that would need a teardown.
                _stop_on_signal()
                worker = build_worker(ctx, name=name, queues=queues, worker_class=worker_class)
                logger.info("alerter worker %s on %s (%s; channels: %s)", worker.name,
                            ", ".join(q.name for q in worker.queues),
                            worker_class or ctx.settings.worker_class,
                            ", ".join(n.describe() for n in ctx.notifiers.values())
                            or "none configured")
                started = time.monotonic()
                _note_stop_in(worker)
                worker.work(burst=burst, with_scheduler=True,
                            logging_level=logging.getLevelName(rq_level))
                _stop_on_signal()
                if burst or getattr(worker, "stop_signal", None) is not None:
                    break
                # rq gives up on errors it does not expect (a Redis timeout
                # in the middle of its loop): start a fresh worker rather
                # than exit.
                if time.monotonic() - started > 60:
                    delay = 1.0  # it had been running well: a fresh problem
                logger.error("the rq worker stopped unexpectedly; starting again in %.0fs",
                             delay)
                time.sleep(delay)
                delay = min(delay * 2, 30.0)
        except _Stopped:
            pass
    logger.info("alerter worker stopped")
    return 0
