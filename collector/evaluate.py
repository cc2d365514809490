"""Hand-off to the alerter: one rq evaluation job per changed host, coalesced.

For every host whose state changed in a batch, :meth:`Evaluations.request`
takes the host's "evaluation pending" mark (``SET
KeySpace.evaluation_pending(host) 1 NX EX ttl``); only a host whose mark was
free gets a job, and the job deletes the mark first thing, so at most one
evaluation per host waits in the queue. The job is named by its import path
(:data:`wire.keys.EVALUATE_JOB`): the collector never imports the alerter.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import redis
from rq import Queue

from collector import rawpipe
from wire.keys import EVALUATE_JOB, RQ_SERIALIZER, KeySpace

logger = logging.getLogger(__name__)

# An evaluation nobody picked up within an hour is worthless: the next state
# change enqueues a fresh one. Results are not needed, failures are kept for
# a week so a sysop can see them in rq's failed registry.
JOB_TTL_S = 3600
FAILURE_TTL_S = 7 * 86_400


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
        if not wanted:
            return 0
        replies = rawpipe.execute(self.client, [
            ("SET", self.keys.evaluation_pending(host), "1", "NX", "EX", self.mark_ttl_s)
            for host in wanted])
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return self.enqueue([h for h, took in zip(wanted, replies, strict=True) if took])

    def enqueue(self, hosts: Iterable[str]) -> int:
        """Enqueue one job per host (their marks already taken); the count."""
        batch = sorted(set(hosts))
        if not batch:
            return 0
        datas = [
            Queue.prepare_data(EVALUATE_JOB, args=(host,), description=f"evaluate {host}",
                               result_ttl=0, ttl=JOB_TTL_S, failure_ttl=FAILURE_TTL_S)
            for host in batch
        ]
        try:
            self.queue.enqueue_many(datas)
        except redis.RedisError:
            # Free the marks so the next change can try again instead of
            # waiting out their TTL; if Redis is gone this fails too and the
            # marks simply expire.
            try:
                self.client.delete(*(self.keys.evaluation_pending(h) for h in batch))
            except redis.RedisError:
                pass
            raise
        logger.debug("enqueued evaluation of %s host(s)", len(batch))
        return len(batch)
