"""Ingestion: the consumer-group loop that turns stream entries into host state.

One :class:`Collector` is one consumer of group :data:`wire.keys.COLLECTOR_GROUP`
on the host streams it owns; several may run and share the hosts
(:mod:`collector.ownership`: streams found by SCAN, hosts shared by
rendezvous hashing over the collectors' heartbeats). It reads its streams
in chunks of :data:`READ_CHUNK`, so no command grows with the fleet: with
at most that many it blocks on them all in one XREADGROUP; with more it
reads the streams that Redis's keyspace events name as appended to
(:mod:`collector.wakeups`), and all of them every :data:`FULL_READ_S`, or,
without events, all of them again after ``poll_interval_ms``.
This module reads and schedules; the other steps each have a module:

* :mod:`collector.plan` decodes and checks each entry and plans its write
  (a bad entry becomes a dead letter, alone);
* :mod:`collector.apply` sends the writes through the apply script, which
  writes the state only when every older entry of the stream is applied,
  acknowledges the entry in the same atomic step, and enqueues evaluations;
  it runs on a thread of its own, which also reads the next batch, so
  Redis applies one batch and reads the next while this loop plans;
* :mod:`collector.reclaim` re-processes entries left pending;
* :mod:`collector.keepalive` judges silent hosts stale.

An entry that must wait for an older one of its stream (pending for
another collector, or refused and planned again) is *held*: its stream is
not read further, and the held writes are sent again shortly, after the
entries of a collector that left the ring are claimed. Between batches the
loop finds new streams, inspects its streams' consumers (claiming, and
forgetting idle ones), sweeps for stale hosts and writes its heartbeat.
Nothing here ends the loop on bad input, and Redis outages are retried
with a capped, logged backoff.
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
from collector.ownership import Discovery, HostStreams, Ring
from collector.plan import Decoded, Planner, StoredSessions, Write, sessions_to_read
from collector.reclaim import Reclaimer, is_missing_group
from collector.selfmon import STOPPED, write_heartbeat
from collector.settings import CollectorSettings
from collector.wakeups import Wakeups
from wire.keys import COLLECTOR_GROUP, KeySpace
from wire.messages import SessionEvent
from wire.replies import server_time_ms, text
from wire.state import entry_id_ms, iso_from_ms

logger = logging.getLogger(__name__)

__all__ = ["Collector", "default_name", "tune_garbage_collector"]

# Collections of the youngest generation happen after this many container
# allocations (Python's default is 700). A batch allocates a few thousand
# short-lived containers, all freed by reference counting when it is done;
# with the default threshold they were collected and promoted again and
# again, and every full collection walked all the process holds.
GC_YOUNG_THRESHOLD = 100_000

# Streams named in one XREADGROUP: a bound on any one command of the loop.
READ_CHUNK = 256
# Entries asked of each stream in one read, at least: working off a backlog,
# a batch then holds several reports of each host, and writes its hash once
# for all of them (collector.plan.superseded).
MIN_PER_STREAM = 16
# Streams whose consumers one step inspects (claims, idle consumers).
INSPECT_PAGE = 200
# SCAN pages one step reads while a discovery pass is under way.
DISCOVERY_PAGES = 8
# How soon held writes are sent again.
HELD_RETRY_S = 0.05
# While keyspace events name the streams to read, every owned stream is still
# read this often: an event lost delays an entry by this much at most.
FULL_READ_S = 1.0

#: Entries read, by stream: (stream, entries).
Batches = list[tuple[str, Sequence[Any]]]


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
    """One consumer of the host streams it owns."""

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
        self.counters = Counters()
        self.clock = clock
        self.max_block_ms = max_block_ms
        self.planner = Planner(keys, settings, self.group, self.name, host_keys)
        self.evaluations = (Evaluations(client, keys, settings.evaluation_ttl_s)
                            if settings.evaluate else None)
        self.applier = Applier(client, self.counters, self.evaluations, self._replan,
                               self._hold)
        self.writer = Writer(self.applier)
        self.reclaimer = Reclaimer(client, settings, self.planner, self.process,
                                   self._apply_now)
        self.streams = HostStreams(keys, self.name)
        self.discovery = Discovery(keys)
        self.ring = Ring(client, keys, self.name, int(settings.ring_timeout_s * 1000))
        self.sweeper = keepalive.Sweeper(keys, settings)
        self.ready = False
        self.caught_up = False
        self.started_ms = 0
        self.stop_event = threading.Event()
        self.wakeups = Wakeups(client)
        # Streams named by keyspace events (or left with more to read), read next.
        self._appended: set[str] = set()
        self._appended_lock = threading.Lock()
        self._next_full_read = 0.0
        self._read_ahead: Future[tuple[Batches, bool]] | None = None
        self._grouped: set[str] = set()
        self._held: dict[str, list[Write]] = {}
        self._held_lock = threading.Lock()
        self._rotation = 0
        self._inspect_at = 0
        self._pending_in_pass = 0
        self._pending_seen = 0
        self._lag = (0, 0.0)
        now = clock()
        self._next_discovery = now + settings.discovery_interval_s
        self._next_inspect = now
        self._next_held = now
        self._next_sweep = now + settings.sweep_interval_s
        self._next_heartbeat = now

    # -- setup -------------------------------------------------------------

    def setup(self) -> None:
        """Load the scripts, join the ring, find the host streams, resume own pending entries."""
        # Batches handed over before an error were applied or dropped; what
        # was dropped, and what was read ahead or held, is still pending and
        # is re-read below, in order.
        self.writer.reset()
        self._read_ahead = None
        with self._held_lock:
            self._held.clear()
        self._grouped.clear()
        load_scripts(self.client)
        now_ms = server_time_ms(self.client)
        if not self.started_ms:
            self.started_ms = now_ms
        self.heartbeat()
        self.streams.add(self.discovery.whole_pass(self.client))
        self.ensure_groups(self.streams.owned)
        self.ready = True
        self.drain_own_pending()

    def ensure_groups(self, streams: Sequence[str]) -> None:
        """Create the consumer group on ``streams`` where it is missing.

        A new group starts at ``start_id``: '0' by default, so that what a
        host published before a collector first read its stream is ingested
        (the streams are trimmed, so that backlog is bounded). A name that
        is no longer a stream is forgotten.
        """
        wanted = [stream for stream in streams if stream not in self._grouped]
        for start in range(0, len(wanted), 1000):
            chunk = wanted[start:start + 1000]
            pipe = self.client.pipeline(transaction=False)
            for stream in chunk:
                pipe.xgroup_create(stream, self.group, id=self.settings.start_id)
            for stream, reply in zip(chunk, pipe.execute(raise_on_error=False), strict=True):
                if not isinstance(reply, Exception) or "BUSYGROUP" in str(reply):
                    self._grouped.add(stream)
                elif isinstance(reply, TRANSIENT_ERRORS):
                    raise reply
                else:
                    logger.info("%s is not a stream any more (%s); forgetting it", stream, reply)
                    self.streams.remove(stream)

    # -- the loop ------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Consume until ``stop`` is set; Redis outages are retried, never raised."""
        self.stop_event = stop
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
        self.wakeups.close()

    def step(self) -> int:
        """One round: the chores that are due, then read and apply one batch."""
        now = self.clock()
        if now >= self._next_discovery or self.discovery.in_pass:
            self.discover(DISCOVERY_PAGES)
            if not self.discovery.in_pass:
                self._next_discovery = self.clock() + self.settings.discovery_interval_s
        if now >= self._next_inspect:
            self.inspect(INSPECT_PAGE)
        if self._held and now >= self._next_held:
            self.retry_held()
            self._next_held = self.clock() + HELD_RETRY_S
        count = self.read(self._block_ms(self.clock()))
        now = self.clock()
        if now >= self._next_sweep or self.sweeper.busy:
            # While a backlog is being worked off the hosts in it only look
            # silent: judging them now would raise false staleness alerts.
            if self.caught_up:
                self.sweep_step()
            if not self.sweeper.busy:
                self._next_sweep = now + self.settings.sweep_interval_s
        if now >= self._next_heartbeat:
            self.heartbeat()
            self._next_heartbeat = self.clock() + self.settings.heartbeat_interval_s
        return count

    def _block_ms(self, now: float) -> int | None:
        due = min(self._next_discovery, self._next_inspect, self._next_sweep,
                  self._next_heartbeat)
        if self._held:
            due = min(due, self._next_held)
        if self.discovery.in_pass or self.sweeper.busy:
            due = now
        block = min(self.settings.block_ms, int((due - now) * 1000))
        if self.max_block_ms is not None:
            block = min(block, self.max_block_ms)
        # BLOCK 0 would wait forever: below 1 ms, do not block at all.
        return block if block >= 1 else None

    # -- finding streams and sharing hosts --------------------------------------

    def discover(self, pages: int) -> int:
        """Read up to ``pages`` SCAN pages for host streams; the streams newly owned."""
        gained: list[str] = []
        for _ in range(pages):
            gained += self.streams.add(self.discovery.page(self.client))
            if not self.discovery.in_pass:
                break
        if gained:
            self.ensure_groups(gained)
            logger.debug("found %d new host streams", len(gained))
        return len(gained)

    def share(self, now_ms: int) -> None:
        """Share the hosts anew among the live members of the ring."""
        members = self.ring.members(now_ms)
        before = self.streams.members
        gained = self.streams.set_members(members)
        if members != before:
            logger.info("collectors sharing the hosts: %s; this one reads %d streams",
                        ", ".join(members), len(self.streams.owned))
        if gained:
            self.ensure_groups(gained)

    # -- reading -------------------------------------------------------------

    def read(self, block_ms: int | None) -> int:
        """Read one batch of new entries of the owned streams and hand it to the
        writer; the number read. Caught up, it waits until the batch is applied."""
        if len(self.streams.owned) > READ_CHUNK:
            if not self.caught_up:
                # Working off a backlog, every read finds entries anyway: do not
                # pay for an announcement per entry; listen again once caught up
                # (a full read then finds what was not announced meanwhile).
                self.wakeups.close()
            elif self.wakeups.listening():
                self._note_appended(self.wakeups.take())
        ahead, self._read_ahead = self._read_ahead, None
        if ahead is None:
            # Working off a backlog, the read takes what is there at once;
            # caught up (everything handed over is applied), it may wait.
            batches, more = self._read_new(block_ms if self.caught_up else None)
        else:
            batches, more = ahead.result()
        if more:
            # The next batch is read by the writer's thread, after the writes
            # handed over before and while this one is planned: this thread
            # plans without waiting for Redis, and Redis reads while it has
            # nothing else to do.
            self._read_ahead = self.writer.read_ahead(partial(self._read_new, None))
        if batches:
            self.writer.submit(self.plan(batches))
        self.caught_up = not more
        if not more:
            self.flush()
        count = sum(len(entries) for _, entries in batches)
        self._note_lag(batches, more, count)
        return count

    def _readable(self) -> list[str]:
        """The owned streams not held, starting at a point that moves each round,
        so that no stream is always read last."""
        with self._held_lock:
            held = set(self._held)
        streams = [stream for stream in self.streams.owned if stream not in held]
        if len(streams) > READ_CHUNK:
            self._rotation = (self._rotation + READ_CHUNK) % len(streams)
            streams = streams[self._rotation:] + streams[:self._rotation]
        return streams

    def _read_new(self, block_ms: int | None) -> tuple[Batches, bool]:
        """New entries of the owned streams (XREADGROUP ... >), by stream, and
        whether more are waiting."""
        streams = self._readable()
        if not streams:
            if block_ms:
                self.stop_event.wait(block_ms / 1000)
            return [], False
        batch_size = self.settings.batch_size
        if block_ms and len(streams) <= READ_CHUNK:
            # Caught up, and few enough streams to block on them all at once.
            per_stream = max(1, batch_size // len(streams))
            batches = self._read_chunk(streams, per_stream, block_ms)
            again = [stream for stream, entries in batches if len(entries) >= per_stream]
        else:
            targets = self._targets(streams)
            per_stream = min(batch_size, max(MIN_PER_STREAM, batch_size // len(targets)))
            # Streams per call: one call returns at most about twice batch_size.
            chunk = max(1, min(READ_CHUNK, 2 * batch_size // per_stream))
            batches, again = self._read_chunks(targets, per_stream, chunk)
            if not batches and block_ms:
                self._wait_for_appends(block_ms)
        with self._appended_lock:
            self._appended.update(again)
        return batches, bool(again)

    def _read_chunks(self, streams: list[str], per_stream: int, chunk: int
                     ) -> tuple[Batches, list[str]]:
        """Read ``streams`` a chunk at a time until about ``batch_size`` entries
        are in; the entries, and the streams that may hold more."""
        batches: Batches = []
        again: list[str] = []
        read = 0
        for start in range(0, len(streams), chunk):
            if read >= self.settings.batch_size:
                again += streams[start:]
                break
            chunk_batches = self._read_chunk(streams[start:start + chunk], per_stream, None)
            batches += chunk_batches
            read += sum(len(entries) for _, entries in chunk_batches)
            again += [stream for stream, entries in chunk_batches if len(entries) >= per_stream]
        return batches, again

    def _targets(self, streams: list[str]) -> list[str]:
        """The streams a read looks at: those known to hold new entries (named
        by keyspace events, or left with more to read), and now and then all
        of them: every second while Redis announces appends, else every
        ``poll_interval_ms``, and whenever none is known to hold any."""
        now = self.clock()
        with self._appended_lock:
            if not self._appended or now >= self._next_full_read:
                every = FULL_READ_S if self.wakeups.active else (
                    self.settings.poll_interval_ms / 1000)
                self._next_full_read = now + every
                self._appended.clear()
                return streams
            appended, self._appended = self._appended, set()
        return [stream for stream in streams if stream in appended]

    def _wait_for_appends(self, block_ms: int) -> None:
        """Caught up with too many streams to block on: wait for an append to
        be announced (or, without announcements, for the next poll)."""
        wait_ms = block_ms if self.wakeups.active else min(block_ms,
                                                           self.settings.poll_interval_ms)
        # (Only the loop's own thread waits: a read ahead never blocks.)
        if self.wakeups.listening():
            self._note_appended(self.wakeups.take(wait_ms / 1000))
        else:
            self.stop_event.wait(wait_ms / 1000)

    def _note_appended(self, names: set[str] | None) -> None:
        """Take announced appends: streams owned are read next, those of hosts
        not known yet are found at once; after a flood (None), every stream."""
        if names is None:
            with self._appended_lock:
                self._appended.clear()
                self._next_full_read = 0.0
            return
        if not names:
            return
        gained = self.streams.add(name for name in names if name not in self.streams)
        if gained:
            self.ensure_groups(gained)
        owned = set(self.streams.owned)
        with self._appended_lock:
            self._appended.update(name for name in names if name in owned)

    def _read_chunk(self, streams: Sequence[str], per_stream: int,
                    block_ms: int | None) -> Batches:
        try:
            reply = self.client.xreadgroup(self.group, self.name, dict.fromkeys(streams, ">"),
                                           count=per_stream, block=block_ms)
        except redis.ResponseError as exc:
            if not is_missing_group(exc):
                raise
            # A stream of the chunk was deleted (its group with it) or
            # replaced: make sure of every group of the chunk, read next round.
            logger.warning("a host stream lost its consumer group (%s); recreating it", exc)
            self._grouped.difference_update(streams)
            self.ensure_groups(streams)
            return []
        return [(text(stream), entries) for stream, entries in reply or [] if entries]

    def _note_lag(self, batches: Batches, more: bool, count: int) -> None:
        if not more or not batches:
            self._lag = (0, 0.0)
            return
        oldest = min(entry_id_ms(entries[0][0]) for _, entries in batches)
        self._lag = (count, oldest / 1000)

    def drain(self, timeout_s: float = 60.0) -> int:
        """Read until the owned streams are empty for this group (tests and benchmarks)."""
        if not self.ready:
            self.setup()
        else:
            self.discover(10_000)
        deadline = self.clock() + timeout_s
        total_read = 0
        while self.clock() < deadline:
            count = self.read(None)
            total_read += count
            if count:
                continue
            self.flush()
            if not self._held:
                break
            self.retry_held()
        self.flush()
        return total_read

    def flush(self) -> None:
        """Wait until every batch handed to the writer is applied."""
        self.writer.wait()

    def close(self) -> None:
        """Apply what is handed over and end the writer's thread."""
        self.writer.close()
        self.wakeups.close()

    # -- applying a batch ------------------------------------------------------

    def process(self, stream: str, entries: Sequence[Any],
                delivered: Mapping[str, int] | None = None) -> None:
        """Plan one batch of entries of ``stream`` and hand it to the writer."""
        self.writer.submit(self.plan([(stream, entries)], delivered))

    def plan(self, batches: Batches, delivered: Mapping[str, int] | None = None) -> list[Write]:
        """The writes of the entries of ``batches``, in order."""
        counts = delivered or {}
        read: list[Decoded | Write] = []
        for stream, entries in batches:
            for raw_id, fields in entries:
                entry_id = text(raw_id)
                read.append(self.planner.read(stream, entry_id, fields,
                                              counts.get(entry_id, 1)))
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
        if writes:
            self.flush()
            self.applier.apply(writes)

    # -- held writes -------------------------------------------------------

    def _hold(self, write: Write) -> None:
        """Keep a write that waits for an older entry of its stream (called
        from the writer's thread)."""
        with self._held_lock:
            self._held.setdefault(write.stream, []).append(write)

    def retry_held(self) -> int:
        """Send the held writes again, after claiming what blocks them from
        collectors that left the ring; the number sent."""
        self.flush()
        with self._held_lock:
            held, self._held = self._held, {}
        if not held:
            return 0
        members = set(self.streams.members)
        for stream, consumers in self.reclaimer.inspect(list(held)).items():
            for consumer, pending in consumers.pending.items():
                if pending and consumer != self.name and consumer not in members:
                    self.counters.reclaimed += self.reclaimer.from_consumer(stream, consumer)
        writes = [write for stream in held for write in held[stream]]
        self.writer.submit(writes)
        self.flush()
        return len(writes)

    # -- reclaiming --------------------------------------------------------

    def drain_own_pending(self) -> int:
        """Re-process entries delivered to this consumer name but never acknowledged."""
        handled = self.reclaimer.own(self.streams.owned)
        self.flush()
        if handled:
            logger.info("re-processed %s pending entries of consumer %s", handled, self.name)
        return handled

    def inspect(self, count: int) -> int:
        """Look at the consumers of the next ``count`` owned streams: claim the
        entries of collectors that left the ring and entries idle past
        ``claim_min_idle_s``, forget idle consumers. A pass over every owned
        stream starts every ``claim_interval_s``; the number of entries claimed."""
        owned = self.streams.owned
        page = owned[self._inspect_at:self._inspect_at + count]
        members = set(self.streams.members)
        claimed = 0
        for stream, consumers in self.reclaimer.inspect(page).items():
            self._pending_in_pass += sum(consumers.pending.values())
            for consumer, waiting in consumers.pending.items():
                if waiting and consumer != self.name and consumer not in members:
                    claimed += self.reclaimer.from_consumer(stream, consumer)
            if any(consumers.pending.values()):
                claimed += self.reclaimer.idle(stream)
            self.reclaimer.forget_idle(stream, consumers)
        self._inspect_at += count
        if self._inspect_at >= len(owned):
            # The pass is over: its count of pending entries is the figure.
            self._pending_seen, self._pending_in_pass = self._pending_in_pass, 0
            self._inspect_at = 0
            self._next_inspect = self.clock() + self.settings.claim_interval_s
        self.counters.reclaimed += claimed
        return claimed

    def reclaim(self) -> int:
        """A whole inspection pass over the owned streams (tests and ``--once``)."""
        self._inspect_at = 0
        claimed = self.inspect(max(1, len(self.streams.owned)))
        return claimed

    # -- keepalive and heartbeat ------------------------------------------------

    def sweep_step(self) -> list[keepalive.Transition]:
        """Judge one page of the hosts due to turn stale (see :class:`keepalive.Sweeper`)."""
        self.flush()
        made = self.sweeper.step(self.client, server_time_ms(self.client), self.streams.owns)
        self.counters.stale_transitions += len(made)
        if made and self.evaluations is not None:
            self.counters.evaluations += self.evaluations.request(t.host for t in made)
        return made

    def sweep(self) -> list[keepalive.Transition]:
        """A whole sweep: mark the silent hosts this collector owns stale."""
        made = self.sweep_step()
        while self.sweeper.busy:
            made += self.sweep_step()
        return made

    def heartbeat(self, state: str = "running") -> None:
        """Write this collector's heartbeat (and ring membership), then share
        the hosts anew among the ring's live members."""
        self.flush()
        now_ms = server_time_ms(self.client)
        with self._held_lock:
            held = [write for writes in self._held.values() for write in writes]
        lag, oldest_s = self._lag
        fields: dict[str, object] = {
            "name": self.name,
            "state": state,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": iso_from_ms(self.started_ms or now_ms),
            "caught_up": "yes" if self.caught_up else "no",
            "streams": len(self.streams.owned),
            "streams_known": len(self.streams),
            "collectors": len(self.streams.members),
            "pending": max(self._pending_seen, len(held)),
            "lag": lag,
            "lag_s": round(max(0.0, now_ms / 1000 - oldest_s), 3) if lag else 0.0,
            "oldest_pending_s": round(max(0.0, max(
                (now_ms - entry_id_ms(write.entry_id) for write in held), default=0) / 1000), 3),
        }
        fields.update(self.counters.as_fields())
        write_heartbeat(self.client, self.keys, self.name, now_ms, fields)
        # Entries of collectors whose hashes expired long ago, and members of
        # the ring silent for a day (long out of it already).
        self.client.zremrangebyscore(self.keys.collectors_index(), "-inf",
                                     now_ms - 2 * 86_400_000)
        self.client.zremrangebyscore(self.keys.collector_ring(), "-inf", now_ms - 86_400_000)
        if state != STOPPED:
            self.share(now_ms)

    def _final_heartbeat(self) -> None:
        try:
            self.heartbeat(STOPPED)
        except redis.RedisError:
            pass
