"""Hand-off to the alerter: rq evaluation jobs for the hosts that changed, coalesced.

For every host whose state changed, the host's "evaluation pending" mark
(``SET KeySpace.evaluation_pending(host) 1 NX EX ttl``) is taken, by the
apply script together with the write (see :mod:`collector.scripts`) or by
:meth:`Evaluations.request`; only a host whose mark was free gets a job, and
the job deletes the mark first thing, so at most one evaluation per host
waits in the queue. The job is named by its import path
(:data:`wire.keys.EVALUATE_JOB`): the collector never imports the alerter.

Jobs are made with rq's public API, ``Queue.prepare_data`` and
``Queue.enqueue_many`` on a pipeline. One job carries up to
:data:`JOB_HOSTS` hosts (the alerter evaluates them in one pass, and an rq
job costs the collector some 100 µs to make, more than all else a host's
report costs it), and one pipeline up to :data:`CHUNK_HOSTS` hosts: a sweep
that turns a whole fleet stale at once sends many pipelines of a bounded
size rather than one command that grows with the fleet. Should a chunk
fail, the marks of its hosts are freed (so that the next change enqueues
again) and the error is raised.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import redis
from rq import Queue
from rq.queue import EnqueueData

from wire.keys import EVALUATE_JOB, RQ_SERIALIZER, KeySpace

logger = logging.getLogger(__name__)

# An evaluation nobody picked up within an hour is worthless: the next state
# change enqueues a fresh one. Results are not needed, failures are kept for
# a week so a sysop can see them in rq's failed registry.
JOB_TTL_S = 3600
FAILURE_TTL_S = 7 * 86_400
# Hosts whose marks and jobs go out in one pipeline, and hosts of one job:
# few enough that the last of them is evaluated soon after the first.
CHUNK_HOSTS = 500
JOB_HOSTS = 32


class Evaluations:
    """Enqueue evaluation jobs on ``KeySpace.evaluate_queue()``."""

    def __init__(self, client: Any, keys: KeySpace, mark_ttl_s: int = 60) -> None:
        self.client = client
        self.keys = keys
        self.mark_ttl_s = mark_ttl_s
        self.queue = Queue(keys.evaluate_queue(), connection=client, serializer=RQ_SERIALIZER)

    def request(self, hosts: Iterable[str]) -> int:
        """Enqueue an evaluation of each host unless one already waits; the count enqueued."""
        wanted = sorted(set(hosts))
        enqueued = 0
        for chunk in _chunks(wanted):
            pipe = self.client.pipeline(transaction=False)
            for host in chunk:
                pipe.set(self.keys.evaluation_pending(host), "1", nx=True, ex=self.mark_ttl_s)
            taken = pipe.execute()
            enqueued += self.enqueue(host for host, took in zip(chunk, taken, strict=True)
                                     if took)
        return enqueued

    def enqueue(self, hosts: Iterable[str]) -> int:
        """Enqueue the evaluation of ``hosts`` (their marks already taken), up to
        :data:`JOB_HOSTS` of them per job; the count of hosts."""
        batch = sorted(set(hosts))
        for chunk in _chunks(batch):
            try:
                with self.client.pipeline() as pipe:
                    self.queue.enqueue_many([job_data(chunk[start:start + JOB_HOSTS])
                                             for start in range(0, len(chunk), JOB_HOSTS)],
                                            pipeline=pipe)
                    pipe.execute()
            except redis.RedisError:
                self._free_marks(chunk)
                raise
        if batch:
            logger.debug("enqueued evaluation of %s host(s)", len(batch))
        return len(batch)

    def _free_marks(self, hosts: Sequence[str]) -> None:
        try:
            self.client.delete(*(self.keys.evaluation_pending(host) for host in hosts))
        except redis.RedisError:
            pass


def job_data(hosts: Sequence[str]) -> EnqueueData:
    """What the collector asks of rq for the evaluation job of ``hosts``."""
    return Queue.prepare_data(EVALUATE_JOB, args=tuple(hosts),
                              description=f"evaluate {' '.join(hosts)}",
                              result_ttl=0, ttl=JOB_TTL_S, failure_ttl=FAILURE_TTL_S)


def _chunks(hosts: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(hosts), CHUNK_HOSTS):
        yield hosts[start:start + CHUNK_HOSTS]
