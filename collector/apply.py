"""Applying planned writes: send them through the apply script and account for the replies.

:class:`Applier` sends a batch's writes as calls of
:data:`collector.scripts.APPLY`, :data:`CALL_ENTRIES` entries per call, all
calls of a batch in one redis-py pipeline, and reads each entry's result:
applied and skipped entries are counted, hosts whose evaluation mark the
script took get their job, a session merge refused because the stored
session changed meanwhile is planned again, an entry that must wait for an
older one of its stream is handed back to be held and sent again, and an
entry Redis refused stays pending (it is redelivered and, after
``max_deliveries``, dead-lettered).

:class:`Writer` runs an Applier on a thread of its own, so that Redis runs
one batch's scripts while the collector plans the next one: the two
processes work at once instead of in turns. The writer's thread also reads
the next batch while the current one is planned (:meth:`Writer.read_ahead`),
in turn with the writes, so that the planning thread does not wait for
Redis to answer a read. Batches are applied in the order they were handed
over. When a batch fails for a reason of the whole connection (Redis away,
a replica), the batches after it are dropped unapplied, so nothing is
applied out of order; their entries stay pending for this consumer, and the
caller, seeing the error on its next call, starts over from its pending
entries.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, fields
from typing import Any, TypeVar

import msgpack
import msgspec
import redis

from collector.evaluate import Evaluations
from collector.plan import Write
from collector.scripts import ALL, APPLY_SCRIPT, REPLAN, SKIPPED, WAIT
from wire.replies import text

logger = logging.getLogger(__name__)

_Result = TypeVar("_Result")

# Entries per call of the apply script: Redis runs one call without serving
# other clients, so a call is kept to a few milliseconds.
CALL_ENTRIES = 200
MAX_REPLANS = 3
# Errors after which Redis may well come back: retry with backoff. A replica
# promoted away from under us answers READONLY until the client reconnects.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError,
    redis.exceptions.BusyLoadingError,
)


@dataclass
class Counters:
    """What a collector has done since it started."""

    processed: int = 0
    applied: int = 0
    skipped: int = 0
    dead_lettered: int = 0
    spoofed: int = 0
    reclaimed: int = 0
    conflicts: int = 0
    waits: int = 0
    evaluations: int = 0
    stale_transitions: int = 0
    errors: int = 0

    def as_fields(self) -> dict[str, int]:
        """The counters as heartbeat fields."""
        return {spec.name: getattr(self, spec.name) for spec in fields(self)}


def pack_call(writes: Sequence[Write], mark_ttl: int) -> bytes:
    """The apply script's argument for ``writes``: one msgpack map (see
    ``collector.scripts.PROTOCOL``)."""
    call = {"mark_ttl": mark_ttl,
            "entries": [_raw_bytes(write.entry) if write.kind == "dead_letter" else write.entry
                        for write in writes]}
    return _encode(call)


_encode = msgspec.msgpack.Encoder().encode


def _raw_bytes(entry: dict[str, Any]) -> dict[str, Any]:
    """A dead letter's entry with its bytes (the payload) as msgpack raw
    strings: msgspec writes bytes as bin, which the cmsgpack of Redis 6.2
    cannot read."""
    return {**entry, "fields": [
        msgspec.Raw(msgpack.packb(item, use_bin_type=False)) if isinstance(item, bytes) else item
        for item in entry["fields"]]}


class Applier:
    """Sends writes, counts what happened, enqueues the evaluations they allow.

    ``replan`` plans a write again from what is stored now, when the script
    refused it as planned on a view that is no longer true (REPLAN); ``hold``
    takes a write that waits for an older entry of its stream (WAIT).
    """

    def __init__(self, client: Any, counters: Counters, evaluations: Evaluations | None,
                 replan: Callable[[Write], Write], hold: Callable[[Write], None]) -> None:
        self.client = client
        self.counters = counters
        self.evaluations = evaluations
        self.replan = replan
        self.hold = hold
        self.mark_ttl = evaluations.mark_ttl_s if evaluations is not None else 0

    def apply(self, writes: Sequence[Write]) -> None:
        """Apply ``writes`` in order; raise on an error of the whole connection."""
        if not writes:
            return
        results = self._run(writes)
        marked: list[str] = []
        refused: list[Write] = []
        stop: Exception | None = None
        for write, (result, took_mark) in zip(writes, results, strict=True):
            if took_mark:
                marked.append(write.host)
            if isinstance(result, Exception):
                if isinstance(result, TRANSIENT_ERRORS):
                    stop = stop or result
                else:
                    # Left pending: redelivered by a reclaim, dead-lettered
                    # after max_deliveries attempts.
                    self.counters.errors += 1
                    logger.error("Redis refused the write of entry %s of %s: %s",
                                 write.entry_id, write.stream, result)
            elif result == REPLAN:
                refused.append(write)
            elif result == WAIT:
                self.counters.waits += 1
                self.hold(write)
            else:
                self._count(write, result)
        if marked and self.evaluations is not None:
            self.counters.evaluations += self.evaluations.enqueue(marked)
        if stop is not None:
            raise stop
        for write in refused:
            self._replan(write)

    def _count(self, write: Write, result: Any) -> None:
        self.counters.processed += 1
        if write.kind == "dead_letter":
            self.counters.dead_lettered += 1
        elif result == SKIPPED:
            self.counters.skipped += 1
        else:
            self.counters.applied += 1

    def _run(self, writes: Sequence[Write]) -> list[tuple[Any, bool]]:
        """(result, whether the host's mark was taken) of every write; a result
        is the script's answer for the entry or the exception that stopped it."""
        calls = [writes[start:start + CALL_ENTRIES]
                 for start in range(0, len(writes), CALL_ENTRIES)]
        replies = self._send(calls)
        if any(isinstance(reply, redis.exceptions.NoScriptError) for reply in replies):
            logger.info("Redis lost the collector's scripts (restart or SCRIPT FLUSH); "
                        "reloading them")
            load_scripts(self.client)
            replies = self._send(calls)
        results: list[tuple[Any, bool]] = []
        for call, reply in zip(calls, replies, strict=True):
            if isinstance(reply, Exception):
                results += [(reply, False)] * len(call)
                continue
            answers, marked = reply
            took = set(marked)
            for index in range(len(call)):
                answer = answers[index] if index < len(answers) else _not_reached()
                results.append((_entry_result(answer), index + 1 in took))
        return results

    def _send(self, calls: Sequence[Sequence[Write]]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for call in calls:
            APPLY_SCRIPT.call(pipe, [], [pack_call(call, self.mark_ttl)])
        replies: list[Any] = pipe.execute(raise_on_error=False)
        return replies

    def _replan(self, write: Write) -> None:
        """Plan a refused write again from what is stored now and apply it."""
        self.counters.conflicts += 1
        for _ in range(MAX_REPLANS):
            fresh = self.replan(write)
            [(result, took_mark)] = self._run([fresh])
            if isinstance(result, Exception):
                raise result
            if took_mark and self.evaluations is not None:
                self.counters.evaluations += self.evaluations.enqueue([fresh.host])
            if result == WAIT:
                self.counters.waits += 1
                self.hold(fresh)
                return
            if result != REPLAN:
                self._count(fresh, result)
                return
        logger.warning("the state of host %s kept changing; entry %s of %s left pending",
                       write.host, write.entry_id, write.stream)


class Writer:
    """An :class:`Applier` on a thread of its own, fed batches (and reads) in order."""

    # Room for the batches of two reads (one per stream) and a read ahead, so
    # that the planning thread seldom waits to hand one over.
    def __init__(self, applier: Applier, depth: int = 5) -> None:
        self.applier = applier
        self._batches: queue.Queue[Sequence[Write] | _Read | None] = queue.Queue(
            maxsize=depth)
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="collector-writer", daemon=True)
        self._thread.start()

    def submit(self, writes: Sequence[Write]) -> None:
        """Hand over a batch; raise the error an earlier batch met, if any."""
        self._raise_failure()
        if writes:
            self._batches.put(writes)

    def read_ahead(self, read: Callable[[], _Result]) -> Future[_Result]:
        """Run ``read`` on the writer's thread once the batches handed over so
        far are sent; its result, or the error it or an earlier batch met."""
        self._raise_failure()
        job = _Read(read)
        self._batches.put(job)
        return job.future

    def wait(self) -> None:
        """Return once every batch handed over is applied; raise the error one met."""
        self._batches.join()
        self._raise_failure()

    def reset(self) -> None:
        """Forget a failure, once every batch handed over is applied or dropped."""
        self._batches.join()
        self._failure = None

    def close(self) -> None:
        """Apply what was handed over, then end the thread."""
        self._batches.put(None)
        self._thread.join()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _work(self) -> None:
        while True:
            batch = self._batches.get()
            try:
                if batch is None:
                    return
                if isinstance(batch, _Read):
                    batch.run(self._failure)
                elif self._failure is None:
                    self.applier.apply(batch)
                # else: dropped unapplied, so that nothing is applied out of order.
            except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread
                self._failure = exc
            finally:
                self._batches.task_done()


class _Read:
    """A read handed to the writer's thread, and its future result."""

    def __init__(self, read: Callable[[], Any]) -> None:
        self.read = read
        self.future: Future[Any] = Future()

    def run(self, failure: BaseException | None) -> None:
        """Read, unless an earlier batch failed: then the caller gets that
        error, and starts over from its pending entries. An error of the read
        itself is raised here too, so that the batches after it are dropped."""
        if failure is not None:
            self.future.set_exception(failure)
            return
        try:
            self.future.set_result(self.read())
        except BaseException as exc:
            self.future.set_exception(exc)
            raise


def load_scripts(client: Any) -> None:
    """Load every script of the collector into Redis."""
    for script in ALL:
        script.load(client)


def _entry_result(answer: Any) -> Any:
    """One entry's answer as an int, or the error it met as redis-py would raise it."""
    if isinstance(answer, int):
        return answer
    message = text(answer).removeprefix("ERR ")
    if "READONLY " in message:
        return redis.ReadOnlyError(message)
    if "LOADING " in message:
        return redis.exceptions.BusyLoadingError(message)
    return redis.ResponseError(message)


def _not_reached() -> Exception:
    # The script stopped before this entry (an error of the whole server).
    return redis.ReadOnlyError("not applied: the call stopped at an error of the server")
