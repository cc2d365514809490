"""Reclaiming: entries that a consumer was given but never acknowledged.

A collector that dies between reading entries and applying them leaves them
pending in the consumer group of the host's stream, and the host's later
entries wait for them (the apply script keeps each host's order). Three
ways bring them back:

* :meth:`Reclaimer.own` re-reads what is still pending for this consumer's
  own name (after a restart under a fixed name, or an error of the
  connection);
* :meth:`Reclaimer.from_consumer` claims every pending entry of a consumer
  that has left the ring (stopped, or silent past ``ring_timeout_s``): its
  host now belongs to this collector, and its entries come first;
* :meth:`Reclaimer.idle` claims entries idle past ``claim_min_idle_s``
  from any consumer, this one included (an entry Redis refused to write).

Entries delivered more than ``max_deliveries`` times go to the dead-letter
stream instead, so one entry that always fails cannot hold its host forever.
:meth:`Reclaimer.inspect` reads the consumers of a page of streams: who has
entries pending, and who has been idle so long with nothing pending that it
is removed from the group.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from collector.plan import TRIMMED, Planner, Write
from collector.settings import CollectorSettings
from wire.replies import text

logger = logging.getLogger(__name__)

# Streams per XREADGROUP when re-reading own pending entries.
OWN_CHUNK = 256
# Upper bound of claim rounds on one stream per pass, so that a huge backlog
# of a dead consumer cannot starve new entries.
MAX_CLAIM_ROUNDS = 10

#: Plans and applies a batch of one stream: (stream, entries, delivery counts).
Process = Callable[[str, Sequence[Any], Mapping[str, int]], None]


@dataclass
class Consumers:
    """What :meth:`Reclaimer.inspect` learnt of one stream's consumers."""

    pending: dict[str, int] = field(default_factory=dict)  # consumer -> entries pending
    idle_ms: dict[str, int] = field(default_factory=dict)  # consumer -> idle time


class Reclaimer:
    """Claims and re-processes pending entries of host streams."""

    def __init__(self, client: Any, settings: CollectorSettings, planner: Planner,
                 process: Process, apply_now: Callable[[list[Write]], None]) -> None:
        self.client = client
        self.settings = settings
        self.planner = planner
        self.process = process
        self.apply_now = apply_now

    @property
    def group(self) -> str:
        return self.planner.group

    @property
    def consumer(self) -> str:
        return self.planner.consumer

    def own(self, streams: Sequence[str]) -> int:
        """Re-process entries delivered to this consumer name but never acknowledged."""
        handled = 0
        for start in range(0, len(streams), OWN_CHUNK):
            cursors = dict.fromkeys(streams[start:start + OWN_CHUNK], "0")
            for _ in range(MAX_CLAIM_ROUNDS * 10):
                reply = self.client.xreadgroup(self.group, self.consumer, cursors,
                                               count=self.settings.batch_size)
                more = {}
                for raw_stream, entries in reply or []:
                    if not entries:
                        continue
                    stream = text(raw_stream)
                    self.process(stream, entries, self._delivery_counts(stream, entries))
                    handled += len(entries)
                    if len(entries) >= self.settings.batch_size:
                        more[stream] = text(entries[-1][0])
                if not more:
                    break
                cursors = more
        return handled

    def inspect(self, streams: Sequence[str]) -> dict[str, Consumers]:
        """The consumers of each of ``streams`` (streams without the group are left out)."""
        pipe = self.client.pipeline(transaction=False)
        for stream in streams:
            pipe.xinfo_consumers(stream, self.group)
        found = {}
        for stream, reply in zip(streams, pipe.execute(raise_on_error=False), strict=True):
            if isinstance(reply, Exception):
                continue
            seen = Consumers()
            for consumer in reply:
                name = text(consumer.get("name", ""))
                seen.pending[name] = int(consumer.get("pending") or 0)
                seen.idle_ms[name] = int(consumer.get("idle") or 0)
            found[stream] = seen
        return found

    def forget_idle(self, stream: str, consumers: Consumers) -> None:
        """Remove consumers idle past ``forget_consumer_after_s`` with nothing pending."""
        limit_ms = self.settings.forget_consumer_after_s * 1000
        for name, pending in consumers.pending.items():
            if name != self.consumer and not pending and consumers.idle_ms[name] > limit_ms:
                self.client.xgroup_delconsumer(stream, self.group, name)
                logger.info("removed consumer %s (idle, nothing pending) from %s", name, stream)

    def from_consumer(self, stream: str, consumer: str) -> int:
        """Claim and re-process every entry of ``stream`` pending for ``consumer``."""
        claimed = 0
        for _ in range(MAX_CLAIM_ROUNDS):
            rows = self.client.xpending_range(stream, self.group, min="-", max="+",
                                              count=self.settings.batch_size,
                                              consumername=consumer)
            ids = [text(row["message_id"]) for row in rows]
            if not ids:
                break
            entries = self.client.xclaim(stream, self.group, self.consumer, 0, ids)
            self._handle_claimed(stream, ids, entries)
            claimed += len(ids)
        if claimed:
            logger.info("claimed %s entries of %s left pending by %s", claimed, stream, consumer)
        return claimed

    def idle(self, stream: str) -> int:
        """Claim entries of ``stream`` idle past ``claim_min_idle_s`` from any consumer."""
        min_idle_ms = int(self.settings.claim_min_idle_s * 1000)
        self._dead_letter_overdelivered(stream, min_idle_ms)
        claimed = 0
        cursor = "0-0"
        for _ in range(MAX_CLAIM_ROUNDS):
            reply = self.client.xautoclaim(stream, self.group, self.consumer, min_idle_ms,
                                           cursor, count=self.settings.batch_size)
            start, cursor = cursor, text(reply[0])
            # Redis 6.2 answers an entry trimmed meanwhile as (nil, nil); it
            # stays pending, so it is found and dead-lettered by id.
            entries = [entry for entry in reply[1] if entry[0] is not None]
            if len(entries) < len(reply[1]):
                self._dead_letter_vanished(stream, start, cursor, entries)
            if entries:
                self.process(stream, entries, self._delivery_counts(stream, entries))
                claimed += len(entries)
            if cursor in ("0-0", "0"):
                break
        if claimed:
            logger.info("claimed %s entries of %s idle past %.0f s", claimed, stream,
                        self.settings.claim_min_idle_s)
        return claimed

    def _handle_claimed(self, stream: str, ids: Sequence[str], entries: Sequence[Any]) -> None:
        returned = [entry for entry in entries if entry and entry[0] is not None]
        if returned:
            self.process(stream, returned, self._delivery_counts(stream, returned))
        # An entry trimmed from the stream while it was pending comes back
        # without its fields (planned as a dead letter above) or not at all.
        gone = set(ids) - {text(entry[0]) for entry in returned}
        self.apply_now([self.planner.dead_letter(stream, entry_id, None, TRIMMED)
                        for entry_id in sorted(gone)])

    def _delivery_counts(self, stream: str, entries: Sequence[Any]) -> dict[str, int]:
        ids = [text(entry[0]) for entry in entries]
        rows = self.client.xpending_range(stream, self.group, min=ids[0], max=ids[-1],
                                          count=len(ids) + 16, consumername=self.consumer)
        return {text(row["message_id"]): int(row["times_delivered"]) for row in rows}

    def _dead_letter_vanished(self, stream: str, start: str, cursor: str,
                              entries: Sequence[Any]) -> None:
        """Dead-letter what XAUTOCLAIM claimed but could not return (Redis < 7)."""
        returned = {text(entry[0]) for entry in entries}
        end = "+" if cursor in ("0-0", "0") else f"({cursor}"
        rows = self.client.xpending_range(stream, self.group, min=start, max=end,
                                          count=self.settings.batch_size * 2,
                                          consumername=self.consumer)
        writes = []
        for row in rows:
            entry_id = text(row["message_id"])
            if entry_id in returned or self.client.xrange(stream, min=entry_id, max=entry_id):
                continue
            writes.append(self.planner.dead_letter(stream, entry_id, None, TRIMMED))
        self.apply_now(writes)

    def _dead_letter_overdelivered(self, stream: str, min_idle_ms: int) -> None:
        rows = self.client.xpending_range(stream, self.group, min="-", max="+",
                                          count=self.settings.batch_size, idle=min_idle_ms)
        writes = []
        for row in rows:
            times = int(row["times_delivered"])
            if times < self.settings.max_deliveries:
                continue
            entry_id = text(row["message_id"])
            found = self.client.xrange(stream, min=entry_id, max=entry_id)
            fields = found[0][1] if found else None
            reason = (f"delivered {times} times without acknowledgement "
                      f"(last to {text(row['consumer'])})")
            if fields is None:
                reason += "; entry no longer in the stream"
            writes.append(self.planner.dead_letter(stream, entry_id, fields, reason))
        self.apply_now(writes)


def is_missing_group(exc: redis.ResponseError) -> bool:
    """True for the errors of a stream that lost its group or its type."""
    message = str(exc)
    return "NOGROUP" in message or "WRONGTYPE" in message
