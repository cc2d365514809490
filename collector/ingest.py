"""Ingestion: the consumer-group loop that turns stream entries into host state.

One :class:`Collector` is one consumer of group :data:`wire.keys.COLLECTOR_GROUP`
on the report and session streams; several may run and share the load.
Per batch it decodes every entry, verifies its signature when host keys are
configured, and sends the entries' writes in a few calls of the batch
script (see :mod:`collector.scripts`): for each entry it writes the state
only when the message is newer than what is stored and acknowledges the
entry in the same atomic step, then takes the evaluation marks of the hosts
that changed. Entries that cannot be used go to the dead-letter stream with
the reason, acknowledged in the same step too. While working off a backlog
the XREADGROUP of the next batch is sent before a batch is decoded, and a
batch's scripts are sent before the replies to the batch before are handled,
so that Redis works while this process does and neither waits for the other.
Between batches the loop reclaims entries a dead consumer left pending (XAUTOCLAIM),
sweeps for stale hosts, writes its heartbeat, and hands changed hosts to the
alerter.

Nothing here ends the loop on bad input: a message that cannot be used is
dead-lettered, an unexpected error in one entry dead-letters that entry, and
Redis outages are retried with a capped, logged backoff.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain
from operator import attrgetter
from typing import Any, NamedTuple

import msgpack
import redis

from collector import keepalive, rawpipe, scripts
from collector.evaluate import Evaluations, PreparedJobs
from collector.hostwrite import HostWrites, whole_write
from collector.scripts import (
    APPLIED,
    BATCH_SCRIPT,
    CONFLICT,
    DEAD_LETTER_SCRIPT,
    NEED_FULL,
    REPORT_SCRIPT,
    SESSION_SCRIPT,
    SKIPPED,
    SNAPSHOT_SCRIPT,
    LuaScript,
    order_key,
)
from collector.selfmon import STOPPED, group_stats, server_time_ms, total, write_heartbeat
from collector.settings import CollectorSettings
from wire import auth
from wire.errors import DecodeError
from wire.keys import COLLECTOR_GROUP, KeySpace
from wire.messages import (
    CONNECTED,
    DISCONNECTED,
    LOGGED_IN,
    SESSION_STATES,
    SNAPSHOT,
    Report,
    SessionEvent,
    decode_entry,
)
from wire.state import (
    FLOAT_TEXTS,
    iso_from_ms,
    new_float_text,
    session_fields_text,
    session_text,
)

logger = logging.getLogger(__name__)

# Errors after which Redis may well come back: retry with backoff. A replica
# promoted away from under us answers READONLY until the client reconnects.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError,
)
# Upper bounds of one reclaim pass, so a huge backlog of a dead consumer
# cannot starve new entries.
MAX_CLAIM_ROUNDS = 10
MAX_MERGE_ATTEMPTS = 3
MAX_REASON = 200
MAX_FIELD_NAMES = 200
# Entries per batch script call: Redis runs one call without serving other
# clients, so a call is kept to a few milliseconds.
BATCH_ENTRIES = 200
# Working off a backlog, a read takes batch_size reports and this many times
# as many session events. A session event costs the collector about a
# quarter of what a report does but Redis about half, so with as many of
# each the reports ran out first, and the session events left over were
# Redis's work while the collector waited for it (some 6% of a drain of the
# benchmark's mix). Read faster, the session events run out first, and what
# is left is the reports, the collector's own work.
SESSION_READ_FACTOR = 2
MAX_CACHED_HOSTS = 100_000


# Tracked objects allocated (less those freed) between two collections of the
# youngest generation, instead of Python's 700. See tune_garbage_collector.
# What a batch allocates is freed before it counts; what does count is the
# per-host memory, some 25 containers a host, so a fleet of a few thousand
# hosts triggers a collection or two while the collector warms up (each
# walking every young object: 15 ms for 20,000 of them on a 2-core machine).
GC_YOUNG_THRESHOLD = 100_000


def tune_garbage_collector() -> None:
    """Make the cyclic garbage collector cheap for a collector process.

    Decoding a batch allocates some ten containers per entry, and they live
    until the batch is written, so with Python's defaults a young collection
    ran every few dozen entries and promoted them all, and the resulting full
    collections walked every object the process holds: the loaded modules
    and the per-host memory of :class:`collector.hostwrite.HostWrites`. That
    was a fifth of the collector's CPU time. The entries form no reference
    cycles (they are freed by reference counting as soon as a batch is done),
    so collecting rarely costs no memory; what the process loaded at start is
    moved out of the collector's sight (``gc.freeze``) for good.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def default_name() -> str:
    """``<hostname>-<pid>``: unique per process, readable in XINFO CONSUMERS."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


@dataclass
class Counters:
    """What this collector has done since it started."""

    processed: int = 0
    applied: int = 0
    skipped: int = 0
    dead_lettered: int = 0
    spoofed: int = 0
    reclaimed: int = 0
    conflicts: int = 0
    evaluations: int = 0
    stale_transitions: int = 0
    errors: int = 0

    def as_fields(self) -> dict[str, int]:
        """The counters as heartbeat fields."""
        return dict(self.__dict__)


class _Op(NamedTuple):
    """One planned script call for one stream entry, as the batch script takes it.

    ``keys`` are the script's keys followed by ``mark`` when there is one;
    ``args`` begin with the batch script's four per-entry items (script name,
    key count, 1 if a mark key follows, argument count) before the script's
    own arguments. Both are built in that form once, so that a batch is a
    plain concatenation; :meth:`call` runs the entry's script alone.
    """

    kind: str  # report, session, snapshot or dead
    stream: str
    entry_id: str
    script: LuaScript
    keys: list[Any]
    args: list[Any]
    host: str = ""
    event: SessionEvent | None = None
    mark: str | None = None  # the host's evaluation-pending key, taken in the batch script
    report: Report | None = None

    def call(self, client: Any) -> Any:
        """The entry's script run alone (EVALSHA), without the batch around it."""
        return self.script.call(client, self.keys[:self.args[1]], self.args[4:])


_op_keys = attrgetter("keys")
_op_args = attrgetter("args")
_op_kind = attrgetter("kind")


# _Op(...) with every field given, without the NamedTuple's Python-level __new__.
_new_op = tuple.__new__


class _Overlay(dict[tuple[str, str], str | None]):
    """(host, client id) -> the session text a batch's earlier events leave.

    Seeded with the stored sessions read for the batch; indexed by host so
    that a snapshot resets its host's clients without scanning the batch.
    """

    def __init__(self, stored: Mapping[tuple[str, str], str | None]) -> None:
        super().__init__()
        self.clients: dict[str, set[str]] = {}
        for key, text in stored.items():
            self[key] = text

    def __setitem__(self, key: tuple[str, str], text: str | None) -> None:
        super().__setitem__(key, text)
        self.clients.setdefault(key[0], set()).add(key[1])


def history_line(report: Report, timestamp: str) -> str:
    """``timestamp,sessions,disk_percent,memory_mb`` for the host history list;
    ``timestamp`` is the entry's time as the host's last_seen has it."""
    checks = report.checks
    return ",".join((
        timestamp,
        _figure(checks.get("sessions"), "active_sessions"),
        _figure(checks.get("disk_space"), "percent_used"),
        _figure(checks.get("memory"), "process_rss_mb"),
    ))


def _figure(fields: Mapping[str, Any] | None, name: str) -> str:
    """A number of a check as stored text; '' when absent or not a number."""
    if fields is None:
        return ""
    value = fields.get(name)
    if type(value) is float:
        return FLOAT_TEXTS.get(value) or new_float_text(value)  # float_text, without the call
    if type(value) is int:
        return str(value)
    return ""


def _iso_seconds(text: Any) -> float | None:
    if not isinstance(text, str):
        return None
    for pattern in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return datetime.strptime(text, pattern).replace(tzinfo=UTC).timestamp()
        except ValueError:
            continue
    return None


def _stored_session(text: str | None) -> dict[str, Any]:
    """The fields of a stored session text we can trust; {} for anything else."""
    if not text:
        return {}
    try:
        doc = json.loads(text)
    except ValueError:
        return {}
    if not isinstance(doc, dict):
        return {}
    known: dict[str, Any] = {}
    if isinstance(doc.get("user_id"), str):
        known["user_id"] = doc["user_id"]
    if doc.get("state") in SESSION_STATES:
        known["state"] = doc["state"]
    connected_at = _iso_seconds(doc.get("connected_at"))
    if connected_at is not None:
        known["connected_at"] = connected_at
    return known


def needs_merge(event: SessionEvent) -> bool:
    """True when the event leaves out something the stored session knows."""
    if event.kind == LOGGED_IN:
        return event.connected_at is None or event.user_id is None
    if event.kind in (CONNECTED, DISCONNECTED, SNAPSHOT):
        return False
    return event.connected_at is None or event.user_id is None or event.state is None


def merged_session_text(event: SessionEvent, stored_text: str | None) -> str:
    """The stored text of the session after ``event``, filling gaps from the
    stored session (``stored_text``)."""
    if event.kind == CONNECTED:
        return session_fields_text(event.client_id, event.user_id, event.state or "connected",
                                   event.connected_at or event.observed_at)
    return session_fields_text(event.client_id, *_merged_fields(event, stored_text))


def _merged_fields(event: SessionEvent,
                   stored_text: str | None) -> tuple[str | None, str, float]:
    """User, state and connection time after an event other than CONNECTED."""
    prior = _stored_session(stored_text)
    if event.kind == LOGGED_IN:
        # As sent: a login without a user stays without one (shown empty), so a
        # reporter that lost the user is seen rather than hidden behind a name.
        user = event.user_id if event.user_id is not None else prior.get("user_id")
        state = "logged_in"
    else:
        user = event.user_id if event.user_id is not None else prior.get("user_id")
        state = event.state or prior.get("state") or "connected"
    connected_at = event.connected_at or prior.get("connected_at") or event.observed_at
    return user, state, connected_at


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
        self.host_keys = host_keys
        self.group = COLLECTOR_GROUP
        self.streams = keys.streams()
        self.counters = Counters()
        self.clock = clock
        self.max_block_ms = max_block_ms
        self.evaluations = (Evaluations(client, keys, settings.evaluation_ttl_s)
                            if settings.evaluate else None)
        self.ready = False
        self.caught_up = False
        self.started_ms = 0
        # Commands sent on one connection whose replies are not read yet, and
        # what they are, in order: a batch's scripts (its ops and the number
        # of script calls), evaluation jobs, or, as None, the XREADGROUPs of a
        # read ahead, whose entries then go to _prefetched.
        self._inflight: rawpipe.InFlight | None = None
        self._awaited: deque[tuple[list[_Op], int] | PreparedJobs | None] = deque()
        self._reading_ahead = False
        self._prefetched: list[tuple[str, list[Any]]] | None = None
        # Entries of each stream a read ahead asks for (see SESSION_READ_FACTOR).
        self._read_counts = {stream: settings.batch_size * (
            SESSION_READ_FACTOR if stream == keys.sessions_stream() else 1)
            for stream in self.streams}
        self._changed: set[str] = set()  # hosts whose state changed, not yet evaluated
        self._host_keys: dict[str, tuple[str, ...]] = {}
        self._writes = HostWrites()  # what was last written per host hash
        self._history_length = str(settings.history_length)
        self._hosts_index = keys.hosts_index()
        self._mark_ttl = settings.evaluation_ttl_s if settings.evaluate else 0
        now = clock()
        self._next_claim = now
        self._next_sweep = now + settings.sweep_interval_s
        self._next_heartbeat = now

    # -- setup -------------------------------------------------------------

    def setup(self) -> None:
        """Load the scripts, create the group, resume this consumer's own pending entries."""
        if self._inflight is not None:
            # Whatever was in flight stays pending and is re-read below.
            self._inflight.abandon()
            self._inflight = None
        self._awaited.clear()
        self._reading_ahead = False
        self._prefetched = None  # delivered to this consumer: re-read below too
        # Redis may have lost or changed anything meanwhile: write whole hashes
        # first (a difference would be refused anyway, at the cost of a retry).
        self._writes = HostWrites()
        for script in scripts.ALL:
            script.load(self.client)
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
        now = self.clock()
        if now >= self._next_claim:
            self.flush()
            self.reclaim()
            self._next_claim = self.clock() + self.settings.claim_interval_s
        count = self.read(self._block_ms(self.clock()))
        if count == 0:
            self.flush()
        now = self.clock()
        if now >= self._next_sweep or now >= self._next_heartbeat:
            self.flush()
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
        """Read and apply one batch of new entries; the number read."""
        if self._prefetched is None and self._reading_ahead:
            self.flush(evaluate=False)  # handles all before it, then takes its entries
        batches, self._prefetched = self._prefetched, None
        if batches is None:
            # Through the lean pipeline too: its replies skip redis-py's
            # parsing into dicts, which costs more than the read.
            block = () if block_ms is None else ("BLOCK", block_ms)
            reply = rawpipe.execute(self.client, [self._read_command(*block)])[0]
            batches = _raw_stream_replies(reply)
            full = any(len(entries) >= self.settings.batch_size for _, entries in batches)
        else:
            counts = self._read_counts
            full = any(len(entries) >= counts.get(stream, self.settings.batch_size)
                       for stream, entries in batches)
        read = 0
        if full:
            # Working off a backlog: Redis reads the next batch (after the
            # scripts in flight) while this one is decoded.
            self._read_ahead()
        # Each script call goes out as soon as its entries are planned, so
        # that Redis starts on them while this process plans the next ones
        # (at the end of a backlog the collector then waits for one call, not
        # for a whole read's). Caught up, there is no next batch to decode
        # meanwhile: the replies are handled at once (jobs enqueued) rather
        # than after the next read, which may block for block_ms.
        sends = 0
        for stream, entries in batches:
            read += len(entries)
            for start in range(0, len(entries), BATCH_ENTRIES):
                sends += self._put_ops(self._plan(stream, entries[start:start + BATCH_ENTRIES]))
        self._settle(keep=sends if full else 0)
        self._evaluate_changed()
        self.caught_up = not full
        return read

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

    # -- reclaiming --------------------------------------------------------

    def drain_own_pending(self) -> int:
        """Re-process entries delivered to this consumer name but never acknowledged."""
        handled = 0
        for stream in self.streams:
            cursor = "0"
            for _ in range(MAX_CLAIM_ROUNDS * 10):
                reply = rawpipe.execute(self.client, [(
                    "XREADGROUP", "GROUP", self.group, self.name, "COUNT",
                    self.settings.batch_size, "STREAMS", stream, cursor)])[0]
                entries = [e for _, es in _raw_stream_replies(reply) for e in es]
                if not entries:
                    break
                cursor = _text(entries[-1][0])
                counts = self._delivery_counts(stream, entries)
                self.process(stream, entries, counts)
                handled += len(entries)
        self.flush()
        if handled:
            logger.info("re-processed %s pending entries of consumer %s", handled, self.name)
        return handled

    def reclaim(self) -> int:
        """Claim entries idle past ``claim_min_idle_s`` from other (dead) consumers."""
        min_idle_ms = int(self.settings.claim_min_idle_s * 1000)
        claimed = 0
        for stream in self.streams:
            self._dead_letter_overdelivered(stream, min_idle_ms)
            cursor = "0-0"
            for _ in range(MAX_CLAIM_ROUNDS):
                reply = self.client.xautoclaim(stream, self.group, self.name, min_idle_ms,
                                               cursor, count=self.settings.batch_size)
                start, cursor = cursor, _text(reply[0])
                # Redis 6.2 answers an entry trimmed meanwhile as (nil, nil); it stays
                # pending, its delivery count grows and the over-delivery pass
                # dead-letters it by id.
                entries = [e for e in reply[1] if e[0] is not None]
                if len(entries) < len(reply[1]):
                    self._dead_letter_vanished(stream, start, cursor, entries)
                if entries:
                    counts = self._delivery_counts(stream, entries)
                    self.process(stream, entries, counts)
                    claimed += len(entries)
                if cursor in ("0-0", "0"):
                    break
        self.flush()
        if claimed:
            self.counters.reclaimed += claimed
            logger.info("claimed %s entries left pending by other consumers", claimed)
        self._forget_idle_consumers()
        return claimed

    def _dead_letter_vanished(self, stream: str, start: str, cursor: str,
                              entries: Sequence[Any]) -> None:
        """Dead-letter what XAUTOCLAIM claimed but could not return (Redis < 7).

        Redis 6.2 answers an entry deleted while pending as (nil, nil) and
        keeps it pending; find those ids among this consumer's pending entries
        of the claimed range, and make sure they are gone before acknowledging.
        """
        returned = {_text(e[0]) for e in entries}
        end = "+" if cursor in ("0-0", "0") else f"({cursor}"
        rows = self.client.xpending_range(stream, self.group, min=start, max=end,
                                          count=self.settings.batch_size * 2,
                                          consumername=self.name)
        ops = []
        for row in rows:
            entry_id = _text(row["message_id"])
            if entry_id in returned or self.client.xrange(stream, min=entry_id, max=entry_id):
                continue
            ops.append(self._dead(stream, entry_id, None, "entry no longer in the stream "
                                  "(trimmed before it was processed)"))
        self._execute_now(ops)

    def _delivery_counts(self, stream: str, entries: Sequence[Any]) -> dict[str, int]:
        ids = [_text(e[0]) for e in entries]
        rows = self.client.xpending_range(stream, self.group, min=ids[0], max=ids[-1],
                                          count=len(ids) + 16, consumername=self.name)
        return {_text(r["message_id"]): int(r["times_delivered"]) for r in rows}

    def _dead_letter_overdelivered(self, stream: str, min_idle_ms: int) -> None:
        rows = self.client.xpending_range(stream, self.group, min="-", max="+",
                                          count=self.settings.batch_size, idle=min_idle_ms)
        over = [r for r in rows if int(r["times_delivered"]) >= self.settings.max_deliveries]
        if not over:
            return
        ops = []
        for row in over:
            entry_id = _text(row["message_id"])
            found = self.client.xrange(stream, min=entry_id, max=entry_id)
            fields = found[0][1] if found else None
            reason = (f"delivered {int(row['times_delivered'])} times without "
                      f"acknowledgement (last to {_text(row['consumer'])})")
            if fields is None:
                reason += "; entry no longer in the stream"
            ops.append(self._dead(stream, entry_id, fields, reason))
        self._execute_now(ops)

    def _forget_idle_consumers(self) -> None:
        limit_ms = self.settings.forget_consumer_after_s * 1000
        for stream in self.streams:
            try:
                consumers = self.client.xinfo_consumers(stream, self.group)
            except redis.ResponseError:
                continue
            for consumer in consumers:
                name = _text(consumer.get("name", ""))
                if (name != self.name and int(consumer.get("pending") or 0) == 0
                        and int(consumer.get("idle") or 0) > limit_ms):
                    self.client.xgroup_delconsumer(stream, self.group, name)
                    logger.info("removed consumer %s (idle, nothing pending) from %s",
                                name, stream)

    # -- applying a batch ------------------------------------------------------

    def process(self, stream: str, entries: Sequence[Any],
                delivered: Mapping[str, int] | None = None) -> None:
        """Apply one batch of entries of ``stream``, each acknowledged with its write."""
        self._send(self._plan(stream, entries, delivered))

    def _plan(self, stream: str, entries: Sequence[Any],
              delivered: Mapping[str, int] | None = None) -> list[_Op]:
        """Decode a batch of ``stream`` into the script calls that apply it."""
        decoded: list[tuple[str, Any, Any]] = []
        reads: list[tuple[str, str]] = []
        ops: list[_Op] = []
        signed = self.host_keys is not None
        for raw_id, fields in entries:
            # _text, spared a call for the usual bytes id (once per entry).
            entry_id = (raw_id.decode("utf-8", "replace") if type(raw_id) is bytes
                        else _text(raw_id))
            count = delivered.get(entry_id, 1) if delivered else 1
            if count > self.settings.max_deliveries:
                ops.append(self._dead(stream, entry_id, fields,
                                      f"delivered {count} times without acknowledgement"))
                continue
            if not fields:
                # XADD needs a field, so an empty entry is one deleted (trimmed)
                # while it was pending.
                ops.append(self._dead(stream, entry_id, None,
                                      "entry no longer in the stream (trimmed before it was "
                                      "processed)"))
                continue
            try:
                message = decode_entry(fields)
            except DecodeError as exc:
                ops.append(self._dead(stream, entry_id, fields, f"undecodable: {exc.reason}"))
                continue
            problem = signed and self._authenticate(message.host, fields)
            if problem:
                self.counters.spoofed += 1
                logger.warning("entry %s of %s: %s", entry_id, stream, problem)
                ops.append(self._dead(stream, entry_id, fields, problem))
                continue
            if isinstance(message, SessionEvent) and needs_merge(message):
                reads.append((message.host, message.client_id))
            decoded.append((entry_id, fields, message))
        # Only an event that fills gaps from the stored session needs to know
        # what the batch's earlier events left; without one, nothing is tracked.
        overlay = _Overlay(self._read_sessions(reads)) if reads else None
        for entry_id, fields, message in decoded:
            try:
                if isinstance(message, Report):
                    ops.append(self._report_op(stream, entry_id, message))
                else:
                    ops.append(self._session_op(stream, entry_id, message, overlay))
            except Exception as exc:  # one bad entry must not stop the batch
                self.counters.errors += 1
                logger.error("cannot apply entry %s of %s (%s: %s)", entry_id, stream,
                             type(exc).__name__, exc,
                             exc_info=logger.isEnabledFor(logging.DEBUG))
                ops.append(self._dead(stream, entry_id, fields,
                                      f"collector error: {type(exc).__name__}: {exc}"))
        return ops

    def _send(self, ops: list[_Op], keep: int = 1) -> None:
        """Send the scripts of ``ops``, then handle the replies of what went
        before (``keep`` 0: of these scripts too).

        Redis runs this batch's scripts while the caller reads and decodes the
        next one; their replies are handled when that one is sent. Sending
        first keeps Redis busy while the replies before are handled: what
        handling them may send again (a whole hash for a refused difference,
        a merge retried) is ordered by the entries' ordering keys, whichever
        arrives first.
        """
        sent = self._put_ops(ops)
        self._settle(keep=keep if sent else 0)

    def _put_ops(self, ops: list[_Op]) -> bool:
        """Send the batch script calls of ``ops`` (if any), their replies awaited."""
        commands = self._batch_commands(ops)
        if commands:
            self._put(commands, (ops, len(commands)))
        return bool(commands)

    def _read_ahead(self) -> None:
        """Send the XREADGROUPs of the next batch (one per stream, each with
        its count) behind what is in flight."""
        if self._reading_ahead or self._prefetched is not None:
            return
        self._put([("XREADGROUP", "GROUP", self.group, self.name, "COUNT", count,
                    "STREAMS", stream, ">") for stream, count in self._read_counts.items()],
                  None)
        self._reading_ahead = True

    def _read_command(self, *options: Any) -> tuple[Any, ...]:
        """XREADGROUP of new entries of both streams, with ``options`` (BLOCK)."""
        return ("XREADGROUP", "GROUP", self.group, self.name, "COUNT",
                self.settings.batch_size, *options, "STREAMS", *self.streams,
                *([">"] * len(self.streams)))

    def _put(self, commands: list[tuple[Any, ...]],
             awaited: tuple[list[_Op], int] | PreparedJobs | None) -> None:
        if self._inflight is None or not self._inflight.open:
            # (A connection whose replies were all read went back to the pool.)
            self._inflight = rawpipe.send(self.client, commands)
        else:
            self._inflight.send_more(commands)
        self._awaited.append(awaited)

    def _settle(self, keep: int = 0) -> None:
        """Read and handle the replies in flight, all but the last ``keep`` sends';
        with ``keep`` 0 also those of what handling them sends (jobs)."""
        awaited = self._awaited
        todo = len(awaited) - keep
        while awaited and (todo > 0 or not keep):
            todo -= 1
            assert self._inflight is not None
            group = awaited.popleft()
            if group is None:
                replies = self._inflight.collect(len(self._read_counts))
                self._reading_ahead = False
                # Kept for the next read (they are delivered to this consumer).
                self._prefetched = [batch for reply in replies
                                    for batch in _raw_stream_replies(reply)]
            elif isinstance(group, PreparedJobs):
                assert self.evaluations is not None
                self.evaluations.finish(group, self._inflight.collect(len(group.commands)))
            else:
                ops, count = group
                self._handle(ops, self._inflight.collect(count))
        if not awaited:
            self._inflight = None

    def _batch_commands(self, ops: Sequence[_Op]) -> list[tuple[Any, ...]]:
        """The batch script calls applying ``ops``, at most BATCH_ENTRIES entries each."""
        commands = []
        for start in range(0, len(ops), BATCH_ENTRIES):
            chunk = ops[start:start + BATCH_ENTRIES]
            # (attrgetter and map: C-level loops over the chunk.)
            keys = list(chain.from_iterable(map(_op_keys, chunk)))
            args: list[Any] = [self._mark_ttl]
            args.extend(chain.from_iterable(map(_op_args, chunk)))
            # Only a dead letter carries bytes (the entry's payload).
            packed = (_pack_with_bytes(args) if "dead" in map(_op_kind, chunk)
                      else _pack_texts(args))
            commands.append(("EVALSHA", BATCH_SCRIPT.sha, len(keys), *keys, packed))
        return commands

    def _keys_of(self, host: str) -> tuple[str, ...]:
        """host, history, sessions, sessions-order and evaluation-pending keys of ``host``."""
        names = self._host_keys.get(host)
        if names is None:
            keys = self.keys
            names = (keys.host(host), keys.host_history(host), keys.host_sessions(host),
                     keys.host_sessions_order(host), keys.evaluation_pending(host))
            if len(self._host_keys) >= MAX_CACHED_HOSTS:
                self._host_keys.clear()
            self._host_keys[host] = names
        return names

    def _authenticate(self, host: str, fields: Mapping[Any, Any]) -> str | None:
        if self.host_keys is None:
            return None
        key = auth.key_for(self.host_keys, host)
        if key is None:
            return f"no key for host {host} in the host keys file"
        payload = fields.get(b"m", fields.get("m"))
        if isinstance(payload, str):
            payload = payload.encode("utf-8", "surrogateescape")
        if not auth.verify(key, payload, fields.get(b"sig", fields.get("sig"))):
            return f"missing or bad signature for host {host}"
        return None

    def _read_sessions(self, reads: Iterable[tuple[str, str]]) -> dict[tuple[str, str],
                                                                        str | None]:
        wanted = sorted(set(reads))
        if not wanted:
            return {}
        values = rawpipe.execute(self.client, [("HGET", self._keys_of(host)[2], client_id)
                                               for host, client_id in wanted])
        for value in values:
            if isinstance(value, Exception):
                raise value
        return {k: (_text(v) if v is not None else None)
                for k, v in zip(wanted, values, strict=True)}

    def _report_op(self, stream: str, entry_id: str, report: Report, *,
                   whole: bool = False) -> _Op:
        """The script call for ``report``: the difference to the host's last
        write, or (``whole``, or nothing remembered) its whole hash."""
        entry_ms_text = entry_id.partition("-")[0]
        entry_ms = int(entry_ms_text)
        order = order_key(report.epoch, report.seq)
        write = (whole_write(report, entry_ms) if whole
                 else self._writes.plan(report, entry_ms, order))
        host = report.host
        # (_keys_of, spared its call for a host already seen.)
        names = self._host_keys.get(host) or self._keys_of(host)
        deleted, pairs = write.deleted, write.pairs
        args: list[Any] = [
            "report", 4, 1, 11 + len(deleted) + len(pairs),
            self.group, entry_id, order, entry_ms_text,
            history_line(report, write.last_seen), self._history_length,
            _count_text(report.dropped),
            host, write.status, write.base, _count_text(len(deleted)),
        ]
        if deleted:
            args += deleted
        args += pairs
        return _new_op(_Op, ("report", stream, entry_id, REPORT_SCRIPT,
                             [names[0], self._hosts_index, names[1], stream, names[4]], args,
                             host, None, names[4], report))

    def _session_op(self, stream: str, entry_id: str, event: SessionEvent,
                    overlay: _Overlay | None) -> _Op:
        """The script call for ``event``. ``overlay`` holds what Redis held for
        the sessions this batch merges, updated with what earlier events of the
        batch leave; None when no event of the batch merges."""
        host = event.host
        names = self._host_keys.get(host) or self._keys_of(host)
        keys = [names[2], names[3], stream, names[4]]
        order = order_key(event.epoch, event.seq)
        if event.kind == SNAPSHOT:
            args: list[Any] = ["snapshot", 3, 1, 3 + 2 * len(event.sessions),
                               self.group, entry_id, order]
            if overlay is not None:
                # Later events of this batch must expect what the snapshot leaves.
                for client_id in list(overlay.clients.get(host, ())):
                    overlay[(host, client_id)] = None
            for info in event.sessions:
                text = session_text(info)
                args.extend((info.client_id, text))
                if overlay is not None:
                    overlay[(host, info.client_id)] = text
            return _new_op(_Op, ("snapshot", stream, entry_id, SNAPSHOT_SCRIPT, keys, args,
                                 host, event, names[4], None))
        key = (host, event.client_id)
        expect, expected = "any", ""
        # _plan tracks the batch (an overlay) exactly when an event of it
        # merges: without one, no event needs to be asked.
        if overlay is not None and needs_merge(event):
            current = overlay.get(key)
            expect, expected = ("absent", "") if current is None else ("equal", current)
            text = merged_session_text(event, current)
        elif event.kind == DISCONNECTED:
            text = ""
        else:
            text = merged_session_text(event, None)
        op = "del" if event.kind == DISCONNECTED else "set"
        if overlay is not None:
            overlay[key] = None if op == "del" else text
        args = ["session", 3, 1, 9, self.group, entry_id, order, op, event.client_id, text,
                expect, expected, _MAX_ORDER_MARKS_TEXT]
        return _new_op(_Op, ("session", stream, entry_id, SESSION_SCRIPT, keys, args, host,
                             event, names[4], None))

    def _dead(self, stream: str, entry_id: str, fields: Mapping[Any, Any] | None,
              reason: str) -> _Op:
        payload: Any = b""
        names = ""
        if fields is not None:
            payload = fields.get(b"m", fields.get("m", b""))
            names = ",".join(sorted(_text(k) for k in fields))[:MAX_FIELD_NAMES]
        if isinstance(payload, str):
            payload = payload.encode("utf-8", "surrogateescape")
        if not isinstance(payload, bytes | bytearray):
            payload = repr(payload).encode()
        args = [
            "dead_letter", 2, 0, 0,
            self.group, entry_id, self.settings.dead_letter_maxlen,
            "reason", reason[:MAX_REASON], "stream", stream, "id", entry_id,
            "consumer", self.name, "fields", names, "payload_bytes", len(payload),
            "payload", bytes(payload[: self.settings.dead_letter_payload_bytes]),
        ]
        args[3] = len(args) - 4
        logger.debug("dead-lettering %s of %s: %s", entry_id, stream, reason)
        return _Op("dead", stream, entry_id, DEAD_LETTER_SCRIPT,
                   [self.keys.dead_letter_stream(), stream], args)

    def flush(self, *, evaluate: bool = True) -> None:
        """Wait for the batch in flight, handle its replies and request evaluations."""
        self._settle()
        if evaluate:
            self._evaluate_changed()

    def _execute_now(self, ops: list[_Op]) -> None:
        self.flush()
        if ops:
            self._handle(ops, rawpipe.execute(self.client, self._batch_commands(ops)))

    def _handle(self, ops: list[_Op], replies: list[Any], *, retry_scripts: bool = True) -> None:
        """Count the batch scripts' results, enqueue the evaluations their marks allow."""
        changed = self._changed
        missing_scripts: list[_Op] = []
        conflicts: list[_Op] = []
        refused_differences: list[_Op] = []
        marked: list[str] = []
        failed = 0
        stop: Exception | None = None
        chunks = [ops[i:i + BATCH_ENTRIES] for i in range(0, len(ops), BATCH_ENTRIES)]
        for chunk, reply in zip(chunks, replies, strict=True):
            if isinstance(reply, Exception):
                if isinstance(reply, redis.exceptions.NoScriptError):
                    missing_scripts += chunk
                    continue
                results: list[Any] = [reply] * len(chunk)
            else:
                results = reply[0]
                marked += [chunk[index - 1].host for index in reply[1]]
                if len(reply) > 2:
                    # The final XACKs failed: nothing of this call is acknowledged.
                    results = [_entry_error(reply[2])] * len(chunk)
                elif len(results) == len(chunk) and results.count(APPLIED) == len(results):
                    # The usual batch, every entry applied: counted at once.
                    self._count_applied(chunk)
                    continue
                else:
                    results = [_entry_error(r) if isinstance(r, bytes) else r for r in results]
                # The script stops at an error that concerns the whole server
                # (a replica, a loading dataset): the entries after it are
                # left pending, like the one that failed.
            for op, result in zip(chunk, results, strict=False):
                if op.report is not None and result != APPLIED:
                    # Whatever the hash holds now, it is not what was planned.
                    self._writes.forget(op.host)
                if isinstance(result, Exception):
                    if isinstance(result, TRANSIENT_ERRORS):
                        stop = stop or result
                        continue
                    failed += 1
                    logger.error("Redis refused the write of entry %s of %s: %s", op.entry_id,
                                 op.stream, result)
                    continue
                if result == CONFLICT:
                    conflicts.append(op)
                    continue
                if result == NEED_FULL:
                    refused_differences.append(op)
                    continue
                self.counters.processed += 1
                if op.kind == "dead":
                    self.counters.dead_lettered += 1
                elif result == SKIPPED:
                    self.counters.skipped += 1
                else:
                    self.counters.applied += 1
                    if op.mark is None:
                        changed.add(op.host)
        if failed:
            # Left pending: redelivered by a reclaim, dead-lettered after
            # max_deliveries attempts.
            self.counters.errors += failed
        if marked and self.evaluations is not None:
            # The scripts took these hosts' marks: enqueue at once, so that a
            # mark without its job lasts no longer than it did before. The
            # jobs go behind the scripts in flight and are not waited for
            # (their replies are checked with the next batch's); should the
            # connection be lost first, their marks expire after their TTL.
            prepared = self.evaluations.prepare(marked)
            if prepared is None:
                self.counters.evaluations += self.evaluations.enqueue(marked)
            else:
                self._put(prepared.commands, prepared)
                self.counters.evaluations += len(prepared.hosts)
        if stop is not None:
            raise stop
        if missing_scripts:
            if not retry_scripts:
                raise redis.exceptions.NoScriptError("scripts vanished from Redis again")
            logger.info("Redis lost the collector's scripts (restart or SCRIPT FLUSH); "
                        "reloading them")
            for script in scripts.ALL:
                script.load(self.client)
            self._handle(missing_scripts, rawpipe.execute(
                self.client, self._batch_commands(missing_scripts)), retry_scripts=False)
        for op in conflicts:
            if self._retry_merge(op):
                changed.add(op.host)
        if refused_differences:
            # Another writer changed these hashes since the difference was
            # taken: send them whole (in entry order, so the newest wins).
            whole = []
            for op in refused_differences:
                assert op.report is not None
                whole.append(self._report_op(op.stream, op.entry_id, op.report, whole=True))
            self._handle(whole, rawpipe.execute(self.client, self._batch_commands(whole)))

    def _count_applied(self, ops: list[_Op]) -> None:
        """Count ``ops``, all applied (as the loop of :meth:`_handle` would)."""
        counters = self.counters
        dead = 0
        for op in ops:
            if op.mark is None:
                if op.kind == "dead":
                    dead += 1
                else:
                    self._changed.add(op.host)
        counters.processed += len(ops)
        counters.dead_lettered += dead
        counters.applied += len(ops) - dead

    def _evaluate_changed(self) -> None:
        # Hosts changed by the batches of one read (both streams) are marked
        # and enqueued together: one SET per host rather than per entry.
        hosts, self._changed = self._changed, set()
        if hosts and self.evaluations is not None:
            self.counters.evaluations += self.evaluations.request(hosts)

    def _retry_merge(self, op: _Op) -> bool:
        """Re-apply a session event whose stored session changed meanwhile; True if applied."""
        event = op.event
        assert event is not None
        self.counters.conflicts += 1
        for _ in range(MAX_MERGE_ATTEMPTS):
            stored = self._read_sessions([(event.host, event.client_id)])
            fresh = self._session_op(op.stream, op.entry_id, event, _Overlay(stored))
            result = fresh.call(self.client)
            if result != CONFLICT:
                self.counters.processed += 1
                if result == SKIPPED:
                    self.counters.skipped += 1
                    return False
                self.counters.applied += 1
                return True
        logger.warning("session %s of host %s kept changing; entry %s left pending",
                       event.client_id, event.host, op.entry_id)
        return False

    # -- keepalive and heartbeat ------------------------------------------------

    def sweep(self) -> list[keepalive.Transition]:
        """Mark silent hosts stale (and clear levels of hosts whose thresholds changed)."""
        self.flush()
        now_ms = server_time_ms(self.client)
        made = keepalive.sweep(self.client, self.keys, self.settings, now_ms)
        self.counters.stale_transitions += len(made)
        self._changed.update(t.host for t in made)
        self._evaluate_changed()
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


_MAX_ORDER_MARKS_TEXT = str(scripts.MAX_ORDER_MARKS)
# The batch script's arguments travel as one msgpack array of texts and
# integers. Bytes must be packed as msgpack raw strings, the only kind the
# cmsgpack of Redis 6.2 reads, and texts that are not valid UTF-8 (none
# should be) go through as their bytes: msgpack-python's packer does both.
_pack_with_bytes = msgpack.Packer(use_bin_type=False, unicode_errors="surrogatepass").pack
try:
    # msgspec packs texts and integers the same way in a fifth of the time
    # (it would pack bytes as bin, hence not for dead letters).
    from msgspec.msgpack import Encoder as _Encoder

    _encode_texts: Callable[[Any], bytes] | None = _Encoder().encode
except ImportError:  # pragma: no cover - a declared dependency, but only a speed-up
    _encode_texts = None


def _pack_texts(args: list[Any]) -> bytes:
    """``args`` (texts and integers) as one msgpack array."""
    if _encode_texts is not None:
        try:
            return _encode_texts(args)
        except UnicodeEncodeError:
            pass
    return _pack_with_bytes(args)


# Texts of the small counts among an entry script's own arguments (which
# are texts, as EVALSHA gives them when the script runs alone).
_COUNT_TEXTS = tuple(str(n) for n in range(1024))


def _count_text(count: int) -> str:
    return _COUNT_TEXTS[count] if count < 1024 else str(count)


def _entry_error(message: bytes) -> Exception:
    """The error one entry's script met, as redis-py would have raised it."""
    text = message.decode("utf-8", "replace").removeprefix("ERR ")
    if "READONLY " in text:
        return redis.ReadOnlyError(text)
    if "LOADING " in text:
        return redis.exceptions.BusyLoadingError(text)
    return redis.ResponseError(text)


def _raw_stream_replies(reply: Any) -> list[tuple[str, list[Any]]]:
    """A raw XREADGROUP reply (as rawpipe returns it; a map under RESP3) as
    (stream, [(id, fields)])."""
    if isinstance(reply, Exception):
        raise reply
    if not reply:
        return []
    # The usual entry, its message alone, is made a dict here rather than
    # through a call per entry.
    return [(_text(stream), [(entry_id, {flat[0]: flat[1]} if flat is not None and len(flat) == 2
                              else _entry_fields(flat))
                             for entry_id, flat in entries or []])
            for stream, entries in (reply.items() if isinstance(reply, dict) else reply)]


def _entry_fields(flat: list[Any] | None) -> dict[Any, Any] | None:
    """An entry's flat [field, value, ...] list as a dict (None for a deleted entry)."""
    if flat is None:
        return None
    if len(flat) == 2:  # the usual entry: its message alone
        return {flat[0]: flat[1]}
    return dict(zip(flat[::2], flat[1::2], strict=True))
