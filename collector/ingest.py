"""Ingestion: the consumer-group loop that turns stream entries into host state.

One :class:`Collector` is one consumer of group :data:`wire.keys.COLLECTOR_GROUP`
on the report and session streams; several may run and share the load.
This module reads and schedules; the other steps each have a module:

* :mod:`collector.plan` decodes and checks each entry and plans its write
  (a bad entry becomes a dead letter, alone);
* :mod:`collector.apply` sends the writes through the apply script, which
  writes the state only when the message is newer than what is stored and
  acknowledges the entry in the same atomic step, and enqueues evaluations;
  it runs on a thread of its own, which also reads the next batch, so
  Redis applies one batch and reads the next while this loop plans;
* :mod:`collector.reclaim` re-processes entries left pending;
* :mod:`collector.keepalive` judges silent hosts stale.

Between batches the loop reclaims, sweeps for stale hosts and writes its
heartbeat. Nothing here ends the loop on bad input, and Redis outages are
retried with a capped, logged backoff.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from functools import partial
from typing import Any

import redis

from collector import keepalive
from collector.apply import TRANSIENT_ERRORS, Applier, Counters, Writer, load_scripts
from collector.evaluate import Evaluations
from collector.plan import Decoded, Planner, StoredSessions, Write, sessions_to_read
from collector.reclaim import Reclaimer
from collector.selfmon import STOPPED, group_stats, total, write_heartbeat
from collector.settings import CollectorSettings
from wire.keys import COLLECTOR_GROUP, KeySpace
from wire.messages import SessionEvent
from wire.replies import server_time_ms, text
from wire.state import iso_from_ms

logger = logging.getLogger(__name__)

__all__ = ["Collector", "default_name", "tune_garbage_collector"]

# Collections of the youngest generation happen after this many container
# allocations (Python's default is 700). A batch allocates a few thousand
# short-lived containers, all freed by reference counting when it is done;
# with the default threshold they were collected and promoted again and
# again, and every full collection walked all the process holds.
GC_YOUNG_THRESHOLD = 100_000


def tune_garbage_collector() -> None:
    """Make the cyclic garbage collector cheap for a collector process: what
    was loaded at start is moved out of its sight, young collections are rare."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def default_name() -> str:
    """``<hostname>-<pid>``: unique per process, readable in XINFO CONSUMERS."""
    return f"{socket.gethostname()}-{os.getpid()}"


class Collector:
    """One consumer of the report and session streams."""

    def __init__(
        self,
        client: Any,
        keys: KeySpace,
        settings: CollectorSettings,
        name: str | None = None,
        host_keys: Mapping[str, bytes] | None = None,
        *,
        max_block_ms: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.keys = keys
        self.settings = settings
        self.name = name or settings.name or default_name()
        self.group = COLLECTOR_GROUP
        self.streams = keys.streams()
        self.counters = Counters()
        self.clock = clock
        self.max_block_ms = max_block_ms
        self.planner = Planner(keys, settings, self.group, self.name, host_keys)
        self.evaluations = (Evaluations(client, keys, settings.evaluation_ttl_s)
                            if settings.evaluate else None)
        self.applier = Applier(client, self.counters, self.evaluations, self._replan)
        self.writer = Writer(self.applier)
        self.reclaimer = Reclaimer(client, settings, self.planner, self.streams, self.process,
                                   self._apply_now)
        self.ready = False
        self.caught_up = False
        self.started_ms = 0
        self._read_ahead: Future[list[tuple[str, Sequence[Any]]]] | None = None
        now = clock()
        self._next_claim = now
        self._next_sweep = now + settings.sweep_interval_s
        self._next_heartbeat = now

    # -- setup -------------------------------------------------------------

    def setup(self) -> None:
        """Load the scripts, create the group, resume this consumer's own pending entries."""
        # Batches handed over before an error were applied or dropped; what
        # was dropped, and what was read ahead, is still pending and is
        # re-read below, in order.
        self.writer.reset()
        self._read_ahead = None
        load_scripts(self.client)
        self.ensure_groups()
        if not self.started_ms:
            self.started_ms = server_time_ms(self.client)
        self.ready = True
        self.drain_own_pending()

    def ensure_groups(self) -> None:
        """Create the consumer group on both streams (and the streams) if missing.

        A new group starts at ``start_id``: '0' by default, so that what agents
        published before the first collector ever ran is ingested (the streams
        are trimmed, so that backlog is bounded).
        """
        for stream in self.streams:
            try:
                self.client.xgroup_create(stream, self.group, id=self.settings.start_id,
                                          mkstream=True)
                logger.info("created consumer group %s on %s at %s", self.group, stream,
                            self.settings.start_id)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    # -- the loop ------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Consume until ``stop`` is set; Redis outages are retried, never raised."""
        delay = 0.0
        failing = False
        while not stop.is_set():
            try:
                if not self.ready:
                    self.setup()
                self.step()
                if failing:
                    logger.info("Redis is reachable again")
                    failing = False
                delay = 0.0
            except TRANSIENT_ERRORS as exc:
                self.ready = False
                failing = True
                delay = min(max(delay * 2, 0.5), self.settings.max_backoff_s)
                logger.warning("Redis unavailable (%s: %s); retrying in %.1f s",
                               type(exc).__name__, exc, delay)
                stop.wait(delay)
            except redis.ResponseError as exc:
                self.ready = False
                if "NOGROUP" in str(exc):
                    # Someone deleted a stream or the group: recreate and go on.
                    logger.warning("consumer group missing (%s); recreating it", exc)
                    stop.wait(0.1)
                    continue
                delay = min(max(delay * 2, 0.5), self.settings.max_backoff_s)
                logger.error("Redis refused a command (%s); retrying in %.1f s", exc, delay)
                stop.wait(delay)
            except Exception as exc:  # the loop must outlive our own bugs
                self.ready = False
                self.counters.errors += 1
                delay = min(max(delay * 2, 0.5), self.settings.max_backoff_s)
                logger.error("unexpected error (%s: %s); retrying in %.1f s",
                             type(exc).__name__, exc, delay,
                             exc_info=logger.isEnabledFor(logging.DEBUG))
                stop.wait(delay)
        self._final_heartbeat()

    def step(self) -> int:
        """One round: reclaim, read and apply one batch, sweep and heartbeat when due."""
        if self.clock() >= self._next_claim:
            self.reclaim()
            self._next_claim = self.clock() + self.settings.claim_interval_s
        count = self.read(self._block_ms(self.clock()))
        now = self.clock()
        if now >= self._next_sweep:
            # While a backlog is being worked off the hosts in it only look
            # silent: judging them now would raise false staleness alerts.
            if self.caught_up:
                self.sweep()
            self._next_sweep = now + self.settings.sweep_interval_s
        if now >= self._next_heartbeat:
            self.heartbeat()
            self._next_heartbeat = self.clock() + self.settings.heartbeat_interval_s
        return count

    def _block_ms(self, now: float) -> int | None:
        due = min(self._next_claim, self._next_sweep, self._next_heartbeat)
        block = min(self.settings.block_ms, int((due - now) * 1000))
        if self.max_block_ms is not None:
            block = min(block, self.max_block_ms)
        # BLOCK 0 would wait forever: below 1 ms, do not block at all.
        return block if block >= 1 else None

    def read(self, block_ms: int | None) -> int:
        """Read one batch of new entries of both streams and hand it to the writer;
        the number read. Caught up, it waits until the batch is applied."""
        ahead, self._read_ahead = self._read_ahead, None
        if ahead is None:
            # Working off a backlog, the read takes what is there at once;
            # caught up (everything handed over is applied), it may wait.
            batches = self._read_new(block_ms if self.caught_up else None)
        else:
            batches = ahead.result()
        full = any(len(entries) >= self.settings.batch_size for _, entries in batches)
        if full:
            # The next batch is read by the writer's thread, after the writes
            # handed over before and while this one is planned: this thread
            # plans without waiting for Redis, and Redis reads while it has
            # nothing else to do.
            self._read_ahead = self.writer.read_ahead(partial(self._read_new, None))
        planned = [(stream, self.plan(stream, entries)) for stream, entries in batches]
        for _, writes in planned:
            self.writer.submit(writes)
        self.caught_up = not full
        if not full:
            self.flush()
        return sum(len(entries) for _, entries in batches)

    def _read_new(self, block_ms: int | None) -> list[tuple[str, Sequence[Any]]]:
        """New entries of both streams (XREADGROUP ... >), by stream."""
        reply = self.client.xreadgroup(self.group, self.name, dict.fromkeys(self.streams, ">"),
                                       count=self.settings.batch_size, block=block_ms)
        return [(text(stream), entries) for stream, entries in reply or []]

    def drain(self, timeout_s: float = 60.0) -> int:
        """Read until the streams are empty for this group (tests and benchmarks)."""
        if not self.ready:
            self.setup()
        deadline = self.clock() + timeout_s
        total_read = 0
        while self.clock() < deadline:
            count = self.read(None)
            total_read += count
            if count == 0:
                break
        self.flush()
        return total_read

    def flush(self) -> None:
        """Wait until every batch handed to the writer is applied."""
        self.writer.wait()

    def close(self) -> None:
        """Apply what is handed over and end the writer's thread."""
        self.writer.close()

    # -- applying a batch ------------------------------------------------------

    def process(self, stream: str, entries: Sequence[Any],
                delivered: Mapping[str, int] | None = None) -> None:
        """Plan one batch of entries of ``stream`` and hand it to the writer."""
        self.writer.submit(self.plan(stream, entries, delivered))

    def plan(self, stream: str, entries: Sequence[Any],
             delivered: Mapping[str, int] | None = None) -> list[Write]:
        """The writes of one batch of entries of ``stream``, in order."""
        counts = delivered or {}
        read: list[Decoded | Write] = []
        for raw_id, fields in entries:
            entry_id = text(raw_id)
            read.append(self.planner.read(stream, entry_id, fields, counts.get(entry_id, 1)))
        decoded = [item for item in read if isinstance(item, Decoded)]
        self.counters.spoofed += sum(1 for item in read
                                     if isinstance(item, Write) and item.unauthenticated)
        wanted = sessions_to_read(decoded)
        stored = self._read_sessions(wanted) if wanted else {}
        planned = iter(self.planner.writes(decoded, stored))
        # Dead letters keep their place among the batch's writes.
        return [item if isinstance(item, Write) else next(planned) for item in read]

    def _read_sessions(self, wanted: Sequence[tuple[str, str]]) -> StoredSessions:
        """The stored texts of ``wanted`` sessions, once what is handed over is applied."""
        self.flush()
        pipe = self.client.pipeline(transaction=False)
        for host, client_id in wanted:
            pipe.hget(self.keys.host_sessions(host), client_id)
        stored: StoredSessions = {}
        for (host, client_id), value in zip(wanted, pipe.execute(), strict=True):
            stored.setdefault(host, {})[client_id] = None if value is None else text(value)
        return stored

    def _replan(self, write: Write) -> Write:
        """A write planned again from what is stored now: a report's whole
        hash, a session event merged with the session stored now."""
        if write.report is not None:
            return self.planner.report_write(write.stream, write.entry_id, write.report,
                                             whole=True)
        event = write.event
        assert isinstance(event, SessionEvent)
        stored = self.client.hget(self.keys.host_sessions(event.host), event.client_id)
        known = {event.host: {event.client_id: None if stored is None else text(stored)}}
        return self.planner.session_write(write.stream, write.entry_id, event, known)

    def _apply_now(self, writes: list[Write]) -> None:
        self.flush()
        self.applier.apply(writes)

    # -- reclaiming --------------------------------------------------------

    def drain_own_pending(self) -> int:
        """Re-process entries delivered to this consumer name but never acknowledged."""
        handled = self.reclaimer.own()
        self.flush()
        if handled:
            logger.info("re-processed %s pending entries of consumer %s", handled, self.name)
        return handled

    def reclaim(self) -> int:
        """Claim entries idle past ``claim_min_idle_s`` from other (dead) consumers."""
        self.flush()
        claimed = self.reclaimer.others()
        self.flush()
        self.counters.reclaimed += claimed
        self.reclaimer.forget_idle_consumers()
        return claimed

    # -- keepalive and heartbeat ------------------------------------------------

    def sweep(self) -> list[keepalive.Transition]:
        """Mark silent hosts stale (and clear levels of hosts whose thresholds changed)."""
        self.flush()
        now_ms = server_time_ms(self.client)
        made = keepalive.sweep(self.client, self.keys, self.settings, now_ms)
        self.counters.stale_transitions += len(made)
        if made and self.evaluations is not None:
            self.counters.evaluations += self.evaluations.request(t.host for t in made)
        return made

    def heartbeat(self, state: str = "running") -> None:
        """Write this collector's heartbeat hash and index entry."""
        self.flush()
        now_ms = server_time_ms(self.client)
        stats = [group_stats(self.client, s, self.group, now_ms) for s in self.streams]
        fields: dict[str, object] = {
            "name": self.name,
            "state": state,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": iso_from_ms(self.started_ms or now_ms),
            "caught_up": "yes" if self.caught_up else "no",
        }
        fields.update(total(stats))
        fields.update(self.counters.as_fields())
        write_heartbeat(self.client, self.keys, self.name, now_ms, fields)
        # Entries of collectors whose hashes expired long ago.
        self.client.zremrangebyscore(self.keys.collectors_index(), "-inf",
                                     now_ms - 2 * 86_400_000)

    def _final_heartbeat(self) -> None:
        try:
            self.heartbeat(STOPPED)
        except redis.RedisError:
            pass
